//! Embedded-store specifics; the behaviour shared with RabbitMQ is in `store::conformance`.

use super::*;
use std::time::Duration;

fn new_sub(endpoints: &[&str], dedup: &[&str]) -> NewSubmission {
    NewSubmission {
        id: SubmissionId::new(),
        partner: "p".into(),
        dedup_keys: dedup.iter().map(|s| s.to_string()).collect(),
        received_at: now_millis(),
        content_type: "application/xml".into(),
        meta: serde_json::json!({"root": "r"}),
        message_id: Some("m-1".into()),
        route: "r".into(),
        original: Bytes::from_static(b"<r/>"),
        deliveries: endpoints
            .iter()
            .map(|e| NewDelivery { id: DeliveryId::new(), endpoint: e.to_string(), rendition: None })
            .collect(),
        notes: vec![],
    }
}

#[tokio::test]
async fn concurrent_intakes_share_commits_and_all_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = {
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let s = store.clone();
            tasks.spawn(async move { s.intake(new_sub(&["a"], &[])).await });
        }
        let mut ids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r.expect("task").expect("intake") {
                Intake::Accepted(rec) => ids.push(rec.submission_id),
                Intake::Duplicate(_) => panic!("no dedup keys, no duplicates"),
            }
        }
        ids
    };
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    for id in &ids {
        assert!(store.submission(*id).await.expect("read").is_some(), "{id} lost");
    }
    assert_eq!(store.counts().await.expect("counts").pending, 200);
}

#[tokio::test]
async fn event_log_is_hash_chained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let Intake::Accepted(r) = store.intake(new_sub(&["a"], &[])).await.expect("intake") else { panic!("accepted") };
    let lease = store.lease("a", 1, Duration::from_millis(100)).await.expect("lease").pop().expect("one");
    store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await.expect("settle");
    let v = store.submission(r.submission_id).await.expect("read").expect("exists");
    let kinds: Vec<&str> = v.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["received", "routed", "attempt", "delivered"]);
    assert_eq!(crate::store::verify_event_chain(&v.events), Ok(()));
}

#[tokio::test]
async fn a_lease_is_exclusive_until_settled_and_returns_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store.intake(new_sub(&["a"], &[])).await.expect("intake");
        let first = store.lease("a", 10, Duration::from_millis(50)).await.expect("lease");
        assert_eq!(first.len(), 1);
        let again = store.lease("a", 10, Duration::from_millis(50)).await.expect("lease");
        assert!(again.is_empty(), "leased twice");
        // Dropped without settling: the process "dies".
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let back = store.lease("a", 10, Duration::from_millis(50)).await.expect("lease");
    assert_eq!(back.len(), 1, "an unsettled lease comes back after a restart");
    assert_eq!(back[0].attempt, 1);
}

