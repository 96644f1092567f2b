//! Stores: where submissions, deliveries and their event logs live, and where delivery work is
//! queued. One trait, [`Store`], two backends:
//!
//! | | [`embedded`] (redb, default) | `rabbitmq` (scale-out) |
//! |---|---|---|
//! | intake durable when | the group commit that holds it is fsync'd | the broker confirmed every publish |
//! | work | per-endpoint ready index keyed by not-before time | quorum queue per endpoint |
//! | lease | in memory; a crash forgets leases, so in-flight work is sent again | unacked message |
//! | retry | new not-before time in the ready index | wait queue with TTL |
//! | dead | dead state + index | dead-letter queue |
//!
//! Invariants every backend keeps (checked by the conformance suite in `store::conformance`):
//! - `intake` returns only once the submission, its deliveries and first events are durable.
//! - The same dedup key is stored once; later intakes get the first [`Receipt`] back.
//! - A leased delivery is leased to nobody else until it is settled or its lease is lost
//!   (process death); lost leases come back, so delivery is at-least-once.
//! - Every state change appends an event to the submission's log.

#[doc(hidden)]
pub mod conformance;
pub mod embedded;
pub mod rabbitmq;
#[cfg(test)]
pub(crate) mod testing;
pub mod types;

pub use types::*;

use std::time::Duration;

/// The storage and work-queue backend.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new submission with its deliveries, durably, or returns the first receipt of an
    /// earlier submission that shares one of its dedup keys.
    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError>;

    /// Leases up to `max` deliveries of `endpoint` that are due, waiting up to `wait` for one to
    /// become due. Returns an empty list when none came in time.
    async fn lease(&self, endpoint: &str, max: usize, wait: Duration) -> Result<Vec<Lease>, StoreError>;

    /// Records the outcome of one attempt and releases the lease.
    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), StoreError>;

    /// A submission with its deliveries and event log.
    async fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, StoreError>;

    /// The submission that holds a dedup key (`idem:<partner>:<Idempotency-Key>` or
    /// `msg:<partner>:<message id>`), if one does: how an operator finds a case by the id the
    /// partner knows.
    async fn submission_by_key(&self, key: &str) -> Result<Option<SubmissionId>, StoreError>;

    /// One delivery.
    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryView>, StoreError>;

    /// Deliveries matching a filter, newest first.
    async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError>;

    /// Puts a dead delivery back to work with the same bytes and id; audited as an event.
    async fn replay(&self, id: DeliveryId, actor: &str, reason: &str) -> Result<ReplayOutcome, StoreError>;

    /// Counts per state, for metrics and the admin overview.
    async fn counts(&self) -> Result<Counts, StoreError>;

    /// Retention: deletes every submission `cutoffs` lets go (its payload, renditions,
    /// deliveries, event log and dedup keys), and returns how many. A later resend of such a
    /// message is a new submission. Backends without retention answer an error.
    async fn expire(&self, cutoffs: Cutoffs) -> Result<u64, StoreError> {
        let _ = cutoffs;
        Err(StoreError::Unavailable(
            "this store does not delete old submissions; see [retention] in docs/configuration.md".into(),
        ))
    }

    /// Relays a mailbox's verdict to whichever process holds the delivery (a store that several
    /// processes share); `false` when there is no other process to tell (this process holds
    /// every lease of the store, as the embedded store's does).
    async fn relay_verdict(&self, verdict: MailboxVerdict) -> Result<bool, StoreError> {
        let _ = verdict;
        Ok(false)
    }

    /// The verdicts relayed by any process, as this process learns them (`None`: never any).
    fn relayed_verdicts(&self) -> Option<tokio::sync::broadcast::Receiver<MailboxVerdict>> {
        None
    }

    /// Pauses (`paused`) or resumes deliveries to `endpoint` on every process that shares this
    /// store, recorded with the `actor` who asked (and their `reason`, if given), and keeps the
    /// pause as long as the store keeps its history (RabbitMQ: a record in the event stream that
    /// every process folds, again after a restart; embedded: a row in its database, committed
    /// before this returns).
    async fn set_paused(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The endpoints paused through [`Store::set_paused`] as this process knows them now (on
    /// RabbitMQ a pause on another process shows once this one has folded its record, the lag
    /// of `docs/rabbitmq.md`).
    fn pauses(&self) -> std::collections::BTreeMap<String, Pause>;

    /// Whether the store takes writes now, as far as it knows without trying (the partner port's
    /// `/healthz`, for a load balancer): `Err` while it is known not to (a full disk, no broker).
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// This process's link to the broker that several processes share (the admin overview and
    /// `/metrics`, for operators); `None` for a store no other process shares.
    fn broker(&self) -> Option<BrokerStatus> {
        None
    }

    /// The process stops (after its workers and servers did): the RabbitMQ store closes its
    /// connection and saves its index for a faster next start. Nothing to do for the embedded
    /// store, whose every write is durable when it is answered.
    async fn close(&self) {}
}
