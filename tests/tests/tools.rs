//! The `lotse receiver` and `lotse bench` commands as processes: the lines they print, what the
//! receiver stores, and a small bounded bench run through a real hub.

use std::process::Stdio;
use std::time::Duration;

use tests::fixtures::{ANTRAG, load};
use tests::{HubDir, config, lotse_bin};
use tokio::io::{AsyncBufReadExt, BufReader};
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
    assert!(stdout.contains("time to 202 p50"), "{stdout}");
}
