//! `Store` for [`RabbitStore`]: intake, lease, settle, status, replay.

use super::*;

#[async_trait::async_trait]
impl Store for RabbitStore {
    async fn intake(&self, submission: NewSubmission) -> Result<Intake, StoreError> {
        let shared = &self.shared;
        for d in &submission.deliveries {
            if !shared.queues.contains_key(&d.endpoint) {
                return Err(unavailable(format!("no work queue for endpoint `{}`", d.endpoint)));
            }
        }
        let digests: Vec<[u8; 16]> = submission.dedup_keys.iter().map(|k| dedup_digest(k)).collect();
        if let Some((receipt, _)) = shared.index(|i| i.holder_of(&digests))? {
            // Boxed, as below: a rare path, and inline its future would add to every intake's.
            return Box::pin(shared.duplicate(receipt, &submission)).await;
        }
        shared.writable()?;
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
            meta: serde_json::value::to_raw_value(&submission.meta)
                .map_err(|e| StoreError::Corrupt(format!("cannot serialize the meta: {e}")))?,
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
            return Box::pin(shared.duplicate(first, &submission)).await;
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
        // While the broker blocks publishers, an attempt could not be settled (its outcome is a
        // publish): the receiver would get the message, the settle would wait and fail, and the
        // message would come again. So nothing is handed out until the alarm clears; what this
        // process holds stays unacked meanwhile. Nor while the stream is read again from its
        // start (see `check_resume`): until then the index does not know which work is void (a
        // duplicate's, a lost replay's) or delivered already.
        while shared.blocked() || shared.catching_up.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(BLOCKED_POLL.min(deadline - now)).await;
        }
        let Ok(mut inbox) = tokio::time::timeout_at(deadline, queue.inbox.lock()).await else {
            return Ok(out);
        };
        let pulled = shared.pulled.iter().any(|p| p == endpoint);
        while out.len() < max {
            // Paused (on any process: the pause is a stream record) while this lease waited:
            // nothing more goes out. The callers ask before they lease; this closes the window
            // of a lease that began before the pause was folded.
            if shared.is_paused(endpoint) {
                break;
            }
            let part = if let Some(part) = inbox.stashed.pop_front() {
                queue.stashed.fetch_sub(1, Ordering::Relaxed);
                part
            } else {
                let incoming = if pulled {
                    match shared.pull(endpoint, if out.is_empty() { Some(deadline) } else { None }).await {
                        Ok(Some(i)) => {
                            queue.received.fetch_add(1, Ordering::Relaxed);
                            i
                        }
                        Ok(None) => break,
                        Err(e) if out.is_empty() => return Err(e),
                        // What is leased already goes out (and is settled); the error shows again.
                        Err(_) => break,
                    }
                } else if out.is_empty() {
                    match tokio::time::timeout_at(deadline, inbox.rx.recv()).await {
                        Ok(Some(i)) => i,
                        _ => break,
                    }
                } else {
                    match inbox.rx.try_recv() {
                        Ok(i) => i,
                        Err(_) => break,
                    }
                };
                let Some(parts) = shared.open_work(endpoint, incoming, pulled).await else { continue };
                let mut parts = parts.into_iter();
                let Some(first) = parts.next() else { continue };
                // The rest of a pack: for this lease (if it takes more) or the next ones.
                for rest in parts {
                    inbox.stashed.push_back(rest);
                    queue.stashed.fetch_add(1, Ordering::Relaxed);
                }
                first
            };
            queue.last_taken.store(now_millis(), Ordering::Relaxed);
            if shared.is_paused(endpoint) {
                if pulled && part.ack.parts == 1 {
                    // Nobody pulls again while the endpoint is paused: back to the queue.
                    part_done(shared, &part.ack, true).await;
                } else {
                    inbox.stashed.push_front(part);
                    queue.stashed.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            if !shared.is_current(part.ack.session) {
                // A part kept from before a reconnect (`open_work` checks the others).
                part.ack.give_back_now(shared).await;
                continue;
            }
            let Part { ack, message, redelivered, payload } = part;
            if message.not_before > now_millis() {
                match shared.park(endpoint, &message, &payload).await {
                    Ok(()) => part_done(shared, &ack, false).await,
                    Err(e) => {
                        tracing::warn!(delivery_id = %message.delivery_id, error = %e, "cannot park a retry");
                        part_done(shared, &ack, true).await;
                    }
                }
                continue;
            }
            match shared.claim_of(&message).await? {
                Claim::Won => {}
                Claim::Lost => {
                    // Published alongside a claim that lost (a duplicate, a concurrent replay): void.
                    part_done(shared, &ack, false).await;
                    continue;
                }
                Claim::Unknown if now_millis().saturating_sub(message.queued_at) < CLAIM_WAIT.as_millis() as u64 => {
                    let parked = WorkMessage { not_before: now_millis() + 1, ..message.clone() };
                    let failed = shared.park(endpoint, &parked, &payload).await.is_err();
                    part_done(shared, &ack, failed).await;
                    continue;
                }
                // A replay whose claim did not reach the stream (that replay answered an error):
                // a tombstone decides it the same way on every node. A claim folded before the
                // tombstone stands and the work is delivered; otherwise the work is dropped and a
                // later claim loses, so the delivery stays dead, never pending without work.
                Claim::Unknown if message.replay_id.is_some() => match shared.void_replay(&message).await {
                    Ok(Claim::Won) => {}
                    Ok(_) => {
                        tracing::warn!(delivery_id = %message.delivery_id, "replay without a claim dropped");
                        part_done(shared, &ack, false).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(delivery_id = %message.delivery_id, error = %e, "cannot void a replay");
                        part_done(shared, &ack, true).await;
                        continue;
                    }
                },
                // Its claim never reached the stream (that intake answered 503): deliver anyway.
                Claim::Unknown => {}
            }
            // A copy the index shows outrun: its delivery was delivered in its generation, or
            // a later attempt of it was recorded (its retry or dead letter published before the
            // record), or a replay superseded it (an ack lost to a reconnect; the rest of a pack
            // given back; a duplicate's second copy): nothing to do.
            if shared.index(|i| i.outrun(message.delivery_id, message.generation, message.attempts))? {
                part_done(shared, &ack, false).await;
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
                payload,
                token,
            };
            if let Ok(mut leases) = shared.leases.lock() {
                let endpoint = queue.endpoint.clone();
                leases.insert(token, Held { endpoint, ack, message });
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
            Outcome::Delivered { via } => RecordedOutcome::Delivered { via: Some(*via), status: None },
            Outcome::Retry { not_before, error } => {
                let next = WorkMessage { attempts: lease.attempt, not_before: *not_before, ..held.message.clone() };
                if let Err(e) = shared.park(&lease.endpoint, &next, &lease.payload).await {
                    return Err(give_back(shared, held, &lease, e).await);
                }
                RecordedOutcome::Retry { not_before: *not_before, error: error.clone() }
            }
            Outcome::Dead { error } => {
                let dead = WorkMessage { attempts: lease.attempt, not_before: 0, ..held.message.clone() };
                let props = match dead.properties() {
                    Ok(p) => match shared.dead_ttl_ms.load(Ordering::Relaxed) {
                        0 => p,
                        ms => p.with_expiration(ms.to_string().into()),
                    },
                    Err(e) => return Err(give_back(shared, held, &lease, unavailable(e)).await),
                };
                if let Err(e) = shared.publish(&shared.names.dead(&lease.endpoint), &lease.payload, props).await {
                    return Err(give_back(shared, held, &lease, e).await);
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
        // Confirmed and folded (read-your-writes on this node), then acked.
        if let Err(e) = shared.append_and_fold(record, payload).await {
            return Err(give_back(shared, held, &lease, e).await);
        }
        if !finish(shared, &held, Finish::Ack).await {
            // The session that held it is gone; the broker gives the message out again, and a
            // copy of a delivered delivery is dropped at lease time.
            tracing::debug!(delivery_id = %lease.delivery_id, session = held.ack.session, "ack after reconnect not sent");
        }
        Ok(())
    }

    async fn submission(&self, id: SubmissionId) -> Result<Option<SubmissionView>, StoreError> {
        self.shared.index(|i| i.submission(id))
    }

    async fn delivery(&self, id: DeliveryId) -> Result<Option<DeliveryView>, StoreError> {
        self.shared.index(|i| i.delivery_view(id))
    }

    async fn submission_by_key(&self, key: &str) -> Result<Option<SubmissionId>, StoreError> {
        let digest = dedup_digest(key);
        self.shared.index(|i| i.holder_of_key(&digest))
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
                shared.writable()?;
                // Work first, claim second: a claim in the stream always has its work message
                // (a crash in between leaves work without a claim, which lease voids; never a
                // pending delivery without work). Concurrent replays all publish work, but only
                // the first claim of the generation in stream order wins; the others' work is
                // dropped at lease.
                let replay_id = Uuid::now_v7();
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
                    replay_id: Some(replay_id),
                };
                let props = message.properties().map_err(unavailable)?;
                shared.publish(&shared.names.work(&endpoint), &copy.payload, props).await?;
                let record = Record::Replayed(ReplayedRecord {
                    submission_id,
                    delivery_id: id,
                    generation: generation + 1,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                    replay_id: Some(replay_id),
                });
                match shared.append_and_fold(record, None).await? {
                    Applied::ReplayWon => Ok(ReplayOutcome::Replayed),
                    Applied::ReplayLost(None) => Ok(ReplayOutcome::NotFound),
                    // Another replay came first and made it pending (or delivered it already).
                    Applied::ReplayLost(Some(state)) if state != DeliveryState::Dead => {
                        Ok(ReplayOutcome::NotDead { state })
                    }
                    // Another replay of this generation came first, and it is dead again since.
                    Applied::ReplayLost(Some(_)) => Err(unavailable(format!(
                        "a concurrent replay of delivery {id} came first and it is dead again; replay it again"
                    ))),
                    other => Err(StoreError::Corrupt(format!("a replay record was folded as {other:?}"))),
                }
            }
        }
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.shared.index(|i| i.counts())
    }

    /// Through the stream, like every change: each node deletes the same submissions at the
    /// same point of it (see `Record::Expire`).
    async fn expire(&self, cutoffs: Cutoffs) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            self.shared.writable()?;
            let record = Record::Expire { delivered: cutoffs.delivered, dead: cutoffs.dead, limit: EXPIRE_LIMIT };
            match self.shared.append_and_fold(record, None).await? {
                Applied::Expired(n) => {
                    deleted += n;
                    if n < EXPIRE_LIMIT {
                        return Ok(deleted);
                    }
                }
                other => return Err(StoreError::Corrupt(format!("an expiry folded as {other:?}"))),
            }
        }
    }

