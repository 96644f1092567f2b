//! Benchmark (not a test): submissions accepted per second and their p99 latency through the
//! RabbitMQ store (`Store::intake`: claim in the event stream, fold, work message, all confirmed),
//! next to the ceiling: raw lapin publishing the same 4 KiB messages with confirms to a quorum
//! queue, with the same number of publishes in flight and the same number of channels.
//!
//! ```text
//! cargo run --release -p hub --example rabbitmq_bench -- [--url URL] [-n 20000] [--in-flight 256] [--rounds 3]
//! ```
//! Rounds alternate the order (raw first, then store first). Then the status lag: how long after
//! one process's `intake` returned a second process (same prefix) answers for the submission.
//! Every queue it declares starts with `lotse-bench-` and is deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hub::store::rabbitmq::{OpenOptions, RabbitStore};
use hub::store::{DeliveryId, Intake, NewDelivery, NewSubmission, Store, SubmissionId, now_millis};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

/// The allocator `lotse` itself runs with (hub/src/main.rs), so the store side is measured as it
/// runs in production; both sides use it. (With the system allocator, malloc and free were a
/// sixth of this process's CPU, most of it on the store side, which allocates more.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZE: usize = 4096;
/// Confirm-mode channels: the store uses this many (`PUBLISH_CHANNELS`), so raw lapin does too.
const CHANNELS: usize = 4;

struct Args {
    url: String,
    n: usize,
    in_flight: usize,
    rounds: usize,
    /// `raw` or `store`: run only that side (for profiling), no ratio.
    only: Option<String>,
    /// After each store run, also time saving the index snapshot and a start from it.
    snapshot: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        n: 20_000,
        in_flight: 256,
        rounds: 3,
        only: None,
        snapshot: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "usage: rabbitmq_bench [--url AMQP_URL] [-n 20000] [--in-flight 256] [--rounds 3] [--only raw|store] [--snapshot]\n\
                 Accepted submissions/s and p99 through the RabbitMQ store next to raw lapin publishing\n\
                 the same 4 KiB messages with confirms (the ceiling). The broker is LOTSE_TEST_AMQP_URL\n\
                 (default amqp://guest:guest@127.0.0.1:5672/%2f) unless --url is given."
            );
            std::process::exit(0);
        }
        if flag == "--snapshot" {
            a.snapshot = true;
            continue;
        }
        let value = it.next().with_context(|| format!("`{flag}` needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "-n" => a.n = value.parse()?,
            "--in-flight" => a.in_flight = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--only" => a.only = Some(value),
            other => anyhow::bail!("unknown flag `{other}`"),
        }
    }
    Ok(a)
}

struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time per message during the timed part, in µs: this process, and the local broker
    /// (`beam.smp`, when one runs on this machine; NaN otherwise).
    cpu_us: (f64, f64),
}

/// CPU seconds used so far by this process and by the local broker, from `/proc` (Linux).
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    broker: Option<f64>,
}

fn cpu_now() -> Cpu {
    Cpu { own: cpu_of("self").unwrap_or(f64::NAN), broker: broker_pid().and_then(|p| cpu_of(&p)) }
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (fields 14 and 15, after the `(comm)`).
fn cpu_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// µs of CPU per message between two readings: (this process, broker).
fn per_message(before: Cpu, after: Cpu, n: usize) -> (f64, f64) {
    let us = |a: f64, b: f64| (b - a) * 1e6 / n as f64;
    let broker = match (before.broker, after.broker) {
        (Some(a), Some(b)) => us(a, b),
        _ => f64::NAN,
    };
    (us(before.own, after.own), broker)
}

fn submission(i: usize) -> NewSubmission {
    let id = SubmissionId::new();
    NewSubmission {
        id,
        partner: "bench".into(),
        dedup_keys: vec![format!("msg:bench:{id}")],
        received_at: now_millis(),
        content_type: "application/xml".into(),
        meta: serde_json::json!({ "message_type": "0200" }),
        message_id: Some(id.to_string()),
        route: "bench".into(),
        original: body(i),
        deliveries: vec![NewDelivery { id: DeliveryId::new(), endpoint: "bench".into(), rendition: None }],
        notes: vec![],
    }
}

/// Status lag between two processes: 1,000 intakes on `a`, each polled on `b` until known.
async fn lag(args: &Args, prefix: &str) -> anyhow::Result<Run> {
    let endpoints = vec!["bench".to_owned()];
    let measured = async {
        let a = RabbitStore::open(&args.url, prefix, &endpoints).await?;
        let b = RabbitStore::open(&args.url, prefix, &endpoints).await?;
        let n = 1_000;
        let mut lags = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let s = submission(i);
            let id = s.id;
            a.intake(s).await?;
            let t = Instant::now();
            while b.submission(id).await?.is_none() {
                anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "b never saw {id}");
                tokio::task::yield_now().await;
            }
            lags.push(t.elapsed());
        }
        a.close().await;
        b.close().await;
        Ok(summarize(n, started.elapsed(), lags, (f64::NAN, f64::NAN)))
    }
    .await;
    // Also after a failure: a benchmark leaves no queues on the broker.
    RabbitStore::delete_topology(&args.url, prefix, &endpoints).await?;
    measured
}

