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
//! | `P.work.<endpoint>` | quorum | deliveries due now (one per message, or a pack of several); consumed with manual acks and a prefetch limit (a pulled endpoint, a mailbox: taken with `basic.get` while a lease waits) |
//! | `P.wait.<endpoint>.<ms>ms` | quorum, TTL `ms`, dead-lettered (at-least-once) to `P.work.<endpoint>` | retries; a ladder of fixed delays (see `work::LADDER_MS`) |
//! | `P.dead.<endpoint>` | quorum | dead letters (the operator's copy; replay uses the stream's copy) |
//!
//! Durability: every publish waits for the broker's confirm (bounded by [`CONFIRM_TIMEOUT`]); a
//! nack, a return (unroutable) or no answer is [`StoreError::Unavailable`], never success.
//!
//! Intake:
//! 1. If the local index already knows a dedup key: the first receipt (a duplicate).
//! 2. At the same time: publish a `Submitted` claim to the stream and wait until this node's own
//!    fold has applied it; and publish one work message per delivery (payload = the bytes to
//!    send, headers = ids and counters; under load in packs of up to `PACK_PARTS` deliveries
//!    of one endpoint, see `work::pack`). Every publish waits for its confirm.
//! 3. The stream is totally ordered, so "the first claim of a key in stream order wins" is the
//!    same verdict on every node: dedup holds across processes with no window. A lost claim
//!    answers with the winner's receipt; its work messages are void, and whichever node receives
//!    them drops them at lease time (it waits for its fold to know the claim; see
//!    `CLAIM_WAIT`). A won claim with all work confirmed answers `Accepted`; a `Queued` mark
//!    follows in the stream within `QUEUED_FLUSH`.
//!
//! Doing both publishes at once makes intake one broker round trip instead of two (with a fixed
//! number of requests in flight, that is the throughput). The price: a lost claim costs a void
//! work message, and work whose claim never reached the stream (the claim's publish failed, so
//! intake answered 503) is delivered after `CLAIM_WAIT` all the same, at least once.
//!
//! A process that dies after its claim but before its work is confirmed never answered 202;
//! when the partner sends again, the duplicate finds the claim without `Queued` and, after a short
//! grace, queues the deliveries itself from the bytes it was sent again (same delivery ids), so a
//! 202 always means queued.
//!
//! Work: each process consumes every endpoint's work queue (prefetch [`PREFETCH`]), except the
//! pulled ones (mailboxes), which a lease asks of the broker only while it waits (`basic.get`,
//! see [`RabbitStore::open_pulling`]); `lease` hands out received messages (a pack's deliveries
//! one by one; the pack is acked with its last, and a copy the index shows outrun, see
//! `Index::outrun`, is dropped); `settle` first publishes what follows (a retry to a wait queue,
//! a dead letter to the dead queue) and its outcome record, and only then acks. A process that
//! dies leaves its unacked messages to the broker, which gives them to the others. A message that
//! comes back early from the wait ladder is parked again; nothing is handed out before its
//! `not_before`.
//!
//! Replay: claimed through the stream, like intake. The replaying node publishes a work message
//! of the next generation `g+1` with a fresh replay id in its headers (confirmed), then a
//! `Replayed` claim naming that id, and waits for its own fold. The fold accepts only the first
//! claim of generation `g+1` while the delivery is dead (every node the same verdict); that
//! replay answers `Replayed`, a later one `NotDead` (the delivery is pending by then), and the
//! losers' work messages are void and dropped at lease. Work first, claim second: a claim in
//! the stream always has its work message. A crash in between leaves work without a claim (and
//! the operator an error): lease holds it back like intake work for `CLAIM_WAIT`, then writes
//! a `ReplayVoid` tombstone and asks its fold again; a claim folded before the tombstone stands
//! (the work is delivered), a claim folded after it loses, so the delivery is never left pending
//! without work, nor queued without an audited `replayed` event.
//!
//! Pauses: an operator's pause or resume of an endpoint is a `Pause` record in the stream; every
//! node folds it into its index's paused endpoints, which the delivery workers and mailboxes ask
//! before they lease and `lease` asks again while it waits (a message received after the pause
//! is kept back, unacked, for the first lease after the resume). As durable as the stream: a
//! node that starts folds it again, so a pause holds on every process and after restarts.
//!
//! Status: any process answers for any submission from its index; the lag is the time a stream
//! record takes to reach a consumer (milliseconds; see `docs/rabbitmq.md`). The node that wrote
//! a record waits until its own fold has it, so it reads its own writes. A process that stops
//! saves its index (`snapshot.rs`); its next start folds only the stream written since, after the
//! same check as a reconnect's below.
//!
//! Faults: one supervisor task owns the connection. When the connection fails, it drops the
//! session, answers `Unavailable` for writes, and reconnects with backoff (0.2 s doubling to 5 s),
//! declares the topology again and resumes the stream after the last folded offset, once it has
//! checked that the stream still holds the message it folded there (a stream that lost its tail
//! reuses offsets; then the index is dropped and the stream read again from its start).

