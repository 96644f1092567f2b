//! Unit tests of the pure parts: the fold, the record framing, the wait ladder and the
//! work-message headers.

use bytes::Bytes;
use uuid::Uuid;

use super::index::{Applied, Claim, Index, ReplaySource};
use super::record::{
    self, Envelope, OutcomeRecord, PauseRecord, Record, RecordedOutcome, ReplayVoidRecord, ReplayedRecord,
    SubmittedRecord,
};
use super::work::{LADDER_MS, WorkMessage, is_pack, pack, rung_for, unpack_pack};
use crate::store::{DeliveryId, DeliveryState, Handover, ReceiptDelivery, SubmissionId, SubmissionState, dedup_digest};

fn claim(keys: &[&str]) -> SubmittedRecord {
    SubmittedRecord {
        id: SubmissionId::new(),
        partner: "p".into(),
        dedup_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        received_at: 1_000,
        content_type: "application/xml".into(),
        meta: serde_json::value::to_raw_value(&serde_json::json!({})).expect("JSON"),
        message_id: None,
        route: "r".into(),
        deliveries: vec![ReceiptDelivery { id: DeliveryId::new(), endpoint: "a".into() }],
        notes: vec![],
        size: 10,
    }
}

/// A delivered outcome as versions before 2026-11-30 wrote it (an HTTP status only) still folds,
/// with the same words in the log as a new one.
#[test]
fn an_earlier_delivered_record_still_folds() {
    let s = claim(&["k"]);
    let mut index = Index::default();
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    let old = format!(
        r#"{{"rid":"{}","at":2,"record":{{"type":"outcome","submission_id":"{}","delivery_id":"{}","attempt":1,"generation":0,"outcome":{{"result":"delivered","status":200}}}}}}"#,
        Uuid::now_v7(),
        s.id,
        s.deliveries[0].id
    );
    let (envelope, payload) = super::record::decode(old.as_bytes()).expect("an earlier record decodes");
    index.apply(envelope, payload);
    let view = index.submission(s.id).expect("kept");
    assert_eq!(view.deliveries[0].state, DeliveryState::Delivered);
    let attempt = view.events.iter().find(|e| e.kind == "attempt").map(|e| e.detail.clone());
    let endpoint = &s.deliveries[0].endpoint;
    assert_eq!(attempt, Some(format!("`{endpoint}` answered HTTP 200")));
}

fn env(at: u64, record: Record) -> Envelope {
    Envelope { rid: Uuid::now_v7(), at, record }
}

fn outcome(s: &SubmittedRecord, attempt: u32, generation: u32, outcome: RecordedOutcome) -> Record {
    Record::Outcome(OutcomeRecord {
        submission_id: s.id,
        delivery_id: s.deliveries[0].id,
        attempt,
        generation,
        outcome,
    })
}

fn dead(error: &str) -> RecordedOutcome {
    RecordedOutcome::Dead { error: error.into(), content_type: "application/xml".into(), message_id: None }
}

fn replayed(s: &SubmittedRecord, generation: u32) -> Record {
    Record::Replayed(ReplayedRecord {
        submission_id: s.id,
        delivery_id: s.deliveries[0].id,
        generation,
        actor: "op".into(),
        reason: "fixed".into(),
        replay_id: None,
    })
}

/// A replay claim (the current form), with its replay id.
fn claimed(s: &SubmittedRecord, generation: u32, replay_id: Uuid) -> Record {
    let Record::Replayed(r) = replayed(s, generation) else { unreachable!("replayed() builds a Replayed") };
    Record::Replayed(ReplayedRecord { replay_id: Some(replay_id), ..r })
}

fn replayed_events(index: &Index, s: &SubmittedRecord) -> usize {
    index.submission(s.id).expect("known").events.iter().filter(|e| e.kind == "replayed").count()
}

fn state(index: &Index, s: &SubmittedRecord) -> Option<DeliveryState> {
    index.delivery_state(s.deliveries[0].id).map(|(state, _)| state)
}

#[test]
fn the_first_claim_of_a_key_in_stream_order_wins() {
    let mut index = Index::default();
    let first = claim(&["k1"]);
    let second = claim(&["k2", "k1"]);
    assert_eq!(index.apply(env(1, Record::Submitted(first.clone())), Bytes::new()), Applied::Accepted);
    let Applied::Duplicate(receipt) = index.apply(env(2, Record::Submitted(second.clone())), Bytes::new()) else {
        panic!("the second claim of k1 was not refused");
    };
    assert_eq!(receipt.submission_id, first.id);
    assert_eq!(receipt.deliveries, first.deliveries);
    assert!(index.submission(second.id).is_none(), "the losing claim became a submission");
    assert_eq!(index.claim(second.id), Claim::Lost);
    assert_eq!(index.claim(first.id), Claim::Won);
    assert_eq!(index.claim(SubmissionId::new()), Claim::Unknown);
    assert!(index.holder_of(&[dedup_digest("k2")]).is_none(), "the losing claim took its other key");
    assert_eq!(index.counts().submissions, 1);
}