#[tokio::test]
async fn payloads_live_in_the_blob_log_and_a_corrupted_one_goes_dead_without_blocking_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let mut bad = new_sub(&["a"], &[]);
    bad.original = Bytes::from_static(b"<r>payload that will rot on disk</r>");
    let Intake::Accepted(bad) = store.intake(bad).await.expect("intake") else { panic!("accepted") };
    let mut good = new_sub(&["a"], &[]);
    good.original = Bytes::from_static(b"<r>intact</r>");
    store.intake(good).await.expect("intake");
    // The bytes are in a segment file, not in redb.
    let segments: Vec<_> = std::fs::read_dir(dir.path().join("blobs")).expect("blobs dir").collect();
    assert_eq!(segments.len(), 1);
    let segment = segments.into_iter().next().expect("one").expect("entry").path();
    let content = std::fs::read(&segment).expect("read segment");
    let at = content.windows(4).position(|w| w == b"rot ").expect("payload bytes in the segment");
    // Flip one byte of the first payload.
    let mut rotten = content.clone();
    rotten[at] = b'R';
    std::fs::write(&segment, &rotten).expect("corrupt");

    let leases = store.lease("a", 10, Duration::from_millis(200)).await.expect("lease");
    assert_eq!(leases.len(), 1, "the intact payload is still handed out");
    assert_eq!(&leases[0].payload[..], b"<r>intact</r>");
    // The rotten one is settled dead (asynchronously) with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let d = loop {
        let v = store.submission(bad.submission_id).await.expect("read").expect("exists");
        if v.deliveries[0].state == DeliveryState::Dead || tokio::time::Instant::now() > deadline {
            break v.deliveries[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(d.state, DeliveryState::Dead);
    assert!(d.last_error.as_deref().unwrap_or("").contains("unreadable"), "{:?}", d.last_error);
    // Once its dead state is written, it is no longer held as leased (had that write failed, it
    // would be due again, not held forever).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.shared.leased().contains(&d.id) {
        assert!(tokio::time::Instant::now() < deadline, "the dead delivery stays marked as leased");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dedup_holds_within_a_batch_and_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        // Concurrent intakes of one key (found by the writer within a batch, or by the index
        // after the first commit): exactly one is accepted.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let s = store.clone();
            tasks.spawn(async move { s.intake(new_sub(&["a"], &["msg:p:same"])).await });
        }
        let mut accepted = Vec::new();
        let mut duplicates = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r.expect("task").expect("intake") {
                Intake::Accepted(rec) => accepted.push(rec),
                Intake::Duplicate(rec) => duplicates.push(rec),
            }
        }
        assert_eq!(accepted.len(), 1, "one key, one submission");
        assert!(duplicates.iter().all(|d| d.submission_id == accepted[0].submission_id));
        assert_eq!(store.counts().await.expect("counts").submissions, 1);
        accepted.remove(0)
    };
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    match store.intake(new_sub(&["a"], &["idem:p:other", "msg:p:same"])).await.expect("intake") {
        Intake::Duplicate(r) => assert_eq!(r.submission_id, first.submission_id),
        Intake::Accepted(_) => panic!("the dedup index was not rebuilt at open"),
    }
    // A new key is still accepted, and only committed keys count.
    assert!(matches!(store.intake(new_sub(&["a"], &["msg:p:new"])).await.expect("intake"), Intake::Accepted(_)));
}

#[tokio::test]
async fn a_new_data_dir_and_its_files_are_for_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("data");
    let store = EmbeddedStore::open(&dir).expect("open");
    store.intake(new_sub(&["a"], &[])).await.expect("intake");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("blobs")), 0o700);
    assert_eq!(mode(&dir.join("lotse.redb")), 0o600);
    for segment in std::fs::read_dir(dir.join("blobs")).expect("blobs") {
        assert_eq!(mode(&segment.expect("entry").path()), 0o600);
    }
}

#[tokio::test]
async fn a_resend_of_a_committed_message_writes_no_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let Intake::Accepted(first) = store.intake(new_sub(&["a"], &["msg:p:once"])).await.expect("intake") else {
        panic!("accepted")
    };
    let blob_bytes = || -> u64 {
        std::fs::read_dir(dir.path().join("blobs"))
            .expect("blobs")
            .map(|e| e.expect("entry").metadata().expect("metadata").len())
            .sum()
    };
    let before = blob_bytes();
    assert!(before > 0, "the first payload is in the blob log");
    for _ in 0..3 {
        match store.intake(new_sub(&["a"], &["msg:p:once"])).await.expect("intake") {
            Intake::Duplicate(r) => assert_eq!(r, first),
            Intake::Accepted(_) => panic!("a resend was taken as new"),
        }
    }
    assert_eq!(blob_bytes(), before, "a known duplicate wrote payload bytes");
    assert_eq!(store.counts().await.expect("counts").submissions, 1);
}

