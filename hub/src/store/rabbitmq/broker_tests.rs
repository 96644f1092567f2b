//! Tests against a real broker of what the conformance suite cannot reach from outside: a
//! replay's work message whose claim never reached the stream (the replaying process died in
//! between), and a broker resource alarm (raised with the local `rabbitmqctl`). Broker at `LOTSE_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! a prefix of its own, queues deleted afterwards; skipped without a broker unless `CI=true`.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use super::index::Applied;
use super::record::{Record, ReplayedRecord};
use super::work::WorkMessage;
use super::{CLAIM_WAIT, RabbitStore};
use crate::store::conformance::submission;
use crate::store::{
    DeliveryId, DeliveryState, Handover, Intake, Lease, NewSubmission, Outcome, ReplayOutcome, Store, StoreError,
    now_millis,
};

const ENDPOINT: &str = "alpha";

/// The broker's URL and a fresh prefix, for a test that opens its stores itself; `None` (skip)
/// when no broker answers and CI is not set.
async fn broker() -> anyhow::Result<Option<(String, String)>> {
    let url = std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connected =
        tokio::time::timeout(Duration::from_secs(20), lapin::Connection::connect(&url, Default::default())).await;
    match connected {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe".into()).await;
            Ok(Some((url, format!("lotse-test-{}", Uuid::new_v4().simple()))))
        }
        failed => {
            let reason = match failed {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "no answer within 20 s".into(),
            };
            anyhow::ensure!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {reason}");
            eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL ({reason})");
            Ok(None)
        }
    }
}

/// A store on a fresh prefix, or `None` (skip) when no broker answers and CI is not set.
async fn open() -> anyhow::Result<Option<(RabbitStore, String, String)>> {
    let Some((url, prefix)) = broker().await? else { return Ok(None) };
    let opened =
        tokio::time::timeout(Duration::from_secs(20), RabbitStore::open(&url, &prefix, &[ENDPOINT.to_owned()])).await;
    let store = opened.map_err(|_| anyhow::anyhow!("the store did not open within 20 s"))??;
    Ok(Some((store, url, prefix)))
}

/// A replay whose process died after its work message and before its claim: the work is held
/// back for `CLAIM_WAIT`, then voided by a tombstone. The delivery stays dead (not pending
/// without work), the late claim loses, and a new replay works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_replay_work_without_its_claim_is_voided_and_a_late_claim_loses() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = orphan_replay(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn orphan_replay(store: &RabbitStore) -> anyhow::Result<()> {
    let s = submission(&[], &[ENDPOINT]);
    store.intake(s.clone()).await?;
    let lease = store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("the delivery was leased");
    let d = lease.delivery_id;
    store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await?;

    // What a replaying process leaves behind when it dies between its two steps: the work
    // message of generation 1, no claim. Dated back past the claim wait, so lease decides now.
    let replay_id = Uuid::now_v7();
    let orphan = WorkMessage {
        delivery_id: d,
        submission_id: s.id,
        message_id: s.message_id.clone(),
        content_type: s.content_type.clone(),
        attempts: 1,
        budget_base: 1,
        generation: 1,
        not_before: 0,
        queued_at: now_millis() - CLAIM_WAIT.as_millis() as u64 - 1_000,
        replay_id: Some(replay_id),
    };
    let shared = &store.shared;
    shared.publish(&shared.names.work(ENDPOINT), &s.original, orphan.properties().map_err(anyhow::Error::msg)?).await?;
    let leased = store.lease(ENDPOINT, 1, Duration::from_secs(3)).await?;
    anyhow::ensure!(leased.is_empty(), "a replay without its claim was leased: {:?}", leased[0].delivery_id);
    let state = store.delivery(d).await?.map(|v| v.state);
    anyhow::ensure!(state == Some(DeliveryState::Dead), "the delivery is {state:?} after the orphan was voided");

    // The claim arrives after all (a publish that landed late): it loses to the tombstone.
    let late = Record::Replayed(ReplayedRecord {
        submission_id: s.id,
        delivery_id: d,
        generation: 1,
        actor: "ops".into(),
        reason: "late".into(),
        replay_id: Some(replay_id),
    });
    let applied = shared.append_and_fold(late, None).await?;
    anyhow::ensure!(
        applied == Applied::ReplayLost(Some(DeliveryState::Dead)),
        "a claim after its tombstone folded as {applied:?}"
    );

    // A new replay still works and is attempted once.
    anyhow::ensure!(store.replay(d, "ops", "again").await? == ReplayOutcome::Replayed, "the next replay failed");
    let again = store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("the replay was leased");
    anyhow::ensure!(
        again.delivery_id == d && again.attempt == 2,
        "leased {} attempt {}",
        again.delivery_id,
        again.attempt
    );
    store.settle(again, Outcome::Delivered { via: Handover::Http(200) }).await?;
    let events = store.submission(s.id).await?.expect("known").events;
    let replayed = events.iter().filter(|e| e.kind == "replayed").count();
    anyhow::ensure!(replayed == 1, "{replayed} `replayed` events; only the second replay happened");
    Ok(())
}

/// A memory alarm raised on the local broker for as long as this lives (`rabbitmqctl
/// set_vm_memory_high_watermark` to a tiny fraction); dropping it sets the watermark back to
/// what it was. The alarm blocks every publisher on the broker: nextest runs this test alone
/// among the broker tests (the `heavy` group).
struct MemoryAlarm {
    watermark: String,
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("rabbitmqctl").args(args).output()?;
    anyhow::ensure!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl MemoryAlarm {
    /// `None` (skip) without a local `rabbitmqctl`, unless CI is set.
    fn raise() -> anyhow::Result<Option<MemoryAlarm>> {
        let watermark = match rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]) {
            Ok(w) => w,
            Err(e) => {
                anyhow::ensure!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true needs a local rabbitmqctl: {e:#}"
                );
                eprintln!("skipped: no local `rabbitmqctl` to raise a resource alarm ({e:#})");
                return Ok(None);
            }
        };
        // A relative watermark prints as a float (`0.4`); an absolute one as `{absolute,N}`,
        // which `set_vm_memory_high_watermark absolute N` takes back.
        let alarm = MemoryAlarm { watermark };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"])?;
        Ok(Some(alarm))
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let restored = match self.watermark.strip_prefix("{absolute,").and_then(|w| w.strip_suffix('}')) {
            Some(bytes) => rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", bytes]),
            None => rabbitmqctl(&["set_vm_memory_high_watermark", &self.watermark]),
        };
        if let Err(e) = restored {
            eprintln!("could not set the broker's memory watermark back to {}: {e:#}", self.watermark);
        }
    }
}