#[test]
fn a_claim_applied_twice_is_one_submission() {
    let mut index = Index::default();
    let s = claim(&["k"]);
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    assert_eq!(index.apply(env(2, Record::Submitted(s.clone())), Bytes::new()), Applied::Accepted);
    let view = index.submission(s.id).expect("known");
    assert_eq!(view.events.len(), 2, "events doubled: {:?}", view.events);
    assert_eq!(index.counts().pending, 1);
    // Also after an attempt: the claim again does not start the submission over.
    index.apply(env(3, outcome(&s, 1, 0, RecordedOutcome::Retry { not_before: 9, error: "503".into() })), Bytes::new());
    assert_eq!(index.apply(env(4, Record::Submitted(s.clone())), Bytes::new()), Applied::Accepted);
    let view = index.submission(s.id).expect("known");
    assert_eq!(view.events.len(), 4, "the attempt's events are gone: {:?}", view.events);
    assert_eq!(view.deliveries[0].attempts, 1);
}

#[test]
fn queued_is_tracked_for_the_duplicate_repair() {
    let mut index = Index::default();
    let s = claim(&["k"]);
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    assert_eq!(index.holder_of(&[dedup_digest("k")]).map(|(_, q)| q), Some(false));
    index.apply(env(2, Record::Queued { submission_ids: vec![s.id] }), Bytes::new());
    assert!(index.is_queued(s.id));
}

#[test]
fn dead_keeps_the_bytes_for_replay_and_delivered_drops_them() {
    let mut index = Index::default();
    let s = claim(&[]);
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    let payload = Bytes::from_static(b"<x>\0binary</x>");
    index.apply(env(2, outcome(&s, 3, 0, dead("HTTP 400"))), payload.clone());
    let ReplaySource::Dead { copy, attempts, generation, .. } = index.replay_source(s.deliveries[0].id) else {
        panic!("dead delivery is not replayable");
    };
    assert_eq!((copy.payload, attempts, generation), (payload, 3, 0));
    index.apply(env(3, replayed(&s, 1)), Bytes::new());
    assert_eq!(state(&index, &s), Some(DeliveryState::Pending));
    assert!(matches!(index.replay_source(s.deliveries[0].id), ReplaySource::NotDead(DeliveryState::Pending)));
    index.apply(
        env(4, outcome(&s, 4, 1, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
        Bytes::new(),
    );
    assert_eq!(index.submission(s.id).map(|v| v.state), Some(SubmissionState::Delivered));
}

#[test]
fn the_first_replay_claim_of_a_generation_wins_and_the_others_work_is_void() {
    let mut index = Index::default();
    let s = claimed_dead(&mut index);
    let d = s.deliveries[0].id;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(index.replay_claim(d, 1, first), Claim::Unknown, "a claim not yet folded is known");
    assert_eq!(index.apply(env(3, claimed(&s, 1, first)), Bytes::new()), Applied::ReplayWon);
    assert_eq!(
        index.apply(env(4, claimed(&s, 1, second)), Bytes::new()),
        Applied::ReplayLost(Some(DeliveryState::Pending))
    );
    assert_eq!(index.replay_claim(d, 1, first), Claim::Won);
    assert_eq!(index.replay_claim(d, 1, second), Claim::Lost);
    assert_eq!(state(&index, &s), Some(DeliveryState::Pending));
    assert_eq!(replayed_events(&index, &s), 1, "the losing claim was logged as a replay");
    // Dead again in generation 1: a stale claim of generation 1 loses, one of generation 2 wins.
    index.apply(env(5, outcome(&s, 2, 1, dead("HTTP 400 again"))), Bytes::from_static(b"x"));
    let (stale, next) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        index.apply(env(6, claimed(&s, 1, stale)), Bytes::new()),
        Applied::ReplayLost(Some(DeliveryState::Dead))
    );
    assert_eq!(index.apply(env(7, claimed(&s, 2, next)), Bytes::new()), Applied::ReplayWon);
    assert_eq!((index.replay_claim(d, 1, stale), index.replay_claim(d, 2, next)), (Claim::Lost, Claim::Won));
    assert_eq!(replayed_events(&index, &s), 2);
}

#[test]
fn a_replay_tombstone_voids_a_later_claim_and_spares_an_earlier_one() {
    let void = |s: &SubmittedRecord, generation, replay_id| {
        Record::ReplayVoid(ReplayVoidRecord {
            submission_id: s.id,
            delivery_id: s.deliveries[0].id,
            generation,
            replay_id,
        })
    };
    // Tombstone first: the claim that comes later loses, the delivery stays dead.
    let mut index = Index::default();
    let s = claimed_dead(&mut index);
    let late = Uuid::now_v7();
    index.apply(env(3, void(&s, 1, late)), Bytes::new());
    assert_eq!(index.replay_claim(s.deliveries[0].id, 1, late), Claim::Lost);
    assert_eq!(index.apply(env(4, claimed(&s, 1, late)), Bytes::new()), Applied::ReplayLost(Some(DeliveryState::Dead)));
    assert_eq!(state(&index, &s), Some(DeliveryState::Dead));
    assert!(matches!(index.replay_source(s.deliveries[0].id), ReplaySource::Dead { generation: 0, .. }));
    // Claim first: the tombstone changes nothing, the work is real.
    let mut index = Index::default();
    let s = claimed_dead(&mut index);
    let early = Uuid::now_v7();
    index.apply(env(3, claimed(&s, 1, early)), Bytes::new());
    index.apply(env(4, void(&s, 1, early)), Bytes::new());
    assert_eq!(index.replay_claim(s.deliveries[0].id, 1, early), Claim::Won);
    assert_eq!(state(&index, &s), Some(DeliveryState::Pending));
}

/// A submission whose only delivery went dead in generation 0.
fn claimed_dead(index: &mut Index) -> SubmittedRecord {
    let s = claim(&[]);
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    index.apply(env(2, outcome(&s, 1, 0, dead("HTTP 400"))), Bytes::from_static(b"x"));
    s
}

// Records of earlier versions (replays without a claim id): a replay's attempt can reach the
// stream before the replay record (the work message is
// published first): the replay record must not undo that outcome.
#[test]
fn a_replay_record_after_its_own_outcome_does_not_reopen_the_delivery() {
    for (late, want) in [
        (dead("HTTP 400 again"), DeliveryState::Dead),
        (RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None }, DeliveryState::Delivered),
    ] {
        let mut index = Index::default();
        let s = claim(&[]);
        index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
        index.apply(env(2, outcome(&s, 1, 0, dead("HTTP 400"))), Bytes::from_static(b"x"));
        index.apply(env(3, outcome(&s, 2, 1, late)), Bytes::from_static(b"x"));
        index.apply(env(4, replayed(&s, 1)), Bytes::new());
        assert_eq!(state(&index, &s), Some(want));
    }
}

