//! Intake of JSON bodies under the configured limits: the XML a JSON form gives is held to the
//! same `[limits]` as XML sent directly, and FIT-Connect metadata to its own limits before it
//! is parsed.

use std::sync::Arc;

use bytes::Bytes;
use hub::config::Config;
use hub::intake::{IntakeError, Media, Pipeline, Submission};
use hub::store::embedded::EmbeddedStore;

/// A message whose `inhalt` element carries `attributes` attributes.
fn message(attributes: usize) -> String {
    let attrs: String = (0..attributes).map(|i| format!(" a{i}=\"{i}\"")).collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<t:antrag.0200 xmlns:t="urn:example:test" standard="Test" version="1.0">
  <nachrichtenkopf.g2g>
    <identifikation.nachricht>
      <nachrichtenUUID>0f0e0d0c-0000-4000-8000-000000000002</nachrichtenUUID>
      <nachrichtentyp><code>0200</code></nachrichtentyp>
    </identifikation.nachricht>
    <leser><kennung>bab:09162000</kennung></leser>
  </nachrichtenkopf.g2g>
  <inhalt{attrs}>text</inhalt>
</t:antrag.0200>"#
    )
}

fn config(limits: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:1"
data_dir = "unused"
[limits]
{limits}
[[endpoints]]
name = "a"
kind = "http"
url = "http://127.0.0.1:9/a"
[[routes]]
name = "r"
reader = "bab:09*"
endpoints = ["a"]
"#
    )
}

fn prepare(config: &str, media: Media, body: impl Into<Bytes>) -> Result<(), IntakeError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let pipeline = Pipeline::new(Arc::new(Config::parse(config).expect("valid test config")), store, None);
    let sub = Submission { partner: "p".into(), media, idempotency_key: None, body: body.into() };
    pipeline.prepare(sub).map(drop)
}

fn json_form(xml: &str) -> String {
    let limits = adapters::Limits { max_attributes: 1_000, ..adapters::Limits::default() };
    adapters::json::xml_to_json(xml.as_bytes(), &limits).expect("test message converts").to_string()
}

/// Regression: the XML of a JSON form was re-read with the default attribute limit (64), so a
/// deployment with `max_attributes = 100` refused as JSON what it accepted as XML.
#[test]
fn json_intake_takes_the_configured_attribute_limit() {
    let config = config("max_attributes = 100");
    prepare(&config, Media::Xml, message(100)).expect("XML with 100 attributes");
    prepare(&config, Media::Json, json_form(&message(100))).expect("its JSON form too");
    for media in [Media::Xml, Media::Json] {
        let body = match media {
            Media::Xml => message(101),
            Media::Json => json_form(&message(101)),
        };
        let e = prepare(&config, media, body).expect_err("101 attributes");
        assert!(matches!(&e, IntakeError::Malformed(m) if m.contains("limit exceeded")), "{media:?}: {e:?}");
    }
    // And a limit below the default holds for JSON too.
    let config = self::config("max_attributes = 10");
    let e = prepare(&config, Media::Json, json_form(&message(11))).expect_err("11 attributes");
    assert!(matches!(&e, IntakeError::Malformed(m) if m.contains("limit exceeded")), "{e:?}");
}

const FIT_SCHEMA: &str = "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json";

/// Regression: intake parsed a JSON body in full (serde_json, up to `max_body_bytes` and 128
/// levels) before it knew the body was FIT-Connect metadata, so the metadata's own limits (1 MiB,
/// 64 levels, "checked before parsing") came after a parse: a 200-level body got serde_json's
/// recursion error, an oversize one was parsed first. Each body below also has a flaw a parse
/// would report first (too deep for serde_json, a duplicate key at its end).
#[test]
fn fitconnect_metadata_is_held_to_its_limits_before_it_is_parsed() {
    let config = config("");
    let deep = format!(
        r#"{{"$schema":"{FIT_SCHEMA}","contentStructure":{{"attachments":[]}},"extra":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let e = prepare(&config, Media::Json, deep).expect_err("200 levels");
    assert!(
        matches!(&e, IntakeError::Malformed(m) if m.contains("nested deeper than 64") && !m.contains("recursion")),
        "{e:?}"
    );
    let pad = "x".repeat(adapters::fitconnect::MAX_BYTES);
    let big = format!(r#"{{"$schema":"{FIT_SCHEMA}","contentStructure":{{"attachments":[]}},"pad":"{pad}","pad":""}}"#);
    let e = prepare(&config, Media::Json, big).expect_err("over 1 MiB");
    assert!(matches!(&e, IntakeError::TooLarge(m) if m.contains("more than 1048576")), "{e:?}");
    // `$schema` found after a deep value and written with escapes: the same.
    let late = format!(
        r#"{{"extra":{}{},"\u0024schema":"{}","contentStructure":{{"attachments":[]}}}}"#,
        "[".repeat(100),
        "]".repeat(100),
        FIT_SCHEMA.replace('/', "\\/")
    );
    let e = prepare(&config, Media::Json, late).expect_err("100 levels");
    assert!(matches!(&e, IntakeError::Malformed(m) if m.contains("nested deeper than 64")), "{e:?}");
    // Within the limits, metadata is read as before (no route for it here).
    let fine = format!(r#"{{"$schema":"{FIT_SCHEMA}","contentStructure":{{"attachments":[]}}}}"#);
    let e = prepare(&config, Media::Json, fine).expect_err("no route");
    assert!(matches!(e, IntakeError::NoRoute { .. }), "{e:?}");
}
