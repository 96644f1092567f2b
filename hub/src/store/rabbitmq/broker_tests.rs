//! Tests against a real broker of what the conformance suite cannot reach from outside: a
//! replay's work message whose claim never reached the stream (the replaying process died in
//! between). Broker at `LOTSE_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! a prefix of its own, queues deleted afterwards; skipped without a broker unless `CI=true`.

use std::time::Duration;

use uuid::Uuid;

use super::index::Applied;
use super::record::{Record, ReplayedRecord};
use super::work::WorkMessage;
use super::{CLAIM_WAIT, RabbitStore};
use crate::store::conformance::submission;
use crate::store::{DeliveryState, Outcome, ReplayOutcome, Store, now_millis};

const ENDPOINT: &str = "alpha";

/// A store on a fresh prefix, or `None` (skip) when no broker answers and CI is not set.
async fn open() -> anyhow::Result<Option<(RabbitStore, String, String)>> {
    let url = std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = format!("lotse-test-{}", Uuid::new_v4().simple());
    let opened =
        tokio::time::timeout(Duration::from_secs(20), RabbitStore::open(&url, &prefix, &[ENDPOINT.to_owned()])).await;
    match opened {
        Ok(Ok(store)) => Ok(Some((store, url, prefix))),
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
    store.settle(again, Outcome::Delivered { status: 200 }).await?;
    let events = store.submission(s.id).await?.expect("known").events;
    let replayed = events.iter().filter(|e| e.kind == "replayed").count();
    anyhow::ensure!(replayed == 1, "{replayed} `replayed` events; only the second replay happened");
    Ok(())
}