/// Polls `cond` every 50 ms for at most `bound`.
async fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// While the broker blocks publishers (a memory alarm here; a disk alarm is the same notice),
/// the store says so: `/healthz` (health) is not ready, intake answers unavailable with the
/// reason instead of waiting for a confirm that cannot come, and lease hands out nothing (an
/// attempt's outcome could not be recorded, so the receiver would get the message again and
/// again). Once the alarm clears, all of it works again in the same process and the work that
/// waited is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_resource_alarm_refuses_intake_and_holds_work_until_it_clears() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = resource_alarm(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn resource_alarm(store: &RabbitStore) -> anyhow::Result<()> {
    let first = submission(&[], &[ENDPOINT]);
    anyhow::ensure!(matches!(store.intake(first.clone()).await?, Intake::Accepted(_)), "the first intake");
    store.health()?;
    let Some(alarm) = MemoryAlarm::raise()? else { return Ok(()) };
    // RabbitMQ 3.10 tells a connection it is blocked when it next publishes: this intake's
    // publishes wait, unconfirmed, until the alarm clears (well inside the confirm timeout here).
    let caught = submission(&[], &[ENDPOINT]);
    let second = submission(&[], &[ENDPOINT]);
    let (caught_answer, during) = tokio::join!(store.intake(caught.clone()), during_alarm(store, alarm, &second));
    during?;
    // The intake that was caught in the alarm completes once it clears: stored, not lost.
    anyhow::ensure!(
        matches!(caught_answer, Ok(Intake::Accepted(_))),
        "the intake caught in the alarm: {caught_answer:?}"
    );
    anyhow::ensure!(matches!(store.intake(second.clone()).await?, Intake::Accepted(_)), "intake after the alarm");

    // Every accepted delivery is handed out now, and settles.
    let mut expected = Vec::new();
    for s in [&first, &caught, &second] {
        let view = store.submission(s.id).await?.expect("an accepted submission is known");
        expected.extend(view.deliveries.iter().map(|d| d.id));
    }
    let mut settled = Vec::new();
    while settled.len() < expected.len() {
        let leased = store.lease(ENDPOINT, 10, Duration::from_secs(15)).await?;
        anyhow::ensure!(
            !leased.is_empty(),
            "only {} of {} deliveries were leased after the alarm",
            settled.len(),
            expected.len()
        );
        for lease in leased {
            settled.push(lease.delivery_id);
            store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
        }
    }
    settled.sort();
    expected.sort();
    anyhow::ensure!(settled == expected, "leased {settled:?}, accepted {expected:?}");
    for d in expected {
        let state = store.delivery(d).await?.map(|v| v.state);
        anyhow::ensure!(state == Some(DeliveryState::Delivered), "delivery {d} is {state:?}");
    }
    Ok(())
}

/// What the store says while `alarm` is on, then clears it and waits until the store is ready.
async fn during_alarm(store: &RabbitStore, alarm: MemoryAlarm, second: &NewSubmission) -> anyhow::Result<()> {
    let blocked = eventually(Duration::from_secs(20), || store.health().is_err()).await;
    anyhow::ensure!(blocked, "health stayed ready for 20 s of a memory alarm with a publish waiting");
    match store.health() {
        Err(StoreError::Unavailable(m)) if m.contains("blocking publishers") => {}
        other => anyhow::bail!("health during the alarm: {other:?}"),
    }
    let link = store.broker().expect("a RabbitMQ store reports its broker link");
    anyhow::ensure!(link.connected && link.blocked, "broker link during the alarm: {link:?}");

    match store.intake(second.clone()).await {
        Err(StoreError::Unavailable(m)) if m.contains("blocking publishers") => {}
        other => anyhow::bail!("intake during the alarm: {other:?}"),
    }
    anyhow::ensure!(store.submission(second.id).await?.is_none(), "a refused intake left a submission");
    let leased = store.lease(ENDPOINT, 10, Duration::from_millis(1_500)).await?;
    anyhow::ensure!(leased.is_empty(), "{} deliveries leased while publishes are blocked", leased.len());

    drop(alarm);
    let ready = eventually(Duration::from_secs(20), || store.health().is_ok()).await;
    anyhow::ensure!(ready, "health not ready 20 s after the alarm cleared: {:?}", store.health());
    anyhow::ensure!(store.broker().is_some_and(|l| !l.blocked), "still blocked: {:?}", store.broker());
    Ok(())
}

/// A connection the broker closes (an operator's `rabbitmqctl close_connection`, a broker node
/// going away) is opened again: the store reports the link down, then up with a second
/// connection, and intake works again, its claim folded past the offset the first connection
/// reached. (`/v1/admin/overview` and `/metrics` show these figures.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_connection_closed_by_the_broker_is_opened_again_and_reported() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = reconnect(&store, &prefix).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn reconnect(store: &RabbitStore, prefix: &str) -> anyhow::Result<()> {
    // The start mark is folded before `open` returns (its offset recorded a moment later).
    eventually(Duration::from_secs(5), || store.broker().is_some_and(|l| l.stream_offset > 0)).await;
    let first = store.broker().expect("a RabbitMQ store reports its broker link");
    anyhow::ensure!(first.connected && first.connections == 1 && first.stream_offset > 0, "{first:?}");
    anyhow::ensure!(!first.blocked && !first.rereading && first.rereads == 0, "{first:?}");
    anyhow::ensure!(matches!(store.intake(submission(&[], &[ENDPOINT])).await?, Intake::Accepted(_)));
    // The writer is answered as the fold applies its record, a moment before the offset moves.
    let offset = || store.broker().map_or(0, |l| l.stream_offset);
    let moved = eventually(Duration::from_secs(5), || offset() > first.stream_offset).await;
    anyhow::ensure!(moved, "the claim's message was not folded: offset {}", offset());
    let before = offset();

    if !close_connection_of(prefix)? {
        return Ok(());
    }

    let reopened = eventually(Duration::from_secs(20), || {
        store.broker().is_some_and(|l| l.connected && l.connections == 2) && store.health().is_ok()
    })
    .await;
    anyhow::ensure!(reopened, "not connected again within 20 s: {:?}", store.broker());
    let s = submission(&[], &[ENDPOINT]);
    anyhow::ensure!(matches!(store.intake(s.clone()).await?, Intake::Accepted(_)), "intake after the reconnect");
    let moved = eventually(Duration::from_secs(5), || offset() > before).await;
    let after = store.broker().expect("link");
    anyhow::ensure!(moved && after.rereads == 0, "after the reconnect: {after:?}");
    anyhow::ensure!(store.submission(s.id).await?.is_some(), "the new submission is known");
    Ok(())
}

/// With `[retention] dead` the broker's copy of a dead letter in `P.dead.E` expires after that
/// period, as the stream's copy goes with the fold; without it the copy stays. (The expiring
/// copy goes first: a quorum queue drops an expired message when it reaches the head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dead_copies_expire_with_retention() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = dead_copies(&store, &url, &prefix).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn dead_copies(store: &RabbitStore, url: &str, prefix: &str) -> anyhow::Result<()> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = super::topology::Names::new(prefix).dead(ENDPOINT);
    let count = || async {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let q = ch.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await?;
        anyhow::Ok(q.message_count())
    };
    let dead_letter = || async {
        store.intake(submission(&[], &[ENDPOINT])).await?;
        let lease = store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("the delivery was leased");
        store.settle(lease, Outcome::Dead { error: "HTTP 400".into() }).await?;
        anyhow::Ok(())
    };

    store.expire_dead_copies(Some(Duration::from_millis(1500)));
    dead_letter().await?;
    assert_eq!(count().await?, 1, "the copy is in the dead queue before its period is over");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while count().await? != 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the expiring copy was still there after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    store.expire_dead_copies(None);
    dead_letter().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await?, 1, "without [retention] dead the copy stays");
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// A pulled endpoint (a mailbox) is not prefetched: with two processes on one prefix, all the
/// work waits in the broker for whichever process leases, here the one that did not take the
/// intakes, and one lease can take several messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_pulled_endpoint_waits_in_the_broker_for_any_process() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    store.close().await;
    let endpoints = [ENDPOINT.to_owned()];
    let result = async {
        let a = RabbitStore::open_pulling(&url, &prefix, &endpoints, &endpoints).await?;
        let b = RabbitStore::open_pulling(&url, &prefix, &endpoints, &endpoints).await?;
        for _ in 0..3 {
            a.intake(submission(&[], &[ENDPOINT])).await?;
        }
        let mut leased = b.lease(ENDPOINT, 2, Duration::from_secs(10)).await?;
        anyhow::ensure!(leased.len() == 2, "one lease took {} of 3 messages", leased.len());
        leased.extend(b.lease(ENDPOINT, 2, Duration::from_secs(10)).await?);
        anyhow::ensure!(leased.len() == 3, "the other process got {} of 3", leased.len());
        for lease in leased {
            b.settle(lease, Outcome::Delivered { via: Handover::Mailbox }).await?;
        }
        anyhow::ensure!(a.lease(ENDPOINT, 1, Duration::from_millis(500)).await?.is_empty(), "work left over");
        a.close().await;
        b.close().await;
        anyhow::Ok(())
    }
    .await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    result
}

