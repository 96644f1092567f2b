//! Work messages: one delivery in a work, wait or dead queue. The body is the payload; the
//! properties and headers carry everything else a lease needs.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use bytes::Bytes;
use uuid::Uuid;

use crate::store::{DeliveryId, Millis, SubmissionId};

/// Fixed delays of the wait ladder, in milliseconds. Every message in one wait queue has the
/// same TTL, so expiry order is queue order and no message waits behind a longer one (the
/// head-of-line blocking of per-message TTL). A retry sits in the longest rung not longer than
/// its remaining delay, and is parked again on return while it is not yet due: a delay `d`
/// takes at most a few hops and ends at most one shortest rung late.
pub const LADDER_MS: [u64; 7] = [200, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000];

/// The rung for a delay: the longest rung not longer than `remaining_ms`, or the shortest.
pub fn rung_for(remaining_ms: u64) -> u64 {
    LADDER_MS.iter().rev().copied().find(|ms| *ms <= remaining_ms).unwrap_or(LADDER_MS[0])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMessage {
    pub delivery_id: DeliveryId,
    pub submission_id: SubmissionId,
    pub message_id: Option<String>,
    pub content_type: String,
    /// Attempts made before this message was published.
    pub attempts: u32,
    /// `attempts` at the last replay: the retry budget counts from there.
    pub budget_base: u32,
    /// Replay generation (0 before any replay).
    pub generation: u32,
    /// Not to be attempted before this time.
    pub not_before: Millis,
    /// When intake first queued it (kept through retries and replays).
    pub queued_at: Millis,
    /// The replay claim this work belongs to (generation > 0): the work is real only if that
    /// claim won its generation in the stream (see `Index::replay_claim`).
    pub replay_id: Option<Uuid>,
}

/// All fields in one header: `1 <submission> <attempts> <budget base> <generation> <not before>
/// <queued at> <replay id or -> [<message id>]`, space-separated, the message id last (it may
/// contain anything). One header instead of eight: each header entry costs the broker (it decodes
/// the headers of every publish) and the client (a table entry to build and encode).
const PACKED: &str = "lotse";
const SUBMISSION: &str = "lotse-submission-id";
const MESSAGE: &str = "lotse-message-id";
const ATTEMPTS: &str = "lotse-attempts";
const BUDGET_BASE: &str = "lotse-budget-base";
const GENERATION: &str = "lotse-generation";
const NOT_BEFORE: &str = "lotse-not-before";
const QUEUED_AT: &str = "lotse-queued-at";
const REPLAY: &str = "lotse-replay-id";
/// Set by quorum queues on redelivery: how often the message went back to the queue
/// (a consumer died or nacked it). Each such return follows a lease, so it counts as an attempt.
const DELIVERY_COUNT: &str = "x-delivery-count";

impl WorkMessage {
    /// The [`PACKED`] header's text.
    fn packed(&self) -> String {
        use std::fmt::Write;
        let mut packed = String::with_capacity(128);
        let replay = self.replay_id.map_or_else(|| "-".to_owned(), |r| r.to_string());
        // Writing to a String cannot fail.
        let _ = write!(
            packed,
            "1 {} {} {} {} {} {} {}",
            self.submission_id,
            self.attempts,
            self.budget_base,
            self.generation,
            self.not_before,
            self.queued_at,
            replay
        );
        if let Some(m) = &self.message_id {
            packed.push(' ');
            packed.push_str(m);
        }
        packed
    }

    pub fn properties(&self) -> Result<BasicProperties, String> {
        let mut h = FieldTable::default();
        h.insert(PACKED.into(), AMQPValue::LongString(LongString::from(self.packed().into_bytes())));
        let content_type = ShortString::try_new(self.content_type.as_str())
            .map_err(|_| format!("content type `{}` is longer than 255 bytes", self.content_type))?;
        Ok(BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type)
            .with_message_id(self.delivery_id.to_string().into())
            .with_headers(h))
    }

    /// Reads a consumed message; also returns how often the broker redelivered it.
    pub fn from_properties(p: &BasicProperties) -> Result<(WorkMessage, u32), String> {
        let empty = FieldTable::default();
        let h = p.headers().as_ref().unwrap_or(&empty).inner();
        let delivery_id = p
            .message_id()
            .as_ref()
            .and_then(|m| m.as_str().parse().ok())
            .ok_or("work message without a delivery id")?;
        let redelivered = h.get(DELIVERY_COUNT).and_then(as_u64).unwrap_or(0) as u32;
        if let Some(packed) = h.get(PACKED).and_then(as_text) {
            let content_type = p.content_type().as_ref().map(|c| c.to_string()).unwrap_or_default();
            let message = unpack(&packed, delivery_id, content_type)?;
            return Ok((message, redelivered));
        }
        // Separate headers: messages queued by earlier versions.
        let submission_id = h
            .get(SUBMISSION)
            .and_then(as_text)
            .and_then(|s| s.parse().ok())
            .ok_or("work message without a submission id")?;
        let message = WorkMessage {
            delivery_id,
            submission_id,
            message_id: h.get(MESSAGE).and_then(as_text),
            content_type: p.content_type().as_ref().map(|c| c.to_string()).unwrap_or_default(),
            attempts: h.get(ATTEMPTS).and_then(as_u64).unwrap_or(0) as u32,
            budget_base: h.get(BUDGET_BASE).and_then(as_u64).unwrap_or(0) as u32,
            generation: h.get(GENERATION).and_then(as_u64).unwrap_or(0) as u32,
            not_before: h.get(NOT_BEFORE).and_then(as_u64).unwrap_or(0),
            queued_at: h.get(QUEUED_AT).and_then(as_u64).unwrap_or(0),
            replay_id: h.get(REPLAY).and_then(as_text).and_then(|s| s.parse().ok()),
        };
        Ok((message, redelivered))
    }
}

