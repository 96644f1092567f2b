//! redb tables of the embedded store, their key encodings and the records stored in them.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::store::{DeliveryId, DeliveryState, Millis, Receipt, SubmissionId};

/// submission id (16 bytes) -> [`SubmissionRecord`] (JSON).
pub const SUBMISSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("submissions");
/// submission id -> the original bytes' reference in the blob log ([`super::blobs::BlobRef`]).
pub const PAYLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("payloads");
/// delivery id -> reference in the blob log of the rendition: u16 BE content-type length, content
/// type, body.
pub const RENDITIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("renditions");
/// delivery id -> [`DeliveryRecord`] (JSON).
pub const DELIVERIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("deliveries");
/// endpoint, 0x00, not-before (u64 BE), delivery id -> (): the work queue of pending deliveries.
pub const READY: TableDefinition<&[u8], ()> = TableDefinition::new("ready");
/// state byte, delivery id -> (): deliveries by state, for admin listings (ids are time-ordered v7).
pub const BY_STATE: TableDefinition<&[u8], ()> = TableDefinition::new("by_state");
/// submission id, seq (u32 BE) -> [`EventRecord`] (JSON).
pub const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// submission id -> the digests of its dedup keys (16 bytes each, see [`dedup_digest`]).
///
/// Keyed by the (time-ordered) submission id, so a batch appends to the end of the tree. A table
/// keyed by the dedup key itself put every submission on a random leaf page, and those page
/// writes were half of what a commit wrote. Lookups go to the in-memory index the writer builds
/// from this table at start ([`super::writer::DedupIndex`]).
pub const DEDUP_LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup_log");
/// counter name -> value.
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// submission id -> head of its event chain: number of events (u32 BE), then the last event's
/// hash (64 hex bytes). Kept apart from the submission record so appending an event does not
/// rewrite the record.
pub const CHAIN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chain");
/// endpoint name -> its operator's [`crate::store::Pause`] (JSON), while it is paused: a pause
/// holds across restarts until someone resumes the endpoint (the entry is then removed).
pub const PAUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("pauses");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmissionRecord {
    pub partner: String,
    pub received_at: Millis,
    pub content_type: String,
    pub meta: serde_json::Value,
    pub message_id: Option<String>,
    pub route: String,
    pub receipt: Receipt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub submission_id: SubmissionId,
    pub endpoint: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// `attempts` when the delivery was last replayed; the retry budget counts from here.
    pub budget_base: u32,
    pub not_before: Millis,
    pub last_error: Option<String>,
    pub updated_at: Millis,
    pub has_rendition: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub at: Millis,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub detail: String,
    pub hash: String,
}

pub fn ready_key(endpoint: &str, not_before: Millis, id: DeliveryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(endpoint.len() + 25);
    k.extend_from_slice(endpoint.as_bytes());
    k.push(0);
    k.extend_from_slice(&not_before.to_be_bytes());
    k.extend_from_slice(id.0.as_bytes());
    k
}

/// Splits a ready key of `endpoint` into (not_before, delivery id).
pub fn parse_ready_key(endpoint: &str, key: &[u8]) -> Option<(Millis, DeliveryId)> {
    let rest = key.strip_prefix(endpoint.as_bytes())?.strip_prefix(&[0])?;
    if rest.len() != 24 {
        return None;
    }
    let not_before = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let id = uuid::Uuid::from_slice(&rest[8..]).ok()?;
    Some((not_before, DeliveryId(id)))
}

pub fn state_byte(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Pending => b'p',
        DeliveryState::Delivered => b'd',
        DeliveryState::Dead => b'x',
    }
}

pub fn state_key(state: DeliveryState, id: DeliveryId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = state_byte(state);
    k[1..].copy_from_slice(id.0.as_bytes());
    k
}

pub fn event_key(id: SubmissionId, seq: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.0.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn encode_rendition(content_type: &str, body: &[u8]) -> Vec<u8> {
    let ct = content_type.as_bytes();
    let len = u16::try_from(ct.len()).unwrap_or(u16::MAX);
    let mut v = Vec::with_capacity(2 + ct.len() + body.len());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&ct[..usize::from(len)]);
    v.extend_from_slice(body);
    v
}

pub fn decode_rendition(v: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes(v.get(..2)?.try_into().ok()?));
    let ct = std::str::from_utf8(v.get(2..2 + len)?).ok()?;
    Some((ct.to_owned(), v.get(2 + len..)?))
}

/// The event chain: each hash covers the previous hash and this event's content.
pub fn chain_hash(prev: &str, seq: u32, e: &EventRecord) -> String {
    crate::store::event_hash(prev, seq, e.at, &e.kind, e.delivery_id, e.attempt, &e.detail)
}

pub fn encode_chain(events: u32, last_hash: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + last_hash.len());
    v.extend_from_slice(&events.to_be_bytes());
    v.extend_from_slice(last_hash.as_bytes());
    v
}

/// (number of events, last hash); an empty chain for a missing or unreadable value.
pub fn decode_chain(v: Option<&[u8]>) -> (u32, String) {
    let Some(v) = v.filter(|v| v.len() >= 4) else { return (0, String::new()) };
    let n = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    (n, String::from_utf8_lossy(&v[4..]).into_owned())
}