mod index;
mod record;
mod shared;
mod snapshot;
mod store;
mod tasks;
mod topology;
mod work;

#[cfg(test)]
mod broker_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use self::index::{Applied, Claim, FastMap, Index, ReplaySource};
use self::record::{
    Envelope, OutcomeRecord, PauseRecord, Record, RecordedOutcome, ReplayVoidRecord, ReplayedRecord, SubmittedRecord,
};
use self::shared::unavailable;
use self::store::{Finish, send};
use self::tasks::{append_batches, flush_queued, pack_work, supervise};
use self::topology::{Names, SessionError, short};
use self::work::{WorkMessage, rung_for};
use crate::store::{
    Counts, Cutoffs, DeliveryFilter, DeliveryId, DeliveryState, DeliveryView, Intake, Lease, MailboxVerdict,
    NewSubmission, Outcome, Pause, Receipt, ReceiptDelivery, ReplayOutcome, Store, StoreError, SubmissionId,
    SubmissionView, dedup_digest, now_millis,
};

/// Longest wait for a broker confirm before a write counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacked messages per endpoint and process.
pub const PREFETCH: u16 = 64;
/// How often a lease of a pulled endpoint (a mailbox) asks the broker again while it waits.
const PULL_POLL: Duration = Duration::from_millis(100);
/// What intake, replay and the partner port's `/healthz` say while the broker blocks publishers.
const BLOCKED: &str = "RabbitMQ is blocking publishers (a resource alarm: the broker is low on memory or disk)";
/// How often a lease looks again whether the broker still blocks publishers.
const BLOCKED_POLL: Duration = Duration::from_millis(100);
/// Most submissions one `Expire` record deletes: folding one holds the index lock (every
/// intake waits for the fold), about 20 ms for 10,000 of 100,000 kept and 40 ms of 200,000
/// (release build; the walk and the dedup map grow with what is kept, see `docs/rabbitmq.md`).
const EXPIRE_LIMIT: u64 = 10_000;
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
/// At most this many deliveries in one pack (see `work::pack`), and its soft size cap (a larger
/// payload goes alone): with [`PACKS_IN_FLIGHT`], 256 deliveries in flight per work queue, so
/// intake at 256 requests in flight does not queue behind full packs; small enough that the
/// work of a busy minute still spreads over the processes (each takes whole packs,
/// [`PREFETCH`] at a time). Measured: docs/rabbitmq.md, "Benchmark".
const PACK_PARTS: usize = 32;
const PACK_BYTES: usize = 1 << 20;
/// Packs of one work queue waiting for their confirms at a time; more deliveries wait and go
/// in the next one.
const PACKS_IN_FLIGHT: usize = 8;
/// Mailbox verdicts a process's mailboxes may fall behind by before they miss some (those
/// deliveries are offered again after their deadline).
const VERDICTS: usize = 4096;
/// How long start-up waits for the stream to advance while it reads it up to now.
const START_STALL: Duration = Duration::from_secs(30);
/// How long a reconnecting process waits for the stream message it folded last (see
/// `tasks::check_resume`). It is there at once when the stream is whole.
const RESUME_CHECK: Duration = Duration::from_secs(5);
/// Longest wait for lapin to take an ack or nack (it answers at once, also for a closed
/// channel, unless the connection is stuck).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long closing the store waits for its connection supervisor to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How long a new connection may take to declare the topology, open its channels and start its
/// consumers; then it is closed and the next one tried. Without a bound, a broker that stopped
/// answering mid-setup (one still starting after a restart) kept the supervisor waiting for
/// ever: no session, every write a 503, and no reconnect.
#[cfg(not(test))]
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Shorter in this crate's tests, so the test of a silent setup takes seconds, not half a minute.
#[cfg(test)]
const SETUP_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a connection being closed may take to answer (then it is dropped, which closes it).
const SESSION_CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    /// CAs and client certificate for an `amqps://` URL (empty: the system's CAs, no certificate).
    tls: OwnedTLSConfig,
    /// Where the index is saved on close (see `snapshot.rs`).
    snapshot: Option<std::path::PathBuf>,
    /// The offset the start read the stream from (the snapshot's; 0 without one, or when the
    /// stream no longer held what the snapshot ended with).
    started_at_offset: AtomicU64,
    names: Names,
    endpoints: Vec<String>,
    /// Endpoints whose work is taken from the broker only when a lease asks (mailboxes).
    pulled: Vec<String>,
    session: RwLock<Option<Arc<Session>>>,
    index: Mutex<Index>,
    waiters: Mutex<FastMap<Uuid, Waiter>>,
    /// Stream offset to resume from after a reconnect.
    next_offset: AtomicU64,
    /// A hash of the message at `next_offset - 1` (`tasks::digest`), to check after a reconnect that
    /// the stream still holds it.
    last_digest: AtomicU64,
    /// The index was dropped and the stream is being read again from its start (see
    /// `tasks::check_resume`): not ready (`health`) until the fold is back to now.
    catching_up: AtomicBool,
    /// How often this process dropped its index to read a stream that lost records again.
    rereads: AtomicU64,
    /// Stream records this process could not read (written by a later version, or by hand) and
    /// skipped: its index may then differ from those of processes that read them.
    unreadable: AtomicU64,
    /// Connections opened (sessions set up, counted when each became current) since start.
    connections: AtomicU64,
    leases: Mutex<FastMap<u64, Held>>,
    next_token: AtomicU64,
    queues: HashMap<String, WorkQueue>,
    broken: mpsc::UnboundedSender<u64>,
    appends: mpsc::UnboundedSender<Append>,
    /// Submissions whose deliveries were queued since the last flush.
    queued: Mutex<Vec<SubmissionId>>,
    /// Woken after every stream message the fold applied.
    folded: tokio::sync::Notify,
    /// How long the broker keeps a dead letter's copy in `P.dead.E`, in milliseconds (the
    /// message's `expiration`); 0: for good. `[retention] dead`, see [`RabbitStore::expire_dead_copies`].
    dead_ttl_ms: AtomicU64,
    /// Mailbox verdicts folded from the stream, for this process's mailboxes.
    verdicts: tokio::sync::broadcast::Sender<MailboxVerdict>,
    shutdown: watch::Sender<bool>,
}

