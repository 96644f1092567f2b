//! The fold: every node applies the event stream, in stream order, to this in-memory index, and
//! answers `submission()`, `delivery()`, `deliveries()` and `counts()` from it.
//!
//! Applying the same stream gives the same index on every node (event `seq` and `hash` included),
//! because the fold depends only on the records and their order, never on the local clock.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use super::record::{
    Envelope, OutcomeRecord, PauseRecord, Record, RecordedOutcome, ReplayVoidRecord, ReplayedRecord, SubmittedRecord,
};
use crate::store::{
    Counts, Cutoffs, DeliveryFilter, DeliveryId, DeliveryState, DeliveryView, EventView, Handover, Millis, Pause,
    Receipt, ReceiptDelivery, SubmissionId, SubmissionState, SubmissionView, dedup_digest, event_hash, words,
};

/// Maps and sets keyed by ids this hub made (v7 UUIDs) or by dedup digests: foldhash instead of
/// SipHash, which was a few percent of the fold. Dedup keys, which partners choose, are held as
/// their [`dedup_digest`] (as in the embedded store), so no partner chooses what foldhash sees.
pub(super) type FastMap<K, V> = foldhash::HashMap<K, V>;
pub(super) type FastSet<K> = foldhash::HashSet<K>;

/// What applying one record meant, for the node that waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new submission: its claim was the first for each of its dedup keys.
    Accepted,
    /// The claim lost: an earlier submission holds one of its dedup keys.
    Duplicate(Receipt),
    /// A replay claim won its generation: the delivery is pending, its work is real.
    ReplayWon,
    /// A replay claim lost (another claim of the generation came first, the delivery was no
    /// longer dead, or its work was voided); the delivery's state now, `None` if unknown.
    ReplayLost(Option<DeliveryState>),
    /// Retention deleted this many submissions.
    Expired(u64),
    /// Any other record.
    Done,
}

/// What the fold knows of a submission's claim, for a work message in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A submission: its work is real.
    Won,
    /// Its claim lost to an earlier one with a shared dedup key: its work messages are void.
    Lost,
    /// No claim folded yet (the stream is a little behind the work queue, or the claim was
    /// never written).
    Unknown,
}

/// A dead delivery's copy, kept so any node can replay it with the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadCopy {
    pub payload: Bytes,
    pub content_type: String,
    pub message_id: Option<String>,
}

/// What [`Index::replay_source`] found.
#[derive(Debug, Clone)]
pub enum ReplaySource {
    NotFound,
    NotDead(DeliveryState),
    Dead { submission_id: SubmissionId, endpoint: String, attempts: u32, generation: u32, copy: DeadCopy },
}

#[derive(Serialize, Deserialize)]
struct Submission {
    record: SubmittedRecord,
    queued: bool,
    /// What happened after the claim, one entry per outcome or replay; none until the first.
    entries: Vec<Entry>,
}

/// One fact of a submission's log after its claim. The log itself (each event's `seq`, time
/// text, words and hash) is made when it is read ([`Index::submission`]): the fold runs for
/// every record on every node, a log is read far less often. Its first events (received,
/// routed, one per note) come from the claim; an outcome is one entry here and two events in
/// the log (the attempt, then what followed it). So a submission no attempt has reached keeps
/// no log entries at all, and a delivered one keeps one (64 bytes) where four events were kept.
#[derive(Serialize, Deserialize)]
struct Entry {
    at: Millis,
    delivery_id: DeliveryId,
    fact: Fact,
}

#[derive(Serialize, Deserialize)]
enum Fact {
    /// Attempt `attempt` handed the message over: `attempt`, then `delivered`.
    Delivered { attempt: u32, via: Handover },
    /// Attempt `attempt` failed, the next is due at `not_before`: `attempt`, then `retry_scheduled`.
    Retry { attempt: u32, not_before: Millis, error: Arc<str> },
    /// Attempt `attempt` failed for good: `attempt`, then `dead`.
    Dead { attempt: u32, error: Arc<str> },
    /// An operator put the delivery back to work: `replayed`, with its words.
    Replayed { detail: String },
}