// A full disk (here: the blob segment's writes fail) answers 503 for the intakes whose bytes
// could not be written, never commits a reference to them, and intake works again once writes
// do, without a restart.
#[tokio::test]
async fn a_failed_blob_write_refuses_its_intakes_and_the_store_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let writable = blobs::tests::break_current_segment(&store.blobs);
    let lost = new_sub(&["a"], &["msg:p:lost"]);
    let lost_id = lost.id;
    let answer = store.intake(lost).await;
    assert!(matches!(answer, Err(StoreError::Unavailable(_))), "intake with unwritable bytes: {answer:?}");
    assert!(store.submission(lost_id).await.expect("read").is_none(), "a submission without its bytes was committed");
    assert!(store.health().is_err(), "healthy while intakes fail");
    blobs::tests::restore_current_segment(&store.blobs, writable);

    // The same message again (same dedup key): accepted now, its bytes readable at lease.
    let mut again = new_sub(&["a"], &["msg:p:lost"]);
    again.original = Bytes::from_static(b"<r>sent again</r>");
    let Intake::Accepted(r) = store.intake(again).await.expect("intake after the failure") else {
        panic!("the refused first attempt took the dedup key")
    };
    let lease = store.lease("a", 1, Duration::from_millis(200)).await.expect("lease").pop().expect("one lease");
    assert_eq!((lease.submission_id, &lease.payload[..]), (r.submission_id, &b"<r>sent again</r>"[..]));
    assert_eq!(store.counts().await.expect("counts").submissions, 1);
    assert!(store.health().is_ok(), "not healthy once intake works: {:?}", store.health());
}

// A lease that fails half-way (here its payload's segment cannot be read) hands out nothing and
// keeps nothing: once the payload is readable again, the delivery is leased. (Before, the
// deliveries it had taken stayed marked as leased until a restart: never sent.)
#[tokio::test]
async fn a_failed_lease_releases_every_delivery_it_took() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let Intake::Accepted(r) = store.intake(new_sub(&["a"], &[])).await.expect("intake") else { panic!("accepted") };
        r.deliveries[0].id
    };
    // Reopened, the store writes a new segment and reads the first one from its file.
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let segment = dir.path().join("blobs").join("00000001.seg");
    let aside = dir.path().join("aside.seg");
    std::fs::rename(&segment, &aside).expect("move the segment aside");
    std::fs::create_dir(&segment).expect("a directory in its place");
    let failed = store.lease("a", 10, Duration::from_millis(50)).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "lease of an unreadable payload: {failed:?}");
    std::fs::remove_dir(&segment).expect("remove the directory");
    std::fs::rename(&aside, &segment).expect("put the segment back");
    let leases = store.lease("a", 10, Duration::from_millis(200)).await.expect("lease");
    assert_eq!(leases.iter().map(|l| l.delivery_id).collect::<Vec<_>>(), [id], "the delivery stayed taken");
}

/// A redb backend on a file whose writes fail while `full` is set, as on a full disk.
#[derive(Debug)]
struct FullDisk {
    file: redb::backends::FileBackend,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (test)"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FullDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

// After an I/O error redb refuses everything (`PreviousIo`) until it is opened again: the store
// answers 503 meanwhile, reopens the database by itself once writes work again, and keeps what
// was committed before. (Before, it answered 503 until the process was restarted.)
#[tokio::test]
async fn the_database_is_reopened_after_an_io_error_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lotse.redb");
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, f) = (path.clone(), full.clone());
    let opener: db::Opener = Box::new(move || {
        // Opening after an I/O error runs recovery, which writes: it fails too while the disk is full.
        if f.load(std::sync::atomic::Ordering::SeqCst) {
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (test)");
            return Err(redb::DatabaseError::Storage(redb::StorageError::Io(full)));
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p)?;
        let file = redb::backends::FileBackend::new(file)?;
        redb::Database::builder().create_with_backend(FullDisk { file, full: f.clone() })
    });
    let db = db::Db::with_opener(&path, opener).expect("open");
    let store = EmbeddedStore::start(dir.path(), Arc::new(db)).expect("start");
    assert!(store.health().is_ok());
    let Intake::Accepted(before) = store.intake(new_sub(&["a"], &["msg:p:before"])).await.expect("intake") else {
        panic!("accepted")
    };

    full.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = store.intake(new_sub(&["a"], &["msg:p:during"])).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "intake on a full disk: {refused:?}");
    // The reopen right after the error failed too: no database until a later one succeeds.
    let refused = store.intake(new_sub(&["a"], &["msg:p:during"])).await;
    assert!(matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("reopen")), "{refused:?}");
    assert!(matches!(store.submission(before.submission_id).await, Err(StoreError::Unavailable(_))));
    assert!(store.health().is_err(), "healthy without a database");

    full.store(false, std::sync::atomic::Ordering::SeqCst);
    // Ready again by itself, before any submission comes: a load balancer sends none to a
    // process whose readiness says 503, so only the store's own check can end the outage.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = store.health() {
        assert!(std::time::Instant::now() < deadline, "not ready 10 s after the disk had room, with no intake: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reopens come at most once a second: within a few seconds intake works again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        match store.intake(new_sub(&["a"], &["msg:p:during"])).await {
            Ok(Intake::Accepted(r)) => break r,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "intake still fails 10 s after the disk had room: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(store.health().is_ok(), "not healthy after the reopen: {:?}", store.health());
    for id in [before.submission_id, after.submission_id] {
        assert!(store.submission(id).await.expect("read").is_some(), "{id} is not readable after the reopen");
    }
    // The dedup index came back with the database: the first message is still known.
    let again = store.intake(new_sub(&["a"], &["msg:p:before"])).await.expect("intake");
    assert!(matches!(&again, Intake::Duplicate(r) if r.submission_id == before.submission_id), "{again:?}");
    assert_eq!(store.counts().await.expect("counts").submissions, 2);
}