#[test]
fn a_late_copy_of_an_older_generation_changes_no_state() {
    let mut index = Index::default();
    let s = claim(&[]);
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    index.apply(env(2, outcome(&s, 1, 0, dead("HTTP 400"))), Bytes::from_static(b"x"));
    index.apply(env(3, replayed(&s, 1)), Bytes::new());
    index.apply(
        env(4, outcome(&s, 2, 1, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
        Bytes::new(),
    );
    let retry = RecordedOutcome::Retry { not_before: 9_000, error: "late".into() };
    index.apply(env(5, outcome(&s, 2, 0, retry)), Bytes::new());
    assert_eq!(state(&index, &s), Some(DeliveryState::Delivered));
    let kinds: Vec<String> = index.submission(s.id).expect("known").events.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.last().map(String::as_str), Some("retry_scheduled"), "the late outcome is still logged");
}

/// Two copies of one delivery (a redelivery after a reconnect): one is delivered, the other's
/// attempt fails afterwards and its retry or dead outcome is folded last. Lease drops every copy
/// of a delivered delivery, so that outcome must not reopen it (pending with no work anywhere).
#[test]
fn a_failed_attempt_of_another_copy_after_delivery_does_not_reopen_it() {
    for late in [RecordedOutcome::Retry { not_before: 9_000, error: "HTTP 503".into() }, dead("HTTP 400")] {
        let mut index = Index::default();
        let s = claim(&[]);
        index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
        let delivered = RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None };
        index.apply(env(2, outcome(&s, 2, 0, delivered)), Bytes::new());
        index.apply(env(3, outcome(&s, 1, 0, late.clone())), Bytes::from_static(b"x"));
        assert_eq!(state(&index, &s), Some(DeliveryState::Delivered), "reopened by {late:?}");
        let view = index.submission(s.id).expect("known");
        assert_eq!(view.deliveries[0].state, DeliveryState::Delivered);
        assert_eq!(view.events.len(), 6, "the late attempt and what followed it are still logged: {:?}", view.events);
    }
}

#[test]
fn every_node_folds_the_same_log_and_hashes() {
    let s = claim(&["k"]);
    let records = vec![
        env(1, Record::Submitted(s.clone())),
        env(2, outcome(&s, 1, 0, RecordedOutcome::Retry { not_before: 5, error: "503".into() })),
        env(3, outcome(&s, 2, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
    ];
    let fold = || {
        let mut index = Index::default();
        for r in records.clone() {
            index.apply(r, Bytes::new());
        }
        index.submission(s.id).expect("known").events
    };
    let (a, b) = (fold(), fold());
    assert_eq!(a, b);
    let kinds: Vec<&str> = a.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["received", "routed", "attempt", "retry_scheduled", "attempt", "delivered"]);
    let seqs: Vec<u32> = a.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5], "numbered from 0, as the embedded store numbers");
    assert_eq!(crate::store::verify_event_chain(&a), Ok(()));
    // Changing one detail changes that hash and every later one.
    let mut other = records.clone();
    other[1] = env(2, outcome(&s, 1, 0, RecordedOutcome::Retry { not_before: 5, error: "502".into() }));
    let mut index = Index::default();
    for r in other {
        index.apply(r, Bytes::new());
    }
    let c = index.submission(s.id).expect("known").events;
    assert_eq!(a[1].hash, c[1].hash);
    assert!(a[2..].iter().zip(&c[2..]).all(|(x, y)| x.hash != y.hash), "the chain did not carry the change");
}

#[test]
fn records_frame_binary_payloads() {
    let s = claim(&[]);
    let e = env(7, outcome(&s, 1, 0, dead("bad")));
    let payload = b"\0\x01binary\0with NULs".to_vec();
    let (back, got) = record::decode(&record::encode(&e, Some(&payload)).expect("encode")).expect("decode");
    assert_eq!((back.rid, back.at, got.to_vec()), (e.rid, 7, payload));
    let (_, none) = record::decode(&record::encode(&e, None).expect("encode")).expect("decode");
    assert!(none.is_empty());
}

