//! `adapters::fitconnect`: the synthetic metadata fixtures (`tests/fixtures/fitconnect/`, made by
//! `generate.py` there and checked against the vendored schema 1.0.0), variants built here, and
//! hostile input (size, depth, garbage).

/// One module so that `cargo test -p adapters fitconnect` selects every test here by name.
mod fitconnect {
    use std::path::PathBuf;

    use adapters::ReadError;
    use adapters::fitconnect::{MAX_BYTES, MAX_DEPTH, is_metadata, read_metadata};
    use serde_json::{Value, json};

    const SCHEMA: &str = "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json";
    const LEIKA: &str = "urn:de:fim:leika:leistung:99001004000000";

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fitconnect").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// base64url without padding.
    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An unsigned JWT with this payload.
    fn jwt(payload: &Value) -> String {
        format!("{}.{}.c2ln", b64url(br#"{"alg":"none"}"#), b64url(payload.to_string().as_bytes()))
    }

    fn report(content: &str) -> Value {
        json!({ "type": "identificationReport", "version": "1.0.0", "content": content })
    }

    fn doc_with_reports(reports: Vec<Value>) -> Vec<u8> {
        let doc = json!({
            "$schema": SCHEMA,
            "contentStructure": { "attachments": [] },
            "authenticationInformation": reports,
        });
        doc.to_string().into_bytes()
    }

    fn read_value(doc: &Value) -> Result<adapters::Meta, ReadError> {
        read_metadata(doc.to_string().as_bytes())
    }

    fn has_warning(meta: &adapters::Meta, needle: &str) -> bool {
        meta.warnings.iter().any(|w| w.contains(needle))
    }

    #[test]
    fn full_document_fills_every_field_it_can() {
        let meta = read_metadata(&fixture("full.json")).expect("full.json reads");
        assert_eq!(meta.standard.as_deref(), Some("FIT-Connect"));
        assert_eq!(meta.version.as_deref(), Some("1.0.0"));
        assert_eq!(meta.namespace.as_deref(), Some(SCHEMA));
        assert_eq!(meta.root, "metadata");
        assert_eq!(meta.service.as_deref(), Some(LEIKA));
        assert_eq!(meta.message_type.as_deref(), Some("http://www.xleitstelle.de/xbau/2/6"));
        assert_eq!(meta.created_at.as_deref(), Some("2026-11-28"));
        assert_eq!(meta.trust_level.as_deref(), Some("substantial"));
        assert_eq!(meta.message_id, None);
        assert_eq!(meta.reader, None);
        assert_eq!(meta.author, None);
        // the one warning: the level comes from a JWT nobody verified
        assert_eq!(meta.warnings.len(), 1, "{:?}", meta.warnings);
        assert!(has_warning(&meta, "NOT verified"), "{:?}", meta.warnings);
    }

    #[test]
    fn document_without_service_or_reports() {
        let meta = read_metadata(&fixture("no-service.json")).expect("no-service.json reads");
        assert_eq!(meta.service, None);
        assert_eq!(meta.trust_level, None);
        assert_eq!(meta.created_at, None);
        assert_eq!(meta.message_type.as_deref(), Some("http://www.xleitstelle.de/xbau/2/6"));
        assert!(meta.warnings.is_empty(), "{:?}", meta.warnings);
    }

    #[test]
    fn jwt_without_a_level_claim_leaves_trust_level_empty() {
        let meta = read_metadata(&fixture("jwt-without-level.json")).expect("reads");
        assert_eq!(meta.trust_level, None);
        assert_eq!(meta.service.as_deref(), Some(LEIKA));
        assert!(has_warning(&meta, "has no level claim"), "{:?}", meta.warnings);
        assert!(!has_warning(&meta, "NOT verified"), "no level, so no level warning: {:?}", meta.warnings);
    }

    #[test]
    fn nested_german_level_claim_is_mapped() {
        let meta = read_metadata(&fixture("jwt-german-level.json")).expect("reads");
        assert_eq!(meta.trust_level.as_deref(), Some("high"));
        assert!(has_warning(&meta, "NOT verified"), "{:?}", meta.warnings);
    }

    /// The document fitconnect 0.4.2 builds itself (docs FITCONNECT.md §7): no service, no reports,
    /// a JSON data schema, and `submissionDate`, which schema 1.0.0 does not define (not read).
    #[test]
    fn document_as_the_python_sdk_builds_it() {
        let bytes = fixture("sdk-0.4.2.json");
        let value: Value = serde_json::from_slice(&bytes).expect("fixture is JSON");
        assert!(is_metadata(&value));
        let meta = read_metadata(&bytes).expect("sdk-0.4.2.json reads");
        assert_eq!(meta.standard.as_deref(), Some("FIT-Connect"));
        assert_eq!(meta.version.as_deref(), Some("1.0.0"));
        assert_eq!(meta.message_type.as_deref(), Some("https://example.invalid/antrag.schema.json"));
        assert_eq!(meta.service, None);
        assert_eq!(meta.trust_level, None);
        assert_eq!(meta.created_at, None, "submissionDate is not applicationDate");
        assert!(meta.warnings.is_empty(), "{:?}", meta.warnings);
    }

    #[test]
    fn duplicate_attachment_ids_warn_once_per_id() {
        let meta = read_metadata(&fixture("duplicate-attachment-ids.json")).expect("duplicates are not fatal");
        let dups: Vec<&String> = meta.warnings.iter().filter(|w| w.contains("duplicate attachmentId")).collect();
        assert_eq!(dups.len(), 1, "{:?}", meta.warnings);
        assert!(dups[0].contains("7c9e6679-7425-40de-944b-e07fc1f90ae7"));
        assert!(!has_warning(&meta, "16fd2706"), "{:?}", meta.warnings);
    }

    #[test]
    fn wrong_schema_is_not_metadata() {
        let bytes = fixture("wrong-schema.json");
        let value: Value = serde_json::from_slice(&bytes).expect("fixture is JSON");
        assert!(!is_metadata(&value));
        match read_metadata(&bytes) {
            Err(ReadError::Malformed { message, .. }) => {
                assert!(message.contains("not FIT-Connect metadata"), "{message}")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(!is_metadata(&json!({ "contentStructure": { "attachments": [] } })));
        assert!(!is_metadata(&json!({ "$schema": 1 })));
        assert!(!is_metadata(&json!([SCHEMA])));
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        match read_metadata(&fixture("malformed.json")) {
            Err(ReadError::Malformed { position, message }) => {
                assert!(message.starts_with("line 4, column 21: not JSON"), "{message}");
                let bytes = fixture("malformed.json");
                assert_eq!(bytes.get(position as usize), Some(&b','), "position points at the stray comma");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        for bad in [&b""[..], b"{", b"null", b"\xff\xfe{}", b"{\"$schema\": \"x\"} trailing"] {
            assert!(matches!(read_metadata(bad), Err(ReadError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        // valid metadata padded with a long string, one byte over and exactly at the limit
        let base = json!({ "$schema": SCHEMA, "contentStructure": { "attachments": [] }, "pad": "" }).to_string();
        let pad = MAX_BYTES - base.len();
        let at_limit = base.replace(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(pad)));
        assert_eq!(at_limit.len(), MAX_BYTES);
        assert!(read_metadata(at_limit.as_bytes()).is_ok());
        let over = base.replace(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(pad + 1)));
        assert!(matches!(read_metadata(over.as_bytes()), Err(ReadError::LimitExceeded(m)) if m.contains("bytes")));
        // garbage over the limit is refused as too big, not parsed
        assert!(matches!(read_metadata(&vec![b'['; MAX_BYTES + 1]), Err(ReadError::LimitExceeded(_))));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // the top-level object is level 1, so `extra` may hold MAX_DEPTH - 1 arrays
        let nested = |levels: usize| {
            format!(
                r#"{{"$schema":"{SCHEMA}","contentStructure":{{"attachments":[]}},"extra":{}{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(read_metadata(nested(MAX_DEPTH - 1).as_bytes()).is_ok());
        match read_metadata(nested(MAX_DEPTH).as_bytes()) {
            Err(ReadError::LimitExceeded(m)) => assert!(m.contains("nested deeper than 64"), "{m}"),
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        // far deeper than serde_json's own recursion limit (128): still our error, no stack trouble
        let deep = "[".repeat(500_000);
        assert!(matches!(read_metadata(deep.as_bytes()), Err(ReadError::LimitExceeded(_))));
    }

    #[test]
    fn deep_jwt_payload_is_a_warning_not_an_error() {
        let mut payload = json!({ "loa": "high" });
        for _ in 0..MAX_DEPTH {
            payload = json!({ "x": payload });
        }
        let meta = read_metadata(&doc_with_reports(vec![report(&jwt(&payload))])).expect("document itself is fine");
        assert_eq!(meta.trust_level, None);
        assert!(has_warning(&meta, "nested deeper"), "{:?}", meta.warnings);
    }

    #[test]
    fn disagreeing_reports_keep_the_lowest_level() {
        let reports = vec![
            report(&jwt(&json!({ "trustLevel": "high" }))),
            report(&jwt(&json!({ "acr": "http://eidas.europa.eu/LoA/low" }))),
            report(&jwt(&json!({ "level_of_assurance": "substantial" }))),
        ];
        let meta = read_metadata(&doc_with_reports(reports)).expect("reads");
        assert_eq!(meta.trust_level.as_deref(), Some("low"));
        assert!(has_warning(&meta, "claim different levels (high, low, substantial)"), "{:?}", meta.warnings);
        assert!(has_warning(&meta, "NOT verified"), "{:?}", meta.warnings);
    }

    #[test]
    fn unreadable_reports_warn_and_leave_trust_level_empty() {
        let reports = vec![
            report("eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.d"),
            report("not-a-jwt"),
            report(&format!("{}.!!.x", b64url(br#"{"alg":"none"}"#))),
            report(&jwt(&json!({ "loa": "very-high-indeed" }))),
            json!({ "type": "somethingElse", "version": "1.0.0", "content": "x" }),
        ];
        let meta = read_metadata(&doc_with_reports(reports)).expect("reports are never fatal");
        assert_eq!(meta.trust_level, None);
        for needle in ["encrypted (JWE)", "not a JWT", "not base64url", "unknown level", "not an identificationReport"]
        {
            assert!(has_warning(&meta, needle), "{needle}: {:?}", meta.warnings);
        }
    }

    #[test]
    fn service_key_shape() {
        let doc = |id: &str| json!({ "$schema": SCHEMA, "contentStructure": { "attachments": [] }, "publicServiceType": { "identifier": id } });
        // another URN is allowed by the schema: kept, with a warning
        let meta = read_value(&doc("urn:x-lotse:leistung:test-1")).expect("other URN");
        assert_eq!(meta.service.as_deref(), Some("urn:x-lotse:leistung:test-1"));
        assert!(has_warning(&meta, "not a LeiKa key"), "{:?}", meta.warnings);
        let meta = read_value(&doc("urn:de:fim:leika:leistung:9900100400")).expect("short LeiKa key");
        assert_eq!(meta.service.as_deref(), Some("urn:de:fim:leika:leistung:9900100400"));
        assert!(has_warning(&meta, "not a 14-digit LeiKa key"), "{:?}", meta.warnings);
        // not a URN at all: refused
        for bad in ["99001004000000", "urn:de:fim:leika:leistung:99001004000000 ", "URN:DE:FIM:X"] {
            assert!(matches!(read_value(&doc(bad)), Err(ReadError::Malformed { .. })), "{bad}");
        }
        let no_id = json!({ "$schema": SCHEMA, "contentStructure": { "attachments": [] }, "publicServiceType": {} });
        assert!(
            matches!(read_value(&no_id), Err(ReadError::Malformed { message, .. }) if message.contains("identifier"))
        );
    }

    #[test]
    fn shape_errors_and_version_warnings() {
        let cases = [
            (json!({ "$schema": SCHEMA }), "`contentStructure` is missing"),
            (json!({ "$schema": SCHEMA, "contentStructure": {} }), "attachments` is missing"),
            (json!({ "$schema": SCHEMA, "contentStructure": { "attachments": {} } }), "not an array"),
            (json!({ "$schema": SCHEMA, "contentStructure": { "attachments": [1] } }), "attachment 0 is not an object"),
            (json!({ "$schema": "https://schema.fitko.de/fit-connect/metadata/latest/x.json" }), "x.y.z"),
            (json!({ "$schema": 7 }), "not a string"),
            (json!([]), "not a JSON object"),
        ];
        for (doc, needle) in cases {
            match read_value(&doc) {
                Err(ReadError::Malformed { message, .. }) => assert!(message.contains(needle), "{needle}: {message}"),
                other => panic!("{doc}: expected Malformed, got {other:?}"),
            }
        }
        let newer = json!({
            "$schema": "https://schema.fitko.de/fit-connect/metadata/2.1.0/metadata.schema.json",
            "contentStructure": { "attachments": [] },
            "additionalReferenceInfo": { "applicationDate": "28.11.2026" },
        });
        let meta = read_value(&newer).expect("a newer version still reads");
        assert_eq!(meta.version.as_deref(), Some("2.1.0"));
        assert!(has_warning(&meta, "2.1.0 is not vendored"), "{:?}", meta.warnings);
        assert_eq!(meta.created_at.as_deref(), Some("28.11.2026"), "kept as given");
        assert!(has_warning(&meta, "is not a date"), "{:?}", meta.warnings);
    }

    /// Regression: the fields read into the meta (`$schema`, the data schema URI, the
    /// application date) were taken with any length and character, and they reach log lines as
    /// XML header fields do (a refusal names message type and namespace): a line break forged a
    /// log line. They are held to the XML header's rule; attachment ids in warnings are escaped.
    #[test]
    fn fields_that_reach_log_lines_are_bounded() {
        let with = |schema: &str, schema_uri: &str, date: &str| {
            json!({
                "$schema": schema,
                "contentStructure": {
                    "data": { "submissionSchema": { "schemaUri": schema_uri } },
                    "attachments": [],
                },
                "additionalReferenceInfo": { "applicationDate": date },
            })
        };
        let long = format!("urn:x:{}", "y".repeat(adapters::meta::MAX_FIELD_CHARS));
        let cases = [
            (with(&format!("{SCHEMA}\n2026-01-01 INFO forged"), "urn:x", "2026-01-01"), "namespace"),
            (with(SCHEMA, "urn:x\n2026-01-01 INFO forged", "2026-01-01"), "message_type"),
            (with(SCHEMA, "urn:x", "2026-01-01\r\nINFO forged"), "created_at"),
            (with(SCHEMA, &long, "2026-01-01"), "message_type"),
        ];
        for (doc, field) in cases {
            match read_value(&doc) {
                Err(ReadError::Malformed { message, .. }) => {
                    assert!(message.contains(&format!("header field `{field}`")), "{field}: {message}")
                }
                other => panic!("{field}: expected Malformed, got {other:?}"),
            }
        }
        let meta =
            read_value(&with(SCHEMA, &long[..adapters::meta::MAX_FIELD_CHARS], "2026-01-01")).expect("at the limit");
        assert_eq!(meta.message_type.map(|t| t.chars().count()), Some(adapters::meta::MAX_FIELD_CHARS));
        let doc = json!({
            "$schema": SCHEMA,
            "contentStructure": { "attachments": [ { "attachmentId": "a\nb" }, { "attachmentId": "a\nb" } ] },
        });
        let meta = read_value(&doc).expect("a duplicate id is a warning");
        assert!(meta.warnings.iter().all(|w| !w.contains('\n')), "{:?}", meta.warnings);
        assert!(has_warning(&meta, "a\\nb"), "{:?}", meta.warnings);
    }

    mod no_panic {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Arbitrary bytes never panic; whatever reads is FIT-Connect.
            #[test]
            fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(meta) = read_metadata(&bytes) {
                    prop_assert_eq!(meta.standard.as_deref(), Some("FIT-Connect"));
                }
            }

            /// The full fixture with bytes overwritten at random places never panics.
            #[test]
            fn mutated_fixture(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
                let mut bytes = fixture("full.json");
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                if let Ok(meta) = read_metadata(&bytes) {
                    prop_assert_eq!(meta.root.as_str(), "metadata");
                }
            }

            /// Arbitrary JWT payload text never panics and never yields a level outside the three words.
            #[test]
            fn arbitrary_jwt_payload(text in "\\PC{0,64}") {
                let token = format!("{}.{}.x", b64url(br#"{"alg":"none"}"#), b64url(text.as_bytes()));
                let meta = read_metadata(&doc_with_reports(vec![report(&token)])).expect("reports are never fatal");
                if let Some(level) = meta.trust_level.as_deref() {
                    prop_assert!(["low", "substantial", "high"].contains(&level));
                }
            }
        }
    }
}