// The work queue is ordered by the time each attempt became due: a retry that came due goes
// before a delivery taken in after it (before, new deliveries always went first, so under a
// backlog a case that had failed once waited behind every newer one).
#[tokio::test]
async fn a_due_retry_goes_before_a_newer_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let Intake::Accepted(first) = store.intake(new_sub(&["a"], &[])).await.expect("intake") else { panic!() };
    let lease = store.lease("a", 1, Duration::from_millis(200)).await.expect("lease").pop().expect("one");
    let retry = Outcome::Retry { not_before: now_millis() + 30, error: "HTTP 503".into() };
    store.settle(lease, retry).await.expect("settle");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let Intake::Accepted(newer) = store.intake(new_sub(&["a"], &[])).await.expect("intake") else { panic!() };
    let order: Vec<DeliveryId> =
        store.lease("a", 2, Duration::from_millis(200)).await.expect("lease").iter().map(|l| l.delivery_id).collect();
    assert_eq!(order, [first.deliveries[0].id, newer.deliveries[0].id], "the due retry is not first");
}

/// Leases every due delivery of `endpoint` and settles each with `outcome`; returns how many.
async fn settle_all(store: &EmbeddedStore, endpoint: &str, outcome: Outcome) -> usize {
    let mut n = 0;
    loop {
        let leases = store.lease(endpoint, 64, Duration::from_millis(50)).await.expect("lease");
        if leases.is_empty() {
            return n;
        }
        for l in leases {
            store.settle(l, outcome.clone()).await.expect("settle");
            n += 1;
        }
    }
}

fn accepted(i: Intake) -> Receipt {
    match i {
        Intake::Accepted(r) => r,
        Intake::Duplicate(r) => panic!("{} was taken for a duplicate", r.submission_id),
    }
}