#[test]
fn the_ladder_picks_the_longest_rung_not_past_the_due_time() {
    assert_eq!(rung_for(0), LADDER_MS[0]);
    assert_eq!(rung_for(150), 200);
    assert_eq!(rung_for(1_500), 1_000);
    assert_eq!(rung_for(299_999), 120_000);
    assert_eq!(rung_for(u64::MAX), 3_600_000);
}

#[test]
fn work_headers_round_trip() {
    let m = WorkMessage {
        delivery_id: DeliveryId::new(),
        submission_id: SubmissionId::new(),
        message_id: Some("6f1c…".into()),
        content_type: "application/json".into(),
        attempts: 4,
        budget_base: 2,
        generation: 1,
        not_before: 1_700_000_000_123,
        queued_at: 1_700_000_000_000,
        replay_id: Some(Uuid::now_v7()),
    };
    let (back, redelivered) = WorkMessage::from_properties(&m.properties().expect("properties")).expect("read");
    assert_eq!((back, redelivered), (m, 0));
}

// Messages queued by an earlier version carry one header per field; they are still read.
#[test]
fn work_headers_of_earlier_versions_are_read() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let (delivery_id, submission_id) = (DeliveryId::new(), SubmissionId::new());
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut h = FieldTable::default();
    h.insert("lotse-submission-id".into(), text(&submission_id.to_string()));
    h.insert("lotse-message-id".into(), text("m 1"));
    h.insert("lotse-attempts".into(), AMQPValue::LongLongInt(3));
    h.insert("lotse-generation".into(), AMQPValue::LongLongInt(1));
    h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
    let p = lapin::BasicProperties::default().with_message_id(delivery_id.to_string().into()).with_headers(h);
    let (m, redelivered) = WorkMessage::from_properties(&p).expect("read");
    assert_eq!((m.delivery_id, m.submission_id, m.message_id.as_deref()), (delivery_id, submission_id, Some("m 1")));
    assert_eq!((m.attempts, m.generation, m.replay_id, redelivered), (3, 1, None, 2));
}

#[test]
fn packed_work_headers_keep_message_ids_with_spaces_and_refuse_garbage() {
    for message_id in [None, Some(String::new()), Some("id with  spaces and ünïcode".to_owned())] {
        let m = WorkMessage {
            delivery_id: DeliveryId::new(),
            submission_id: SubmissionId::new(),
            message_id,
            content_type: "application/xml".into(),
            attempts: 0,
            budget_base: 0,
            generation: 0,
            not_before: 0,
            queued_at: 5,
            replay_id: None,
        };
        let (back, _) = WorkMessage::from_properties(&m.properties().expect("properties")).expect("read");
        assert_eq!(back, m);
    }
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut h = FieldTable::default();
    h.insert("lotse".into(), AMQPValue::LongString(LongString::from(b"1 not-a-uuid 0 0 0 0 0 -".to_vec())));
    let p = lapin::BasicProperties::default().with_message_id(DeliveryId::new().to_string().into()).with_headers(h);
    assert!(WorkMessage::from_properties(&p).is_err(), "a garbled header was read");
}

