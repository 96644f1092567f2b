//! Receiver tests: a real server on 127.0.0.1, driven with reqwest.

use super::*;

async fn post(client: &reqwest::Client, url: &str, delivery: &str, body: &'static str) -> u16 {
    let response = client
        .post(url)
        .header("content-type", "application/xml")
        .header("lotse-delivery-id", delivery)
        .header("lotse-message-id", "m-1")
        .header("lotse-submission-id", "s-1")
        .header("lotse-attempt", "1")
        .body(body)
        .send()
        .await
        .expect("request to the local receiver");
    response.status().as_u16()
}

#[tokio::test]
async fn fails_the_first_attempts_of_each_delivery_then_accepts() {
    let opts = ReceiverOptions { fail_first: 2, fail_status: 503, ..ReceiverOptions::default() };
    let receiver = spawn(opts).await.expect("spawn");
    let client = reqwest::Client::new();
    let url = receiver.url("/bauamt");
    let a = "0195a3e4-0000-7000-8000-00000000000a";
    let b = "0195a3e4-0000-7000-8000-00000000000b";
    assert_eq!(post(&client, &url, a, "<a/>").await, 503);
    assert_eq!(post(&client, &url, b, "<b/>").await, 503);
    assert_eq!(post(&client, &url, a, "<a/>").await, 503);
    assert_eq!(post(&client, &url, a, "<a/>").await, 200);
    assert_eq!(post(&client, &url, a, "<a/>").await, 200);
    let counts = receiver.counts();
    assert_eq!(counts, ReceiverCounts { attempts: 5, delivered: 1, duplicates: 1 });
    let arrivals = receiver.arrivals();
    let nths: Vec<(u32, u16)> =
        arrivals.iter().filter(|x| x.delivery_id.as_deref() == Some(a)).map(|x| (x.nth, x.status)).collect();
    assert_eq!(nths, vec![(1, 503), (2, 503), (3, 200), (4, 200)]);
    assert_eq!(arrivals[0].sha256, hex::encode(Sha256::digest(b"<a/>")));
    assert_eq!(arrivals[0].message_id.as_deref(), Some("m-1"));
    assert_eq!(arrivals[0].attempt, Some(1));
    assert_eq!(arrivals[0].path, "/bauamt");
    receiver.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn stores_each_body_once_and_journals_every_arrival() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ReceiverOptions { out_dir: Some(dir.path().to_owned()), fail_first: 1, ..ReceiverOptions::default() };
    let receiver = spawn(opts).await.expect("spawn");
    let client = reqwest::Client::new();
    let id = "0195a3e4-0000-7000-8000-0000000000cc";
    let url = receiver.url("/agency/bauamt");
    assert_eq!(post(&client, &url, id, "<x>1</x>").await, 503);
    assert_eq!(post(&client, &url, id, "<x>1</x>").await, 200);
    assert_eq!(post(&client, &url, id, "<x>1</x>").await, 200);
    let stored = dir.path().join("agency_bauamt").join(format!("{id}.xml"));
    assert_eq!(std::fs::read(&stored).expect("stored body"), b"<x>1</x>");
    let journal = std::fs::read_to_string(dir.path().join("received.jsonl")).expect("journal");
    let lines: Vec<serde_json::Value> =
        journal.lines().map(|l| serde_json::from_str(l).expect("journal line is JSON")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["status"], 503);
    assert!(lines[0].get("file").is_none());
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["file"], stored.display().to_string());
    assert!(lines[2].get("file").is_none(), "a repeat is journaled but not stored again");
    assert_eq!(lines[2]["delivery_id"], id);
    receiver.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn answers_the_configured_status_and_waits_for_counts() {
    let receiver = spawn(ReceiverOptions { status: 400, ..ReceiverOptions::default() }).await.expect("spawn");
    let client = reqwest::Client::new();
    assert_eq!(post(&client, &receiver.url("/"), "0195a3e4-0000-7000-8000-000000000001", "<r/>").await, 400);
    assert!(receiver.wait_attempts(1, Duration::from_secs(5)).await);
    assert!(!receiver.wait_delivered(1, Duration::from_millis(50)).await, "a 400 is not a delivery");
    let health = client.get(receiver.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    receiver.shutdown().await.expect("shutdown");
}

#[test]
fn folder_names_are_safe() {
    assert_eq!(folder_for_path("/"), "root");
    assert_eq!(folder_for_path("/bauamt"), "bauamt");
    assert_eq!(folder_for_path("/a/b c"), "a_b_c");
    assert_eq!(folder_for_path("/.."), "root");
    assert_eq!(folder_for_path("/../etc"), ".._etc");
}

#[test]
fn extensions_follow_the_media_type() {
    assert_eq!(extension_for(Some("application/xml")), "xml");
    assert_eq!(extension_for(Some("text/xml; charset=utf-8")), "xml");
    assert_eq!(extension_for(Some("application/problem+json")), "json");
    assert_eq!(extension_for(Some("application/octet-stream")), "bin");
    assert_eq!(extension_for(None), "bin");
}

#[tokio::test]
async fn a_repeat_while_the_first_body_is_being_written_is_not_answered_2xx() {
    // The first accepted arrival's write is held open: its file is a named pipe nobody reads yet.
    let dir = tempfile::tempdir().expect("tempdir");
    let id = "0195a3e4-0000-7000-8000-0000000000dd";
    let folder = dir.path().join("bauamt");
    std::fs::create_dir_all(&folder).expect("folder");
    let fifo = folder.join(format!("{id}.xml"));
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let receiver = spawn(ReceiverOptions { out_dir: Some(dir.path().to_owned()), ..ReceiverOptions::default() })
        .await
        .expect("spawn");
    let client = reqwest::Client::new();
    let url = receiver.url("/bauamt");
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { post(&client, &url, id, "<x>1</x>").await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.with_log(|l| l.per_delivery.get(id).map(|p| p.kept)) != Some(Kept::Storing) {
        assert!(Instant::now() < deadline, "the first arrival never started writing its body");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(post(&client, &url, id, "<x>1</x>").await, 503, "a repeat during the first write");
    // Let the first write through; whether it is kept (200) or not (500: a pipe takes no fsync),
    // the receiver must then say so truthfully, and a later attempt must keep the body.
    let pipe = fifo.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(pipe)).await.expect("reader").expect("read pipe");
    assert_eq!(read, b"<x>1</x>");
    let first = first.await.expect("first request");
    assert!(first == 200 || first == 500, "first answered {first}");
    if first == 500 {
        std::fs::remove_file(&fifo).expect("remove the pipe");
        assert_eq!(post(&client, &url, id, "<x>1</x>").await, 200);
    }
    assert_eq!(receiver.counts().delivered, 1);
    assert_eq!(std::fs::read(&fifo).expect("stored body"), b"<x>1</x>");
    receiver.shutdown().await.expect("shutdown");
}
