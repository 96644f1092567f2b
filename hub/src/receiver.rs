//! A sample agency receiver: accepts Lotse deliveries over HTTP, records each arrival, and can
//! play a failing agency (first N attempts of every delivery answered with e.g. 503).
//!
//! Used three ways: `lotse receiver` (a process, for humans and the docker demo), in-process by
//! `lotse demo` and `lotse bench` ([`spawn`]), and by the end-to-end tests.
//!
//! What it keeps per arrival is small ([`Arrival`]: Lotse headers, body length and SHA-256, time)
//! so a load run with 100,000 deliveries stays cheap; the bodies themselves go to `out_dir`
//! (written once per delivery id, at its first accepted arrival) when one is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

/// Largest body the receiver reads (bigger than any sane XÖV message with attachments).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {
    /// Address to listen on (port 0 = any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Folder for received bodies (`<path>/<delivery id>.<ext>`) and `received.jsonl`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Answer the first N attempts of every delivery with `--fail-status` (a flaky agency).
    #[arg(long, default_value_t = 0)]
    pub fail_first: u32,
    /// Status for the failing attempts.
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,
    /// Status for every other attempt (e.g. 400 to play an agency that refuses everything).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
}

/// How a receiver behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverOptions {
    pub listen: SocketAddr,
    /// Where bodies and `received.jsonl` go; `None` keeps nothing on disk.
    pub out_dir: Option<PathBuf>,
    /// The first `fail_first` attempts of each delivery id are answered with `fail_status`.
    pub fail_first: u32,
    pub fail_status: u16,
    /// The answer to every other attempt.
    pub status: u16,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            out_dir: None,
            fail_first: 0,
            fail_status: 503,
            status: 200,
        }
    }
}

/// One HTTP request that reached the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Request path, e.g. `/bauamt`.
    pub path: String,
    pub delivery_id: Option<String>,
    pub message_id: Option<String>,
    pub submission_id: Option<String>,
    /// `Lotse-Attempt` as sent by the hub.
    pub attempt: Option<u32>,
    pub content_type: Option<String>,
    pub len: usize,
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
    /// The status the receiver answered.
    pub status: u16,
    /// Which arrival of this delivery id this was at the receiver, 1-based.
    pub nth: u32,
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// Monotonic arrival time, for latency measurements in the same process.
    #[serde(skip)]
    pub at: Instant,
}

impl Arrival {
    /// True when the receiver answered 2xx, i.e. the hub may count the delivery as delivered.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Running totals, published on a watch channel so callers can await them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCounts {
    /// Every request, failed or not.
    pub attempts: u64,
    /// Distinct delivery ids answered 2xx at least once.
    pub delivered: u64,
    /// Requests answered 2xx for a delivery id already answered 2xx before (at-least-once repeats).
    pub duplicates: u64,
}

#[derive(Debug, Default)]
struct PerDelivery {
    arrivals: u32,
    kept: Kept,
}

/// Whether a delivery's body is kept (answered 2xx) yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kept {
    #[default]
    No,
    /// Its first accepted arrival is writing the body to `out_dir` now.
    Storing,
    Yes,
}

#[derive(Debug, Default)]
struct Log {
    arrivals: Vec<Arrival>,
    per_delivery: HashMap<String, PerDelivery>,
    counts: ReceiverCounts,
}

struct Shared {
    opts: ReceiverOptions,
    /// Keep every [`Arrival`] in memory (in-process users read them); the long-running CLI
    /// receiver keeps only counts and, per delivery id, how often it came and whether its body is
    /// kept (about 100 bytes each: a sample receiver, not one for millions of deliveries).
    keep_arrivals: bool,
    log: Mutex<Log>,
    counts: watch::Sender<ReceiverCounts>,
    journal: Option<tokio::sync::Mutex<tokio::fs::File>>,
}

/// A running receiver. Dropping it stops the server (without waiting); [`ReceiverHandle::shutdown`]
/// stops it and waits.
pub struct ReceiverHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Starts a receiver on `opts.listen` and returns once it accepts connections.
pub async fn spawn(opts: ReceiverOptions) -> anyhow::Result<ReceiverHandle> {
    spawn_receiver(opts, true).await
}

