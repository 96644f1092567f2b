//! What every store operation uses: confirmed publishes, stream appends, the index.

use super::*;

/// Waits for a record [`Shared::append`] wrote: confirmed by the broker and applied by this
/// node's fold.
pub(super) async fn await_fold(rx: oneshot::Receiver<Appended>, bound: Duration) -> Result<Applied, StoreError> {
    match tokio::time::timeout(bound, rx).await {
        Ok(answer) => answered(answer),
        Err(_) => Err(StoreError::Unavailable(format!("the event stream did not come back within {bound:?}"))),
    }
}

/// What a writer waiting for its record was told.
fn answered(answer: Result<Appended, oneshot::error::RecvError>) -> Result<Applied, StoreError> {
    match answer {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(e)) => Err(StoreError::Unavailable(e)),
        Err(_) => Err(StoreError::Unavailable("the connection to the event stream was lost".into())),
    }
}

/// Waits for a record like [`await_fold`], for as long as the fold keeps reading: it fails
/// only when `stall` passes with `progress` (the next stream offset to fold) where it was.
/// Start-up reads the whole stream before its mark, and a long history takes longer than any
/// fixed bound would allow (reading 20,000 submissions takes about 0.2 s here, so a bound of
/// two minutes refused to start beyond about 12 million). Logs how far it got after each `stall`.
pub(super) async fn await_fold_progressing(
    mut rx: oneshot::Receiver<Appended>,
    progress: impl Fn() -> u64,
    stall: Duration,
) -> Result<Applied, StoreError> {
    let mut seen = progress();
    loop {
        match tokio::time::timeout(stall, &mut rx).await {
            Ok(answer) => return answered(answer),
            Err(_) => {
                let now = progress();
                if now == seen {
                    return Err(StoreError::Unavailable(format!(
                        "the event stream did not advance within {stall:?} (at offset {now})"
                    )));
                }
                tracing::info!(offset = now, "still reading the event stream");
                seen = now;
            }
        }
    }
}

