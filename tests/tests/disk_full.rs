//! A full disk under load: while the data dir's filesystem is full, intake answers 503 with a
//! problem body and nothing that got a 202 is lost; once there is room again, the same process
//! accepts again (no restart) and every accepted submission is delivered and readable.
//!
//! Needs a small filesystem of its own: a 24 MB tmpfs mounted for the test, which takes root.
//! Without the permission to mount, the test says so and skips. Deliveries run all along, so
//! their settles write to the store's database while intakes fill its blob log.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub::receiver::{ReceiverOptions, spawn};
use tests::fixtures::{ANTRAG, load, new_uuid, with_uuid};
use tests::{HubDir, lotse_bin};

/// Requests sent while filling the disk, at most (bounded: the loop ends long before).
const MAX_REQUESTS: usize = 6_000;
/// 503s to see before the disk counts as full for the test.
const FULL_AFTER: usize = 100;

/// A tmpfs mounted for one test; unmounted (lazily, in case a file is still open) on drop.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let dir = tempfile::Builder::new().prefix("lotse-full-").tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Mount { path, _dir: dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem of `dir` with a file of zeros, leaving about `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0u8; 1 << 20];
    loop {
        let fs = rustix::fs::statvfs(dir)?;
        let avail = fs.f_bavail.saturating_mul(fs.f_frsize);
        if avail <= leave + chunk.len() as u64 {
            break;
        }
        f.write_all(&chunk)?;
        f.flush()?;
    }
    f.sync_all()?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_loses_nothing_and_intake_resumes_when_there_is_room() {
    let mount = match Mount::tmpfs("24m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: this test needs a small filesystem of its own (a tmpfs, root only): {e}");
            return;
        }
    };
    let receiver = spawn(ReceiverOptions::default()).await.expect("receiver");
    let data = mount.path.join("data");
    let config = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n\
         [retry]\nmax_attempts = 1000\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"\n\n\
         [[endpoints]]\nname = \"a\"\nkind = \"http\"\nurl = \"{}\"\ntimeout = \"5s\"\n\n\
         [[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n",
        data.display(),
        receiver.url("/a")
    );
    let mut dir = HubDir::new(lotse_bin!(), &config).expect("hub dir");
    let mut hub = dir.start().await.expect("lotse serve starts");
    // Leave a few MB for the hub to fill itself.
    let filler = fill(&mount.path, 6 << 20).expect("filler");

    let url = hub.partner_url("/v1/submissions");
    let template = load(ANTRAG).expect("fixture");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).http1_only().build().expect("client");
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let send = |body: Vec<u8>| {
        let (client, url, accepted, refused, bad) =
            (client.clone(), url.clone(), accepted.clone(), refused.clone(), bad.clone());
        async move {
            let Ok(r) = client.post(&url).header("content-type", "application/xml").body(body).send().await else {
                bad.lock().unwrap_or_else(|p| p.into_inner()).push("no answer".into());
                return;
            };
            let status = r.status().as_u16();
            let media = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let retry_after = r.headers().get("retry-after").is_some();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            match status {
                202 => {
                    let s = json["submission_id"].as_str().unwrap_or_default().to_owned();
                    let d = json["deliveries"][0]["id"].as_str().unwrap_or_default().to_owned();
                    accepted.lock().unwrap_or_else(|p| p.into_inner()).push((s, d));
                }
                503 if media == "application/problem+json" && json["status"] == 503 && retry_after => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                other => bad.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{other} {media} {json}")),
            }
        }
    };

    // Phase 1: 8 clients until the disk is full and 503s keep coming.
    let mut sent = 0;
    while sent < MAX_REQUESTS && refused.load(std::sync::atomic::Ordering::SeqCst) < FULL_AFTER {
        let batch: Vec<_> = (0..8).map(|_| send(with_uuid(&template, &new_uuid()).expect("uuid"))).collect();
        futures::future::join_all(batch).await;
        sent += 8;
    }
    let before = accepted.lock().unwrap_or_else(|p| p.into_inner()).len();
    let refused_n = refused.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("disk full: {before} accepted, {refused_n} refused of {sent}");
    assert!(refused_n >= FULL_AFTER, "the disk never filled: {refused_n} refused of {sent}");
    assert!(before > 0, "nothing was accepted before the disk filled");
    assert!(hub.is_running(), "lotse died on a full disk; log:\n{}", hub.log_tail());
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("No space left on device"), "the 503s were not the full disk; log:\n{}", hub.log_tail());

    // The free-space gauge an operator alerts on shows it.
    let metrics_url = hub.admin_url("/metrics");
    let free = gauge(&client, &metrics_url, "lotse_data_dir_free_bytes").await;
    assert!(free < 1_048_576.0, "lotse_data_dir_free_bytes {free} on a full disk");
    // Readiness on the partner port says so too (the last writes failed).
    let health = client.get(hub.partner_url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 503, "/healthz on a full disk");
    assert_eq!(gauge(&client, &metrics_url, "lotse_store_ready").await, 0.0, "lotse_store_ready on a full disk");

    // Phase 2: room again; the same process accepts within a bounded wait.
    std::fs::remove_file(&filler).expect("remove filler");
    let free = gauge(&client, &metrics_url, "lotse_data_dir_free_bytes").await;
    assert!(free > 10_485_760.0, "lotse_data_dir_free_bytes {free} after the filler was removed");
    // Ready again by itself, before any submission: a load balancer sends none to a process
    // whose readiness says 503.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let health = client.get(hub.partner_url("/healthz")).send().await.expect("healthz");
        if health.status().as_u16() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz still {} 60 s after the disk had room again, with no submission sent; log:\n{}",
            health.status(),
            hub.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        send(with_uuid(&template, &new_uuid()).expect("uuid")).await;
        if accepted.lock().unwrap_or_else(|p| p.into_inner()).len() > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 202 within 60 s after the disk had room again; log:\n{}",
            hub.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..20 {
        send(with_uuid(&template, &new_uuid()).expect("uuid")).await;
    }
    let health = client.get(hub.partner_url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200, "/healthz once intake works again");
    assert_eq!(gauge(&client, &metrics_url, "lotse_store_ready").await, 1.0, "lotse_store_ready once intake works");
    let bad = bad.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(bad.is_empty(), "answers other than 202 or a 503 problem: {:?}", &bad[..bad.len().min(5)]);

    // Every 202 is delivered and readable, on this process and after a restart.
    let accepted: Vec<(String, String)> = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let want: HashSet<String> = accepted.iter().map(|(_, d)| d.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got: HashSet<String> = receiver
            .with_arrivals(|a| a.iter().filter(|a| a.accepted()).filter_map(|a| a.delivery_id.clone()).collect());
        let missing: Vec<&String> = want.iter().filter(|d| !got.contains(*d)).collect();
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
            let about: Vec<&str> =
                log.lines().filter(|l| missing.iter().any(|m| l.contains(m.as_str()))).take(20).collect();
            let status = match accepted.iter().find(|(_, d)| d == missing[0]) {
                Some((s, _)) => client
                    .get(hub.partner_url(&format!("/v1/submissions/{s}")))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0),
                None => 0,
            };
            panic!(
                "{} of {} accepted deliveries never arrived, e.g. {} (its submission answers {status}); its log lines:\n{}\nlog tail:\n{}",
                missing.len(),
                want.len(),
                missing[0],
                about.join("\n"),
                hub.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    let reopened = log.matches("store reopened").count();
    // Failed syncs leave lost ranges inside the segment, not a new file each.
    let segments = std::fs::read_dir(data.join("blobs")).expect("blob folder").count();
    assert_eq!(segments, 1, "blob segments after the full disk: {segments}");
    hub.kill9().await.expect("kill -9");
    let hub = dir.start().await.expect("lotse restarts on the same data dir");
    for (submission, _) in &accepted {
        let r = client.get(hub.partner_url(&format!("/v1/submissions/{submission}"))).send().await.expect("status");
        assert_eq!(r.status().as_u16(), 200, "submission {submission} is not readable after the restart");
    }
    eprintln!(
        "after the disk had room: {} accepted in all, all delivered and readable; the database was reopened {reopened} times",
        accepted.len()
    );
}

/// A gauge (without labels) from the admin port's `/metrics`.
async fn gauge(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = client.get(url).send().await.expect("metrics").text().await.expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}
