//! Pausing an endpoint on RabbitMQ holds it on every process that shares the broker, and after
//! a restart: two real hubs (partner and admin API on 127.0.0.1) on one prefix.
//!
//! The broker at `LOTSE_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), a
//! prefix of its own, queues deleted afterwards; skipped without a broker unless `CI=true`.

use std::path::Path;
use std::time::Duration;

use hub::config::Config;
use hub::store::rabbitmq::RabbitStore;
use hub::store::{Counts, Store};
use serde_json::Value;
use tokio::time::Instant;

const ENDPOINT: &str = "ablage";

fn amqp_url() -> String {
    std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether a broker answers; without one the test is skipped, except with `CI=true`.
async fn broker_answers(url: &str) -> bool {
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await;
    match probe {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".into(),
            };
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {reason}");
            eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL ({reason})");
            false
        }
    }
}

fn message(n: u32) -> String {
    format!(
        r#"<t:antrag.0200 xmlns:t="urn:example:test"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtenUUID>00000000-0000-4000-8000-{n:012}</nachrichtenUUID><nachrichtentyp><code>0200</code></nachrichtentyp></identifikation.nachricht><leser><kennung>bab:1</kennung></leser></nachrichtenkopf.g2g></t:antrag.0200>"#
    )
}

/// A hub on RabbitMQ (`prefix`) delivering to the folder `out`.
async fn start_hub(url: &str, prefix: &str, data: &Path, out: &Path) -> anyhow::Result<hub::app::Running> {
    let endpoint = format!("name = \"{ENDPOINT}\"\nkind = \"file\"\npath = \"{}\"", out.display());
    start_hub_with(url, prefix, data, ENDPOINT, &endpoint).await
}

/// A hub on RabbitMQ (`prefix`) with one endpoint, `name`, configured by `endpoint` (its TOML
/// keys), and one route to it.
async fn start_hub_with(
    url: &str,
    prefix: &str,
    data: &Path,
    name: &str,
    endpoint: &str,
) -> anyhow::Result<hub::app::Running> {
    let config = Config::parse(&format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "{data}"
[queue]
kind = "rabbitmq"
url = "{url}"
prefix = "{prefix}"
[schemas]
validate = false
[[endpoints]]
{endpoint}
[[routes]]
name = "all"
endpoints = ["{name}"]
"#,
        data = data.display(),
    ))?;
    let partner = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let store = hub::app::open_store(&config).await?;
    hub::app::start(config, store, partner, admin).await
}

/// The file endpoint's deliveries so far (each delivery is a file and its metadata).
fn delivered_files(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "xml")).count())
        .unwrap_or(0)
}

async fn admin(client: &reqwest::Client, hub: &hub::app::Running, verb: &str, body: Value) -> anyhow::Result<Value> {
    let url = format!("http://{}/v1/admin/endpoints/{ENDPOINT}/{verb}", hub.admin_addr);
    let r = client.post(url).json(&body).send().await?;
    anyhow::ensure!(r.status() == 200, "{verb}: {} {}", r.status(), r.text().await?);
    Ok(r.json().await?)
}

/// What `GET /v1/admin/endpoints` of `hub` says of the endpoint.
async fn endpoint_view(client: &reqwest::Client, hub: &hub::app::Running) -> anyhow::Result<Value> {
    let r: Value = client.get(format!("http://{}/v1/admin/endpoints", hub.admin_addr)).send().await?.json().await?;
    r["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == ENDPOINT))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no endpoint `{ENDPOINT}` in {r}"))
}

