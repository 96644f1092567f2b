//! The group-commit writer: one thread owns every write transaction.
//!
//! Requests queue on a channel. The thread takes the first request, then everything else already
//! waiting (up to [`MAX_BATCH`]), applies them all in ONE redb write transaction and commits it
//! (one fsync), and only then answers every waiter. While one commit is on the disk, new requests
//! pile up and form the next batch, so under load many submissions share each fsync, and at low
//! load a lone request is committed at once without waiting for company. Under load a small
//! batch waits [`LINGER`] for more (see there).
//!
//! Payloads and renditions are not copied here: the requests' own tasks appended them to the
//! blob log ([`super::blobs`]) before they queued; the writer writes them and makes them durable
//! with one [`BlobLog::sync`] per batch before it commits the references.
//!
//! If a batch fails as a whole, each of its requests is retried in a transaction of its own, so
//! one bad request cannot fail its neighbours.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::blobs::BlobLog;
use super::db::Db;
use super::prepare::PreparedIntake;
use super::tables::*;
use crate::store::{
    Cutoffs, DeliveryId, DeliveryState, Intake, Millis, Outcome, Pause, Receipt, ReplayOutcome, StoreError,
    SubmissionId, words,
};

/// Most requests in one transaction; bounds the latency a batch adds to its first member.
pub const MAX_BATCH: usize = 512;

/// Dedup key digest -> submission id, of every committed submission. Built at open from
/// `DEDUP_LOG`; only the writer thread adds to it (after each commit), and requests read it to
/// answer a known duplicate before they write anything. About 40 bytes of memory per submission
/// ever accepted (1 million: ~40 MB).
pub type DedupIndex = HashMap<[u8; 16], SubmissionId>;

/// Reads `DEDUP_LOG` into a fresh index.
pub fn load_dedup_index(db: &Database) -> Result<DedupIndex, redb::Error> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let txn = db.begin_read()?;
    let log = txn.open_table(DEDUP_LOG)?;
    let mut index = DedupIndex::with_capacity(log.len()? as usize);
    for entry in log.iter()? {
        let (k, v) = entry?;
        let Ok(id) = uuid::Uuid::from_slice(k.value()) else { continue };
        for digest in v.value().chunks_exact(16) {
            let digest: [u8; 16] = digest.try_into().unwrap_or_default();
            // The first claim of a key wins; the log is in submission-id (time) order.
            index.entry(digest).or_insert(SubmissionId(id));
        }
    }
    Ok(index)
}

