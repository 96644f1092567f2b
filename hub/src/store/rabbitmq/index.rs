//! The fold: every node applies the event stream, in stream order, to this in-memory index, and
//! answers `submission()`, `delivery()`, `deliveries()` and `counts()` from it.
//!
//! Applying the same stream gives the same index on every node (event `seq` and `hash` included),
//! because the fold depends only on the records and their order, never on the local clock.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use uuid::Uuid;

use super::record::{
    Envelope, OutcomeRecord, Record, RecordedOutcome, ReplayVoidRecord, ReplayedRecord, SubmittedRecord,
};
use crate::store::{
    Counts, Cutoffs, DeliveryFilter, DeliveryId, DeliveryState, DeliveryView, EventView, Handover, Millis, Receipt,
    ReceiptDelivery, SubmissionId, SubmissionState, SubmissionView, dedup_digest, event_hash, words,
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
#[derive(Debug, Clone)]
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

struct Submission {
    record: SubmittedRecord,
    queued: bool,
    events: Vec<Event>,
}

/// One entry of a submission's event log as folded: the facts only. Its `seq`, time text and
/// hash chain are computed when the log is read ([`Index::submission`]): the fold runs for every
/// record on every node, a log is read far less often.
struct Event {
    at: Millis,
    kind: &'static str,
    delivery_id: Option<DeliveryId>,
    attempt: Option<u32>,
    detail: Detail,
}

/// An event's detail text, or what it is made from when the log is read (most events: no text
/// of their own to keep on every node).
enum Detail {
    Received,
    Routed,
    Note(usize),
    /// A successful attempt: the endpoint (of the event's delivery) and how it took the message.
    HandedOver(Handover),
    /// Delivered to the event's delivery's endpoint.
    Delivered,
    Text(String),
}

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
    last_error: Option<String>,
    updated_at: Millis,
    /// Boxed: most deliveries never die, and the copy inline made every one ~80 bytes larger.
    dead: Option<Box<DeadCopy>>,
}