/// Every timed task's answer: its latency, or why it failed.
type Done = tokio::sync::mpsc::UnboundedSender<anyhow::Result<Duration>>;

/// Collects the answers of the `n` publish tasks and sums up the timed part (which ends when the
/// last one has answered).
///
/// The tasks are detached and answer through a channel: holding a `JoinHandle` per message kept
/// every finished task's memory (sized for its future) alive until the end. For the store's far
/// larger intake future that was hundreds of MB of fresh pages, and zeroing them was a third of
/// this process's CPU, which the comparison then charged to the store.
async fn finish(
    mut answers: tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<Duration>>,
    n: usize,
    started: Instant,
    cpu: Cpu,
) -> anyhow::Result<Run> {
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let answer = answers.recv().await.context("a publish task ended without an answer")?;
        latencies.push(answer?);
    }
    let elapsed = started.elapsed();
    Ok(summarize(n, elapsed, latencies, per_message(cpu, cpu_now(), n)))
}

fn summarize(n: usize, elapsed: Duration, mut latencies: Vec<Duration>, cpu_us: (f64, f64)) -> Run {
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Run { rate: n as f64 / elapsed.as_secs_f64(), p50_ms: ms(at(0.50)), p99_ms: ms(at(0.99)), cpu_us }
}

/// A 4 KiB XML-ish body, different per message.
fn body(i: usize) -> Bytes {
    let mut b = format!("<nachricht><nr>{i}</nr><fill>").into_bytes();
    b.resize(SIZE - "</fill></nachricht>".len(), b'x');
    b.extend_from_slice(b"</fill></nachricht>");
    Bytes::from(b)
}

async fn raw(args: &Args, queue: &str) -> anyhow::Result<Run> {
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let mut q = FieldTable::default();
    q.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from(b"quorum".to_vec())));
    channels[0].queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, q).await?;
    // Inputs are built before the clock starts, on both sides: the comparison is publishing.
    let k: usize = std::env::var("BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let bodies: Vec<Bytes> = (0..args.n / k)
        .map(|i| {
            let mut v = Vec::new();
            for j in 0..k {
                v.extend_from_slice(&body(i * k + j));
            }
            Bytes::from(v)
        })
        .collect();
    let gate = Arc::new(Semaphore::new(args.in_flight / k));
    let cpu = cpu_now();
    let started = Instant::now();
    let (done, answers) = tokio::sync::mpsc::unbounded_channel();
    for (i, payload) in bodies.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        let ch = channels[i % CHANNELS].clone();
        let queue = queue.to_owned();
        let done: Done = done.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let props = BasicProperties::default().with_delivery_mode(2).with_message_id(i.to_string().into());
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let answer = async {
                let confirm = ch.basic_publish("".into(), queue.into(), options, &payload, props).await?.await?;
                anyhow::ensure!(confirm == Confirmation::Ack(None), "not confirmed: {confirm:?}");
                Ok(t.elapsed())
            }
            .await;
            drop(permit);
            let _ = done.send(answer);
        });
    }
    let mut run = finish(answers, args.n / k, started, cpu).await?;
    run.rate *= k as f64;
    channels[0].queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    let _ = conn.close(200, "bench".into()).await;
    Ok(run)
}

async fn store(args: &Args, prefix: &str) -> anyhow::Result<Run> {
    let endpoints = vec!["bench".to_owned()];
    let measured = store_run(args, prefix, &endpoints).await;
    // Also after a failure: a benchmark leaves no queues on the broker.
    RabbitStore::delete_topology(&args.url, prefix, &endpoints).await?;
    measured
}