#[tokio::test]
async fn retention_deletes_finished_submissions_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let delivered = accepted(store.intake(new_sub(&["a"], &["msg:p:A"])).await.expect("intake"));
    let dead = accepted(store.intake(new_sub(&["b"], &["msg:p:B"])).await.expect("intake"));
    let pending = accepted(store.intake(new_sub(&["c"], &["msg:p:C"])).await.expect("intake"));
    let mixed = accepted(store.intake(new_sub(&["a", "b"], &["msg:p:D"])).await.expect("intake"));
    assert_eq!(settle_all(&store, "a", Outcome::Delivered { via: Handover::Http(200) }).await, 2);
    assert_eq!(settle_all(&store, "b", Outcome::Dead { error: "HTTP 400".into() }).await, 2);
    let later = now_millis() + 1_000;

    // Cutoffs before every change delete nothing.
    assert_eq!(store.expire(Cutoffs { delivered: Some(1), dead: Some(1) }).await.expect("expire"), 0);
    // Delivered ones only: the dead and the pending stay, and so does the submission with one
    // delivery delivered and one dead.
    assert_eq!(store.expire(Cutoffs { delivered: Some(later), dead: None }).await.expect("expire"), 1);
    assert!(store.submission(delivered.submission_id).await.expect("read").is_none(), "not deleted");
    assert!(store.delivery(delivered.deliveries[0].id).await.expect("read").is_none(), "delivery left");
    assert_eq!(store.submission_by_key("msg:p:A").await.expect("find"), None, "dedup key left");
    for kept in [&dead, &pending, &mixed] {
        assert!(store.submission(kept.submission_id).await.expect("read").is_some(), "{} deleted", kept.submission_id);
    }
    let c = store.counts().await.expect("counts");
    assert_eq!((c.submissions, c.pending, c.delivered, c.dead), (3, 1, 1, 2));
    // A submission that has become pending again since it was picked stays (the writer checks).
    let again = store
        .write(|reply| Op::Expire {
            submissions: vec![pending.submission_id],
            cutoffs: Cutoffs { delivered: Some(later), dead: Some(later) },
            reply,
        })
        .await
        .expect("expire");
    assert_eq!(again, 0, "a pending submission was deleted");

    // The deleted message's id is free again: a resend is a new submission.
    let resent = accepted(store.intake(new_sub(&["a"], &["msg:p:A"])).await.expect("resend"));
    assert_ne!(resent.submission_id, delivered.submission_id);

    assert_eq!(store.expire(Cutoffs { delivered: Some(later), dead: Some(later) }).await.expect("expire"), 2);
    for gone in [&dead, &mixed] {
        assert!(store.submission(gone.submission_id).await.expect("read").is_none(), "{} kept", gone.submission_id);
    }
    let c = store.counts().await.expect("counts");
    assert_eq!((c.submissions, c.pending, c.delivered, c.dead), (2, 2, 0, 0));
    let listed = store.deliveries(&DeliveryFilter::default()).await.expect("list");
    assert_eq!(listed.len(), 2, "deleted deliveries are still listed: {listed:?}");

    // All of it survives a reopen: the dedup index is rebuilt without the deleted keys.
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(store.submission_by_key("msg:p:D").await.expect("find"), None);
    assert_eq!(store.submission_by_key("msg:p:A").await.expect("find"), Some(resent.submission_id));
}

#[tokio::test]
async fn retention_goes_through_more_than_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let n = EXPIRE_BATCH * 2 + 17;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let s = store.clone();
        tasks.spawn(async move { s.intake(new_sub(&["a"], &[])).await });
    }
    while let Some(r) = tasks.join_next().await {
        accepted(r.expect("task").expect("intake"));
    }
    assert_eq!(settle_all(&store, "a", Outcome::Delivered { via: Handover::Http(200) }).await, n);
    let cutoffs = Cutoffs { delivered: Some(now_millis() + 1_000), dead: None };
    assert_eq!(store.expire(cutoffs).await.expect("expire"), n as u64);
    assert_eq!(store.counts().await.expect("counts").submissions, 0);
    assert_eq!(store.expire(cutoffs).await.expect("expire"), 0);
}

/// The blob segment files in `dir`, by number.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .expect("blobs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn retention_deletes_a_blob_segment_once_nothing_refers_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let first = accepted(store.intake(new_sub(&["a"], &[])).await.expect("intake"));
        let second = accepted(store.intake(new_sub(&["b"], &[])).await.expect("intake"));
        (first, second)
    };
    // A reopened store appends to a new segment; the old one holds both payloads.
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(segments(dir.path()), ["00000001.seg", "00000002.seg"]);
    let third = accepted(store.intake(new_sub(&["a"], &[])).await.expect("intake"));
    assert_eq!(settle_all(&store, "a", Outcome::Delivered { via: Handover::Http(200) }).await, 2);
    let cutoffs = Cutoffs { delivered: Some(now_millis() + 1_000), dead: None };

    // One of the old segment's two payloads is deleted: the segment stays.
    assert_eq!(store.expire(cutoffs).await.expect("expire"), 2);
    assert!(store.submission(first.submission_id).await.expect("read").is_none());
    assert!(store.submission(third.submission_id).await.expect("read").is_none());
    assert_eq!(segments(dir.path()), ["00000001.seg", "00000002.seg"], "a segment still referred to was deleted");
    let leases = store.lease("b", 1, Duration::from_millis(100)).await.expect("lease");
    assert_eq!(&leases[0].payload[..], b"<r/>", "the remaining payload is unreadable");

    // The last one goes: so does its segment, but not the one being appended to.
    store
        .settle(leases.into_iter().next().expect("one"), Outcome::Delivered { via: Handover::Http(200) })
        .await
        .expect("settle");
    assert_eq!(store.expire(cutoffs).await.expect("expire"), 1);
    assert!(store.submission(second.submission_id).await.expect("read").is_none());
    assert_eq!(segments(dir.path()), ["00000002.seg"]);
    let fourth = accepted(store.intake(new_sub(&["a"], &[])).await.expect("intake"));
    let leases = store.lease("a", 1, Duration::from_millis(100)).await.expect("lease");
    assert_eq!(leases[0].submission_id, fourth.submission_id);
    assert_eq!(&leases[0].payload[..], b"<r/>");
}

