//! The embedded store: redb in `data_dir`, one process.
//!
//! Design:
//! - Every write goes through the group-commit writer thread (`writer.rs`): a submission, its
//!   deliveries, its first events and its dedup keys are one transaction, fsync'd before
//!   `intake` returns.
//! - Payloads and renditions live in append-only segment files (`blobs.rs`): the request's task
//!   appends them in memory, and the writer's blob sync writes and fsyncs them before the commit
//!   that references them; redb keeps a 21-byte reference.
//! - Work is the `READY` table, ordered by (endpoint, not-before, delivery id). A worker leases
//!   due entries; leases live in memory only. A crash forgets them, and since the ready entry
//!   is removed only when an attempt is settled, everything in flight is leased again after a
//!   restart, with the same delivery id (at-least-once).
//! - Waiting for work: per-endpoint `Notify`, woken after a commit that made work due, plus a
//!   timer for the earliest future not-before.
//! - Endpoint pauses are the `PAUSES` table, committed through the writer before
//!   [`Store::set_paused`] answers, and read back at open: a restart keeps them. Workers ask
//!   before every lease, so they read an in-memory copy that follows each commit.

mod blobs;
mod db;
mod prepare;
mod tables;
mod writer;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use redb::ReadableDatabase;
use tokio::sync::{Notify, mpsc, oneshot};

use super::*;
use tables::*;
use writer::{Op, get_delivery, receipt_of, rfc3339};

pub struct EmbeddedStore {
    db: Arc<db::Db>,
    blobs: Arc<blobs::BlobLog>,
    dedup: Arc<std::sync::RwLock<writer::DedupIndex>>,
    /// `None` only while dropping.
    tx: Option<mpsc::UnboundedSender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// The committed pauses (read at open, changed after each committed pause or resume).
    pauses: Mutex<std::collections::BTreeMap<String, Pause>>,
    /// Held from a pause's write until `pauses` shows it, so two operators' changes of one
    /// endpoint end in memory as they were committed.
    pause_writes: tokio::sync::Mutex<()>,
}

impl Drop for EmbeddedStore {
    // Closing the channel ends the writer after its current batch; joining it releases its
    // handle on the database file, so the same store can be opened again right away.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[derive(Default)]
struct Shared {
    leased: Mutex<HashSet<DeliveryId>>,
    notify: Mutex<HashMap<String, Arc<Notify>>>,
    /// Set by the writer when a round of writes committed none of its intakes (a full disk, an
    /// I/O error), cleared when one commits an intake.
    failing: std::sync::atomic::AtomicBool,
    /// Run once by the next `due` between its scan and its leases (tests only).
    #[cfg(test)]
    after_scan: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Shared {
    fn notify(&self, endpoint: &str) -> Arc<Notify> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        let mut map = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(endpoint.to_owned()).or_default().clone()
    }

    fn leased(&self) -> std::sync::MutexGuard<'_, HashSet<DeliveryId>> {
        self.leased.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates `dir` (and its parents) for the process owner only: messages carry personal data, so a
/// folder Lotse creates, and every file in it, is `0700`/`0600`. An existing folder keeps the
/// permissions its operator gave it. `what` names it in the error.
///
/// A new folder's entry is durable only once its parent is synced: without that, a power loss
/// could take the folder (and the fsync'd files in it) away after the store had answered 202.
fn create_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {what} `{}`", dir.display()))?;
    for made in missing {
        // A relative path's outermost folder is made in the working directory.
        let parent = made.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable: a new file or folder in it survives a power loss only
/// once the directory itself is synced.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory `{}`", dir.display()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store file `lotse.redb` and the blob folder `blobs/` in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<EmbeddedStore> {
        create_private_dir(dir, "data dir")?;
        let path = dir.join("lotse.redb");
        // redb would create the file with the umask's permissions; an empty file is fine for it.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create store `{}`", path.display()))?;
        // The file's entry in `dir`, before redb commits anything into it.
        sync_dir(dir)?;
        let db = db::Db::open(&path).with_context(|| format!("cannot open store `{}`", path.display()))?;
        EmbeddedStore::start(dir, Arc::new(db))
    }

