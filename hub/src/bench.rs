//! `lotse bench`: the load tool. Sends N submissions of one message to a running hub with C
//! clients (closed loop) or at an offered rate (open loop), and reports accepted/s and the time
//! to `202`; with `--receiver-listen` it also runs a receiver in this process and reports the time
//! from send to delivered.
//!
//! Each submission is made unique by rewriting the message's `nachrichtenUUID` text (or, for a
//! message without one, by a fresh `Idempotency-Key`), so the hub's dedup never folds them.
//! Open-loop latencies are measured from the *intended* send time, so a stalled hub cannot hide
//! its queueing (no coordinated omission); they include up to about 1 ms of the generator's own
//! timer granularity. Everything is bounded by `-n` and `--max-time`.
//!
//! The client is hyper's own connection API with one kept-alive HTTP/1.1 connection per request
//! in flight, not reqwest: the load tool shares this machine's two cores with the hub, and with
//! reqwest it needed about 40 µs of CPU per request here, with hyper about 20 (CPU the hub would
//! otherwise lack).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::receiver::{ReceiverOptions, spawn};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the hub's partner API, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub to: String,
    /// The message to send (XML or its JSON form).
    #[arg(long)]
    pub file: PathBuf,
    /// Number of submissions.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub requests: u64,
    /// Concurrent clients (closed loop), or the cap on requests in flight (open loop).
    #[arg(short = 'c', long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: offer this many requests per second instead of sending as fast as answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run a receiver in this process on this address (the hub's endpoint must point at it) and
    /// report time to delivered.
    #[arg(long)]
    pub receiver_listen: Option<SocketAddr>,
    /// Bearer token of a configured partner.
    #[arg(long, env = "LOTSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stop sending after this long, whatever `-n` says.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub max_time: Duration,
    /// After sending, wait at most this long for deliveries (with `--receiver-listen`).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_time: Duration,
    /// Media type; default from the file name (`.json` -> application/json, else application/xml).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Also print the summary as one JSON line (prefixed `json `), for scripts.
    #[arg(long)]
    pub json: bool,
    /// Connections opened before the clock starts and kept alive, as a partner's HTTP client pool
    /// does (default: `-c`). A request that finds none idle opens another one; `0` opens every
    /// connection on demand, its connect time counted in that request's time to 202.
    #[arg(long)]
    pub preopen: Option<usize>,
    /// Requests meant to be sent in this first stretch are sent but not counted: the first
    /// moments of a hub and of this tool under load (first allocations, first use of each code
    /// path) are not its steady state. `-n` and `--max-time` include it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
}

/// What one request came to.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was (meant to be) sent.
    start: Instant,
    /// Time to the answer, in microseconds.
    micros: u64,
    /// Time from `start` until the request began to be sent (open loop: waiting for a free slot,
    /// or the load tool itself behind schedule), in microseconds; part of `micros`.
    late_micros: u64,
    /// HTTP status, or 0 for a transport error.
    status: u16,
    submission_id: Option<String>,
}

impl Sample {
    /// Answered with a 2xx.
    fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub file: String,
    pub bytes: usize,
    pub mode: String,
    pub concurrency: usize,
    pub offered_per_s: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    pub send_seconds: f64,
    pub accepted_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Open loop: how late accepted requests were sent (part of the time to 202): p99 and max.
    pub late_p99_ms: Option<f64>,
    pub late_max_ms: Option<f64>,
    /// Connections the tool opened, the pre-opened ones included.
    pub connections: u64,
    /// Of those, opened before the clock started.
    pub preopened: u64,
    /// Requests sent in the warm-up (`--warmup`), not counted above.
    pub warmup_requests: u64,
    /// Non-2xx answers by status; `0` = transport error.
    pub failures: Vec<(u16, u64)>,
    pub delivered: Option<u64>,
    pub delivered_per_s: Option<f64>,
    pub delivered_p50_ms: Option<f64>,
    pub delivered_p99_ms: Option<f64>,
    pub delivered_max_ms: Option<f64>,
}

/// The message split around its `nachrichtenUUID` text, to stamp a fresh one per request.
#[derive(Debug, Clone)]
pub struct Template {
    prefix: Bytes,
    suffix: Bytes,
    has_uuid: bool,
}

impl Template {
    pub fn new(body: &[u8]) -> Template {
        let find = |needle: &[u8], from: usize| {
            body.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
        };
        let tag = b"nachrichtenUUID>";
        let split = find(tag, 0).map(|p| p + tag.len()).and_then(|open| find(b"</", open).map(|close| (open, close)));
        match split {
            Some((open, close)) => Template {
                prefix: Bytes::copy_from_slice(&body[..open]),
                suffix: Bytes::copy_from_slice(&body[close..]),
                has_uuid: true,
            },
            None => Template { prefix: Bytes::copy_from_slice(body), suffix: Bytes::new(), has_uuid: false },
        }
    }

