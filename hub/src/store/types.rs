//! The records a [`Store`](super::Store) takes and gives back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }

            /// When this id was made: milliseconds since the epoch of a v7 id (0 for another
            /// kind).
            pub fn created_at(&self) -> Millis {
                self.0.get_timestamp().map(|t| t.to_unix()).map_or(0, |(s, n)| s * 1000 + u64::from(n) / 1_000_000)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(SubmissionId, "Id of one accepted submission.");
id_type!(DeliveryId, "Id of one delivery: one submission to one endpoint. Stable across attempts and replays.");

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn now_millis() -> Millis {
    // A clock before 1970 is a broken machine; treat it as the epoch rather than panic.
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 in UTC with milliseconds, as the RabbitMQ store's views and the admin API show times.
pub fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// What retention may delete (see [`Store::expire`](super::Store::expire)): a submission whose
/// every delivery is final (delivered or dead) and was last changed at or before the cutoff of
/// its state. A state without a cutoff keeps its submissions (a pending delivery always does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutoffs {
    pub delivered: Option<Millis>,
    pub dead: Option<Millis>,
}

impl Cutoffs {
    /// The cutoffs `now` minus each kept duration.
    pub fn before(now: Millis, delivered: Option<std::time::Duration>, dead: Option<std::time::Duration>) -> Cutoffs {
        let minus = |d: std::time::Duration| now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Cutoffs { delivered: delivered.map(minus), dead: dead.map(minus) }
    }

    /// Whether a delivery in `state`, last changed at `updated_at`, lets its submission go.
    pub fn lets_go(&self, state: DeliveryState, updated_at: Millis) -> bool {
        let cutoff = match state {
            DeliveryState::Pending => None,
            DeliveryState::Delivered => self.delivered,
            DeliveryState::Dead => self.dead,
        };
        cutoff.is_some_and(|c| updated_at <= c)
    }
}

/// The first 16 bytes of SHA-256 of a dedup key: what both stores' dedup indexes hold. 128 bits
/// make a collision (which would fold two different messages) practically impossible, and a key
/// of any length costs the index 16 bytes. The digest is also what makes a fast hasher safe for
/// the in-memory index: a partner chooses keys, not their digests.
pub fn dedup_digest(key: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(key.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// An id a partner knows its submission by: the message id in its header (e.g.
/// `nachrichtenUUID`) or the `Idempotency-Key` it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerRef<'a> {
    MessageId(&'a str),
    IdempotencyKey(&'a str),
}

impl PartnerRef<'_> {
    /// The dedup key this id is stored under for `partner` (dedup is per partner).
    pub fn dedup_key(self, partner: &str) -> String {
        match self {
            PartnerRef::MessageId(m) => format!("msg:{partner}:{m}"),
            PartnerRef::IdempotencyKey(k) => format!("idem:{partner}:{k}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub id: SubmissionId,
    pub partner: String,
    /// Keys under which this submission counts as a duplicate ([`PartnerRef::dedup_key`]).
    pub dedup_keys: Vec<String>,
    pub received_at: Millis,
    /// Media type the partner sent (`application/xml` or `application/json`).
    pub content_type: String,
    /// What the reader found (adapters::Meta as JSON).
    pub meta: serde_json::Value,
    /// The message id from the header, sent as `Lotse-Message-Id`.
    pub message_id: Option<String>,
    pub route: String,
    /// The exact bytes received.
    pub original: Bytes,
    pub deliveries: Vec<NewDelivery>,
    /// Extra events to record after `received` and `routed` (e.g. validation warnings).
    pub notes: Vec<String>,
}

/// One delivery of a new submission.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub endpoint: String,
    /// `None` = send the original bytes; `Some` = a rendition made at intake (e.g. JSON form).
    pub rendition: Option<Rendition>,
}

#[derive(Debug, Clone)]
pub struct Rendition {
    pub content_type: String,
    pub body: Bytes,
}

/// The 202 answer: stored once, returned again for duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub submission_id: SubmissionId,
    pub deliveries: Vec<ReceiptDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptDelivery {
    pub id: DeliveryId,
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    Accepted(Receipt),
    /// An earlier submission shared a dedup key; this is its receipt.
    Duplicate(Receipt),
}

/// A delivery leased to a worker for one attempt.
#[derive(Debug, Clone)]
pub struct Lease {
    pub delivery_id: DeliveryId,
    pub submission_id: SubmissionId,
    pub endpoint: String,
    /// Number of this attempt, 1-based, counted over the delivery's whole life.
    pub attempt: u32,
    /// Attempts since the delivery was created or last replayed, this one included; the
    /// retry budget (`max_attempts`) applies to this count.
    pub budget_attempt: u32,
    pub message_id: Option<String>,
    pub content_type: String,
    pub payload: Bytes,
    /// Backend-private handle (e.g. an AMQP delivery tag).
    pub token: u64,
}

/// How a receiver took a delivery: what the event log says of a successful attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handover {
    /// The receiver answered this 2xx status.
    Http(u16),
    /// The file and its metadata were written, synced and renamed into the folder.
    File,
    /// The receiving broker confirmed the message.
    Amqp,
    /// The agency's software acknowledged what it fetched from its mailbox.
    Mailbox,
}

impl std::fmt::Display for Handover {
    /// The words after the endpoint's name in the event log: "`bauamt` answered HTTP 200".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handover::Http(status) => write!(f, "answered HTTP {status}"),
            Handover::File => f.write_str("has the file (written and synced)"),
            Handover::Amqp => f.write_str("confirmed the message (broker confirm)"),
            Handover::Mailbox => f.write_str("acknowledged the fetched message"),
        }
    }
}

/// An agency's answer to a delivery it fetched from its mailbox, when it reaches a process that
/// does not hold the delivery (several `lotse` processes behind one load balancer): relayed
/// through the store to the process that does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxVerdict {
    pub mailbox: String,
    pub delivery_id: DeliveryId,
    pub verdict: Verdict,
    /// When the answer was written to the store (set by the store that relays it; not part of
    /// the record). The holder ignores an answer older than its own fetch of the delivery: it
    /// was meant for an earlier attempt (a stream read again from its start replays every
    /// answer ever relayed).
    #[serde(skip)]
    pub at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Received and kept: delivered.
    Ack,
    /// Refused: dead, or (`retry`) offered again later.
    Reject { reason: String, retry: bool },
}

/// An operator's pause of an endpoint: its deliveries are held (nothing is leased for it) until
/// it is resumed. Who paused it, when, and why if they said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub actor: String,
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The words of the event log that both stores write, so a submission's history reads the same
/// whichever store keeps it.
pub mod words {
    /// `received`: who sent what.
    pub fn received(partner: &str, size: usize, content_type: &str, message_id: Option<&str>) -> String {
        let id = message_id.map(|m| format!(", message id {m}")).unwrap_or_default();
        format!("from partner `{partner}`, {size} bytes of {content_type}{id}")
    }

    /// `routed`: the route and the endpoints it names.
    pub fn routed<'a>(route: &str, endpoints: impl IntoIterator<Item = &'a str>) -> String {
        let endpoints: Vec<&str> = endpoints.into_iter().collect();
        format!("route `{route}` -> {}", endpoints.join(", "))
    }

    /// `attempt` that worked: the endpoint and how it took the message.
    pub fn handed_over(endpoint: &str, via: super::Handover) -> String {
        format!("`{endpoint}` {via}")
    }

    /// `delivered`.
    pub fn delivered(endpoint: &str) -> String {
        format!("delivered to `{endpoint}`")
    }

    /// `replayed`: who put a dead delivery back to work, and why.
    pub fn replayed(actor: &str, reason: &str) -> String {
        format!("replayed by `{actor}`: {reason}")
    }
}