    async fn relay_verdict(&self, verdict: MailboxVerdict) -> Result<bool, StoreError> {
        self.shared.writable()?;
        self.shared.append_and_fold(Record::Verdict(verdict), None).await?;
        Ok(true)
    }

    fn relayed_verdicts(&self) -> Option<tokio::sync::broadcast::Receiver<MailboxVerdict>> {
        Some(self.shared.verdicts.subscribe())
    }

    /// Through the stream, like every change: each node folds the record into its paused set,
    /// and folds it again when it starts, so the pause holds on every process and after restarts.
    async fn set_paused(
        &self,
        endpoint: &str,
        paused: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.shared.writable()?;
        let record = Record::Pause(PauseRecord {
            endpoint: endpoint.to_owned(),
            paused,
            actor: actor.to_owned(),
            reason: reason.map(str::to_owned),
        });
        // Folded here before the answer: this process holds the endpoint once the operator
        // reads "paused" (the others within the stream's lag).
        self.shared.append_and_fold(record, None).await?;
        Ok(())
    }

    fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        // A poisoned lock (a fold that panicked) still holds the pauses folded before it.
        let index = self.shared.index.lock().unwrap_or_else(|e| e.into_inner());
        index.pauses().clone()
    }

    fn broker(&self) -> Option<crate::store::BrokerStatus> {
        let shared = &self.shared;
        Some(crate::store::BrokerStatus {
            connected: shared.current().is_ok(),
            blocked: shared.blocked(),
            connections: shared.connections.load(Ordering::SeqCst),
            stream_offset: shared.next_offset.load(Ordering::SeqCst),
            rereading: shared.catching_up.load(Ordering::SeqCst),
            rereads: shared.rereads.load(Ordering::SeqCst),
            unreadable_records: shared.unreadable.load(Ordering::SeqCst),
            started_at_offset: shared.started_at_offset.load(Ordering::SeqCst),
            work: shared.work_in_hand(),
        })
    }

    async fn close(&self) {
        RabbitStore::close(self).await;
    }

    fn health(&self) -> Result<(), StoreError> {
        self.shared.writable()?;
        if self.shared.catching_up.load(Ordering::SeqCst) {
            return Err(unavailable(
                "reading the event stream again from its start (it lost records this process had read)",
            ));
        }
        Ok(())
    }
}

