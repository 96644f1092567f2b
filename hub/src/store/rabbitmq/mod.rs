//! The RabbitMQ backend: several `lotse` processes share the work through one broker.
//!
//! # Design
//!
//! Topology (every name starts with `[queue] prefix`, here `P`; declared idempotently at start
//! and after every reconnect; only the default exchange is used):
//!
//! | queue | type | role |
//! |---|---|---|
//! | `P.events` | stream | every state change, in one order all nodes fold into their index |
//! | `P.work.<endpoint>` | quorum | deliveries due now; consumed with manual acks and a prefetch limit |
//! | `P.wait.<endpoint>.<ms>ms` | quorum, TTL `ms`, dead-lettered (at-least-once) to `P.work.<endpoint>` | retries; a ladder of fixed delays (see [`work::LADDER_MS`]) |
//! | `P.dead.<endpoint>` | quorum | dead letters (the operator's copy; replay uses the stream's copy) |
//!
//! Durability: every publish waits for the broker's confirm (bounded by [`CONFIRM_TIMEOUT`]); a
//! nack, a return (unroutable) or no answer is [`StoreError::Unavailable`], never success.
//!
//! Intake:
//! 1. If the local index already knows a dedup key: the first receipt (a duplicate).
//! 2. At the same time: publish a `Submitted` claim to the stream and wait until this node's own
//!    fold has applied it; and publish one work message per delivery (payload = the bytes to
//!    send, headers = ids and counters). Every publish waits for its confirm.
//! 3. The stream is totally ordered, so "the first claim of a key in stream order wins" is the
//!    same verdict on every node: dedup holds across processes with no window. A lost claim
//!    answers with the winner's receipt; its work messages are void, and whichever node receives
//!    them drops them at lease time (it waits for its fold to know the claim; see
//!    [`CLAIM_WAIT`]). A won claim with all work confirmed answers `Accepted`; a `Queued` mark
//!    follows in the stream within [`QUEUED_FLUSH`].
//!
//! Doing both publishes at once makes intake one broker round trip instead of two (with a fixed
//! number of requests in flight, that is the throughput). The price: a lost claim costs a void
//! work message, and work whose claim never reached the stream (the claim's publish failed, so
//! intake answered 503) is delivered after [`CLAIM_WAIT`] all the same, at least once.
//!
//! A process that dies after its claim but before its work is confirmed never answered 202;
//! when the partner sends again, the duplicate finds the claim without `Queued` and, after a short
//! grace, queues the deliveries itself from the bytes it was sent again (same delivery ids), so a
//! 202 always means queued.
//!
//! Work: each process consumes every endpoint's work queue (prefetch [`PREFETCH`]); `lease`
//! hands out received messages; `settle` first publishes what follows (a retry to a wait queue,
//! a dead letter to the dead queue) and its outcome record, and only then acks. A process that
//! dies leaves its unacked messages to the broker, which gives them to the others. A message that
//! comes back early from the wait ladder is parked again; nothing is handed out before its
//! `not_before`.
//!
//! Status: any process answers for any submission from its index; the lag is the time a stream
//! record takes to reach a consumer (milliseconds; see `docs/rabbitmq.md`). The node that wrote
//! a record waits until its own fold has it, so it reads its own writes.
//!
//! Faults: one supervisor task owns the connection. When the connection fails, it drops the
//! session, answers `Unavailable` for writes, and reconnects with backoff (0.2 s doubling to 5 s),
//! declares the topology again and resumes the stream after the last folded offset.

mod index;
mod record;
mod topology;
mod work;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use self::index::{Applied, Claim, Index, ReplaySource};
use self::record::{Envelope, OutcomeRecord, Record, RecordedOutcome, ReplayedRecord, SubmittedRecord};
use self::topology::{Names, short};
use self::work::{WorkMessage, rung_for};
use crate::store::{
    Counts, DeliveryFilter, DeliveryId, DeliveryState, DeliveryView, Intake, Lease, NewSubmission, Outcome, Receipt,
    ReceiptDelivery, ReplayOutcome, Store, StoreError, SubmissionId, SubmissionView, now_millis,
};