async fn store_run(args: &Args, prefix: &str, endpoints: &[String]) -> anyhow::Result<Run> {
    let store = Arc::new(RabbitStore::open(&args.url, prefix, endpoints).await?);
    let submissions: Vec<NewSubmission> = (0..args.n).map(submission).collect();
    let gate = Arc::new(Semaphore::new(args.in_flight));
    let cpu = cpu_now();
    let started = Instant::now();
    let (done, answers) = tokio::sync::mpsc::unbounded_channel();
    for submission in submissions {
        let permit = gate.clone().acquire_owned().await?;
        let store = store.clone();
        let done: Done = done.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let answer = store.intake(submission).await;
            drop(permit);
            let answer = match answer {
                Ok(Intake::Accepted(_)) => Ok(t.elapsed()),
                other => Err(anyhow::anyhow!("not accepted: {other:?}")),
            };
            let _ = done.send(answer);
        });
    }
    let run = finish(answers, args.n, started, cpu).await?;
    store.close().await;
    // A process that starts later reads the whole stream before it answers.
    let t = Instant::now();
    let again = RabbitStore::open(&args.url, prefix, endpoints).await?;
    let submissions = again.counts().await?.submissions;
    println!("  (a new process read the stream of {submissions} submissions in {:?})", t.elapsed());
    again.close().await;
    if args.snapshot {
        // The same start from the index a stopped process saved (`OpenOptions::snapshot`).
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("index.json");
        let options = || OpenOptions { snapshot: Some(path.clone()), ..OpenOptions::default() };
        let first = RabbitStore::open_with(&args.url, prefix, endpoints, options()).await?;
        let t = Instant::now();
        first.close().await;
        let saved = t.elapsed();
        let size = std::fs::metadata(&path)?.len();
        let t = Instant::now();
        let from_snapshot = RabbitStore::open_with(&args.url, prefix, endpoints, options()).await?;
        let loaded = t.elapsed();
        let known = from_snapshot.counts().await?.submissions;
        from_snapshot.close().await;
        println!(
            "  (its index snapshot: {size} bytes, saved in {saved:?}; a start from it knew {known} submissions in {loaded:?})"
        );
    }
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    println!(
        "{} messages of {SIZE} bytes, {} in flight, {CHANNELS} channels, {} rounds",
        args.n, args.in_flight, args.rounds
    );
    if let Some(only) = &args.only {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let r = match only.as_str() {
            "raw" => raw(&args, &format!("lotse-bench-raw-{tag}")).await?,
            "store" => store(&args, &format!("lotse-bench-{tag}")).await?,
            other => anyhow::bail!("--only takes `raw` or `store`, not `{other}`"),
        };
        println!(
            "{only}: {:.0}/s p50 {:.1} ms p99 {:.1} ms, CPU per message: client {:.0} µs, broker {:.0} µs",
            r.rate, r.p50_ms, r.p99_ms, r.cpu_us.0, r.cpu_us.1
        );
        return Ok(());
    }
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let (raw_queue, prefix) = (format!("lotse-bench-raw-{tag}"), format!("lotse-bench-{tag}"));
        let (r, s) = if round % 2 == 0 {
            let r = raw(&args, &raw_queue).await?;
            (r, store(&args, &prefix).await?)
        } else {
            let s = store(&args, &prefix).await?;
            (raw(&args, &raw_queue).await?, s)
        };
        println!(
            "round {}: raw lapin {:>8.0}/s p50 {:>6.1} ms p99 {:>6.1} ms | store {:>8.0}/s p50 {:>6.1} ms p99 {:>6.1} ms | ratio {:.2}",
            round + 1,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            s.rate,
            s.p50_ms,
            s.p99_ms,
            s.rate / r.rate
        );
        println!(
            "         CPU µs per message (client + broker): raw {:.0} + {:.0} | store {:.0} + {:.0}",
            r.cpu_us.0, r.cpu_us.1, s.cpu_us.0, s.cpu_us.1
        );
        ratios.push(s.rate / r.rate);
    }
    ratios.sort_by(f64::total_cmp);
    // The mean of the two middle ratios for an even number of rounds. (Until 2026-12-01 this
    // printed the upper one of the two, which overstated the median of even-numbered runs.)
    let n = ratios.len();
    let median = match n {
        0 => f64::NAN,
        n if n % 2 == 0 => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        n => ratios[n / 2],
    };
    let sorted: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("median ratio store / raw: {median:.3} (rounds, sorted: {})", sorted.join(" "));
    let l = lag(&args, &format!("lotse-bench-lag-{}", uuid::Uuid::new_v4().simple())).await?;
    println!(
        "status lag to a second process (1,000 sequential intakes): p50 {:.2} ms p99 {:.2} ms",
        l.p50_ms, l.p99_ms
    );
    Ok(())
}
