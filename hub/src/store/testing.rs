//! Test stores that change one or two things of another store and pass the rest through:
//! implement [`Passthrough`] (`inner` and the methods that differ) and the type is a [`Store`].

use std::time::Duration;

use super::*;

#[async_trait::async_trait]
pub(crate) trait Passthrough: Send + Sync {
    /// The store every call not overridden goes to.
    fn inner(&self) -> &dyn Store;

    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError> {
        self.inner().intake(submission).await
    }
    async fn lease(&self, endpoint: &str, max: usize, wait: Duration) -> Result<Vec<Lease>, StoreError> {
        self.inner().lease(endpoint, max, wait).await
    }
    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), StoreError> {
        self.inner().settle(lease, outcome).await
    }
    async fn submission_by_key(&self, key: &str) -> Result<Option<SubmissionId>, StoreError> {
        self.inner().submission_by_key(key).await
    }
    fn relayed_verdicts(&self) -> Option<tokio::sync::broadcast::Receiver<MailboxVerdict>> {
        self.inner().relayed_verdicts()
    }
}

#[async_trait::async_trait]
impl<T: Passthrough + 'static> Store for T {
    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError> {
        Passthrough::intake(self, submission).await
    }
    async fn lease(&self, endpoint: &str, max: usize, wait: Duration) -> Result<Vec<Lease>, StoreError> {
        Passthrough::lease(self, endpoint, max, wait).await
    }
    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), StoreError> {
        Passthrough::settle(self, lease, outcome).await
    }
    async fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, StoreError> {
        self.inner().submission(id).await
    }
    async fn submission_by_key(&self, key: &str) -> Result<Option<SubmissionId>, StoreError> {
        Passthrough::submission_by_key(self, key).await
    }
    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryView>, StoreError> {
        self.inner().delivery(id).await
    }
    async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryView>, StoreError> {
        self.inner().deliveries(filter).await
    }
    async fn replay(&self, id: DeliveryId, actor: &str, reason: &str) -> Result<ReplayOutcome, StoreError> {
        self.inner().replay(id, actor, reason).await
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        self.inner().counts().await
    }
    async fn expire(&self, cutoffs: Cutoffs) -> Result<u64, StoreError> {
        self.inner().expire(cutoffs).await
    }
    async fn relay_verdict(&self, verdict: MailboxVerdict) -> Result<bool, StoreError> {
        self.inner().relay_verdict(verdict).await
    }
    fn relayed_verdicts(&self) -> Option<tokio::sync::broadcast::Receiver<MailboxVerdict>> {
        Passthrough::relayed_verdicts(self)
    }
    async fn set_paused(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner().set_paused(endpoint, paused, actor, reason).await
    }
    fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        self.inner().pauses()
    }
    fn health(&self) -> Result<(), StoreError> {
        self.inner().health()
    }
}