/// One record waiting for the next stream message.
struct Append {
    rid: Uuid,
    encoded: Vec<u8>,
}

/// What the writer of a record gets: the fold's verdict, or why the record was not written.
type Appended = Result<Applied, String>;

/// A writer waiting for its record: answered when both the confirm and the fold came.
struct Waiter {
    tx: oneshot::Sender<Appended>,
    confirmed: bool,
    applied: Option<Applied>,
    /// The record as written (records without a payload), for the fold to apply instead of
    /// decoding it again.
    envelope: Option<Envelope>,
}

struct Session {
    id: u64,
    conn: Connection,
    publishers: Vec<Channel>,
    next: AtomicUsize,
    /// A channel per pulled endpoint (see [`RabbitStore::open_pulling`]), for `basic.get`.
    getters: HashMap<String, Channel>,
}

struct WorkQueue {
    endpoint: Arc<str>,
    tx: mpsc::Sender<Incoming>,
    inbox: tokio::sync::Mutex<Inbox>,
    /// Intake's work for this queue, gathered into packs (see `tasks::pack_work`); `None` for a
    /// pulled endpoint, whose every work message carries one delivery (a pack's parts would wait
    /// in one process while a mailbox's reader asks another).
    packer: Option<mpsc::UnboundedSender<Packing>>,
    /// Parts of packs waiting in `Inbox::stashed` (for [`crate::store::WorkInHand`]).
    stashed: AtomicUsize,
    /// Work messages the broker gave this process (see [`crate::store::WorkInHand`]).
    received: AtomicU64,
    /// When a lease last took one (milliseconds since the epoch; 0: never).
    last_taken: AtomicU64,
}

