//! The mailbox API through `Router::oneshot`, on a real embedded store.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use crate::api::{AppState, partner};
use crate::config::Config;
use crate::store::embedded::EmbeddedStore;

const TOKEN: &str = "postfach-token-0123456789";

fn message(uuid: &str) -> String {
    format!(
        r#"<t:antrag.0200 xmlns:t="urn:example:test"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtenUUID>{uuid}</nachrichtenUUID><nachrichtentyp><code>0200</code></nachrichtentyp></identifikation.nachricht><leser><kennung>bab:091</kennung></leser></nachrichtenkopf.g2g></t:antrag.0200>"#
    )
}

struct Harness {
    router: axum::Router,
    state: Arc<AppState>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A hub whose only route goes to mailbox `postfach` (acknowledge within `ack_within`, at most
/// `held` fetched at once), with the mailbox sweeper running.
fn harness(ack_within: &str, held: usize) -> Harness {
    harness_on(ack_within, held, |store| store)
}

/// [`harness`] on the embedded store as `wrap` wraps it.
fn harness_on(
    ack_within: &str,
    held: usize,
    wrap: impl FnOnce(Arc<dyn crate::store::Store>) -> Arc<dyn crate::store::Store>,
) -> Harness {
    let config = Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "unused"
[limits]
read_timeout = "1s"
[retry]
max_attempts = 3
initial_backoff = "10ms"
max_backoff = "20ms"
[[endpoints]]
name = "postfach"
kind = "mailbox"
token = "{TOKEN}"
timeout = "{ack_within}"
concurrency = {held}
[[endpoints]]
name = "other"
kind = "mailbox"
token = "another-mailbox-token-42"
[[routes]]
name = "r"
reader = "bab:09*"
endpoints = ["postfach"]
"#
    ))
    .expect("valid test config");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn crate::store::Store> = wrap(Arc::new(EmbeddedStore::open(dir.path()).expect("store")));
    let config = Arc::new(config);
    let paused = crate::delivery::Paused::new(store.clone());
    let pipeline = crate::intake::Pipeline::new(config.clone(), store, None);
    let state = Arc::new(AppState::new(config, pipeline, None, paused));
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(super::sweep(state.clone(), rx));
    Harness { router: partner::router(state.clone()), state, stop, _dir: dir }
}

async fn call(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let resp = h.router.clone().oneshot(req).await.expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body"))
}

fn json(body: &bytes::Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_default()
}