/// A stream that lost records a running process had folded (here deleted under it and declared
/// again, as a single broker that lost power before its page cache reached the disk leaves it)
/// gives their offsets to new records. The process notices when it reconnects (the message it
/// folded last is not there) and reads the stream again from its start: it learns a submission
/// another process accepted afterwards, at an offset it had folded before, and forgets the lost
/// one, as every other process sees the stream; its intake works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_stream_that_lost_records_is_read_again_from_its_start() -> anyhow::Result<()> {
    let Some((a, url, prefix)) = open().await? else { return Ok(()) };
    let endpoints = [ENDPOINT.to_owned()];
    let result = lost_tail(&a, &url, &prefix, &endpoints).await;
    a.close().await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    result
}

async fn lost_tail(a: &RabbitStore, url: &str, prefix: &str, endpoints: &[String]) -> anyhow::Result<()> {
    let lost = submission(&[], &[ENDPOINT]);
    a.intake(lost.clone()).await?;
    anyhow::ensure!(a.submission(lost.id).await?.is_some(), "the intake's own process does not know it");

    delete_stream(url, prefix).await?;

    // A second process on the new stream; its records take the offsets `a` had folded.
    let b = RabbitStore::open(url, prefix, endpoints).await?;
    let checked = async {
        let later = submission(&[], &[ENDPOINT]);
        b.intake(later.clone()).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while a.submission(later.id).await?.is_none() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the first process never learned a submission accepted after the stream lost records"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(a.submission(lost.id).await?.is_none(), "the first process still shows a lost submission");
        anyhow::ensure!(rereads_of(a) >= 1, "no re-read counted");
        anyhow::ensure!(rereads_of(&b) == 0, "the new process counted a re-read");
        anyhow::ensure!(
            eventually(Duration::from_secs(10), || a.health().is_ok()).await,
            "the first process never said it was ready again"
        );
        anyhow::ensure!(b.submission(lost.id).await?.is_none(), "the new process shows a submission it never read");
        let again = submission(&[], &[ENDPOINT]);
        let answer = a.intake(again.clone()).await?;
        anyhow::ensure!(matches!(answer, Intake::Accepted(_)), "intake after the re-read: {answer:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.submission(again.id).await?.is_none() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the second process never saw the next intake");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            a.counts().await?.submissions == b.counts().await?.submissions,
            "the two processes disagree on how many submissions there are"
        );
        anyhow::Ok(())
    }
    .await;
    b.close().await;
    checked?;

    // The stream loses everything again, and no other process writes: the message folded last
    // never comes, and after `RESUME_CHECK` the process reads the (empty) stream from its start.
    // Meanwhile intake answers unavailable; then it works, and the index holds only what the
    // stream holds.
    let rereads = rereads_of(a);
    delete_stream(url, prefix).await?;
    anyhow::ensure!(
        eventually(Duration::from_secs(5), || a.health().is_err()).await,
        "the process kept saying it is ready while it could not read the stream"
    );
    let next = submission(&[], &[ENDPOINT]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match a.intake(next.clone()).await {
            Ok(Intake::Accepted(_)) => break,
            Err(StoreError::Unavailable(_)) => {}
            other => anyhow::bail!("intake while the stream was lost: {other:?}"),
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "intake never worked again on the emptied stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = a.counts().await?.submissions;
    anyhow::ensure!(kept == 1, "{kept} submissions known, the stream holds 1");
    anyhow::ensure!(rereads_of(a) > rereads, "the second re-read was not counted");
    anyhow::ensure!(eventually(Duration::from_secs(10), || a.health().is_ok()).await, "never ready again");
    Ok(())
}

async fn delete_stream(url: &str, prefix: &str) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let events = super::Names::new(prefix).events();
    ch.queue_delete(events.as_str().into(), lapin::options::QueueDeleteOptions::default()).await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// While the stream is read again from its start (the index dropped after the stream lost
/// records), lease hands nothing out: the index does not know yet which work is void or
/// delivered already. Once caught up, the same work is leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_nothing_is_leased_while_the_stream_is_read_again() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = lease_while_catching_up(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn lease_while_catching_up(store: &RabbitStore) -> anyhow::Result<()> {
    let s = submission(&[], &[ENDPOINT]);
    store.intake(s.clone()).await?;
    let catching_up = &store.shared.catching_up;
    catching_up.store(true, std::sync::atomic::Ordering::SeqCst);
    let leased = store.lease(ENDPOINT, 1, Duration::from_secs(1)).await?;
    anyhow::ensure!(leased.is_empty(), "leased while the stream is read again: {:?}", leased[0].delivery_id);
    catching_up.store(false, std::sync::atomic::Ordering::SeqCst);
    let leased = store.lease(ENDPOINT, 1, Duration::from_secs(5)).await?;
    anyhow::ensure!(leased.first().map(|l| l.submission_id) == Some(s.id), "the work was not leased once caught up");
    Ok(())
}

/// A queue of the prefix that exists with other arguments (made by hand as a classic queue, by
/// another program, or by an older version) stops the start at once, with a message that names
/// it and says what to do, instead of being retried as if the broker were away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_queue_declared_with_other_arguments_stops_the_start_and_is_named() -> anyhow::Result<()> {
    let url = std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
    let work = format!("{prefix}.work.{ENDPOINT}");
    let conn = match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => {
            anyhow::ensure!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {e}");
            eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL ({e})");
            return Ok(());
        }
    };
    let ch = conn.create_channel().await?;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(work.as_str().into(), durable, lapin::types::FieldTable::default()).await?;
    let started = std::time::Instant::now();
    let opened =
        tokio::time::timeout(Duration::from_secs(30), RabbitStore::open(&url, &prefix, &[ENDPOINT.to_owned()])).await;
    let took = started.elapsed();
    let _ = conn.close(200, "bye".into()).await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    let error = match opened {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(_)) => anyhow::bail!("the store opened over a classic queue `{work}`"),
        Err(_) => anyhow::bail!("the start neither failed nor finished within 30 s"),
    };
    anyhow::ensure!(took < Duration::from_secs(5), "the start failed only after {took:?}: {error}");
    anyhow::ensure!(error.contains(&work) && error.contains("other arguments"), "{error}");
    Ok(())
}