// Twins sent at the same moment both pass the known-duplicate check and append their bytes; the
// writer finds the later ones in the batch. Their references must not count for the segment,
// or it is never deleted while the process runs (only the next start would find it unused).
#[tokio::test]
async fn a_duplicate_found_by_the_writer_gives_its_bytes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let twins = (0..8).map(|_| store.intake(new_sub(&["a"], &["msg:p:twin"])));
    let results: Vec<Intake> = futures::future::join_all(twins).await.into_iter().map(|r| r.expect("intake")).collect();
    let first = results.iter().filter(|i| matches!(i, Intake::Accepted(_))).count();
    assert_eq!(first, 1, "one of the twins is stored");
    // The fresh store appends to segment 1; only the stored twin refers to it.
    assert_eq!(store.blobs.live(1), 1, "a duplicate still counts for its segment");
    let leases = store.lease("a", 8, Duration::from_millis(100)).await.expect("lease");
    assert_eq!(leases.len(), 1);
    assert_eq!(&leases[0].payload[..], b"<r/>");
}

/// Flips one byte of the payload `marker` (4 bytes) in the only blob segment of `dir`.
fn rot_payload(dir: &std::path::Path, marker: &[u8]) {
    let segments: Vec<_> = std::fs::read_dir(dir.join("blobs")).expect("blobs dir").collect();
    assert_eq!(segments.len(), 1);
    let segment = segments.into_iter().next().expect("one").expect("entry").path();
    let mut content = std::fs::read(&segment).expect("read segment");
    let at = content.windows(marker.len()).position(|w| w == marker).expect("payload bytes in the segment");
    content[at] ^= 0x20;
    std::fs::write(&segment, &content).expect("corrupt");
}

/// Runs `lease` on a thread of its own (a lease that deadlocks cannot hang the test's runtime);
/// its answer, or `None` if none came within 10 s.
fn lease_on_a_thread(store: Arc<EmbeddedStore>, max: usize, wait: Duration) -> Option<Result<Vec<Lease>, StoreError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _ = tx.send(rt.block_on(store.lease("a", max, wait)));
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

// An unreadable payload is sent dead from within the lease; with the writer gone (its channel
// closed) the delivery is released at once instead, which took the `leased` lock the lease
// still held: the lease never returned (a deadlock), and every later lease of the store hung.
#[tokio::test]
async fn an_unreadable_payload_with_the_writer_gone_does_not_hang_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = EmbeddedStore::open(dir.path()).expect("open");
    let mut bad = new_sub(&["a"], &[]);
    bad.original = Bytes::from_static(b"<r>rots on disk</r>");
    let Intake::Accepted(bad) = store.intake(bad).await.expect("intake") else { panic!("accepted") };
    rot_payload(dir.path(), b"rots");
    store.tx.take();
    let store = Arc::new(store);
    let answer = lease_on_a_thread(store.clone(), 10, Duration::ZERO).expect("the lease hung");
    assert!(answer.expect("lease").is_empty(), "an unreadable payload was handed out");
    // It could not be written dead, so it is not held either: due again (and dead) later.
    assert!(!store.shared.leased().contains(&bad.deliveries[0].id), "held as leased");
}

