//! The `lotse receiver`, `lotse bench` and `lotse deliveries` commands as processes: the lines
//! they print, what the receiver stores, a small bounded bench run through a real hub, and an
//! operator finding and replaying a dead case.

// Only the prefix and queue helpers are used here; the broker restart is the cluster suite's.
#[allow(dead_code)]
#[path = "../src/rabbit.rs"]
mod rabbit;

use std::process::Stdio;
use std::time::Duration;

use tests::fixtures::{ANTRAG, load, new_uuid, with_uuid};
use tests::{HubDir, config, lotse_bin};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_command_prints_its_address_fails_first_and_stores_once() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(lotse_bin!())
        .args(["receiver", "--listen", "127.0.0.1:0", "--fail-first", "1", "--fail-status", "503", "--out"])
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("lotse receiver starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = first.expect("a first line in time").expect("readable").expect("not closed");
    let addr = line.strip_prefix("listening ").expect("`listening <addr>`");
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    assert_ne!(addr.port(), 0);

    let client = reqwest::Client::new();
    let id = "0195a3e4-0000-7000-8000-00000000abcd";
    let mut statuses = Vec::new();
    for attempt in ["1", "2"] {
        let response = client
            .post(format!("http://{addr}/bauamt"))
            .header("content-type", "application/xml")
            .header("lotse-delivery-id", id)
            .header("lotse-attempt", attempt)
            .body("<a>ä</a>")
            .send()
            .await
            .expect("post");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [503, 200]);
    let stored = std::fs::read(out.path().join("bauamt").join(format!("{id}.xml"))).expect("stored body");
    assert_eq!(stored, "<a>ä</a>".as_bytes());
    let journal = std::fs::read_to_string(out.path().join("received.jsonl")).expect("journal");
    assert_eq!(journal.lines().count(), 2);

    let pid = child.id().expect("running").to_string();
    let term = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits on SIGTERM");
    assert!(status.expect("wait").success(), "exit 0 on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_command_reports_accepted_and_delivered() {
    // The bench's own receiver listens on a port chosen here; the hub's endpoint points at it.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let routes = "[[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n";
    let endpoint = format!("http://127.0.0.1:{port}/a");
    let mut dir = HubDir::new(lotse_bin!(), &config(&[("a", endpoint)], routes, "")).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, load(ANTRAG).expect("fixture")).expect("write message");
    let output = Command::new(lotse_bin!())
        .args(["bench", "--to", &hub.partner_url(""), "-n", "200", "-c", "8", "--max-time", "60s", "--json"])
        .args(["--receiver-listen", &format!("127.0.0.1:{port}"), "--drain-time", "60s", "--file"])
        .arg(&file)
        .output()
        .await
        .expect("lotse bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed:\n{stdout}\n{}\nhub log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        hub.log_tail()
    );
    let json = stdout.lines().find_map(|l| l.strip_prefix("json ")).expect("a json line");
    let report: serde_json::Value = serde_json::from_str(json).expect("json report");
    assert_eq!(report["sent"], 200);
    assert_eq!(report["accepted"], 200, "every submission unique and accepted: {report}");
    assert_eq!(report["delivered"], 200, "{report}");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert!(
        report["p99_ms"].as_f64().is_some_and(|p| p > 0.0) && report["max_ms"].as_f64() >= report["p50_ms"].as_f64()
    );
    // The pool was opened before the clock: no connection during the run with 8 clients.
    assert_eq!((report["preopened"].as_u64(), report["connections"].as_u64()), (Some(8), Some(8)), "{report}");

    // A warm-up's requests are sent and delivered but not counted.
    let output = Command::new(lotse_bin!())
        .args(["bench", "--to", &hub.partner_url(""), "-n", "100", "-c", "4", "--rate", "50", "--warmup", "1s"])
        .args(["--json", "--receiver-listen", &format!("127.0.0.1:{port}"), "--drain-time", "60s", "--file"])
        .arg(&file)
        .output()
        .await
        .expect("lotse bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench with a warm-up failed:\n{stdout}");
    let json = stdout.lines().find_map(|l| l.strip_prefix("json ")).expect("a json line");
    let report: serde_json::Value = serde_json::from_str(json).expect("json report");
    let warm = report["warmup_requests"].as_u64().expect("warmup_requests");
    assert!((40..=60).contains(&warm), "50/s for 1 s: {warm} in the warm-up: {report}");
    assert_eq!(report["sent"].as_u64(), Some(100 - warm), "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(100 - warm), "{report}");
    assert!(stdout.contains("time to 202 p50"), "{stdout}");
}

/// A receiver that refuses every message with `400`, after reading the whole request.
async fn refusing_receiver() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    let Some(end) = text.find("\r\n\r\n") else { continue };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                let answer =
                    "HTTP/1.1 400 Bad Request\r\ncontent-length: 18\r\nconnection: close\r\n\r\nAktenzeichen fehlt";
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// Writes the XBau application with a fresh `nachrichtenUUID` into `dir` and submits it with
/// `lotse submit`, which must answer 202 and not a duplicate; returns the id and the file.
async fn submit_antrag(dir: &HubDir, hub: &tests::Hub) -> (String, String) {
    let uuid = new_uuid();
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, with_uuid(&load(ANTRAG).expect("fixture"), &uuid).expect("uuid")).expect("write message");
    let file = file.to_string_lossy().into_owned();
    let (ok, out) = lotse(&["submit", &file, "--to", &hub.partner_url("")]).await;
    assert!(ok && !out.contains("duplicate"), "submit: {out}");
    (uuid, file)
}