/// The hash of event `seq` of a submission's log (numbered from 0), chained to the one before
/// (`prev`, empty for the first): hex SHA-256 over `prev`, a newline, `seq` (4 bytes big-endian),
/// `at` in milliseconds since the epoch (8 bytes big-endian), the kind, a NUL byte, the delivery
/// id's 16 bytes if there is one, the attempt (4 bytes big-endian, 0 if none) and the detail
/// (UTF-8). Both stores chain their logs so; `docs/api.md` spells it out for auditors.
pub fn event_hash(
    prev: &str,
    seq: u32,
    at: Millis,
    kind: &str,
    delivery_id: Option<DeliveryId>,
    attempt: Option<u32>,
    detail: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    h.update(kind.as_bytes());
    h.update(b"\0");
    if let Some(d) = delivery_id {
        h.update(d.0.as_bytes());
    }
    h.update(attempt.unwrap_or(0).to_be_bytes());
    h.update(detail.as_bytes());
    hex::encode(h.finalize())
}

/// Checks a log as read: numbered 0, 1, 2, … and every hash as [`event_hash`] gives it from the
/// event's content and the hash before. The first event that does not hold, as text.
pub fn verify_event_chain(events: &[EventView]) -> Result<(), String> {
    let mut prev = "";
    for (i, e) in events.iter().enumerate() {
        if e.seq as usize != i {
            return Err(format!("event {i} is numbered {}", e.seq));
        }
        let at = time::OffsetDateTime::parse(&e.at, &time::format_description::well_known::Rfc3339)
            .map_err(|err| format!("event {i}: time `{}`: {err}", e.at))?;
        let at =
            u64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("event {i}: time before 1970"))?;
        if event_hash(prev, e.seq, at, &e.kind, e.delivery_id, e.attempt, &e.detail) != e.hash {
            return Err(format!("event {i} ({}) does not match its hash", e.kind));
        }
        prev = &e.hash;
    }
    Ok(())
}

