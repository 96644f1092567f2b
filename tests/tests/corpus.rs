//! Every valid corpus message with an XÖV G2G header (XBau 2.6, XBeteiligung 1.2, XWasser 1.0,
//! xdomea 4.0) through a real hub: routed by its reader key and arriving byte-identical.
//!
//! Skipped with a printed reason when `../shared/corpus` is absent; a failure under `CI=true`.

use std::collections::BTreeMap;
use std::time::Duration;

use hub::receiver::{ReceiverOptions, spawn};
use sha2::{Digest, Sha256};
use tests::corpus::{g2g_messages, require_corpus, scan_header};
use tests::{Api, HubDir, config, lotse_bin};

/// MANIFEST.md: XBau 9 + XBeteiligung 6 + XWasser 13 (of 15) + xdomea 4.0 1.
const EXPECTED_FILES: usize = 29;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_g2g_message_is_routed_by_reader_and_arrives_byte_identical() {
    let Some(corpus) = require_corpus("every_valid_g2g_message_is_routed_by_reader_and_arrives_byte_identical") else {
        return;
    };
    let files = g2g_messages(&corpus).expect("corpus listing");
    assert_eq!(files.len(), EXPECTED_FILES, "the corpus changed: {files:#?}");

    // Routes from an independent reading of each file: one endpoint per distinct reader key; a
    // message whose header names no reader key (empty `kennung`, or xdomea 4.0's
    // `NameInstitution`) is routed by namespace and root instead. Routes set `accept_warnings`:
    // the corpus is schema-valid but has known header traps (XOEV_NOTES.md §3, e.g.
    // `example402FromCockpit.xml`: root says 0402, header says 0401), which must still travel.
    let mut messages = Vec::new();
    let mut readers: BTreeMap<String, usize> = BTreeMap::new();
    let mut roots: BTreeMap<(String, String), usize> = BTreeMap::new();
    for path in &files {
        let bytes = std::fs::read(path).expect("read corpus file");
        let keys = scan_header(&bytes).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(keys.message_uuid.is_some(), "{}: no nachrichtenUUID", path.display());
        let next = readers.len() + roots.len();
        let target = match &keys.reader {
            Some(reader) => format!("reader-{}", *readers.entry(reader.clone()).or_insert(next)),
            None => {
                let ns = keys.namespace.clone().expect("a namespaced root");
                format!("root-{}", *roots.entry((ns, keys.root.clone())).or_insert(next))
            }
        };
        messages.push((path.clone(), bytes, keys, target));
    }
    let with_reader = messages.iter().filter(|m| m.2.reader.is_some()).count();
    assert!(with_reader >= 20, "most corpus messages name a reader ({with_reader})");

    let out = tempfile::tempdir().expect("tempdir");
    let receiver = spawn(ReceiverOptions { out_dir: Some(out.path().to_owned()), ..ReceiverOptions::default() })
        .await
        .expect("receiver");
    let mut endpoints = Vec::new();
    let mut routes = String::new();
    for (reader, i) in &readers {
        let name = format!("reader-{i}");
        routes.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nreader = {reader:?}\naccept_warnings = true\nendpoints = [\"{name}\"]\n\n"
        ));
        endpoints.push((name.clone(), receiver.url(&format!("/{name}"))));
    }
    for ((ns, root), i) in &roots {
        let name = format!("root-{i}");
        routes.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nnamespace = {ns:?}\nroot = {root:?}\naccept_warnings = true\nendpoints = [\"{name}\"]\n\n"
        ));
        endpoints.push((name.clone(), receiver.url(&format!("/{name}"))));
    }
    // One partner per file: several corpus files share a nachrichtenUUID (the XBau statistics
    // samples all use cccccccc-...), and per partner the hub would rightly fold them into one.
    let mut partners = String::new();
    for i in 0..messages.len() {
        partners.push_str(&format!(
            "[[partners]]\nname = \"corpus-{i:02}\"\ntoken = \"corpus-token-{i:02}-0123456789\"\n\n"
        ));
    }
    let endpoint_refs: Vec<(&str, String)> = endpoints.iter().map(|(n, u)| (n.as_str(), u.clone())).collect();
    let mut dir = HubDir::new(lotse_bin!(), &config(&endpoint_refs, &routes, &partners)).expect("hub dir");
    let hub = dir.start().await.expect("lotse serve starts");
    let api = Api::new();

    let mut expected = Vec::new();
    for (i, (path, bytes, keys, target)) in messages.iter().enumerate() {
        let token = format!("Bearer corpus-token-{i:02}-0123456789");
        let answer =
            api.submit(&hub, bytes.clone(), "application/xml", &[("authorization", &token)]).await.expect("submit");
        assert_eq!(answer.status, 202, "{}: {}\nlog:\n{}", path.display(), answer.raw, hub.log_tail());
        let deliveries = answer.body["deliveries"].as_array().expect("deliveries");
        assert_eq!(deliveries.len(), 1, "{}", path.display());
        assert_eq!(deliveries[0]["endpoint"], target.as_str(), "{} (keys {keys:?})", path.display());
        let submission = answer.body["submission_id"].as_str().expect("submission_id").to_owned();
        expected.push((path, bytes, keys, target, submission));
    }

    assert!(
        receiver.wait_delivered(messages.len() as u64, Duration::from_secs(60)).await,
        "not all delivered: {:?}\nlog:\n{}",
        receiver.counts(),
        hub.log_tail()
    );
    let arrivals = receiver.arrivals();
    for (path, bytes, keys, target, submission) in expected {
        let got = arrivals
            .iter()
            .find(|a| a.accepted() && a.submission_id.as_deref() == Some(submission.as_str()))
            .unwrap_or_else(|| panic!("{}: no delivery", path.display()));
        assert_eq!(got.path, format!("/{target}"), "{}", path.display());
        assert_eq!(got.len, bytes.len(), "{}", path.display());
        assert_eq!(got.sha256, hex::encode(Sha256::digest(bytes)), "{}: bytes changed", path.display());
        assert_eq!(got.message_id, keys.message_uuid, "{}: Lotse-Message-Id", path.display());
        let id = got.delivery_id.clone().expect("delivery id");
        let stored = std::fs::read(out.path().join(target).join(format!("{id}.xml"))).expect("stored body");
        assert!(stored == *bytes, "{}: the stored body differs from the file", path.display());
    }
}