async fn lotse(args: &[&str]) -> (bool, String) {
    let (code, text) = lotse_exit(args).await;
    (code == Some(0), text)
}

/// `lotse <args>`: its exit code and its output (stdout, then stderr).
async fn lotse_exit(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(lotse_bin!()).args(args).output().await.expect("lotse runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// The operator's commands against a real hub: a case the receiver refused (dead at once) is
/// found by the partner's `nachrichtenUUID`, listed among the dead, and replayed; an unknown id
/// finds nothing and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_commands_find_list_and_replay_a_dead_case() {
    let port = refusing_receiver().await;
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"a\"]\n";
    let mut dir = HubDir::new(lotse_bin!(), &config(&[("a", format!("http://127.0.0.1:{port}/a"))], routes, ""))
        .expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let (uuid, _) = submit_antrag(&dir, &hub).await;
    let admin = hub.admin_url("");
    let admin = admin.trim_end_matches('/');

    // Dead at the first attempt (a 400); listed among the dead.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let (ok, out) = lotse(&["deliveries", "list", "--state", "dead", "--admin", admin]).await;
        assert!(ok, "list: {out}");
        if let Some(line) = out.lines().find(|l| l.contains(" dead ")) {
            break line.split_whitespace().next().expect("the delivery id").to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead within 30 s: {out}\n{}", hub.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (ok, out) = lotse(&["deliveries", "find", "--message-id", &uuid, "--admin", admin]).await;
    assert!(ok, "find: {out}");
    assert!(out.contains("1 submissions") && out.contains(&delivery), "{out}");
    assert!(out.contains("dead") && out.contains("HTTP 400: Aktenzeichen fehlt"), "{out}");
    let (ok, out) = lotse(&["deliveries", "find", "--message-id", &new_uuid(), "--admin", admin]).await;
    assert!(!ok && out.contains("0 submissions"), "an unknown id: {out}");

    let (ok, out) =
        lotse(&["deliveries", "replay", &delivery, "--reason", "Empfänger korrigiert", "--admin", admin]).await;
    assert!(ok && out.contains("replayed"), "replay: {out}");
    // Sent again (and refused again): a second attempt, after the audited replay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = lotse(&["deliveries", "show", &delivery, "--admin", admin]).await;
        if out.contains("\"replayed\"") && out.contains("\"attempts\": 2") {
            assert!(out.contains("Empfänger korrigiert"), "the reason is in the log: {out}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no second attempt within 30 s: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `lotse status <args>` against the hub's admin API: its exit code and output.
async fn status(hub: &tests::Hub) -> (Option<i32>, String) {
    let admin = hub.admin_url("");
    lotse_exit(&["status", "--admin", admin.trim_end_matches('/')]).await
}

/// Polls `lotse status` every 200 ms until `done` holds for its exit code and output.
async fn status_until(hub: &tests::Hub, within: Duration, done: impl Fn(Option<i32>, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (code, out) = status(hub).await;
        if done(code, &out) {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: exit {code:?}\n{out}\n{}",
            hub.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An operator on call asks a hub how it is: ready, its store, what it holds per state. A hub
/// whose admin API does not answer exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_says_whether_the_hub_takes_submissions_and_what_it_holds() {
    let port = refusing_receiver().await;
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"a\"]\n";
    let mut dir = HubDir::new(lotse_bin!(), &config(&[("a", format!("http://127.0.0.1:{port}/a"))], routes, ""))
        .expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    submit_antrag(&dir, &hub).await;
    // Refused by the receiver (400): dead at the first attempt.
    let out = status_until(&hub, Duration::from_secs(30), |code, out| code == Some(0) && out.contains("1 dead")).await;
    assert!(out.contains("store     embedded, ready"), "{out}");
    assert!(out.contains("1 submissions; deliveries: 0 pending, 0 delivered, 1 dead"), "{out}");
    assert!(out.contains("paused    none"), "{out}");
    assert!(!out.contains("broker"), "an embedded hub has no broker link: {out}");
    // Its one delivery worker: asking for work, one lease made (whose permit may not be back
    // yet when the dead delivery shows).
    assert!(out.contains("worker    a: leasing for"), "{out}");
    assert!(out.contains("/4 in flight") && out.contains("last lease"), "{out}");

    let gone =
        format!("http://{}", std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr"));
    let (code, out) = lotse_exit(&["status", "--admin", &gone]).await;
    assert_eq!(code, Some(2), "{out}");
}

/// On RabbitMQ the status shows the process's link to the broker, and says "not ready" with the
/// reason (exit 1) while a broker resource alarm blocks publishing, and ready again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_on_rabbitmq_shows_the_broker_link_an_alarm_and_a_start_from_the_snapshot() {
    on_rabbitmq("status", &["a"], status_on_rabbitmq).await;
}

async fn status_on_rabbitmq(queue: String) {
    let port = refusing_receiver().await;
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"a\"]\n";
    let mut dir = HubDir::new(lotse_bin!(), &config(&[("a", format!("http://127.0.0.1:{port}/a"))], routes, &queue))
        .expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let (code, out) = status(&hub).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("store     rabbitmq, ready"), "{out}");
    assert!(out.contains("broker    connected, not blocked, 1 connection(s) since start"), "{out}");
    assert!(out.contains("worker    a: leasing for") && out.contains("no lease yet"), "{out}");
    assert!(out.contains("broker work here: 0 waiting, 0 leased, 0 received"), "{out}");

    let Some(alarm) = rabbit::MemoryAlarm::raise() else { return };
    // RabbitMQ 3.10 tells a connection it is blocked when it next publishes: a submission's.
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, with_uuid(&load(ANTRAG).expect("fixture"), &new_uuid()).expect("uuid")).expect("write");
    let partner = hub.partner_url("");
    let submit = tokio::spawn(async move {
        Command::new(lotse_bin!()).arg("submit").arg(&file).args(["--to", &partner]).output().await
    });
    let out = status_until(&hub, Duration::from_secs(20), |code, out| code == Some(1) && out.contains("BLOCKED")).await;
    assert!(out.contains("NOT READY (partners get 503)") && out.contains("blocking publishers"), "{out}");
    drop(alarm);
    let out = status_until(&hub, Duration::from_secs(20), |code, _| code == Some(0)).await;
    assert!(out.contains("connected, not blocked"), "{out}");
    let _ = submit.await;

    // A graceful stop saves the index; the next start reads the stream from there.
    let mut hub = hub;
    assert!(hub.terminate().await.expect("stops"), "exit 0 on SIGTERM: {}", hub.log_tail());
    let data = dir.path().join("data");
    let snapshots = std::fs::read_dir(&data)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".index.json")).count())
        .unwrap_or(0);
    assert_eq!(snapshots, 1, "no index snapshot in {}: {}", data.display(), hub.log_tail());
    let hub = dir.start().await.expect("lotse serve starts again");
    let (code, out) = status(&hub).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("started from its index snapshot at offset"), "{out}");
}

/// Pending deliveries whose endpoint was taken out of the config are named when the hub starts
/// again (nothing sends them until the endpoint is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_names_pending_deliveries_of_an_endpoint_no_longer_configured() {
    // Takes connections (the kernel's backlog) and never answers: the first attempt hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/a", silent.local_addr().expect("addr"));
    let routes = |e: &str| format!("[[routes]]\nname = \"all\"\nendpoints = [\"{e}\"]\n");
    let mut dir =
        HubDir::new(lotse_bin!(), &config(&[("bauamt-alt", url.clone())], &routes("bauamt-alt"), "")).expect("hub dir");
    let mut hub = dir.start().await.expect("lotse serve starts");
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, load(ANTRAG).expect("fixture")).expect("write message");
    let (ok, out) = lotse(&["submit", &file.to_string_lossy(), "--to", &hub.partner_url("")]).await;
    assert!(ok, "submit: {out}");
    hub.kill9().await.expect("stop the hub");

    let renamed = config(&[("bauamt-neu", url)], &routes("bauamt-neu"), "").replace("{data_dir}", "data");
    std::fs::write(dir.config_path(), renamed).expect("rewrite the config");
    let hub = dir.start().await.expect("lotse serve starts again");
    let log = hub.log_tail();
    assert!(log.contains("endpoint the config no longer has") && log.contains("bauamt-alt"), "{log}");
    assert!(log.contains("endpoint=\"bauamt-alt\" pending=1"), "plain text (no colour codes in a file): {log}");
    assert!(!log.contains("\"bauamt-neu\" pending"), "{log}");
    drop(silent);
}