#[derive(Serialize, Deserialize)]
struct Delivery {
    submission_id: SubmissionId,
    endpoint: String,
    state: DeliveryState,
    attempts: u32,
    /// Highest replay generation seen for this delivery.
    generation: u32,
    /// Generation of the last outcome that set the state; an unclaimed replay record (written
    /// by earlier versions) of generation `g` makes the delivery pending only if no outcome of
    /// generation `g` arrived before it (its attempts could overtake the record itself).
    outcome_generation: Option<u32>,
    /// The winning replay claim of each generation (generation, replay id).
    replays: Vec<(u32, Uuid)>,
    next_attempt_at: Option<Millis>,
    /// Shared with the log entries of the attempts that failed with the same text (see [`share`]).
    last_error: Option<Arc<str>>,
    updated_at: Millis,
    /// Boxed: most deliveries never die, and the copy inline made every one ~80 bytes larger.
    dead: Option<Box<DeadCopy>>,
}

/// Serialized as it is for a snapshot ([`super::snapshot`]): the fold depends only on the
/// records and their order, so an index saved after offset `n` and then fed the stream from `n`
/// on is the index of the whole stream.
#[derive(Default, Serialize, Deserialize)]
pub struct Index {
    /// Boxed: a submission is a few hundred bytes, and the map moves every entry when it grows.
    /// Inline, each doubling copied the whole index (with a stall for every intake waiting on
    /// the fold) and faulted in fresh pages for it: a quarter of an intake's client CPU while
    /// the index grew from empty. A box makes an entry 16 + 8 bytes.
    submissions: FastMap<SubmissionId, Box<Submission>>,
    /// Ordered by id: ids are v7 UUIDs, so the last entries are the newest.
    deliveries: BTreeMap<DeliveryId, Delivery>,
    /// [`dedup_digest`] of each dedup key -> the submission holding it.
    #[serde(with = "digest_keys")]
    dedup: FastMap<[u8; 16], SubmissionId>,
    /// Claims that lost: their work messages (published with the claim) are dropped at lease.
    losers: FastSet<SubmissionId>,
    /// Replay claims that lost, and replays voided by a tombstone before their claim: their
    /// work messages are dropped at lease, and a claim folded later loses.
    void_replays: FastSet<Uuid>,
    /// Endpoints an operator paused, as the last `Pause` record of each left them.
    paused: BTreeMap<String, Pause>,
}

impl Index {
    pub fn apply(&mut self, envelope: Envelope, payload: Bytes) -> Applied {
        let at = envelope.at;
        match envelope.record {
            Record::Submitted(record) => self.apply_submitted(record),
            Record::Queued { submission_ids } => {
                for id in submission_ids {
                    if let Some(s) = self.submissions.get_mut(&id) {
                        s.queued = true;
                    }
                }
                Applied::Done
            }
            Record::Outcome(record) => {
                self.apply_outcome(at, record, payload);
                Applied::Done
            }
            Record::Replayed(record) => self.apply_replayed(at, record),
            Record::ReplayVoid(record) => {
                self.apply_replay_void(record);
                Applied::Done
            }
            Record::Mark | Record::Verdict(_) => Applied::Done,
            Record::Pause(record) => {
                self.apply_pause(at, record);
                Applied::Done
            }
            Record::Expire { delivered, dead, limit } => {
                Applied::Expired(self.apply_expire(Cutoffs { delivered, dead }, limit))
            }
        }
    }

    /// A pause replaces an earlier one of the endpoint (the newest actor and time show); a resume
    /// of an endpoint that is not paused changes nothing. Retention leaves pauses alone.
    fn apply_pause(&mut self, at: Millis, r: PauseRecord) {
        if r.paused {
            self.paused.insert(r.endpoint, Pause { actor: r.actor, at, reason: r.reason });
        } else {
            self.paused.remove(&r.endpoint);
        }
    }

    /// The endpoints paused now, with who paused them and when.
    pub fn pauses(&self) -> &BTreeMap<String, Pause> {
        &self.paused
    }