#[derive(Default)]
pub struct Index {
    /// Boxed: a submission is a few hundred bytes, and the map moves every entry when it grows.
    /// Inline, each doubling copied the whole index (with a stall for every intake waiting on
    /// the fold) and faulted in fresh pages for it: a quarter of an intake's client CPU while
    /// the index grew from empty. A box makes an entry 16 + 8 bytes.
    submissions: FastMap<SubmissionId, Box<Submission>>,
    /// Ordered by id: ids are v7 UUIDs, so the last entries are the newest.
    deliveries: BTreeMap<DeliveryId, Delivery>,
    /// [`dedup_digest`] of each dedup key -> the submission holding it.
    dedup: FastMap<[u8; 16], SubmissionId>,
    /// Claims that lost: their work messages (published with the claim) are dropped at lease.
    losers: FastSet<SubmissionId>,
    /// Replay claims that lost, and replays voided by a tombstone before their claim: their
    /// work messages are dropped at lease, and a claim folded later loses.
    void_replays: FastSet<Uuid>,
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
            Record::Expire { delivered, dead, limit } => {
                Applied::Expired(self.apply_expire(Cutoffs { delivered, dead }, limit))
            }
        }
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
        let at = record.received_at;
        let mut events = Vec::with_capacity(4 + record.notes.len());
        push_event(&mut events, at, "received", None, None, Detail::Received);
        push_event(&mut events, at, "routed", None, None, Detail::Routed);
        for i in 0..record.notes.len() {
            push_event(&mut events, at, "note", None, None, Detail::Note(i));
        }
        self.submissions.insert(record.id, Box::new(Submission { record, queued: false, events }));
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
        let (attempt_detail, kind, detail) = match o.outcome {
            RecordedOutcome::Delivered { via, status } => {
                if current {
                    d.state = DeliveryState::Delivered;
                    d.next_attempt_at = None;
                    d.dead = None;
                }
                let via = via.or(status.map(Handover::Http)).unwrap_or(Handover::Http(200));
                (Detail::HandedOver(via), "delivered", Detail::Delivered)
            }
            RecordedOutcome::Retry { not_before, error } => {
                if current {
                    d.state = DeliveryState::Pending;
                    d.next_attempt_at = Some(not_before);
                    d.last_error = Some(error.clone());
                }
                (
                    Detail::Text(error),
                    "retry_scheduled",
                    Detail::Text(format!("next attempt at {}", rfc3339(not_before))),
                )
            }
            RecordedOutcome::Dead { error, content_type, message_id } => {
                if current {
                    d.state = DeliveryState::Dead;
                    d.next_attempt_at = None;
                    d.last_error = Some(error.clone());
                    d.dead = Some(Box::new(DeadCopy { payload, content_type, message_id }));
                }
                (Detail::Text(error.clone()), "dead", Detail::Text(error))
            }
        };
        if current {
            d.generation = o.generation;
            d.outcome_generation = Some(o.generation);
        }
        if let Some(s) = self.submissions.get_mut(&o.submission_id) {
            push_event(&mut s.events, at, "attempt", Some(o.delivery_id), Some(o.attempt), attempt_detail);
            push_event(&mut s.events, at, kind, Some(o.delivery_id), Some(o.attempt), detail);
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
            push_event(&mut s.events, at, "replayed", Some(r.delivery_id), None, Detail::Text(detail));
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

    /// The submission that holds one of `keys`, and whether its deliveries are known queued.
    pub fn holder_of(&self, keys: &[String]) -> Option<(Receipt, bool)> {
        keys.iter()
            .find_map(|k| self.dedup.get(&dedup_digest(k)).and_then(|id| self.submissions.get(id)))
            .map(|s| (receipt_of(&s.record), s.queued))
    }

    /// The submission holding one dedup key.
    pub fn holder_of_key(&self, key: &str) -> Option<SubmissionId> {
        self.dedup.get(&dedup_digest(key)).copied()
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

    /// State and generation of a delivery, if known.
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
            last_error: d.last_error.clone(),
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

fn push_event(
    events: &mut Vec<Event>,
    at: Millis,
    kind: &'static str,
    delivery_id: Option<DeliveryId>,
    attempt: Option<u32>,
    detail: Detail,
) {
    events.push(Event { at, kind, delivery_id, attempt, detail });
}

/// The endpoint of one of a submission's deliveries (empty if it names none of them).
fn endpoint_of(s: &Submission, delivery: Option<DeliveryId>) -> &str {
    s.record.deliveries.iter().find(|d| Some(d.id) == delivery).map_or("", |d| d.endpoint.as_str())
}

/// A submission's event log as read: numbered, with each event's hash covering the previous
/// event's hash and this event's content (the same on every node: only folded facts go in).
fn event_views(s: &Submission) -> Vec<EventView> {
    let mut views: Vec<EventView> = Vec::with_capacity(s.events.len());
    for (i, e) in s.events.iter().enumerate() {
        let detail = match &e.detail {
            Detail::Received => words::received(
                &s.record.partner,
                s.record.size,
                &s.record.content_type,
                s.record.message_id.as_deref(),
            ),
            Detail::Routed => words::routed(&s.record.route, s.record.deliveries.iter().map(|d| d.endpoint.as_str())),
            Detail::Note(n) => s.record.notes.get(*n).cloned().unwrap_or_default(),
            Detail::HandedOver(via) => words::handed_over(endpoint_of(s, e.delivery_id), *via),
            Detail::Delivered => words::delivered(endpoint_of(s, e.delivery_id)),
            Detail::Text(t) => t.clone(),
        };
        // Numbered from 0 and chained as the embedded store does, so a log verifies the same way
        // whichever store kept it.
        let seq = i as u32;
        let prev = views.last().map(|v| v.hash.as_str()).unwrap_or("");
        let hash = event_hash(prev, seq, e.at, e.kind, e.delivery_id, e.attempt, &detail);
        views.push(EventView {
            seq,
            at: rfc3339(e.at),
            kind: e.kind.to_owned(),
            delivery_id: e.delivery_id,
            attempt: e.attempt,
            detail,
            hash,
        });
    }
    views
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}