/// A record id unique across processes: 64 random bits drawn once per process, then a counter.
/// (`Uuid::now_v7` asks the kernel for randomness on every call: a syscall per record.)
fn next_rid() -> Uuid {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| Uuid::new_v4().as_u64_pair().0);
    Uuid::from_u64_pair(base, NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Shared {
    pub(super) fn current(&self) -> Result<Arc<Session>, StoreError> {
        self.session
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| StoreError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// Whether `session` is the connection this process uses now.
    pub(super) fn is_current(&self, session: u64) -> bool {
        self.current().is_ok_and(|s| s.id == session)
    }

    /// The session, if the broker takes publishes now: connected, and not blocking this
    /// connection. RabbitMQ blocks every publishing connection while a resource alarm is on (its
    /// memory above `vm_memory_high_watermark`, its disk below `disk_free_limit`) and tells
    /// clients so (`connection.blocked`); a publish then waits, unconfirmed, until the alarm
    /// clears. Intake and replay ask here first and answer at once instead of after the confirm
    /// timeout.
    pub(super) fn writable(&self) -> Result<Arc<Session>, StoreError> {
        let session = self.current()?;
        if session.conn.status().blocked() {
            return Err(StoreError::Unavailable(BLOCKED.into()));
        }
        Ok(session)
    }

    /// Each endpoint's work in this process now, in config order (see [`crate::store::WorkInHand`]).
    pub(super) fn work_in_hand(&self) -> Vec<crate::store::WorkInHand> {
        let mut leased: HashMap<&str, u64> = HashMap::new();
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        for held in leases.values() {
            *leased.entry(&held.endpoint).or_default() += 1;
        }
        let now = now_millis();
        self.endpoints
            .iter()
            .filter_map(|e| self.queues.get(e))
            .map(|q| {
                let last = q.last_taken.load(Ordering::Relaxed);
                crate::store::WorkInHand {
                    endpoint: q.endpoint.to_string(),
                    received: q.received.load(Ordering::Relaxed),
                    // What the channel holds (its capacity less the places free), and the parts
                    // of packs kept for the next leases.
                    waiting: (q.tx.max_capacity() - q.tx.capacity() + q.stashed.load(Ordering::Relaxed)) as u64,
                    leased: leased.get(&*q.endpoint).copied().unwrap_or(0),
                    last_lease_ms_ago: (last > 0).then(|| now.saturating_sub(last)),
                }
            })
            .collect()
    }

    /// Whether the broker blocks this process's publishes now (a resource alarm).
    pub(super) fn blocked(&self) -> bool {
        self.current().is_ok_and(|s| s.conn.status().blocked())
    }

    /// Whether an operator paused `endpoint`, as this node's fold knows now.
    pub(super) fn is_paused(&self, endpoint: &str) -> bool {
        // A poisoned lock (a fold that panicked) still holds the pauses folded before it.
        self.index.lock().unwrap_or_else(|e| e.into_inner()).pauses().contains_key(endpoint)
    }

    /// Publishes one persistent message to a queue and waits for the broker's confirm.
    pub(super) async fn publish(&self, queue: &str, body: &[u8], props: BasicProperties) -> Result<(), StoreError> {
        let session = self.current()?;
        let i = session.next.fetch_add(1, Ordering::Relaxed) % session.publishers.len().max(1);
        let Some(ch) = session.publishers.get(i) else {
            return Err(unavailable("no publishing channel"));
        };
        let routing_key = short(queue).map_err(unavailable)?;
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        // Boxed: lapin's publish future is about 1.9 KB, and every future that awaits one
        // inline grows by that much. Intake's (which `async_trait` moves into a box) was 6 KB,
        // 2.3 KB with this box; copying it was about 6 % of the benchmark's CPU.
        let confirmed = tokio::time::timeout(
            CONFIRM_TIMEOUT,
            Box::pin(async move { ch.basic_publish("".into(), routing_key, options, body, props).await?.await }),
        )
        .await;
        let failed = |e: String| {
            if !session.conn.status().connected() || !ch.status().connected() {
                let _ = self.broken.send(session.id);
            }
            StoreError::Unavailable(e)
        };
        match confirmed {
            Err(_) => {
                // No answer at all: a half-open connection looks connected until heartbeats
                // notice (minutes), so start over now, unless the broker said it blocks us
                // (resource alarm), where a new connection would be blocked too.
                if !session.conn.status().blocked() {
                    let _ = self.broken.send(session.id);
                }
                Err(StoreError::Unavailable(format!("RabbitMQ did not confirm within {CONFIRM_TIMEOUT:?}")))
            }
            Ok(Err(e)) => Err(failed(format!("publish to `{queue}`: {e}"))),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(unavailable(format!("queue `{queue}` does not exist"))),
            Ok(Ok(Confirmation::Nack(_))) => Err(unavailable(format!("RabbitMQ refused the message for `{queue}`"))),
            Ok(Ok(Confirmation::NotRequested)) => Err(unavailable("publisher confirms are off")),
        }
    }

    /// Publishes a consumed message unchanged (body and properties) to `queue`, with a
    /// `lotse-unreadable` header saying why it was set aside, and waits for the confirm.
    pub(super) async fn set_aside(
        &self,
        queue: &str,
        delivery: &lapin::message::Delivery,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "lotse-unreadable".into(),
            AMQPValue::LongString(lapin::types::LongString::from(why.as_bytes().to_vec())),
        );
        let props = delivery.properties.clone().with_headers(headers);
        self.publish(queue, &delivery.data, props).await
    }

    /// Queues a record for the next stream message. The receiver answers once the broker
    /// confirmed that message and this node's fold applied the record (in either order: one
    /// wake-up for the writer, not one per event), or with the error if it was not confirmed.
    pub(super) fn append(
        &self,
        record: Record,
        payload: Option<&[u8]>,
    ) -> Result<oneshot::Receiver<Appended>, StoreError> {
        let envelope = Envelope { rid: next_rid(), at: now_millis(), record };
        let encoded = record::encode(&envelope, payload).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let rid = envelope.rid;
        let envelope = payload.is_none().then_some(envelope);
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(rid, Waiter { tx, confirmed: false, applied: None, envelope });
        }
        if self.appends.send(Append { rid, encoded }).is_err() {
            if let Ok(mut w) = self.waiters.lock() {
                w.remove(&rid);
            }
            return Err(StoreError::Unavailable("the stream writer stopped".into()));
        }
        Ok(rx)
    }

    /// Appends a record and waits until the broker confirmed it and this node's fold applied it.
    pub(super) async fn append_and_fold(&self, record: Record, payload: Option<&[u8]>) -> Result<Applied, StoreError> {
        let rx = self.append(record, payload)?;
        await_fold(rx, FOLD_TIMEOUT).await
    }

    /// The broker's verdict on the stream message that carried `rids`.
    pub(super) fn confirmed(&self, rids: &[Uuid], result: &Result<(), String>) {
        let Ok(mut waiters) = self.waiters.lock() else { return };
        for rid in rids {
            match result {
                Ok(()) => {
                    let Some(w) = waiters.get_mut(rid) else { continue };
                    match w.applied.take() {
                        Some(applied) => {
                            if let Some(w) = waiters.remove(rid) {
                                let _ = w.tx.send(Ok(applied));
                            }
                        }
                        None => w.confirmed = true,
                    }
                }
                Err(e) => {
                    if let Some(w) = waiters.remove(rid) {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// This node's fold applied `rid`.
    pub(super) fn applied(waiters: &mut FastMap<Uuid, Waiter>, rid: Uuid, applied: Applied) {
        let Some(w) = waiters.get_mut(&rid) else { return };
        if w.confirmed {
            if let Some(w) = waiters.remove(&rid) {
                let _ = w.tx.send(Ok(applied));
            }
        } else {
            w.applied = Some(applied);
        }
    }

    /// Reads the stream up to now: a mark written now is folded after everything before it.
    /// However long the history, as long as the fold advances (start-up, and catching up after
    /// [`Shared::forget_folded`]).
    pub(super) async fn read_up_to_now(&self) -> Result<Applied, StoreError> {
        let rx = self.append(Record::Mark, None)?;
        await_fold_progressing(rx, || self.next_offset.load(Ordering::SeqCst), START_STALL).await
    }

    /// Drops everything folded, so the next session reads the stream from its start.
    pub(super) fn forget_folded(&self) {
        if let Ok(mut index) = self.index.lock() {
            *index = Index::default();
        }
        self.next_offset.store(0, Ordering::SeqCst);
        self.last_digest.store(0, Ordering::SeqCst);
        self.started_at_offset.store(0, Ordering::SeqCst);
        self.catching_up.store(true, Ordering::SeqCst);
    }

    pub(super) fn index<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, StoreError> {
        self.index.lock().map(|i| f(&i)).map_err(|_| StoreError::Corrupt("index lock poisoned".into()))
    }

    /// Publishes one work message per delivery of `receipt`, with the bytes of `submission`.
    pub(super) async fn queue_deliveries(
        &self,
        receipt: &Receipt,
        submission: &NewSubmission,
    ) -> Result<(), StoreError> {
        let mut work = Vec::with_capacity(receipt.deliveries.len());
        for d in &receipt.deliveries {
            // The receipt may be an earlier submission's; its endpoints match this one's when the
            // same message was routed by the same config. Otherwise send the original bytes.
            let rendition =
                submission.deliveries.iter().find(|n| n.endpoint == d.endpoint).and_then(|n| n.rendition.as_ref());
            let (content_type, body) = match rendition {
                Some(r) => (r.content_type.clone(), r.body.clone()),
                None => (submission.content_type.clone(), submission.original.clone()),
            };
            let message = WorkMessage {
                delivery_id: d.id,
                submission_id: receipt.submission_id,
                message_id: submission.message_id.clone(),
                content_type,
                attempts: 0,
                budget_base: 0,
                generation: 0,
                not_before: 0,
                queued_at: now_millis(),
                replay_id: None,
            };
            work.push((d.endpoint.as_str(), message, body));
        }
        // One delivery (most submissions): without the joining machinery.
        if work.len() == 1
            && let Some((endpoint, message, body)) = work.pop()
        {
            return self.queue_work(endpoint, message, body).await;
        }
        futures::future::try_join_all(
            work.into_iter().map(|(endpoint, message, body)| self.queue_work(endpoint, message, body)),
        )
        .await?;
        Ok(())
    }

    /// Publishes one delivery's work message (in a pack with others waiting for the same queue,
    /// see `tasks::pack_work`) and waits for the broker's confirm.
    async fn queue_work(&self, endpoint: &str, message: WorkMessage, payload: Bytes) -> Result<(), StoreError> {
        if message.content_type.len() > 255 {
            // As `WorkMessage::properties` says for a message alone; a pack would take it.
            return Err(unavailable(format!("content type `{}` is longer than 255 bytes", message.content_type)));
        }
        match self.queues.get(endpoint).and_then(|q| q.packer.as_ref()) {
            Some(packer) => {
                let (done, confirmed) = oneshot::channel();
                packer
                    .send(Packing { message, payload, done })
                    .map_err(|_| unavailable("the work publisher stopped: the store is closing"))?;
                confirmed.await.map_err(|_| unavailable("the work publisher stopped: the store is closing"))?
            }
            None => {
                let props = message.properties().map_err(unavailable)?;
                self.publish(&self.names.work(endpoint), &payload, props).await
            }
        }
    }

    /// A duplicate: make sure the first submission's deliveries are queued, then its receipt.
    pub(super) async fn duplicate(&self, receipt: Receipt, submission: &NewSubmission) -> Result<Intake, StoreError> {
        let deadline = Instant::now() + QUEUED_GRACE;
        while !self.index(|i| i.is_queued(receipt.submission_id))? {
            if Instant::now() >= deadline {
                tracing::warn!(submission_id = %receipt.submission_id, "first intake did not finish; queueing its deliveries");
                self.queue_deliveries(&receipt, submission).await?;
                self.append_and_fold(Record::Queued { submission_ids: vec![receipt.submission_id] }, None).await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Intake::Duplicate(receipt))
    }

    /// The claim of a work message: its submission's, and for replayed work its replay's,
    /// waiting up to [`CLAIM_WAIT_INLINE`] for the fold to learn it.
    pub(super) async fn claim_of(&self, message: &WorkMessage) -> Result<Claim, StoreError> {
        let deadline = Instant::now() + CLAIM_WAIT_INLINE;
        loop {
            let folded = self.folded.notified();
            let claim = self.index(|i| match (i.claim(message.submission_id), message.replay_id) {
                (Claim::Won, Some(replay)) => i.replay_claim(message.delivery_id, message.generation, replay),
                (claim, _) => claim,
            })?;
            if claim != Claim::Unknown || Instant::now() >= deadline {
                return Ok(claim);
            }
            let _ = tokio::time::timeout_at(deadline, folded).await;
        }
    }

    /// Writes a tombstone for a replay's work whose claim the fold does not know, and returns
    /// the verdict once it is folded: `Won` if the claim came first after all, else `Lost`.
    pub(super) async fn void_replay(&self, message: &WorkMessage) -> Result<Claim, StoreError> {
        let Some(replay_id) = message.replay_id else {
            return Ok(Claim::Won);
        };
        let record = Record::ReplayVoid(ReplayVoidRecord {
            submission_id: message.submission_id,
            delivery_id: message.delivery_id,
            generation: message.generation,
            replay_id,
        });
        self.append_and_fold(record, None).await?;
        match self.index(|i| i.replay_claim(message.delivery_id, message.generation, replay_id))? {
            // The index was dropped meanwhile (the stream is being read again from its start):
            // no verdict yet, so the work goes back to its queue rather than being dropped.
            // (Otherwise unknown: its delivery was deleted by retention, and the work goes.)
            Claim::Unknown if self.catching_up.load(Ordering::SeqCst) => {
                Err(unavailable("the event stream is being read again; the replay is decided later"))
            }
            decided => Ok(decided),
        }
    }

    /// One work message of a pulled endpoint, asked of the broker (`basic.get`): at once, or
    /// (with `until`) asking again every [`PULL_POLL`] until a message comes or `until` passes.
    pub(super) async fn pull(&self, endpoint: &str, until: Option<Instant>) -> Result<Option<Incoming>, StoreError> {
        let queue = short(&self.names.work(endpoint)).map_err(unavailable)?;
        loop {
            if self.is_paused(endpoint) {
                return Ok(None);
            }
            let session = self.current()?;
            let Some(ch) = session.getters.get(endpoint) else {
                return Err(unavailable(format!("no work channel for endpoint `{endpoint}`")));
            };
            let Ok(got) =
                tokio::time::timeout(CONFIRM_TIMEOUT, ch.basic_get(queue.clone(), BasicGetOptions::default())).await
            else {
                // A late answer would still take a message off the queue, unacked on this
                // channel, with nobody to hand it to: it would stay there, its delivery pending,
                // until the connection closes. So close it now; the broker gives the message back.
                let _ = self.broken.send(session.id);
                return Err(unavailable(format!("RabbitMQ did not answer a get within {CONFIRM_TIMEOUT:?}")));
            };
            match got {
                Ok(Some(m)) => return Ok(Some(Incoming { session: session.id, delivery: m.delivery })),
                Ok(None) => {}
                Err(e) => {
                    let _ = self.broken.send(session.id);
                    return Err(unavailable(format!("get from `{queue}`: {e}")));
                }
            }
            let Some(until) = until else { return Ok(None) };
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            tokio::time::sleep(PULL_POLL.min(until - now)).await;
        }
    }

    /// The deliveries of a work message a lease took: one, or a pack's. `None` when there is
    /// nothing to hand out: a message of a session that is no longer the current one (given
    /// back), one this version cannot read (moved to the dead queue, or left in its queue when
    /// that fails), or a pack of a pulled endpoint (split, see below).
    pub(super) async fn open_work(&self, endpoint: &str, incoming: Incoming, pulled: bool) -> Option<Vec<Part>> {
        let Incoming { session, mut delivery } = incoming;
        if !self.is_current(session) {
            Ack::new(session, delivery.acker, 1).give_back_now(self).await;
            return None;
        }
        let is_pack = work::is_pack(&delivery.properties);
        let data = Bytes::from(std::mem::take(&mut delivery.data));
        let read = if is_pack {
            work::unpack_pack(&delivery.properties, &data)
        } else {
            WorkMessage::from_properties(&delivery.properties).map(|(m, n)| (vec![(m, data.clone())], n))
        };
        let (messages, redelivered) = match read {
            Ok(read) => read,
            Err(e) => {
                // Not a work message this version can read (published by hand, or by a later
                // version of Lotse): never dropped, but moved as it is to the endpoint's dead
                // queue, where an operator finds it (and can move it back after an upgrade).
                metrics::counter!("lotse_work_messages_unreadable_total", "endpoint" => endpoint.to_owned())
                    .increment(1);
                let dead = self.names.dead(endpoint);
                delivery.data = data.to_vec();
                let ack = Ack::new(session, delivery.acker.clone(), 1);
                match self.set_aside(&dead, &delivery, &e).await {
                    Ok(()) => {
                        tracing::error!(endpoint, error = %e, queue = %dead, "unreadable work message moved to the dead queue");
                        send(self, &ack, Finish::Ack).await;
                    }
                    Err(moved) => {
                        tracing::error!(endpoint, error = %e, cause = %moved, "unreadable work message left in its queue: it could not be moved");
                        send(self, &ack, Finish::Requeue).await;
                    }
                }
                return None;
            }
        };
        if pulled && is_pack {
            // Queued while the endpoint was pushed (the config changed since): each part goes
            // back to the queue alone, since the rest of a pack would wait in this process
            // while a mailbox's reader may ask another.
            let ack = Ack::new(session, delivery.acker, 1);
            let mut split = true;
            for (message, payload) in &messages {
                if let Err(e) = self.park(endpoint, message, payload).await {
                    tracing::warn!(endpoint, error = %e, "cannot split a pack of a pulled endpoint; left in its queue");
                    split = false;
                    break;
                }
            }
            send(self, &ack, if split { Finish::Ack } else { Finish::Requeue }).await;
            return None;
        }
        let ack = Ack::new(session, delivery.acker, messages.len());
        Some(
            messages
                .into_iter()
                .map(|(message, payload)| Part { ack: ack.clone(), message, redelivered, payload })
                .collect(),
        )
    }

    /// Publishes a work message where it is due: to the wait ladder's rung for its remaining
    /// delay, or to the work queue when it is due now; waits for the confirm.
    pub(super) async fn park(&self, endpoint: &str, message: &WorkMessage, body: &[u8]) -> Result<(), StoreError> {
        let remaining = message.not_before.saturating_sub(now_millis());
        let queue =
            if remaining == 0 { self.names.work(endpoint) } else { self.names.wait(endpoint, rung_for(remaining)) };
        self.publish(&queue, body, message.properties().map_err(unavailable)?).await
    }
}
