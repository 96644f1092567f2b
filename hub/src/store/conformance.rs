//! The store conformance suite: the checks every [`Store`] backend must pass, written once and
//! run against each backend by `hub/tests/store_conformance.rs`.
//!
//! Each check takes a [`StoreFactory`] that opens one store: fresh on the first `open`, and the
//! same data again on later calls (after the previous instance was dropped, as after a crash).
//! Checks return an error that says what differed; they never panic. Timing: a check waits up to
//! [`DUE`] for work that should come, and [`NOT_DUE`] to see that work does not come; backends
//! may be eventually consistent between processes, but a store must read its own writes.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;

use super::{
    Cutoffs, DeliveryFilter, DeliveryId, DeliveryState, Handover, Intake, Lease, NewDelivery, NewSubmission, Outcome,
    Receipt, ReplayOutcome, Store, SubmissionId, SubmissionState, now_millis, verify_event_chain,
};

/// Endpoints every store under test must serve.
pub const ENDPOINTS: [&str; 2] = ["alpha", "beta"];
/// Longest wait for work that is due.
pub const DUE: Duration = Duration::from_secs(15);
/// How long to wait to see that work does not come.
pub const NOT_DUE: Duration = Duration::from_millis(400);
/// How long a replay's work is watched for a second copy. Longer than [`NOT_DUE`]: a void copy
/// of a backend that drops it at lease time has to be handed to a lease to be dropped.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3);

/// Opens the store under test.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync {
    type Store: Store;
    /// Opens this factory's store: empty the first time, the same data later (the previous
    /// instance is dropped before, as a crashed process would be).
    async fn open(&self) -> anyhow::Result<Self::Store>;
    /// Removes what the store left behind (queues on a shared broker); called after each check.
    async fn cleanup(&self) {}
}

/// A submission with one delivery per endpoint in `endpoints`, its own ids, and `keys`.
pub fn submission(keys: &[&str], endpoints: &[&str]) -> NewSubmission {
    let id = SubmissionId::new();
    let body = format!("<nachricht><id>{id}</id></nachricht>");
    NewSubmission {
        id,
        partner: "conformance".into(),
        dedup_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        received_at: now_millis(),
        content_type: "application/xml".into(),
        meta: serde_json::json!({ "message_type": "0200", "reader": "05315000-bauaufsicht", "standard": "XBau", "warnings": ["Grüße \"quoted\""] }),
        message_id: Some(id.to_string()),
        route: "all".into(),
        original: Bytes::from(body),
        deliveries: endpoints
            .iter()
            .map(|e| NewDelivery { id: DeliveryId::new(), endpoint: (*e).to_owned(), rendition: None })
            .collect(),
        notes: vec!["first note".into()],
    }
}

fn unique_key() -> String {
    format!("idem:conformance:{}", uuid::Uuid::new_v4())
}

async fn accept<S: Store>(store: &S, s: NewSubmission) -> anyhow::Result<Receipt> {
    match store.intake(s).await? {
        Intake::Accepted(r) => Ok(r),
        Intake::Duplicate(r) => bail!("a new submission was taken for a duplicate of {}", r.submission_id),
    }
}

/// Leases exactly one delivery of `endpoint`, waiting up to [`DUE`].
async fn lease_one<S: Store>(store: &S, endpoint: &str) -> anyhow::Result<Lease> {
    let mut leases = store.lease(endpoint, 1, DUE).await?;
    ensure!(leases.len() <= 1, "lease(max = 1) gave {} deliveries", leases.len());
    leases.pop().with_context(|| format!("no delivery of `{endpoint}` came within {DUE:?}"))
}

async fn expect_nothing<S: Store>(store: &S, endpoint: &str, why: &str) -> anyhow::Result<()> {
    let leases = store.lease(endpoint, 10, NOT_DUE).await?;
    ensure!(leases.is_empty(), "{why}: leased {:?}", leases.iter().map(|l| l.delivery_id).collect::<Vec<_>>());
    Ok(())
}

async fn state_of<S: Store>(store: &S, id: DeliveryId) -> anyhow::Result<DeliveryState> {
    Ok(store.delivery(id).await?.with_context(|| format!("delivery {id} is unknown"))?.state)
}

