//! Delivery: one worker per endpoint leases due deliveries, sends each with its transport and
//! settles the outcome.
//!
//! A worker keeps at most `concurrency` attempts in flight (a semaphore); it leases only as
//! many deliveries as it has free slots, so a slow receiver holds back its own queue and
//! nothing else. A paused endpoint leases nothing; its queue waits.
//!
//! Circuit breaker: after [`BREAKER_THRESHOLD`] transient failures in a row, the endpoint is
//! taken as down. The worker then waits a backoff (the retry policy's curve with jitter) and
//! sends one delivery as a probe, until an attempt gets an answer. Deliveries waiting meanwhile
//! are not attempted, so a receiver that is down for an hour sees a trickle of probes instead of
//! every queued delivery, and their retry budgets are not used up.

pub mod amqp;
pub mod file;
pub mod http;
pub mod retry;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, EndpointConfig, EndpointKind, RetryConfig};
use crate::store::{Lease, Millis, Outcome, Pause, Store, now_millis};
use retry::AttemptResult;

/// Endpoints an operator paused: the delivery workers lease nothing for them, and their
/// mailboxes hand nothing out.
///
/// Kept by the store ([`Store::set_paused`]; RabbitMQ: in its event stream, so a pause holds on
/// every process sharing the broker and survives restarts; the embedded store: in its
/// database, so a pause survives a restart). Reads are cheap (a small map), so workers and
/// mailboxes ask before every lease.
#[derive(Clone)]
pub struct Paused(Arc<dyn Store>);

impl Paused {
    /// The pauses `store` keeps.
    pub fn new(store: Arc<dyn Store>) -> Paused {
        Paused(store)
    }

    /// Pauses (`paused`) or resumes `endpoint`, on every process that shares the store.
    pub async fn set(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), crate::store::StoreError> {
        self.0.set_paused(endpoint, paused, actor, reason).await
    }

    /// Every paused endpoint, with who paused it and when.
    pub fn all(&self) -> BTreeMap<String, Pause> {
        self.0.pauses()
    }

    /// The pause of `endpoint`, if it is paused.
    pub fn get(&self, endpoint: &str) -> Option<Pause> {
        self.0.pauses().remove(endpoint)
    }

    pub fn is_paused(&self, endpoint: &str) -> bool {
        self.0.pauses().contains_key(endpoint)
    }

    /// The paused endpoints' names, sorted.
    pub fn list(&self) -> Vec<String> {
        self.all().into_keys().collect()
    }
}

/// The ids every delivery carries to its receiver, whatever the transport (HTTP headers, AMQP
/// headers, a mailbox's answer): `lotse-delivery-id` (stable across attempts and replays),
/// `lotse-submission-id`, `lotse-attempt` (1-based) and, when the message has one,
/// `lotse-message-id`, so receivers can drop repeats.
pub fn lotse_headers(lease: &Lease) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("lotse-delivery-id", lease.delivery_id.to_string()),
        ("lotse-submission-id", lease.submission_id.to_string()),
        ("lotse-attempt", lease.attempt.to_string()),
    ];
    if let Some(m) = &lease.message_id {
        headers.push(("lotse-message-id", m.clone()));
    }
    headers
}

/// What each delivery worker of this process is doing now, for operators (`lotse status`,
/// `GET /v1/admin/overview`): when an endpoint's deliveries do not move, whether its worker
/// waits for the receiver (every slot busy), for the breaker, for the store, or is paused.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<BTreeMap<String, Arc<Gauge>>>>);