    /// The body with `uuid` as its message id (unchanged when it has none).
    pub fn render(&self, uuid: &str) -> Bytes {
        if !self.has_uuid {
            return self.prefix.clone();
        }
        let mut out = Vec::with_capacity(self.prefix.len() + uuid.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(uuid.as_bytes());
        out.extend_from_slice(&self.suffix);
        Bytes::from(out)
    }

    pub fn has_uuid(&self) -> bool {
        self.has_uuid
    }
}

struct Sender {
    /// `host:port` of the hub, for `Host` and for connecting.
    authority: String,
    path: String,
    token: Option<String>,
    content_type: String,
    template: Template,
    /// Idle kept-alive connections.
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Connections opened so far.
    opened: AtomicU64,
}

impl Sender {
    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    async fn send(&self, start: Instant) -> Sample {
        let late_micros = start.elapsed().as_micros() as u64;
        let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
        // A request that takes longer than this counts as a transport error (status 0).
        let (status, submission_id) = match tokio::time::timeout(Duration::from_secs(30), self.request(&uuid)).await {
            Ok(Ok(answer)) => answer,
            _ => (0, None),
        };
        Sample { start, micros: start.elapsed().as_micros() as u64, late_micros, status, submission_id }
    }

    async fn request(&self, uuid: &str) -> anyhow::Result<(u16, Option<String>)> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let mut request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, &self.content_type);
        if !self.template.has_uuid() {
            request = request.header("idempotency-key", uuid);
        }
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(self.template.render(uuid)))?;
        conn.ready().await?;
        let response = conn.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        if !conn.is_closed() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
        let id = if (200..300).contains(&status) { submission_id_of(&body) } else { None };
        Ok((status, id))
    }
}

/// Splits `http://host:port[/base]` into the authority and the submissions path.
fn target(to: &str) -> anyhow::Result<(String, String)> {
    let url = reqwest::Url::parse(to).with_context(|| format!("`--to {to}` is not a URL"))?;
    if url.scheme() != "http" {
        bail!("`--to {to}`: the load tool speaks plain http:// only (run it next to the hub, or behind the TLS proxy)");
    }
    let host = url.host_str().with_context(|| format!("`--to {to}` names no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    // `host_str` keeps the brackets of an IPv6 address.
    Ok((format!("{host}:{port}"), format!("{}/v1/submissions", url.path().trim_end_matches('/'))))
}

fn submission_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("submission_id")?.as_str().map(str::to_owned)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.requests == 0 || args.concurrency == 0 {
        bail!("`-n` and `-c` must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("`--rate` must be a positive number of requests per second");
    }
    let body = std::fs::read(&args.file).with_context(|| format!("cannot read `{}`", args.file.display()))?;
    let content_type = args.content_type.clone().unwrap_or_else(|| {
        if args.file.extension().is_some_and(|e| e == "json") { "application/json" } else { "application/xml" }.into()
    });
    let receiver = match args.receiver_listen {
        Some(listen) => Some(spawn(ReceiverOptions { listen, ..ReceiverOptions::default() }).await?),
        None => None,
    };
    let (authority, path) = target(&args.to)?;
    let sender = Arc::new(Sender {
        authority,
        path,
        idle: std::sync::Mutex::new(Vec::with_capacity(args.concurrency)),
        opened: AtomicU64::new(0),
        token: args.token.clone(),
        content_type,
        template: Template::new(&body),
    });
    let preopen = args.preopen.unwrap_or(args.concurrency);
    let opened = futures::future::join_all((0..preopen).map(|_| sender.connect())).await;
    let opened: Vec<_> = opened.into_iter().collect::<anyhow::Result<_>>().context("cannot open the connections")?;
    sender.idle.lock().unwrap_or_else(|e| e.into_inner()).extend(opened);
    let started = Instant::now();
    let samples = match args.rate {
        None => closed_loop(&sender, args.requests, args.concurrency, args.max_time).await,
        Some(rate) => open_loop(&sender, args.requests, args.concurrency, rate, args.max_time).await,
    };
    let measured_from = started + args.warmup;
    let send_seconds = started.elapsed().saturating_sub(args.warmup).as_secs_f64();
    let (warm, samples): (Vec<Sample>, Vec<Sample>) = samples.into_iter().partition(|s| s.start < measured_from);
    let mut report = summarize(&args, body.len(), &samples, send_seconds);
    report.warmup_requests = warm.len() as u64;
    report.connections = sender.opened.load(Ordering::Relaxed);
    report.preopened = preopen as u64;
    if let Some(receiver) = &receiver {
        // The warm-up's submissions are delivered too; only the counted ones are timed.
        let accepted = report.accepted + warm.iter().filter(|s| s.accepted()).count() as u64;
        receiver.wait_delivered(accepted, args.drain_time).await;
        let sent_at: HashMap<&str, Instant> =
            samples.iter().filter_map(|s| s.submission_id.as_deref().map(|id| (id, s.start))).collect();
        let mut firsts: HashMap<String, Instant> = HashMap::new();
        receiver.with_arrivals(|arrivals| {
            for a in arrivals.iter().filter(|a| a.accepted()) {
                if let Some(id) = &a.submission_id {
                    firsts.entry(id.clone()).or_insert(a.at);
                }
            }
        });
        let mut latencies: Vec<u64> = Vec::with_capacity(firsts.len());
        let mut last = started;
        for (id, at) in &firsts {
            if let Some(sent) = sent_at.get(id.as_str()) {
                latencies.push(at.saturating_duration_since(*sent).as_micros() as u64);
                last = last.max(*at);
            }
        }
        latencies.sort_unstable();
        let delivered = latencies.len() as u64;
        let span = last.saturating_duration_since(started).as_secs_f64();
        report.delivered = Some(delivered);
        report.delivered_per_s = Some(if span > 0.0 { delivered as f64 / span } else { 0.0 });
        report.delivered_p50_ms = Some(percentile_ms(&latencies, 50.0));
        report.delivered_p99_ms = Some(percentile_ms(&latencies, 99.0));
        report.delivered_max_ms = Some(percentile_ms(&latencies, 100.0));
    }
    print_report(&report);
    if args.json {
        println!("json {}", serde_json::to_string(&report).context("cannot encode the report")?);
    }
    if let Some(receiver) = receiver {
        receiver.shutdown().await?;
    }
    let all_delivered = report.delivered.is_none_or(|d| d >= report.accepted);
    Ok(if report.failures.is_empty() && report.sent + report.warmup_requests == args.requests && all_delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn closed_loop(sender: &Arc<Sender>, n: u64, clients: usize, max_time: Duration) -> Vec<Sample> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (sender, next) = (sender.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                mine.push(sender.send(Instant::now()).await);
            }
            mine
        }));
    }
    let mut samples = Vec::with_capacity(n as usize);
    for task in tasks {
        if let Ok(mine) = task.await {
            samples.extend(mine);
        }
    }
    samples
}