/// Intake stores the submission; each delivery is leased once, with the bytes sent.
pub async fn intake_then_lease<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let s = submission(&[&unique_key()], &ENDPOINTS);
    let original = s.original.clone();
    let receipt = accept(&store, s.clone()).await?;
    ensure!(receipt.submission_id == s.id, "receipt names {} instead of {}", receipt.submission_id, s.id);
    ensure!(receipt.deliveries.len() == 2, "receipt has {} deliveries, expected 2", receipt.deliveries.len());
    let view = store.submission(s.id).await?.context("submission is unknown right after intake")?;
    ensure!(view.state == SubmissionState::InProgress, "new submission is {:?}", view.state);
    ensure!(view.partner == "conformance" && view.route == "all", "partner/route not kept: {view:?}");
    ensure!(view.meta == s.meta, "meta not kept: {} instead of {}", view.meta, s.meta);
    for d in &receipt.deliveries {
        let lease = lease_one(&store, &d.endpoint).await?;
        ensure!(lease.delivery_id == d.id, "leased {} instead of {}", lease.delivery_id, d.id);
        ensure!(lease.submission_id == s.id, "lease names submission {}", lease.submission_id);
        ensure!(lease.payload == original, "leased payload differs from the original bytes");
        ensure!(lease.attempt == 1 && lease.budget_attempt == 1, "first lease has attempt {}", lease.attempt);
        ensure!(lease.message_id == s.message_id, "message id not kept");
        ensure!(lease.content_type == "application/xml", "content type `{}`", lease.content_type);
        // Leased to nobody else while the lease is held.
        expect_nothing(&store, &d.endpoint, "a held lease was given out again").await?;
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    Ok(())
}