/// What only an operator can fix stops a start at once with a message saying what is wrong,
/// never with the password: a login the broker refuses, a virtual host the user may not enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_refused_login_or_vhost_stops_the_start_and_says_why() -> anyhow::Result<()> {
    let url = std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if let Err(e) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
        anyhow::ensure!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {e}");
        eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL ({e})");
        return Ok(());
    }
    // `scheme://[user[:password]@]host[/vhost][?query]`, with another password or vhost.
    let (scheme, rest) = url.split_once("://").expect("an AMQP URL");
    let rest = rest.split('?').next().unwrap_or(rest);
    let (user, host) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or("guest"), host),
        None => ("guest", rest),
    };
    let host = host.split('/').next().unwrap_or(host);
    const WRONG: &str = "lotse-wrong-password-1234";
    let cases = [
        (format!("{scheme}://{user}:{WRONG}@{host}/%2f"), "refused the login"),
        (format!("{scheme}://{rest_user}@{host}/lotse-no-such-vhost", rest_user = url_userinfo(rest)), "virtual host"),
    ];
    for (bad, expected) in cases {
        let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        let opened =
            tokio::time::timeout(Duration::from_secs(30), RabbitStore::open(&bad, &prefix, &[ENDPOINT.to_owned()]))
                .await;
        let took = started.elapsed();
        let error = match opened {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(_)) => anyhow::bail!("the store opened with {bad}"),
            Err(_) => anyhow::bail!("the start neither failed nor finished within 30 s"),
        };
        anyhow::ensure!(took < Duration::from_secs(5), "the start failed only after {took:?}: {error}");
        anyhow::ensure!(error.contains(expected), "expected `{expected}`: {error}");
        anyhow::ensure!(!error.contains(WRONG), "the password is in the message: {error}");
    }
    Ok(())
}

/// The `user[:password]` of an AMQP URL's authority (`guest:guest` without one).
fn url_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or("guest:guest", |(userinfo, _)| userinfo)
}

/// Work that the broker hands a process's new connection right after a reconnect reaches a lease
/// waiting at that moment: none of it may be dropped unacked (it would be held by nobody until
/// that connection ended). Several endpoints make the new session's set-up take a few round
/// trips after the first one's consumer starts, the window in which this happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_work_handed_out_during_a_reconnect_is_all_leased() -> anyhow::Result<()> {
    let url = std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
    let endpoints: Vec<String> = [ENDPOINT, "e1", "e2", "e3", "e4", "e5"].iter().map(|e| (*e).to_owned()).collect();
    let store = match RabbitStore::open(&url, &prefix, &endpoints).await {
        Ok(s) => s,
        Err(e) => {
            anyhow::ensure!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {e:#}");
            eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL ({e:#})");
            return Ok(());
        }
    };
    let result = async {
        const N: usize = 100;
        for _ in 0..N {
            store.intake(submission(&[], &[ENDPOINT])).await?;
        }
        for round in 0..3 {
            // The connection goes while a prefetch of work waits in this process, unacked.
            if !close_connection_of(&prefix)? {
                return Ok(());
            }
            // A lease waits through the reconnect and takes what the new connection brings.
            let leased = store.lease(ENDPOINT, 10, Duration::from_secs(5)).await?;
            anyhow::ensure!(!leased.is_empty(), "round {round}: nothing leased within 5 s of a reconnect");
            for l in leased {
                let _ = store.settle(l, Outcome::Retry { not_before: now_millis(), error: "again".into() }).await;
            }
        }
        // Everything is handed out again and settles.
        let mut delivered = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while delivered.len() < N {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} of {N} deliveries leased within 30 s after the reconnects",
                delivered.len()
            );
            for l in store.lease(ENDPOINT, 64, Duration::from_millis(500)).await? {
                let id = l.delivery_id;
                if store.settle(l, Outcome::Delivered { via: Handover::Http(200) }).await.is_ok() {
                    delivered.insert(id);
                }
            }
        }
        anyhow::ensure!(store.counts().await?.pending == 0, "pending: {:?}", store.counts().await?);
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    result
}

/// Has the broker close this process's store connection of `prefix` (`rabbitmqctl
/// close_connection`, found by the connection name in its client properties: RabbitMQ 3.10
/// cannot list `user_provided_name`). `false` (skip) without a local `rabbitmqctl`, unless CI is set.
fn close_connection_of(prefix: &str) -> anyhow::Result<bool> {
    let listed = match rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]) {
        Ok(l) => l,
        Err(e) => {
            anyhow::ensure!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs a local rabbitmqctl: {e:#}");
            eprintln!("skipped: no local `rabbitmqctl` to close a connection ({e:#})");
            return Ok(false);
        }
    };
    let ours = format!("\"lotse {prefix}.events pid {}\"", std::process::id());
    let pid = listed
        .lines()
        .find(|l| l.contains(&ours))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no connection named {ours} in {listed}"))?;
    rabbitmqctl(&["close_connection", pid, "closed by a test"])?;
    Ok(true)
}

/// How often `store` read the event stream again from its start (its broker link's `rereads`).
fn rereads_of(store: &RabbitStore) -> u64 {
    store.broker().map_or(0, |l| l.rereads)
}

/// A message in a work queue that this version cannot read (published by hand, or by a later
/// version) is not dropped: it is moved as it is, with a `lotse-unreadable` header saying why,
/// to the endpoint's dead queue, and the work behind it is leased as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_an_unreadable_work_message_is_moved_to_the_dead_queue_not_dropped() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = unreadable_work(&store, &url, &prefix).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn unreadable_work(store: &RabbitStore, url: &str, prefix: &str) -> anyhow::Result<()> {
    use lapin::options::BasicGetOptions;

    let shared = &store.shared;
    let foreign = lapin::BasicProperties::default().with_delivery_mode(2).with_app_id("someone-else".into());
    shared.publish(&shared.names.work(ENDPOINT), b"not a lotse work message", foreign).await?;
    let s = submission(&[], &[ENDPOINT]);
    store.intake(s.clone()).await?;
    let lease =
        store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("the delivery behind it was leased");
    anyhow::ensure!(lease.submission_id == s.id, "leased {} instead of the submission", lease.submission_id);
    store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;

    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let dead = super::topology::Names::new(prefix).dead(ENDPOINT);
    let got = ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true }).await?;
    let _ = conn.close(200, "bye".into()).await;
    let got = got.ok_or_else(|| anyhow::anyhow!("nothing in {dead}: the unreadable message was dropped"))?;
    anyhow::ensure!(got.delivery.data == b"not a lotse work message", "the body changed on the way");
    let props = &got.delivery.properties;
    anyhow::ensure!(
        props.app_id().as_ref().map(|a| a.as_str()) == Some("someone-else"),
        "properties not kept: {props:?}"
    );
    let why = props.headers().as_ref().and_then(|h| h.inner().get("lotse-unreadable").cloned());
    anyhow::ensure!(
        matches!(&why, Some(lapin::types::AMQPValue::LongString(s)) if !s.as_bytes().is_empty()),
        "no reason given: {why:?}"
    );
    Ok(())
}

/// A stream record this version cannot read (a record type of a later version) is skipped on
/// its own and counted; the records batched beside it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_an_unreadable_event_record_skips_only_itself_and_is_counted() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = unreadable_record(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn unreadable_record(store: &RabbitStore) -> anyhow::Result<()> {
    use super::record::{self, Envelope, SubmittedRecord};
    use crate::store::ReceiptDelivery;

    let s = submission(&[], &[ENDPOINT]);
    let claim = SubmittedRecord {
        id: s.id,
        partner: s.partner.clone(),
        dedup_keys: s.dedup_keys.clone(),
        received_at: s.received_at,
        content_type: s.content_type.clone(),
        meta: serde_json::value::to_raw_value(&s.meta)?,
        message_id: s.message_id.clone(),
        route: s.route.clone(),
        deliveries: s.deliveries.iter().map(|d| ReceiptDelivery { id: d.id, endpoint: d.endpoint.clone() }).collect(),
        notes: s.notes.clone(),
        size: s.original.len(),
    };
    // As another process would write them: rids this process does not wait for.
    let later = format!(r#"{{"rid":"{}","at":0,"record":{{"type":"from_a_later_version","x":1}}}}"#, Uuid::now_v7());
    let known =
        record::encode(&Envelope { rid: Uuid::now_v7(), at: now_millis(), record: Record::Submitted(claim) }, None)?;
    let body = record::frame(&[later.into_bytes(), known]);
    let shared = &store.shared;
    shared.publish(&shared.names.events(), &body, lapin::BasicProperties::default().with_delivery_mode(2)).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.submission(s.id).await?.is_none() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the claim beside an unreadable record was not applied within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let skipped = store.broker().map_or(0, |b| b.unreadable_records);
    anyhow::ensure!(skipped == 1, "{skipped} unreadable records counted, not 1");
    Ok(())
}

