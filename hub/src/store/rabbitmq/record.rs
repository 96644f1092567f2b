//! Records of the event stream: every change of state, in the one order every node folds them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{DeliveryId, Handover, MailboxVerdict, Millis, ReceiptDelivery, SubmissionId};

/// One entry of `<prefix>.events`. `rid` identifies the entry itself, so the node that wrote it
/// can wait until its own fold has applied it (read-your-writes on that node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub rid: Uuid,
    pub at: Millis,
    pub record: Record,
}

/// Encoded as JSON with its `type` tag first (serde's internally tagged form); decoded by the
/// hand-written [`Deserialize`] below, which reads the fields straight into the variant instead
/// of buffering the whole record first as serde's derive for internally tagged enums does.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A claim for a new submission. The first claim of a dedup key in stream order wins; a
    /// later claim that shares a key is a loser and never becomes a submission.
    Submitted(SubmittedRecord),
    /// The deliveries of these submissions are in their work queues (confirmed by the broker).
    /// Written in bulk a little later than the 202 (see `QUEUED_FLUSH`): a hint for duplicates.
    Queued { submission_ids: Vec<SubmissionId> },
    /// The outcome of one attempt.
    Outcome(OutcomeRecord),
    /// An operator put a dead delivery back to work: the claim of one replay generation. The
    /// first claim of a delivery's next generation in stream order wins; later ones lose, and
    /// their work messages are void.
    Replayed(ReplayedRecord),
    /// A replay's work message whose claim was not in the stream after `CLAIM_WAIT` is dropped:
    /// this tombstone makes a claim of that replay folded after it lose, on every node.
    ReplayVoid(ReplayVoidRecord),
    /// No state: written at start so a node knows when it has read the stream up to "now".
    Mark,
    /// Retention: every node deletes, at this point of the stream, each submission whose every
    /// delivery is final and was last changed at or before the cutoff of its state (see
    /// [`crate::store::Cutoffs`]). The cutoffs travel in the record, so every node deletes the
    /// same submissions whatever its own config or clock says.
    /// At most `limit` go per record (those of the smallest submission ids), so one record
    /// holds the index lock for a bounded time; the writer appends another while one deleted
    /// `limit`.
    Expire { delivered: Option<Millis>, dead: Option<Millis>, limit: u64 },
    /// No state: an agency's answer to a mailbox delivery, for the process that holds it (it
    /// settles the delivery; every other process ignores it).
    Verdict(MailboxVerdict),
    /// An operator paused or resumed an endpoint: from this point of the stream on, every node
    /// holds its deliveries (leases nothing for it), or lets them go again. The stream keeps it,
    /// so a pause outlives a restart of every process.
    Pause(PauseRecord),
}