// The decoder reads the tag first and the fields straight into the variant: every variant
// comes back, and a record whose tag is not first is refused, not misread.
#[test]
fn every_record_variant_round_trips_through_the_decoder() {
    let s = claim(&["k"]);
    let records = vec![
        Record::Submitted(s.clone()),
        Record::Queued { submission_ids: vec![s.id] },
        outcome(&s, 1, 0, RecordedOutcome::Retry { not_before: 9, error: "503".into() }),
        claimed(&s, 1, Uuid::now_v7()),
        replayed(&s, 1),
        Record::ReplayVoid(ReplayVoidRecord {
            submission_id: s.id,
            delivery_id: s.deliveries[0].id,
            generation: 1,
            replay_id: Uuid::now_v7(),
        }),
        Record::Mark,
        Record::Expire { delivered: Some(5), dead: None, limit: 1_000_000 },
        pause("a", true, Some("receiver down")),
        pause("a", false, None),
    ];
    for r in records {
        let e = env(3, r);
        let encoded = record::encode(&e, None).expect("encode");
        let (back, _) = record::decode(&encoded).expect("decode");
        // Same JSON again: nothing lost or changed on the way.
        assert_eq!(record::encode(&back, None).expect("encode"), encoded);
    }
    // The fold's shortcut for its own records reads the rid without decoding.
    let e = env(4, Record::Mark);
    assert_eq!(record::peek_rid(&record::encode(&e, None).expect("encode")), Some(e.rid));
    assert_eq!(record::peek_rid(br#"{"at":1,"rid":"0190a3c2-1234-7abc-9def-0123456789ab"}"#), None);
    assert_eq!(record::peek_rid(br#"{"rid":"0190a3c2-1234-7abc-9def-0123456789a"}"#), None);
    let untagged_first =
        br#"{"rid":"0190a3c2-1234-7abc-9def-0123456789ab","at":1,"record":{"submission_ids":[],"type":"queued"}}"#;
    assert!(record::decode(untagged_first).is_err());
}

fn pause(endpoint: &str, paused: bool, reason: Option<&str>) -> Record {
    Record::Pause(PauseRecord {
        endpoint: endpoint.into(),
        paused,
        actor: format!("actor-{}", u8::from(paused)),
        reason: reason.map(str::to_owned),
    })
}

// Every node folds the same pauses: the last record of an endpoint decides, a later pause shows
// its own actor and time, a resume of an endpoint that is not paused changes nothing, and
// claims and outcomes leave pauses alone.
#[test]
fn the_last_pause_record_of_an_endpoint_decides_on_every_node() {
    let s = claim(&["k"]);
    let records = vec![
        env(1, pause("b", false, None)),
        env(2, pause("a", true, None)),
        env(3, Record::Submitted(s.clone())),
        env(4, pause("c", true, None)),
        env(5, pause("a", true, Some("again"))),
        env(6, outcome(&s, 1, 0, dead("gone"))),
        env(7, pause("c", false, None)),
    ];
    let mut nodes = [Index::default(), Index::default()];
    for node in &mut nodes {
        for r in records.clone() {
            let is_pause = matches!(r.record, Record::Pause(_));
            let applied = node.apply(r, Bytes::new());
            assert!(!is_pause || applied == Applied::Done, "a pause folded as {applied:?}");
        }
    }
    for node in &nodes {
        let pauses = node.pauses();
        assert_eq!(pauses.keys().collect::<Vec<_>>(), ["a"], "{pauses:?}");
        let a = &pauses["a"];
        assert_eq!((a.at, a.actor.as_str(), a.reason.as_deref()), (5, "actor-1", Some("again")));
    }
}

#[test]
fn a_stream_message_carries_several_records_in_order() {
    let s = claim(&["k"]);
    let a = env(1, Record::Submitted(s.clone()));
    let b = env(2, outcome(&s, 1, 0, dead("gone")));
    let c = env(3, Record::Queued { submission_ids: vec![s.id] });
    let frames = vec![
        record::encode(&a, None).expect("a"),
        record::encode(&b, Some(b"\0payload")).expect("b"),
        record::encode(&c, None).expect("c"),
    ];
    let back = record::unframe(&record::frame(&frames)).expect("unframe");
    let rids: Vec<Uuid> = back.iter().map(|(e, _)| e.rid).collect();
    assert_eq!(rids, [a.rid, b.rid, c.rid]);
    assert_eq!(&back[1].1[..], b"\0payload");
    let mut cut = record::frame(&frames);
    cut.truncate(cut.len() - 3);
    assert!(record::unframe(&cut).is_err(), "a truncated message was read");
}

/// An expiry record deletes, where it stands in the stream, the submissions whose every
/// delivery is final and past its cutoff, with their dedup keys; the same records give the same
/// index on every node. A replay claim for a deleted delivery loses.
#[test]
fn an_expiry_deletes_finished_submissions_where_it_stands_in_the_stream() {
    let (delivered, dead_one, pending) = (claim(&["d"]), claim(&["x"]), claim(&["p"]));
    // Record times after the ids were made, as in a real stream (the fold skips deliveries made
    // after a cutoff).
    let t = crate::store::now_millis() + 1_000;
    let records = vec![
        env(t + 1, Record::Submitted(delivered.clone())),
        env(t + 2, Record::Submitted(dead_one.clone())),
        env(t + 3, Record::Submitted(pending.clone())),
        env(
            t + 10,
            outcome(&delivered, 1, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None }),
        ),
        env(t + 11, outcome(&dead_one, 1, 0, dead("HTTP 400"))),
        // Delivered ones changed at or before 10 go; dead ones have no cutoff.
        env(t + 20, Record::Expire { delivered: Some(t + 10), dead: None, limit: 1_000_000 }),
    ];
    let mut nodes = [Index::default(), Index::default()];
    for node in &mut nodes {
        let mut applied = Vec::new();
        for r in records.clone() {
            applied.push(node.apply(r, Bytes::new()));
        }
        assert_eq!(applied.last(), Some(&Applied::Expired(1)));
        assert!(node.submission(delivered.id).is_none(), "the delivered submission is still there");
        assert_eq!(state(node, &delivered), None, "its delivery is still there");
        assert_eq!(node.holder_of_key(&dedup_digest("d")), None, "its dedup key is still held");
        assert_eq!(node.holder_of_key(&dedup_digest("x")), Some(dead_one.id));
        assert_eq!(state(node, &pending), Some(DeliveryState::Pending));
        // A new claim of the deleted key is a new submission.
        let resent = claim(&["d"]);
        assert_eq!(node.apply(env(t + 21, Record::Submitted(resent)), Bytes::new()), Applied::Accepted);
        // A cutoff before the dead delivery's change keeps it; one after deletes it, and a replay
        // claim that comes after that loses.
        assert_eq!(
            node.apply(
                env(t + 22, Record::Expire { delivered: None, dead: Some(t + 10), limit: 1_000_000 }),
                Bytes::new()
            ),
            Applied::Expired(0)
        );
        assert_eq!(
            node.apply(
                env(t + 23, Record::Expire { delivered: None, dead: Some(t + 11), limit: 1_000_000 }),
                Bytes::new()
            ),
            Applied::Expired(1)
        );
        assert_eq!(
            node.apply(env(t + 24, claimed(&dead_one, 1, Uuid::now_v7())), Bytes::new()),
            Applied::ReplayLost(None)
        );
        assert_eq!(node.counts().submissions, 2, "the pending one and the resend");
    }
    let [a, b] = &nodes;
    assert_eq!(a.counts(), b.counts());
}

/// A limited expiry deletes the submissions of the smallest ids first, on every node alike.
#[test]
fn an_expiry_deletes_at_most_its_limit_smallest_ids_first() {
    let t = crate::store::now_millis() + 1_000;
    let mut subs = [claim(&["a"]), claim(&["b"]), claim(&["c"])];
    subs.sort_by_key(|s| s.id);
    let mut index = Index::default();
    for s in &subs {
        index.apply(env(t, Record::Submitted(s.clone())), Bytes::new());
        index.apply(
            env(t + 1, outcome(s, 1, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
            Bytes::new(),
        );
    }
    let expire = |limit| env(t + 2, Record::Expire { delivered: Some(t + 1), dead: None, limit });
    assert_eq!(index.apply(expire(2), Bytes::new()), Applied::Expired(2));
    assert!(index.submission(subs[0].id).is_none() && index.submission(subs[1].id).is_none());
    assert!(index.submission(subs[2].id).is_some(), "more than the limit went");
    assert_eq!(index.apply(expire(2), Bytes::new()), Applied::Expired(1));
    assert_eq!(index.counts().submissions, 0);
}

/// How long folding an `Expire` record holds the index (figures in `docs/rabbitmq.md`).
#[test]
#[ignore = "a timing, not a test: cargo test --release -p hub --lib expiry_timing -- --ignored --nocapture"]
fn expiry_timing() {
    let t = crate::store::now_millis() + 1_000;
    for n in [100_000usize, 200_000] {
        let mut index = Index::default();
        let subs: Vec<SubmittedRecord> = (0..n).map(|i| claim(&[&format!("k{i}")])).collect();
        for s in &subs {
            index.apply(env(t, Record::Submitted(s.clone())), Bytes::new());
            index.apply(
                env(
                    t + 1,
                    outcome(s, 1, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None }),
                ),
                Bytes::new(),
            );
        }
        let started = std::time::Instant::now();
        let r =
            index.apply(env(t + 2, Record::Expire { delivered: Some(t), dead: None, limit: 1_000_000 }), Bytes::new());
        println!("{n}: nothing due: {:?} ({r:?})", started.elapsed());
        // Half of them due: every other one delivered later.
        let mut index = Index::default();
        for (i, s) in subs.iter().enumerate() {
            index.apply(env(t, Record::Submitted(s.clone())), Bytes::new());
            let at = if i % 2 == 0 { t + 1 } else { t + 5 };
            index.apply(
                env(at, outcome(s, 1, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
                Bytes::new(),
            );
        }
        let started = std::time::Instant::now();
        let r = index
            .apply(env(t + 6, Record::Expire { delivered: Some(t + 1), dead: None, limit: 1_000_000 }), Bytes::new());
        println!("{n}: half due: {:?} ({r:?})", started.elapsed());
        let started = std::time::Instant::now();
        let r =
            index.apply(env(t + 7, Record::Expire { delivered: Some(t + 5), dead: None, limit: 10_000 }), Bytes::new());
        println!("{n}: 10,000 of the rest: {:?} ({r:?})", started.elapsed());
    }
}

/// One event of a log as compared: kind, time, delivery, attempt, detail.
type LogLine<'a> = (&'a str, String, Option<DeliveryId>, Option<u32>, String);

/// The whole log of a submission through every kind of record, field by field: what the fold
/// keeps is only the facts, and the log read back must say exactly this (the words and order
/// the embedded store writes), whatever the index keeps inside.
#[test]
fn the_log_reads_back_every_event_in_order() {
    use crate::store::words;
    let mut s = claim(&["k"]);
    s.notes = vec!["schema: not validated".into()];
    s.message_id = Some("m-1".into());
    let d = s.deliveries[0].id;
    let mut index = Index::default();
    let replay = Uuid::now_v7();
    for r in [
        env(1_000, Record::Submitted(s.clone())),
        env(2_000, outcome(&s, 1, 0, RecordedOutcome::Retry { not_before: 7_000, error: "HTTP 503".into() })),
        env(8_000, outcome(&s, 2, 0, dead("HTTP 400"))),
        env(9_000, claimed(&s, 1, replay)),
        env(10_000, outcome(&s, 3, 1, RecordedOutcome::Delivered { via: Some(Handover::File), status: None })),
    ] {
        index.apply(r, Bytes::new());
    }
    let log = index.submission(s.id).expect("known").events;
    let endpoint = s.deliveries[0].endpoint.as_str();
    let at = super::index::rfc3339;
    let want: Vec<LogLine> = vec![
        ("received", at(1_000), None, None, words::received("p", 10, "application/xml", Some("m-1"))),
        ("routed", at(1_000), None, None, words::routed("r", [endpoint])),
        ("note", at(1_000), None, None, "schema: not validated".into()),
        ("attempt", at(2_000), Some(d), Some(1), "HTTP 503".into()),
        ("retry_scheduled", at(2_000), Some(d), Some(1), format!("next attempt at {}", at(7_000))),
        ("attempt", at(8_000), Some(d), Some(2), "HTTP 400".into()),
        ("dead", at(8_000), Some(d), Some(2), "HTTP 400".into()),
        ("replayed", at(9_000), Some(d), None, words::replayed("op", "fixed")),
        ("attempt", at(10_000), Some(d), Some(3), words::handed_over(endpoint, Handover::File)),
        ("delivered", at(10_000), Some(d), Some(3), words::delivered(endpoint)),
    ];
    let got: Vec<LogLine> =
        log.iter().map(|e| (e.kind.as_str(), e.at.clone(), e.delivery_id, e.attempt, e.detail.clone())).collect();
    assert_eq!(got, want);
    let seqs: Vec<u32> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<u32>>());
    assert_eq!(crate::store::verify_event_chain(&log), Ok(()));
}

/// Start-up waits for its mark as long as the fold advances, however long that takes, and
/// gives up only when the fold stands still for the stall bound.
#[tokio::test(start_paused = true)]
async fn start_up_waits_while_the_fold_advances_and_not_when_it_stalls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::shared::await_fold_progressing;

    let stall = Duration::from_secs(30);
    let offset = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = offset.clone();
    tokio::spawn(async move {
        // Ten times the stall bound of reading, advancing all along, then the mark.
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reader.fetch_add(1_000, Ordering::SeqCst);
        }
        let _ = tx.send(Ok(Applied::Accepted));
    });
    let started = tokio::time::Instant::now();
    let answer = await_fold_progressing(rx, || offset.load(Ordering::SeqCst), stall).await;
    assert!(matches!(answer, Ok(Applied::Accepted)), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_secs(300));

    let (_tx, rx) = tokio::sync::oneshot::channel();
    let started = tokio::time::Instant::now();
    let answer = await_fold_progressing(rx, || 7, stall).await;
    let Err(crate::store::StoreError::Unavailable(reason)) = answer else { panic!("{answer:?}") };
    assert!(reason.contains("did not advance") && reason.contains("offset 7"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(31));
}

/// The index saved by `snapshot::save` and read by `snapshot::load` answers exactly as before,
/// for every kind of state the fold keeps: a submission with its dedup key, a retried delivery
/// (its log and last error), a dead one with its copy (replayable with the same bytes), a
/// replay that won and one voided before its claim, a claim that lost, and a pause. The same
/// records applied after the load give the same answers as applied before the save.
#[test]
fn a_snapshot_reads_back_the_index_it_saved() {
    use super::snapshot;
    use crate::store::{DeliveryFilter, SubmissionView};

    let (kept, retried, dead_one, loser) = (claim(&["k:kept"]), claim(&[]), claim(&["k:dead"]), claim(&["k:kept"]));
    let won = Uuid::now_v7();
    let voided = Uuid::now_v7();
    let records = vec![
        Record::Submitted(kept.clone()),
        Record::Submitted(retried.clone()),
        Record::Submitted(dead_one.clone()),
        Record::Submitted(loser.clone()),
        Record::Queued { submission_ids: vec![kept.id] },
        outcome(&kept, 1, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None }),
        outcome(&retried, 1, 0, RecordedOutcome::Retry { not_before: 50, error: "HTTP 503".into() }),
        outcome(&retried, 2, 0, RecordedOutcome::Retry { not_before: 60, error: "HTTP 503".into() }),
        outcome(&dead_one, 1, 0, dead("HTTP 400")),
        claimed(&dead_one, 1, won),
        Record::ReplayVoid(ReplayVoidRecord {
            submission_id: dead_one.id,
            delivery_id: dead_one.deliveries[0].id,
            generation: 2,
            replay_id: voided,
        }),
        pause("a", true, Some("Wartung")),
    ];
    let mut index = Index::default();
    for (at, r) in records.into_iter().enumerate() {
        let payload = if matches!(&r, Record::Outcome(o) if matches!(o.outcome, RecordedOutcome::Dead { .. })) {
            Bytes::from_static(b"<antrag/>")
        } else {
            Bytes::new()
        };
        index.apply(env(at as u64 + 1, r), payload);
    }

    let ids = [kept.id, retried.id, dead_one.id, loser.id];
    let answers = |i: &Index| {
        let views: Vec<Option<SubmissionView>> = ids.iter().map(|id| i.submission(*id)).collect();
        let claims: Vec<Claim> = ids.iter().map(|id| i.claim(*id)).collect();
        let source = match i.replay_source(dead_one.deliveries[0].id) {
            ReplaySource::Dead { copy, .. } => Some(copy.payload),
            _ => None,
        };
        (
            views,
            claims,
            i.deliveries(&DeliveryFilter::default()),
            i.counts(),
            i.pauses().clone(),
            i.holder_of_key(&dedup_digest("k:kept")),
            i.holder_of_key(&dedup_digest("k:dead")),
            i.replay_claim(dead_one.deliveries[0].id, 1, won),
            i.replay_claim(dead_one.deliveries[0].id, 2, voided),
            i.is_queued(kept.id),
            source,
        )
    };
    let before = answers(&index);
    assert_eq!(before.1[3], Claim::Lost, "the loser lost");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = snapshot::path(dir.path(), "p");
    snapshot::save(&path, "p", &index, 42, 7).expect("saved");
    assert!(snapshot::load(&path, "other-prefix").is_none(), "another prefix's snapshot was used");
    let loaded = snapshot::load(&path, "p").expect("read back");
    assert_eq!((loaded.next_offset, loaded.last_digest), (42, 7));
    let mut again = loaded.index;
    assert_eq!(answers(&again), before);

    // The same later records fold the same on both.
    let later = [
        outcome(&retried, 3, 0, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None }),
        Record::Expire { delivered: Some(u64::MAX), dead: None, limit: 1 },
        pause("a", false, None),
    ];
    for (at, r) in later.into_iter().enumerate() {
        let at = 100 + at as u64;
        let (a, b) = (index.apply(env(at, r.clone()), Bytes::new()), again.apply(env(at, r), Bytes::new()));
        assert_eq!(a, b);
    }
    assert_eq!(answers(&again), answers(&index));
}

fn work_message(message_id: Option<&str>, content_type: &str, attempts: u32) -> WorkMessage {
    WorkMessage {
        delivery_id: DeliveryId::new(),
        submission_id: SubmissionId::new(),
        message_id: message_id.map(str::to_owned),
        content_type: content_type.into(),
        attempts,
        budget_base: 0,
        generation: 0,
        not_before: 0,
        queued_at: 7,
        replay_id: None,
    }
}

// A pack gives back every part as packed, payloads included (empty ones too), and refuses one
// that is cut short, of an unknown version, or empty: never a part misread.
#[test]
fn a_pack_round_trips_and_a_broken_one_is_refused() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let messages = [
        work_message(Some("id with\nnewline and spaces"), "application/xml", 0),
        work_message(None, "application/json; charset=utf-8", 3),
        work_message(Some(""), "text/plain", 1),
    ];
    let payloads: [&[u8]; 3] = [b"<a/>", b"", &[0xff; 5000]];
    let (body, props) = pack(messages.iter().zip(payloads));
    assert!(is_pack(&props) && !is_pack(&messages[0].properties().expect("properties")));
    let body = Bytes::from(body);
    let (parts, redelivered) = unpack_pack(&props, &body).expect("read");
    assert_eq!(redelivered, 0);
    assert_eq!(parts.len(), 3);
    for ((m, p), (message, payload)) in messages.iter().zip(payloads).zip(&parts) {
        assert_eq!((m, p), (message, &payload[..]));
    }
    for cut in [1, 4, 10, body.len() - 1] {
        assert!(unpack_pack(&props, &body.slice(..cut)).is_err(), "a pack cut at {cut} was read");
    }
    assert!(unpack_pack(&props, &Bytes::new()).is_err(), "an empty pack was read");
    let mut h = FieldTable::default();
    h.insert("lotse-pack".into(), AMQPValue::LongString(LongString::from(b"2".to_vec())));
    h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
    let later = lapin::BasicProperties::default().with_headers(h.clone());
    assert!(unpack_pack(&later, &body).is_err(), "a pack of a later version was read");
    h.insert("lotse-pack".into(), AMQPValue::LongString(LongString::from(b"1".to_vec())));
    let again = lapin::BasicProperties::default().with_headers(h);
    assert_eq!(unpack_pack(&again, &body).expect("read").1, 2, "the broker's redelivery count");
}

