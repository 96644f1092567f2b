//! Scale-out on RabbitMQ: three `lotse serve` processes share one broker (`[queue] kind =
//! "rabbitmq"`, a prefix of their own). 5,000 submissions go to them in turn; one process is
//! killed with SIGKILL mid-run and the broker is restarted once (`rabbitmqctl stop_app`, then
//! `start_app`). A client whose request fails (connection refused, 503) sends the same message
//! again to the next process, as a partner would. Afterwards every submission that got a 202 is
//! delivered at least once, none is stuck, and each one's status is `delivered` on every surviving
//! process.
//!
//! Heavy, and it stops the broker: it must run alone (nextest: test group with max-threads 1;
//! under `cargo test` each suite binary runs on its own). Needs a broker at
//! `LOTSE_TEST_AMQP_URL` and a local `rabbitmqctl`; skipped with a reason without them, failing
//! with `CI=true`.

// Not every piece of the harness is used here (the memory alarm is `tools`').
#[allow(dead_code)]
#[path = "../src/rabbit.rs"]
mod rabbit;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hub::receiver::{ReceiverOptions, spawn};
use tests::fixtures::{ANTRAG, load, new_uuid, with_uuid};
use tests::{Api, Hub, HubDir, config, lotse_bin};

const TOTAL: usize = 5_000;
/// Requests in flight at once over all processes.
const IN_FLIGHT: usize = 32;
/// Kill process 1 once this many 202s came back.
const KILL_AT: usize = 1_500;
/// Restart the broker once this many 202s came back.
const RESTART_AT: usize = 3_000;
/// Tries per submission (one every 100 ms at most) before the client gives up.
const TRIES: usize = 600;
const ENDPOINT: &str = "a";