/// Delivered: the delivery and then the submission are delivered, and nothing is leased again.
/// The event log says how the receiver took it, in the same words on both stores.
pub async fn settle_delivered<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let s = submission(&[], &ENDPOINTS[..1]);
    let receipt = accept(&store, s.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    store.settle(lease, Outcome::Delivered { via: Handover::Http(201) }).await?;
    let d = receipt.deliveries[0].id;
    ensure!(state_of(&store, d).await? == DeliveryState::Delivered, "settled delivery is not delivered");
    let view = store.submission(s.id).await?.context("submission vanished")?;
    ensure!(view.state == SubmissionState::Delivered, "submission is {:?} after its only delivery", view.state);
    ensure!(view.deliveries[0].attempts == 1, "attempts = {}", view.deliveries[0].attempts);
    let said = |kind: &str| view.events.iter().find(|e| e.kind == kind).map(|e| e.detail.clone());
    let received =
        format!("from partner `conformance`, {} bytes of application/xml, message id {}", s.original.len(), s.id);
    ensure!(said("received") == Some(received), "received event: {:?}", said("received"));
    ensure!(said("routed").as_deref() == Some("route `all` -> alpha"), "routed event: {:?}", said("routed"));
    ensure!(said("attempt").as_deref() == Some("`alpha` answered HTTP 201"), "attempt event: {:?}", said("attempt"));
    ensure!(said("delivered").as_deref() == Some("delivered to `alpha`"), "delivered event: {:?}", said("delivered"));
    verify_event_chain(&view.events).map_err(|e| anyhow::anyhow!("the log does not verify: {e}"))?;
    expect_nothing(&store, ENDPOINTS[0], "a delivered delivery came back").await?;

    // A transport that is not HTTP is not logged as an HTTP answer.
    let s = submission(&[], &ENDPOINTS[..1]);
    accept(&store, s.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    store.settle(lease, Outcome::Delivered { via: Handover::Mailbox }).await?;
    let view = store.submission(s.id).await?.context("submission vanished")?;
    let attempt = view.events.iter().find(|e| e.kind == "attempt").map(|e| e.detail.as_str());
    ensure!(attempt == Some("`alpha` acknowledged the fetched message"), "attempt event: {attempt:?}");
    Ok(())
}

/// Retry: not leased again before `not_before`, leased after it with the next attempt number.
pub async fn settle_retry<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let s = submission(&[], &ENDPOINTS[..1]);
    let original = s.original.clone();
    accept(&store, s.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    let d = lease.delivery_id;
    let not_before = now_millis() + 1_500;
    store.settle(lease, Outcome::Retry { not_before, error: "HTTP 503".into() }).await?;
    let view = store.delivery(d).await?.context("delivery vanished")?;
    ensure!(view.state == DeliveryState::Pending, "retried delivery is {:?}", view.state);
    ensure!(view.next_attempt_at.is_some(), "retried delivery has no next_attempt_at");
    ensure!(view.last_error.as_deref() == Some("HTTP 503"), "last_error = {:?}", view.last_error);
    expect_nothing(&store, ENDPOINTS[0], "leased before not_before").await?;
    let again = lease_one(&store, ENDPOINTS[0]).await?;
    let now = now_millis();
    ensure!(now >= not_before, "leased {} ms before not_before", not_before - now);
    ensure!(again.delivery_id == d, "leased {} instead of the retried {d}", again.delivery_id);
    ensure!(again.attempt == 2 && again.budget_attempt == 2, "second attempt numbered {}", again.attempt);
    ensure!(again.payload == original, "retried payload differs");
    store.settle(again, Outcome::Delivered { via: Handover::Http(200) }).await?;
    ensure!(state_of(&store, d).await? == DeliveryState::Delivered, "not delivered after the retry");
    Ok(())
}

/// Dead: listed as dead, never leased; replay sends the same bytes under the same id.
pub async fn settle_dead_and_replay<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let s = submission(&[], &ENDPOINTS[..1]);
    let original = s.original.clone();
    accept(&store, s.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    let d = lease.delivery_id;
    store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await?;
    ensure!(state_of(&store, d).await? == DeliveryState::Dead, "dead delivery is not dead");
    let view = store.submission(s.id).await?.context("submission vanished")?;
    ensure!(view.state == SubmissionState::Failed, "submission with a dead delivery is {:?}", view.state);
    let dead = store.deliveries(&DeliveryFilter { state: Some(DeliveryState::Dead), ..Default::default() }).await?;
    ensure!(dead.iter().any(|v| v.id == d), "dead delivery missing from the dead listing");
    ensure!(store.counts().await?.dead >= 1, "counts show no dead delivery");
    expect_nothing(&store, ENDPOINTS[0], "a dead delivery was leased").await?;

    let outcome = store.replay(d, "tester", "endpoint fixed").await?;
    ensure!(outcome == ReplayOutcome::Replayed, "replay answered {outcome:?}");
    ensure!(state_of(&store, d).await? == DeliveryState::Pending, "replayed delivery is not pending");
    let again = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(again.delivery_id == d, "replay leased {} instead of {d}", again.delivery_id);
    ensure!(again.payload == original, "replay sent other bytes");
    ensure!(again.attempt == 2, "replayed attempt numbered {} (attempts count over the whole life)", again.attempt);
    ensure!(again.budget_attempt == 1, "replay did not reset the retry budget: {}", again.budget_attempt);
    let busy = store.replay(d, "tester", "twice").await?;
    ensure!(busy == ReplayOutcome::NotDead { state: DeliveryState::Pending }, "replay of a pending delivery: {busy:?}");
    store.settle(again, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let done = store.replay(d, "tester", "after delivery").await?;
    ensure!(done == ReplayOutcome::NotDead { state: DeliveryState::Delivered }, "replay of a delivered one: {done:?}");
    let unknown = store.replay(DeliveryId::new(), "tester", "unknown").await?;
    ensure!(unknown == ReplayOutcome::NotFound, "replay of an unknown id: {unknown:?}");
    let events = store.submission(s.id).await?.context("submission vanished")?.events;
    let replayed = events.iter().find(|e| e.kind == "replayed").context("no `replayed` event")?;
    ensure!(replayed.delivery_id == Some(d), "`replayed` event names {:?}", replayed.delivery_id);
    ensure!(replayed.detail == "replayed by `tester`: endpoint fixed", "`replayed` event says {:?}", replayed.detail);
    verify_event_chain(&events).map_err(|e| anyhow::anyhow!("the log does not verify: {e}"))?;
    let mut forged = events.clone();
    if let Some(e) = forged.iter_mut().find(|e| e.kind == "dead") {
        e.detail = "HTTP 200".into();
    }
    ensure!(verify_event_chain(&forged).is_err(), "a rewritten dead event still verifies");
    Ok(())
}

/// Two replays of one dead delivery at once: exactly one is `Replayed`, the other finds the
/// delivery no longer dead (`NotDead`, pending), and the delivery is attempted once more, not
/// twice.
pub async fn concurrent_replay<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let s = submission(&[], &ENDPOINTS[..1]);
    accept(&store, s.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    let d = lease.delivery_id;
    store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await?;
    let (one, two) = futures::join!(store.replay(d, "one", "first"), store.replay(d, "two", "second"));
    check_one_replay(one?, two?)?;
    check_attempted_once_more(&[&store], d, s.id).await
}

/// Of two concurrent replays, exactly one is `Replayed` and the other `NotDead` (pending).
pub fn check_one_replay(one: ReplayOutcome, two: ReplayOutcome) -> anyhow::Result<()> {
    let pending = ReplayOutcome::NotDead { state: DeliveryState::Pending };
    let ok = (one == ReplayOutcome::Replayed && two == pending) || (one == pending && two == ReplayOutcome::Replayed);
    ensure!(ok, "two concurrent replays answered {one:?} and {two:?}; expected one Replayed, one NotDead(pending)");
    Ok(())
}

/// After one replay of dead delivery `d` (attempted once before): leasing from every store for
/// [`REPLAY_WINDOW`] gives it exactly once; settled delivered, it shows two attempts and one
/// `replayed` event.
pub async fn check_attempted_once_more<S: Store>(
    stores: &[&S],
    d: DeliveryId,
    submission_id: SubmissionId,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + REPLAY_WINDOW;
    let mut leased = Vec::new();
    while tokio::time::Instant::now() < until {
        for store in stores {
            for lease in store.lease(ENDPOINTS[0], 10, NOT_DUE / 4).await? {
                leased.push(lease.delivery_id);
                store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
            }
        }
    }
    ensure!(leased == [d], "after one replay of {d}, leased {leased:?} within {REPLAY_WINDOW:?}");
    for store in stores {
        let view = store.delivery(d).await?.context("delivery vanished")?;
        ensure!(view.state == DeliveryState::Delivered, "replayed delivery is {:?}", view.state);
        ensure!(view.attempts == 2, "replayed delivery shows {} attempts, expected 2", view.attempts);
        let events = store.submission(submission_id).await?.context("submission vanished")?.events;
        let replayed = events.iter().filter(|e| e.kind == "replayed").count();
        ensure!(replayed == 1, "{replayed} `replayed` events for one replay");
        let delivered = events.iter().filter(|e| e.kind == "delivered").count();
        ensure!(delivered == 1, "{delivered} `delivered` events for one replay");
    }
    Ok(())
}

/// The same dedup key is stored once; later intakes get the first receipt and queue nothing.
pub async fn duplicate_intake<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let key = unique_key();
    let first = submission(&[&key], &ENDPOINTS[..1]);
    let receipt = accept(&store, first.clone()).await?;
    let other = unique_key();
    for keys in [vec![key.as_str()], vec![other.as_str(), key.as_str()]] {
        let again = submission(&keys, &ENDPOINTS[..1]);
        let again_id = again.id;
        match store.intake(again).await? {
            Intake::Duplicate(r) => ensure!(r == receipt, "duplicate got {r:?}, expected the first {receipt:?}"),
            Intake::Accepted(r) => bail!("duplicate with keys {keys:?} accepted as {}", r.submission_id),
        }
        ensure!(store.submission(again_id).await?.is_none(), "the duplicate was stored as a submission");
    }
    // A key names its holder; the refused duplicate's other key names nobody.
    let holder = store.submission_by_key(&key).await?;
    ensure!(holder == Some(receipt.submission_id), "key {key} held by {holder:?}, not {}", receipt.submission_id);
    let nobody = store.submission_by_key(&other).await?;
    ensure!(nobody.is_none(), "a refused duplicate's key is held by {nobody:?}");
    // The other key was not taken by the refused duplicate.
    let second = accept(&store, submission(&[&other], &ENDPOINTS[1..])).await?;
    ensure!(store.submission_by_key(&other).await? == Some(second.submission_id), "the new holder of {other}");
    let beta = lease_one(&store, ENDPOINTS[1]).await?;
    store.settle(beta, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(lease.delivery_id == receipt.deliveries[0].id, "leased {} instead of the first", lease.delivery_id);
    expect_nothing(&store, ENDPOINTS[0], "a duplicate queued a delivery").await?;
    store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    Ok(())
}

/// Data and un-settled leases survive a reopen: the lease comes back, the log is kept.
pub async fn survive_reopen<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let key = unique_key();
    let s = submission(&[&key], &ENDPOINTS[..1]);
    let original = s.original.clone();
    let receipt = accept(&store, s.clone()).await?;
    let delivered = submission(&[], &ENDPOINTS[1..]);
    accept(&store, delivered.clone()).await?;
    let done = lease_one(&store, ENDPOINTS[1]).await?;
    store.settle(done, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    let first_attempt = lease.attempt;
    drop(lease);
    drop(store);

    let store = f.open().await?;
    let view = store.submission(s.id).await?.context("submission lost in the reopen")?;
    ensure!(view.events.len() >= 3, "event log lost in the reopen: {} events", view.events.len());
    ensure!(view.meta == s.meta, "meta lost in the reopen: {}", view.meta);
    let d = store.submission(delivered.id).await?.context("delivered submission lost")?;
    ensure!(d.state == SubmissionState::Delivered, "delivered submission is {:?} after reopen", d.state);
    let back = lease_one(&store, ENDPOINTS[0]).await.context("the un-settled lease did not come back")?;
    ensure!(back.delivery_id == receipt.deliveries[0].id, "leased {} instead of the unsettled one", back.delivery_id);
    ensure!(back.payload == original, "payload changed in the reopen");
    ensure!(back.attempt >= first_attempt, "attempt went back from {first_attempt} to {}", back.attempt);
    expect_nothing(&store, ENDPOINTS[1], "a delivered delivery came back after reopen").await?;
    match store.intake(submission(&[&key], &ENDPOINTS[..1])).await? {
        Intake::Duplicate(r) => ensure!(r == receipt, "dedup after reopen gave {r:?}"),
        Intake::Accepted(_) => bail!("dedup key forgotten in the reopen"),
    }
    store.settle(back, Outcome::Delivered { via: Handover::Http(200) }).await?;
    Ok(())
}

/// The event log: received, routed, notes; then per attempt its outcome, in order, chained.
pub async fn event_log<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let mut s = submission(&[], &ENDPOINTS[..1]);
    s.notes = vec!["first note".into(), "second note".into()];
    accept(&store, s.clone()).await?;
    let view = store.submission(s.id).await?.context("submission unknown")?;
    let kinds: Vec<&str> = view.events.iter().map(|e| e.kind.as_str()).collect();
    ensure!(kinds == ["received", "routed", "note", "note"], "intake events {kinds:?}");
    ensure!(view.events[2].detail == "first note" && view.events[3].detail == "second note", "notes out of order");

    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    let d = lease.delivery_id;
    store.settle(lease, Outcome::Retry { not_before: now_millis(), error: "connect refused".into() }).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    store.settle(lease, Outcome::Delivered { via: Handover::Http(204) }).await?;
    let events = store.submission(s.id).await?.context("submission unknown")?.events;
    let outcomes: Vec<(&str, Option<u32>)> =
        events.iter().filter(|e| e.kind != "attempt").skip(4).map(|e| (e.kind.as_str(), e.attempt)).collect();
    ensure!(outcomes == [("retry_scheduled", Some(1)), ("delivered", Some(2))], "outcome events {outcomes:?}");
    for e in events.iter().skip(4) {
        ensure!(
            ["attempt", "retry_scheduled", "delivered"].contains(&e.kind.as_str()),
            "unexpected `{}` event",
            e.kind
        );
        ensure!(e.delivery_id == Some(d), "`{}` event names delivery {:?}", e.kind, e.delivery_id);
    }
    for pair in events.windows(2) {
        ensure!(pair[1].seq > pair[0].seq, "seq not increasing: {} then {}", pair[0].seq, pair[1].seq);
        // Compare instants, not strings: RFC 3339 drops trailing zeros (`.61Z` is before `.616Z`).
        let at = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339);
        ensure!(at(&pair[1].at)? >= at(&pair[0].at)?, "time goes back in the log: {} then {}", pair[0].at, pair[1].at);
    }
    let mut hashes: Vec<&str> = events.iter().map(|e| e.hash.as_str()).collect();
    ensure!(hashes.iter().all(|h| !h.is_empty()), "an event has no hash");
    hashes.sort_unstable();
    hashes.dedup();
    ensure!(hashes.len() == events.len(), "two events share a hash");
    Ok(())
}