/// A file-drop endpoint through a real hub: the partner's exact bytes land in the folder under
/// the delivery id, its metadata beside it, and the status says delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_endpoint_drops_the_exact_bytes_into_its_folder() {
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"ablage\"]\n";
    let text = config(&[], routes, "")
        .replace("[[routes]]", "[[endpoints]]\nname = \"ablage\"\nkind = \"file\"\npath = \"ablage\"\n\n[[routes]]");
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    std::fs::create_dir(dir.path().join("ablage")).expect("the drop folder");
    let hub = dir.start().await.expect("lotse serve starts");
    let uuid = new_uuid();
    let bytes = with_uuid(&load(ANTRAG).expect("fixture"), &uuid).expect("uuid");
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, &bytes).expect("write message");
    let (ok, out) = lotse(&["submit", &file.to_string_lossy(), "--to", &hub.partner_url("")]).await;
    assert!(ok, "submit: {out}");

    let drop_dir = dir.path().join("ablage");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let payload = loop {
        let names: Vec<String> = std::fs::read_dir(&drop_dir)
            .expect("read the folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if let Some(name) = names.iter().find(|n| n.ends_with(".xml")) {
            assert!(names.iter().all(|n| !n.ends_with(".tmp")), "a temporary file left: {names:?}");
            break name.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing dropped in 30 s: {names:?}\n{}", hub.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(std::fs::read(drop_dir.join(&payload)).expect("payload"), bytes, "the exact bytes");
    let delivery = payload.trim_end_matches(".xml");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(drop_dir.join(format!("{delivery}.meta.json"))).expect("meta"))
            .expect("meta is JSON");
    assert_eq!(meta["message_id"], uuid.as_str());
    let admin = hub.admin_url("");
    let (ok, out) = lotse(&["deliveries", "show", delivery, "--admin", admin.trim_end_matches('/')]).await;
    assert!(ok && out.contains("\"delivered\""), "{out}");
}