// A copy of a delivery is outrun once the stream recorded a later attempt of it in its
// generation, its delivery, or a replay: the copy that carried the last recorded attempt (the
// retry's, published before the record) is not.
#[test]
fn a_copy_behind_the_recorded_attempts_is_outrun() {
    let mut index = Index::default();
    let s = claim(&[]);
    let id = s.deliveries[0].id;
    index.apply(env(1, Record::Submitted(s.clone())), Bytes::new());
    assert!(!index.outrun(id, 0, 0), "the first copy, nothing recorded");
    let retry = RecordedOutcome::Retry { not_before: 9, error: "503".into() };
    index.apply(env(2, outcome(&s, 2, 0, retry)), Bytes::new());
    assert!(index.outrun(id, 0, 0) && index.outrun(id, 0, 1), "a copy from before the retry");
    assert!(!index.outrun(id, 0, 2), "the retry's own copy");
    index.apply(env(3, outcome(&s, 3, 0, dead("HTTP 400"))), Bytes::from_static(b"x"));
    assert!(index.outrun(id, 0, 2), "the retry's copy after the dead letter");
    index.apply(env(4, claimed(&s, 1, Uuid::now_v7())), Bytes::new());
    assert!(index.outrun(id, 0, 3), "a copy of the generation before the replay");
    assert!(!index.outrun(id, 1, 3), "the replay's copy");
    index.apply(
        env(5, outcome(&s, 4, 1, RecordedOutcome::Delivered { via: Some(Handover::Http(200)), status: None })),
        Bytes::new(),
    );
    assert!(index.outrun(id, 1, 3) && index.outrun(id, 1, 4), "every copy of a delivered generation");
    assert!(!index.outrun(DeliveryId::new(), 0, 0), "a delivery the index does not know");
}