/// Listings filter by state, endpoint and submission, newest first, and counts add up.
pub async fn listings_and_counts<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let before = store.counts().await?;
    let a = accept(&store, submission(&[], &ENDPOINTS)).await?;
    let b = accept(&store, submission(&[], &ENDPOINTS[..1])).await?;
    let counts = store.counts().await?;
    ensure!(counts.submissions == before.submissions + 2, "submissions {before:?} -> {counts:?}");
    ensure!(counts.pending == before.pending + 3, "pending {before:?} -> {counts:?}");
    let of_a = store.deliveries(&DeliveryFilter { submission_id: Some(a.submission_id), ..Default::default() }).await?;
    ensure!(of_a.len() == 2, "submission filter gave {} deliveries", of_a.len());
    let beta = DeliveryFilter { endpoint: Some(ENDPOINTS[1].into()), ..Default::default() };
    let of_beta = store.deliveries(&beta).await?;
    ensure!(of_beta.iter().all(|v| v.endpoint == ENDPOINTS[1]), "endpoint filter leaked another endpoint");
    ensure!(of_beta.iter().any(|v| v.submission_id == a.submission_id), "endpoint filter lost a delivery");
    let newest = store.deliveries(&DeliveryFilter { limit: 1, ..Default::default() }).await?;
    ensure!(newest.len() == 1, "limit 1 gave {}", newest.len());
    ensure!(newest[0].submission_id == b.submission_id, "newest first: got a delivery of {}", newest[0].submission_id);
    // Drain, so the counts move from pending to delivered.
    for endpoint in ENDPOINTS {
        loop {
            let leases = store.lease(endpoint, 10, NOT_DUE).await?;
            if leases.is_empty() {
                break;
            }
            for l in leases {
                store.settle(l, Outcome::Delivered { via: Handover::Http(200) }).await?;
            }
        }
    }
    let after = store.counts().await?;
    ensure!(after.pending == before.pending, "pending after draining: {after:?}");
    ensure!(after.delivered == before.delivered + 3, "delivered after draining: {after:?}");
    let pending =
        store.deliveries(&DeliveryFilter { state: Some(DeliveryState::Pending), ..Default::default() }).await?;
    ensure!(pending.is_empty(), "pending listing not empty after draining: {}", pending.len());

    // Newest first across states: a pending delivery, then a delivered one, then a dead one.
    // (The embedded store listed every pending delivery before any dead one, and dead before
    // delivered, whatever their age.)
    let waits = accept(&store, submission(&[], &ENDPOINTS[1..])).await?;
    let delivered = accept(&store, submission(&[], &ENDPOINTS[..1])).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(lease.submission_id == delivered.submission_id, "leased {} first", lease.submission_id);
    store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let dead = accept(&store, submission(&[], &ENDPOINTS[..1])).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(lease.submission_id == dead.submission_id, "leased {} first", lease.submission_id);
    store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await?;
    let ids = |listed: &[super::DeliveryView]| listed.iter().map(|v| v.id).collect::<Vec<_>>();
    let newest = ids(&store.deliveries(&DeliveryFilter { limit: 3, ..Default::default() }).await?);
    let expected = [dead.deliveries[0].id, delivered.deliveries[0].id, waits.deliveries[0].id];
    ensure!(newest == expected, "newest three across states: {newest:?}, expected {expected:?}");
    let two = ids(&store.deliveries(&DeliveryFilter { limit: 2, ..Default::default() }).await?);
    ensure!(two == expected[..2], "newest two across states: {two:?}, expected {:?}", &expected[..2]);
    let all = ids(&store.deliveries(&DeliveryFilter::default()).await?);
    ensure!(all.windows(2).all(|w| w[0] > w[1]), "a listing is not newest first: {all:?}");
    Ok(())
}