async fn open_loop(sender: &Arc<Sender>, n: u64, in_flight: usize, rate: f64, max_time: Duration) -> Vec<Sample> {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut i = 0u64;
    while i < n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due.saturating_duration_since(start) > max_time {
            break;
        }
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        // Launch everything due by now: the timer's granularity (1 ms) must not cap the rate.
        let now = Instant::now();
        while i < n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > now {
                break;
            }
            let (sender, permits, tx) = (sender.clone(), permits.clone(), tx.clone());
            tokio::spawn(async move {
                // The latency counts from `due`: time spent waiting for a free slot is queueing
                // the hub caused, and must show.
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let _ = tx.send(sender.send(due).await);
            });
            i += 1;
        }
    }
    drop(tx);
    let mut samples = Vec::with_capacity(i as usize);
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    samples
}

fn percentile_ms(sorted_micros: &[u64], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_micros.len() as f64).ceil() as usize;
    sorted_micros[rank.clamp(1, sorted_micros.len()) - 1] as f64 / 1000.0
}

fn summarize(args: &BenchArgs, bytes: usize, samples: &[Sample], send_seconds: f64) -> Report {
    let mut micros: Vec<u64> = samples.iter().filter(|s| s.accepted()).map(|s| s.micros).collect();
    micros.sort_unstable();
    let mut failures: HashMap<u16, u64> = HashMap::new();
    for s in samples.iter().filter(|s| !s.accepted()) {
        *failures.entry(s.status).or_default() += 1;
    }
    let mut failures: Vec<(u16, u64)> = failures.into_iter().collect();
    failures.sort_unstable();
    let accepted = micros.len() as u64;
    let late = args.rate.map(|_| lateness_ms(samples));
    Report {
        file: args.file.display().to_string(),
        bytes,
        mode: if args.rate.is_some() { "open" } else { "closed" }.into(),
        concurrency: args.concurrency,
        offered_per_s: args.rate,
        sent: samples.len() as u64,
        accepted,
        send_seconds,
        accepted_per_s: if send_seconds > 0.0 { accepted as f64 / send_seconds } else { 0.0 },
        p50_ms: percentile_ms(&micros, 50.0),
        p99_ms: percentile_ms(&micros, 99.0),
        max_ms: percentile_ms(&micros, 100.0),
        late_p99_ms: late.map(|l| l.0),
        late_max_ms: late.map(|l| l.1),
        failures,
        ..Report::default()
    }
}