/// `amqps://` to a broker on an administration's own PKI that demands a client certificate
/// (here the local RabbitMQ behind a TLS front that verifies one): with the CA and the client
/// certificate of `[queue]`, the store starts and works; without the client certificate, or
/// without the CA, the start fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_amqps_with_the_administrations_ca_and_a_client_certificate() -> anyhow::Result<()> {
    // Only to skip without a broker (and fail without one under CI).
    let Some((url, _)) = broker().await? else { return Ok(()) };

    let pki = crate::testing_pki::Pki::new();
    let amqps = pki.amqps_front(&url).await?;
    let tls = |ca: Option<std::path::PathBuf>, cert: Option<std::path::PathBuf>, key: Option<std::path::PathBuf>| {
        crate::config::amqp_tls(ca.as_deref(), cert.as_deref(), key.as_deref())
    };
    let endpoints = [ENDPOINT.to_owned()];

    let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
    let full = tls(pki.file("ca.pem"), pki.file("client.pem"), pki.file("client.key"))?;
    let store = RabbitStore::open_with(&amqps, &prefix, &endpoints, tls_only(full)).await?;
    let worked = async {
        let s = submission(&[], &[ENDPOINT]);
        store.intake(s.clone()).await?;
        let lease = store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("leased over amqps");
        anyhow::ensure!(lease.submission_id == s.id, "leased another submission");
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
        let state = store.delivery(s.deliveries[0].id).await?.map(|v| v.state);
        anyhow::ensure!(state == Some(DeliveryState::Delivered), "the delivery is {state:?}");
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    worked?;

    for (case, config, why) in [
        ("no client certificate", tls(pki.file("ca.pem"), None, None)?, "CertificateRequired"),
        ("the system's CAs only", tls(None, pki.file("client.pem"), pki.file("client.key"))?, "UnknownIssuer"),
    ] {
        let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        let opened = RabbitStore::open_with(&amqps, &prefix, &endpoints, tls_only(config)).await;
        let _ = RabbitStore::delete_topology(&url, &prefix, &endpoints).await;
        match opened {
            Ok(store) => {
                store.close().await;
                anyhow::bail!("{case}: the store started");
            }
            Err(e) => {
                let e = format!("{e:#}");
                anyhow::ensure!(e.contains(why), "{case}: the error does not say `{why}`: {e}");
                anyhow::ensure!(!e.contains("guest:guest"), "{case}: the password is in the error: {e}");
                anyhow::ensure!(e.contains("tls_ca"), "{case}: the error does not name the setting: {e}");
                // A lasting refusal stops the start at once (others are retried for 15 s).
                let waited = started.elapsed();
                anyhow::ensure!(waited < Duration::from_secs(10), "{case}: the start tried for {waited:?}");
            }
        }
    }
    Ok(())
}

fn tls_only(tls: lapin::tcp::OwnedTLSConfig) -> super::OpenOptions {
    super::OpenOptions { tls, ..super::OpenOptions::default() }
}

/// A store that closed saved its index; opened again, it reads only the stream written since
/// (here by another process) and answers exactly as a process that read the whole stream:
/// every submission's status and log, the listings, the counts, dedup and pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_closed_store_starts_again_from_its_snapshot() -> anyhow::Result<()> {
    let Some((url, prefix)) = broker().await? else { return Ok(()) };
    let result = from_snapshot(&url, &prefix).await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

fn with_snapshot(path: &std::path::Path) -> super::OpenOptions {
    super::OpenOptions { snapshot: Some(path.to_owned()), ..super::OpenOptions::default() }
}

/// Everything a process answers about these submissions, as JSON, to compare two processes.
async fn answers(store: &RabbitStore, ids: &[crate::store::SubmissionId]) -> anyhow::Result<serde_json::Value> {
    let mut submissions = Vec::new();
    for id in ids {
        submissions.push(store.submission(*id).await?);
    }
    let all = store.deliveries(&crate::store::DeliveryFilter::default()).await?;
    Ok(serde_json::json!({
        "submissions": submissions,
        "deliveries": all,
        "counts": store.counts().await?,
        "pauses": store.pauses(),
    }))
}

async fn from_snapshot(url: &str, prefix: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = super::snapshot::path(dir.path(), prefix);
    let endpoints = [ENDPOINT.to_owned()];
    let a = RabbitStore::open_with(url, prefix, &endpoints, with_snapshot(&path)).await?;
    anyhow::ensure!(a.broker().map(|b| b.started_at_offset) == Some(0), "no snapshot yet, but started after 0");
    let first = submission(&["idem:snapshot:first"], &[ENDPOINT]);
    let mut ids = vec![first.id];
    a.intake(first.clone()).await?;
    for _ in 0..3 {
        let s = submission(&[], &[ENDPOINT]);
        ids.push(s.id);
        a.intake(s).await?;
    }
    let mut leased = a.lease(ENDPOINT, 3, Duration::from_secs(15)).await?;
    while leased.len() < 3 {
        leased.extend(a.lease(ENDPOINT, 3 - leased.len(), Duration::from_secs(15)).await?);
    }
    let mut leased = leased.into_iter();
    let (delivered, dead, retried) = (leased.next(), leased.next(), leased.next());
    a.settle(delivered.expect("leased"), Outcome::Delivered { via: Handover::Http(200) }).await?;
    a.settle(dead.expect("leased"), Outcome::Dead { error: "HTTP 400".into() }).await?;
    let retried = retried.expect("leased");
    a.settle(retried, Outcome::Retry { not_before: now_millis() + 3_600_000, error: "HTTP 503".into() }).await?;
    a.set_paused(ENDPOINT, true, "ops", Some("maintenance")).await?;
    a.close().await;
    anyhow::ensure!(path.exists(), "no snapshot at {} after close", path.display());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        anyhow::ensure!(mode == 0o600, "the snapshot is readable by others: {mode:o}");
    }

    // Another process writes while this one is stopped.
    let b = RabbitStore::open(url, prefix, &endpoints).await?;
    let later = submission(&[], &[ENDPOINT]);
    ids.push(later.id);
    b.intake(later).await?;
    b.close().await;

    let again = RabbitStore::open_with(url, prefix, &endpoints, with_snapshot(&path)).await?;
    let whole = RabbitStore::open(url, prefix, &endpoints).await?;
    let checked = async {
        let started = again.broker().map_or(0, |b| b.started_at_offset);
        anyhow::ensure!(started > 0, "the start read the whole stream, not from the snapshot");
        anyhow::ensure!(whole.broker().map(|b| b.started_at_offset) == Some(0), "the full read started after 0");
        let (from_snapshot, from_stream) = (answers(&again, &ids).await?, answers(&whole, &ids).await?);
        anyhow::ensure!(
            from_snapshot == from_stream,
            "from the snapshot: {from_snapshot:#}\nfrom the whole stream: {from_stream:#}"
        );
        anyhow::ensure!(
            from_snapshot["submissions"].as_array().is_some_and(|s| s.iter().all(|s| !s.is_null())),
            "a submission is unknown: {from_snapshot:#}"
        );
        anyhow::ensure!(!again.pauses().is_empty(), "the pause was lost");
        // Dedup holds across the snapshot: the first key is still taken.
        let resent = submission(&["idem:snapshot:first"], &[ENDPOINT]);
        match again.intake(resent).await? {
            Intake::Duplicate(r) if r.submission_id == first.id => {}
            other => anyhow::bail!("a resend after the snapshot was {other:?}"),
        }
        anyhow::Ok(())
    }
    .await;
    again.close().await;
    whole.close().await;
    checked
}