const VARIANTS: &[&str] =
    &["submitted", "queued", "outcome", "replayed", "replay_void", "mark", "expire", "verdict", "pause"];

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> serde::de::Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event record with its `type` first")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        use serde::de::Error;
        use serde::de::value::MapAccessDeserializer;
        // `encode` always writes the tag first (serde serializes an internally tagged enum so).
        match map.next_key::<String>()? {
            Some(key) if key == "type" => {}
            _ => return Err(A::Error::custom("event record without `type` as its first field")),
        }
        let tag: String = map.next_value()?;
        let rest = MapAccessDeserializer::new(map);
        match tag.as_str() {
            "submitted" => SubmittedRecord::deserialize(rest).map(Record::Submitted),
            "queued" => {
                #[derive(Deserialize)]
                struct Queued {
                    submission_ids: Vec<SubmissionId>,
                }
                Queued::deserialize(rest).map(|q| Record::Queued { submission_ids: q.submission_ids })
            }
            "outcome" => OutcomeRecord::deserialize(rest).map(Record::Outcome),
            "replayed" => ReplayedRecord::deserialize(rest).map(Record::Replayed),
            "replay_void" => ReplayVoidRecord::deserialize(rest).map(Record::ReplayVoid),
            "mark" => {
                serde::de::IgnoredAny::deserialize(rest)?;
                Ok(Record::Mark)
            }
            "expire" => {
                #[derive(Deserialize)]
                struct Expire {
                    delivered: Option<Millis>,
                    dead: Option<Millis>,
                    limit: u64,
                }
                Expire::deserialize(rest).map(|e| Record::Expire {
                    delivered: e.delivered,
                    dead: e.dead,
                    limit: e.limit,
                })
            }
            "verdict" => MailboxVerdict::deserialize(rest).map(Record::Verdict),
            "pause" => PauseRecord::deserialize(rest).map(Record::Pause),
            other => Err(A::Error::unknown_variant(other, VARIANTS)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedRecord {
    pub id: SubmissionId,
    pub partner: String,
    pub dedup_keys: Vec<String>,
    pub received_at: Millis,
    pub content_type: String,
    /// The routing meta as compact JSON text, kept as written: every node holds one per
    /// submission, and a parsed `Value` (a map of strings) took about three times the memory and
    /// a tree to build, clone and free in every fold. Parsed only when a status is read.
    pub meta: Box<serde_json::value::RawValue>,
    pub message_id: Option<String>,
    pub route: String,
    pub deliveries: Vec<ReceiptDelivery>,
    pub notes: Vec<String>,
    /// Size of the original bytes (the bytes themselves travel only in the work messages).
    pub size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub submission_id: SubmissionId,
    pub delivery_id: DeliveryId,
    pub attempt: u32,
    /// Replay generation of the work message this attempt came from (0 before any replay).
    pub generation: u32,
    pub outcome: RecordedOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RecordedOutcome {
    Delivered {
        /// How the receiver took it; absent in records of versions before 2026-11-30.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<Handover>,
        /// What those earlier records carried instead: an HTTP status (200 for every transport).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    Retry {
        not_before: Millis,
        error: String,
    },
    /// The payload follows the JSON in the same stream message (see [`encode`]), so any node
    /// can replay the delivery with the same bytes.
    Dead {
        error: String,
        content_type: String,
        message_id: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayedRecord {
    pub submission_id: SubmissionId,
    pub delivery_id: DeliveryId,
    /// The generation of the new work message.
    pub generation: u32,
    pub actor: String,
    pub reason: String,
    /// Names this replay's work message (its `lotse-replay-id` header). Absent in records of
    /// earlier versions, whose replays were not claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayVoidRecord {
    pub submission_id: SubmissionId,
    pub delivery_id: DeliveryId,
    pub generation: u32,
    pub replay_id: Uuid,
}

/// An endpoint paused (`paused`) or resumed, by whom (and why, if they said); the time is the
/// envelope's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseRecord {
    pub endpoint: String,
    pub paused: bool,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of a stream message: the envelope as JSON, then, for a dead outcome, a NUL byte and the
/// payload. JSON text never contains a raw NUL (serde_json escapes control characters).
pub fn encode(envelope: &Envelope, payload: Option<&[u8]>) -> Result<Vec<u8>, serde_json::Error> {
    // A claim is about 500 bytes: sized once instead of grown from empty.
    let mut body = Vec::with_capacity(512 + payload.map_or(0, |p| p.len() + 1));
    serde_json::to_writer(&mut body, envelope)?;
    if let Some(payload) = payload {
        body.push(0);
        body.extend_from_slice(payload);
    }
    Ok(body)
}

/// The reverse of [`encode`]; the payload is empty when there was none.
pub fn decode(body: &[u8]) -> Result<(Envelope, Bytes), serde_json::Error> {
    match body.iter().position(|b| *b == 0) {
        Some(nul) => {
            let envelope = serde_json::from_slice(&body[..nul])?;
            Ok((envelope, Bytes::copy_from_slice(&body[nul + 1..])))
        }
        None => Ok((serde_json::from_slice(body)?, Bytes::new())),
    }
}

/// Several encoded records in one stream message (group commit: one publish and one confirm
/// for every record that was waiting): each as a 4-byte big-endian length, then the bytes.
pub fn frame(records: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(records.iter().map(|r| r.len() + 4).sum());
    for r in records {
        body.extend_from_slice(&(r.len() as u32).to_be_bytes());
        body.extend_from_slice(r);
    }
    body
}

/// The reverse of [`frame`] and [`encode`], in order.
#[cfg(test)]
pub fn unframe(body: &[u8]) -> Result<Vec<(Envelope, Bytes)>, String> {
    split(body)?.into_iter().map(|r| decode(r).map_err(|e| e.to_string())).collect()
}

/// The reverse of [`frame`]: the encoded records, in order.
pub fn split(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_first_chunk::<4>().ok_or("truncated record frame")?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("record frame of {len} bytes, {} left", rest.len()));
        }
        out.push(&rest[..len]);
        body = &rest[len..];
    }
    Ok(out)
}

/// The `rid` of an encoded record without decoding it: [`encode`] writes it first, as
/// `{"rid":"<36 characters>"`. `None` for anything else (then decode it).
pub fn peek_rid(encoded: &[u8]) -> Option<Uuid> {
    const START: &[u8] = br#"{"rid":""#;
    let id = encoded.strip_prefix(START)?.get(..37)?;
    if id[36] != b'"' {
        return None;
    }
    Uuid::try_parse_ascii(&id[..36]).ok()
}