/// p99 and max of how late accepted requests were sent, in ms.
fn lateness_ms(samples: &[Sample]) -> (f64, f64) {
    let mut late: Vec<u64> = samples.iter().filter(|s| s.accepted()).map(|s| s.late_micros).collect();
    late.sort_unstable();
    (percentile_ms(&late, 99.0), percentile_ms(&late, 100.0))
}

fn print_report(r: &Report) {
    let mode = match r.offered_per_s {
        Some(rate) => format!("open loop at {rate:.0}/s offered, at most {} in flight", r.concurrency),
        None => format!("closed loop, {} clients", r.concurrency),
    };
    println!("bench: {} ({} bytes), {mode}", r.file, r.bytes);
    println!(
        "sent {} in {:.2} s: accepted {} = {:.0}/s; time to 202 p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.sent, r.send_seconds, r.accepted, r.accepted_per_s, r.p50_ms, r.p99_ms, r.max_ms
    );
    println!("connections: {} opened before the clock, {} during the run", r.preopened, r.connections - r.preopened);
    if r.warmup_requests > 0 {
        println!("warm-up: the first {} requests were sent and not counted", r.warmup_requests);
    }
    if let (Some(p99), Some(max)) = (r.late_p99_ms, r.late_max_ms) {
        println!(
            "sent behind schedule (part of the above: no free slot, or this tool itself late): p99 {p99:.2} ms, max {max:.2} ms"
        );
    }
    if r.failures.is_empty() {
        println!("non-2xx: none");
    } else {
        let list: Vec<String> = r
            .failures
            .iter()
            .map(|(status, n)| if *status == 0 { format!("transport error: {n}") } else { format!("{status}: {n}") })
            .collect();
        println!("non-2xx: {}", list.join(", "));
    }
    if let (Some(d), Some(rate), Some(p50), Some(p99), Some(max)) =
        (r.delivered, r.delivered_per_s, r.delivered_p50_ms, r.delivered_p99_ms, r.delivered_max_ms)
    {
        println!(
            "delivered {d} of {} = {rate:.0}/s; send to delivered p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
            r.accepted
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_stamps_a_new_uuid() {
        let xml = b"<m><nachrichtenUUID>00000000-0000-4000-8000-000000000001</nachrichtenUUID></m>";
        let t = Template::new(xml);
        assert!(t.has_uuid());
        let out = t.render("11111111-1111-4111-8111-111111111111");
        assert_eq!(&out[..], &b"<m><nachrichtenUUID>11111111-1111-4111-8111-111111111111</nachrichtenUUID></m>"[..]);
        let plain = Template::new(b"{\"a\":1}");
        assert!(!plain.has_uuid());
        assert_eq!(&plain.render("x")[..], b"{\"a\":1}");
    }

    #[test]
    fn target_splits_the_hub_url() {
        assert_eq!(
            target("http://127.0.0.1:8080").expect("valid hub URL"),
            ("127.0.0.1:8080".into(), "/v1/submissions".into())
        );
        assert_eq!(
            target("http://hub.example/lotse/").expect("valid hub URL"),
            ("hub.example:80".into(), "/lotse/v1/submissions".into())
        );
        assert_eq!(
            target("http://[::1]:9000").expect("valid hub URL"),
            ("[::1]:9000".into(), "/v1/submissions".into())
        );
        assert!(target("https://hub.example").expect_err("https refused").to_string().contains("plain http://"));
        assert!(target("not a url").is_err());
    }

    #[test]
    fn lateness_counts_accepted_requests_only() {
        let sample = |late_ms: u64, status: u16| Sample {
            start: Instant::now(),
            micros: late_ms * 1000 + 500,
            late_micros: late_ms * 1000,
            status,
            submission_id: None,
        };
        let mut samples: Vec<Sample> = (1..=100).map(|i| sample(i, 202)).collect();
        // A refused or failed request says nothing about when accepted ones were sent.
        samples.push(sample(5_000, 503));
        samples.push(sample(9_000, 0));
        assert_eq!(lateness_ms(&samples), (99.0, 100.0));
        assert_eq!(lateness_ms(&[]), (0.0, 0.0));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
        assert_eq!(percentile_ms(&[7000], 1.0), 7.0);
    }
}