/// Polls `check` every 50 ms until it holds or `within` has passed.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The issue: a pause reached only the process that got the request, so with several processes
/// on RabbitMQ the others went on delivering. Now one process's pause shows on the other within
/// the stream's lag, deliveries accepted by either are held on both, and a resume on the other
/// process releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_pause_on_one_process_holds_every_process_until_resumed_on_another() -> anyhow::Result<()> {
    let url = amqp_url();
    if !broker_answers(&url).await {
        return Ok(());
    }
    let prefix = format!("lotse-test-{}", uuid::Uuid::new_v4().simple());
    let result = pause_on_two_hubs(&url, &prefix).await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn pause_on_two_hubs(url: &str, prefix: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("eingang");
    std::fs::create_dir(&out)?;
    let a = start_hub(url, prefix, &dir.path().join("a"), &out).await?;
    let b = start_hub(url, prefix, &dir.path().join("b"), &out).await?;
    let client = reqwest::Client::new();

    let paused =
        admin(&client, &a, "pause", serde_json::json!({"actor": "oncall-anna", "reason": "receiver down"})).await?;
    anyhow::ensure!(paused["paused"] == true, "pause answered {paused}");
    eventually(Duration::from_secs(5), "process b shows the pause made on a", || async {
        Ok(endpoint_view(&client, &b).await?["paused"] == true)
    })
    .await?;
    let seen = endpoint_view(&client, &b).await?;
    anyhow::ensure!(seen["paused_by"] == "oncall-anna", "b shows who paused: {seen}");
    anyhow::ensure!(seen["pause_reason"] == "receiver down", "b shows why: {seen}");
    let overview: Value = client.get(format!("http://{}/v1/admin/overview", b.admin_addr)).send().await?.json().await?;
    anyhow::ensure!(overview["paused_endpoints"] == serde_json::json!([ENDPOINT]), "b's overview: {overview}");

    // Accepted by both processes, so both processes' workers would have work if not held.
    const N: u32 = 10;
    for n in 0..N {
        let hub = if n % 2 == 0 { &a } else { &b };
        let r = client
            .post(format!("http://{}/v1/submissions", hub.partner_addr))
            .header("content-type", "application/xml")
            .body(message(n))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "submission {n}: {}", r.status());
    }
    // Held means nothing happens, which only time can show: two seconds is ten times the
    // workers' pause check and four times a lease's wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(delivered_files(&out) == 0, "{} delivered while paused", delivered_files(&out));
    for (name, hub) in [("a", &a), ("b", &b)] {
        let counts: Counts = hub.store.counts().await?;
        anyhow::ensure!(counts.pending == u64::from(N), "{name}: {counts:?} while paused");
    }

    let resumed = admin(&client, &b, "resume", serde_json::json!({"actor": "oncall-ben"})).await?;
    anyhow::ensure!(resumed["paused"] == false, "resume answered {resumed}");
    eventually(Duration::from_secs(20), "every held delivery arrives after the resume", || async {
        Ok(delivered_files(&out) >= N as usize && a.store.counts().await?.pending == 0)
    })
    .await?;
    eventually(Duration::from_secs(5), "process a shows the resume made on b", || async {
        Ok(endpoint_view(&client, &a).await?["paused"] == false)
    })
    .await?;

    // Each process's link to the broker, for operators: connected, one connection so far, and,
    // with nothing written any more, both as far in the event stream.
    let store_of = |hub: &hub::app::Running| {
        let url = format!("http://{}/v1/admin/overview", hub.admin_addr);
        let client = client.clone();
        async move { anyhow::Ok(client.get(url).send().await?.json::<Value>().await?["store"].clone()) }
    };
    eventually(Duration::from_secs(5), "both processes show the same stream offset", || async {
        let (sa, sb) = (store_of(&a).await?, store_of(&b).await?);
        Ok(sa["broker"]["stream_offset"] == sb["broker"]["stream_offset"])
    })
    .await?;
    for (name, hub) in [("a", &a), ("b", &b)] {
        let store = store_of(hub).await?;
        anyhow::ensure!(store["kind"] == "rabbitmq" && store["ready"] == true, "{name}: {store}");
        let broker = &store["broker"];
        anyhow::ensure!(broker["connected"] == true && broker["blocked"] == false, "{name}: {store}");
        anyhow::ensure!(broker["connections"] == 1 && broker["rereads"] == 0, "{name}: {store}");
        // Past every submission's claim (each in a stream message of its own: sent one by one).
        anyhow::ensure!(broker["stream_offset"].as_u64() > Some(u64::from(N)), "{name}: {store}");
    }
    let metrics = client.get(format!("http://{}/metrics", a.admin_addr)).send().await?.text().await?;
    for line in ["lotse_rabbitmq_connected 1", "lotse_rabbitmq_blocked 0", "lotse_rabbitmq_connections_total 1"] {
        anyhow::ensure!(metrics.lines().any(|l| l == line), "no `{line}` in /metrics");
    }
    anyhow::ensure!(metrics.contains("lotse_event_stream_offset "), "no stream offset in /metrics");
    a.stop().await;
    b.stop().await;
    Ok(())
}

const MAILBOX: &str = "postfach";
const MAILBOX_TOKEN: &str = "postfach-token-0123456789";

/// A hub on RabbitMQ (`prefix`) with one mailbox endpoint that its agency fetches from.
async fn start_mailbox_hub(url: &str, prefix: &str, data: &Path) -> anyhow::Result<hub::app::Running> {
    let endpoint = format!("name = \"{MAILBOX}\"\nkind = \"mailbox\"\ntoken = \"{MAILBOX_TOKEN}\"");
    start_hub_with(url, prefix, data, MAILBOX, &endpoint).await
}