/// What a lease takes an endpoint's work from (one lease at a time).
struct Inbox {
    rx: mpsc::Receiver<Incoming>,
    /// Work received but not handed out: the rest of a pack a lease took fewer parts of than it
    /// holds, and a part received just after the endpoint was paused (kept, unacked, for the
    /// first lease after the resume: given back to the broker it would come straight back,
    /// prefetched).
    stashed: std::collections::VecDeque<Part>,
}

struct Incoming {
    session: u64,
    delivery: lapin::message::Delivery,
}

/// One delivery's work in a lease's hands: a work message, or one part of a pack.
struct Part {
    ack: Arc<Ack>,
    message: WorkMessage,
    redelivered: u32,
    payload: Bytes,
}

/// The broker's message behind one or more [`Part`]s: acked when its last part is done with,
/// or given back to the queue then if any part asked for that.
struct Ack {
    session: u64,
    acker: lapin::Acker,
    parts: usize,
    left: AtomicUsize,
    requeue: AtomicBool,
    /// Given back at once (its session is no longer the current one).
    returned: AtomicBool,
}

impl Ack {
    fn new(session: u64, acker: lapin::Acker, parts: usize) -> Arc<Ack> {
        Arc::new(Ack {
            session,
            acker,
            parts,
            left: AtomicUsize::new(parts),
            requeue: AtomicBool::new(false),
            returned: AtomicBool::new(false),
        })
    }

    /// One part is done with (`requeue`: it wants to come again). What to do with the message,
    /// when this was its last part.
    fn part_done(&self, requeue: bool) -> Option<Finish> {
        if requeue {
            self.requeue.store(true, Ordering::SeqCst);
        }
        if self.left.fetch_sub(1, Ordering::SeqCst) != 1 {
            return None;
        }
        Some(if self.requeue.load(Ordering::SeqCst) { Finish::Requeue } else { Finish::Ack })
    }

    /// Gives the message back at once, whatever its other parts do (its session is no longer
    /// the current one), and only once. Its channel is gone, and with it the broker's record of
    /// our holding it: the broker has put it back in the queue. Given back all the same, never
    /// just dropped: were its connection still open (being closed), the message would stay
    /// unacked there, held by nobody. On a closed channel this answers at once.
    async fn give_back_now(&self, shared: &Shared) {
        if !self.returned.swap(true, Ordering::SeqCst) {
            send(shared, self, Finish::Requeue).await;
        }
    }
}