/// A snapshot the stream no longer matches (the stream was deleted and written anew under the
/// same prefix) is not used: the start reads the stream from its beginning and knows only what
/// it holds now. A file that is no snapshot is ignored the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_snapshot_the_stream_no_longer_matches_is_not_used() -> anyhow::Result<()> {
    let Some((url, prefix)) = broker().await? else { return Ok(()) };
    let result = stale_snapshot(&url, &prefix).await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn stale_snapshot(url: &str, prefix: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = super::snapshot::path(dir.path(), prefix);
    let endpoints = [ENDPOINT.to_owned()];
    let a = RabbitStore::open_with(url, prefix, &endpoints, with_snapshot(&path)).await?;
    let old = submission(&[], &[ENDPOINT]);
    a.intake(old.clone()).await?;
    a.close().await;
    anyhow::ensure!(path.exists(), "no snapshot after close");
    let saved = std::fs::read(&path)?;

    RabbitStore::delete_topology(url, prefix, &endpoints).await?;
    let b = RabbitStore::open(url, prefix, &endpoints).await?;
    let new = submission(&[], &[ENDPOINT]);
    b.intake(new.clone()).await?;
    b.close().await;

    let again = RabbitStore::open_with(url, prefix, &endpoints, with_snapshot(&path)).await?;
    let checked = async {
        anyhow::ensure!(again.submission(old.id).await?.is_none(), "the old stream's submission is still known");
        anyhow::ensure!(again.submission(new.id).await?.is_some(), "the new stream's submission is unknown");
        let started = again.broker().map_or(u64::MAX, |b| b.started_at_offset);
        anyhow::ensure!(started == 0, "reported a start at offset {started}");
        anyhow::Ok(())
    }
    .await;
    again.close().await;
    checked?;

    for junk in [b"not a snapshot".to_vec(), saved.iter().take(saved.len() / 2).copied().collect()] {
        std::fs::write(&path, junk)?;
        let store = RabbitStore::open_with(url, prefix, &endpoints, with_snapshot(&path)).await?;
        let known = store.submission(new.id).await?.is_some();
        let started = store.broker().map_or(u64::MAX, |b| b.started_at_offset);
        store.close().await;
        anyhow::ensure!(known && started == 0, "with a broken snapshot: known {known}, started at {started}");
    }
    Ok(())
}

/// Closing a store whose broker stopped answering (its supervisor is in the middle of a connect
/// that hangs) returns within its bound instead of holding a stopping process for the connect
/// timeout; nothing is saved then. The broker here is reached through a relay the test freezes:
/// it cuts the open connection and takes new ones without ever answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_closing_during_a_hanging_reconnect_is_bounded() -> anyhow::Result<()> {
    let Some((url, prefix)) = broker().await? else { return Ok(()) };
    let relay = Relay::to(&url).await?;
    let dir = tempfile::tempdir()?;
    let path = super::snapshot::path(dir.path(), &prefix);
    let endpoints = [ENDPOINT.to_owned()];
    let store = RabbitStore::open_with(&relay.url, &prefix, &endpoints, with_snapshot(&path)).await?;
    store.intake(submission(&[], &[ENDPOINT])).await?;

    relay.freeze();
    // The store notices (its stream consumer ends) and starts a connect that hangs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.broker().is_some_and(|b| b.connected) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the cut connection was not noticed within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the reconnect's backoff (0.2 s after a session that worked), well inside the
    // connect's 10 s timeout: the supervisor is in the hanging connect now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    store.close().await;
    let took = started.elapsed();
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    anyhow::ensure!(took < Duration::from_secs(8), "close took {took:?}");
    anyhow::ensure!(!path.exists(), "a snapshot was saved by a store that did not close cleanly");
    Ok(())
}

/// A lease taken on a connection that broke, settled after the reconnect (an attempt in flight
/// during a broker restart), returns: the outcome stands, and the copy the broker gives out
/// again is dropped as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_lease_settled_after_a_reconnect_returns() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = settle_after_reconnect(&store, || close_connection_of(&prefix)).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

/// The same when the connection is cut (the broker's TCP connection reset, as in a broker
/// restart) instead of closed by the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_lease_settled_after_a_cut_connection_returns() -> anyhow::Result<()> {
    let Some((url, prefix)) = broker().await? else { return Ok(()) };
    let relay = Relay::to(&url).await?;
    let store = RabbitStore::open(&relay.url, &prefix, &[ENDPOINT.to_owned()]).await?;
    let result = settle_after_reconnect(&store, || {
        relay.cut();
        Ok(true)
    })
    .await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

/// A relay to the broker of a URL, for tests that break the connection from outside.
struct Relay {
    /// The URL through the relay.
    url: String,
    cut: tokio::sync::broadcast::Sender<()>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// New connections hear the broker up to its `connection.open-ok`, then nothing more.
    mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections muted so far.
    muted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    async fn to(url: &str) -> anyhow::Result<Relay> {
        let upstream = crate::testing_pki::broker_addr(url).await?;
        let (cut, _) = tokio::sync::broadcast::channel::<()>(1);
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let muted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, f, m, mc) = (cut.clone(), frozen.clone(), mute.clone(), muted.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    held.push(client); // taken, never answered
                    continue;
                }
                let mut stop = c.subscribe();
                let mute = m.load(std::sync::atomic::Ordering::SeqCst);
                let muted = mc.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    if !mute {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = stop.recv() => {}
                        }
                        return;
                    }
                    let (mut client_rd, client_wr) = client.split();
                    let (server_rd, mut server_wr) = server.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_rd, &mut server_wr) => {}
                        _ = pass_until_open_ok(server_rd, client_wr, &muted) => {}
                        _ = stop.recv() => {}
                    }
                });
            }
        });
        let mut relayed = reqwest::Url::parse(url)?;
        relayed.set_host(Some("127.0.0.1"))?;
        relayed.set_port(Some(port)).map_err(|_| anyhow::anyhow!("no port"))?;
        Ok(Relay { url: relayed.to_string(), cut, frozen, mute, muted })
    }

    /// From now on (`true`), new connections hear the broker until it has opened the connection
    /// (`connection.open-ok`) and nothing after: a broker that stops answering mid-setup.
    fn mute_after_open(&self, on: bool) {
        self.mute.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn muted(&self) -> usize {
        self.muted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cuts every connection relayed so far; new ones are relayed again.
    fn cut(&self) {
        let _ = self.cut.send(());
    }

    /// Cuts every connection, and from now on takes new ones without ever answering.
    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }
}

async fn settle_after_reconnect(store: &RabbitStore, cut: impl FnOnce() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let s = submission(&[], &[ENDPOINT]);
    store.intake(s.clone()).await?;
    let lease = store.lease(ENDPOINT, 1, Duration::from_secs(15)).await?.pop().expect("leased");
    if !cut()? {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !store.broker().is_some_and(|b| b.connected && b.connections >= 2) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no reconnect within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = tokio::time::timeout(
        Duration::from_secs(20),
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }),
    )
    .await;
    anyhow::ensure!(settled.is_ok(), "the settle of a lease from the broken connection did not return within 20 s");
    settled.ok().transpose()?;
    let state = store.delivery(s.deliveries[0].id).await?.map(|v| v.state);
    anyhow::ensure!(state == Some(DeliveryState::Delivered), "the delivery is {state:?}");
    let again = store.lease(ENDPOINT, 1, Duration::from_secs(3)).await?;
    anyhow::ensure!(again.is_empty(), "the delivered delivery was leased again");
    Ok(())
}

