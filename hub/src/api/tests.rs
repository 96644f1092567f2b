//! Handler tests through `Router::oneshot` (no socket), on a real embedded store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::config::Config;
use crate::store::embedded::EmbeddedStore;

/// A small synthetic message in the XÖV G2G shape (unqualified header).
fn message(uuid: &str, reader: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<t:antrag.0200 xmlns:t="urn:example:test" standard="Test" version="1.0" produkt="p" produkthersteller="h">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>{uuid}</nachrichtenUUID>
      <nachrichtentyp listURI="urn:example:types" listVersionID="1"><code>0200</code></nachrichtentyp>
      <erstellungszeitpunkt>2026-11-29T10:00:00Z</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser><verzeichnisdienst listVersionID="1"><code>DVDV</code></verzeichnisdienst><kennung>{reader}</kennung></leser>
    <autor><verzeichnisdienst listVersionID="1"><code>DVDV</code></verzeichnisdienst><kennung>bab:1</kennung></autor>
  </nachrichtenkopf.g2g>
  <inhalt>text</inhalt>
</t:antrag.0200>"#
    )
}

fn config(partners: &str) -> Config {
    Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "unused"
[limits]
max_body_bytes = 4096
read_timeout = "2s"
{partners}
[[endpoints]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
[[endpoints]]
name = "b"
kind = "http"
url = "http://127.0.0.1:9/b"
[[routes]]
name = "r"
reader = "bab:09*"
endpoints = ["a", "b"]
"#
    ))
    .expect("valid test config")
}

/// The partner router over `store`, with no schemas; open access unless `config` has partners.
fn partner_router(config: Config, store: Arc<dyn crate::store::Store>) -> axum::Router {
    partner::router(state(config, store))
}

/// The handlers' state over `store`, with no schemas and no metrics recorder.
fn state(config: Config, store: Arc<dyn crate::store::Store>) -> Arc<AppState> {
    let config = Arc::new(config);
    let paused = crate::delivery::Paused::new(store.clone());
    let pipeline = crate::intake::Pipeline::new(config.clone(), store, None);
    Arc::new(AppState::new(config, pipeline, None, paused))
}

