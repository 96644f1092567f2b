//! The per-endpoint circuit breaker: a receiver that is down gets probes, not every queued
//! delivery, and everything arrives once it is back. Real hub, real HTTP on 127.0.0.1.

use std::time::Duration;

use hub::config::Config;
use hub::receiver::{ReceiverOptions, spawn};
use hub::store::{DeliveryFilter, DeliveryState};

fn message(n: u32) -> String {
    format!(
        r#"<t:antrag.0200 xmlns:t="urn:example:test"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtenUUID>00000000-0000-4000-8000-{n:012}</nachrichtenUUID><nachrichtentyp><code>0200</code></nachrichtentyp></identifikation.nachricht><leser><kennung>bab:1</kennung></leser></nachrichtenkopf.g2g></t:antrag.0200>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_receiver_gets_probes_and_everything_arrives_when_it_is_back() {
    // A free port nobody listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "{}"
[schemas]
validate = false
[retry]
max_attempts = 1000
initial_backoff = "100ms"
max_backoff = "400ms"
[[endpoints]]
name = "down"
kind = "http"
url = "http://127.0.0.1:{port}/in"
concurrency = 4
timeout = "2s"
[[routes]]
name = "all"
endpoints = ["down"]
"#,
        dir.path().display()
    ))
    .expect("config");
    let partner = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let store = hub::app::open_store(&config).await.expect("store");
    let hub = hub::app::start(config, store.clone(), partner, admin).await.expect("start");
    let client = reqwest::Client::new();
    const N: u32 = 40;
    for n in 0..N {
        let r = client
            .post(format!("http://{}/v1/submissions", hub.partner_addr))
            .header("content-type", "application/xml")
            .body(message(n))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 202);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = DeliveryFilter { limit: 1000, ..Default::default() };
    let attempts: u32 = store.deliveries(&all).await.expect("list").iter().map(|d| d.attempts).sum();
    assert!(attempts >= 5, "the receiver was tried ({attempts} attempts)");
    assert!(attempts < N, "{attempts} attempts in 2 s for {N} queued deliveries: the breaker did not hold them back");

    let receiver = spawn(ReceiverOptions {
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
        out_dir: None,
        fail_first: 0,
        fail_status: 503,
        status: 200,
    })
    .await
    .expect("receiver");
    assert!(
        receiver.wait_delivered(u64::from(N), Duration::from_secs(30)).await,
        "not everything arrived after the receiver came back"
    );
    // Settlements trail the receiver's answers by a commit.
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = store.counts().await.expect("counts").pending;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending, 0);
    let delivered = store
        .deliveries(&DeliveryFilter { state: Some(DeliveryState::Delivered), limit: 1000, ..Default::default() })
        .await
        .expect("list");
    assert_eq!(delivered.len(), N as usize);
    hub.stop().await;
    let _ = receiver.shutdown().await;
}
