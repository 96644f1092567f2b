//! Routes with `min_trust_level` take only a trust level verified against a `[trust]` key: a
//! forged (or merely unchecked) identificationReport no longer reaches them. Keys are generated
//! here (rcgen on aws-lc-rs) and reports signed RS256 by hand.

use std::path::Path;
use std::sync::Arc;

use hub::config::Config;
use hub::intake::{IntakeError, Media, Pipeline, Submission};
use hub::store::embedded::EmbeddedStore;
use rcgen::{KeyPair, PKCS_RSA_SHA256, SigningKey};
use serde_json::{Value, json};

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An RS256 identificationReport claiming `level`, signed by `key`.
fn report(key: &KeyPair, level: &str) -> String {
    let b64 = |v: Value| base64url(&serde_json::to_vec(&v).expect("json"));
    let signing_input = format!("{}.{}", b64(json!({"alg": "RS256", "typ": "JWT"})), b64(json!({"loa": level})));
    let signature = key.sign(signing_input.as_bytes()).expect("sign");
    format!("{signing_input}.{}", base64url(&signature))
}

fn metadata(report: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "$schema": "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json",
        "contentStructure": {"attachments": []},
        "publicServiceType": {"identifier": "urn:de:fim:leika:leistung:99001004000000"},
        "authenticationInformation": [{"type": "identificationReport", "version": "1.0.0", "content": report}],
    }))
    .expect("json")
}

/// A config file in `dir` with `trust` lines, one route requiring `substantial` for the service
/// and a catch-all route below it.
fn load(dir: &Path, trust: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "data"
{trust}
[[endpoints]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
[[routes]]
name = "needs-substantial"
service = "urn:de:fim:leika:leistung:99001004*"
min_trust_level = "substantial"
endpoints = ["a"]
"#
    );
    let path = dir.join("lotse.toml");
    std::fs::write(&path, text).expect("write config");
    Config::load(&path)
}

fn prepare(config: Config, body: Vec<u8>) -> Result<Vec<String>, IntakeError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let pipeline = Pipeline::new(Arc::new(config), store, None);
    let sub = Submission { partner: "p".into(), media: Media::Json, idempotency_key: None, body: body.into() };
    pipeline.prepare(sub).map(|s| s.notes)
}

#[test]
fn a_report_signed_by_a_trust_key_reaches_a_route_with_min_trust_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
    // Relative to the config file.
    std::fs::write(dir.path().join("issuer.pem"), issuer.public_key_pem()).expect("write key");
    let config = load(dir.path(), "[trust]\nkeys = [\"issuer.pem\"]").expect("config loads");
    assert_eq!(config.trust_keys.len(), 1);
    let notes = prepare(config, metadata(&report(&issuer, "substantial"))).expect("accepted");
    assert!(notes.iter().any(|n| n.contains("trust level `substantial` verified")), "{notes:?}");
    assert!(!notes.iter().any(|n| n.contains("NOT verified")), "{notes:?}");
}

#[test]
fn a_report_signed_by_another_key_is_refused_by_a_route_with_min_trust_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
    let forger = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
    std::fs::write(dir.path().join("issuer.pem"), issuer.public_key_pem()).expect("write key");
    let config = load(dir.path(), "[trust]\nkeys = [\"issuer.pem\"]").expect("config loads");
    match prepare(config, metadata(&report(&forger, "high"))) {
        Err(IntakeError::TrustLevel(m)) => assert!(m.contains("no verified level"), "{m}"),
        other => panic!("expected a trust level refusal, got {other:?}"),
    }
}

/// Before `[trust]`, a level read from any JWT satisfied `min_trust_level`: anyone could claim
/// `high`. Without trust keys a level is still read, but never satisfies a route.
#[test]
fn without_trust_keys_an_unverified_level_never_satisfies_min_trust_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let forger = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
    let config = load(dir.path(), "").expect("config loads");
    assert!(config.trust_keys.is_empty());
    match prepare(config, metadata(&report(&forger, "high"))) {
        Err(IntakeError::TrustLevel(m)) => assert!(m.contains("`high`, not verified"), "{m}"),
        other => panic!("expected a trust level refusal, got {other:?}"),
    }
}

#[test]
fn an_unreadable_or_private_trust_key_stops_the_config_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(dir.path(), "[trust]\nkeys = [\"missing.pem\"]").expect_err("missing key file");
    let text = format!("{err:#}");
    assert!(text.contains("cannot read trust key file") && text.contains("missing.pem"), "{text}");
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("key");
    std::fs::write(dir.path().join("private.pem"), key.serialize_pem()).expect("write key");
    let err = load(dir.path(), "[trust]\nkeys = [\"private.pem\"]").expect_err("private key");
    let text = format!("{err:#}");
    assert!(text.contains("private.pem") && text.contains("private key"), "{text}");
    let err = load(dir.path(), "[trust]\nkeyz = []").expect_err("unknown key");
    assert!(format!("{err:#}").contains("keyz"), "{err:#}");
}