/// The overview's figures of an endpoint's work in this process: what the broker gave it,
/// what waits for a lease (unacked, so no other process gets it), what is leased now, and when
/// a lease last took some. The figures `lotse status` shows to tell a slow receiver from work
/// that waits here while nobody takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_the_work_in_hand_is_reported() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = work_in_hand(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn work_in_hand(store: &RabbitStore) -> anyhow::Result<()> {
    let work = || store.broker().and_then(|b| b.work.into_iter().next()).expect("one endpoint's work");
    let first = work();
    anyhow::ensure!(first.endpoint == ENDPOINT, "{first:?}");
    anyhow::ensure!(
        (first.received, first.waiting, first.leased, first.last_lease_ms_ago) == (0, 0, 0, None),
        "{first:?}"
    );
    for _ in 0..3 {
        anyhow::ensure!(matches!(store.intake(submission(&[], &[ENDPOINT])).await?, Intake::Accepted(_)));
    }
    let arrived = eventually(Duration::from_secs(10), || work().waiting == 3).await;
    let w = work();
    anyhow::ensure!(arrived && w.received == 3 && w.leased == 0 && w.last_lease_ms_ago.is_none(), "{w:?}");
    let leases = store.lease(ENDPOINT, 2, Duration::from_secs(5)).await?;
    anyhow::ensure!(leases.len() == 2, "leased {}", leases.len());
    let w = work();
    anyhow::ensure!((w.received, w.waiting, w.leased) == (3, 1, 2), "{w:?}");
    anyhow::ensure!(w.last_lease_ms_ago.is_some_and(|ms| ms < 5_000), "{w:?}");
    for lease in leases {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    let w = work();
    anyhow::ensure!((w.waiting, w.leased) == (1, 0), "{w:?}");
    Ok(())
}

/// Work that reaches a lease from a connection that is no longer the current one, while that
/// connection is still open (between a reconnect's decision and the old connection's close), is
/// given back to the broker, not dropped: dropped, it stayed unacked on that connection, held by
/// nobody, for as long as the connection lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_work_of_a_connection_no_longer_current_is_given_back() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = stale_work(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn stale_work(store: &RabbitStore) -> anyhow::Result<()> {
    let Intake::Accepted(receipt) = store.intake(submission(&[], &[ENDPOINT])).await? else {
        anyhow::bail!("not accepted")
    };
    let waiting = || store.broker().and_then(|b| b.work.into_iter().next()).map_or(0, |w| w.waiting);
    anyhow::ensure!(eventually(Duration::from_secs(10), || waiting() == 1).await, "the work did not arrive");
    // The session stops being current; its connection stays open.
    let current = store.shared.session.write().map_err(|_| anyhow::anyhow!("poisoned"))?.take();
    let leased = store.lease(ENDPOINT, 1, Duration::from_millis(500)).await;
    *store.shared.session.write().map_err(|_| anyhow::anyhow!("poisoned"))? = current;
    anyhow::ensure!(leased?.is_empty(), "leased work of a session that was not current");
    // Given back, it comes again on the same (current again) connection.
    let leases = store.lease(ENDPOINT, 1, Duration::from_secs(10)).await?;
    anyhow::ensure!(leases.len() == 1, "the work given back did not come again");
    anyhow::ensure!(leases[0].delivery_id == receipt.deliveries[0].id, "another delivery: {:?}", leases[0]);
    for lease in leases {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    Ok(())
}