/// Reads the [`PACKED`] header.
fn unpack(packed: &str, delivery_id: DeliveryId, content_type: String) -> Result<WorkMessage, String> {
    let bad = || format!("work message header `{PACKED}` unreadable: `{packed}`");
    let mut f = packed.splitn(9, ' ');
    if f.next() != Some("1") {
        return Err(bad());
    }
    let mut field = || f.next().ok_or_else(bad);
    let submission_id = field()?.parse().map_err(|_| bad())?;
    let attempts = field()?.parse().map_err(|_| bad())?;
    let budget_base = field()?.parse().map_err(|_| bad())?;
    let generation = field()?.parse().map_err(|_| bad())?;
    let not_before = field()?.parse().map_err(|_| bad())?;
    let queued_at = field()?.parse().map_err(|_| bad())?;
    let replay_id = match field()? {
        "-" => None,
        r => Some(r.parse().map_err(|_| bad())?),
    };
    let message_id = f.next().map(str::to_owned);
    Ok(WorkMessage {
        delivery_id,
        submission_id,
        message_id,
        content_type,
        attempts,
        budget_base,
        generation,
        not_before,
        queued_at,
        replay_id,
    })
}

/// Marks a pack: one work message that carries several deliveries of one endpoint, queued by
/// intakes at the same time (see [`pack`]). Its value is the format's version.
const PACK: &str = "lotse-pack";
const PACK_VERSION: &[u8] = b"1";

/// One message for several deliveries of an endpoint: what intake publishes when more than one
/// is waiting for the same work queue. A quorum queue's cost is mostly per message, not per
/// byte (here, raw lapin's confirmed publishes of 4 KiB: 24,000-38,000/s one per message,
/// 54,000-79,000 deliveries/s eight per message), so under load one publish carries many.
///
/// The body is the parts, each `u32` length (big-endian) + its head + `u32` length + its
/// payload; a head is `<delivery id>\n<content type>\n<the PACKED header's text>`. The
/// properties carry only [`PACK`]: a version that does not know packs finds no delivery id and
/// moves the message, whole, to the dead queue (never loses it).
pub fn pack<'a>(parts: impl IntoIterator<Item = (&'a WorkMessage, &'a [u8])>) -> (Vec<u8>, BasicProperties) {
    let mut body = Vec::new();
    for (m, payload) in parts {
        let head = format!("{}\n{}\n{}", m.delivery_id, m.content_type, m.packed());
        body.extend_from_slice(&(head.len() as u32).to_be_bytes());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(payload);
    }
    let mut h = FieldTable::default();
    h.insert(PACK.into(), AMQPValue::LongString(LongString::from(PACK_VERSION.to_vec())));
    (body, BasicProperties::default().with_delivery_mode(2).with_headers(h))
}

/// Whether a consumed message is a pack (see [`pack`]).
pub fn is_pack(p: &BasicProperties) -> bool {
    p.headers().as_ref().is_some_and(|h| h.inner().contains_key(PACK))
}

/// The parts of a pack, each with its payload (a slice of `body`, not a copy), and how often
/// the broker redelivered the pack. An error when any part cannot be read: the pack then goes
/// to the dead queue whole, as any unreadable work message does.
pub fn unpack_pack(p: &BasicProperties, body: &Bytes) -> Result<(Vec<(WorkMessage, Bytes)>, u32), String> {
    let h = p.headers().as_ref().map(|h| h.inner());
    match h.and_then(|h| h.get(PACK)) {
        Some(AMQPValue::LongString(v)) if v.as_bytes() == PACK_VERSION => {}
        other => return Err(format!("pack of an unknown version ({other:?})")),
    }
    let redelivered = h.and_then(|h| h.get(DELIVERY_COUNT)).and_then(as_u64).unwrap_or(0) as u32;
    let mut parts = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let head = take(body, &mut at, "head")?;
        let payload = take(body, &mut at, "payload")?;
        let head = std::str::from_utf8(&head).map_err(|_| "pack part head is not UTF-8".to_owned())?;
        let mut lines = head.splitn(3, '\n');
        let (Some(id), Some(content_type), Some(packed)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(format!("pack part head unreadable: `{head}`"));
        };
        let delivery_id = id.parse().map_err(|_| format!("pack part without a delivery id: `{head}`"))?;
        parts.push((unpack(packed, delivery_id, content_type.to_owned())?, payload));
    }
    if parts.is_empty() {
        return Err("an empty pack".into());
    }
    Ok((parts, redelivered))
}

/// The `u32`-length-prefixed slice of `body` at `at`, and `at` moved past it.
fn take(body: &Bytes, at: &mut usize, what: &str) -> Result<Bytes, String> {
    let short = || format!("pack cut short in a part's {what} at byte {at}");
    let len = body.get(*at..*at + 4).ok_or_else(short)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let slice = body.get(*at + 4..*at + 4 + len).ok_or_else(short)?;
    let taken = body.slice_ref(slice);
    *at += 4 + len;
    Ok(taken)
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}