/// A settle that could not be recorded: the delivery goes back to its queue for another
/// attempt. A pack's delivery goes back alone (published again, counting the attempt made, as
/// the broker's redelivery count would), so the rest of its pack is not offered again; only if
/// that publish fails does the whole pack go back when its last delivery is done.
pub(super) async fn give_back(shared: &Shared, held: Held, lease: &Lease, error: StoreError) -> StoreError {
    if held.ack.parts > 1 && shared.is_current(held.ack.session) {
        let again = WorkMessage { attempts: lease.attempt, not_before: 0, ..held.message.clone() };
        if shared.park(&lease.endpoint, &again, &lease.payload).await.is_ok() {
            finish(shared, &held, Finish::Ack).await;
            return error;
        }
    }
    finish(shared, &held, Finish::Requeue).await;
    error
}

pub(super) enum Finish {
    Ack,
    Requeue,
}

/// Acks a leased message (a pack's: with its last part), or gives it back, on the session that
/// received it; false when that was not done. Not at all when that session is gone: its channel closed and the broker put
/// the message back. Never longer than [`ACK_WAIT`]: a connection that does not take an ack in
/// that time is started again. (Defensive: a settle is the one place a delivery worker's slot
/// waited without a bound; no hang was reproduced, see docs/rabbitmq.md, "Limits".)
pub(super) async fn finish(shared: &Shared, held: &Held, how: Finish) -> bool {
    if !shared.is_current(held.ack.session) {
        return false;
    }
    match held.ack.part_done(matches!(how, Finish::Requeue)) {
        // A pack with parts still out: acked (or given back) with its last part.
        None => true,
        Some(how) => send(shared, &held.ack, how).await,
    }
}

/// One part of a message in `lease` is done with: the message is acked (or given back, if any
/// part wanted it back) when it was the last. Bounded like [`finish`].
async fn part_done(shared: &Shared, ack: &Ack, requeue: bool) {
    if let Some(how) = ack.part_done(requeue) {
        send(shared, ack, how).await;
    }
}

/// Acks a message or gives it back, bounded by [`ACK_WAIT`]: false when that was not done.
pub(super) async fn send(shared: &Shared, ack: &Ack, how: Finish) -> bool {
    let sent = match how {
        Finish::Ack => tokio::time::timeout(ACK_WAIT, ack.acker.ack(BasicAckOptions::default())).await,
        Finish::Requeue => {
            let requeue = BasicNackOptions { requeue: true, ..Default::default() };
            tokio::time::timeout(ACK_WAIT, ack.acker.nack(requeue)).await
        }
    };
    match sent {
        Ok(Ok(done)) => done,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(session = ack.session, "RabbitMQ took no ack within {ACK_WAIT:?}; reconnecting");
            let _ = shared.broken.send(ack.session);
            false
        }
    }
}