/// Relays the broker's frames up to and with `connection.open-ok` (method frame of class 10,
/// method 41), counts the connection in `muted`, then reads on and forwards nothing.
async fn pass_until_open_ok(
    mut server: tokio::net::tcp::ReadHalf<'_>,
    mut client: tokio::net::tcp::WriteHalf<'_>,
    muted: &std::sync::atomic::AtomicUsize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut open = false;
    loop {
        let Ok(n) = server.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        if open {
            continue; // heard, never passed on
        }
        pending.extend_from_slice(&chunk[..n]);
        // A frame: type (1), channel (2), payload size (4), payload, end marker (1).
        while !open && pending.len() >= 7 {
            let size = u32::from_be_bytes([pending[3], pending[4], pending[5], pending[6]]) as usize;
            if pending.len() < 8 + size {
                break;
            }
            let frame: Vec<u8> = pending.drain(..8 + size).collect();
            if client.write_all(&frame).await.is_err() {
                return;
            }
            open = frame[0] == 1 && size >= 4 && frame[7..11] == [0, 10, 0, 41];
            if open {
                muted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// A broker that opens a connection and then answers nothing (one still starting after a
/// restart, or stalled) does not hold the reconnect for ever: the connection's setup (its
/// channels, topology, consumers) is bounded, and the next connection, to a broker that
/// answers again, restores the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_broker_silent_after_the_handshake_does_not_hold_the_reconnect() -> anyhow::Result<()> {
    let Some((url, prefix)) = broker().await? else { return Ok(()) };
    let relay = Relay::to(&url).await?;
    let store = RabbitStore::open(&relay.url, &prefix, &[ENDPOINT.to_owned()]).await?;
    let result = silent_setup(&store, &relay).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn silent_setup(store: &RabbitStore, relay: &Relay) -> anyhow::Result<()> {
    relay.mute_after_open(true);
    relay.cut();
    let lost = eventually(Duration::from_secs(10), || store.broker().is_some_and(|b| !b.connected)).await;
    anyhow::ensure!(lost, "the cut was not noticed: {:?}", store.broker());
    let muted = eventually(Duration::from_secs(10), || relay.muted() >= 1).await;
    anyhow::ensure!(muted, "no connection reached the silent setup");
    // In the silent setup now; the broker answers again for the next connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.mute_after_open(false);
    let back = eventually(super::SETUP_TIMEOUT + Duration::from_secs(20), || {
        store.broker().is_some_and(|b| b.connected) && store.health().is_ok()
    })
    .await;
    anyhow::ensure!(back, "not connected again after the silent setup: {:?}", store.broker());
    let link = store.broker().expect("link");
    anyhow::ensure!(link.connections >= 2, "{link:?}");
    anyhow::ensure!(matches!(store.intake(submission(&[], &[ENDPOINT])).await?, Intake::Accepted(_)));
    Ok(())
}

/// Intakes at the same time share packs (one work message for several deliveries), and a pack
/// that comes back after a reconnect brings back only what was not settled: its parts that were
/// delivered, retried (their newer copy waits in the wait ladder) or dead are dropped at lease
/// (`Index::outrun`), not attempted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_intakes_at_once_share_packs_and_a_pack_given_back_brings_back_only_what_was_unsettled()
-> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = packs(&store, &prefix).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

/// `n` intakes for [`ENDPOINT`] at the same time (so packs form): their delivery ids.
async fn intake_at_once(store: &RabbitStore, n: usize) -> anyhow::Result<HashSet<DeliveryId>> {
    let mut ids = HashSet::new();
    for intake in futures::future::join_all((0..n).map(|_| store.intake(submission(&[], &[ENDPOINT])))).await {
        let Intake::Accepted(receipt) = intake? else { anyhow::bail!("not accepted") };
        ids.insert(receipt.deliveries[0].id);
    }
    Ok(ids)
}

/// Leases [`ENDPOINT`]'s work on `store` until `n` are leased or 20 s passed.
async fn lease_until(store: &RabbitStore, n: usize) -> anyhow::Result<Vec<Lease>> {
    let mut leases = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while leases.len() < n && tokio::time::Instant::now() < deadline {
        leases.extend(store.lease(ENDPOINT, n - leases.len(), Duration::from_millis(500)).await?);
    }
    Ok(leases)
}

async fn packs(store: &RabbitStore, prefix: &str) -> anyhow::Result<()> {
    const N: usize = 96;
    let ids = intake_at_once(store, N).await?;
    let work = || store.broker().and_then(|b| b.work.into_iter().next()).expect("one endpoint's work");
    // Every delivery is leased once, and fewer work messages than deliveries carried them.
    let leases = lease_until(store, N).await?;
    let leased: HashSet<_> = leases.iter().map(|l| l.delivery_id).collect();
    anyhow::ensure!(leases.len() == N && leased == ids, "leased {} ({} distinct) of {N}", leases.len(), leased.len());
    let received = work().received;
    anyhow::ensure!(received < N as u64, "{received} work messages for {N} deliveries: no packs");
    // A quarter each: delivered, retried (due in an hour), dead, held.
    let (mut held, mut kept) = (HashSet::new(), Vec::new());
    for (i, lease) in leases.into_iter().enumerate() {
        match i % 4 {
            0 => store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?,
            1 => {
                let not_before = now_millis() + 3_600_000;
                store.settle(lease, Outcome::Retry { not_before, error: "503".into() }).await?
            }
            2 => store.settle(lease, Outcome::Dead { error: "422".into() }).await?,
            _ => {
                held.insert(lease.delivery_id);
                kept.push(lease);
            }
        }
    }
    // Every pack still has a held part, so none was acked; the connection goes, and the broker
    // gives every pack out again, with all its parts.
    if !close_connection_of(prefix)? {
        return Ok(());
    }
    let mut again = lease_until(store, held.len()).await?;
    // Whatever else would come, comes within this wait.
    again.extend(store.lease(ENDPOINT, N, Duration::from_secs(1)).await?);
    let back: Vec<_> = again.iter().map(|l| l.delivery_id).collect();
    let settled_back = back.iter().filter(|id| !held.contains(id)).count();
    anyhow::ensure!(settled_back == 0, "{settled_back} settled deliveries were leased again");
    let back: HashSet<_> = back.into_iter().collect();
    anyhow::ensure!(back == held && again.len() == held.len(), "leased again {} of {} held", again.len(), held.len());
    for lease in again {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    let counts = store.counts().await?;
    let quarter = (N / 4) as u64;
    anyhow::ensure!(counts.pending == quarter && counts.dead == quarter, "{counts:?}");
    // The leases of the connection that went settle without an error (their acks are moot).
    for lease in kept {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    Ok(())
}

/// A pulled endpoint's work goes one delivery per message (a pack's other parts would wait in
/// the process that took it while a mailbox's reader asks another). Packs queued while the
/// endpoint was pushed (the config changed since) are split on their first lease: each part
/// goes back to the queue alone, and any process leases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_pulled_endpoint_takes_no_packs_and_splits_those_queued_before() -> anyhow::Result<()> {
    let Some((pushed, url, prefix)) = open().await? else { return Ok(()) };
    let endpoints = [ENDPOINT.to_owned()];
    let result = async {
        const N: usize = 64;
        intake_at_once(&pushed, N).await?;
        pushed.close().await;
        let a = RabbitStore::open_pulling(&url, &prefix, &endpoints, &endpoints).await?;
        let b = RabbitStore::open_pulling(&url, &prefix, &endpoints, &endpoints).await?;
        anyhow::ensure!(a.shared.queues[ENDPOINT].packer.is_none(), "a pulled endpoint's intake packs");
        let ids = intake_at_once(&a, N).await?;
        // `a` leases one at a time, as a mailbox's reader does; `b` takes the rest.
        let first = a.lease(ENDPOINT, 1, Duration::from_secs(10)).await?;
        anyhow::ensure!(first.len() == 1, "leased {}", first.len());
        let mut leased: Vec<_> = first.iter().map(|l| l.delivery_id).collect();
        let on_b = lease_until(&b, 2 * N - 1).await?;
        leased.extend(on_b.iter().map(|l| l.delivery_id));
        let distinct: HashSet<_> = leased.iter().copied().collect();
        anyhow::ensure!(
            leased.len() == 2 * N && distinct.len() == 2 * N,
            "leased {} ({} distinct) of {}",
            leased.len(),
            distinct.len(),
            2 * N
        );
        anyhow::ensure!(ids.is_subset(&distinct), "a delivery of the pulled intakes was not leased");
        // One message per lease: `a` took one delivery, and kept none back.
        let a_work = a.broker().and_then(|w| w.work.into_iter().next()).expect("work");
        anyhow::ensure!((a_work.waiting, a_work.leased) == (0, 1), "{a_work:?}");
        for lease in first {
            a.settle(lease, Outcome::Delivered { via: Handover::Mailbox }).await?;
        }
        for lease in on_b {
            b.settle(lease, Outcome::Delivered { via: Handover::Mailbox }).await?;
        }
        a.close().await;
        b.close().await;
        anyhow::Ok(())
    }
    .await;
    RabbitStore::delete_topology(&url, &prefix, &endpoints).await?;
    result
}

/// A pack's delivery whose settle could not be recorded goes back to the queue alone and at
/// once, counting the attempt made: it does not wait for the rest of its pack (here a delivery
/// still leased), nor brings the rest back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_delivery_of_a_pack_given_back_goes_back_alone() -> anyhow::Result<()> {
    let Some((store, url, prefix)) = open().await? else { return Ok(()) };
    let result = pack_give_back(&store).await;
    store.close().await;
    RabbitStore::delete_topology(&url, &prefix, &[ENDPOINT.to_owned()]).await?;
    result
}

async fn pack_give_back(store: &RabbitStore) -> anyhow::Result<()> {
    const N: usize = 64;
    intake_at_once(store, N).await?;
    let mut leases = lease_until(store, N).await?;
    anyhow::ensure!(leases.len() == N, "leased {} of {N}", leases.len());
    // Two deliveries of one pack: the first is given back, the second stays leased.
    let pack_of = |token: u64| {
        let leases = store.shared.leases.lock().expect("leases");
        leases.get(&token).filter(|h| h.ack.parts > 1).map(|h| std::sync::Arc::as_ptr(&h.ack) as usize)
    };
    let first = leases.iter().position(|l| pack_of(l.token).is_some()).ok_or_else(|| anyhow::anyhow!("no pack"))?;
    let first = leases.remove(first);
    let pack = pack_of(first.token);
    let sibling = leases.iter().position(|l| pack_of(l.token) == pack).ok_or_else(|| anyhow::anyhow!("no sibling"))?;
    let sibling = leases.remove(sibling);
    for lease in leases {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    let held = store.shared.leases.lock().expect("leases").remove(&first.token).expect("held");
    let _ = super::store::give_back(&store.shared, held, &first, StoreError::Unavailable("test".into())).await;
    let again = store.lease(ENDPOINT, N, Duration::from_secs(5)).await?;
    let ids: Vec<_> = again.iter().map(|l| (l.delivery_id, l.attempt)).collect();
    anyhow::ensure!(ids == [(first.delivery_id, first.attempt + 1)], "leased again: {ids:?} (given back {first:?})");
    for lease in again.into_iter().chain([sibling]) {
        store.settle(lease, Outcome::Delivered { via: Handover::Http(200) }).await?;
    }
    anyhow::ensure!(store.counts().await?.pending == 0, "{:?}", store.counts().await?);
    anyhow::ensure!(store.lease(ENDPOINT, N, Duration::from_millis(500)).await?.is_empty(), "work left over");
    Ok(())
}