/// Submits a message; returns its delivery id.
async fn submit(h: &Harness, body: &str) -> String {
    let req = Request::post("/v1/submissions")
        .header("content-type", "application/xml")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let (status, _, body) = call(h, req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    json(&body)["deliveries"][0]["id"].as_str().expect("a delivery").to_owned()
}

fn next(query: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(format!("/v1/mailboxes/postfach/next{query}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).expect("request")
}

fn act(delivery: &str, what: &str, body: &str) -> Request<Body> {
    Request::post(format!("/v1/mailboxes/postfach/deliveries/{delivery}/{what}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

async fn delivery(h: &Harness, id: &str) -> crate::store::DeliveryView {
    let id = id.parse().expect("delivery id");
    h.state.pipeline.store().delivery(id).await.expect("store").expect("known delivery")
}

#[tokio::test]
async fn a_mailbox_hands_out_a_delivery_and_it_is_delivered_once_acknowledged() {
    let h = harness("30s", 4);
    let uuid = uuid::Uuid::new_v4().to_string();
    let sent = message(&uuid);
    let id = submit(&h, &sent).await;

    // Only the mailbox's own token opens it.
    for token in [None, Some("wrong-token-0123456789"), Some("another-mailbox-token-42")] {
        let (status, _, body) = call(&h, next("", token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {}", String::from_utf8_lossy(&body));
    }
    let (status, headers, body) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, sent.as_bytes(), "not the exact bytes the partner sent");
    assert_eq!(headers["content-type"], "application/xml");
    assert_eq!(headers["lotse-delivery-id"], id.as_str());
    assert_eq!(headers["lotse-message-id"], uuid.as_str());
    assert_eq!(headers["lotse-attempt"], "1");
    assert!(headers.contains_key("lotse-ack-by") && headers.contains_key("lotse-submission-id"), "{headers:?}");
    // Held: nobody else gets it meanwhile.
    let (status, _, _) = call(&h, next("", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Pending);

    // Operators see what is fetched and not acknowledged.
    let admin = crate::api::admin::router(h.state.clone());
    let held = || async {
        let req = Request::get("/v1/admin/endpoints").body(Body::empty()).expect("request");
        let resp = admin.clone().oneshot(req).await.expect("infallible");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        json(&body)["endpoints"][0]["held"].clone()
    };
    assert_eq!(held().await, serde_json::json!(1));

    let (status, _, body) = call(&h, act(&id, "ack", "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&body));
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Delivered);
    assert_eq!(held().await, serde_json::json!(0));
    let (status, _, body) = call(&h, act(&id, "ack", "")).await;
    assert_eq!(status, StatusCode::CONFLICT, "a second ack");
    assert_eq!(json(&body)["type"].as_str().map(|t| t.ends_with("not-held")), Some(true), "{body:?}");
}

#[tokio::test]
async fn an_unacknowledged_delivery_comes_again_and_a_rejected_one_goes_dead() {
    let h = harness("1s", 4);
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, _, _) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    // Not acknowledged within 1 s: a failed attempt, then offered again.
    let (status, headers, body) = call(&h, next("?wait=10s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK, "not offered again: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["lotse-delivery-id"], id.as_str());
    assert_eq!(headers["lotse-attempt"], "2");
    let view = delivery(&h, &id).await;
    assert!(view.last_error.as_deref().unwrap_or("").contains("not acknowledged within 1s"), "{view:?}");

    let (status, _, body) = call(&h, act(&id, "reject", r#"{"nonsense": 1}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = call(&h, act(&id, "reject", r#"{"reason": "Aktenzeichen unbekannt"}"#)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let view = delivery(&h, &id).await;
    assert_eq!(view.state, crate::store::DeliveryState::Dead);
    assert!(view.last_error.as_deref().unwrap_or("").contains("Aktenzeichen unbekannt"), "{view:?}");
}

#[tokio::test]
async fn a_rejection_with_retry_comes_again_and_a_busy_mailbox_says_so() {
    let h = harness("30s", 1);
    let first = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, headers, _) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    let fetched = headers["lotse-delivery-id"].to_str().expect("id").to_owned();
    // One held is this mailbox's most: fetch no more until it is acknowledged.
    let (status, headers, body) = call(&h, next("", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("retry-after"));
    let (status, _, _) = call(&h, next("?wait=forever", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) =
        call(&h, act(&fetched, "reject", r#"{"reason": "Fachverfahren gewartet", "retry": true}"#)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(delivery(&h, &fetched).await.state, crate::store::DeliveryState::Pending);
    // Both come (the retried one after its short backoff).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        let (status, headers, _) = call(&h, next("?wait=2s", Some(TOKEN))).await;
        if status == StatusCode::OK {
            let id = headers["lotse-delivery-id"].to_str().expect("id").to_owned();
            let (acked, _, _) = call(&h, act(&id, "ack", "")).await;
            assert_eq!(acked, StatusCode::NO_CONTENT);
            seen.push(id);
        }
    }
    assert!(seen.contains(&first) && seen.len() == 2, "fetched {seen:?}");
}

#[tokio::test]
async fn concurrent_fetches_count_toward_the_limit() {
    let h = harness("30s", 1);
    // A fetch that waits takes the one place: a second one at the same time is told so at once.
    let (first, second) = tokio::join!(call(&h, next("?wait=1s", Some(TOKEN))), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(&h, next("", Some(TOKEN))).await
    });
    assert_eq!(first.0, StatusCode::NO_CONTENT);
    assert_eq!(second.0, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&second.2));
    // Once it ended, the place is free again.
    let (status, _, _) = call(&h, next("", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_stopping_hub_gives_back_what_is_held() {
    let h = harness("30s", 4);
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, _, _) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    h.stop.send(true).expect("the sweeper listens");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let view = loop {
        let view = delivery(&h, &id).await;
        if view.last_error.is_some() || tokio::time::Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view.state, crate::store::DeliveryState::Pending);
    assert!(view.last_error.as_deref().unwrap_or("").contains("hub stopped"), "{view:?}");
    // A stopping hub hands nothing out any more (it could not give it back)...
    let (status, _, _) = call(&h, next("?wait=1s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "handed out after the hub stopped");
    assert_eq!(h.state.mailboxes.held_count("postfach"), 0);
    // ...and the delivery is due again at once, for the next process.
    let leased = h.state.pipeline.store().lease("postfach", 1, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(leased.first().map(|l| (l.delivery_id.to_string(), l.attempt)), Some((id.clone(), 2)));
}

/// A long poll that is waiting when the hub stops hands out nothing that comes afterwards:
/// the holds were given back already, so a delivery held then would be held by nobody.
#[tokio::test]
async fn a_long_poll_waiting_when_the_hub_stops_hands_nothing_out() {
    let h = Arc::new(harness("30s", 4));
    let poll = tokio::spawn({
        let h = h.clone();
        async move { call(&h, next("?wait=5s", Some(TOKEN))).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.stop.send(true).expect("the sweeper listens");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, _, _) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::NO_CONTENT, "a delivery was handed out after the hub stopped");
    assert_eq!(h.state.mailboxes.held_count("postfach"), 0);
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Pending);
}

/// The embedded store with two things changed: `settle` waits until the gate lets it through
/// (a broker slow to confirm), and answers relayed from other processes come from `verdicts`.
struct Wrapped {
    inner: Arc<dyn crate::store::Store>,
    gate: Arc<tokio::sync::Semaphore>,
    verdicts: tokio::sync::broadcast::Sender<crate::store::MailboxVerdict>,
}

impl Wrapped {
    fn new(inner: Arc<dyn crate::store::Store>, gate: Arc<tokio::sync::Semaphore>) -> Wrapped {
        Wrapped { inner, gate, verdicts: tokio::sync::broadcast::channel(16).0 }
    }
}

#[async_trait::async_trait]
impl crate::store::testing::Passthrough for Wrapped {
    fn inner(&self) -> &dyn crate::store::Store {
        self.inner.as_ref()
    }
    async fn settle(&self, l: crate::store::Lease, o: crate::store::Outcome) -> Result<(), crate::store::StoreError> {
        let _pass = self.gate.acquire().await;
        self.inner.settle(l, o).await
    }
    fn relayed_verdicts(&self) -> Option<tokio::sync::broadcast::Receiver<crate::store::MailboxVerdict>> {
        Some(self.verdicts.subscribe())
    }
}

/// An agency whose HTTP client gives up while its acknowledgement is being recorded (the store
/// slow to confirm) must not leave the delivery pending and held by nobody: the settle goes on
/// without the request.
#[tokio::test]
async fn an_acknowledgement_is_recorded_even_when_its_client_hangs_up() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let h = harness_on("30s", 4, |inner| Arc::new(Wrapped::new(inner, gate.clone())));
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, _, _) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    // The client hangs up while the settle waits for the store: its request future is dropped.
    let hung_up = tokio::time::timeout(Duration::from_millis(200), call(&h, act(&id, "ack", ""))).await;
    assert!(hung_up.is_err(), "the ack answered although the store had not recorded it");
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Pending);
    gate.add_permits(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivery(&h, &id).await.state != crate::store::DeliveryState::Delivered {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the acknowledgement was lost with its request: the delivery is {:?}",
            delivery(&h, &id).await.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An answer relayed from another process that was written before this process handed the
/// delivery out (an answer to an earlier attempt, replayed when the event stream is read again
/// from its start) does not settle the attempt held now; a newer one does.
#[tokio::test]
async fn a_relayed_answer_older_than_the_fetch_does_not_settle_it() {
    let gate = Arc::new(tokio::sync::Semaphore::new(1_000));
    let verdicts = std::sync::OnceLock::new();
    let h = harness_on("30s", 4, |inner| {
        let wrapped = Wrapped::new(inner, gate.clone());
        let _ = verdicts.set(wrapped.verdicts.clone());
        Arc::new(wrapped)
    });
    let verdicts = verdicts.get().expect("the store was wrapped");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(super::follow_verdicts(h.state.clone(), stopped));
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let before = crate::store::now_millis();
    let (status, _, _) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK);
    let delivery_id: crate::store::DeliveryId = id.parse().expect("delivery id");
    let relayed = |verdict, at| crate::store::MailboxVerdict { mailbox: "postfach".into(), delivery_id, verdict, at };

    let stale = crate::store::Verdict::Reject { reason: "an earlier attempt".into(), retry: false };
    verdicts.send(relayed(stale, before - 60_000)).expect("a follower listens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Pending, "settled by a stale answer");
    assert_eq!(h.state.mailboxes.held_count("postfach"), 1, "no longer held after a stale answer");

    verdicts.send(relayed(crate::store::Verdict::Ack, crate::store::now_millis())).expect("a follower listens");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivery(&h, &id).await.state != crate::store::DeliveryState::Delivered {
        assert!(tokio::time::Instant::now() < deadline, "a current answer did not settle it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agency's time to answer counts from when it gets the delivery: a long poll that waited
/// longer than the mailbox's `timeout` before something came still gets the whole timeout.
#[tokio::test]
async fn the_time_to_answer_starts_when_the_delivery_is_handed_out() {
    let h = Arc::new(harness("2s", 4));
    let poll = tokio::spawn({
        let h = h.clone();
        async move { call(&h, next("?wait=10s", Some(TOKEN))).await }
    });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, headers, _) = poll.await.expect("poll task");
    let received = time::OffsetDateTime::now_utc();
    assert_eq!(status, StatusCode::OK);
    let ack_by = headers["lotse-ack-by"].to_str().expect("text");
    let ack_by = time::OffsetDateTime::parse(ack_by, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
    assert!(
        ack_by - received > time::Duration::milliseconds(1_500),
        "Lotse-Ack-By {ack_by} leaves less than the 2 s timeout after the handover at {received}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _, body) = call(&h, act(&id, "ack", "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&body));
    assert_eq!(delivery(&h, &id).await.state, crate::store::DeliveryState::Delivered);
}

/// A long poll whose client went away gives up its place among the mailbox's `concurrency`
/// and takes no delivery for nobody: the agency's next poll gets the delivery.
#[tokio::test]
async fn an_abandoned_long_poll_frees_its_place_and_takes_nothing() {
    let h = harness("30s", 1);
    let abandoned = tokio::time::timeout(Duration::from_millis(300), call(&h, next("?wait=20s", Some(TOKEN)))).await;
    assert!(abandoned.is_err(), "the poll answered although nothing was there");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let id = submit(&h, &message(&uuid::Uuid::new_v4().to_string())).await;
    let (status, headers, body) = call(&h, next("?wait=5s", Some(TOKEN))).await;
    assert_eq!(status, StatusCode::OK, "the next poll: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["lotse-delivery-id"], id.as_str());
    assert_eq!(headers["lotse-attempt"], "1", "an attempt was spent on the abandoned poll");
    assert_eq!(h.state.mailboxes.held_count("postfach"), 1);
}

/// A rejection whose body never comes holds no connection: without the mailbox's token it is
/// refused before any body is read, and with it the body must come within `read_timeout`.
#[tokio::test]
async fn a_rejection_whose_body_never_comes_is_answered_in_time() {
    let h = harness("30s", 4);
    let stalled = |token: Option<&str>| {
        let mut b = Request::post("/v1/mailboxes/postfach/deliveries/x/reject")
            .header("content-type", "application/json")
            .header("content-length", "1000");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        b.body(Body::from_stream(never)).expect("request")
    };
    let refused = tokio::time::timeout(Duration::from_secs(1), call(&h, stalled(None))).await;
    let (status, _, _) = refused.expect("without a token the answer does not wait for the body");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let timed_out = tokio::time::timeout(Duration::from_secs(5), call(&h, stalled(Some(TOKEN)))).await;
    let (status, headers, body) = timed_out.expect("a body that never comes is not waited for beyond read_timeout");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/problem+json");
}