/// An AMQP endpoint through a real hub: the partner's exact bytes arrive in the agency's queue
/// on the broker, with the delivery id as message id, and the status says delivered. (Broker at
/// `LOTSE_TEST_AMQP_URL`; a queue of its own, deleted after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_endpoint_publishes_the_exact_bytes_to_the_agencys_queue() {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;

    let Some(url) = tests::amqp::require_rabbitmq().await else { return };
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let queue = format!("lotse-test-agency-{}", uuid::Uuid::new_v4().simple());
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("the agency's queue");

    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"gewerbeamt\"]\n";
    let endpoint = format!(
        "[[endpoints]]\nname = \"gewerbeamt\"\nkind = \"amqp\"\nurl = \"{url}\"\nrouting_key = \"{queue}\"\n\n[[routes]]"
    );
    let text = config(&[], routes, "").replace("[[routes]]", &endpoint);
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let bytes = with_uuid(&load(ANTRAG).expect("fixture"), &new_uuid()).expect("uuid");
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, &bytes).expect("write message");
    let (ok, out) = lotse(&["submit", &file.to_string_lossy(), "--to", &hub.partner_url("")]).await;
    assert!(ok, "submit: {out}");

    let mut consumer = ch
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let got = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("nothing in the agency's queue within 30 s:\n{}", hub.log_tail()))
        .expect("the stream goes on")
        .expect("a delivery");
    assert_eq!(got.data, bytes, "the exact bytes");
    let delivery = got.properties.message_id().as_ref().map(|m| m.to_string()).expect("a message id");
    got.acker.ack(BasicAckOptions::default()).await.expect("ack");
    let admin = hub.admin_url("");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = lotse(&["deliveries", "show", &delivery, "--admin", admin.trim_end_matches('/')]).await;
        if out.contains("\"state\": \"delivered\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered within 30 s: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}

/// `lotse serve --check` reads a config as a start would, says what it found and exits without
/// opening the store or the ports: 0 for a good config (a missing drop folder is a warning), not
/// 0 with the reason for a bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_check_reads_a_config_without_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
                [[endpoints]]\nname = \"ablage\"\nkind = \"file\"\npath = \"nicht-da\"\n\
                [[routes]]\nname = \"all\"\nendpoints = [\"ablage\"]\n";
    let path = dir.path().join("lotse.toml");
    std::fs::write(&path, good).expect("write config");
    let config = path.to_string_lossy().into_owned();
    let (ok, out) = lotse(&["serve", "--check", "--config", &config]).await;
    assert!(ok, "{out}");
    assert!(out.contains("ok: 1 endpoints, 1 routes") && out.contains("every schema compiled"), "{out}");
    assert!(out.contains("warning: endpoint `ablage`") && out.contains("nicht-da"), "{out}");
    assert!(!dir.path().join("data").exists(), "--check opened the store");

    std::fs::write(&path, good.replace("path = ", "pfad = ")).expect("write config");
    let (ok, out) = lotse(&["serve", "--check", "--config", &config]).await;
    assert!(!ok && out.contains("unknown field `pfad`"), "{out}");

    // On RabbitMQ it says how the broker is reached and where the index is saved (nothing is
    // connected to: the URL's port answers nobody).
    let queue = "[queue]\nkind = \"rabbitmq\"\nurl = \"amqps://u:p@127.0.0.1:1/%2f\"\nprefix = \"check\"\n";
    std::fs::write(&path, good.replace("[[endpoints]]", &format!("{queue}[[endpoints]]"))).expect("write config");
    let (ok, out) = lotse(&["serve", "--check", "--config", &config]).await;
    assert!(ok, "{out}");
    assert!(out.contains("RabbitMQ over TLS (the system's CAs), prefix `check`, index snapshot in"), "{out}");
}