/// Longest wait for a broker confirm before a write counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacked messages per endpoint and process.
pub const PREFETCH: u16 = 64;
/// Longest wait for this node's fold to apply a record it wrote.
const FOLD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a work message whose claim the fold does not know yet is held back (parked on the
/// wait ladder) before it is delivered anyway.
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// How long `lease` waits in line for the fold to learn a claim before parking the message.
const CLAIM_WAIT_INLINE: Duration = Duration::from_millis(500);
/// How long a duplicate waits for the first intake to finish queueing before it queues itself.
const QUEUED_GRACE: Duration = Duration::from_secs(2);
/// Confirm-mode channels per process, used in turn.
const PUBLISH_CHANNELS: usize = 4;
/// Stream records gathered into one stream message at most (group commit), and its soft size cap.
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1 << 20;
/// Stream messages in flight (published, confirm pending) at once; while all are out, records
/// queue up and the next message carries all of them. Few and large is what the broker likes:
/// a stream message costs it far more than a record in one.
const BATCHES_IN_FLIGHT: usize = 1;
/// How often the `Queued` marks of recent intakes go to the stream, in one record.
const QUEUED_FLUSH: Duration = Duration::from_millis(100);

/// The RabbitMQ store of one process. Dropping it closes its connection; its unacked leases go
/// back to the broker.
pub struct RabbitStore {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    url: String,
    names: Names,
    endpoints: Vec<String>,
    session: RwLock<Option<Arc<Session>>>,
    index: Mutex<Index>,
    waiters: Mutex<HashMap<Uuid, oneshot::Sender<Applied>>>,
    /// Stream offset to resume from after a reconnect.
    next_offset: AtomicU64,
    leases: Mutex<HashMap<u64, Held>>,
    next_token: AtomicU64,
    queues: HashMap<String, WorkQueue>,
    broken: mpsc::UnboundedSender<u64>,
    appends: mpsc::UnboundedSender<Append>,
    /// Submissions whose deliveries were queued since the last flush.
    queued: Mutex<Vec<SubmissionId>>,
    /// Woken after every stream message the fold applied.
    folded: tokio::sync::Notify,
    shutdown: watch::Sender<bool>,
}

/// One record waiting for the next stream message, and who waits for its confirm.
struct Append {
    encoded: Vec<u8>,
    confirmed: oneshot::Sender<Result<(), String>>,
}

struct Session {
    id: u64,
    conn: Connection,
    publishers: Vec<Channel>,
    next: AtomicUsize,
}

struct WorkQueue {
    tx: mpsc::Sender<Incoming>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
}

struct Incoming {
    session: u64,
    delivery: lapin::message::Delivery,
}

struct Held {
    session: u64,
    acker: lapin::Acker,
    message: WorkMessage,
}

/// Connects, declares the topology, and reads the event stream up to now before returning.
pub async fn connect(
    queue: &crate::config::QueueConfig,
    endpoints: &[String],
    _data_dir: &std::path::Path,
) -> anyhow::Result<RabbitStore> {
    let url = queue.url.clone().ok_or_else(|| anyhow::anyhow!("`queue.url` is required for RabbitMQ"))?;
    RabbitStore::open(&url, &queue.prefix, endpoints).await
}

impl RabbitStore {
    pub async fn open(url: &str, prefix: &str, endpoints: &[String]) -> anyhow::Result<RabbitStore> {
        let names = Names::new(prefix);
        for name in names.all(endpoints) {
            short(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut queues = HashMap::new();
        for e in endpoints {
            let (tx, rx) = mpsc::channel(usize::from(PREFETCH));
            queues.insert(e.clone(), WorkQueue { tx, rx: tokio::sync::Mutex::new(rx) });
        }
        let (broken, broken_rx) = mpsc::unbounded_channel();
        let (appends, appends_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            names,
            endpoints: endpoints.to_vec(),
            session: RwLock::new(None),
            index: Mutex::new(Index::default()),
            waiters: Mutex::new(HashMap::new()),
            next_offset: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            queues,
            broken,
            appends,
            queued: Mutex::new(Vec::new()),
            folded: tokio::sync::Notify::new(),
            shutdown,
        });
        tokio::spawn(append_batches(shared.clone(), appends_rx));
        tokio::spawn(flush_queued(shared.clone()));
        let (first_tx, first_rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(shared.clone(), broken_rx, first_tx));
        let store = RabbitStore { shared, supervisor: Mutex::new(Some(supervisor)) };
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                store.close().await;
                anyhow::bail!("cannot connect to RabbitMQ at {}: {e}", redact(url));
            }
            Err(_) => anyhow::bail!("the RabbitMQ supervisor stopped during start"),
        }
        // Read the stream up to now: a mark written now is folded after everything before it.
        let caught_up = async {
            let rx = store.shared.append(Record::Mark, None).await?;
            await_fold(rx, Duration::from_secs(120)).await
        };
        if let Err(e) = caught_up.await {
            store.close().await;
            anyhow::bail!("cannot read the event stream `{}`: {e}", store.shared.names.events());
        }
        Ok(store)
    }

    /// Closes the connection and waits for the supervisor to stop.
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        let handle = self.shared_handle();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    fn shared_handle(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.supervisor.lock().ok().and_then(|mut s| s.take())
    }

    /// Deletes every queue of `prefix` for these endpoints (tests, and clean-up by operators).
    pub async fn delete_topology(url: &str, prefix: &str, endpoints: &[String]) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(CONFIRM_TIMEOUT, Connection::connect(url, ConnectionProperties::default()))
            .await
            .map_err(|_| anyhow::anyhow!("RabbitMQ did not answer within {CONFIRM_TIMEOUT:?}"))??;
        let ch = conn.create_channel().await?;
        let result = topology::delete(&ch, &Names::new(prefix), endpoints).await;
        let _ = conn.close(200, "bye".into()).await;
        result.map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Whether the store is connected now (for health checks).
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_ok()
    }
}

