//! Crash safety: `kill -9` of `lotse` in the middle of 2,000 concurrent submissions, a restart on
//! the same data dir, then every submission that got a 202 is delivered at least once and no
//! delivery stays pending. Heavy: the nextest `ci` profile runs it alone (test group `heavy`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub::receiver::{ReceiverOptions, spawn};
use tests::fixtures::{ANTRAG, load, new_uuid, with_uuid};
use tests::{Api, HubDir, config, lotse_bin};

const TOTAL: usize = 2_000;
/// Kill once this many 202s came back: well inside the run, whatever the batch sizes.
const KILL_AT: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_accepted_submission() {
    let receiver = spawn(ReceiverOptions::default()).await.expect("receiver");
    let routes = "[[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n";
    let mut dir = HubDir::new(lotse_bin!(), &config(&[("a", receiver.url("/a"))], routes, "")).expect("hub dir");
    let mut hub = dir.start().await.expect("lotse serve starts");
    let url = hub.partner_url("/v1/submissions");
    let template = load(ANTRAG).expect("fixture");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).http1_only().build().expect("client");

    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Barrier::new(TOTAL + 1));
    let mut tasks = Vec::with_capacity(TOTAL);
    for _ in 0..TOTAL {
        let body = with_uuid(&template, &new_uuid()).expect("uuid");
        let (client, url, accepted, count, reached, go) =
            (client.clone(), url.clone(), accepted.clone(), count.clone(), reached.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let sent = client.post(&url).header("content-type", "application/xml").body(body).send().await;
            let Ok(response) = sent else { return };
            if response.status().as_u16() != 202 {
                return;
            }
            let Ok(json) = response.json::<serde_json::Value>().await else { return };
            let submission = json["submission_id"].as_str().unwrap_or_default().to_owned();
            let delivery = json["deliveries"][0]["id"].as_str().unwrap_or_default().to_owned();
            // Lock is never held across an await; poisoning would need a panic inside it.
            accepted.lock().unwrap_or_else(|p| p.into_inner()).push((submission, delivery));
            if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AT {
                reached.notify_one();
            }
        }));
    }
    go.wait().await;
    let hit = tokio::time::timeout(Duration::from_secs(120), reached.notified()).await;
    assert!(
        hit.is_ok(),
        "only {} of {TOTAL} accepted in 120 s; log:\n{}",
        count.load(Ordering::SeqCst),
        hub.log_tail()
    );
    hub.kill9().await.expect("kill -9");
    for task in tasks {
        let _ = task.await;
    }
    let accepted: Vec<(String, String)> = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!("crash: {} of {TOTAL} got a 202 before the kill", accepted.len());
    assert!(accepted.len() >= KILL_AT);
    assert!(accepted.len() < TOTAL, "the kill came after every answer: not a crash in the middle");
    assert!(accepted.iter().all(|(s, d)| !s.is_empty() && !d.is_empty()), "malformed 202 bodies");

    let hub = dir.start().await.expect("lotse restarts on the same data dir");
    let want: HashSet<String> = accepted.iter().map(|(_, d)| d.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let missing = loop {
        let got: HashSet<String> = receiver
            .with_arrivals(|a| a.iter().filter(|a| a.accepted()).filter_map(|a| a.delivery_id.clone()).collect());
        let missing: Vec<&String> = want.iter().filter(|d| !got.contains(*d)).collect();
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(missing, 0, "202'd deliveries never arrived; log:\n{}", hub.log_tail());

    // None stuck: every delivery the hub holds ends delivered (bounded wait).
    let api = Api::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pending = api.get(&hub.admin_url("/v1/admin/deliveries?state=pending&limit=5")).await.expect("admin");
        assert_eq!(pending.status, 200, "{}", pending.raw);
        let left = pending.body["deliveries"].as_array().map_or(usize::MAX, Vec::len);
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries stuck pending: {}", pending.raw);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead = api.get(&hub.admin_url("/v1/admin/deliveries?state=dead&limit=5")).await.expect("admin");
    assert_eq!(dead.body["deliveries"].as_array().map(Vec::len), Some(0), "dead after restart: {}", dead.raw);
    for (submission, _) in &accepted {
        let view = api.submission(&hub, submission).await.expect("a 202'd submission survives the crash");
        assert_eq!(view["state"], "delivered", "{view:#}");
    }
    let counts = receiver.counts();
    eprintln!(
        "crash: receiver saw {} requests, {} deliveries, {} repeats",
        counts.attempts, counts.delivered, counts.duplicates
    );
}