    /// The store on an opened database: tables, blob log, dedup index, writer thread.
    fn start(dir: &Path, db: Arc<db::Db>) -> anyhow::Result<EmbeddedStore> {
        let database = db.get()?;
        {
            // Create every table up front so readers never meet a missing one.
            let txn = database.begin_write()?;
            txn.open_table(SUBMISSIONS)?;
            txn.open_table(PAYLOADS)?;
            txn.open_table(RENDITIONS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(READY)?;
            txn.open_table(BY_STATE)?;
            txn.open_table(EVENTS)?;
            txn.open_table(DEDUP_LOG)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(CHAIN)?;
            txn.open_table(PAUSES)?;
            txn.commit()?;
        }
        let blobs = Arc::new(blobs::BlobLog::open(&dir.join("blobs"))?);
        match committed_blobs(&database) {
            Ok(refs) => {
                let deleted = blobs.adopt(refs).context("cannot reclaim unreferenced blob segments")?;
                if !deleted.is_empty() {
                    tracing::info!(segments = ?deleted, "blob segments deleted: nothing refers to them");
                }
            }
            // Without a complete count nothing may be deleted: space is reclaimed at a later start.
            Err(e) => tracing::warn!(error = %e, "blob references not counted; no blob segment will be deleted"),
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let dedup =
            Arc::new(std::sync::RwLock::new(writer::load_dedup_index(&database).context("cannot read the dedup log")?));
        let pauses = writer::load_pauses(&database).context("cannot read the endpoint pauses")?;
        if !pauses.is_empty() {
            tracing::info!(endpoints = ?pauses.keys().collect::<Vec<_>>(), "paused endpoints stay paused until resumed");
        }
        drop(database);
        let (wdb, wblobs, wdedup, wshared) = (db.clone(), blobs.clone(), dedup.clone(), shared.clone());
        let writer = std::thread::Builder::new()
            .name("lotse-store-writer".into())
            .spawn(move || {
                writer::run(
                    wdb,
                    wblobs,
                    wdedup,
                    rx,
                    |endpoint| wshared.notify(endpoint).notify_waiters(),
                    &wshared.failing,
                )
            })
            .context("cannot start the store writer thread")?;
        Ok(EmbeddedStore {
            db,
            blobs,
            dedup,
            tx: Some(tx),
            writer: Some(writer),
            shared,
            pauses: Mutex::new(pauses),
            pause_writes: tokio::sync::Mutex::new(()),
        })
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
        tx.send(make(reply)).map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.get()?.begin_read().map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Due deliveries of `endpoint` not leased yet (up to `max`), and the earliest future
    /// not-before if none is due.
    fn due(&self, endpoint: &str, max: usize) -> Result<(Vec<Lease>, Option<Millis>), StoreError> {
        // The snapshot is taken, and the due deliveries it shows are marked as leased, under one
        // hold of the `leased` lock. A settle commits before it releases its delivery, so a
        // delivery not in `leased` now has its settle (its new not-before) in this snapshot.
        // (Marked under a second hold, as before, another worker could lease, settle and release
        // one in between, and the stale snapshot leased it again at once with its old attempt
        // number: a duplicate send, ahead of its backoff.)
        let (txn, picked, next_due) = {
            let mut leased = self.shared.leased();
            let txn = self.read()?;
            let (picked, next_due) = due_entries(&txn, endpoint, now_millis(), max, &leased)?;
            leased.extend(picked.iter().copied());
            (txn, picked, next_due)
        };
        if picked.is_empty() {
            return Ok((Vec::new(), next_due));
        }
        #[cfg(test)]
        {
            // Taken out first: the hook must not run under the hook's own lock.
            let hook = self.shared.after_scan.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(hook) = hook {
                hook();
            }
        }
        // Outside the lock: the bytes are read from the blob log (blocking I/O that other workers
        // must not wait for), and `send_dead` takes the lock itself.
        let mut leases = Vec::with_capacity(picked.len());
        let mut done = 0;
        if let Err(e) = self.lease_picked(&txn, &picked, &mut leases, &mut done) {
            // Nothing of this call is handed out, so every delivery it took is free again: one
            // left in `leased` would never be leased again (until a restart). Those it has gone
            // through and not handed out stay (see `lease_picked`).
            let mut leased = self.shared.leased();
            for id in leases.iter().map(|l| &l.delivery_id).chain(&picked[done..]) {
                leased.remove(id);
            }
            return Err(e);
        }
        Ok((leases, None))
    }

    /// Leases each of `picked` (already marked as leased) into `leases`; `done` counts those
    /// gone through. One that yields no lease stays marked: it is gone (so a broken entry cannot
    /// block its endpoint), or being sent dead (released when that is written).
    fn lease_picked(
        &self,
        txn: &redb::ReadTransaction,
        picked: &[DeliveryId],
        leases: &mut Vec<Lease>,
        done: &mut usize,
    ) -> Result<(), StoreError> {
        let deliveries = txn.open_table(DELIVERIES).map_err(unavailable)?;
        let subs = txn.open_table(SUBMISSIONS).map_err(unavailable)?;
        let payloads = txn.open_table(PAYLOADS).map_err(unavailable)?;
        let renditions = txn.open_table(RENDITIONS).map_err(unavailable)?;
        for id in picked {
            if let Some(lease) = self.lease_one(&deliveries, &subs, &payloads, &renditions, *id)? {
                leases.push(lease);
            }
            *done += 1;
        }
        Ok(())
    }

    /// The lease of one due delivery, `None` if it is gone or its bytes are unreadable (then it
    /// is sent dead).
    fn lease_one(
        &self,
        deliveries: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        subs: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        payloads: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        renditions: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        id: DeliveryId,
    ) -> Result<Option<Lease>, StoreError> {
        let Some(d) = get_delivery(deliveries, id)? else { return Ok(None) };
        let sub_key = d.submission_id.0.as_bytes();
        let rec: SubmissionRecord = match subs.get(sub_key.as_slice()).map_err(unavailable)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => return Ok(None),
        };
        let loaded = if d.has_rendition {
            self.rendition(renditions, id)
        } else {
            self.payload(payloads, d.submission_id).map(|p| (rec.content_type.clone(), p))
        };
        let (content_type, payload) = match loaded {
            Ok(l) => l,
            Err(StoreError::Corrupt(error)) => {
                // Bytes that fail their checksum (or are gone) will not get better: the
                // delivery goes dead with the reason, so it neither blocks its endpoint nor
                // vanishes.
                tracing::error!(delivery_id = %id, %error, "payload unreadable; the delivery goes dead");
                self.send_dead(id, d.attempts + 1, format!("the stored payload is unreadable: {error}"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(Lease {
            delivery_id: id,
            submission_id: d.submission_id,
            endpoint: d.endpoint.clone(),
            attempt: d.attempts + 1,
            budget_attempt: d.attempts + 1 - d.budget_base,
            message_id: rec.message_id.clone(),
            content_type,
            payload,
            token: 0,
        }))
    }

    fn rendition(
        &self,
        renditions: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        id: DeliveryId,
    ) -> Result<(String, Bytes), StoreError> {
        let v = renditions.get(id.0.as_bytes().as_slice()).map_err(unavailable)?;
        let v = v.ok_or_else(|| StoreError::Corrupt(format!("rendition of {id} missing")))?;
        let v = self.load(v.value(), || format!("rendition of {id}"))?;
        let (ct, body) =
            decode_rendition(&v).ok_or_else(|| StoreError::Corrupt(format!("rendition of {id} unreadable")))?;
        Ok((ct, Bytes::copy_from_slice(body)))
    }

    fn payload(
        &self,
        payloads: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
        id: SubmissionId,
    ) -> Result<Bytes, StoreError> {
        let v = payloads.get(id.0.as_bytes().as_slice()).map_err(unavailable)?;
        let v = v.ok_or_else(|| StoreError::Corrupt(format!("payload of {id} missing")))?;
        Ok(Bytes::from(self.load(v.value(), || format!("payload of {id}"))?))
    }

    /// Settles `id` as dead without waiting for the commit (from the read path).
    /// Settles `id` dead in the background; it stays in `leased` until that is written, and is
    /// released then either way (written: it is no longer due; failed, a full disk: it is due
    /// again and goes dead on its next lease).
    fn send_dead(&self, id: DeliveryId, attempt: u32, error: String) {
        let (reply, answer) = oneshot::channel();
        let shared = self.shared.clone();
        let release = move || {
            shared.leased().remove(&id);
        };
        match &self.tx {
            Some(tx)
                if tx.send(Op::Settle { delivery: id, attempt, outcome: Outcome::Dead { error }, reply }).is_ok() =>
            {
                tokio::spawn(async move {
                    let _ = answer.await;
                    release();
                });
            }
            _ => release(),
        }
    }

    /// The first receipt of a committed submission holding one of `digests`.
    fn known_duplicate(&self, digests: &[[u8; 16]]) -> Result<Option<Receipt>, StoreError> {
        let first = {
            let index = self.dedup.read().unwrap_or_else(|e| e.into_inner());
            digests.iter().find_map(|d| index.get(d).copied())
        };
        let Some(id) = first else { return Ok(None) };
        let txn = self.read()?;
        let subs = txn.open_table(SUBMISSIONS).map_err(unavailable)?;
        // Retention may have deleted it since the index was read: then the writer decides, with
        // the index as it is after that deletion.
        if subs.get(id.0.as_bytes().as_slice()).map_err(unavailable)?.is_none() {
            return Ok(None);
        }
        receipt_of(&subs, id).map(Some)
    }

    /// The bytes a PAYLOADS or RENDITIONS value refers to, read from the blob log.
    fn load(&self, stored: &[u8], what: impl Fn() -> String) -> Result<Vec<u8>, StoreError> {
        let r =
            blobs::decode(stored).ok_or_else(|| StoreError::Corrupt(format!("{}: unreadable reference", what())))?;
        self.blobs.read(&r).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof => {
                StoreError::Corrupt(format!("{}: {e}", what()))
            }
            _ => StoreError::Unavailable(format!("{}: {e}", what())),
        })
    }

    fn delivery_view(&self, id: DeliveryId, d: &DeliveryRecord) -> DeliveryView {
        DeliveryView {
            id,
            submission_id: d.submission_id,
            endpoint: d.endpoint.clone(),
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: (d.state == DeliveryState::Pending).then(|| rfc3339(d.not_before.max(d.updated_at))),
            last_error: d.last_error.clone(),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The due entries of `endpoint` in `txn` that `leased` does not hold (up to `max`, in work
/// order), and the earliest future not-before if the scan reached one.
fn due_entries(
    txn: &redb::ReadTransaction,
    endpoint: &str,
    now: Millis,
    max: usize,
    leased: &HashSet<DeliveryId>,
) -> Result<(Vec<DeliveryId>, Option<Millis>), StoreError> {
    let ready = txn.open_table(READY).map_err(unavailable)?;
    let start = ready_key(endpoint, 0, DeliveryId(uuid::Uuid::nil()));
    let end = ready_key(endpoint, u64::MAX, DeliveryId(uuid::Uuid::max()));
    let mut picked = Vec::new();
    for entry in ready.range(start.as_slice()..=end.as_slice()).map_err(unavailable)? {
        let (k, _) = entry.map_err(unavailable)?;
        let Some((not_before, id)) = parse_ready_key(endpoint, k.value()) else { continue };
        if not_before > now {
            return Ok((picked, Some(not_before)));
        }
        if !leased.contains(&id) {
            picked.push(id);
            if picked.len() >= max {
                break;
            }
        }
    }
    Ok((picked, None))
}

/// Every blob reference the database holds (payloads and renditions); an error if one cannot
/// be read, since a count that misses one could delete its segment.
fn committed_blobs(db: &redb::Database) -> anyhow::Result<Vec<blobs::BlobRef>> {
    use redb::ReadableTable;
    let txn = db.begin_read()?;
    let mut refs = Vec::new();
    for table in [PAYLOADS, RENDITIONS] {
        for entry in txn.open_table(table)?.iter()? {
            let (k, v) = entry?;
            let r = blobs::decode(v.value())
                .with_context(|| format!("unreadable blob reference under {}", hex::encode(k.value())))?;
            refs.push(r);
        }
    }
    Ok(refs)
}

/// Most submissions one expiry transaction deletes: the writer's turn stays short.
const EXPIRE_BATCH: usize = 256;
/// Most state-index entries one expiry scan reads before it hands what it found to the writer.
const EXPIRE_SCAN: usize = 4096;

/// One step of the expiry scan over the deliveries in `state` (oldest first), after `from`:
/// the submissions `cutoffs` lets go (at most [`EXPIRE_BATCH`]), and where to go on (`None`:
/// the scan reached deliveries created after the cutoff, which cannot have ended before it).
fn expiry_candidates(
    db: &db::Db,
    state: DeliveryState,
    cutoffs: Cutoffs,
    from: Option<[u8; 17]>,
) -> Result<(Vec<SubmissionId>, Option<[u8; 17]>), StoreError> {
    use std::ops::Bound;
    let Some(cutoff) = (match state {
        DeliveryState::Delivered => cutoffs.delivered,
        DeliveryState::Dead => cutoffs.dead,
        DeliveryState::Pending => None,
    }) else {
        return Ok((Vec::new(), None));
    };
    let txn = db.get()?.begin_read().map_err(unavailable)?;
    let by_state = txn.open_table(BY_STATE).map_err(unavailable)?;
    let deliveries = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let subs = txn.open_table(SUBMISSIONS).map_err(unavailable)?;
    let lo = match from {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included(state_key(state, DeliveryId(uuid::Uuid::nil()))),
    };
    let hi = Bound::Included(state_key(state, DeliveryId(uuid::Uuid::max())));
    let range = (lo.as_ref().map(|k| k.as_slice()), hi.as_ref().map(|k| k.as_slice()));
    let mut found: Vec<SubmissionId> = Vec::new();
    let mut last = None;
    for (scanned, entry) in by_state.range::<&[u8]>(range).map_err(unavailable)?.enumerate() {
        if scanned >= EXPIRE_SCAN || found.len() >= EXPIRE_BATCH {
            return Ok((found, last));
        }
        let (k, _) = entry.map_err(unavailable)?;
        let key: [u8; 17] = match k.value().try_into() {
            Ok(key) => key,
            Err(_) => continue,
        };
        last = Some(key);
        let Ok(u) = uuid::Uuid::from_slice(&key[1..]) else { continue };
        // Ids are v7: created at their time stamp, so changed at or after it.
        if DeliveryId(u).created_at() > cutoff {
            return Ok((found, None));
        }
        let Some(d) = get_delivery(&deliveries, DeliveryId(u))? else { continue };
        if !cutoffs.lets_go(d.state, d.updated_at) || found.last() == Some(&d.submission_id) {
            continue;
        }
        // The writer checks every delivery again; here only what saves it a wasted look.
        let Some(v) = subs.get(d.submission_id.0.as_bytes().as_slice()).map_err(unavailable)? else { continue };
        let rec: SubmissionRecord =
            serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if writer::let_go(&deliveries, &rec, cutoffs)?.is_some() && !found.contains(&d.submission_id) {
            found.push(d.submission_id);
        }
    }
    Ok((found, None))
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError> {
        let digests: Vec<[u8; 16]> = submission.dedup_keys.iter().map(|k| dedup_digest(k)).collect();
        // A known duplicate is answered from the committed index and record, before its bytes
        // are written anywhere (a partner's resend storm must not fill the disk). Duplicates
        // within one batch are still found by the writer.
        if let Some(receipt) = self.known_duplicate(&digests)? {
            return Ok(Intake::Duplicate(receipt));
        }
        let prepared = prepare::prepare(submission, digests, now_millis(), &self.blobs)?;
        self.write(|reply| Op::Intake(Box::new(prepared), reply)).await
    }

    async fn lease(&self, endpoint: &str, max: usize, wait: Duration) -> Result<Vec<Lease>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.shared.notify(endpoint);
        loop {
            // Register interest before looking, so a commit between the scan and the wait
            // still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (leases, next_due) = self.due(endpoint, max)?;
            if !leases.is_empty() {
                return Ok(leases);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(due) = next_due {
                let ms = due.saturating_sub(now_millis());
                until = until.min(now + Duration::from_millis(ms));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), StoreError> {
        let id = lease.delivery_id;
        let r = self.write(|reply| Op::Settle { delivery: id, attempt: lease.attempt, outcome, reply }).await;
        // Release the lease whatever happened: on failure the entry is still in READY and will be
        // leased (and sent) again, which is at-least-once.
        self.shared.leased().remove(&id);
        r
    }

    async fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, StoreError> {
        let txn = self.read()?;
        let subs = txn.open_table(SUBMISSIONS).map_err(unavailable)?;
        let Some(v) = subs.get(id.0.as_bytes().as_slice()).map_err(unavailable)? else { return Ok(None) };
        let rec: SubmissionRecord =
            serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let deliveries_t = txn.open_table(DELIVERIES).map_err(unavailable)?;
        let mut deliveries = Vec::new();
        for d in &rec.receipt.deliveries {
            if let Some(r) = get_delivery(&deliveries_t, d.id)? {
                deliveries.push(self.delivery_view(d.id, &r));
            }
        }
        let events_t = txn.open_table(EVENTS).map_err(unavailable)?;
        let mut events = Vec::new();
        for entry in
            events_t.range(event_key(id, 0).as_slice()..=event_key(id, u32::MAX).as_slice()).map_err(unavailable)?
        {
            let (k, v) = entry.map_err(unavailable)?;
            let seq = u32::from_be_bytes(k.value()[16..20].try_into().unwrap_or([0; 4]));
            let e: EventRecord = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            events.push(EventView {
                seq,
                at: rfc3339(e.at),
                kind: e.kind,
                delivery_id: e.delivery_id,
                attempt: e.attempt,
                detail: e.detail,
                hash: e.hash,
            });
        }
        let state = submission_state(&deliveries);
        Ok(Some(SubmissionView {
            id,
            state,
            partner: rec.partner,
            received_at: rfc3339(rec.received_at),
            route: rec.route,
            meta: rec.meta,
            deliveries,
            events,
        }))
    }

    async fn submission_by_key(&self, key: &str) -> Result<Option<SubmissionId>, StoreError> {
        let index = self.dedup.read().unwrap_or_else(|e| e.into_inner());
        Ok(index.get(&dedup_digest(key)).copied())
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryView>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(DELIVERIES).map_err(unavailable)?;
        Ok(get_delivery(&t, id)?.map(|d| self.delivery_view(id, &d)))
    }

    async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError> {
        let limit = filter.effective_limit();
        let txn = self.read()?;
        let t = txn.open_table(DELIVERIES).map_err(unavailable)?;
        let mut out = Vec::new();
        if let Some(sid) = filter.submission_id {
            let subs = txn.open_table(SUBMISSIONS).map_err(unavailable)?;
            if let Some(v) = subs.get(sid.0.as_bytes().as_slice()).map_err(unavailable)? {
                let rec: SubmissionRecord =
                    serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                for d in rec.receipt.deliveries {
                    if let Some(r) = get_delivery(&t, d.id)?
                        && matches_filter(&r, filter)
                    {
                        out.push(self.delivery_view(d.id, &r));
                    }
                }
            }
            return Ok(out);
        }
        let states: Vec<DeliveryState> = match filter.state {
            Some(s) => vec![s],
            None => vec![DeliveryState::Pending, DeliveryState::Dead, DeliveryState::Delivered],
        };
        // Newest first across the states: each state's range of the index is walked from its
        // newest id (ids are v7, so in time order), and the newest of their heads is taken next.
        let by_state = txn.open_table(BY_STATE).map_err(unavailable)?;
        let mut ranges = Vec::with_capacity(states.len());
        for s in states {
            let lo = state_key(s, DeliveryId(uuid::Uuid::nil()));
            let hi = state_key(s, DeliveryId(uuid::Uuid::max()));
            let mut range = by_state.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)?.rev();
            let head = next_in_state(&mut range, s)?;
            ranges.push((range, s, head));
        }
        loop {
            // `None` sorts before every id: no head left in any state ends the walk.
            let Some((range, s, head)) = ranges.iter_mut().max_by_key(|(_, _, head)| *head) else { return Ok(out) };
            let Some(id) = head.take() else { return Ok(out) };
            *head = next_in_state(range, *s)?;
            if let Some(r) = get_delivery(&t, id)?
                && matches_filter(&r, filter)
            {
                out.push(self.delivery_view(id, &r));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }

    async fn replay(&self, id: DeliveryId, actor: &str, reason: &str) -> Result<ReplayOutcome, StoreError> {
        let (actor, reason) = (actor.to_owned(), reason.to_owned());
        self.write(|reply| Op::Replay { delivery: id, actor, reason, reply }).await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(COUNTERS).map_err(unavailable)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(t.get(k).map_err(unavailable)?.map(|v| v.value()).unwrap_or(0)) };
        Ok(Counts {
            submissions: get("submissions")?,
            pending: get("pending")?,
            delivered: get("delivered")?,
            dead: get("dead")?,
        })
    }

    async fn expire(&self, cutoffs: Cutoffs) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for state in [DeliveryState::Delivered, DeliveryState::Dead] {
            let mut from = None;
            loop {
                let db = self.db.clone();
                let (found, next) = tokio::task::spawn_blocking(move || expiry_candidates(&db, state, cutoffs, from))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("expiry scan failed: {e}")))??;
                if !found.is_empty() {
                    deleted += self.write(|reply| Op::Expire { submissions: found, cutoffs, reply }).await?;
                }
                match next {
                    Some(k) => from = Some(k),
                    None => break,
                }
            }
        }
        Ok(deleted)
    }

    /// In `PAUSES`, committed before the answer: a pause the operator was told of holds after a
    /// restart, until a resume.
    async fn set_paused(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let pause =
            paused.then(|| Pause { actor: actor.to_owned(), at: now_millis(), reason: reason.map(str::to_owned) });
        let _order = self.pause_writes.lock().await;
        let kept = pause.clone();
        self.write(|reply| Op::Pause { endpoint: endpoint.to_owned(), pause: kept, reply }).await?;
        // A poisoned lock (a panic elsewhere) still holds a consistent map.
        let mut pauses = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        match pause {
            Some(p) => pauses.insert(endpoint.to_owned(), p),
            None => pauses.remove(endpoint),
        };
        Ok(())
    }

    fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        self.pauses.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn health(&self) -> Result<(), StoreError> {
        // A writer that stopped (it panicked) takes no write again: every intake would get 503.
        if self.tx.as_ref().is_none_or(|tx| tx.is_closed()) || self.writer.as_ref().is_none_or(|w| w.is_finished()) {
            return Err(StoreError::Unavailable("store writer stopped".into()));
        }
        self.db.get()?;
        if self.shared.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Unavailable("the last intakes could not be stored (is the disk full?)".into()));
        }
        Ok(())
    }
}

/// An entry of `BY_STATE` as a range yields it.
type StateEntry =
    Result<(redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, ()>), redb::StorageError>;

/// The next delivery id of a walk over the `state` range of `BY_STATE` (keys that are not
/// one are skipped).
fn next_in_state(
    range: &mut impl Iterator<Item = StateEntry>,
    state: DeliveryState,
) -> Result<Option<DeliveryId>, StoreError> {
    let b = state_byte(state);
    for entry in range {
        let (k, _) = entry.map_err(unavailable)?;
        let key = k.value();
        if key.first() != Some(&b) {
            continue;
        }
        if let Ok(u) = uuid::Uuid::from_slice(&key[1..]) {
            return Ok(Some(DeliveryId(u)));
        }
    }
    Ok(None)
}

fn matches_filter(d: &DeliveryRecord, f: &DeliveryFilter) -> bool {
    f.state.is_none_or(|s| s == d.state) && f.endpoint.as_deref().is_none_or(|e| e == d.endpoint)
}

/// Derived, never stored: in progress while any delivery is pending.
pub fn submission_state(deliveries: &[DeliveryView]) -> SubmissionState {
    if deliveries.iter().any(|d| d.state == DeliveryState::Pending) {
        SubmissionState::InProgress
    } else if deliveries.iter().all(|d| d.state == DeliveryState::Delivered) {
        SubmissionState::Delivered
    } else {
        SubmissionState::Failed
    }
}

#[cfg(test)]
mod tests;