#[derive(Default)]
struct Tally {
    accepted: AtomicUsize,
    unavailable: AtomicUsize,
    refused: AtomicUsize,
    other: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_kill_9_and_a_broker_restart() -> anyhow::Result<()> {
    let Some(url) = tests::require_rabbitmq().await else { return Ok(()) };
    let restart = rabbit::can_restart_broker().await;
    if !restart {
        ensure!(!tests::in_ci(), "CI=true: this test needs a local `rabbitmqctl` to restart the broker");
        eprintln!("PARTLY SKIPPED: no local `rabbitmqctl`; running without the broker restart");
    }
    let prefix = rabbit::unique_prefix("cluster");
    let result = run(&url, &prefix, restart).await;
    rabbit::delete_queues(&url, &prefix, &[ENDPOINT]).await;
    result
}

async fn run(url: &str, prefix: &str, restart: bool) -> anyhow::Result<()> {
    let receiver = spawn(ReceiverOptions::default()).await?;
    let routes = "[[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n";
    let text = config(&[(ENDPOINT, receiver.url("/a"))], routes, &rabbit::queue_section(url, prefix));
    let (_dirs, mut hubs) = start_hubs(3, &text).await?;
    let urls: Arc<Vec<String>> = Arc::new(hubs.iter().map(|h| h.partner_url("/v1/submissions")).collect());
    let template = load(ANTRAG)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).http1_only().build()?;
    let tally = Arc::new(Tally::default());
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        let body = with_uuid(&template, &new_uuid())?;
        let (client, urls, tally, accepted, gate) =
            (client.clone(), urls.clone(), tally.clone(), accepted.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(_permit) = gate.acquire_owned().await else { return };
            for t in 0..TRIES {
                let url = &urls[(i + t) % urls.len()];
                let sent = client.post(url).header("content-type", "application/xml").body(body.clone()).send().await;
                match sent {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let Ok(json) = r.json::<serde_json::Value>().await else { continue };
                        let submission = json["submission_id"].as_str().unwrap_or_default().to_owned();
                        let delivery = json["deliveries"][0]["id"].as_str().unwrap_or_default().to_owned();
                        // Never held across an await; poisoning would need a panic inside it.
                        accepted.lock().unwrap_or_else(|p| p.into_inner()).push((submission, delivery));
                        tally.accepted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(r) if r.status().as_u16() == 503 => tally.unavailable.fetch_add(1, Ordering::SeqCst),
                    Ok(_) => tally.other.fetch_add(1, Ordering::SeqCst),
                    Err(_) => tally.refused.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    let reach = |n: usize| {
        let tally = tally.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while tally.accepted.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally.accepted.load(Ordering::SeqCst)
        }
    };
    let at_kill = reach(KILL_AT).await;
    ensure!(at_kill >= KILL_AT, "only {at_kill} of {TOTAL} accepted in 300 s; log:\n{}", hubs[0].log_tail());
    hubs[1].kill9().await?;
    eprintln!("cluster: killed process 1 with SIGKILL after {at_kill} accepted ({:?})", started.elapsed());
    let mut unavailable_before_restart = 0;
    if restart {
        let at_restart = reach(RESTART_AT).await;
        ensure!(at_restart >= RESTART_AT, "only {at_restart} accepted before the broker restart");
        unavailable_before_restart = tally.unavailable.load(Ordering::SeqCst);
        eprintln!("cluster: restarting the broker after {at_restart} accepted ({:?})", started.elapsed());
        // While the broker is down, a surviving process's readiness says so (a load balancer
        // would take it out of rotation), and says so no longer once the broker is back.
        let health = hubs[0].partner_url("/healthz");
        let status = |client: reqwest::Client, url: String| async move {
            client.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        };
        rabbit::rabbitmqctl(&["stop_app"]).await?;
        let down = Instant::now();
        let mut seen_503 = false;
        while !seen_503 && down.elapsed() < Duration::from_secs(5) {
            seen_503 = status(client.clone(), health.clone()).await == 503;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(down.elapsed())).await;
        rabbit::rabbitmqctl(&["start_app"]).await?;
        rabbit::rabbitmqctl(&["await_startup"]).await?;
        eprintln!("cluster: broker back ({:?})", started.elapsed());
        ensure!(seen_503, "/healthz of a process never answered 503 while the broker was down");
        let back = Instant::now();
        while status(client.clone(), health.clone()).await != 200 {
            ensure!(
                back.elapsed() < Duration::from_secs(60),
                "/healthz not 200 within 60 s after the broker came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for task in tasks {
        task.await?;
    }
    let load_time = started.elapsed();
    let accepted: Vec<(String, String)> = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (unavailable, refused, other) = (
        tally.unavailable.load(Ordering::SeqCst),
        tally.refused.load(Ordering::SeqCst),
        tally.other.load(Ordering::SeqCst),
    );
    eprintln!(
        "cluster: {} of {TOTAL} accepted in {load_time:?}; refused answers: 503 x{unavailable}, \
         connection errors x{refused}, other x{other}",
        accepted.len()
    );
    ensure!(other == 0, "{other} answers were neither 202 nor 503");
    ensure!(accepted.iter().all(|(s, d)| !s.is_empty() && !d.is_empty()), "malformed 202 bodies");
    ensure!(accepted.len() == TOTAL, "{} submissions never got a 202 in {TRIES} tries", TOTAL - accepted.len());
    if restart {
        ensure!(unavailable > unavailable_before_restart, "no 503 while the broker was down");
    }

    // Delivered at least once.
    let want: HashSet<&str> = accepted.iter().map(|(_, d)| d.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let missing = loop {
        let got: HashSet<String> = receiver
            .with_arrivals(|a| a.iter().filter(|a| a.accepted()).filter_map(|a| a.delivery_id.clone()).collect());
        let missing = want.iter().filter(|d| !got.contains(**d)).count();
        if missing == 0 || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if missing > 0 {
        // What the surviving processes say of the first few missing ones, and their logs.
        let got: HashSet<String> = receiver
            .with_arrivals(|a| a.iter().filter(|a| a.accepted()).filter_map(|a| a.delivery_id.clone()).collect());
        let api = Api::new();
        let mut report = String::new();
        for d in want.iter().filter(|d| !got.contains(**d)).take(5) {
            for n in [0, 2] {
                let view = api.get(&hubs[n].admin_url(&format!("/v1/admin/deliveries/{d}"))).await?;
                report.push_str(&format!("process {n} on {d}: {}\n", view.raw));
            }
        }
        for n in [0, 2] {
            let overview = api.get(&hubs[n].admin_url("/v1/admin/overview")).await?;
            report.push_str(&format!("overview of process {n}: {}\n", overview.raw));
        }
        anyhow::bail!(
            "{missing} 202'd deliveries never arrived\n{report}log of process 0:\n{}\nlog of process 2:\n{}",
            hubs[0].log_tail(),
            hubs[2].log_tail()
        );
    }
    let counts = receiver.counts();
    eprintln!(
        "cluster: all delivered after {:?}; receiver saw {} requests, {} deliveries, {} repeats",
        started.elapsed(),
        counts.attempts,
        counts.delivered,
        counts.duplicates
    );

    // None stuck, and every status readable and delivered on every surviving process.
    let api = Api::new();
    for n in [0, 2] {
        let hub = &hubs[n];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pending = api.get(&hub.admin_url("/v1/admin/deliveries?state=pending&limit=5")).await?;
            ensure!(pending.status == 200, "admin listing on process {n}: {}", pending.raw);
            if pending.body["deliveries"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            if Instant::now() >= deadline {
                let overview = api.get(&hub.admin_url("/v1/admin/overview")).await?;
                anyhow::bail!("deliveries stuck pending on process {n}: {}\noverview: {}", pending.raw, overview.raw);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let dead = api.get(&hub.admin_url("/v1/admin/deliveries?state=dead&limit=5")).await?;
        ensure!(dead.body["deliveries"].as_array().is_some_and(Vec::is_empty), "dead on process {n}: {}", dead.raw);
        for (submission, _) in &accepted {
            let view = api
                .wait_submission(hub, submission, Duration::from_secs(10), |v| v["state"] == "delivered")
                .await
                .with_context(|| format!("status of {submission} on process {n}"))?;
            ensure!(view["id"] == submission.as_str(), "process {n} answered for another submission");
        }
    }
    eprintln!("cluster: every status delivered on processes 0 and 2 ({:?})", started.elapsed());
    Ok(())
}

/// Retries across processes under load: every delivery is refused twice (503) and taken the
/// third time. Two processes share the work; a retry goes to the wait queues and comes back to
/// whichever process takes it. Every delivery must arrive at attempt 3, after attempts 1 and 2
/// (never skipped, never twice taken), none may end dead or pending, and both processes must
/// read every submission `delivered` after 3 attempts. (Two failures in three requests trip
/// each process's circuit breaker, which then probes one delivery at a time: about 30 s here
/// for the 600 requests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_retry_every_delivery_through_the_wait_queues() -> anyhow::Result<()> {
    let Some(url) = tests::require_rabbitmq().await else { return Ok(()) };
    let prefix = rabbit::unique_prefix("retry");
    let result = retry_under_load(&url, &prefix).await;
    rabbit::delete_queues(&url, &prefix, &[ENDPOINT]).await;
    result
}

async fn retry_under_load(url: &str, prefix: &str) -> anyhow::Result<()> {
    const N: usize = 200;
    let receiver = spawn(ReceiverOptions { fail_first: 2, fail_status: 503, ..ReceiverOptions::default() }).await?;
    let routes = "[[routes]]\nname = \"all\"\nnamespace = \"urn:lotse:test:synthetik:1\"\nendpoints = [\"a\"]\n";
    // The harness config retries after 50 ms to 200 ms: through the shortest wait queue.
    let extra = rabbit::queue_section(url, prefix);
    let text = config(&[(ENDPOINT, receiver.url("/a"))], routes, &extra);
    let (_dirs, hubs) = start_hubs(2, &text).await?;
    let hubs = Arc::new(hubs);
    let api = Api::new();
    let template = load(ANTRAG)?;
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let (api, gate, hubs) = (api.clone(), gate.clone(), hubs.clone());
        let body = with_uuid(&template, &new_uuid())?;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let answer = api.submit_xml(&hubs[i % 2], body).await?;
            ensure!(answer.status == 202, "submission {i}: {} {}", answer.status, answer.raw);
            let submission = answer.body["submission_id"].as_str().unwrap_or_default().to_owned();
            let delivery = answer.body["deliveries"][0]["id"].as_str().unwrap_or_default().to_owned();
            anyhow::Ok((submission, delivery))
        }));
    }
    let mut accepted = Vec::with_capacity(N);
    for t in tasks {
        accepted.push(t.await??);
    }

    let started = Instant::now();
    ensure!(
        receiver.wait_delivered(N as u64, Duration::from_secs(180)).await,
        "{} of {N} delivered in 180 s; log of process 0:\n{}",
        receiver.counts().delivered,
        hubs[0].log_tail()
    );
    eprintln!("retry: {N} deliveries, each refused twice, all delivered {:?} after the last 202", started.elapsed());
    let want: HashSet<&str> = accepted.iter().map(|(_, d)| d.as_str()).collect();
    receiver.with_arrivals(|arrivals| -> anyhow::Result<()> {
        for d in &want {
            let seen: Vec<(Option<u32>, u16)> = arrivals
                .iter()
                .filter(|a| a.delivery_id.as_deref() == Some(*d))
                .map(|a| (a.attempt, a.status))
                .collect();
            ensure!(seen == [(Some(1), 503), (Some(2), 503), (Some(3), 200)], "delivery {d}: {seen:?}");
        }
        ensure!(arrivals.len() == 3 * N, "{} requests for {N} deliveries", arrivals.len());
        Ok(())
    })?;
    for (n, hub) in hubs.iter().enumerate() {
        for (submission, _) in &accepted {
            let view = api
                .wait_submission(hub, submission, Duration::from_secs(10), |v| v["state"] == "delivered")
                .await
                .with_context(|| format!("status of {submission} on process {n}"))?;
            ensure!(view["deliveries"][0]["attempts"] == 3, "process {n}: {view:#}");
        }
        for state in ["pending", "dead"] {
            let listed = api.get(&hub.admin_url(&format!("/v1/admin/deliveries?state={state}&limit=5"))).await?;
            ensure!(listed.body["deliveries"].as_array().is_some_and(Vec::is_empty), "{state} on {n}: {}", listed.raw);
        }
    }
    Ok(())
}

/// `n` processes of `lotse serve` on one config (each in a folder of its own).
async fn start_hubs(n: usize, config: &str) -> anyhow::Result<(Vec<HubDir>, Vec<Hub>)> {
    let (mut dirs, mut hubs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut dir = HubDir::new(lotse_bin!(), config)?;
        hubs.push(dir.start().await.context("lotse serve with [queue] kind = \"rabbitmq\" starts")?);
        dirs.push(dir);
    }
    Ok((dirs, hubs))
}
