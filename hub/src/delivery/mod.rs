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
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, EndpointConfig, EndpointKind, RetryConfig};
use crate::store::{Lease, Outcome, Pause, Store, now_millis};
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

/// Starts one worker per endpoint; they stop when `shutdown` turns true, after finishing the
/// attempts they have in flight.
pub fn spawn_workers(
    config: &Config,
    store: Arc<dyn Store>,
    paused: Paused,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    // A mailbox has no worker: its agency fetches (`api::mailbox`).
    for endpoint in config.raw.endpoints.iter().filter(|e| e.kind != EndpointKind::Mailbox) {
        let transport = Arc::new(Transport::new(endpoint)?);
        let worker = Worker {
            failures: AtomicU32::new(0),
            settle_errors: AtomicU32::new(0),
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

/// Transient failures in a row after which an endpoint is taken as down.
pub const BREAKER_THRESHOLD: u32 = 5;

struct Worker {
    /// Transient failures in a row (reset by any answer that is not transient).
    failures: AtomicU32,
    /// Attempts in a row whose outcome the store could not record (reset by one it could).
    settle_errors: AtomicU32,
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
        let slots = Arc::new(Semaphore::new(self.endpoint.concurrency));
        let this = Arc::new(self);
        let mut store_errors = 0u32;
        tracing::info!(endpoint = %name, "delivery worker started");
        // Said once per change, on every process: a pause made on another one shows here too.
        let mut holding = false;
        while !*shutdown.borrow() {
            if this.paused.is_paused(&name) {
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
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => continue,
            };
            let mut free = 1 + slots.available_permits();
            let failures = this.failures.load(Ordering::Relaxed);
            if failures >= BREAKER_THRESHOLD {
                let cap = retry::backoff_cap(&this.retry, failures - BREAKER_THRESHOLD + 1);
                let wait = cap.mul_f64(0.5 + rand::rng().random::<f64>() / 2.0);
                if failures == BREAKER_THRESHOLD {
                    tracing::warn!(endpoint = %name, failures, "endpoint looks down; probing with one delivery at a time");
                }
                metrics::counter!("lotse_breaker_waits_total", "endpoint" => name.clone()).increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => continue,
                }
                free = 1;
            }
            let settle_errors = this.settle_errors.load(Ordering::Relaxed);
            if settle_errors > 0 {
                // An attempt whose outcome the store could not record (a full disk) is due again
                // at once; the receiver answers fine, so the breaker does not trip, and without
                // this pause it would get the same message again and again for as long as the
                // store cannot write. One at a time, and slower the longer it lasts (to 10 s).
                let wait = Duration::from_millis(200 * u64::from(settle_errors.min(50)));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => continue,
                }
                free = 1;
            }
            let leases = tokio::select! {
                r = this.store.lease(&name, free, Duration::from_millis(500)) => r,
                _ = shutdown.changed() => continue,
            };
            let leases = match leases {
                Ok(l) => {
                    store_errors = 0;
                    l
                }
                Err(e) => {
                    store_errors = store_errors.saturating_add(1);
                    let pause = Duration::from_millis(100 * u64::from(store_errors.min(50)));
                    tracing::warn!(endpoint = %name, error = %e, "cannot lease deliveries; retrying");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
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
            self.settle_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(delivery_id = %id, error = %e, "cannot record the attempt that panicked; it will be repeated");
        }
    }

    async fn attempt(&self, lease: Lease) {
        let started = std::time::Instant::now();
        let result = self.transport.send(&lease).await;
        if matches!(result, AttemptResult::Transient { .. }) {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else if self.failures.swap(0, Ordering::Relaxed) >= BREAKER_THRESHOLD {
            tracing::info!(endpoint = %self.endpoint.name, "endpoint answers again");
        }
        metrics::histogram!("lotse_attempt_seconds", "endpoint" => self.endpoint.name.clone())
            .record(started.elapsed().as_secs_f64());
        let id = lease.delivery_id;
        let settled = settle_attempt(self.store.as_ref(), &self.retry, lease, result).await;
        if settled.is_ok() {
            self.settle_errors.store(0, Ordering::Relaxed);
        }
        if let Err(e) = settled {
            self.settle_errors.fetch_add(1, Ordering::Relaxed);
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
        let mut workers = super::spawn_workers(&config, store.clone(), paused.clone(), shutdown).expect("workers");
        let files = || std::fs::read_dir(&drop_dir).expect("read folder").count();
        // Held means nothing happens: five of the worker's pause checks, two lease waits.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(files(), 0, "delivered while paused");
        assert_eq!(store.counts().await.expect("counts").pending, 1);

        paused.set("ablage", false, "oncall", None).await.expect("resume");
        assert!(!paused.is_paused("ablage"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.counts().await.expect("counts").pending > 0 {
            assert!(std::time::Instant::now() < deadline, "not delivered within 10 s of the resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(files() >= 1, "the delivery's files are in the folder");
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
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
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut workers =
            super::spawn_workers(&config, store.clone(), super::Paused::new(store.clone()), shutdown).expect("workers");
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
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut workers =
            super::spawn_workers(&config, store.clone(), super::Paused::new(store.clone()), shutdown).expect("workers");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
        let sends = store.settles.load(Ordering::SeqCst);
        assert!(sends >= 2, "sent again after the failed settle: {sends}");
        assert!(sends <= 12, "sent {sends} times in 2 s while the store could not record an outcome");
    }
}