impl Workers {
    /// Each worker's state, by endpoint name.
    pub fn views(&self) -> Vec<WorkerView> {
        let gauges = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_millis();
        gauges
            .iter()
            .map(|(endpoint, g)| WorkerView {
                endpoint: endpoint.clone(),
                doing: Doing::from_u8(g.doing.load(Ordering::Relaxed)).name(),
                for_ms: now.saturating_sub(g.since.load(Ordering::Relaxed)),
                in_flight: g.concurrency.saturating_sub(g.slots.available_permits()),
                concurrency: g.concurrency,
                failures_in_a_row: g.failures.load(Ordering::Relaxed),
                unrecorded_in_a_row: g.settle_errors.load(Ordering::Relaxed),
                last_lease_ms_ago: match g.last_lease.load(Ordering::Relaxed) {
                    0 => None,
                    at => Some(now.saturating_sub(at)),
                },
                lease_pending_ms: match g.lease_started.load(Ordering::Relaxed) {
                    0 => None,
                    at => Some(now.saturating_sub(at)),
                },
            })
            .collect()
    }

    fn add(&self, endpoint: &str, concurrency: usize) -> Arc<Gauge> {
        let gauge = Arc::new(Gauge {
            concurrency,
            slots: Arc::new(Semaphore::new(concurrency)),
            failures: AtomicU32::new(0),
            settle_errors: AtomicU32::new(0),
            doing: AtomicU8::new(Doing::Leasing as u8),
            since: AtomicU64::new(now_millis()),
            last_lease: AtomicU64::new(0),
            lease_started: AtomicU64::new(0),
        });
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(endpoint.to_owned(), gauge.clone());
        gauge
    }
}

/// One worker's state ([`Workers::views`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerView {
    pub endpoint: String,
    /// `leasing` (asking the store for due deliveries, or waiting for one to become due),
    /// `waiting for a free slot` (all `concurrency` attempts in flight: the receiver is slow),
    /// `breaker wait` (the endpoint looks down; a probe follows), `store wait` (the store could
    /// not lease or record attempts; trying again), `paused`, `stopped`.
    pub doing: &'static str,
    /// For how long, in milliseconds.
    pub for_ms: Millis,
    /// Attempts in flight now.
    pub in_flight: usize,
    pub concurrency: usize,
    /// Transient failures in a row (the breaker opens at [`BREAKER_THRESHOLD`]).
    pub failures_in_a_row: u32,
    /// Attempts in a row whose outcome the store could not record.
    pub unrecorded_in_a_row: u32,
    /// Milliseconds since the worker last got a delivery to attempt (`None`: never).
    pub last_lease_ms_ago: Option<Millis>,
    /// How long the store's lease under way has been pending (`None`: none under way). A lease
    /// returns within about half a second; a minute means the store is stuck (a bug).
    pub lease_pending_ms: Option<Millis>,
}

struct Gauge {
    concurrency: usize,
    /// One permit per attempt in flight.
    slots: Arc<Semaphore>,
    /// Transient failures in a row (reset by any answer that is not transient).
    failures: AtomicU32,
    /// Attempts in a row whose outcome the store could not record (reset by one it could).
    settle_errors: AtomicU32,
    /// A [`Doing`], and since when (milliseconds since the epoch).
    doing: AtomicU8,
    since: AtomicU64,
    last_lease: AtomicU64,
    /// When the lease under way began (0: none under way).
    lease_started: AtomicU64,
}