#[cfg(test)]
#[test]
fn each_handover_has_its_own_words() {
    let said: Vec<String> = [Handover::Http(204), Handover::File, Handover::Amqp, Handover::Mailbox]
        .iter()
        .map(|h| h.to_string())
        .collect();
    assert_eq!(said[0], "answered HTTP 204");
    assert!(said[1..].iter().all(|s| !s.contains("HTTP")), "{said:?}");
    let distinct: std::collections::HashSet<&String> = said.iter().collect();
    assert_eq!(distinct.len(), 4, "{said:?}");
}

/// Result of one attempt, decided by the delivery worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered { via: Handover },
    Retry { not_before: Millis, error: String },
    Dead { error: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: DeliveryId,
    pub submission_id: SubmissionId,
    pub endpoint: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When the next attempt may start (pending only), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionState {
    /// Some delivery is still pending.
    InProgress,
    /// Every delivery arrived.
    Delivered,
    /// No delivery is pending and at least one is dead.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionView {
    pub id: SubmissionId,
    pub state: SubmissionState,
    pub partner: String,
    pub received_at: String,
    pub route: String,
    pub meta: serde_json::Value,
    pub deliveries: Vec<DeliveryView>,
    pub events: Vec<EventView>,
}

/// One entry of a submission's event log. Each entry's `hash` covers the previous entry's hash
/// and this entry's content, so a rewritten log is detectable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u32,
    pub at: String,
    /// `received`, `routed`, `note`, `attempt`, `delivered`, `retry_scheduled`, `dead`, `replayed`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub detail: String,
    pub hash: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    pub endpoint: Option<String>,
    pub submission_id: Option<SubmissionId>,
    pub limit: usize,
}

impl DeliveryFilter {
    /// The most deliveries one listing returns (and one bulk replay takes).
    pub const MAX_LIMIT: usize = 10_000;
    /// What a listing returns when no limit is given (`limit` 0).
    pub const DEFAULT_LIMIT: usize = 100;

    /// The limit every store applies: 0 means the default, and never more than the maximum, so
    /// a listing (or a bulk replay) is bounded the same way on both backends.
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 { Self::DEFAULT_LIMIT } else { self.limit.min(Self::MAX_LIMIT) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ReplayOutcome {
    Replayed,
    /// Only dead deliveries are replayed; this one is in another state.
    NotDead {
        state: DeliveryState,
    },
    NotFound,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub submissions: u64,
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
}

/// Store failures. Every one means "try later": the caller answers 503, never 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

/// A process's link to the broker of a shared store, as it knows it now ([`crate::store::Store::broker`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerStatus {
    /// Connected to the broker now (writes answer 503 while not).
    pub connected: bool,
    /// The broker blocks this process's publishes (a resource alarm: low memory or disk).
    pub blocked: bool,
    /// Connections this process opened since it started: 1 until its first reconnect.
    pub connections: u64,
    /// The next offset of the event stream this process folds. Processes that have read up to
    /// now show the same; one that stays behind the others does not see their latest changes.
    pub stream_offset: u64,
    /// Reading the event stream again from its start (it lost records this process had read):
    /// not ready until done.
    pub rereading: bool,
    /// How often this process did that since it started.
    pub rereads: u64,
    /// Event records this process could not read and skipped since it started (written by a
    /// later version of Lotse, or not by Lotse): more than 0 means its status may differ from
    /// that of processes that read them. Upgrade it.
    pub unreadable_records: u64,
    /// The stream offset this process's start read from: 0 when it read the whole stream, more
    /// when it started from the index it saved when it last stopped (its snapshot).
    pub started_at_offset: u64,
    /// Per endpoint, the work messages this process took from the broker and what became of
    /// them: an operator's first look when an endpoint's deliveries do not move.
    pub work: Vec<WorkInHand>,
}

/// One endpoint's work in one process of a shared store ([`BrokerStatus::work`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkInHand {
    pub endpoint: String,
    /// Work messages the broker gave this process since it started.
    pub received: u64,
    /// Waiting in this process now for a delivery worker (or mailbox) to lease them: messages
    /// not yet opened (at most the prefetch) and the deliveries left of opened packs. Unacked
    /// at the broker, so no other process gets them meanwhile.
    pub waiting: u64,
    /// Leased now: being attempted, or (a mailbox's) fetched and not yet answered.
    pub leased: u64,
    /// Milliseconds since a lease last took work of this endpoint here (`None`: never).
    pub last_lease_ms_ago: Option<u64>,
}