struct Harness {
    partner: axum::Router,
    admin: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness(partners: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn crate::store::Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    harness_on(store, dir, partners)
}

/// The routers over a store the test prepared (in `dir`).
fn harness_on(store: Arc<dyn crate::store::Store>, dir: tempfile::TempDir, partners: &str) -> Harness {
    let state = state(config(partners), store);
    Harness { partner: partner::router(state.clone()), admin: admin::router(state), _dir: dir }
}

async fn call(router: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn post(content_type: &str) -> axum::http::request::Builder {
    Request::post("/v1/submissions").header("content-type", content_type)
}

fn submit(body: &str, extra: &[(&str, &str)]) -> Request<Body> {
    let mut b = post("application/xml");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).expect("request")
}

fn assert_problem(status: StatusCode, headers: &axum::http::HeaderMap, body: &Value, want: StatusCode, slug: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["type"], format!("urn:lotse:problem:{slug}"), "{body}");
    assert_eq!(body["status"], want.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

#[tokio::test]
async fn accepted_submission_answers_202_with_location_and_fans_out() {
    let h = harness("");
    let (status, headers, body) =
        call(&h.partner, submit(&message("0f0e0d0c-0000-4000-8000-000000000001", "bab:09162000"), &[])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["submission_id"].as_str().expect("id");
    assert_eq!(headers["location"], format!("/v1/submissions/{id}"));
    let endpoints: Vec<&str> =
        body["deliveries"].as_array().expect("list").iter().map(|d| d["endpoint"].as_str().unwrap_or("")).collect();
    assert_eq!(endpoints, ["a", "b"]);

    let get = Request::get(format!("/v1/submissions/{id}")).body(Body::empty()).expect("request");
    let (status, _, view) = call(&h.partner, get).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "in_progress");
    assert_eq!(view["meta"]["reader"], "bab:09162000");
    assert_eq!(view["meta"]["message_type"], "0200");
    let kinds: Vec<&str> =
        view["events"].as_array().expect("events").iter().map(|e| e["kind"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["received", "routed", "note"]);
    assert_eq!(view["events"][2]["detail"], "not validated: validation is switched off");
}

#[tokio::test]
async fn same_message_uuid_or_idempotency_key_is_stored_once() {
    let h = harness("");
    let msg = message("0f0e0d0c-0000-4000-8000-000000000002", "bab:09162000");
    let (_, _, first) = call(&h.partner, submit(&msg, &[])).await;
    let (status, headers, again) = call(&h.partner, submit(&msg, &[])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["lotse-duplicate"], "true");
    assert_eq!(first, again, "a duplicate gets the first answer");

    let other = message("0f0e0d0c-0000-4000-8000-000000000003", "bab:09162000");
    let other2 = message("0f0e0d0c-0000-4000-8000-000000000004", "bab:09162000");
    let (_, _, a) = call(&h.partner, submit(&other, &[("idempotency-key", "k-1")])).await;
    let (_, h2, b) = call(&h.partner, submit(&other2, &[("idempotency-key", "k-1")])).await;
    assert_eq!(h2["lotse-duplicate"], "true");
    assert_eq!(a, b);
    let (_, h3, _) = call(
        &h.partner,
        submit(&message("0f0e0d0c-0000-4000-8000-000000000005", "bab:09162000"), &[("idempotency-key", "k-2")]),
    )
    .await;
    assert!(h3.get("lotse-duplicate").is_none());
}

#[tokio::test]
async fn every_refusal_is_problem_json_with_the_right_status() {
    let h = harness("");
    let ok = message("0f0e0d0c-0000-4000-8000-000000000010", "bab:09162000");

    let req = post("text/plain").body(Body::from(ok.clone())).expect("request");
    let (s, hd, b) = call(&h.partner, req).await;
    assert_problem(s, &hd, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

    let big = format!("<a>{}</a>", "x".repeat(5000));
    let (s, hd, b) = call(&h.partner, submit(&big, &[])).await;
    assert_problem(s, &hd, &b, StatusCode::PAYLOAD_TOO_LARGE, "too-large");

    let (s, hd, b) = call(&h.partner, submit("<a><b></a>", &[])).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");

    let dtd = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#;
    let (s, hd, b) = call(&h.partner, submit(dtd, &[])).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");

    let req = post("application/json").body(Body::from("{not json")).expect("request");
    let (s, hd, b) = call(&h.partner, req).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");

    // JSON under the body limit whose XML form is far above it (an array repeats its element's
    // name per item): refused as too large while the XML is built, not after.
    let name = "n".repeat(1_000);
    let nulls = vec!["null"; 500].join(",");
    let amplified = format!(r#"{{"r":{{"{name}":[{nulls}]}}}}"#);
    assert!(amplified.len() < 4096, "the JSON itself is within the limit");
    let req = post("application/json").body(Body::from(amplified)).expect("request");
    let (s, hd, b) = call(&h.partner, req).await;
    assert_problem(s, &hd, &b, StatusCode::PAYLOAD_TOO_LARGE, "too-large");
    assert!(b["detail"].as_str().unwrap_or("").contains("XML form"), "{b}");

    let unrouted = message("0f0e0d0c-0000-4000-8000-000000000011", "psw:123");
    let (s, hd, b) = call(&h.partner, submit(&unrouted, &[])).await;
    assert_problem(s, &hd, &b, StatusCode::UNPROCESSABLE_ENTITY, "no-route");
    assert_eq!(b["message_type"], "0200");
    assert_eq!(b["reader"], "psw:123");
    assert!(b["detail"].as_str().unwrap_or("").contains("psw:123"), "{b}");

    let get = Request::get("/v1/submissions/not-an-id").body(Body::empty()).expect("request");
    let (s, hd, b) = call(&h.partner, get).await;
    assert_problem(s, &hd, &b, StatusCode::NOT_FOUND, "not-found");

    // What axum refuses before a handler runs is problem+json too.
    let get = Request::get("/v1/submissions?foo=1").body(Body::empty()).expect("request");
    let (s, hd, b) = call(&h.partner, get).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");
    assert!(b["detail"].as_str().unwrap_or("").contains("foo"), "{b}");
    let get = Request::get("/v1/submissions/%FF").body(Body::empty()).expect("request");
    let (s, hd, b) = call(&h.partner, get).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");
    let put = Request::put("/v1/submissions").body(Body::empty()).expect("request");
    let (s, hd, b) = call(&h.partner, put).await;
    assert_problem(s, &hd, &b, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    assert!(hd.get("allow").is_some_and(|a| a.to_str().unwrap_or("").contains("POST")), "{hd:?}");
}

#[tokio::test]
async fn partners_need_their_token_and_see_only_their_submissions() {
    let partners = r#"
[[partners]]
name = "land-a"
token = "token-of-land-a-0123456789"
[[partners]]
name = "land-b"
token = "token-of-land-b-0123456789"
"#;
    let h = harness(partners);
    let msg = message("0f0e0d0c-0000-4000-8000-000000000020", "bab:09162000");
    let (s, hd, b) = call(&h.partner, submit(&msg, &[])).await;
    assert_problem(s, &hd, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, hd, b) = call(&h.partner, submit(&msg, &[("authorization", "Bearer wrong-token-0123456789")])).await;
    assert_problem(s, &hd, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    let (s, _, b) = call(&h.partner, submit(&msg, &[("authorization", "Bearer token-of-land-a-0123456789")])).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = b["submission_id"].as_str().expect("id");
    let get = |token: &str| {
        Request::get(format!("/v1/submissions/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    let (s, _, v) = call(&h.partner, get("token-of-land-a-0123456789")).await;
    assert_eq!((s, v["partner"].as_str()), (StatusCode::OK, Some("land-a")));
    let (s, _, _) = call(&h.partner, get("token-of-land-b-0123456789")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another partner's submission must look missing");

    // Dedup is per partner: land-b may use the same message UUID.
    let (s, hd, _) = call(&h.partner, submit(&msg, &[("authorization", "Bearer token-of-land-b-0123456789")])).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(hd.get("lotse-duplicate").is_none());
}

#[tokio::test]
async fn admin_routes_exist_only_on_the_admin_router() {
    let h = harness("");
    let req = || Request::get("/v1/admin/deliveries?state=pending").body(Body::empty()).expect("request");
    let (s, _, _) = call(&h.partner, req()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    call(&h.partner, submit(&message("0f0e0d0c-0000-4000-8000-000000000030", "bab:09162000"), &[])).await;
    let (s, _, b) = call(&h.admin, req()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["deliveries"].as_array().map(Vec::len), Some(2));
    let bad = Request::get("/v1/admin/deliveries?state=lost").body(Body::empty()).expect("request");
    let (s, _, _) = call(&h.admin, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// The overview says which store this process runs on and whether it takes submissions; a
/// store no other process shares has no broker link to show.
#[tokio::test]
async fn the_overview_shows_the_store_and_whether_it_is_ready() {
    let h = harness("");
    call(&h.partner, submit(&message("0f0e0d0c-0000-4000-8000-000000000031", "bab:09162000"), &[])).await;
    let req = Request::get("/v1/admin/overview").body(Body::empty()).expect("request");
    let (s, _, b) = call(&h.admin, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["counts"]["submissions"], 1, "{b}");
    assert_eq!(
        b["store"],
        serde_json::json!({"kind": "embedded", "ready": true, "not_ready_because": null, "broker": null})
    );
}

/// A dead delivery whose endpoint has left the config: a replay would queue it for no worker,
/// so the single replay is refused (409 `endpoint-unknown`) and the bulk replay leaves it out
/// and names it; deliveries of configured endpoints are replayed as before.
#[tokio::test]
async fn replays_to_an_endpoint_no_longer_configured_are_refused() {
    use crate::store::conformance::submission;
    use crate::store::{DeliveryState, Outcome, Store};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let mut dead = Vec::new();
    for endpoint in ["gone", "a"] {
        store.intake(submission(&[], &[endpoint])).await.expect("intake");
        let lease =
            store.lease(endpoint, 1, std::time::Duration::from_secs(5)).await.expect("lease").pop().expect("due");
        dead.push(lease.delivery_id);
        store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await.expect("settle");
    }
    let (gone, kept) = (dead[0], dead[1]);
    let h = harness_on(store.clone(), dir, "");
    let replay = |path: String, body: &str| {
        Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request")
    };
    let (s, headers, b) =
        call(&h.admin, replay(format!("/v1/admin/deliveries/{gone}/replay"), r#"{"reason": "r"}"#)).await;
    assert_problem(s, &headers, &b, StatusCode::CONFLICT, "endpoint-unknown");
    assert!(b["detail"].as_str().is_some_and(|d| d.contains("`gone`")), "{b}");

    let (s, _, b) = call(&h.admin, replay("/v1/admin/replay".into(), r#"{"reason": "r", "dry_run": false}"#)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["replayed"], serde_json::json!([kept.to_string()]), "{b}");
    assert_eq!(b["skipped_unknown_endpoint"], serde_json::json!([{ "id": gone.to_string(), "endpoint": "gone" }]));
    let state = |id| {
        let store = store.clone();
        async move { store.delivery(id).await.expect("read").expect("known").state }
    };
    assert_eq!(state(gone).await, DeliveryState::Dead);
    assert_eq!(state(kept).await, DeliveryState::Pending);
}

/// One dead delivery per endpoint named, in that order (dead at its first attempt).
async fn dead_deliveries(store: &dyn crate::store::Store, endpoints: &[&str]) -> Vec<crate::store::DeliveryId> {
    use crate::store::Outcome;
    use crate::store::conformance::submission;

    let mut dead = Vec::new();
    for endpoint in endpoints {
        store.intake(submission(&[], &[endpoint])).await.expect("intake");
        let lease =
            store.lease(endpoint, 1, std::time::Duration::from_secs(5)).await.expect("lease").pop().expect("due");
        dead.push(lease.delivery_id);
        store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await.expect("settle");
    }
    dead
}

fn bulk_replay(body: &str) -> Request<Body> {
    Request::post("/v1/admin/replay")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// Regression: "replay every dead delivery" took the newest 1,000 (or `limit`) and answered as
/// if that were all. The answer says `truncated` when more were dead, in a dry run and for real,
/// and a second run takes the rest.
#[tokio::test]
async fn a_bulk_replay_says_when_more_matched_than_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    dead_deliveries(store.as_ref(), &["a", "a", "a"]).await;
    let h = harness_on(store, dir, "");

    for (limit, would, truncated) in [(2, 2, true), (3, 3, false), (4, 3, false)] {
        let (s, _, b) = call(&h.admin, bulk_replay(&format!(r#"{{"dry_run": true, "limit": {limit}}}"#))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["would_replay"].as_array().map(Vec::len), Some(would), "limit {limit}: {b}");
        assert_eq!(b["truncated"], truncated, "limit {limit}: {b}");
    }
    let (s, _, b) = call(&h.admin, bulk_replay(r#"{"reason": "r", "dry_run": false, "limit": 2}"#)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!((b["replayed"].as_array().map(Vec::len), &b["truncated"]), (Some(2), &Value::Bool(true)), "{b}");
    let (s, _, b) = call(&h.admin, bulk_replay(r#"{"reason": "r", "dry_run": false, "limit": 2}"#)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!((b["replayed"].as_array().map(Vec::len), &b["truncated"]), (Some(1), &Value::Bool(false)), "{b}");
}

/// An embedded store whose second replay fails (a disk that filled up half way through).
struct FailsSecondReplay {
    inner: EmbeddedStore,
    replays: std::sync::atomic::AtomicUsize,
}

// `store::testing::Passthrough` cannot override `replay`, so every call is passed on here.
#[async_trait::async_trait]
impl crate::store::Store for FailsSecondReplay {
    async fn intake(&self, s: crate::store::NewSubmission) -> Result<crate::store::Intake, crate::store::StoreError> {
        self.inner.intake(s).await
    }
    async fn lease(
        &self,
        endpoint: &str,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<crate::store::Lease>, crate::store::StoreError> {
        self.inner.lease(endpoint, max, wait).await
    }
    async fn settle(&self, l: crate::store::Lease, o: crate::store::Outcome) -> Result<(), crate::store::StoreError> {
        self.inner.settle(l, o).await
    }
    async fn set_paused(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.set_paused(endpoint, paused, actor, reason).await
    }
    fn pauses(&self) -> std::collections::BTreeMap<String, crate::store::Pause> {
        self.inner.pauses()
    }
    async fn submission(
        &self,
        id: crate::store::SubmissionId,
    ) -> Result<Option<crate::store::SubmissionView>, crate::store::StoreError> {
        self.inner.submission(id).await
    }
    async fn submission_by_key(&self, k: &str) -> Result<Option<crate::store::SubmissionId>, crate::store::StoreError> {
        self.inner.submission_by_key(k).await
    }
    async fn delivery(
        &self,
        id: crate::store::DeliveryId,
    ) -> Result<Option<crate::store::DeliveryView>, crate::store::StoreError> {
        self.inner.delivery(id).await
    }
    async fn deliveries(
        &self,
        f: &crate::store::DeliveryFilter,
    ) -> Result<Vec<crate::store::DeliveryView>, crate::store::StoreError> {
        self.inner.deliveries(f).await
    }
    async fn replay(
        &self,
        id: crate::store::DeliveryId,
        actor: &str,
        reason: &str,
    ) -> Result<crate::store::ReplayOutcome, crate::store::StoreError> {
        if self.replays.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Err(crate::store::StoreError::Unavailable("disk full".into()));
        }
        self.inner.replay(id, actor, reason).await
    }
    async fn counts(&self) -> Result<crate::store::Counts, crate::store::StoreError> {
        self.inner.counts().await
    }
}

/// Regression: a bulk replay whose store failed at the second delivery answered 503 "nothing was
/// accepted" although the first was replayed. The problem names what was replayed; the rest
/// stays dead.
#[tokio::test]
async fn a_bulk_replay_stopped_by_the_store_names_what_it_replayed() {
    use crate::store::{DeliveryState, Store};

    let dir = tempfile::tempdir().expect("tempdir");
    let inner = EmbeddedStore::open(dir.path()).expect("store");
    let dead = dead_deliveries(&inner, &["a", "a", "a"]).await;
    let store = Arc::new(FailsSecondReplay { inner, replays: Default::default() });
    let h = harness_on(store.clone(), dir, "");
    let (s, headers, b) = call(&h.admin, bulk_replay(r#"{"reason": "r", "dry_run": false}"#)).await;
    assert_problem(s, &headers, &b, StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
    let detail = b["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("after 1 of 3") && !detail.contains("nothing was accepted"), "{b}");
    let replayed: Vec<_> = b["replayed"].as_array().expect("replayed ids").iter().map(|v| v.to_string()).collect();
    assert_eq!(replayed.len(), 1, "{b}");
    let mut pending = Vec::new();
    for id in dead {
        let state = store.delivery(id).await.expect("read").expect("known").state;
        if state == DeliveryState::Pending {
            pending.push(format!("\"{id}\""));
        } else {
            assert_eq!(state, DeliveryState::Dead, "{id}");
        }
    }
    assert_eq!(pending, replayed, "the one replayed is the one named");
}

/// An operator finds a case by what the partner knows: its message id (`nachrichtenUUID`) or
/// its `Idempotency-Key`, for one partner or all; the answer carries the event log.
#[tokio::test]
async fn admin_finds_submissions_by_message_id_or_idempotency_key() {
    let h = harness("");
    let uuid = "0f0e0d0c-0000-4000-8000-000000000050";
    let (_, _, b) =
        call(&h.partner, submit(&message(uuid, "bab:09162000"), &[("idempotency-key", "vorgang-4711")])).await;
    let id = b["submission_id"].as_str().expect("accepted").to_owned();
    let find =
        |query: &str| Request::get(format!("/v1/admin/submissions?{query}")).body(Body::empty()).expect("request");
    for query in [
        format!("message_id={uuid}"),
        "idempotency_key=vorgang-4711".into(),
        format!("message_id={uuid}&partner=anonymous"),
    ] {
        let (s, _, b) = call(&h.admin, find(&query)).await;
        assert_eq!(s, StatusCode::OK, "{query}: {b}");
        assert_eq!(b["submissions"].as_array().map(Vec::len), Some(1), "{query}: {b}");
        assert_eq!(b["submissions"][0]["id"], id, "{query}: {b}");
        assert!(b["submissions"][0]["events"].as_array().is_some_and(|e| !e.is_empty()), "{query}: {b}");
    }
    for query in ["message_id=unknown", &format!("message_id={uuid}&partner=land-b")] {
        let (s, _, b) = call(&h.admin, find(query)).await;
        assert_eq!((s, b["submissions"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{query}: {b}");
    }
    for query in ["", "message_id=a&idempotency_key=b"] {
        let (s, headers, b) = call(&h.admin, find(query)).await;
        assert_problem(s, &headers, &b, StatusCode::BAD_REQUEST, "bad-filter");
    }
    let (s, _, _) = call(&h.partner, find(&format!("message_id={uuid}"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "admin search on the partner port");
}

/// The endpoint listing shows where cases go, not the receivers' secrets.
#[test]
fn endpoint_urls_are_listed_without_secrets() {
    assert_eq!(
        crate::config::redacted_url("https://lotse:s3cret@bauamt.example/eingang?token=abc&mode=x"),
        "https://lotse:***@bauamt.example/eingang?token=***&mode=***"
    );
    assert_eq!(crate::config::redacted_url("http://127.0.0.1:9/a"), "http://127.0.0.1:9/a");
    // The broker URL in the RabbitMQ store's connect error goes the same way.
    assert_eq!(crate::config::redacted_url("amqp://lotse:s3cret@rabbit:5672/%2f"), "amqp://lotse:***@rabbit:5672/%2f");
}

/// A body that stops arriving: `408` problem+json once `limits.read_timeout` has passed,
/// nothing stored, and the request no longer holds a place among `max_in_flight`.
#[tokio::test]
async fn a_body_that_stops_arriving_times_out_with_408() {
    let h = harness("");
    let start = futures::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from("<nachricht>")) });
    let stalled = Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending()));
    let req = post("application/xml").body(stalled).expect("request");
    let (s, headers, b) = call(&h.partner, req).await;
    assert_problem(s, &headers, &b, StatusCode::REQUEST_TIMEOUT, "request-timeout");
    assert!(b["detail"].as_str().is_some_and(|d| d.contains("within 2s")), "{b}");
    let listed = Request::get("/v1/admin/deliveries").body(Body::empty()).expect("request");
    let (_, _, b) = call(&h.admin, listed).await;
    assert_eq!(b["deliveries"].as_array().map(Vec::len), Some(0), "{b}");
}

/// A listing or a bulk replay is always bounded: `limit` 0 (which a store could read as "no
/// limit") and anything over 10,000 are refused with a problem saying the range; 1 works.
/// A listing's `limit` that is no number (`abc`, `-1`, empty) is the same `bad-filter`, not
/// axum's bare 400 for a query it cannot read.
#[tokio::test]
async fn admin_limits_out_of_range_are_refused() {
    let h = harness("");
    call(&h.partner, submit(&message("0f0e0d0c-0000-4000-8000-000000000031", "bab:09162000"), &[])).await;
    for limit in ["abc", "", "-1", "1.5"] {
        let req = Request::get(format!("/v1/admin/deliveries?limit={limit}")).body(Body::empty()).expect("request");
        let (s, headers, b) = call(&h.admin, req).await;
        assert_problem(s, &headers, &b, StatusCode::BAD_REQUEST, "bad-filter");
        assert!(b["detail"].as_str().is_some_and(|d| d.contains("1 to 10000")), "limit={limit}: {b}");
    }
    for limit in ["0", "10001"] {
        let req = Request::get(format!("/v1/admin/deliveries?limit={limit}")).body(Body::empty()).expect("request");
        let (s, headers, b) = call(&h.admin, req).await;
        assert_problem(s, &headers, &b, StatusCode::BAD_REQUEST, "bad-filter");
        assert!(b["detail"].as_str().is_some_and(|d| d.contains("1 to 10000")), "{b}");
        let bulk = Request::post("/v1/admin/replay")
            .header("content-type", "application/json")
            .body(Body::from(format!(r#"{{"reason": "r", "dry_run": false, "limit": {limit}}}"#)))
            .expect("request");
        let (s, headers, b) = call(&h.admin, bulk).await;
        assert_problem(s, &headers, &b, StatusCode::BAD_REQUEST, "bad-filter");
    }
    let req = Request::get("/v1/admin/deliveries?limit=1").body(Body::empty()).expect("request");
    let (s, _, b) = call(&h.admin, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["deliveries"].as_array().map(Vec::len), Some(1), "{b}");
}

#[tokio::test]
async fn replay_needs_a_reason_and_only_takes_dead_deliveries() {
    let h = harness("");
    let (_, _, b) =
        call(&h.partner, submit(&message("0f0e0d0c-0000-4000-8000-000000000040", "bab:09162000"), &[])).await;
    let did = b["deliveries"][0]["id"].as_str().expect("delivery id").to_owned();
    let replay = |body: &str| {
        Request::post(format!("/v1/admin/deliveries/{did}/replay"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request")
    };
    let (s, _, _) = call(&h.admin, replay("{}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a replay without a reason is refused");
    let (s, _, b) = call(&h.admin, replay(r#"{"reason": "receiver fixed"}"#)).await;
    assert_eq!(s, StatusCode::CONFLICT, "a pending delivery is not replayed: {b}");
}

/// A store whose disk is gone: every call fails. (A real disk failure cannot be staged here.)
struct BrokenStore;

#[async_trait::async_trait]
impl crate::store::Store for BrokenStore {
    async fn submission_by_key(&self, _: &str) -> Result<Option<crate::store::SubmissionId>, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone: /secret/path".into()))
    }
    async fn intake(&self, _: crate::store::NewSubmission) -> Result<crate::store::Intake, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone: /secret/path".into()))
    }
    async fn lease(
        &self,
        _: &str,
        _: usize,
        _: std::time::Duration,
    ) -> Result<Vec<crate::store::Lease>, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn settle(&self, _: crate::store::Lease, _: crate::store::Outcome) -> Result<(), crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn set_paused(&self, _: &str, _: bool, _: &str, _: Option<&str>) -> Result<(), crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    fn pauses(&self) -> std::collections::BTreeMap<String, crate::store::Pause> {
        Default::default()
    }
    async fn submission(
        &self,
        _: crate::store::SubmissionId,
    ) -> Result<Option<crate::store::SubmissionView>, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn delivery(
        &self,
        _: crate::store::DeliveryId,
    ) -> Result<Option<crate::store::DeliveryView>, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn deliveries(
        &self,
        _: &crate::store::DeliveryFilter,
    ) -> Result<Vec<crate::store::DeliveryView>, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn replay(
        &self,
        _: crate::store::DeliveryId,
        _: &str,
        _: &str,
    ) -> Result<crate::store::ReplayOutcome, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
    async fn counts(&self) -> Result<crate::store::Counts, crate::store::StoreError> {
        Err(crate::store::StoreError::Unavailable("disk gone".into()))
    }
}

#[tokio::test]
async fn a_store_that_cannot_commit_means_503_without_internals() {
    let router = partner_router(config(""), Arc::new(BrokenStore));
    let (s, hd, b) = call(&router, submit(&message("0f0e0d0c-0000-4000-8000-000000000050", "bab:09162000"), &[])).await;
    assert_problem(s, &hd, &b, StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
    assert_eq!(hd.get("retry-after").and_then(|v| v.to_str().ok()), Some("5"), "503 without Retry-After");
    assert!(!b.to_string().contains("/secret/path"), "5xx bodies must not carry internals: {b}");
}

/// A partner router over a real embedded store with one endpoint, `gewerbeamt`, and `routes`.
fn fit_connect_router(routes: &str) -> (axum::Router, Arc<dyn crate::store::Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "unused"
[[endpoints]]
name = "gewerbeamt"
kind = "http"
url = "http://127.0.0.1:9/g"
{routes}"#
    ))
    .expect("config");
    let store: Arc<dyn crate::store::Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    (partner_router(config, store.clone()), store, dir)
}

/// FIT-Connect metadata is routed by its public service (LeiKa) and the trust level it states.
#[tokio::test]
async fn fit_connect_metadata_is_routed_by_service_and_trust_level() {
    let (router, _store, _dir) = fit_connect_router(
        r#"
[[routes]]
name = "leika-hoch"
service = "urn:de:fim:leika:leistung:99001004*"
min_trust_level = "high"
endpoints = ["gewerbeamt"]
[[routes]]
name = "leika-substanziell"
service = "urn:de:fim:leika:leistung:99001004*"
min_trust_level = "substantial"
endpoints = ["gewerbeamt"]
"#,
    );
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../adapters/tests/fixtures/fitconnect");
    let send = |file: &str| {
        let body = std::fs::read(fixtures.join(file)).expect("fixture");
        post("application/json").body(Body::from(body)).expect("request")
    };
    // `full.json` states `substantial`: the first route (high) refuses it, and first match wins.
    let (s, hd, b) = call(&router, send("full.json")).await;
    assert_problem(s, &hd, &b, StatusCode::FORBIDDEN, "trust-level");
    assert!(b["detail"].as_str().unwrap_or("").contains("substantial"), "{b}");
    // Without a level claim the trust level is unknown: refused as well.
    let (s, _, _) = call(&router, send("jwt-without-level.json")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn fit_connect_metadata_reaches_its_route_and_keeps_its_bytes() {
    let (router, store, _dir) = fit_connect_router(
        r#"
[[routes]]
name = "leika"
service = "urn:de:fim:leika:leistung:99001004*"
endpoints = ["gewerbeamt"]
"#,
    );
    // No `min_trust_level`: the fixture's report is unsigned, and an unverified level meets none
    // (tests/intake_trust_level.rs covers signed reports).
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../adapters/tests/fixtures/fitconnect/full.json"),
    )
    .expect("fixture");
    let (s, _, b) = call(&router, post("application/json").body(Body::from(body.clone())).expect("request")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let lease = store.lease("gewerbeamt", 1, std::time::Duration::from_millis(200)).await.expect("lease");
    assert_eq!(lease.len(), 1);
    assert_eq!(lease[0].payload.as_ref(), body.as_slice(), "metadata is delivered as sent");
    assert_eq!(lease[0].content_type, "application/json");
    let id = b["submission_id"].as_str().expect("id").parse().expect("uuid");
    let view = store.submission(id).await.expect("read").expect("exists");
    assert_eq!(view.meta["service"], "urn:de:fim:leika:leistung:99001004000000");
    assert_eq!(view.meta["trust_level"], "substantial");
    assert!(
        view.events.iter().any(|e| e.detail.contains("NOT verified") || e.detail.contains("not verified")),
        "{:?}",
        view.events
    );
}

/// One endpoint `a` and a route to it, with the given `[limits]` lines and partners.
fn limits_config(limits: &str, partners: &str) -> Config {
    Config::parse(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:1\"\ndata_dir = \"unused\"\n[limits]\n{limits}\n{partners}\n\
         [[endpoints]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/a\"\n\
         [[routes]]\nname = \"r\"\nendpoints = [\"a\"]\n"
    ))
    .expect("valid test config")
}

/// A store whose intake waits until released (to hold a submission in flight); each intake
/// that finishes uses up the permit that released it.
struct GatedStore(Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl crate::store::testing::Passthrough for GatedStore {
    fn inner(&self) -> &dyn crate::store::Store {
        &BrokenStore
    }
    async fn submission_by_key(&self, _: &str) -> Result<Option<crate::store::SubmissionId>, crate::store::StoreError> {
        Ok(None)
    }
    async fn intake(&self, _: crate::store::NewSubmission) -> Result<crate::store::Intake, crate::store::StoreError> {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
        Err(crate::store::StoreError::Unavailable("released".into()))
    }
}

#[tokio::test]
async fn beyond_max_in_flight_the_partner_api_sheds_load_with_503_and_retry_after() {
    let config = limits_config("max_in_flight = 1", "");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = partner_router(config, Arc::new(GatedStore(gate.clone())));
    let first = tokio::spawn({
        let router = router.clone();
        async move { call(&router, submit(&message("0f0e0d0c-0000-4000-8000-000000000060", "bab:1"), &[])).await }
    });
    // Let the first submission reach the store and wait there.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (s, hd, b) = call(&router, submit(&message("0f0e0d0c-0000-4000-8000-000000000061", "bab:1"), &[])).await;
    assert_problem(s, &hd, &b, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(hd["retry-after"], "1");
    gate.add_permits(1);
    let (s, _, b) = first.await.expect("first");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "the gated store refuses after release: {b}");
    assert_eq!(b["type"], "urn:lotse:problem:store-unavailable");
    // With the slot free again, the next submission is taken in (and reaches the store).
    gate.add_permits(1);
    let (_, _, b) = call(&router, submit(&message("0f0e0d0c-0000-4000-8000-000000000062", "bab:1"), &[])).await;
    assert_eq!(b["type"], "urn:lotse:problem:store-unavailable");
}

/// One partner's flood takes only its own share of the places in flight: beyond
/// `max_in_flight_per_partner` it gets `429` with `Retry-After`, while another partner is still
/// taken in.
#[tokio::test]
async fn one_partner_cannot_take_every_place_in_flight() {
    let partners = "[[partners]]\nname = \"land-a\"\ntoken = \"token-of-land-a-0123456789\"\n\
                    [[partners]]\nname = \"land-b\"\ntoken = \"token-of-land-b-0123456789\"\n";
    let config = limits_config("max_in_flight = 4\nmax_in_flight_per_partner = 1", partners);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = partner_router(config, Arc::new(GatedStore(gate.clone())));
    let from = |land: &str, n: u32| {
        let auth = format!("Bearer token-of-{land}-0123456789");
        submit(&message(&format!("0f0e0d0c-0000-4000-8000-0000000007{n:02}"), "bab:1"), &[("authorization", &auth)])
    };
    let first = tokio::spawn({
        let (router, req) = (router.clone(), from("land-a", 1));
        async move { call(&router, req).await }
    });
    // Let land A's first submission reach the store and wait there.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (s, hd, b) = call(&router, from("land-a", 2)).await;
    assert_problem(s, &hd, &b, StatusCode::TOO_MANY_REQUESTS, "partner-overloaded");
    assert_eq!(hd["retry-after"], "1");
    assert!(b["detail"].as_str().is_some_and(|d| d.contains("land-a")), "{b}");
    // Land B still gets in (to the gated store, which answers once released).
    let other = tokio::spawn({
        let (router, req) = (router.clone(), from("land-b", 3));
        async move { call(&router, req).await }
    });
    gate.add_permits(2);
    for (who, answer) in [("land-a", first), ("land-b", other)] {
        let (_, _, b) = answer.await.expect("answered");
        assert_eq!(b["type"], "urn:lotse:problem:store-unavailable", "{who} reached the store: {b}");
    }
    // Land A's place is free again.
    gate.add_permits(1);
    let (_, _, b) = call(&router, from("land-a", 4)).await;
    assert_eq!(b["type"], "urn:lotse:problem:store-unavailable", "{b}");
}

/// A body may take longer than `read_timeout` if it keeps coming at 64 KiB/s: a large message on
/// a slow line gets in; a few bytes and then a pause beyond the grace do not.
#[tokio::test]
async fn a_large_body_may_take_longer_if_it_keeps_coming() {
    use axum::body::Bytes;

    let slow = |first: usize, pause: std::time::Duration| {
        let chunks = futures::stream::iter([
            (Bytes::from(vec![b'x'; first]), std::time::Duration::ZERO),
            (Bytes::from("end"), pause),
        ]);
        Body::from_stream(futures::StreamExt::then(chunks, |(chunk, pause)| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(chunk)
        }))
    };
    let grace = std::time::Duration::from_millis(300);
    let headers = axum::http::HeaderMap::new();
    // 128 KiB earn two more seconds: the rest after 0.8 s is in time.
    let body = partner::read_body(slow(128 * 1024, std::time::Duration::from_millis(800)), &headers, 1 << 20, grace)
        .await
        .expect("a large body that keeps coming");
    assert_eq!(body.len(), 128 * 1024 + 3);
    // 1 KiB earns 16 ms: the rest after 0.8 s is too late.
    let late = partner::read_body(slow(1024, std::time::Duration::from_millis(800)), &headers, 1 << 20, grace).await;
    let problem = late.expect_err("a trickle");
    assert_eq!(problem.status, StatusCode::REQUEST_TIMEOUT);
}

/// A partner finds its own submission by its `nachrichtenUUID` or `Idempotency-Key`; another
/// partner with the same id finds nothing.
#[tokio::test]
async fn a_partner_finds_its_own_submission_by_its_message_id() {
    let partners = "[[partners]]\nname = \"land-a\"\ntoken = \"token-of-land-a-0123456789\"\n\
                    [[partners]]\nname = \"land-b\"\ntoken = \"token-of-land-b-0123456789\"\n";
    let h = harness(partners);
    let uuid = "0f0e0d0c-0000-4000-8000-000000000080";
    let auth_a = ("authorization", "Bearer token-of-land-a-0123456789");
    let (s, _, b) =
        call(&h.partner, submit(&message(uuid, "bab:09162000"), &[auth_a, ("idempotency-key", "akte-1")])).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["submission_id"].as_str().expect("id").to_owned();
    let find = |query: &str, token: &str| {
        Request::get(format!("/v1/submissions?{query}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    for query in [format!("message_id={uuid}"), "idempotency_key=akte-1".into()] {
        let (s, headers, b) = call(&h.partner, find(&query, "token-of-land-a-0123456789")).await;
        assert_eq!(s, StatusCode::OK, "{query}: {b}");
        assert_eq!(b["id"], id.as_str(), "{query}: {b}");
        assert_eq!(headers["content-location"], format!("/v1/submissions/{id}"));
    }
    let (s, headers, b) = call(&h.partner, find(&format!("message_id={uuid}"), "token-of-land-b-0123456789")).await;
    assert_problem(s, &headers, &b, StatusCode::NOT_FOUND, "not-found");
    let (s, headers, b) = call(&h.partner, find("", "token-of-land-a-0123456789")).await;
    assert_problem(s, &headers, &b, StatusCode::BAD_REQUEST, "bad-filter");
    let anonymous = Request::get(format!("/v1/submissions?message_id={uuid}")).body(Body::empty()).expect("request");
    let (s, _, _) = call(&h.partner, anonymous).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// A replay request whose body never comes is answered `408` after `read_timeout`, not waited
/// for while it holds its connection; an empty body is still a replay without a reason.
#[tokio::test]
async fn an_admin_request_whose_body_never_comes_is_answered_in_time() {
    let h = harness("");
    let stalled = |path: &str| {
        let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        Request::post(path)
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(Body::from_stream(never))
            .expect("request")
    };
    for path in ["/v1/admin/replay", "/v1/admin/deliveries/0f0e0d0c-0000-4000-8000-000000000001/replay"] {
        let answered = tokio::time::timeout(std::time::Duration::from_secs(6), call(&h.admin, stalled(path))).await;
        let (s, hd, b) = answered.expect("a body that never comes is not waited for beyond read_timeout");
        assert_problem(s, &hd, &b, StatusCode::REQUEST_TIMEOUT, "request-timeout");
    }
    let empty = Request::post("/v1/admin/replay").body(Body::empty()).expect("request");
    let (s, hd, b) = call(&h.admin, empty).await;
    assert_problem(s, &hd, &b, StatusCode::BAD_REQUEST, "malformed");
}

/// A partner that hangs up while the store takes its submission does not cut the store's work
/// off: the intake goes on without the request and finishes.
#[tokio::test]
async fn an_intake_finishes_when_the_partner_hangs_up() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let router = partner_router(limits_config("", ""), Arc::new(GatedStore(gate.clone())));
    let req = submit(&message("0f0e0d0c-0000-4000-8000-000000000070", "bab:1"), &[]);
    let hung_up = tokio::time::timeout(std::time::Duration::from_millis(200), call(&router, req)).await;
    assert!(hung_up.is_err(), "answered before the store was released");
    gate.add_permits(1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gate.available_permits(), 0, "the intake was dropped with its request");
}