pub enum Op {
    Intake(Box<PreparedIntake>, oneshot::Sender<Result<Intake, StoreError>>),
    Settle {
        delivery: DeliveryId,
        attempt: u32,
        outcome: Outcome,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Replay {
        delivery: DeliveryId,
        actor: String,
        reason: String,
        reply: oneshot::Sender<Result<ReplayOutcome, StoreError>>,
    },
    /// Pauses `endpoint` (`Some`: the pause is kept in `PAUSES`) or resumes it (`None`: the
    /// entry is removed). Answered once committed, so a pause the operator was told of survives
    /// a restart.
    Pause {
        endpoint: String,
        pause: Option<Pause>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Retention: deletes those of `submissions` that `cutoffs` lets go (checked again here, in
    /// the write transaction: one may have been replayed since it was picked). Committed in a
    /// transaction of its own, so the dedup index never names a deleted submission to a batch.
    Expire {
        submissions: Vec<SubmissionId>,
        cutoffs: Cutoffs,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// What a committed batch woke up: endpoints that got new due work.
pub type Wakeups = Vec<String>;

enum Reply {
    Intake(oneshot::Sender<Result<Intake, StoreError>>, Result<Intake, StoreError>),
    Settle(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Replay(oneshot::Sender<Result<ReplayOutcome, StoreError>>, Result<ReplayOutcome, StoreError>),
    Pause(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Expire(oneshot::Sender<Result<u64, StoreError>>, Result<u64, StoreError>),
}

impl Reply {
    fn fail(self, e: &str) -> Reply {
        match self {
            Reply::Intake(tx, _) => Reply::Intake(tx, failed(e)),
            Reply::Settle(tx, _) => Reply::Settle(tx, failed(e)),
            Reply::Replay(tx, _) => Reply::Replay(tx, failed(e)),
            Reply::Pause(tx, _) => Reply::Pause(tx, failed(e)),
            Reply::Expire(tx, _) => Reply::Expire(tx, failed(e)),
        }
    }
    fn send(self) {
        // A waiter that went away (client disconnected) no longer needs its answer; the write
        // itself is committed either way.
        match self {
            Reply::Intake(tx, r) => drop(tx.send(r)),
            Reply::Settle(tx, r) => drop(tx.send(r)),
            Reply::Replay(tx, r) => drop(tx.send(r)),
            Reply::Pause(tx, r) => drop(tx.send(r)),
            Reply::Expire(tx, r) => drop(tx.send(r)),
        }
    }
}

/// Under load, how long a small batch waits for company before it commits (PostgreSQL's
/// `commit_delay`, for the same reason). A commit costs the writer about 0.4 ms of CPU and
/// ~40 redb page writes whatever its size, so at 8,000 submissions/s, where a batch would hold
/// about 10-15, waiting 1 ms makes batches of 25-30: in 12 alternated open-loop runs the hub's
/// CPU per submission fell by about 9 % (128-153 µs against 145-162) and the bytes written by
/// 22 %, for a p50 about 0.8 ms later (no better p99 on this noisy machine); at 256 clients
/// (closed loop) 6 of 7 alternated runs accepted more (+6 %), a later set of 4 showed no
/// difference. It applies only when at least [`LINGER_AFTER`] requests queued up
/// while the previous batch was being committed (a lone request at low load commits at once)
/// and fewer than [`LINGER_BELOW`] (large batches already share their commit well).
///
/// The price: a few clients that each wait for their answer before sending again gain nothing
/// from the wait. 8 such clients sending as fast as they can got about 15 % fewer
/// submissions/s (2,500 instead of 3,000/s, p50 2.9 instead of 2.4 ms). Neither a back-off
/// that stopped lingering when a linger gathered nothing (it also lost most of the gain under
/// load) nor lingering only when the queued requests had come at 4 or more per ms (such
/// clients' requests come in waves, fast enough) avoided that, so the rule stays simple.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
const LINGER_AFTER: usize = 4;
const LINGER_BELOW: usize = 32;

/// Moves what is already queued into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::UnboundedReceiver<Op>, batch: &mut Vec<Op>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// When the database must be opened again after an I/O error (see [`super::db`]): at most
/// once per `backoff`, which doubles (up to a minute) while reopens keep coming within a minute
/// of each other, as they do while the disk stays full: recovery reads the whole file.
struct Reopens {
    last: Option<std::time::Instant>,
    backoff: std::time::Duration,
}

impl Reopens {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(1);
    const MAX: std::time::Duration = std::time::Duration::from_secs(60);

    /// Reopens `db` unless the last attempt was too recent; also reloads the dedup index (a
    /// commit that answered with an error may still have reached the disk).
    fn attempt(&mut self, db: &Db, index: &RwLock<DedupIndex>) -> Result<Arc<Database>, String> {
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            let since = now.duration_since(last);
            if since < self.backoff {
                return Err(format!(
                    "the store is unavailable after an I/O error (is the disk full?); next attempt to reopen it in {:.0?}",
                    self.backoff - since
                ));
            }
            self.backoff = if since < Self::MAX { (self.backoff * 2).min(Self::MAX) } else { Self::FIRST };
        }
        self.last = Some(now);
        tracing::warn!("reopening the store after an I/O error");
        metrics::counter!("lotse_store_reopens_total").increment(1);
        let database = db.reopen()?;
        let fresh = load_dedup_index(&database).map_err(|e| format!("cannot read the dedup log again: {e}"))?;
        *index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        tracing::info!("store reopened");
        Ok(database)
    }
}

/// Errors that repeat for every request while a condition lasts (a full disk): logged at most
/// once a second each (see [`crate::telemetry::Throttle`]).
static WRITE_FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
static BATCH_FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
static REOPEN_FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
static PROBE_FAILED: crate::telemetry::Throttle = crate::telemetry::Throttle::new();

/// Runs the writer loop until every sender is dropped.
pub fn run(
    db: Arc<Db>,
    blobs: Arc<BlobLog>,
    index: Arc<RwLock<DedupIndex>>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    wake: impl Fn(&str),
    failing: &AtomicBool,
) {
    let failing_flag = failing;
    let failing = |f: bool| failing_flag.store(f, Ordering::Relaxed);
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut reopens = Reopens { last: None, backoff: Reopens::FIRST };
    loop {
        // What queued up while the last batch was being committed; if that is a few, a short
        // wait gathers more (see `LINGER`).
        drain(&mut rx, &mut batch);
        let queued = batch.len();
        if queued == 0 {
            let next = if failing_flag.load(Ordering::Relaxed) || db.get().is_err() {
                idle_while_failing(&mut rx, || probe(&db, &blobs, &index, &mut reopens), &failing)
            } else {
                rx.blocking_recv()
            };
            match next {
                Some(first) => batch.push(first),
                None => break,
            }
            drain(&mut rx, &mut batch);
        } else if (LINGER_AFTER..LINGER_BELOW).contains(&queued) {
            std::thread::sleep(LINGER);
            drain(&mut rx, &mut batch);
        }
        metrics::histogram!("lotse_store_batch_size").record(batch.len() as f64);
        // Intakes decide the store's health (`Store::health`): failing while none commits.
        let offered = batch.iter().filter(|op| matches!(op, Op::Intake(..))).count();
        let (expires, ops): (Vec<Op>, Vec<Op>) =
            std::mem::take(&mut batch).into_iter().partition(|op| matches!(op, Op::Expire { .. }));
        let ops = refuse_lost(&blobs, ops);
        let intakes = ops.iter().filter(|op| matches!(op, Op::Intake(..))).count();
        let database = match db.get() {
            Ok(d) => d,
            Err(_) => match reopens.attempt(&db, &index) {
                Ok(d) => d,
                Err(e) => {
                    if offered > 0 {
                        failing(true);
                    }
                    refuse_all(ops, &e);
                    refuse_all(expires, &e);
                    continue;
                }
            },
        };
        let started = std::time::Instant::now();
        // An empty batch (only expiries came) commits nothing.
        let committed =
            if ops.is_empty() { Ok((Vec::new(), Vec::new())) } else { commit_batch(&database, &blobs, &index, ops) };
        metrics::histogram!("lotse_store_commit_seconds").record(started.elapsed().as_secs_f64());
        match committed {
            Ok((replies, wakeups)) => {
                if offered > 0 {
                    failing(intakes == 0);
                }
                for r in replies {
                    r.send();
                }
                for e in wakeups {
                    wake(&e);
                }
            }
            Err((ops, e)) => {
                if let Some(left_out) = BATCH_FAILED.allow() {
                    tracing::warn!(error = %e, size = ops.len(), left_out, "batch commit failed, retrying its requests one by one");
                }
                // Failing until an intake commits; set before any answer goes out, so a caller
                // that got its 503 finds the store unhealthy.
                if offered > 0 {
                    failing(true);
                }
                // A failed blob sync lost the bytes of these intakes: they must not be retried.
                for op in refuse_lost(&blobs, ops) {
                    let intake = matches!(op, Op::Intake(..));
                    match commit_batch(&database, &blobs, &index, vec![op]) {
                        Ok((replies, wakeups)) => {
                            if intake {
                                failing(false);
                            }
                            replies.into_iter().for_each(Reply::send);
                            wakeups.iter().for_each(|e| wake(e));
                        }
                        Err((ops, e)) => refuse_all(ops, &e),
                    }
                }
                // After an I/O error redb refuses everything until it is opened again.
                if Db::is_broken(&database) {
                    drop(database);
                    if let Err(e) = reopens.attempt(&db, &index)
                        && let Some(left_out) = REOPEN_FAILED.allow()
                    {
                        tracing::error!(error = %e, left_out, "cannot reopen the store");
                    }
                    refuse_all(expires, "the store is being reopened after an I/O error");
                    continue;
                }
            }
        }
        for op in expires {
            if let Op::Expire { submissions, cutoffs, reply } = op {
                let _ = reply.send(expire(&database, &blobs, &index, &submissions, cutoffs));
            }
        }
        if Db::is_broken(&database) {
            drop(database);
            if let Err(e) = reopens.attempt(&db, &index)
                && let Some(left_out) = REOPEN_FAILED.allow()
            {
                tracing::error!(error = %e, left_out, "cannot reopen the store");
            }
        }
    }
}

/// While the store cannot take submissions, how often the idle writer checks by itself whether
/// it could again (see [`idle_while_failing`]).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the idle writer looks for requests meanwhile (a blocking receive cannot time out).
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The next request, waited for while the store is failing (the last intakes were refused, or
/// the database is gone after an I/O error). Every [`PROBE_EVERY`] it runs `probe`; once that
/// succeeds the store is ready again (`failing(false)`) and the wait goes on as usual. Without
/// this, only a new submission could clear the failure, and a load balancer sends none to a
/// process whose `/healthz` says 503: it would stay out for good after the disk had room again.
fn idle_while_failing(
    rx: &mut mpsc::UnboundedReceiver<Op>,
    mut probe: impl FnMut() -> Result<(), String>,
    failing: &impl Fn(bool),
) -> Option<Op> {
    let mut last_probe = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(op) => return Some(op),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if last_probe.elapsed() >= PROBE_EVERY {
            last_probe = std::time::Instant::now();
            match probe() {
                Ok(()) => {
                    tracing::info!("the store takes writes again");
                    failing(false);
                    return rx.blocking_recv();
                }
                Err(e) => {
                    if let Some(left_out) = PROBE_FAILED.allow() {
                        tracing::warn!(error = %e, left_out, "the store still cannot take writes");
                    }
                }
            }
        }
        std::thread::sleep(IDLE_POLL);
    }
}

/// Whether the store could take a submission now: the database is open (reopened if it was
/// dropped after an I/O error, within the reopen backoff) and the disk takes a write.
fn probe(db: &Db, blobs: &BlobLog, index: &RwLock<DedupIndex>, reopens: &mut Reopens) -> Result<(), String> {
    if db.get().is_err() {
        reopens.attempt(db, index)?;
    }
    blobs.probe().map_err(|e| format!("a test write to the blob folder failed: {e}"))
}

/// Deletes those of `submissions` that `cutoffs` lets go, in one transaction; after the commit,
/// forgets their dedup keys and gives their blob references back (which deletes a segment no
/// reference points into any more). Returns how many were deleted.
fn expire(
    db: &Database,
    blobs: &BlobLog,
    index: &RwLock<DedupIndex>,
    submissions: &[SubmissionId],
    cutoffs: Cutoffs,
) -> Result<u64, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut gone = Expired::default();
    {
        let committed = index.read().unwrap_or_else(|e| e.into_inner());
        let mut w = Batch {
            t: Tables::open(&txn).map_err(unavailable)?,
            index: &committed,
            new_keys: HashMap::new(),
            counters: HashMap::new(),
            wakeups: Vec::new(),
            now: crate::store::now_millis(),
        };
        for id in submissions {
            w.expire(*id, cutoffs, &mut gone)?;
        }
        w.flush_counters().map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)?;
    {
        let mut index = index.write().unwrap_or_else(|e| e.into_inner());
        for (digest, id) in &gone.keys {
            if index.get(digest) == Some(id) {
                index.remove(digest);
            }
        }
    }
    give_back_blobs(blobs, &gone.blobs);
    Ok(gone.submissions)
}

/// What [`Batch::expire`] deleted, for after the commit.
#[derive(Default)]
struct Expired {
    submissions: u64,
    keys: Vec<([u8; 16], SubmissionId)>,
    blobs: Vec<super::blobs::BlobRef>,
}

/// Answers every op with the store error `e` (503), logging it at most once a second.
fn refuse_all(ops: Vec<Op>, e: &str) {
    if let Some(left_out) = WRITE_FAILED.allow() {
        tracing::error!(error = %e, left_out, "store write failed");
    }
    for op in ops {
        placeholder_reply(op).fail(e).send();
    }
}

/// Answers 503 to every intake whose payload or rendition bytes a failed blob sync lost (see
/// [`BlobLog::is_lost`]), and returns the other ops.
fn refuse_lost(blobs: &BlobLog, ops: Vec<Op>) -> Vec<Op> {
    let lost = |r: &[u8; 21]| super::blobs::decode(r).is_some_and(|r| blobs.is_lost(&r));
    let mut kept = Vec::with_capacity(ops.len());
    let mut refused = Vec::new();
    for op in ops {
        match op {
            Op::Intake(p, reply)
                if lost(&p.payload) || p.deliveries.iter().filter_map(|d| d.rendition.as_ref()).any(lost) =>
            {
                let _ = reply.send(failed("its bytes were lost when the blob log could not be written"));
                refused.extend(blob_refs(&p));
            }
            op => kept.push(op),
        }
    }
    // Never committed: their segments need not wait for a restart to be reclaimed.
    give_back_blobs(blobs, &refused);
    kept
}

/// The blob references an intake appended (its payload, its renditions).
fn blob_refs(p: &PreparedIntake) -> impl Iterator<Item = super::blobs::BlobRef> + '_ {
    std::iter::once(&p.payload)
        .chain(p.deliveries.iter().filter_map(|d| d.rendition.as_ref()))
        .filter_map(|r| super::blobs::decode(r))
}

/// Hands the log references that will never be committed (a duplicate's, a refused intake's)
/// or whose deletion is committed: a segment nothing else refers to is deleted now, not at the
/// next start (see the module documentation of `blobs`).
fn give_back_blobs(blobs: &BlobLog, refs: &[super::blobs::BlobRef]) {
    match blobs.release(refs) {
        Ok(segments) if !segments.is_empty() => {
            tracing::info!(?segments, "blob segments deleted: nothing refers to them any more")
        }
        Ok(_) => {}
        // The space comes back at the next start.
        Err(e) => tracing::warn!(error = %e, "cannot delete a blob segment"),
    }
}

fn placeholder_reply(op: Op) -> Reply {
    match op {
        Op::Intake(_, tx) => Reply::Intake(tx, failed("not applied")),
        Op::Settle { reply, .. } => Reply::Settle(reply, failed("not applied")),
        Op::Replay { reply, .. } => Reply::Replay(reply, failed("not applied")),
        Op::Pause { reply, .. } => Reply::Pause(reply, failed("not applied")),
        Op::Expire { reply, .. } => Reply::Expire(reply, failed("not applied")),
    }
}

fn failed<T>(e: &str) -> Result<T, StoreError> {
    Err(StoreError::Unavailable(e.to_owned()))
}

/// Applies `ops` in one transaction and commits. On failure returns the ops untouched (their
/// effects are rolled back with the transaction) so the caller can retry them.
///
/// The blobs the intakes reference must be on disk before the references are committed: a
/// scoped thread syncs the blob log while this one applies the batch, and the commit waits for
/// it. (Syncing first and then applying made the fsync's latency part of every commit; a
/// separate pipeline stage syncing the next batch gave smaller batches on two cores.)
#[allow(clippy::type_complexity)]
fn commit_batch(
    db: &Database,
    blobs: &BlobLog,
    index: &RwLock<DedupIndex>,
    ops: Vec<Op>,
) -> Result<(Vec<Reply>, Wakeups), (Vec<Op>, String)> {
    let needs_sync = ops.iter().any(|op| matches!(op, Op::Intake(..)));
    std::thread::scope(|scope| {
        let sync = needs_sync.then(|| {
            scope.spawn(|| {
                let started = std::time::Instant::now();
                let r = blobs.sync();
                metrics::histogram!("lotse_store_blob_sync_seconds").record(started.elapsed().as_secs_f64());
                r
            })
        });
        apply_and_commit(db, blobs, index, ops, || match sync.map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(format!("cannot sync the blob log: {e}")),
            Some(Err(_)) => Err("the blob log sync panicked".to_owned()),
        })
    })
}

#[allow(clippy::type_complexity)]
fn apply_and_commit(
    db: &Database,
    blobs: &BlobLog,
    index: &RwLock<DedupIndex>,
    ops: Vec<Op>,
    before_commit: impl FnOnce() -> Result<(), String>,
) -> Result<(Vec<Reply>, Wakeups), (Vec<Op>, String)> {
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return Err((ops, e.to_string())),
    };
    let tables = match Tables::open(&txn) {
        Ok(t) => t,
        Err(e) => return Err((ops, e.to_string())),
    };
    let committed = index.read().unwrap_or_else(|e| e.into_inner());
    let mut w = Batch {
        t: tables,
        index: &committed,
        new_keys: HashMap::new(),
        counters: HashMap::new(),
        wakeups: Vec::new(),
        now: crate::store::now_millis(),
    };
    // Apply everything first; if any step fails, abort and hand the ops back.
    let mut results: Vec<Result<Applied, StoreError>> = Vec::with_capacity(ops.len());
    let mut failed: Option<String> = None;
    for op in &ops {
        let r = match op {
            Op::Intake(sub, _) => w.intake(sub).map(Applied::Intake),
            Op::Settle { delivery, attempt, outcome, .. } => {
                w.settle(*delivery, *attempt, outcome).map(|_| Applied::Unit)
            }
            Op::Replay { delivery, actor, reason, .. } => w.replay(*delivery, actor, reason).map(Applied::Replay),
            Op::Pause { endpoint, pause, .. } => w.pause(endpoint, pause.as_ref()).map(|_| Applied::Unit),
            // `run` commits expiries apart (see `Op::Expire`).
            Op::Expire { .. } => Err(StoreError::Corrupt("an expiry in a batch".into())),
        };
        if let Err(StoreError::Unavailable(e)) = &r {
            failed = Some(e.clone());
            break;
        }
        results.push(r);
    }
    if failed.is_none()
        && let Err(e) = w.flush_counters()
    {
        failed = Some(e.to_string());
    }
    let wakeups = std::mem::take(&mut w.wakeups);
    let new_keys = std::mem::take(&mut w.new_keys);
    drop(w);
    drop(committed);
    // Always wait for the blob sync, also when the batch failed: the scope joins it anyway.
    let synced = before_commit();
    if failed.is_none()
        && let Err(e) = synced
    {
        static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
        if let Some(left_out) = LOG.allow() {
            tracing::error!(error = %e, left_out, "blob log not durable; the batch is not committed");
        }
        failed = Some(e);
    }
    if let Some(e) = failed {
        drop(txn.abort());
        return Err((ops, e));
    }
    if let Err(e) = txn.commit() {
        return Err((ops, e.to_string()));
    }
    // Only what is committed may answer later lookups.
    index.write().unwrap_or_else(|e| e.into_inner()).extend(new_keys);
    let mut replies = Vec::with_capacity(ops.len());
    // A duplicate found in the batch (its twin came in at the same time, past the known
    // duplicate check) appended its bytes for nothing.
    let mut unreferenced = Vec::new();
    for (op, r) in ops.into_iter().zip(results) {
        replies.push(match (op, r) {
            (Op::Intake(p, tx), r) => Reply::Intake(
                tx,
                r.and_then(|a| match a {
                    Applied::Intake(i) => {
                        if matches!(i, Intake::Duplicate(_)) {
                            unreferenced.extend(blob_refs(&p));
                        }
                        Ok(i)
                    }
                    _ => Err(StoreError::Corrupt("mismatched reply".into())),
                }),
            ),
            (Op::Settle { reply, .. }, r) => Reply::Settle(reply, r.map(|_| ())),
            (Op::Replay { reply, .. }, r) => Reply::Replay(
                reply,
                r.and_then(|a| match a {
                    Applied::Replay(o) => Ok(o),
                    _ => Err(StoreError::Corrupt("mismatched reply".into())),
                }),
            ),
            (Op::Pause { reply, .. }, r) => Reply::Pause(reply, r.map(|_| ())),
            (Op::Expire { reply, .. }, r) => Reply::Expire(reply, r.map(|_| 0)),
        });
    }
    give_back_blobs(blobs, &unreferenced);
    Ok((replies, wakeups))
}

enum Applied {
    Intake(Intake),
    Replay(ReplayOutcome),
    Unit,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Every table, opened once per batch (opening a table costs a lookup in redb's table tree).
struct Tables<'t> {
    submissions: Table<'t, &'static [u8], &'static [u8]>,
    payloads: Table<'t, &'static [u8], &'static [u8]>,
    renditions: Table<'t, &'static [u8], &'static [u8]>,
    deliveries: Table<'t, &'static [u8], &'static [u8]>,
    ready: Table<'t, &'static [u8], ()>,
    by_state: Table<'t, &'static [u8], ()>,
    events: Table<'t, &'static [u8], &'static [u8]>,
    dedup_log: Table<'t, &'static [u8], &'static [u8]>,
    counters: Table<'t, &'static str, u64>,
    chain: Table<'t, &'static [u8], &'static [u8]>,
    pauses: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, redb::TableError> {
        Ok(Tables {
            submissions: txn.open_table(SUBMISSIONS)?,
            payloads: txn.open_table(PAYLOADS)?,
            renditions: txn.open_table(RENDITIONS)?,
            deliveries: txn.open_table(DELIVERIES)?,
            ready: txn.open_table(READY)?,
            by_state: txn.open_table(BY_STATE)?,
            events: txn.open_table(EVENTS)?,
            dedup_log: txn.open_table(DEDUP_LOG)?,
            counters: txn.open_table(COUNTERS)?,
            chain: txn.open_table(CHAIN)?,
            pauses: txn.open_table(PAUSES)?,
        })
    }
}

struct Batch<'t, 'i> {
    t: Tables<'t>,
    /// Committed dedup keys.
    index: &'i DedupIndex,
    /// Dedup keys of this batch, not committed yet.
    new_keys: DedupIndex,
    counters: HashMap<&'static str, i64>,
    wakeups: Vec<String>,
    now: Millis,
}

impl Batch<'_, '_> {
    fn count(&mut self, name: &'static str, delta: i64) {
        *self.counters.entry(name).or_default() += delta;
    }

    fn flush_counters(&mut self) -> Result<(), redb::Error> {
        if self.counters.is_empty() {
            return Ok(());
        }
        for (name, delta) in self.counters.drain() {
            let old = self.t.counters.get(name)?.map(|v| v.value()).unwrap_or(0);
            self.t.counters.insert(name, old.saturating_add_signed(delta))?;
        }
        Ok(())
    }

    fn intake(&mut self, p: &PreparedIntake) -> Result<Intake, StoreError> {
        for digest in &p.dedup {
            if let Some(id) = self.index.get(digest).or_else(|| self.new_keys.get(digest)) {
                return Ok(Intake::Duplicate(receipt_of(&self.t.submissions, *id)?));
            }
        }
        let sid = p.id.0.as_bytes().as_slice();
        if !p.dedup.is_empty() {
            self.t.dedup_log.insert(sid, p.dedup.concat().as_slice()).map_err(unavailable)?;
            for digest in &p.dedup {
                self.new_keys.entry(*digest).or_insert(p.id);
            }
        }
        self.t.payloads.insert(sid, p.payload.as_slice()).map_err(unavailable)?;
        self.t.submissions.insert(sid, p.record.as_slice()).map_err(unavailable)?;
        for d in &p.deliveries {
            let did = d.id.0.as_bytes().as_slice();
            if let Some(r) = &d.rendition {
                self.t.renditions.insert(did, r.as_slice()).map_err(unavailable)?;
            }
            self.t.deliveries.insert(did, d.record.as_slice()).map_err(unavailable)?;
            self.t.ready.insert(ready_key(&d.endpoint, p.due_at, d.id).as_slice(), ()).map_err(unavailable)?;
            self.t.by_state.insert(state_key(DeliveryState::Pending, d.id).as_slice(), ()).map_err(unavailable)?;
            self.wakeups.push(d.endpoint.clone());
        }
        for (seq, e) in p.events.iter().enumerate() {
            self.t.events.insert(event_key(p.id, seq as u32).as_slice(), e.as_slice()).map_err(unavailable)?;
        }
        let chain = encode_chain(p.events.len() as u32, &p.last_hash);
        self.t.chain.insert(sid, chain.as_slice()).map_err(unavailable)?;
        self.count("submissions", 1);
        self.count("pending", p.deliveries.len() as i64);
        Ok(Intake::Accepted(p.receipt.clone()))
    }

    fn settle(&mut self, id: DeliveryId, attempt: u32, outcome: &Outcome) -> Result<(), StoreError> {
        let Some(mut d) = get_delivery(&self.t.deliveries, id)? else {
            return Err(StoreError::Corrupt(format!("settle of unknown delivery {id}")));
        };
        if d.state != DeliveryState::Pending || d.attempts + 1 != attempt {
            // A stale lease (e.g. the delivery was settled by an earlier attempt that the worker
            // retried after a store error): the first settlement stands.
            tracing::debug!(delivery_id = %id, attempt, "ignoring stale settlement");
            return Ok(());
        }
        self.t.ready.remove(ready_key(&d.endpoint, d.not_before, id).as_slice()).map_err(unavailable)?;
        d.attempts = attempt;
        d.updated_at = self.now;
        let mut events = Vec::with_capacity(2);
        let old_state = d.state;
        match outcome {
            Outcome::Delivered { via } => {
                events.push(ev(self.now, "attempt", Some(id), Some(attempt), words::handed_over(&d.endpoint, *via)));
                events.push(ev(self.now, "delivered", Some(id), Some(attempt), words::delivered(&d.endpoint)));
                d.state = DeliveryState::Delivered;
                d.last_error = None;
            }
            Outcome::Retry { not_before, error } => {
                events.push(ev(self.now, "attempt", Some(id), Some(attempt), error.clone()));
                events.push(ev(
                    self.now,
                    "retry_scheduled",
                    Some(id),
                    Some(attempt),
                    format!("next attempt at {}", rfc3339(*not_before)),
                ));
                d.not_before = *not_before;
                d.last_error = Some(error.clone());
                self.t.ready.insert(ready_key(&d.endpoint, d.not_before, id).as_slice(), ()).map_err(unavailable)?;
                self.wakeups.push(d.endpoint.clone());
            }
            Outcome::Dead { error } => {
                events.push(ev(self.now, "attempt", Some(id), Some(attempt), error.clone()));
                events.push(ev(self.now, "dead", Some(id), Some(attempt), error.clone()));
                d.state = DeliveryState::Dead;
                d.last_error = Some(error.clone());
            }
        }
        self.move_state(id, old_state, d.state)?;
        put_delivery(&mut self.t.deliveries, id, &d)?;
        self.append_events(d.submission_id, events)
    }

    fn replay(&mut self, id: DeliveryId, actor: &str, reason: &str) -> Result<ReplayOutcome, StoreError> {
        let Some(mut d) = get_delivery(&self.t.deliveries, id)? else {
            return Ok(ReplayOutcome::NotFound);
        };
        if d.state != DeliveryState::Dead {
            return Ok(ReplayOutcome::NotDead { state: d.state });
        }
        d.state = DeliveryState::Pending;
        d.budget_base = d.attempts;
        d.not_before = self.now;
        d.updated_at = self.now;
        self.t.ready.insert(ready_key(&d.endpoint, d.not_before, id).as_slice(), ()).map_err(unavailable)?;
        self.move_state(id, DeliveryState::Dead, DeliveryState::Pending)?;
        put_delivery(&mut self.t.deliveries, id, &d)?;
        self.wakeups.push(d.endpoint.clone());
        let detail = words::replayed(actor, reason);
        self.append_events(d.submission_id, vec![ev(self.now, "replayed", Some(id), None, detail)])?;
        Ok(ReplayOutcome::Replayed)
    }

    /// Keeps `pause` of `endpoint`, or forgets its pause (`None`: resumed).
    fn pause(&mut self, endpoint: &str, pause: Option<&Pause>) -> Result<(), StoreError> {
        match pause {
            Some(p) => {
                let bytes = serde_json::to_vec(p).map_err(|e| corrupt("pause", e))?;
                self.t.pauses.insert(endpoint, bytes.as_slice()).map_err(unavailable)?;
            }
            None => {
                self.t.pauses.remove(endpoint).map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Deletes submission `id` with everything that belongs to it, if `cutoffs` lets it go.
    fn expire(&mut self, id: SubmissionId, cutoffs: Cutoffs, gone: &mut Expired) -> Result<(), StoreError> {
        let sid = id.0.as_bytes().as_slice();
        let record: SubmissionRecord = match self.t.submissions.get(sid).map_err(unavailable)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| corrupt("submission", e))?,
            None => return Ok(()),
        };
        let Some(deliveries) = let_go(&self.t.deliveries, &record, cutoffs)? else { return Ok(()) };
        let blob = |v: Option<redb::AccessGuard<'_, &'static [u8]>>| v.and_then(|v| super::blobs::decode(v.value()));
        for (did, r) in &deliveries {
            let key = did.0.as_bytes().as_slice();
            self.t.deliveries.remove(key).map_err(unavailable)?;
            gone.blobs.extend(blob(self.t.renditions.remove(key).map_err(unavailable)?));
            self.t.by_state.remove(state_key(r.state, *did).as_slice()).map_err(unavailable)?;
            // A final delivery has no work entry; one left over would only be skipped.
            self.t.ready.remove(ready_key(&r.endpoint, r.not_before, *did).as_slice()).map_err(unavailable)?;
            self.count(counter_name(r.state), -1);
        }
        gone.blobs.extend(blob(self.t.payloads.remove(sid).map_err(unavailable)?));
        if let Some(digests) = self.t.dedup_log.remove(sid).map_err(unavailable)? {
            for d in digests.value().chunks_exact(16) {
                gone.keys.push((d.try_into().unwrap_or_default(), id));
            }
        }
        self.t
            .events
            .retain_in(event_key(id, 0).as_slice()..=event_key(id, u32::MAX).as_slice(), |_, _| false)
            .map_err(unavailable)?;
        self.t.chain.remove(sid).map_err(unavailable)?;
        self.t.submissions.remove(sid).map_err(unavailable)?;
        self.count("submissions", -1);
        gone.submissions += 1;
        Ok(())
    }

    fn move_state(&mut self, id: DeliveryId, from: DeliveryState, to: DeliveryState) -> Result<(), StoreError> {
        if from == to {
            return Ok(());
        }
        self.t.by_state.remove(state_key(from, id).as_slice()).map_err(unavailable)?;
        self.t.by_state.insert(state_key(to, id).as_slice(), ()).map_err(unavailable)?;
        self.count(counter_name(from), -1);
        self.count(counter_name(to), 1);
        Ok(())
    }

    fn append_events(&mut self, id: SubmissionId, events: Vec<EventRecord>) -> Result<(), StoreError> {
        let key = id.0.as_bytes().as_slice();
        let (mut seq, mut last_hash) =
            decode_chain(self.t.chain.get(key).map_err(unavailable)?.as_ref().map(|v| v.value()));
        for mut e in events {
            e.hash = chain_hash(&last_hash, seq, &e);
            let bytes = serde_json::to_vec(&e).map_err(|e| corrupt("event", e))?;
            self.t.events.insert(event_key(id, seq).as_slice(), bytes.as_slice()).map_err(unavailable)?;
            last_hash = e.hash;
            seq += 1;
        }
        self.t.chain.insert(key, encode_chain(seq, &last_hash).as_slice()).map_err(unavailable)?;
        Ok(())
    }
}

fn counter_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Delivered => "delivered",
        DeliveryState::Dead => "dead",
    }
}

fn ev(at: Millis, kind: &str, delivery_id: Option<DeliveryId>, attempt: Option<u32>, detail: String) -> EventRecord {
    EventRecord { at, kind: kind.to_owned(), delivery_id, attempt, detail, hash: String::new() }
}

pub fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Every kept pause (endpoint -> pause), as read at open.
pub fn load_pauses(db: &Database) -> Result<std::collections::BTreeMap<String, Pause>, StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(PAUSES).map_err(unavailable)?;
    let mut pauses = std::collections::BTreeMap::new();
    for entry in table.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        let pause: Pause = serde_json::from_slice(v.value()).map_err(|e| corrupt("pause", e))?;
        pauses.insert(k.value().to_owned(), pause);
    }
    Ok(pauses)
}