/// A delivery of intake's, waiting to be published with others in one pack.
struct Packing {
    message: WorkMessage,
    payload: Bytes,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A leased delivery: its endpoint, the message (or pack) behind it, and the work message as
/// received (what a retry or dead letter is made from).
struct Held {
    endpoint: Arc<str>,
    ack: Arc<Ack>,
    message: WorkMessage,
}

/// Connects, declares the topology, and reads the event stream up to now before returning.
/// `pulled`: the endpoints whose work is taken only when a lease asks (see
/// [`RabbitStore::open_pulling`]).
pub async fn connect(
    queue: &crate::config::QueueConfig,
    endpoints: &[String],
    pulled: &[String],
    data_dir: &std::path::Path,
) -> anyhow::Result<RabbitStore> {
    let url = queue.url.clone().ok_or_else(|| anyhow::anyhow!("`queue.url` is required for RabbitMQ"))?;
    let options = OpenOptions {
        pulled: pulled.to_vec(),
        tls: queue.tls()?,
        snapshot: Some(snapshot::path(data_dir, &queue.prefix)),
    };
    RabbitStore::open_with(&url, &queue.prefix, endpoints, options).await
}

/// How [`RabbitStore::open_with`] opens a store.
#[derive(Default)]
pub struct OpenOptions {
    /// Endpoints whose work is taken from the broker only while a lease asks (mailboxes; see
    /// [`RabbitStore::open_pulling`]).
    pub pulled: Vec<String>,
    /// CAs and client certificate for an `amqps://` URL ([`crate::config::QueueConfig::tls`]).
    pub tls: OwnedTLSConfig,
    /// Where the index is saved when the store closes and read from when it opens (see
    /// `snapshot.rs`); `None`: the whole stream is read at every start.
    pub snapshot: Option<std::path::PathBuf>,
}

impl RabbitStore {
    pub async fn open(url: &str, prefix: &str, endpoints: &[String]) -> anyhow::Result<RabbitStore> {
        RabbitStore::open_pulling(url, prefix, endpoints, &[]).await
    }

    /// As [`RabbitStore::open`], with the work of the `pulled` endpoints taken from the broker
    /// only while a lease asks for it (`basic.get`), not prefetched. For mailboxes: a process
    /// leases their work only when an agency polls it, and work prefetched by a process the
    /// agency does not poll would wait there, unacked, for as long as that process lives.
    pub async fn open_pulling(
        url: &str,
        prefix: &str,
        endpoints: &[String],
        pulled: &[String],
    ) -> anyhow::Result<RabbitStore> {
        RabbitStore::open_with(
            url,
            prefix,
            endpoints,
            OpenOptions { pulled: pulled.to_vec(), ..OpenOptions::default() },
        )
        .await
    }