/// Retention through a real hub: a delivered case is deleted once its retention period is over
/// (status and lookup find nothing), the log says so, and the partner's resend of the same
/// message is a new submission, not a duplicate of the deleted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_delivered_case_after_its_period() {
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"ablage\"]\n";
    let retention = "[retention]\ndelivered = \"1s\"\ncheck_every = \"500ms\"\n";
    let text = config(&[], routes, retention)
        .replace("[[routes]]", "[[endpoints]]\nname = \"ablage\"\nkind = \"file\"\npath = \"ablage\"\n\n[[routes]]");
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    std::fs::create_dir(dir.path().join("ablage")).expect("the drop folder");
    let hub = dir.start().await.expect("lotse serve starts");
    let (uuid, file) = submit_antrag(&dir, &hub).await;
    let admin = hub.admin_url("");
    let admin = admin.trim_end_matches('/');

    // Delivered first, then deleted: `find` by the partner's id finds nothing any more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen_delivered = false;
    loop {
        let (found, out) = lotse(&["deliveries", "find", "--message-id", &uuid, "--admin", admin]).await;
        seen_delivered |= found && out.contains("delivered");
        if !found {
            assert!(out.contains("0 submissions"), "{out}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not deleted within 30 s: {out}\n{}", hub.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_delivered, "deleted before it was seen delivered");
    assert!(hub.log_tail().contains("retention: deleted submissions"), "{}", hub.log_tail());

    let (ok, out) = lotse(&["submit", &file, "--to", &hub.partner_url("")]).await;
    assert!(ok && !out.contains("duplicate"), "the resend after deletion: {out}");
}

/// A mailbox through a real hub: the agency's software fetches the partner's exact bytes with
/// its own token (long polling), acknowledges them, and the case reads delivered; the partner
/// port's mailbox refuses a partner's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_is_fetched_and_acknowledged_over_http() {
    mailbox_round_trip(String::new()).await;
}