    /// Deletes the submissions `cutoffs` lets go (at most `limit`, those of the smallest ids),
    /// with their deliveries and dedup keys. Depends only on the index and the record, so every
    /// node deletes the same ones. Costs a walk over the deliveries created before the newest
    /// cutoff, and over the dedup map when anything went.
    fn apply_expire(&mut self, cutoffs: Cutoffs, limit: u64) -> u64 {
        let Some(newest) = cutoffs.delivered.max(cutoffs.dead) else { return 0 };
        let mut candidates: Vec<SubmissionId> = Vec::new();
        for (id, d) in &self.deliveries {
            // Ids are v7: a delivery created after the cutoff cannot have ended before it.
            if id.created_at() > newest {
                break;
            }
            if cutoffs.lets_go(d.state, d.updated_at) {
                candidates.push(d.submission_id);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut gone = HashSet::new();
        for id in candidates {
            if gone.len() as u64 >= limit {
                break;
            }
            let Some(s) = self.submissions.get(&id) else { continue };
            let all = s
                .record
                .deliveries
                .iter()
                .all(|d| self.deliveries.get(&d.id).is_some_and(|d| cutoffs.lets_go(d.state, d.updated_at)));
            if all && let Some(s) = self.submissions.remove(&id) {
                for d in &s.record.deliveries {
                    self.deliveries.remove(&d.id);
                }
                gone.insert(id);
            }
        }
        if !gone.is_empty() {
            self.dedup.retain(|_, id| !gone.contains(id));
        }
        gone.len() as u64
    }

    fn apply_submitted(&mut self, mut record: SubmittedRecord) -> Applied {
        if self.submissions.contains_key(&record.id) {
            // The same claim twice (a publish retried after a lost confirm): already applied.
            return Applied::Accepted;
        }
        let digests: Vec<[u8; 16]> = record.dedup_keys.iter().map(|k| dedup_digest(k)).collect();
        for digest in &digests {
            if let Some(first) = self.dedup.get(digest).and_then(|id| self.submissions.get(id)) {
                self.losers.insert(record.id);
                return Applied::Duplicate(receipt_of(&first.record));
            }
        }
        // Only the digests stay, in the dedup map: nothing reads the keys from the record
        // afterwards, and a copy per submission on every node is memory for nothing.
        record.dedup_keys = Vec::new();
        for digest in digests {
            self.dedup.insert(digest, record.id);
        }
        for d in &record.deliveries {
            self.deliveries.insert(
                d.id,
                Delivery {
                    submission_id: record.id,
                    endpoint: d.endpoint.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    generation: 0,
                    outcome_generation: None,
                    replays: Vec::new(),
                    next_attempt_at: None,
                    last_error: None,
                    updated_at: record.received_at,
                    dead: None,
                },
            );
        }
        self.submissions.insert(record.id, Box::new(Submission { record, queued: false, entries: Vec::new() }));
        Applied::Accepted
    }

    fn apply_outcome(&mut self, at: Millis, o: OutcomeRecord, payload: Bytes) {
        let Some(d) = self.deliveries.get_mut(&o.delivery_id) else {
            return;
        };
        d.attempts = d.attempts.max(o.attempt);
        d.updated_at = at;
        // An outcome of an older generation is a late duplicate (a message whose ack was lost):
        // it goes into the log, but does not change the state.
        let current = o.generation >= d.generation;
        // A delivery delivered in its generation stays delivered: a failed attempt of the same
        // generation folded after it is another copy's (at-least-once: a copy redelivered after
        // a reconnect, or re-queued by a duplicate), and lease drops every copy of a delivered
        // delivery, so reopening it here would leave it pending with no work anywhere.
        let reopens = current && !(d.state == DeliveryState::Delivered && o.generation <= d.generation);
        let attempt = o.attempt;
        let fact = match o.outcome {
            RecordedOutcome::Delivered { via, status } => {
                if current {
                    d.state = DeliveryState::Delivered;
                    d.next_attempt_at = None;
                    d.dead = None;
                }
                let via = via.or(status.map(Handover::Http)).unwrap_or(Handover::Http(200));
                Fact::Delivered { attempt, via }
            }
            RecordedOutcome::Retry { not_before, error } => {
                let error = share(d.last_error.as_ref(), error);
                if reopens {
                    d.state = DeliveryState::Pending;
                    d.next_attempt_at = Some(not_before);
                    d.last_error = Some(error.clone());
                }
                Fact::Retry { attempt, not_before, error }
            }
            RecordedOutcome::Dead { error, content_type, message_id } => {
                let error = share(d.last_error.as_ref(), error);
                if reopens {
                    d.state = DeliveryState::Dead;
                    d.next_attempt_at = None;
                    d.last_error = Some(error.clone());
                    d.dead = Some(Box::new(DeadCopy { payload, content_type, message_id }));
                }
                Fact::Dead { attempt, error }
            }
        };
        if current {
            d.generation = o.generation;
            d.outcome_generation = Some(o.generation);
        }
        if let Some(s) = self.submissions.get_mut(&o.submission_id) {
            s.push(Entry { at, delivery_id: o.delivery_id, fact });
        }
    }

    /// A replay claim wins only if it is the first claim of the delivery's next generation while
    /// the delivery is dead, and its replay was not voided. Every node folds the same records in
    /// the same order, so every node names the same winner.
    fn apply_replayed(&mut self, at: Millis, r: ReplayedRecord) -> Applied {
        let Some(d) = self.deliveries.get_mut(&r.delivery_id) else {
            return Applied::ReplayLost(None);
        };
        match r.replay_id {
            Some(id) => {
                let wins = d.state == DeliveryState::Dead
                    && r.generation == d.generation + 1
                    && !self.void_replays.contains(&id);
                if !wins {
                    self.void_replays.insert(id);
                    return Applied::ReplayLost(Some(d.state));
                }
                d.replays.push((r.generation, id));
                d.generation = r.generation;
                d.state = DeliveryState::Pending;
                d.next_attempt_at = None;
            }
            // Unclaimed (earlier versions): every record counts.
            None => {
                d.generation = d.generation.max(r.generation);
                if d.outcome_generation.is_none_or(|g| g < r.generation) {
                    d.state = DeliveryState::Pending;
                    d.next_attempt_at = None;
                }
            }
        }
        d.updated_at = at;
        if let Some(s) = self.submissions.get_mut(&r.submission_id) {
            let detail = words::replayed(&r.actor, &r.reason);
            s.push(Entry { at, delivery_id: r.delivery_id, fact: Fact::Replayed { detail } });
        }
        match r.replay_id {
            Some(_) => Applied::ReplayWon,
            None => Applied::Done,
        }
    }

    /// A tombstone: the replay's claim, if it comes later, loses. One that came earlier stays.
    fn apply_replay_void(&mut self, r: ReplayVoidRecord) {
        let won = self
            .deliveries
            .get(&r.delivery_id)
            .is_some_and(|d| d.replays.iter().any(|(g, id)| *g == r.generation && *id == r.replay_id));
        if !won {
            self.void_replays.insert(r.replay_id);
        }
    }

    /// What the fold knows of the replay claim a work message of generation `generation` was
    /// published for.
    pub fn replay_claim(&self, delivery_id: DeliveryId, generation: u32, replay_id: Uuid) -> Claim {
        let Some(d) = self.deliveries.get(&delivery_id) else {
            return Claim::Unknown;
        };
        if d.replays.iter().any(|(g, id)| *g == generation && *id == replay_id) {
            Claim::Won
        } else if self.void_replays.contains(&replay_id) || d.generation >= generation {
            // Lost, voided, or its generation went to another claim.
            Claim::Lost
        } else {
            Claim::Unknown
        }
    }

    /// The submission that holds one of the keys with these [`dedup_digest`]s, and whether its
    /// deliveries are known queued. Digests, so callers hash outside the index lock.
    pub fn holder_of(&self, digests: &[[u8; 16]]) -> Option<(Receipt, bool)> {
        digests
            .iter()
            .find_map(|d| self.dedup.get(d).and_then(|id| self.submissions.get(id)))
            .map(|s| (receipt_of(&s.record), s.queued))
    }

    /// The submission holding the dedup key with this [`dedup_digest`].
    pub fn holder_of_key(&self, digest: &[u8; 16]) -> Option<SubmissionId> {
        self.dedup.get(digest).copied()
    }

    pub fn claim(&self, id: SubmissionId) -> Claim {
        if self.submissions.contains_key(&id) {
            Claim::Won
        } else if self.losers.contains(&id) {
            Claim::Lost
        } else {
            Claim::Unknown
        }
    }

    pub fn is_queued(&self, id: SubmissionId) -> bool {
        self.submissions.get(&id).is_some_and(|s| s.queued)
    }

    /// Whether a work message of delivery `id`, of `generation` and published after `attempts`
    /// attempts, is outrun by what the stream recorded since, so it is dropped, not attempted:
    /// the delivery was delivered in that generation; or an attempt after this message's was
    /// recorded in it (each retry and dead letter is published before its record, so a newer
    /// copy exists or the delivery is dead); or a replay began a later generation (replay
    /// takes only dead deliveries, whose copies are all done). Such copies come from an ack a
    /// reconnect lost, a pack given back with parts that were settled, or a duplicate intake
    /// that queued its deliveries again.
    pub fn outrun(&self, id: DeliveryId, generation: u32, attempts: u32) -> bool {
        let Some(d) = self.deliveries.get(&id) else { return false };
        (d.state == DeliveryState::Delivered && d.generation >= generation)
            || generation < d.generation
            || (d.outcome_generation == Some(generation) && d.attempts > attempts)
    }

    /// State and generation of a delivery, if known.
    #[cfg(test)]
    pub fn delivery_state(&self, id: DeliveryId) -> Option<(DeliveryState, u32)> {
        self.deliveries.get(&id).map(|d| (d.state, d.generation))
    }

    pub fn submission(&self, id: SubmissionId) -> Option<SubmissionView> {
        let s = self.submissions.get(&id)?;
        let deliveries: Vec<DeliveryView> =
            s.record.deliveries.iter().filter_map(|d| self.delivery_view(d.id)).collect();
        let state = if deliveries.iter().any(|d| d.state == DeliveryState::Pending) {
            SubmissionState::InProgress
        } else if deliveries.iter().all(|d| d.state == DeliveryState::Delivered) {
            SubmissionState::Delivered
        } else {
            SubmissionState::Failed
        };
        Some(SubmissionView {
            id,
            state,
            partner: s.record.partner.clone(),
            received_at: rfc3339(s.record.received_at),
            route: s.record.route.clone(),
            // Written by `to_raw_value` (or read as valid JSON from the stream): parses.
            meta: serde_json::from_str(s.record.meta.get()).unwrap_or_default(),
            deliveries,
            events: event_views(s),
        })
    }

    pub fn delivery_view(&self, id: DeliveryId) -> Option<DeliveryView> {
        let d = self.deliveries.get(&id)?;
        Some(DeliveryView {
            id,
            submission_id: d.submission_id,
            endpoint: d.endpoint.clone(),
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: match d.state {
                DeliveryState::Pending => d.next_attempt_at.map(rfc3339),
                _ => None,
            },
            last_error: d.last_error.as_deref().map(str::to_owned),
            updated_at: rfc3339(d.updated_at),
        })
    }

    /// Newest first, at most [`DeliveryFilter::effective_limit`].
    pub fn deliveries(&self, filter: &DeliveryFilter) -> Vec<DeliveryView> {
        let limit = filter.effective_limit();
        let mut out = Vec::new();
        for (id, d) in self.deliveries.iter().rev() {
            if out.len() >= limit {
                break;
            }
            if filter.state.is_some_and(|s| s != d.state)
                || filter.endpoint.as_ref().is_some_and(|e| *e != d.endpoint)
                || filter.submission_id.is_some_and(|s| s != d.submission_id)
            {
                continue;
            }
            out.extend(self.delivery_view(*id));
        }
        out
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { submissions: self.submissions.len() as u64, ..Counts::default() };
        for d in self.deliveries.values() {
            match d.state {
                DeliveryState::Pending => c.pending += 1,
                DeliveryState::Delivered => c.delivered += 1,
                DeliveryState::Dead => c.dead += 1,
            }
        }
        c
    }

    pub fn replay_source(&self, id: DeliveryId) -> ReplaySource {
        let Some(d) = self.deliveries.get(&id) else {
            return ReplaySource::NotFound;
        };
        match (&d.state, &d.dead) {
            (DeliveryState::Dead, Some(copy)) => ReplaySource::Dead {
                submission_id: d.submission_id,
                endpoint: d.endpoint.clone(),
                attempts: d.attempts,
                generation: d.generation,
                copy: DeadCopy::clone(copy),
            },
            (state, _) => ReplaySource::NotDead(*state),
        }
    }
}

fn receipt_of(record: &SubmittedRecord) -> Receipt {
    Receipt {
        submission_id: record.id,
        deliveries: record
            .deliveries
            .iter()
            .map(|d| ReceiptDelivery { id: d.id, endpoint: d.endpoint.clone() })
            .collect(),
    }
}

impl Submission {
    /// Adds an entry with room for it alone: most logs stay at one or two entries, where a `Vec`
    /// grown the usual way holds room for four, and a long one (a delivery retried for days) would
    /// hold up to twice its length. Each entry follows an attempt over the network, so copying a
    /// log of a few kilobytes on each is nothing beside it.
    fn push(&mut self, entry: Entry) {
        self.entries.reserve_exact(1);
        self.entries.push(entry);
    }
}

/// An attempt's error text, sharing the delivery's last one when it says the same: a receiver
/// that is down fails every retry with the same words, and each retry is an entry in the log;
/// kept once per retry, a delivery retried for days held kilobytes of one sentence.
fn share(last: Option<&Arc<str>>, error: String) -> Arc<str> {
    match last {
        Some(last) if **last == *error => last.clone(),
        _ => Arc::from(error),
    }
}

/// The endpoint of one of a submission's deliveries (empty if it names none of them).
fn endpoint_of(s: &Submission, delivery: DeliveryId) -> &str {
    s.record.deliveries.iter().find(|d| d.id == delivery).map_or("", |d| d.endpoint.as_str())
}

/// A submission's event log as read: numbered, with each event's hash covering the previous
/// event's hash and this event's content (the same on every node: only folded facts go in).
fn event_views(s: &Submission) -> Vec<EventView> {
    let r = &s.record;
    let mut log = Log(Vec::with_capacity(2 + r.notes.len() + 2 * s.entries.len()));
    let received = words::received(&r.partner, r.size, &r.content_type, r.message_id.as_deref());
    log.push(r.received_at, "received", None, None, received);
    let routed = words::routed(&r.route, r.deliveries.iter().map(|d| d.endpoint.as_str()));
    log.push(r.received_at, "routed", None, None, routed);
    for note in &r.notes {
        log.push(r.received_at, "note", None, None, note.clone());
    }
    for e in &s.entries {
        let (at, d) = (e.at, Some(e.delivery_id));
        let endpoint = endpoint_of(s, e.delivery_id);
        match &e.fact {
            Fact::Delivered { attempt, via } => {
                log.push(at, "attempt", d, Some(*attempt), words::handed_over(endpoint, *via));
                log.push(at, "delivered", d, Some(*attempt), words::delivered(endpoint));
            }
            Fact::Retry { attempt, not_before, error } => {
                log.push(at, "attempt", d, Some(*attempt), error.to_string());
                log.push(at, "retry_scheduled", d, Some(*attempt), format!("next attempt at {}", rfc3339(*not_before)));
            }
            Fact::Dead { attempt, error } => {
                log.push(at, "attempt", d, Some(*attempt), error.to_string());
                log.push(at, "dead", d, Some(*attempt), error.to_string());
            }
            Fact::Replayed { detail } => log.push(at, "replayed", d, None, detail.clone()),
        }
    }
    log.0
}

/// A log being read out, event by event.
struct Log(Vec<EventView>);

impl Log {
    fn push(&mut self, at: Millis, kind: &str, delivery_id: Option<DeliveryId>, attempt: Option<u32>, detail: String) {
        // Numbered from 0 and chained as the embedded store does, so a log verifies the same way
        // whichever store kept it.
        let seq = self.0.len() as u32;
        let prev = self.0.last().map(|v| v.hash.as_str()).unwrap_or("");
        let hash = event_hash(prev, seq, at, kind, delivery_id, attempt, &detail);
        self.0.push(EventView { seq, at: rfc3339(at), kind: kind.to_owned(), delivery_id, attempt, detail, hash });
    }
}

pub use crate::store::rfc3339;

/// The dedup map in a snapshot: JSON map keys are strings, so its digests go as hex, in a list.
mod digest_keys {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::FastMap;
    use crate::store::SubmissionId;

    pub fn serialize<S: Serializer>(map: &FastMap<[u8; 16], SubmissionId>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter().map(|(digest, id)| (hex::encode(digest), id)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FastMap<[u8; 16], SubmissionId>, D::Error> {
        use serde::de::Error;
        let pairs = Vec::<(String, SubmissionId)>::deserialize(d)?;
        let mut map = FastMap::default();
        map.reserve(pairs.len());
        for (digest, id) in pairs {
            let mut key = [0u8; 16];
            hex::decode_to_slice(&digest, &mut key).map_err(|e| D::Error::custom(format!("dedup digest: {e}")))?;
            map.insert(key, id);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_that_says_the_same_as_the_last_is_kept_once() {
        let first = share(None, "connection refused".into());
        let again = share(Some(&first), "connection refused".into());
        assert!(Arc::ptr_eq(&first, &again), "the same words were stored twice");
        let other = share(Some(&first), "HTTP 503".into());
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&*other, "HTTP 503");
    }
}