impl Gauge {
    fn set(&self, doing: Doing) {
        if self.doing.swap(doing as u8, Ordering::Relaxed) != doing as u8 {
            self.since.store(now_millis(), Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Doing {
    Leasing = 0,
    WaitingForSlot = 1,
    BreakerWait = 2,
    StoreWait = 3,
    Paused = 4,
    Stopped = 5,
}

impl Doing {
    fn from_u8(n: u8) -> Doing {
        [Doing::Leasing, Doing::WaitingForSlot, Doing::BreakerWait, Doing::StoreWait, Doing::Paused, Doing::Stopped]
            .get(usize::from(n))
            .copied()
            .unwrap_or(Doing::Leasing)
    }

    fn name(self) -> &'static str {
        match self {
            Doing::Leasing => "leasing",
            Doing::WaitingForSlot => "waiting for a free slot",
            Doing::BreakerWait => "breaker wait",
            Doing::StoreWait => "store wait",
            Doing::Paused => "paused",
            Doing::Stopped => "stopped",
        }
    }
}

/// Starts one worker per endpoint; they stop when `shutdown` turns true, after finishing the
/// attempts they have in flight. Each reports what it is doing on `workers`.
pub fn spawn_workers(
    config: &Config,
    store: Arc<dyn Store>,
    paused: Paused,
    workers: &Workers,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    // A mailbox has no worker: its agency fetches (`api::mailbox`).
    for endpoint in config.raw.endpoints.iter().filter(|e| e.kind != EndpointKind::Mailbox) {
        let transport = Arc::new(Transport::new(endpoint)?);
        let worker = Worker {
            gauge: workers.add(&endpoint.name, endpoint.concurrency),
            endpoint: endpoint.clone(),
            retry: config.raw.retry,
            store: store.clone(),
            transport,
            paused: paused.clone(),
        };
        set.spawn(worker.run(shutdown.clone()));
    }
    Ok(set)
}

/// How long a lease may stay pending before the worker says so in the log (again every as long).
#[cfg(not(test))]
const LEASE_WATCH: Duration = Duration::from_secs(60);
#[cfg(test)]
const LEASE_WATCH: Duration = Duration::from_millis(300);

/// Transient failures in a row after which an endpoint is taken as down.
pub const BREAKER_THRESHOLD: u32 = 5;

struct Worker {
    /// Its slots, failure counts and what it is doing (shared with [`Workers`]).
    gauge: Arc<Gauge>,
    endpoint: EndpointConfig,
    retry: RetryConfig,
    store: Arc<dyn Store>,
    transport: Arc<Transport>,
    paused: Paused,
}

/// How an endpoint's deliveries leave (`kind` in its config).
enum Transport {
    Http(http::HttpTransport),
    File(file::FileTransport),
    Amqp(Box<amqp::AmqpTransport>),
}

impl Transport {
    fn new(endpoint: &EndpointConfig) -> anyhow::Result<Transport> {
        Ok(match (endpoint.kind, &endpoint.path) {
            (EndpointKind::File, Some(dir)) => Transport::File(file::FileTransport::new(dir.clone())),
            (EndpointKind::File, None) => {
                anyhow::bail!("endpoint `{}`: `kind = \"file\"` needs a `path`", endpoint.name)
            }
            (EndpointKind::Http, _) => Transport::Http(http::HttpTransport::new(endpoint)?),
            (EndpointKind::Amqp, _) => Transport::Amqp(Box::new(amqp::AmqpTransport::new(endpoint)?)),
            (EndpointKind::Mailbox, _) => {
                anyhow::bail!("endpoint `{}`: a mailbox is fetched from, not sent to", endpoint.name)
            }
        })
    }

    async fn send(&self, lease: &Lease) -> AttemptResult {
        match self {
            Transport::Http(t) => t.send(lease).await,
            Transport::File(t) => t.send(lease).await,
            Transport::Amqp(t) => t.send(lease).await,
        }
    }
}

impl Worker {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.endpoint.name.clone();
        let slots = self.gauge.slots.clone();
        let this = Arc::new(self);
        let gauge = &this.gauge;
        let mut store_errors = 0u32;
        tracing::info!(endpoint = %name, "delivery worker started");
        // Said once per change, on every process: a pause made on another one shows here too.
        let mut holding = false;
        while !*shutdown.borrow() {
            if this.paused.is_paused(&name) {
                gauge.set(Doing::Paused);
                if !holding {
                    holding = true;
                    tracing::info!(endpoint = %name, "endpoint paused: its deliveries are held");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            if holding {
                holding = false;
                tracing::info!(endpoint = %name, "endpoint resumed: delivering again");
            }
            // Wait for one free slot, then lease as many deliveries as there are free slots.
            if slots.available_permits() == 0 {
                gauge.set(Doing::WaitingForSlot);
            }
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => continue,
            };
            let mut free = 1 + slots.available_permits();
            let failures = gauge.failures.load(Ordering::Relaxed);
            if failures >= BREAKER_THRESHOLD {
                let cap = retry::backoff_cap(&this.retry, failures - BREAKER_THRESHOLD + 1);
                let wait = cap.mul_f64(0.5 + rand::rng().random::<f64>() / 2.0);
                if failures == BREAKER_THRESHOLD {
                    tracing::warn!(endpoint = %name, failures, "endpoint looks down; probing with one delivery at a time");
                }
                metrics::counter!("lotse_breaker_waits_total", "endpoint" => name.clone()).increment(1);
                gauge.set(Doing::BreakerWait);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => continue,
                }
                free = 1;
            }
            let settle_errors = gauge.settle_errors.load(Ordering::Relaxed);
            if settle_errors > 0 {
                // An attempt whose outcome the store could not record (a full disk) is due again
                // at once; the receiver answers fine, so the breaker does not trip, and without
                // this pause it would get the same message again and again for as long as the
                // store cannot write. One at a time, and slower the longer it lasts (to 10 s).
                let wait = Duration::from_millis(200 * u64::from(settle_errors.min(50)));
                gauge.set(Doing::StoreWait);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => continue,
                }
                free = 1;
            }
            gauge.set(Doing::Leasing);
            gauge.lease_started.store(now_millis(), Ordering::Relaxed);
            let lease = this.store.lease(&name, free, Duration::from_millis(500));
            tokio::pin!(lease);
            // A lease returns within its wait and a few bounded broker round trips. One that
            // does not is a bug in the store: said in the log (and in the overview) while it
            // lasts, never cancelled (a cancelled lease could drop work it holds).
            let leases = loop {
                tokio::select! {
                    r = &mut lease => break Some(r),
                    _ = shutdown.changed() => break None,
                    _ = tokio::time::sleep(LEASE_WATCH) => {
                        let pending = Duration::from_millis(now_millis().saturating_sub(gauge.lease_started.load(Ordering::Relaxed)));
                        tracing::error!(endpoint = %name, pending = ?pending, "a lease of the store has not returned; the worker waits for it (a bug: please report, with `lotse status`)");
                    }
                }
            };
            gauge.lease_started.store(0, Ordering::Relaxed);
            let Some(leases) = leases else { continue };
            let leases = match leases {
                Ok(l) => {
                    store_errors = 0;
                    l
                }
                Err(e) => {
                    store_errors = store_errors.saturating_add(1);
                    let pause = Duration::from_millis(100 * u64::from(store_errors.min(50)));
                    tracing::warn!(endpoint = %name, error = %e, "cannot lease deliveries; retrying");
                    gauge.set(Doing::StoreWait);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if !leases.is_empty() {
                gauge.last_lease.store(now_millis(), Ordering::Relaxed);
            }
            let mut first = Some(first);
            for lease in leases {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let w = this.clone();
                tokio::spawn(async move {
                    w.attempt_or_recover(lease).await;
                    drop(permit);
                });
            }
        }
        // Wait for in-flight attempts: every permit back means every attempt settled.
        let _ = slots.acquire_many(this.endpoint.concurrency as u32).await;
        gauge.set(Doing::Stopped);
        tracing::info!(endpoint = %name, "delivery worker stopped");
    }

    /// Runs [`Worker::attempt`]; if it panics (a bug in a transport or the store), settles the
    /// delivery as a transient failure, so it is sent again after the usual backoff (and goes
    /// dead when its budget is spent). Without this the lease was dropped unsettled, and the
    /// embedded store kept the delivery leased until a restart: pending, and never sent again.
    async fn attempt_or_recover(&self, lease: Lease) {
        // A lease is cheap to copy (the payload is shared): this one settles after a panic.
        let kept = lease.clone();
        // What the attempt shares with later ones is atomics, the transport (its only lock, the
        // AMQP session's, is tokio's and is not poisoned) and the store: usable after a panic as
        // after any other failed attempt.
        let Err(panic) = AssertUnwindSafe(self.attempt(lease)).catch_unwind().await else { return };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        let (id, attempt) = (kept.delivery_id, kept.attempt);
        tracing::error!(delivery_id = %id, attempt, endpoint = %self.endpoint.name, panic = %message, "the attempt panicked; it will be repeated");
        // If the panic came after the store had settled the attempt, this settlement is stale
        // and the store ignores it (the first one stands).
        let error = format!("internal error during the attempt (panic: {message})");
        let result = AttemptResult::Transient { error, retry_after: None };
        if let Err(e) = settle_attempt(self.store.as_ref(), &self.retry, kept, result).await {
            self.gauge.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(delivery_id = %id, error = %e, "cannot record the attempt that panicked; it will be repeated");
        }
    }

    async fn attempt(&self, lease: Lease) {
        let started = std::time::Instant::now();
        let result = self.transport.send(&lease).await;
        if matches!(result, AttemptResult::Transient { .. }) {
            self.gauge.failures.fetch_add(1, Ordering::Relaxed);
        } else if self.gauge.failures.swap(0, Ordering::Relaxed) >= BREAKER_THRESHOLD {
            tracing::info!(endpoint = %self.endpoint.name, "endpoint answers again");
        }
        metrics::histogram!("lotse_attempt_seconds", "endpoint" => self.endpoint.name.clone())
            .record(started.elapsed().as_secs_f64());
        let id = lease.delivery_id;
        let settled = settle_attempt(self.store.as_ref(), &self.retry, lease, result).await;
        if settled.is_ok() {
            self.gauge.settle_errors.store(0, Ordering::Relaxed);
        }
        if let Err(e) = settled {
            self.gauge.settle_errors.fetch_add(1, Ordering::Relaxed);
            // The delivery stays due in the store and will be sent again: at-least-once.
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.allow() {
                tracing::error!(delivery_id = %id, error = %e, left_out, "cannot record the attempt; it will be repeated");
            }
        }
    }
}

/// Records how one attempt ended: counted, decided by the retry policy (delivered, retry later,
/// or dead), logged, settled in the store. The delivery workers and the mailboxes (whose
/// agencies acknowledge, reject or let the deadline pass) settle their attempts here.
pub async fn settle_attempt(
    store: &dyn Store,
    policy: &RetryConfig,
    lease: Lease,
    result: AttemptResult,
) -> Result<(), crate::store::StoreError> {
    let label = match &result {
        AttemptResult::Delivered { .. } => "delivered",
        AttemptResult::Transient { .. } => "transient",
        AttemptResult::Permanent { .. } => "permanent",
    };
    metrics::counter!("lotse_attempts_total", "endpoint" => lease.endpoint.clone(), "result" => label).increment(1);
    let jitter: f64 = rand::rng().random();
    let outcome = retry::decide(policy, lease.budget_attempt, result, now_millis(), jitter);
    let (id, attempt, endpoint) = (lease.delivery_id, lease.attempt, lease.endpoint.as_str());
    match &outcome {
        Outcome::Delivered { .. } => tracing::debug!(delivery_id = %id, attempt, endpoint, "delivered"),
        Outcome::Retry { error, .. } => {
            tracing::info!(delivery_id = %id, attempt, endpoint, error = %error, "delivery failed, will retry")
        }
        Outcome::Dead { error } => {
            tracing::warn!(delivery_id = %id, attempt, endpoint, error = %error, "delivery dead")
        }
    }
    store.settle(lease, outcome).await
}

/// A lease as a worker gets one, for the transports' tests: attempt 1 of a new delivery.
#[cfg(test)]
pub(crate) fn sample_lease(content_type: &str, payload: &str, message_id: Option<&str>) -> Lease {
    Lease {
        delivery_id: crate::store::DeliveryId::new(),
        submission_id: crate::store::SubmissionId::new(),
        endpoint: "bauamt".into(),
        attempt: 1,
        budget_attempt: 1,
        message_id: message_id.map(str::to_owned),
        content_type: content_type.into(),
        payload: payload.to_owned().into(),
        token: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use crate::store::{Outcome, Store, StoreError};

    /// A hub config with one endpoint, `ablage`, writing to the folder `drop_dir`.
    fn file_config(drop_dir: &std::path::Path) -> crate::config::Config {
        crate::config::Config::parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:1\"\ndata_dir = \"unused\"\n\
             [[endpoints]]\nname = \"ablage\"\nkind = \"file\"\npath = \"{}\"\n\
             [[routes]]\nname = \"r\"\nendpoints = [\"ablage\"]\n",
            drop_dir.display()
        ))
        .expect("valid test config")
    }

    /// Starts the workers of `config` on `store`: the switch that stops them, what they report,
    /// and their tasks.
    fn start(
        config: &crate::config::Config,
        store: Arc<dyn Store>,
    ) -> (tokio::sync::watch::Sender<bool>, super::Workers, tokio::task::JoinSet<()>) {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let board = super::Workers::default();
        let workers =
            super::spawn_workers(config, store.clone(), super::Paused::new(store), &board, shutdown).expect("workers");
        (stop, board, workers)
    }

    /// A paused endpoint leases nothing: its delivery waits until the endpoint is resumed. The
    /// embedded store keeps the pause (in its database, so it survives a restart).
    #[tokio::test]
    async fn a_paused_endpoint_is_held_until_it_is_resumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drop_dir = dir.path().join("eingang");
        std::fs::create_dir(&drop_dir).expect("drop folder");
        let config = file_config(&drop_dir);
        let store: Arc<dyn Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(&dir.path().join("data")).expect("store"));
        let paused = super::Paused::new(store.clone());
        paused.set("ablage", true, "oncall", Some("receiver down")).await.expect("pause");
        assert!(store.pauses().contains_key("ablage"), "the embedded store keeps the pause");
        let pause = paused.get("ablage").expect("paused");
        assert_eq!((pause.actor.as_str(), pause.reason.as_deref()), ("oncall", Some("receiver down")));
        assert_eq!(paused.list(), ["ablage"]);
        store.intake(crate::store::conformance::submission(&[], &["ablage"])).await.expect("intake");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let board = super::Workers::default();
        let mut workers =
            super::spawn_workers(&config, store.clone(), paused.clone(), &board, shutdown).expect("workers");
        let files = || std::fs::read_dir(&drop_dir).expect("read folder").count();
        // Held means nothing happens: five of the worker's pause checks, two lease waits.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(files(), 0, "delivered while paused");
        let view = board.views().pop().expect("one worker");
        assert_eq!((view.endpoint.as_str(), view.doing, view.last_lease_ms_ago), ("ablage", "paused", None));
        assert_eq!(store.counts().await.expect("counts").pending, 1);

        paused.set("ablage", false, "oncall", None).await.expect("resume");
        assert!(!paused.is_paused("ablage"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.counts().await.expect("counts").pending > 0 {
            assert!(std::time::Instant::now() < deadline, "not delivered within 10 s of the resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(files() >= 1, "the delivery's files are in the folder");
        let view = board.views().pop().expect("one worker");
        assert_ne!(view.doing, "paused");
        assert!(view.last_lease_ms_ago.is_some(), "{view:?}");
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
        assert_eq!(board.views().pop().expect("one worker").doing, "stopped");
    }

    /// Operators see what each worker does: one whose receiver takes the connection and never
    /// answers has every slot in flight and waits for a free one; one whose receiver answers
    /// 503 to everything stops in the breaker with its failures counted.
    #[tokio::test]
    async fn the_workers_report_what_they_are_doing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Accepts connections and reads nothing: every attempt waits for its timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                open.push(c);
            }
        });
        let down = crate::receiver::spawn(crate::receiver::ReceiverOptions { status: 503, ..Default::default() })
            .await
            .expect("receiver");
        let config = crate::config::Config::parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:1\"\ndata_dir = \"unused\"\n\
             [retry]\nmax_attempts = 100\ninitial_backoff = \"50ms\"\nmax_backoff = \"2s\"\n\
             [[endpoints]]\nname = \"slow\"\nkind = \"http\"\nurl = \"http://{silent_addr}/in\"\nconcurrency = 2\ntimeout = \"60s\"\n\
             [[endpoints]]\nname = \"down\"\nkind = \"http\"\nurl = \"{}\"\n\
             [[routes]]\nname = \"r\"\nendpoints = [\"slow\"]\n",
            down.url("/in")
        ))
        .expect("valid test config");
        let store: Arc<dyn Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(&dir.path().join("data")).expect("store"));
        for _ in 0..3 {
            store.intake(crate::store::conformance::submission(&[], &["slow"])).await.expect("intake");
        }
        for _ in 0..6 {
            store.intake(crate::store::conformance::submission(&[], &["down"])).await.expect("intake");
        }
        let (stop, board, mut workers) = start(&config, store.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (slow, down) = loop {
            let views = board.views();
            let of = |name: &str| views.iter().find(|v| v.endpoint == name).cloned().expect("a view per worker");
            let (slow, down) = (of("slow"), of("down"));
            if slow.doing == "waiting for a free slot" && down.doing == "breaker wait" {
                break (slow, down);
            }
            assert!(std::time::Instant::now() < deadline, "not seen within 10 s: {slow:?} {down:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!((slow.in_flight, slow.concurrency, slow.failures_in_a_row), (2, 2, 0), "{slow:?}");
        assert!(slow.last_lease_ms_ago.is_some(), "{slow:?}");
        assert!(down.failures_in_a_row >= super::BREAKER_THRESHOLD, "{down:?}");
        assert_eq!(down.unrecorded_in_a_row, 0, "{down:?}");
        let _ = stop.send(true);
        // The slow worker waits for its attempts (60 s timeouts): not joined here.
        workers.abort_all();
        held.abort();
    }

    /// The embedded store, except that the first settle panics (as a bug in a store or a
    /// transport would), before the store has recorded anything.
    struct PanicsOnce {
        inner: crate::store::embedded::EmbeddedStore,
        panicked: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl crate::store::testing::Passthrough for PanicsOnce {
        fn inner(&self) -> &dyn Store {
            &self.inner
        }
        async fn settle(&self, l: crate::store::Lease, outcome: Outcome) -> Result<(), StoreError> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("settle panicked (test)");
            }
            self.inner.settle(l, outcome).await
        }
    }

    /// An attempt that panics is settled as a retry, and the delivery is delivered afterwards:
    /// the panic dropped its lease unsettled, and the embedded store kept the delivery leased
    /// (pending, never sent again) until a restart.
    #[tokio::test]
    async fn an_attempt_that_panics_is_retried_not_stuck() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drop_dir = dir.path().join("eingang");
        std::fs::create_dir(&drop_dir).expect("drop folder");
        let config = file_config(&drop_dir);
        let inner = crate::store::embedded::EmbeddedStore::open(&dir.path().join("data")).expect("store");
        let store = Arc::new(PanicsOnce { inner, panicked: Default::default() });
        store.intake(crate::store::conformance::submission(&[], &["ablage"])).await.expect("intake");
        let (stop, _, mut workers) = start(&config, store.clone());
        // The first retry's backoff is at most `initial_backoff` (1 s by default).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.counts().await.expect("counts").delivered < 1 {
            assert!(std::time::Instant::now() < deadline, "still pending 5 s after the attempt panicked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(store.panicked.load(Ordering::SeqCst), "the first settle panicked");
        assert_eq!(store.counts().await.expect("counts").pending, 0);
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
    }

    /// The embedded store, except that a lease never returns (as a stuck store's).
    struct HangingLease {
        inner: crate::store::embedded::EmbeddedStore,
    }

    #[async_trait::async_trait]
    impl crate::store::testing::Passthrough for HangingLease {
        fn inner(&self) -> &dyn Store {
            &self.inner
        }
        async fn lease(&self, _: &str, _: usize, _: Duration) -> Result<Vec<crate::store::Lease>, StoreError> {
            std::future::pending().await
        }
    }

    /// A lease that does not return shows in the worker's view (how long it has been pending),
    /// and the worker stops at shutdown all the same.
    #[tokio::test]
    async fn a_lease_that_does_not_return_shows_in_the_workers_view() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drop_dir = dir.path().join("eingang");
        std::fs::create_dir(&drop_dir).expect("drop folder");
        let config = file_config(&drop_dir);
        let inner = crate::store::embedded::EmbeddedStore::open(&dir.path().join("data")).expect("store");
        let store = Arc::new(HangingLease { inner });
        let (stop, board, mut workers) = start(&config, store.clone());
        // Past the watch (300 ms in tests), so its log line ran too.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let view = board.views().pop().expect("one worker");
        assert_eq!(view.doing, "leasing", "{view:?}");
        assert!(view.lease_pending_ms.is_some_and(|ms| ms >= 700), "{view:?}");
        let _ = stop.send(true);
        let stopped =
            tokio::time::timeout(Duration::from_secs(5), async { while workers.join_next().await.is_some() {} }).await;
        assert!(stopped.is_ok(), "the worker did not stop while its lease hung");
        let view = board.views().pop().expect("one worker");
        assert_eq!((view.doing, view.lease_pending_ms), ("stopped", None), "{view:?}");
    }

    /// The embedded store as on a full disk: every settle fails (the delivery is due again at
    /// once, as when its outcome cannot be written), counting how often it was tried.
    struct FullDisk {
        inner: crate::store::embedded::EmbeddedStore,
        settles: AtomicU32,
    }

    #[async_trait::async_trait]
    impl crate::store::testing::Passthrough for FullDisk {
        fn inner(&self) -> &dyn Store {
            &self.inner
        }
        async fn settle(&self, l: crate::store::Lease, _: Outcome) -> Result<(), StoreError> {
            self.settles.fetch_add(1, Ordering::SeqCst);
            let again = Outcome::Retry { not_before: 0, error: "not recorded".into() };
            self.inner.settle(l, again).await?;
            Err(StoreError::Unavailable("no space left on device".into()))
        }
    }

    /// A delivery whose outcome cannot be recorded is sent again, but not in a tight loop: the
    /// receiver (here a folder) got it a handful of times in two seconds, not hundreds.
    #[tokio::test]
    async fn an_outcome_the_store_cannot_record_does_not_repeat_the_send_in_a_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drop_dir = dir.path().join("eingang");
        std::fs::create_dir(&drop_dir).expect("drop folder");
        let config = file_config(&drop_dir);
        let inner = crate::store::embedded::EmbeddedStore::open(&dir.path().join("data")).expect("store");
        let store = Arc::new(FullDisk { inner, settles: AtomicU32::new(0) });
        store.intake(crate::store::conformance::submission(&[], &["ablage"])).await.expect("intake");
        let (stop, board, mut workers) = start(&config, store.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let view = board.views().pop().expect("one worker");
        assert!(view.unrecorded_in_a_row >= 1, "the operator sees the outcomes not recorded: {view:?}");
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
        let sends = store.settles.load(Ordering::SeqCst);
        assert!(sends >= 2, "sent again after the failed settle: {sends}");
        assert!(sends <= 12, "sent {sends} times in 2 s while the store could not record an outcome");
    }
}