/// The same on the RabbitMQ store (a prefix of its own, its queues deleted after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_on_rabbitmq_is_fetched_and_acknowledged_over_http() {
    on_rabbitmq("mailbox", &["postfach"], mailbox_round_trip).await;
}

/// Runs `test` with the `[queue]` section of a fresh RabbitMQ prefix (skipped without a broker
/// unless `CI=true`), then deletes that prefix's queues for `endpoints`, also after a failed
/// assertion, whose panic is raised again afterwards.
async fn on_rabbitmq<F>(name: &str, endpoints: &[&str], test: impl FnOnce(String) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(url) = tests::amqp::require_rabbitmq().await else { return };
    let prefix = rabbit::unique_prefix(name);
    let result = tokio::spawn(test(rabbit::queue_section(&url, &prefix))).await;
    rabbit::delete_queues(&url, &prefix, endpoints).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

const MAILBOX_TOKEN: &str = "bauamt-postfach-0123456789";

/// A hub with one mailbox `postfach` (token [`MAILBOX_TOKEN`]) and a partner `land`; `queue`:
/// the config's `[queue]` section (empty: the embedded store).
fn mailbox_config(queue: &str) -> String {
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"postfach\"]\n";
    let extra = format!("[[partners]]\nname = \"land\"\ntoken = \"land-token-0123456789abc\"\n{queue}");
    config(&[], routes, &extra).replace(
        "[[routes]]",
        &format!("[[endpoints]]\nname = \"postfach\"\nkind = \"mailbox\"\ntoken = \"{MAILBOX_TOKEN}\"\n\n[[routes]]"),
    )
}

/// `queue`: the config's `[queue]` section (empty: the embedded store).
async fn mailbox_round_trip(queue: String) {
    const TOKEN: &str = MAILBOX_TOKEN;
    let text = mailbox_config(&queue);
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let client = reqwest::Client::new();
    let next = hub.partner_url("/v1/mailboxes/postfach/next?wait=20s");

    // A long poll that is waiting when the message comes gets it.
    let poll = tokio::spawn({
        let (client, next) = (client.clone(), next.clone());
        async move { client.get(next).bearer_auth(TOKEN).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uuid = new_uuid();
    let bytes = with_uuid(&load(ANTRAG).expect("fixture"), &uuid).expect("uuid");
    let file = dir.path().join("antrag.xml");
    std::fs::write(&file, &bytes).expect("write message");
    let (ok, out) = lotse(&[
        "submit",
        &file.to_string_lossy(),
        "--to",
        &hub.partner_url(""),
        "--token",
        "land-token-0123456789abc",
    ])
    .await;
    assert!(ok, "submit: {out}");
    let resp = poll.await.expect("poll task").expect("fetch");
    assert_eq!(resp.status(), 200, "{}", hub.log_tail());
    let delivery = resp.headers()["lotse-delivery-id"].to_str().expect("id").to_owned();
    assert_eq!(resp.headers()["lotse-message-id"], uuid.as_str());
    assert_eq!(resp.bytes().await.expect("body"), bytes, "not the exact bytes");

    let refused = client.get(&next).bearer_auth("land-token-0123456789abc").send().await.expect("fetch");
    assert_eq!(refused.status(), 401, "a partner's token opened the mailbox");
    let ack = hub.partner_url(&format!("/v1/mailboxes/postfach/deliveries/{delivery}/ack"));
    let acked = client.post(&ack).bearer_auth(TOKEN).send().await.expect("ack");
    assert_eq!(acked.status(), 204);
    let admin = hub.admin_url("");
    let (ok, out) = lotse(&["deliveries", "show", &delivery, "--admin", admin.trim_end_matches('/')]).await;
    assert!(ok && out.contains("\"delivered\""), "{out}");
}

/// Two processes on one RabbitMQ, and an agency whose load balancer is not sticky: it fetches
/// from one process and answers the other. The answer is relayed to the process that holds the
/// delivery and settled there: an acknowledgement makes it delivered, a rejection dead (seen on
/// both processes); an answer to a delivery nobody holds any more is `409`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_answer_that_reaches_another_process_settles_the_delivery() {
    on_rabbitmq("mailbox-relay", &["postfach"], mailbox_relay).await;
}

async fn mailbox_relay(queue: String) {
    let text = mailbox_config(&queue);
    let mut dir_a = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let a = dir_a.start().await.expect("process a starts");
    let mut dir_b = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let b = dir_b.start().await.expect("process b starts");
    let client = reqwest::Client::new();

    let mut fetched = Vec::new();
    for _ in 0..2 {
        let bytes = with_uuid(&load(ANTRAG).expect("fixture"), &new_uuid()).expect("uuid");
        let file = dir_a.path().join("antrag.xml");
        std::fs::write(&file, &bytes).expect("write message");
        let args =
            ["submit", &file.to_string_lossy(), "--to", &a.partner_url(""), "--token", "land-token-0123456789abc"];
        let (ok, out) = lotse(&args).await;
        assert!(ok, "submit: {out}");
        let next = a.partner_url("/v1/mailboxes/postfach/next?wait=20s");
        let resp = client.get(&next).bearer_auth(MAILBOX_TOKEN).send().await.expect("fetch");
        assert_eq!(resp.status(), 200, "{}", a.log_tail());
        fetched.push(resp.headers()["lotse-delivery-id"].to_str().expect("id").to_owned());
    }
    let answer = |id: &str, what: &str| b.partner_url(&format!("/v1/mailboxes/postfach/deliveries/{id}/{what}"));
    let state_on = |hub: &tests::Hub, id: &str| {
        let admin = hub.admin_url("");
        let id = id.to_owned();
        async move {
            let (_, out) = lotse(&["deliveries", "show", &id, "--admin", admin.trim_end_matches('/')]).await;
            out
        }
    };

    let acked = client.post(answer(&fetched[0], "ack")).bearer_auth(MAILBOX_TOKEN).send().await.expect("ack");
    assert_eq!(acked.status(), 204, "b:\n{}\na:\n{}", b.log_tail(), a.log_tail());
    for hub in [&a, &b] {
        let out = state_on(hub, &fetched[0]).await;
        assert!(out.contains("\"delivered\""), "{out}");
    }

    let rejected = client
        .post(answer(&fetched[1], "reject"))
        .bearer_auth(MAILBOX_TOKEN)
        .json(&serde_json::json!({"reason": "not our case"}))
        .send()
        .await
        .expect("reject");
    assert_eq!(rejected.status(), 204, "{}", b.log_tail());
    let out = state_on(&a, &fetched[1]).await;
    assert!(out.contains("\"dead\"") && out.contains("not our case"), "{out}");

    let again = client.post(answer(&fetched[0], "ack")).bearer_auth(MAILBOX_TOKEN).send().await.expect("ack");
    assert_eq!(again.status(), 409, "an answer to a delivery nobody holds");
}

/// `lotse fetch` as an agency runs it: every delivery of its mailbox lands in its folder with
/// the exact bytes and the metadata beside it, is acknowledged (delivered at the hub), and
/// `--once` stops when the mailbox is empty; a wrong token is an error, not a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_command_writes_a_mailbox_into_a_folder_and_acknowledges() {
    const TOKEN: &str = "standesamt-postfach-0123456789";
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"standesamt\"]\n";
    let text = config(&[], routes, "").replace(
        "[[routes]]",
        &format!("[[endpoints]]\nname = \"standesamt\"\nkind = \"mailbox\"\ntoken = \"{TOKEN}\"\n\n[[routes]]"),
    );
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let mut sent = Vec::new();
    for _ in 0..2 {
        let (uuid, file) = submit_antrag(&dir, &hub).await;
        sent.push((uuid, std::fs::read(file).expect("the message sent")));
    }
    let inbox = dir.path().join("eingang");
    std::fs::create_dir(&inbox).expect("the agency's folder");
    let from = hub.partner_url("");
    let inbox_arg = inbox.to_string_lossy().into_owned();
    let args = ["fetch", "--from", &from, "--mailbox", "standesamt", "--into", &inbox_arg, "--once", "--wait", "1s"];
    let (ok, out) = lotse(&[&args[..], &["--token", TOKEN]].concat()).await;
    assert!(ok && out.contains("2 fetched"), "{out}\n{}", hub.log_tail());

    let names: Vec<String> = std::fs::read_dir(&inbox)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".xml")).count(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "a temporary file left: {names:?}");
    let admin = hub.admin_url("");
    for (uuid, bytes) in &sent {
        let (found, out) =
            lotse(&["deliveries", "find", "--message-id", uuid, "--admin", admin.trim_end_matches('/')]).await;
        assert!(found && out.contains("delivered"), "{out}");
        let meta = names
            .iter()
            .filter(|n| n.ends_with(".meta.json"))
            .map(|n| {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(inbox.join(n)).expect("meta")).expect("JSON")
            })
            .find(|m| m["message_id"] == uuid.as_str())
            .expect("the metadata of each message");
        let delivery = meta["delivery_id"].as_str().expect("delivery id");
        assert_eq!(
            &std::fs::read(inbox.join(format!("{delivery}.xml"))).expect("payload"),
            bytes,
            "not the exact bytes"
        );
    }

    let (ok, out) = lotse(&[&args[..], &["--token", "wrong-token-0123456789"]].concat()).await;
    assert!(!ok && out.contains("refused the token"), "{out}");

    // A folder it cannot write into is found before any delivery is taken (even root cannot
    // create files in /proc), and a hub address without a scheme is an error, not a retry loop.
    let unwritable = ["fetch", "--from", &from, "--mailbox", "standesamt", "--into", "/proc", "--once"];
    let (ok, out) = lotse(&[&unwritable[..], &["--token", TOKEN]].concat()).await;
    assert!(!ok && out.contains("cannot write into `/proc`"), "{out}");
    let schemeless = from.trim_start_matches("http://").to_owned();
    let bad_from = ["fetch", "--from", &schemeless, "--mailbox", "standesamt", "--into", &inbox_arg, "--token", TOKEN];
    let (ok, out) = lotse(&bad_from).await;
    assert!(!ok && out.contains("`--from` must be an http:// or https:// URL"), "{out}");
}

/// SIGTERM lets attempts in flight finish; a second signal stops the process at once (exit 130)
/// instead of waiting for a receiver that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_the_hub_at_once() {
    // A receiver that takes connections and never answers (the kernel's backlog takes them).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/agency", silent.local_addr().expect("addr"));
    let routes = "[[routes]]\nname = \"all\"\nendpoints = [\"agency\"]\n";
    let text = config(&[("agency", url)], routes, "").replace("timeout = \"5s\"", "timeout = \"20s\"");
    let mut dir = HubDir::new(lotse_bin!(), &text).expect("hub dir");
    let mut hub = dir.start().await.expect("lotse serve starts");
    submit_antrag(&dir, &hub).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = hub.child.id().expect("running").to_string();
    let term = || std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(term().success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(hub.is_running(), "stopped before the attempt in flight ended: {}", hub.log_tail());
    assert!(term().success());
    let status = tokio::time::timeout(Duration::from_secs(5), hub.child.wait()).await;
    let status = status.expect("a second signal stops it at once").expect("wait");
    assert_eq!(status.code(), Some(130), "{}", hub.log_tail());
    drop(silent);
}