async fn spawn_receiver(opts: ReceiverOptions, keep_arrivals: bool) -> anyhow::Result<ReceiverHandle> {
    let journal = match &opts.out_dir {
        Some(dir) => {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create `{}`", dir.display()))?;
            let path = dir.join("received.jsonl");
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .with_context(|| format!("cannot open `{}`", path.display()))?;
            Some(tokio::sync::Mutex::new(file))
        }
        None => None,
    };
    let listener = crate::app::bind(opts.listen).with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let (counts, _) = watch::channel(ReceiverCounts::default());
    let shared = Arc::new(Shared { opts, keep_arrivals, log: Mutex::new(Log::default()), counts, journal });
    let app = Router::new()
        .route("/healthz", axum::routing::get(|| async { StatusCode::OK }))
        .fallback(receive)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(ReceiverHandle { addr, shared, stop: Some(stop), task: Some(task) })
}

impl ReceiverHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`, for endpoint URLs in configs.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every arrival so far, in order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.with_log(|log| log.arrivals.clone())
    }

    /// Reads the arrivals without copying them.
    pub fn with_arrivals<T>(&self, f: impl FnOnce(&[Arrival]) -> T) -> T {
        self.with_log(|log| f(&log.arrivals))
    }

    pub fn counts(&self) -> ReceiverCounts {
        *self.shared.counts.borrow()
    }

    /// A watch on the running totals.
    pub fn subscribe(&self) -> watch::Receiver<ReceiverCounts> {
        self.shared.counts.subscribe()
    }

    /// Waits until `done(counts)` holds or `timeout` passes; returns the last counts and whether
    /// the condition held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ReceiverCounts) -> bool,
    ) -> (ReceiverCounts, bool) {
        let mut rx = self.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(|c| done(c))).await;
        let counts = self.counts();
        (counts, matches!(result, Ok(Ok(_))))
    }

    /// Waits until `n` distinct deliveries were accepted; false on timeout.
    pub async fn wait_delivered(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.delivered >= n).await.1
    }

    /// Waits until `n` requests arrived (any answer); false on timeout.
    pub async fn wait_attempts(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.attempts >= n).await.1
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("receiver task panicked")?.context("receiver server failed")?;
        }
        Ok(())
    }

    fn with_log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        // A poisoned lock means a panic while holding it; the data is plain and still readable.
        let log = self.shared.log.lock().unwrap_or_else(|p| p.into_inner());
        f(&log)
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "the receiver takes POST only\n").into_response();
    }
    let at = Instant::now();
    let at_unix_ms =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let delivery_id = header(&headers, "lotse-delivery-id");
    let attempt = header(&headers, "lotse-attempt").and_then(|a| a.trim().parse().ok());
    let sha256 = hex::encode(Sha256::digest(&body));
    // Requests without a delivery id share one counter: they still see `fail_first` failures.
    let key = delivery_id.clone().unwrap_or_default();
    let (mut arrival, first_accept, repeat) = {
        let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
        let per = log.per_delivery.entry(key.clone()).or_default();
        per.arrivals += 1;
        let nth = per.arrivals;
        let mut status = if nth <= shared.opts.fail_first { shared.opts.fail_status } else { shared.opts.status };
        if per.kept == Kept::Storing && (200..300).contains(&status) {
            // The first accepted arrival is still writing the body, and its write may yet fail:
            // a 2xx now would tell the hub the body is kept before it is. Ask again later.
            status = 503;
        }
        let ok = (200..300).contains(&status);
        let first_accept = ok && per.kept == Kept::No;
        let repeat = ok && per.kept == Kept::Yes;
        if first_accept {
            per.kept = if shared.opts.out_dir.is_some() { Kept::Storing } else { Kept::Yes };
        }
        let arrival = Arrival {
            path: uri.path().to_owned(),
            delivery_id,
            message_id: header(&headers, "lotse-message-id"),
            submission_id: header(&headers, "lotse-submission-id"),
            attempt,
            content_type: header(&headers, "content-type"),
            len: body.len(),
            sha256,
            status,
            nth,
            at_unix_ms,
            at,
        };
        (arrival, first_accept, repeat)
    };
    let mut stored_ok = first_accept;
    if let Some(dir) = &shared.opts.out_dir {
        let mut file = None;
        if first_accept {
            match store_body(dir, &arrival, &body).await {
                Ok(f) => file = Some(f),
                Err(e) => {
                    // Not kept, so not accepted: answer 500 and let the hub's retry store it.
                    tracing::error!(error = %format!("{e:#}"), "receiver cannot store a body");
                    arrival.status = 500;
                    stored_ok = false;
                }
            }
        }
        if let Err(e) = append_journal(&shared, &arrival, file.as_deref()).await {
            tracing::error!(error = %format!("{e:#}"), "receiver cannot append to received.jsonl");
        }
    }
    // Record and publish only now, so whoever waits for a count finds the body on disk (and the
    // arrival in the list); publish the current totals, never a stale snapshot.
    {
        let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
        if first_accept && let Some(per) = log.per_delivery.get_mut(&key) {
            per.kept = if stored_ok { Kept::Yes } else { Kept::No };
        }
        if shared.keep_arrivals {
            log.arrivals.push(arrival.clone());
        }
        log.counts.attempts += 1;
        if stored_ok {
            log.counts.delivered += 1;
        }
        if repeat {
            log.counts.duplicates += 1;
        }
        shared.counts.send_replace(log.counts);
    }
    let status = StatusCode::from_u16(arrival.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{}\n", status.canonical_reason().unwrap_or("answer"))).into_response()
}

/// Folder name for a request path: `/agency/bauamt` -> `agency_bauamt`, `/` -> `root`.
pub fn folder_for_path(path: &str) -> String {
    let name: String = path
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') { "root".to_owned() } else { name }
}

/// File extension for a media type.
pub fn extension_for(content_type: Option<&str>) -> &'static str {
    let essence = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence.ends_with("xml") {
        "xml"
    } else if essence.ends_with("json") {
        "json"
    } else {
        "bin"
    }
}

/// A delivery id safe as a file name (the hub sends UUIDs; anything else is replaced).
fn file_stem(arrival: &Arrival) -> String {
    match &arrival.delivery_id {
        Some(id) if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') => {
            id.clone()
        }
        _ => format!("no-delivery-id-{}-{}", arrival.at_unix_ms, &arrival.sha256[..12]),
    }
}

async fn store_body(dir: &Path, arrival: &Arrival, body: &[u8]) -> anyhow::Result<PathBuf> {
    let folder = dir.join(folder_for_path(&arrival.path));
    tokio::fs::create_dir_all(&folder).await.with_context(|| format!("cannot create `{}`", folder.display()))?;
    let file = folder.join(format!("{}.{}", file_stem(arrival), extension_for(arrival.content_type.as_deref())));
    // On disk before the 2xx: an agency that answers 200 has taken the case over.
    let mut f = tokio::fs::File::create(&file).await.with_context(|| format!("cannot create `{}`", file.display()))?;
    f.write_all(body).await.with_context(|| format!("cannot write `{}`", file.display()))?;
    f.sync_all().await.with_context(|| format!("cannot sync `{}`", file.display()))?;
    Ok(file)
}

#[derive(Serialize)]
struct JournalLine<'a> {
    #[serde(flatten)]
    arrival: &'a Arrival,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

async fn append_journal(shared: &Shared, arrival: &Arrival, file: Option<&Path>) -> anyhow::Result<()> {
    let Some(journal) = &shared.journal else { return Ok(()) };
    let line = JournalLine { arrival, file: file.map(|f| f.display().to_string()) };
    let mut text = serde_json::to_string(&line).context("cannot encode a journal line")?;
    text.push('\n');
    let mut journal = journal.lock().await;
    journal.write_all(text.as_bytes()).await.context("cannot write received.jsonl")?;
    journal.flush().await.context("cannot flush received.jsonl")?;
    Ok(())
}

/// `lotse receiver`: runs until SIGINT or SIGTERM.
pub async fn run(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    for (flag, status) in [("--status", args.status), ("--fail-status", args.fail_status)] {
        if StatusCode::from_u16(status).is_err() || status < 200 {
            anyhow::bail!("`{flag} {status}` is not an HTTP status a receiver can answer (200-999)");
        }
    }
    let opts = ReceiverOptions {
        listen: args.listen,
        out_dir: args.out,
        fail_first: args.fail_first,
        fail_status: args.fail_status,
        status: args.status,
    };
    let handle = spawn_receiver(opts, false).await?;
    // The first stdout line is the contract with scripts and tests: they parse the bound port.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", handle.addr()).context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    wait_for_signal().await?;
    let counts = handle.counts();
    handle.shutdown().await?;
    eprintln!(
        "receiver stopped: {} requests, {} deliveries accepted, {} repeats",
        counts.attempts, counts.delivered, counts.duplicates
    );
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests;
