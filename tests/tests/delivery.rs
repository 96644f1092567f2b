//! End to end with the project's synthetic fixtures: real `lotse serve` processes and real
//! receivers on 127.0.0.1. Fan-out, retries, dead letters, idempotent resends, the status log and
//! the problem answers.

use std::collections::BTreeSet;
use std::time::Duration;

use hub::receiver::{ReceiverHandle, ReceiverOptions, spawn};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::api::{delivery_events, event_kinds};
use tests::fixtures::{ANTRAG, MITTEILUNG, load, new_uuid, with_uuid};
use tests::{Api, Hub, HubDir, config, lotse_bin};

const WAIT: Duration = Duration::from_secs(30);

const ROUTE_ANTRAG: &str = "[[routes]]\nname = \"antrag\"\nreader = \"bab:09999001\"\nendpoints = [\"a\"]\n";

async fn start(config: String) -> (HubDir, Hub) {
    let mut dir = HubDir::new(lotse_bin!(), &config).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    (dir, hub)
}

async fn receiver(opts: ReceiverOptions) -> ReceiverHandle {
    spawn(opts).await.expect("receiver starts")
}

fn antrag() -> (String, Vec<u8>) {
    let uuid = new_uuid();
    let body = with_uuid(&load(ANTRAG).expect("fixture"), &uuid).expect("uuid");
    (uuid, body)
}