impl Drop for RabbitStore {
    fn drop(&mut self) {
        // The supervisor sees this and closes the connection; unacked leases go back to the queue.
        self.shared.shutdown.send_replace(true);
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn supervise(
    shared: Arc<Shared>,
    mut broken: mpsc::UnboundedReceiver<u64>,
    first: oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = Duration::from_millis(200);
    let started = Instant::now();
    let mut id = 0u64;
    loop {
        if *shutdown.borrow() {
            break;
        }
        id += 1;
        match open_session(&shared, id).await {
            Ok((session, tasks)) => {
                backoff = Duration::from_millis(200);
                if let Ok(mut s) = shared.session.write() {
                    *s = Some(session.clone());
                }
                tracing::info!(session = id, "connected to RabbitMQ");
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                loop {
                    tokio::select! {
                        b = broken.recv() => match b {
                            Some(b) if b != id => continue,
                            _ => break,
                        },
                        _ = shutdown.changed() => break,
                    }
                }
                if let Ok(mut s) = shared.session.write() {
                    *s = None;
                }
                for t in &tasks {
                    t.abort();
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), session.conn.close(200, "bye".into())).await;
                if *shutdown.borrow() {
                    break;
                }
                tracing::warn!(session = id, "lost the RabbitMQ connection; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect to RabbitMQ");
                if first.is_some() && started.elapsed() > Duration::from_secs(15) {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

type Tasks = Vec<tokio::task::JoinHandle<()>>;

async fn open_session(shared: &Arc<Shared>, id: u64) -> Result<(Arc<Session>, Tasks), String> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("lotse {} pid {}", shared.names.events(), std::process::id()).into());
    let conn = tokio::time::timeout(CONFIRM_TIMEOUT, Connection::connect(&shared.url, props))
        .await
        .map_err(|_| format!("no answer within {CONFIRM_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let setup = async {
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        topology::declare(&ch, &shared.names, &shared.endpoints).await?;
        let _ = ch.close(200, "declared".into()).await;
        let mut publishers = Vec::new();
        for _ in 0..PUBLISH_CHANNELS {
            let c = conn.create_channel().await.map_err(|e| e.to_string())?;
            c.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
            publishers.push(c);
        }
        let mut tasks: Tasks = Vec::new();
        // The stream, from the offset after the last one folded.
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.basic_qos(1000, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        let offset = shared.next_offset.load(Ordering::SeqCst);
        args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(offset as i64));
        let events = shared.names.events();
        let consumer = ch
            .basic_consume(short(&events)?, "".into(), BasicConsumeOptions::default(), args)
            .await
            .map_err(|e| format!("consume `{events}`: {e}"))?;
        tasks.push(tokio::spawn(fold(shared.clone(), id, ch, consumer)));
        for endpoint in &shared.endpoints {
            let Some(queue) = shared.queues.get(endpoint) else { continue };
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
            let work = shared.names.work(endpoint);
            let consumer = ch
                .basic_consume(short(&work)?, "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| format!("consume `{work}`: {e}"))?;
            tasks.push(tokio::spawn(pump(shared.clone(), id, ch, consumer, queue.tx.clone())));
        }
        Ok::<_, String>((publishers, tasks))
    };
    match setup.await {
        Ok((publishers, tasks)) => Ok((Arc::new(Session { id, conn, publishers, next: AtomicUsize::new(0) }), tasks)),
        Err(e) => {
            let _ = conn.close(200, "setup failed".into()).await;
            Err(e)
        }
    }
}

/// Applies the event stream to the index and wakes the writers waiting for their records.
async fn fold(shared: Arc<Shared>, session: u64, _ch: Channel, mut consumer: lapin::Consumer) {
    while let Some(item) = consumer.next().await {
        let Ok(delivery) = item else { break };
        let offset =
            delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset").cloned()).and_then(
                |v| match v {
                    AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
                    _ => None,
                },
            );
        // A stream consumer may start before the requested offset (chunk boundaries): skip those.
        let fresh = offset.is_none_or(|o| o >= shared.next_offset.load(Ordering::SeqCst));
        if fresh {
            match record::unframe(&delivery.data) {
                Ok(records) => {
                    let mut applied = Vec::with_capacity(records.len());
                    if let Ok(mut index) = shared.index.lock() {
                        for (envelope, payload) in records {
                            let rid = envelope.rid;
                            applied.push((rid, index.apply(envelope, payload)));
                        }
                    }
                    if let Ok(mut waiters) = shared.waiters.lock() {
                        for (rid, a) in applied {
                            if let Some(w) = waiters.remove(&rid) {
                                let _ = w.send(a);
                            }
                        }
                    }
                    shared.folded.notify_waiters();
                }
                Err(e) => tracing::error!(?offset, error = %e, "undecodable event records skipped"),
            }
            if let Some(o) = offset {
                shared.next_offset.store(o + 1, Ordering::SeqCst);
            }
        }
        if delivery.acker.ack(BasicAckOptions::default()).await.is_err() {
            break;
        }
    }
    let _ = shared.broken.send(session);
}

/// Moves an endpoint's work messages from the broker into the local hand-out queue.
async fn pump(
    shared: Arc<Shared>,
    session: u64,
    _ch: Channel,
    mut consumer: lapin::Consumer,
    tx: mpsc::Sender<Incoming>,
) {
    while let Some(item) = consumer.next().await {
        let Ok(delivery) = item else { break };
        if tx.send(Incoming { session, delivery }).await.is_err() {
            break;
        }
    }
    let _ = shared.broken.send(session);
}

/// Group commit for the stream: gathers the records waiting, publishes them as one message, and
/// tells each writer the confirm's verdict.
async fn append_batches(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Append>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let mut shutdown = shared.shutdown.subscribe();
    let mut carry: Option<Append> = None;
    loop {
        let first = match carry.take() {
            Some(a) => a,
            None => tokio::select! {
                a = rx.recv() => match a { Some(a) => a, None => break },
                _ = shutdown.changed() => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let mut size = first.encoded.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_RECORDS && size < BATCH_BYTES {
            match rx.try_recv() {
                Ok(a) if size + a.encoded.len() > BATCH_BYTES => {
                    carry = Some(a);
                    break;
                }
                Ok(a) => {
                    size += a.encoded.len();
                    batch.push(a);
                }
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let (encoded, waiting): (Vec<Vec<u8>>, Vec<_>) =
                batch.into_iter().map(|a| (a.encoded, a.confirmed)).unzip();
            let body = record::frame(&encoded);
            let props = BasicProperties::default().with_delivery_mode(2);
            let result = shared.publish(&shared.names.events(), &body, props).await.map_err(|e| match e {
                StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
            });
            for w in waiting {
                let _ = w.send(result.clone());
            }
            drop(slot);
        });
    }
}

/// Writes the `Queued` marks gathered since the last flush as one record.
async fn flush_queued(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(QUEUED_FLUSH) => {}
            _ = shutdown.changed() => break,
        }
        let ids = shared.queued.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = shared.append(Record::Queued { submission_ids: ids.clone() }, None).await {
            tracing::debug!(error = %e, "queued marks not written; kept for the next flush");
            if let Ok(mut q) = shared.queued.lock() {
                q.extend(ids);
            }
        }
    }
}

async fn await_fold(rx: oneshot::Receiver<Applied>, bound: Duration) -> Result<Applied, StoreError> {
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(_)) => Err(StoreError::Unavailable("the connection to the event stream was lost".into())),
        Err(_) => Err(StoreError::Unavailable(format!("the event stream did not come back within {bound:?}"))),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Shared {
    fn current(&self) -> Result<Arc<Session>, StoreError> {
        self.session
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| StoreError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// Publishes one persistent message to a queue and waits for the broker's confirm.
    async fn publish(&self, queue: &str, body: &[u8], props: BasicProperties) -> Result<(), StoreError> {
        let session = self.current()?;
        let i = session.next.fetch_add(1, Ordering::Relaxed) % session.publishers.len().max(1);
        let Some(ch) = session.publishers.get(i) else {
            return Err(unavailable("no publishing channel"));
        };
        let routing_key = short(queue).map_err(unavailable)?;
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            ch.basic_publish("".into(), routing_key, options, body, props).await?.await
        })
        .await;
        let failed = |e: String| {
            if !session.conn.status().connected() || !ch.status().connected() {
                let _ = self.broken.send(session.id);
            }
            StoreError::Unavailable(e)
        };
        match confirmed {
            Err(_) => {
                // No answer at all: a half-open connection looks connected until heartbeats
                // notice (minutes), so start over now, unless the broker said it blocks us
                // (resource alarm), where a new connection would be blocked too.
                if !session.conn.status().blocked() {
                    let _ = self.broken.send(session.id);
                }
                Err(StoreError::Unavailable(format!("RabbitMQ did not confirm within {CONFIRM_TIMEOUT:?}")))
            }
            Ok(Err(e)) => Err(failed(format!("publish to `{queue}`: {e}"))),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(unavailable(format!("queue `{queue}` does not exist"))),
            Ok(Ok(Confirmation::Nack(_))) => Err(unavailable(format!("RabbitMQ refused the message for `{queue}`"))),
            Ok(Ok(Confirmation::NotRequested)) => Err(unavailable("publisher confirms are off")),
        }
    }

    /// Appends a record to the stream (confirmed); the receiver fires when this node folded it.
    async fn append(&self, record: Record, payload: Option<&[u8]>) -> Result<oneshot::Receiver<Applied>, StoreError> {
        let envelope = Envelope { rid: Uuid::now_v7(), at: now_millis(), record };
        let encoded = record::encode(&envelope, payload).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(envelope.rid, tx);
        }
        let (confirmed, done) = oneshot::channel();
        let result = match self.appends.send(Append { encoded, confirmed }) {
            Ok(()) => done.await.unwrap_or_else(|_| Err("the stream writer stopped".into())),
            Err(_) => Err("the stream writer stopped".into()),
        };
        if result.is_err()
            && let Ok(mut w) = self.waiters.lock()
        {
            w.remove(&envelope.rid);
        }
        result.map(|()| rx).map_err(StoreError::Unavailable)
    }

    /// Appends a record and waits until this node's fold has applied it.
    async fn append_and_fold(&self, record: Record, payload: Option<&[u8]>) -> Result<Applied, StoreError> {
        let rx = self.append(record, payload).await?;
        await_fold(rx, FOLD_TIMEOUT).await
    }

    fn index<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, StoreError> {
        self.index.lock().map(|i| f(&i)).map_err(|_| StoreError::Corrupt("index lock poisoned".into()))
    }

    /// Publishes one work message per delivery of `receipt`, with the bytes of `submission`.
    async fn queue_deliveries(&self, receipt: &Receipt, submission: &NewSubmission) -> Result<(), StoreError> {
        let mut publishes = Vec::new();
        for d in &receipt.deliveries {
            // The receipt may be an earlier submission's; its endpoints match this one's when the
            // same message was routed by the same config. Otherwise send the original bytes.
            let rendition =
                submission.deliveries.iter().find(|n| n.endpoint == d.endpoint).and_then(|n| n.rendition.as_ref());
            let (content_type, body) = match rendition {
                Some(r) => (r.content_type.clone(), r.body.clone()),
                None => (submission.content_type.clone(), submission.original.clone()),
            };
            let message = WorkMessage {
                delivery_id: d.id,
                submission_id: receipt.submission_id,
                message_id: submission.message_id.clone(),
                content_type,
                attempts: 0,
                budget_base: 0,
                generation: 0,
                not_before: 0,
                queued_at: now_millis(),
            };
            let props = message.properties().map_err(unavailable)?;
            let queue = self.names.work(&d.endpoint);
            publishes.push(async move { self.publish(&queue, &body, props).await });
        }
        futures::future::try_join_all(publishes).await?;
        Ok(())
    }

    /// A duplicate: make sure the first submission's deliveries are queued, then its receipt.
    async fn duplicate(&self, receipt: Receipt, submission: &NewSubmission) -> Result<Intake, StoreError> {
        let deadline = Instant::now() + QUEUED_GRACE;
        while !self.index(|i| i.is_queued(receipt.submission_id))? {
            if Instant::now() >= deadline {
                tracing::warn!(submission_id = %receipt.submission_id, "first intake did not finish; queueing its deliveries");
                self.queue_deliveries(&receipt, submission).await?;
                self.append_and_fold(Record::Queued { submission_ids: vec![receipt.submission_id] }, None).await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Intake::Duplicate(receipt))
    }

    /// The claim of a submission, waiting up to [`CLAIM_WAIT_INLINE`] for the fold to learn it.
    async fn claim_of(&self, id: SubmissionId) -> Result<Claim, StoreError> {
        let deadline = Instant::now() + CLAIM_WAIT_INLINE;
        loop {
            let folded = self.folded.notified();
            let claim = self.index(|i| i.claim(id))?;
            if claim != Claim::Unknown || Instant::now() >= deadline {
                return Ok(claim);
            }
            let _ = tokio::time::timeout_at(deadline, folded).await;
        }
    }

    /// Sends a not-yet-due message to the wait ladder, then acks the copy in hand.
    async fn park(&self, endpoint: &str, message: &WorkMessage, body: &[u8]) -> Result<(), StoreError> {
        let remaining = message.not_before.saturating_sub(now_millis());
        let queue =
            if remaining == 0 { self.names.work(endpoint) } else { self.names.wait(endpoint, rung_for(remaining)) };
        self.publish(&queue, body, message.properties().map_err(unavailable)?).await
    }
}

#[async_trait::async_trait]
impl Store for RabbitStore {
    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError> {
        let shared = &self.shared;
        for d in &submission.deliveries {
            if !shared.queues.contains_key(&d.endpoint) {
                return Err(unavailable(format!("no work queue for endpoint `{}`", d.endpoint)));
            }
        }
        if let Some((receipt, _)) = shared.index(|i| i.holder_of(&submission.dedup_keys))? {
            return shared.duplicate(receipt, &submission).await;
        }
        let receipt = Receipt {
            submission_id: submission.id,
            deliveries: submission
                .deliveries
                .iter()
                .map(|d| ReceiptDelivery { id: d.id, endpoint: d.endpoint.clone() })
                .collect(),
        };
        let claim = SubmittedRecord {
            id: submission.id,
            partner: submission.partner.clone(),
            dedup_keys: submission.dedup_keys.clone(),
            received_at: submission.received_at,
            content_type: submission.content_type.clone(),
            meta: submission.meta.clone(),
            message_id: submission.message_id.clone(),
            route: submission.route.clone(),
            deliveries: receipt.deliveries.clone(),
            notes: submission.notes.clone(),
            size: submission.original.len(),
        };
        let (claimed, queued) = tokio::join!(
            shared.append_and_fold(Record::Submitted(claim), None),
            shared.queue_deliveries(&receipt, &submission)
        );
        if let Applied::Duplicate(first) = claimed? {
            // Our work messages are void (the claim lost); leases drop them.
            return shared.duplicate(first, &submission).await;
        }
        queued?;
        // The deliveries are durable now; the `Queued` mark only spares a later duplicate its
        // grace wait, so it goes with the next flush.
        if let Ok(mut q) = shared.queued.lock() {
            q.push(submission.id);
        }
        Ok(Intake::Accepted(receipt))
    }

    async fn lease(&self, endpoint: &str, max: usize, wait: Duration) -> Result<Vec<Lease>, StoreError> {
        let shared = &self.shared;
        let Some(queue) = shared.queues.get(endpoint) else {
            return Err(unavailable(format!("no work queue for endpoint `{endpoint}`")));
        };
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let Ok(mut rx) = tokio::time::timeout_at(deadline, queue.rx.lock()).await else {
            return Ok(out);
        };
        while out.len() < max {
            let incoming = if out.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(i)) => i,
                    _ => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(i) => i,
                    Err(_) => break,
                }
            };
            let current = shared.current().map(|s| s.id).ok();
            if current != Some(incoming.session) {
                // Its channel is gone, and with it the broker's record of our holding it: the
                // broker has put it back in the queue.
                continue;
            }
            let delivery = incoming.delivery;
            let (message, redelivered) = match WorkMessage::from_properties(&delivery.properties) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(endpoint, error = %e, "foreign message in a work queue dropped");
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    continue;
                }
            };
            if message.not_before > now_millis() {
                match shared.park(endpoint, &message, &delivery.data).await {
                    Ok(()) => {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                    Err(e) => {
                        tracing::warn!(delivery_id = %message.delivery_id, error = %e, "cannot park a retry");
                        let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    }
                }
                continue;
            }
            match shared.claim_of(message.submission_id).await? {
                Claim::Won => {}
                Claim::Lost => {
                    // Published alongside a claim that lost to a duplicate: void.
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    continue;
                }
                Claim::Unknown if now_millis().saturating_sub(message.queued_at) < CLAIM_WAIT.as_millis() as u64 => {
                    let parked = WorkMessage { not_before: now_millis() + 1, ..message.clone() };
                    match shared.park(endpoint, &parked, &delivery.data).await {
                        Ok(()) => {
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        }
                        Err(_) => {
                            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                    }
                    continue;
                }
                // Its claim never reached the stream (that intake answered 503): deliver anyway.
                Claim::Unknown => {}
            }
            // A copy of a delivery already delivered in its generation (an ack lost to a
            // reconnect): nothing to do.
            if let Some((DeliveryState::Delivered, generation)) =
                shared.index(|i| i.delivery_state(message.delivery_id))?
                && generation >= message.generation
            {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                continue;
            }
            let attempt = message.attempts + redelivered + 1;
            let token = shared.next_token.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                delivery_id: message.delivery_id,
                submission_id: message.submission_id,
                endpoint: endpoint.to_owned(),
                attempt,
                budget_attempt: attempt.saturating_sub(message.budget_base).max(1),
                message_id: message.message_id.clone(),
                content_type: message.content_type.clone(),
                payload: Bytes::from(delivery.data),
                token,
            };
            if let Ok(mut leases) = shared.leases.lock() {
                leases.insert(token, Held { session: incoming.session, acker: delivery.acker, message });
            }
            out.push(lease);
        }
        Ok(out)
    }

    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), StoreError> {
        let shared = &self.shared;
        let Some(held) = shared.leases.lock().ok().and_then(|mut l| l.remove(&lease.token)) else {
            return Err(unavailable(format!("lease of delivery {} is unknown or settled", lease.delivery_id)));
        };
        let recorded = match &outcome {
            Outcome::Delivered { status } => RecordedOutcome::Delivered { status: *status },
            Outcome::Retry { not_before, error } => {
                let next = WorkMessage { attempts: lease.attempt, not_before: *not_before, ..held.message.clone() };
                if let Err(e) = shared.park(&lease.endpoint, &next, &lease.payload).await {
                    return Err(give_back(held, e).await);
                }
                RecordedOutcome::Retry { not_before: *not_before, error: error.clone() }
            }
            Outcome::Dead { error } => {
                let dead = WorkMessage { attempts: lease.attempt, not_before: 0, ..held.message.clone() };
                let props = match dead.properties() {
                    Ok(p) => p,
                    Err(e) => return Err(give_back(held, unavailable(e)).await),
                };
                if let Err(e) = shared.publish(&shared.names.dead(&lease.endpoint), &lease.payload, props).await {
                    return Err(give_back(held, e).await);
                }
                RecordedOutcome::Dead {
                    error: error.clone(),
                    content_type: lease.content_type.clone(),
                    message_id: lease.message_id.clone(),
                }
            }
        };
        let payload = matches!(recorded, RecordedOutcome::Dead { .. }).then_some(&lease.payload[..]);
        let record = Record::Outcome(OutcomeRecord {
            submission_id: lease.submission_id,
            delivery_id: lease.delivery_id,
            attempt: lease.attempt,
            generation: held.message.generation,
            outcome: recorded,
        });
        let rx = match shared.append(record, payload).await {
            Ok(rx) => rx,
            Err(e) => return Err(give_back(held, e).await),
        };
        if held.acker.ack(BasicAckOptions::default()).await.is_err() {
            // The session that held it is gone; the broker gives the message out again, and a
            // copy of a delivered delivery is dropped at lease time.
            tracing::debug!(delivery_id = %lease.delivery_id, session = held.session, "ack after reconnect failed");
        }
        // Read-your-writes on this node; the outcome is durable either way.
        let _ = await_fold(rx, FOLD_TIMEOUT).await;
        Ok(())
    }

    async fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, StoreError> {
        self.shared.index(|i| i.submission(id))
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryView>, StoreError> {
        self.shared.index(|i| i.delivery_view(id))
    }

    async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError> {
        self.shared.index(|i| i.deliveries(filter))
    }

    async fn replay(&self, id: DeliveryId, actor: &str, reason: &str) -> Result<ReplayOutcome, StoreError> {
        let shared = &self.shared;
        match shared.index(|i| i.replay_source(id))? {
            ReplaySource::NotFound => Ok(ReplayOutcome::NotFound),
            ReplaySource::NotDead(state) => Ok(ReplayOutcome::NotDead { state }),
            ReplaySource::Dead { submission_id, endpoint, attempts, generation, copy } => {
                let message = WorkMessage {
                    delivery_id: id,
                    submission_id,
                    message_id: copy.message_id.clone(),
                    content_type: copy.content_type.clone(),
                    attempts,
                    budget_base: attempts,
                    generation: generation + 1,
                    not_before: 0,
                    queued_at: now_millis(),
                };
                let props = message.properties().map_err(unavailable)?;
                shared.publish(&shared.names.work(&endpoint), &copy.payload, props).await?;
                let record = Record::Replayed(ReplayedRecord {
                    submission_id,
                    delivery_id: id,
                    generation: generation + 1,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                });
                shared.append_and_fold(record, None).await?;
                Ok(ReplayOutcome::Replayed)
            }
        }
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.shared.index(|i| i.counts())
    }
}

/// A settle that could not be recorded: the message goes back to its queue for another attempt.
async fn give_back(held: Held, error: StoreError) -> StoreError {
    let _ = held.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
    error
}