/// A listing is bounded the same way on every backend: `limit` 0 gives the default (not
/// everything), a limit is honoured up to the maximum.
pub async fn listing_limits<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let n = DeliveryFilter::DEFAULT_LIMIT + 1;
    let intakes = (0..n).map(|_| accept(&store, submission(&[], &ENDPOINTS[..1])));
    futures::future::try_join_all(intakes).await?;
    let default = store.deliveries(&DeliveryFilter::default()).await?;
    ensure!(default.len() == DeliveryFilter::DEFAULT_LIMIT, "limit 0 listed {} deliveries", default.len());
    let all = store.deliveries(&DeliveryFilter { limit: n, ..Default::default() }).await?;
    ensure!(all.len() == n, "limit {n} listed {}", all.len());
    Ok(())
}

/// Retention: a submission whose every delivery is final and past its cutoff is deleted
/// (status, deliveries, dedup key); one with work left stays; a resend of the deleted message is
/// a new submission; all of it holds after a reopen.
pub async fn expire_finished<F: StoreFactory>(f: &F) -> anyhow::Result<()> {
    let store = f.open().await?;
    let (done_key, open_key) = (unique_key(), unique_key());
    let done = submission(&[&done_key], &ENDPOINTS[..1]);
    let open = submission(&[&open_key], &ENDPOINTS[1..]);
    let done_receipt = accept(&store, done.clone()).await?;
    accept(&store, open.clone()).await?;
    let lease = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(lease.submission_id == done.id, "leased {} instead of {}", lease.submission_id, done.id);
    store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let before = store.counts().await?;

    let none = store.expire(Cutoffs { delivered: Some(1), dead: Some(1) }).await?;
    ensure!(none == 0, "cutoffs before every change deleted {none}");
    let later = now_millis() + 60_000;
    let gone = store.expire(Cutoffs { delivered: Some(later), dead: Some(later) }).await?;
    ensure!(gone == 1, "deleted {gone}, expected the delivered submission only");
    ensure!(store.submission(done.id).await?.is_none(), "the delivered submission is still there");
    ensure!(store.delivery(done_receipt.deliveries[0].id).await?.is_none(), "its delivery is still there");
    ensure!(store.submission_by_key(&done_key).await?.is_none(), "its dedup key is still held");
    ensure!(store.submission(open.id).await?.is_some(), "a submission with work left was deleted");
    ensure!(store.submission_by_key(&open_key).await? == Some(open.id), "the pending one's key is gone");
    let after = store.counts().await?;
    ensure!(
        after.submissions + 1 == before.submissions && after.delivered + 1 == before.delivered,
        "counts {before:?} -> {after:?}"
    );

    let again = accept(&store, submission(&[&done_key], &ENDPOINTS[..1])).await.context("the resend")?;
    ensure!(again.submission_id != done.id, "the resend got the deleted id");
    let open_work = lease_one(&store, ENDPOINTS[1]).await?;
    ensure!(open_work.submission_id == open.id, "the pending one's work did not come");
    store.settle(open_work, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let resent_work = lease_one(&store, ENDPOINTS[0]).await?;
    ensure!(resent_work.submission_id == again.submission_id, "the resend's work did not come");
    store.settle(resent_work, Outcome::Delivered { via: Handover::Http(200) }).await?;
    drop(store);

    let store = f.open().await?;
    ensure!(store.submission(done.id).await?.is_none(), "the deleted submission came back in the reopen");
    ensure!(store.submission_by_key(&done_key).await? == Some(again.submission_id), "the key's holder after reopen");
    ensure!(store.submission(open.id).await?.is_some(), "the kept submission was lost in the reopen");
    Ok(())
}