    /// As [`RabbitStore::open`], with the options of a configured store: pulled endpoints, TLS,
    /// and the index snapshot.
    pub async fn open_with(
        url: &str,
        prefix: &str,
        endpoints: &[String],
        options: OpenOptions,
    ) -> anyhow::Result<RabbitStore> {
        let OpenOptions { pulled, tls, snapshot } = options;
        let names = Names::new(prefix);
        for name in names.all(endpoints) {
            short(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mut queues = HashMap::new();
        let mut packers = Vec::new();
        for e in endpoints {
            let (tx, rx) = mpsc::channel(usize::from(PREFETCH));
            let inbox = tokio::sync::Mutex::new(Inbox { rx, stashed: Default::default() });
            let packer = (!pulled.contains(e)).then(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                packers.push((e.clone(), rx));
                tx
            });
            let queue = WorkQueue {
                endpoint: e.as_str().into(),
                tx,
                inbox,
                packer,
                stashed: AtomicUsize::new(0),
                received: AtomicU64::new(0),
                last_taken: AtomicU64::new(0),
            };
            queues.insert(e.clone(), queue);
        }
        let (broken, broken_rx) = mpsc::unbounded_channel();
        let (appends, appends_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let started = std::time::Instant::now();
        let loaded = snapshot.as_deref().and_then(|p| snapshot::load(p, prefix));
        let started_at_offset = loaded.as_ref().map_or(0, |l| l.next_offset);
        if let (Some(l), Some(p)) = (&loaded, &snapshot) {
            tracing::info!(path = %p.display(), next_offset = l.next_offset, took = ?started.elapsed(), "index snapshot read; reading the event stream from there");
        }
        let (index, next_offset, last_digest) =
            loaded.map_or((Index::default(), 0, 0), |l| (l.index, l.next_offset, l.last_digest));
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            tls,
            snapshot,
            started_at_offset: AtomicU64::new(started_at_offset),
            names,
            endpoints: endpoints.to_vec(),
            pulled,
            session: RwLock::new(None),
            index: Mutex::new(index),
            waiters: Mutex::new(FastMap::default()),
            next_offset: AtomicU64::new(next_offset),
            last_digest: AtomicU64::new(last_digest),
            catching_up: AtomicBool::new(false),
            rereads: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            leases: Mutex::new(FastMap::default()),
            next_token: AtomicU64::new(1),
            queues,
            broken,
            appends,
            queued: Mutex::new(Vec::new()),
            folded: tokio::sync::Notify::new(),
            dead_ttl_ms: AtomicU64::new(0),
            verdicts: tokio::sync::broadcast::channel(VERDICTS).0,
            shutdown,
        });
        tokio::spawn(append_batches(shared.clone(), appends_rx));
        for (endpoint, rx) in packers {
            tokio::spawn(pack_work(shared.clone(), endpoint, rx));
        }
        tokio::spawn(flush_queued(shared.clone()));
        let (first_tx, first_rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(shared.clone(), broken_rx, first_tx));
        let store = RabbitStore { shared, supervisor: Mutex::new(Some(supervisor)) };
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                store.close().await;
                anyhow::bail!("cannot start on RabbitMQ at {}: {e}", crate::config::redacted_url(url));
            }
            Err(_) => anyhow::bail!("the RabbitMQ supervisor stopped during start"),
        }
        if let Err(e) = store.shared.read_up_to_now().await {
            store.close().await;
            anyhow::bail!("cannot read the event stream `{}`: {e}", store.shared.names.events());
        }
        Ok(store)
    }

    /// Closes the connection and waits for the supervisor to stop.
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        let handle = self.shared_handle();
        let Some(mut h) = handle else { return };
        // Bounded: a supervisor in the middle of connecting to a broker that does not answer
        // would hold a stopping process for up to the connect timeout. Then nothing is saved
        // (the next start reads the stream, or its last snapshot).
        if tokio::time::timeout(CLOSE_WAIT, &mut h).await.is_err() {
            h.abort();
            tracing::warn!("the RabbitMQ connection did not close within {CLOSE_WAIT:?}; index snapshot not saved");
            return;
        }
        // The connection is closed and the fold has stopped (between two stream messages: it
        // applies one and records its offset without an await in between), so the index and
        // the offset agree.
        let Some(path) = self.shared.snapshot.clone() else { return };
        if self.shared.catching_up.load(Ordering::SeqCst) {
            // Not read up to now again: an index of part of the stream is no start.
            return;
        }
        let shared = self.shared.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let index = shared.index.lock().unwrap_or_else(|e| e.into_inner());
            let next_offset = shared.next_offset.load(Ordering::SeqCst);
            let last_digest = shared.last_digest.load(Ordering::SeqCst);
            let prefix = shared.names.prefix();
            snapshot::save(&path, prefix, &index, next_offset, last_digest)
                .map(|size| (size, next_offset, started.elapsed(), path))
        })
        .await;
        match saved {
            Ok(Ok((size, next_offset, took, path))) => {
                tracing::info!(path = %path.display(), bytes = size, next_offset, ?took, "index snapshot saved for the next start")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "index snapshot not saved; the next start reads the whole event stream")
            }
            Err(e) => tracing::warn!(error = %e, "index snapshot not saved"),
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

    /// Dead letters settled from now on carry this `expiration`, so the broker drops its copy in
    /// `P.dead.E` once `[retention] dead` has passed, as the fold drops the stream's copy (`None`:
    /// kept until an operator purges it). Copies already in the queue keep what they were
    /// published with; and a quorum queue drops an expired message when it reaches the head, so
    /// a copy without expiry ahead of it holds it back (see `docs/rabbitmq.md`).
    pub fn expire_dead_copies(&self, after: Option<Duration>) {
        let ms = after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.shared.dead_ttl_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for RabbitStore {
    fn drop(&mut self) {
        // The supervisor sees this and closes the connection; unacked leases go back to the queue.
        self.shared.shutdown.send_replace(true);
    }
}
