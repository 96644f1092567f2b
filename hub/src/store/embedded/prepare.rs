//! Turns a [`NewSubmission`] into the exact bytes the writer inserts.
//!
//! This runs on the caller's task, not on the writer thread: the writer is the one serial point
//! of the embedded store, so everything that can be done beforehand (serializing records,
//! building and hashing the first events, appending the payload and renditions to the blob
//! segment) is done here, in parallel across requests.

use super::blobs::{self, BlobLog};
use super::tables::*;
use crate::store::{
    DeliveryId, DeliveryState, Millis, NewSubmission, Receipt, ReceiptDelivery, StoreError, SubmissionId, words,
};

pub struct PreparedIntake {
    pub id: SubmissionId,
    /// [`dedup_digest`] of each dedup key.
    pub dedup: Vec<[u8; 16]>,
    pub receipt: Receipt,
    /// [`SubmissionRecord`] as JSON.
    pub record: Vec<u8>,
    /// The payload's [`blobs::BlobRef`], encoded; the bytes are in the blob log, not synced yet.
    pub payload: [u8; 21],
    pub deliveries: Vec<PreparedDelivery>,
    /// Events 0..n, serialized, already chained.
    pub events: Vec<Vec<u8>>,
    /// Hash of the last event.
    pub last_hash: String,
    /// When its deliveries become due (their `READY` key and records' `not_before`): now.
    pub due_at: Millis,
}

pub struct PreparedDelivery {
    pub id: DeliveryId,
    pub endpoint: String,
    /// [`DeliveryRecord`] as JSON.
    pub record: Vec<u8>,
    /// The rendition's [`blobs::BlobRef`] (content type and body, see [`encode_rendition`]).
    pub rendition: Option<[u8; 21]>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("cannot serialize: {e}"))
}

fn store_blob(log: &BlobLog, bytes: &[u8]) -> Result<[u8; 21], StoreError> {
    let r = log
        .append(bytes, blobs::checksum(bytes))
        .map_err(|e| StoreError::Unavailable(format!("cannot write the blob log: {e}")))?;
    Ok(r.encode())
}

/// `dedup`: the [`dedup_digest`] of each of `sub.dedup_keys`.
pub fn prepare(
    sub: NewSubmission,
    dedup: Vec<[u8; 16]>,
    now: Millis,
    log: &BlobLog,
) -> Result<PreparedIntake, StoreError> {
    let receipt = Receipt {
        submission_id: sub.id,
        deliveries: sub.deliveries.iter().map(|d| ReceiptDelivery { id: d.id, endpoint: d.endpoint.clone() }).collect(),
    };
    let detail = words::received(&sub.partner, sub.original.len(), &sub.content_type, sub.message_id.as_deref());
    let mut events = vec![
        event(sub.received_at, "received", detail),
        event(now, "routed", words::routed(&sub.route, sub.deliveries.iter().map(|d| d.endpoint.as_str()))),
    ];
    for n in &sub.notes {
        events.push(event(now, "note", n.clone()));
    }
    let mut last_hash = String::new();
    let mut serialized = Vec::with_capacity(events.len());
    for (seq, mut e) in events.into_iter().enumerate() {
        e.hash = chain_hash(&last_hash, seq as u32, &e);
        serialized.push(serde_json::to_vec(&e).map_err(corrupt)?);
        last_hash = e.hash;
    }
    // What this intake appended so far: given back if a later append fails (the intake never
    // reaches the writer, so nothing would give its references back before the next start).
    let mut appended = Vec::new();
    let mut store = |bytes: &[u8]| {
        let r = store_blob(log, bytes);
        match &r {
            Ok(r) => appended.extend(blobs::decode(r.as_slice())),
            Err(_) => {
                if let Err(e) = log.release(&appended) {
                    tracing::warn!(error = %e, "cannot delete a blob segment");
                }
            }
        }
        r
    };
    let mut deliveries = Vec::with_capacity(sub.deliveries.len());
    for d in sub.deliveries {
        let record = DeliveryRecord {
            submission_id: sub.id,
            endpoint: d.endpoint.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            budget_base: 0,
            // Due from now: the work queue is ordered by the time an attempt became due, so a
            // retry that came due earlier goes before a delivery taken in later.
            not_before: now,
            last_error: None,
            updated_at: now,
            has_rendition: d.rendition.is_some(),
        };
        deliveries.push(PreparedDelivery {
            id: d.id,
            endpoint: d.endpoint,
            record: serde_json::to_vec(&record).map_err(corrupt)?,
            rendition: match d.rendition {
                Some(r) => Some(store(&encode_rendition(&r.content_type, &r.body))?),
                None => None,
            },
        });
    }
    let record = SubmissionRecord {
        partner: sub.partner,
        received_at: sub.received_at,
        content_type: sub.content_type,
        meta: sub.meta,
        message_id: sub.message_id,
        route: sub.route,
        receipt: receipt.clone(),
    };
    Ok(PreparedIntake {
        id: sub.id,
        dedup,
        receipt,
        record: serde_json::to_vec(&record).map_err(corrupt)?,
        payload: store(&sub.original)?,
        deliveries,
        events: serialized,
        last_hash,
        due_at: now,
    })
}

fn event(at: Millis, kind: &str, detail: String) -> EventRecord {
    EventRecord { at, kind: kind.to_owned(), delivery_id: None, attempt: None, detail, hash: String::new() }
}