/// `(delivery id, endpoint)` pairs of a 202 body.
fn receipt_deliveries(body: &Value) -> Vec<(String, String)> {
    body["deliveries"]
        .as_array()
        .expect("deliveries array")
        .iter()
        .map(|d| (d["id"].as_str().expect("id").to_owned(), d["endpoint"].as_str().expect("endpoint").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fans_out_to_two_endpoints_byte_identical_with_lotse_headers() {
    let (ra, rb) = (receiver(ReceiverOptions::default()).await, receiver(ReceiverOptions::default()).await);
    let routes = "[[routes]]\nname = \"both\"\nreader = \"bab:09999001\"\nendpoints = [\"a\", \"b\"]\n";
    let (_dir, hub) = start(config(&[("a", ra.url("/a")), ("b", rb.url("/b"))], routes, "")).await;
    let api = Api::new();
    let (uuid, body) = antrag();
    let answer = api.submit_xml(&hub, body.clone()).await.expect("submit");
    assert_eq!(answer.status, 202, "{}\nlog:\n{}", answer.raw, hub.log_tail());
    let submission_id = answer.body["submission_id"].as_str().expect("submission_id").to_owned();
    assert_eq!(answer.location.as_deref(), Some(format!("/v1/submissions/{submission_id}").as_str()));
    let deliveries = receipt_deliveries(&answer.body);
    let endpoints: BTreeSet<&str> = deliveries.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(endpoints, BTreeSet::from(["a", "b"]), "one delivery per endpoint");

    for (receiver, endpoint, path) in [(&ra, "a", "/a"), (&rb, "b", "/b")] {
        assert!(receiver.wait_delivered(1, WAIT).await, "endpoint {endpoint} got nothing; log:\n{}", hub.log_tail());
        let arrivals = receiver.arrivals();
        assert_eq!(arrivals.len(), 1, "exactly one attempt at {endpoint}");
        let got = &arrivals[0];
        let expected_id = deliveries.iter().find(|(_, e)| e == endpoint).map(|(id, _)| id.clone());
        assert_eq!(got.delivery_id, expected_id, "Lotse-Delivery-Id is the receipt's id");
        assert_eq!(got.submission_id.as_deref(), Some(submission_id.as_str()));
        assert_eq!(got.message_id.as_deref(), Some(uuid.as_str()), "Lotse-Message-Id is the nachrichtenUUID");
        assert_eq!(got.attempt, Some(1));
        assert_eq!(got.path, path);
        assert!(got.content_type.as_deref().is_some_and(|c| c.contains("xml")), "content type {:?}", got.content_type);
        assert_eq!((got.len, got.sha256.as_str()), (body.len(), hex::encode(Sha256::digest(&body)).as_str()));
    }
    let view = api.wait_submission(&hub, &submission_id, WAIT, |v| v["state"] == "delivered").await.expect("delivered");
    assert_eq!(view["deliveries"].as_array().map(Vec::len), Some(2));
    assert_eq!(&event_kinds(&view)[..2], ["received", "routed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_two_503s_then_delivers_on_attempt_three() {
    let r = receiver(ReceiverOptions { fail_first: 2, fail_status: 503, ..ReceiverOptions::default() }).await;
    let (_dir, hub) = start(config(&[("a", r.url("/a"))], ROUTE_ANTRAG, "")).await;
    let api = Api::new();
    let answer = api.submit_xml(&hub, antrag().1).await.expect("submit");
    assert_eq!(answer.status, 202, "{}", answer.raw);
    let submission_id = answer.body["submission_id"].as_str().expect("submission_id").to_owned();
    let delivery_id = receipt_deliveries(&answer.body)[0].0.clone();

    assert!(r.wait_delivered(1, WAIT).await, "never delivered; log:\n{}", hub.log_tail());
    let seen: Vec<(Option<u32>, u16)> = r.arrivals().iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(seen, [(Some(1), 503), (Some(2), 503), (Some(3), 200)], "Lotse-Attempt counts up, same delivery");
    assert!(r.arrivals().iter().all(|a| a.delivery_id.as_deref() == Some(delivery_id.as_str())));

    let view = api.wait_submission(&hub, &submission_id, WAIT, |v| v["state"] == "delivered").await.expect("delivered");
    let events = delivery_events(&view, &delivery_id);
    let expected: Vec<(String, Option<u64>)> = [
        ("attempt", 1),
        ("retry_scheduled", 1),
        ("attempt", 2),
        ("retry_scheduled", 2),
        ("attempt", 3),
        ("delivered", 3),
    ]
    .iter()
    .map(|(k, a)| ((*k).to_owned(), Some(*a)))
    .collect();
    assert_eq!(events, expected, "event log:\n{view:#}");
    assert_eq!(view["deliveries"][0]["attempts"], 3);
    assert_eq!(view["deliveries"][0]["state"], "delivered");
    let seqs: Vec<u64> = view["events"].as_array().expect("events").iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "event seq increases: {seqs:?}");
    assert!(
        view["events"].as_array().expect("events").iter().all(|e| e["hash"].as_str().is_some_and(|h| !h.is_empty()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_goes_dead_at_once() {
    let r = receiver(ReceiverOptions { status: 400, ..ReceiverOptions::default() }).await;
    let (_dir, hub) = start(config(&[("a", r.url("/a"))], ROUTE_ANTRAG, "")).await;
    let api = Api::new();
    let answer = api.submit_xml(&hub, antrag().1).await.expect("submit");
    assert_eq!(answer.status, 202, "{}", answer.raw);
    let submission_id = answer.body["submission_id"].as_str().expect("submission_id").to_owned();
    let delivery_id = receipt_deliveries(&answer.body)[0].0.clone();
    let view = api.wait_submission(&hub, &submission_id, WAIT, |v| v["state"] == "failed").await.expect("failed");
    assert_eq!(view["deliveries"][0]["state"], "dead");
    assert_eq!(view["deliveries"][0]["attempts"], 1);
    let kinds: Vec<String> = delivery_events(&view, &delivery_id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["attempt", "dead"]);
    // With 50 ms backoffs a retry would have come by now; a permanent error gets none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.counts().attempts, 1, "no retry after a 400");
    let admin = api.get(&hub.admin_url("/v1/admin/deliveries?state=dead")).await.expect("admin list");
    assert_eq!(admin.status, 200, "{}", admin.raw);
    let ids: Vec<&str> =
        admin.body["deliveries"].as_array().expect("list").iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, [delivery_id.as_str()], "the dead-letter list holds it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_stored_once_and_answered_with_the_first_answer() {
    let r = receiver(ReceiverOptions::default()).await;
    let routes = "[[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n";
    let (_dir, hub) = start(config(&[("a", r.url("/a"))], routes, "")).await;
    let api = Api::new();

    // Same nachrichtenUUID (same partner), no key: a duplicate.
    let (_, body) = antrag();
    let first = api.submit_xml(&hub, body.clone()).await.expect("submit");
    assert_eq!(first.status, 202, "{}", first.raw);
    assert!(!first.duplicate);
    let again = api.submit_xml(&hub, body.clone()).await.expect("resubmit");
    assert_eq!(again.status, 202, "{}", again.raw);
    assert!(again.duplicate, "Lotse-Duplicate: true on the resend");
    assert_eq!(again.body, first.body, "the first answer again");

    // Same Idempotency-Key, different message: a duplicate too.
    let key = format!("key-{}", new_uuid());
    let mitteilung = |uuid: &str| with_uuid(&load(MITTEILUNG).expect("fixture"), uuid).expect("uuid");
    let keyed = api.submit(&hub, mitteilung(&new_uuid()), "application/xml", &[("idempotency-key", &key)]).await;
    let keyed = keyed.expect("keyed submit");
    assert_eq!(keyed.status, 202, "{}", keyed.raw);
    let keyed_again = api.submit(&hub, mitteilung(&new_uuid()), "application/xml", &[("idempotency-key", &key)]).await;
    let keyed_again = keyed_again.expect("keyed resubmit");
    assert_eq!(keyed_again.status, 202, "{}", keyed_again.raw);
    assert!(keyed_again.duplicate);
    assert_eq!(keyed_again.body, keyed.body);

    // Two stored submissions -> two deliveries, and no third one later.
    assert!(r.wait_delivered(2, WAIT).await, "log:\n{}", hub.log_tail());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.counts().delivered, 2, "each stored once: {:?}", r.arrivals());
    let submissions: BTreeSet<String> = r.arrivals().iter().filter_map(|a| a.submission_id.clone()).collect();
    let expected: BTreeSet<String> =
        [&first.body, &keyed.body].iter().map(|b| b["submission_id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(submissions, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problem_json() {
    let r = receiver(ReceiverOptions::default()).await;
    let partners = "[[partners]]\nname = \"planungsbuero\"\ntoken = \"e2e-token-0123456789abcdef\"\n\n[limits]\nmax_body_bytes = 4096\n";
    let (_dir, hub) = start(config(&[("a", r.url("/a"))], ROUTE_ANTRAG, partners)).await;
    let api = Api::new();
    let auth = [("authorization", "Bearer e2e-token-0123456789abcdef")];
    let xml = "application/xml";

    let check = |what: &str, answer: &tests::api::Answer, status: u16| {
        assert_eq!(answer.status, status, "{what}: {}", answer.raw);
        assert!(
            answer.content_type.as_deref().is_some_and(|c| c.starts_with("application/problem+json")),
            "{what}: content type {:?}",
            answer.content_type
        );
        assert_eq!(answer.body["status"], status, "{what}: problem body {}", answer.raw);
        assert!(answer.body["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: title");
        assert!(answer.body["type"].as_str().is_some(), "{what}: type");
    };

    let no_token = api.submit(&hub, antrag().1, xml, &[]).await.expect("send");
    check("no token", &no_token, 401);
    let malformed = api.submit(&hub, b"<a><b></a>".to_vec(), xml, &auth).await.expect("send");
    check("malformed", &malformed, 400);
    let dtd = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\">]>\n{}",
        String::from_utf8(antrag().1).expect("utf-8").split_once("?>").expect("declaration").1
    );
    let dtd = api.submit(&hub, dtd, xml, &auth).await.expect("send");
    check("DTD", &dtd, 400);
    let big = format!("<a>{}</a>", "x".repeat(8192));
    let big = api.submit(&hub, big, xml, &auth).await.expect("send");
    check("too large", &big, 413);
    let text = api.submit(&hub, antrag().1, "text/plain", &auth).await.expect("send");
    check("media type", &text, 415);
    let unrouted = with_uuid(&load(MITTEILUNG).expect("fixture"), &new_uuid()).expect("uuid");
    let unrouted = api.submit(&hub, unrouted, xml, &auth).await.expect("send");
    check("no route", &unrouted, 422);
    assert!(unrouted.raw.contains("bab:09999002"), "the problem names the reader it looked for: {}", unrouted.raw);
    assert!(unrouted.raw.contains("0300"), "the problem names the message type: {}", unrouted.raw);

    let ok = api.submit(&hub, antrag().1, xml, &auth).await.expect("send");
    assert_eq!(ok.status, 202, "the same hub accepts a good message: {}", ok.raw);
    let partner = api
        .with_token("e2e-token-0123456789abcdef")
        .submission(&hub, ok.body["submission_id"].as_str().expect("id"))
        .await
        .expect("status");
    assert_eq!(partner["partner"], "planungsbuero");
    assert!(r.wait_delivered(1, WAIT).await, "the good message arrives");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.counts().attempts, 1, "only the good message was delivered: {:?}", r.arrivals());
    for url in [hub.partner_url("/healthz"), hub.admin_url("/healthz")] {
        assert_eq!(api.get(&url).await.expect("healthz").status, 200, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_dead_delivery_with_the_same_id_and_bytes() {
    // The agency refuses the first attempt (400: dead at once), then accepts.
    let r = receiver(ReceiverOptions { fail_first: 1, fail_status: 400, ..ReceiverOptions::default() }).await;
    let (_dir, hub) = start(config(&[("a", r.url("/a"))], ROUTE_ANTRAG, "")).await;
    let api = Api::new();
    let (_, body) = antrag();
    let answer = api.submit_xml(&hub, body.clone()).await.expect("submit");
    assert_eq!(answer.status, 202, "{}", answer.raw);
    let submission_id = answer.body["submission_id"].as_str().expect("submission_id").to_owned();
    let delivery_id = receipt_deliveries(&answer.body)[0].0.clone();
    api.wait_submission(&hub, &submission_id, WAIT, |v| v["state"] == "failed").await.expect("dead first");

    let replay_url = hub.admin_url(&format!("/v1/admin/deliveries/{delivery_id}/replay"));
    let no_reason = api.client.post(&replay_url).json(&serde_json::json!({})).send().await.expect("replay");
    assert_eq!(no_reason.status().as_u16(), 400, "a replay without a reason is refused");
    let replay = api
        .client
        .post(&replay_url)
        .json(&serde_json::json!({ "reason": "agency fixed its schema check", "actor": "e2e" }))
        .send()
        .await
        .expect("replay");
    assert!(replay.status().is_success(), "replay answered {}", replay.status());

    assert!(r.wait_delivered(1, WAIT).await, "replayed delivery never arrived; log:\n{}", hub.log_tail());
    let arrivals = r.arrivals();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert!(arrivals.iter().all(|a| a.delivery_id.as_deref() == Some(delivery_id.as_str())), "same delivery id");
    assert_eq!(arrivals[0].sha256, arrivals[1].sha256, "a replay sends the same bytes");
    assert_eq!(arrivals[1].sha256, hex::encode(Sha256::digest(&body)));
    let view = api.wait_submission(&hub, &submission_id, WAIT, |v| v["state"] == "delivered").await.expect("delivered");
    let kinds: Vec<String> = delivery_events(&view, &delivery_id).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["attempt", "dead", "replayed", "attempt", "delivered"], "{view:#}");
    let replayed = view["events"].as_array().expect("events").iter().find(|e| e["kind"] == "replayed").cloned();
    let detail = replayed.map(|e| e["detail"].to_string()).unwrap_or_default();
    assert!(detail.contains("agency fixed its schema check"), "the reason is audited: {detail}");
    let again =
        api.client.post(&replay_url).json(&serde_json::json!({ "reason": "twice" })).send().await.expect("replay");
    assert_eq!(again.status().as_u16(), 409, "only dead deliveries are replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_endpoint_gets_the_json_form_while_an_original_endpoint_gets_the_bytes() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = receiver(ReceiverOptions { out_dir: Some(out.path().to_owned()), ..ReceiverOptions::default() }).await;
    let routes = "[[routes]]\nname = \"both\"\nreader = \"bab:09999001\"\nendpoints = [\"orig\", \"json\"]\n";
    let mut text = config(&[("orig", r.url("/orig"))], routes, "");
    text.push_str(&format!(
        "\n[[endpoints]]\nname = \"json\"\nkind = \"http\"\nurl = \"{}\"\nformat = \"json\"\n",
        r.url("/json")
    ));
    let (_dir, hub) = start(text).await;
    let api = Api::new();
    let (uuid, body) = antrag();
    let answer = api.submit_xml(&hub, body.clone()).await.expect("submit");
    assert_eq!(answer.status, 202, "{}", answer.raw);
    assert!(r.wait_delivered(2, WAIT).await, "log:\n{}", hub.log_tail());
    let arrivals = r.arrivals();
    let orig = arrivals.iter().find(|a| a.path == "/orig").expect("original delivery");
    assert_eq!(orig.sha256, hex::encode(Sha256::digest(&body)));
    let json = arrivals.iter().find(|a| a.path == "/json").expect("json delivery");
    assert!(json.content_type.as_deref().is_some_and(|c| c.contains("json")), "{:?}", json.content_type);
    assert_ne!(json.sha256, orig.sha256, "the JSON form is not the XML bytes");
    assert_eq!(json.message_id.as_deref(), Some(uuid.as_str()));
    let id = json.delivery_id.clone().expect("delivery id");
    let listing: Vec<_> = std::fs::read_dir(out.path().join("json"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    let stored = std::fs::read(out.path().join("json").join(format!("{id}.json")))
        .unwrap_or_else(|e| panic!("{e}: {listing:?} {json:?}"));
    let value: Value = serde_json::from_slice(&stored).expect("the JSON form parses as JSON");
    assert!(value.to_string().contains(&uuid), "the JSON form carries the nachrichtenUUID");
    assert!(value.to_string().contains("bab:09999001"), "and the reader key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_to_json_and_back_through_the_hub_keeps_the_header_and_text() {
    let out = tempfile::tempdir().expect("tempdir");
    let r = receiver(ReceiverOptions { out_dir: Some(out.path().to_owned()), ..ReceiverOptions::default() }).await;
    let routes = "[[routes]]\nname = \"both\"\nreader = \"bab:09999001\"\nendpoints = [\"json\", \"xml\"]\n";
    let partners = "[[partners]]\nname = \"p1\"\ntoken = \"p1-token-0123456789abcdef\"\n\n\
                    [[partners]]\nname = \"p2\"\ntoken = \"p2-token-0123456789abcdef\"\n";
    let mut text = config(&[], routes, partners);
    for (name, format) in [("json", "json"), ("xml", "xml")] {
        text.push_str(&format!(
            "\n[[endpoints]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\nformat = \"{format}\"\n",
            r.url(&format!("/{name}"))
        ));
    }
    let (_dir, hub) = start(text).await;
    let (p1, p2) =
        (Api::new().with_token("p1-token-0123456789abcdef"), Api::new().with_token("p2-token-0123456789abcdef"));
    let stored = |a: &hub::receiver::Arrival| {
        let ext = if a.path == "/json" { "json" } else { "xml" };
        let id = a.delivery_id.clone().expect("delivery id");
        let path = out.path().join(&a.path[1..]).join(format!("{id}.{ext}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; arrival {a:?}", path.display()))
    };

    // XML in: the XML endpoint gets the bytes, the JSON endpoint the JSON form.
    let (uuid, xml) = antrag();
    let first = p1.submit_xml(&hub, xml.clone()).await.expect("submit xml");
    assert_eq!(first.status, 202, "{}", first.raw);
    assert!(r.wait_delivered(2, WAIT).await, "log:\n{}", hub.log_tail());
    let arrivals = r.arrivals();
    let xml_arrival = arrivals.iter().find(|a| a.path == "/xml").expect("xml delivery");
    assert_eq!(xml_arrival.sha256, hex::encode(Sha256::digest(&xml)), "format xml of an XML submission = its bytes");
    let json_form = stored(arrivals.iter().find(|a| a.path == "/json").expect("json delivery"));
    serde_json::from_slice::<Value>(&json_form).expect("the JSON form is JSON");

    // That JSON in (another partner, so the same nachrichtenUUID is no duplicate): the JSON
    // endpoint gets its bytes, the XML endpoint a converted message with the same header.
    let second = p2.submit(&hub, json_form.clone(), "application/json", &[]).await.expect("submit json");
    assert_eq!(second.status, 202, "{}\nlog:\n{}", second.raw, hub.log_tail());
    assert!(r.wait_delivered(4, WAIT).await, "log:\n{}", hub.log_tail());
    let submission = second.body["submission_id"].as_str().expect("id").to_owned();
    let arrivals = r.arrivals();
    let of_second: Vec<_> =
        arrivals.iter().filter(|a| a.submission_id.as_deref() == Some(submission.as_str())).collect();
    let json_again = of_second.iter().find(|a| a.path == "/json").expect("json delivery");
    assert_eq!(
        json_again.sha256,
        hex::encode(Sha256::digest(&json_form)),
        "format json of a JSON submission = its bytes"
    );
    let xml_again = of_second.iter().find(|a| a.path == "/xml").expect("xml delivery");
    assert!(xml_again.content_type.as_deref().is_some_and(|c| c.contains("xml")), "{:?}", xml_again.content_type);
    let converted = stored(xml_again);
    let before = tests::corpus::scan_header(&xml).expect("scan original");
    let after = tests::corpus::scan_header(&converted).expect("the converted message is well-formed XML");
    assert_eq!(after, before, "root, namespace, nachrichtenUUID and reader survive XML -> JSON -> XML");
    assert_eq!(after.message_uuid.as_deref(), Some(uuid.as_str()));
    let converted = String::from_utf8(converted).expect("UTF-8");
    assert!(converted.contains("Grünfläche, Straße"), "text survives: {converted}");
}
