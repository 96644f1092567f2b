//! Intake of JSON bodies: a document with two readings (duplicate keys, serde_json's `RawValue`
//! key) is refused as malformed (HTTP 400) before it is routed.

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use hub::api::problem::Problem;
use hub::config::Config;
use hub::intake::{IntakeError, Media, Pipeline, Submission};
use hub::store::embedded::EmbeddedStore;

const MESSAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<t:antrag.0200 xmlns:t="urn:example:test" standard="Test" version="1.0" produkt="p" produkthersteller="h">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>0f0e0d0c-0000-4000-8000-000000000001</nachrichtenUUID>
      <nachrichtentyp listURI="urn:example:types" listVersionID="1"><code>0200</code></nachrichtentyp>
      <erstellungszeitpunkt>2026-11-29T10:00:00Z</erstellungszeitpunkt>
    </identifikation.nachricht>
    <leser><verzeichnisdienst listVersionID="1"><code>DVDV</code></verzeichnisdienst><kennung>bab:09162000</kennung></leser>
    <autor><verzeichnisdienst listVersionID="1"><code>DVDV</code></verzeichnisdienst><kennung>bab:1</kennung></autor>
  </nachrichtenkopf.g2g>
  <inhalt>text</inhalt>
</t:antrag.0200>"#;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "unused"
[[endpoints]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
format = "json"
[[routes]]
name = "r"
reader = "bab:09*"
endpoints = ["a"]
"#;

/// The message's JSON form as text, with `from` replaced by `to` (which must occur once).
fn json_body(from: &str, to: &str) -> String {
    let limits = adapters::Limits::default();
    let json = adapters::json::xml_to_json(MESSAGE.as_bytes(), &limits).expect("test message converts").to_string();
    assert_eq!(json.matches(from).count(), 1, "`{from}` once in {json}");
    json.replacen(from, to, 1)
}

fn prepare(body: String) -> Result<(), IntakeError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let pipeline = Pipeline::new(Arc::new(Config::parse(CONFIG).expect("valid test config")), store, None);
    let sub = Submission { partner: "p".into(), media: Media::Json, idempotency_key: None, body: Bytes::from(body) };
    pipeline.prepare(sub).map(drop)
}

fn assert_bad_request(result: Result<(), IntakeError>, needle: &str) {
    let Err(e) = result else { panic!("accepted") };
    assert!(matches!(e, IntakeError::Malformed(_)), "{e:?}");
    let problem = Problem::from(e);
    assert_eq!(problem.status, StatusCode::BAD_REQUEST);
    assert!(problem.detail.starts_with("malformed JSON: "), "{}", problem.detail);
    assert!(problem.detail.contains(needle), "{}", problem.detail);
}

#[test]
fn json_intake_accepts_the_plain_json_form() {
    prepare(json_body("\"inhalt\":\"text\"", "\"inhalt\":\"text\"")).expect("routed");
}

/// Routing read the last `inhalt`; the JSON endpoint would have received both.
#[test]
fn json_intake_refuses_a_duplicate_key() {
    assert_bad_request(prepare(json_body("\"inhalt\":\"text\"", "\"inhalt\":\"a\",\"inhalt\":\"b\"")), "`inhalt`");
}

/// Routing read the reader `bab:09162000` out of the string; the endpoint would have received
/// an object nobody validated.
#[test]
fn json_intake_refuses_the_raw_value_key() {
    let body = json_body(
        "\"kennung\":\"bab:09162000\"",
        r#""kennung":{"$serde_json::private::Raw\u0056alue":"\"bab:09162000\""}"#,
    );
    assert_bad_request(prepare(body), "$serde_json::private::RawValue");
}