/// A mailbox is held on every process too: paused on one process, the other's mailbox hands
/// nothing out (204) though a delivery waits; resumed there, the agency fetches it from the
/// other process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_mailbox_paused_on_one_process_hands_nothing_out_on_another() -> anyhow::Result<()> {
    let url = amqp_url();
    if !broker_answers(&url).await {
        return Ok(());
    }
    let prefix = format!("lotse-test-{}", uuid::Uuid::new_v4().simple());
    let result = async {
        let dir = tempfile::tempdir()?;
        let a = start_mailbox_hub(&url, &prefix, &dir.path().join("a")).await?;
        let b = start_mailbox_hub(&url, &prefix, &dir.path().join("b")).await?;
        let client = reqwest::Client::new();
        let set = |hub: &hub::app::Running, verb: &str| {
            client
                .post(format!("http://{}/v1/admin/endpoints/{MAILBOX}/{verb}", hub.admin_addr))
                .json(&serde_json::json!({"actor": "oncall-anna", "reason": "agency migrating"}))
                .send()
        };
        let r = set(&a, "pause").await?;
        anyhow::ensure!(r.status() == 200, "pause: {}", r.status());
        let r = client
            .post(format!("http://{}/v1/submissions", a.partner_addr))
            .header("content-type", "application/xml")
            .body(message(1))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "submission: {}", r.status());
        let fetch = |wait: &str| {
            client
                .get(format!("http://{}/v1/mailboxes/{MAILBOX}/next?wait={wait}", b.partner_addr))
                .bearer_auth(MAILBOX_TOKEN)
                .send()
        };
        // The pause reaches b within the stream's lag; from then on b hands nothing out. Polls
        // are short (1 s) so that each one sees the pause as b knows it when it starts.
        eventually(Duration::from_secs(5), "process b shows the pause made on a", || async {
            let r: Value =
                client.get(format!("http://{}/v1/admin/endpoints", b.admin_addr)).send().await?.json().await?;
            Ok(r["endpoints"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == MAILBOX))
                .is_some_and(|e| e["paused"] == true))
        })
        .await?;
        for _ in 0..2 {
            let r = fetch("1s").await?;
            anyhow::ensure!(r.status() == 204, "b's mailbox handed out while paused: {}", r.status());
        }
        anyhow::ensure!(b.store.counts().await?.pending == 1, "the delivery waits");
        let r = set(&a, "resume").await?;
        anyhow::ensure!(r.status() == 200, "resume: {}", r.status());
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            let r = fetch("1s").await?;
            if r.status() == 200 {
                break r.text().await?;
            }
            anyhow::ensure!(Instant::now() < deadline, "b's mailbox handed nothing out after the resume");
        };
        anyhow::ensure!(got == message(1), "the fetched body: {got}");
        a.stop().await;
        b.stop().await;
        Ok(())
    }
    .await;
    RabbitStore::delete_topology(&url, &prefix, &[MAILBOX.to_owned()]).await?;
    result
}

/// A pause is a record in the durable event stream: a process that starts later (a restart)
/// folds it and holds the endpoint too, and a resume is kept the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_pause_survives_a_restart() -> anyhow::Result<()> {
    let url = amqp_url();
    if !broker_answers(&url).await {
        return Ok(());
    }
    let prefix = format!("lotse-test-{}", uuid::Uuid::new_v4().simple());
    let endpoints = [ENDPOINT.to_owned()];
    let result = async {
        let first = RabbitStore::open(&url, &prefix, &endpoints).await?;
        first.set_paused(ENDPOINT, true, "oncall-anna", None).await?;
        first.close().await;
        drop(first);

        let second = RabbitStore::open(&url, &prefix, &endpoints).await?;
        let pauses = second.pauses();
        let pause = pauses.get(ENDPOINT).ok_or_else(|| anyhow::anyhow!("forgotten after a restart: {pauses:?}"))?;
        anyhow::ensure!(pause.actor == "oncall-anna", "{pause:?}");
        second.set_paused(ENDPOINT, false, "oncall-ben", None).await?;
        second.close().await;
        drop(second);

        let third = RabbitStore::open(&url, &prefix, &endpoints).await?;
        let pauses = third.pauses();
        third.close().await;
        anyhow::ensure!(pauses.is_empty(), "the resume was not kept: {pauses:?}");
        Ok(())
    }
    .await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    result
}