/// The receipt of submission `id`, which a dedup key names (so it must exist).
pub fn receipt_of(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: SubmissionId,
) -> Result<Receipt, StoreError> {
    let v = t.get(id.0.as_bytes().as_slice()).map_err(unavailable)?;
    let v = v.ok_or_else(|| corrupt("dedup", format!("names the missing submission {id}")))?;
    let rec: SubmissionRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt("submission", e))?;
    Ok(rec.receipt)
}

/// The deliveries of a submission if `cutoffs` lets every one of them go (retention), `None`
/// if one keeps it (or is missing). The expiry scan and the writer ask the same question.
pub fn let_go(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    record: &SubmissionRecord,
    cutoffs: Cutoffs,
) -> Result<Option<Vec<(DeliveryId, DeliveryRecord)>>, StoreError> {
    let mut deliveries = Vec::with_capacity(record.receipt.deliveries.len());
    for d in &record.receipt.deliveries {
        match get_delivery(t, d.id)? {
            Some(r) if cutoffs.lets_go(r.state, r.updated_at) => deliveries.push((d.id, r)),
            _ => return Ok(None),
        }
    }
    Ok(Some(deliveries))
}

pub fn get_delivery(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: DeliveryId,
) -> Result<Option<DeliveryRecord>, StoreError> {
    match t.get(id.0.as_bytes().as_slice()).map_err(unavailable)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| corrupt("delivery", e)),
    }
}

fn put_delivery(
    t: &mut redb::Table<&'static [u8], &'static [u8]>,
    id: DeliveryId,
    d: &DeliveryRecord,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(d).map_err(|e| corrupt("delivery", e))?;
    t.insert(id.0.as_bytes().as_slice(), bytes.as_slice()).map_err(unavailable)?;
    Ok(())
}