// A delivery another worker leases, settles (a retry an hour away) and releases while a lease is
// between its scan and its leases must not be handed out again by that lease from its older
// snapshot: that was a second send at once, with the old attempt number, ahead of the backoff.
#[tokio::test]
async fn a_delivery_settled_during_another_lease_is_not_leased_again_from_its_stale_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    store.intake(new_sub(&["a"], &[])).await.expect("intake");
    let (scanned, scanned_rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    *store.shared.after_scan.lock().expect("hook") = Some(Box::new(move || {
        let _ = scanned.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
    }));
    let first = {
        let store = store.clone();
        std::thread::spawn(move || lease_on_a_thread(store, 1, Duration::ZERO))
    };
    scanned_rx.recv_timeout(Duration::from_secs(10)).expect("the first lease scanned");
    // The second worker, meanwhile.
    let second = store.lease("a", 1, Duration::from_millis(100)).await.expect("lease");
    for l in &second {
        let retry = Outcome::Retry { not_before: now_millis() + 3_600_000, error: "HTTP 503".into() };
        store.settle(l.clone(), retry).await.expect("settle");
    }
    go.send(()).expect("go");
    let first = first.join().expect("thread").expect("the first lease hung").expect("lease");
    let attempts: Vec<u32> = first.iter().chain(&second).map(|l| l.attempt).collect();
    assert_eq!(attempts, [1], "handed out twice (first lease, second lease)");
}

/// A redb backend on a file that panics once, at the next sync after `panic` is set: a bug in
/// the writer's path, as far as the store can tell.
#[derive(Debug)]
struct PanicsOnce {
    file: redb::backends::FileBackend,
    panic: Arc<std::sync::atomic::AtomicBool>,
}

impl redb::StorageBackend for PanicsOnce {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.panic.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("the writer's bug (test)");
        }
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

// A writer thread that died (a panic) takes no write again, so the store must not say it is
// ready: before, `/healthz` answered 200 for good while every intake got 503.
#[tokio::test]
async fn a_stopped_writer_makes_the_store_unhealthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lotse.redb");
    let panic = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, flag) = (path.clone(), panic.clone());
    let opener: db::Opener = Box::new(move || {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p)?;
        let file = redb::backends::FileBackend::new(file)?;
        redb::Database::builder().create_with_backend(PanicsOnce { file, panic: flag.clone() })
    });
    let db = db::Db::with_opener(&path, opener).expect("open");
    let store = EmbeddedStore::start(dir.path(), Arc::new(db)).expect("start");
    store.intake(new_sub(&["a"], &[])).await.expect("intake");
    assert!(store.health().is_ok(), "{:?}", store.health());

    panic.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = store.intake(new_sub(&["a"], &[])).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "intake with the writer dead: {refused:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.writer.as_ref().is_some_and(|w| w.is_finished()) {
        assert!(std::time::Instant::now() < deadline, "the writer thread did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(store.health(), Err(StoreError::Unavailable(_))), "healthy without a writer");
    // The panic in its commit poisoned redb's own locks, and dropping the database would panic.
    std::mem::forget(store);
}

/// A pause is committed before `set_paused` answers and read back at open: an endpoint an
/// operator paused for maintenance stays paused after a restart (it was in memory only, so a
/// restart resumed it), with who paused it and why; a resume survives a restart too.
#[tokio::test]
async fn a_pause_and_a_resume_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert!(store.pauses().is_empty(), "a new store has no pauses");
        store.set_paused("a", true, "oncall", Some("Wartung")).await.expect("pause");
        store.set_paused("b", true, "oncall", None).await.expect("pause");
        assert!(store.pauses().contains_key("a"));
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let pauses = store.pauses();
    assert_eq!(pauses.keys().collect::<Vec<_>>(), ["a", "b"], "forgotten after a reopen");
    let a = &pauses["a"];
    assert_eq!((a.actor.as_str(), a.reason.as_deref()), ("oncall", Some("Wartung")));
    assert!(a.at > 0 && a.at <= now_millis());
    assert_eq!(pauses["b"].reason, None);
    // No lease is affected by a pause here (the workers ask `pauses`): a lease still works.
    store.intake(new_sub(&["a"], &[])).await.expect("intake");
    assert_eq!(store.lease("a", 1, Duration::from_millis(100)).await.expect("lease").len(), 1);

    store.set_paused("a", false, "oncall", None).await.expect("resume");
    assert_eq!(store.pauses().keys().collect::<Vec<_>>(), ["b"]);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(store.pauses().keys().collect::<Vec<_>>(), ["b"], "the resume was lost on reopen");
}
