//! Unit tests of the FIT-Connect helpers: depth scan, URN, version and date shapes, base64url,
//! level words. Whole documents are tested in `adapters/tests/fitconnect_metadata.rs`.

use super::jwt::{Level, base64url_decode, unverified_payload};
use super::{check_depth, is_date, is_semver, is_urn};

#[test]
fn depth_scan_counts_containers_not_brackets_in_strings() {
    assert_eq!(check_depth(br#"{"a":[1,{"b":2}]}"#, 3), Ok(()));
    assert_eq!(check_depth(br#"{"a":[1,{"b":2}]}"#, 2), Err(8));
    // brackets inside strings, also after an escaped quote, do not count
    assert_eq!(check_depth(br#"{"a":"[[[{{{\"[[["}"#, 1), Ok(()));
    // a closing bracket in a string does not lower the depth either
    assert_eq!(check_depth(br#"[["]]]]"], [1]]"#, 2), Ok(()));
    assert_eq!(check_depth(br#"[["]]]]", [[1]]]"#, 2), Err(10));
}

#[test]
fn depth_scan_on_hostile_input_is_bounded() {
    let deep = "[".repeat(100_000);
    assert_eq!(check_depth(deep.as_bytes(), 64), Err(64));
    // an unterminated string swallows the rest: no error, and no panic
    assert_eq!(check_depth(b"{\"abc\\", 1), Ok(()));
}

#[test]
fn urn_shape_follows_the_schema_pattern() {
    assert!(is_urn("urn:de:fim:leika:leistung:99001004000000"));
    assert!(is_urn("urn:x-lotse:test:svc-1"));
    assert!(!is_urn("urn:de:fim:leika:leistung:9900 1004"), "space");
    assert!(!is_urn("urn:DE:fim"), "upper-case namespace id");
    assert!(!is_urn("urn:de:Fim"), "upper-case specific string");
    assert!(!is_urn("99001004000000"), "bare LeiKa key");
    assert!(!is_urn("urn:de:"), "empty specific string");
    assert!(!is_urn(&format!("urn:de:{}", "a".repeat(250))), "longer than 255");
    assert!(!is_urn(&format!("urn:{}:x", "a".repeat(33))), "namespace id longer than 32");
}

#[test]
fn version_and_date_shapes() {
    assert!(is_semver("1.0.0"));
    assert!(is_semver("2.10.3"));
    assert!(!is_semver("1.0"));
    assert!(!is_semver("1.0.x"));
    assert!(!is_semver("1..0"));
    assert!(is_date("2026-11-29"));
    assert!(!is_date("2026-13-01"));
    assert!(!is_date("2026-11-29 13:38:13.170521"));
    assert!(!is_date("29.11.2026"));
    assert!(!is_date("2026-1-1"));
    assert!(!is_date("ü026-11-2"), "multi-byte input of the right byte length");
}

#[test]
fn base64url_decodes_with_and_without_padding() {
    assert_eq!(base64url_decode("").as_deref(), Some(&b""[..]));
    assert_eq!(base64url_decode("TG90c2U").as_deref(), Some(&b"Lotse"[..]));
    assert_eq!(base64url_decode("TG90c2U=").as_deref(), Some(&b"Lotse"[..]));
    // the two url-safe characters (standard base64 would be `+/8=`)
    assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
    assert_eq!(base64url_decode("+/8="), None, "standard alphabet refused");
    assert_eq!(base64url_decode("TG90c"), None, "impossible length");
    assert_eq!(base64url_decode("TG 90"), None, "space");
}

#[test]
fn level_words_map_to_eidas() {
    assert_eq!(Level::parse("substantial"), Some(Level::Substantial));
    assert_eq!(Level::parse(" HIGH "), Some(Level::High));
    assert_eq!(Level::parse("http://eidas.europa.eu/LoA/low"), Some(Level::Low));
    assert_eq!(Level::parse("http://eidas.europa.eu/LoA/substantial"), Some(Level::Substantial));
    assert_eq!(Level::parse("substanziell"), Some(Level::Substantial));
    assert_eq!(Level::parse("hoch"), Some(Level::High));
    assert_eq!(Level::parse("normal"), Some(Level::Low));
    assert_eq!(Level::parse("LOA_HIGH"), Some(Level::High));
    assert_eq!(Level::parse("basisregistrierung"), None);
    assert_eq!(Level::parse("3"), None);
    assert_eq!(Level::parse(""), None);
    assert!(Level::Low < Level::Substantial && Level::Substantial < Level::High);
}

#[test]
fn jwt_payload_is_read_from_three_parts_only() {
    // {"alg":"none"} . {"loa":"high"} . x
    let token = "eyJhbGciOiJub25lIn0.eyJsb2EiOiJoaWdoIn0.eA";
    let payload = unverified_payload(token).expect("a three-part JWT");
    assert_eq!(payload["loa"], "high");
    assert!(unverified_payload("a.b.c.d.e").expect_err("refused").contains("JWE"));
    assert!(unverified_payload("abc").expect_err("refused").contains("not a JWT"));
    assert!(unverified_payload("eyJhbGciOiJub25lIn0.!!!.eA").expect_err("refused").contains("base64url"));
    // payload `[1]`: JSON, but not an object
    assert!(unverified_payload("eyJhbGciOiJub25lIn0.WzFd.eA").expect_err("refused").contains("object"));
}

/// The byte scan that tells intake a body is metadata before any parse agrees with
/// `is_metadata` of the parsed document, whatever comes before `$schema` and however it is
/// escaped.
#[test]
fn declares_metadata_agrees_with_the_parsed_document() {
    let s = "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json";
    let escaped = s.replace('/', "\\/");
    let docs = [
        (format!(r#"{{"$schema":"{s}"}}"#), true),
        (format!(" \n{{ \"$schema\" :\t\"{s}\" , \"x\":1}}"), true),
        (
            format!(
                r#"{{"a":1,"b":-2.5e3,"c":true,"d":null,"e":"}}\"{{","f":[{{"$schema":"x"}},[]],"$schema":"{s}"}}"#
            ),
            true,
        ),
        (format!(r#"{{"g":{{"$schema":"{s}"}},"$schema":"{escaped}"}}"#), true),
        (format!(r#"{{"\u0024schema":"{s}"}}"#), true),
        (format!(r#"{{"x":{}{},"$schema":"{s}"}}"#, "[".repeat(100), "]".repeat(100)), true),
        (format!(r#"{{"g":{{"$schema":"{s}"}}}}"#), false),
        (format!(r#"{{"$schema":"https://example.org/{s}"}}"#), false),
        (r#"{"$schema":7}"#.to_owned(), false),
        (r#"{"$schemas":"https://schema.fitko.de/fit-connect/metadata/1.0.0/"}"#.to_owned(), false),
        (format!(r#"["$schema","{s}"]"#), false),
        ("{}".to_owned(), false),
        (r#""$schema""#.to_owned(), false),
    ];
    for (doc, expected) in docs {
        let parsed: serde_json::Value = serde_json::from_str(&doc).expect("test documents are JSON");
        assert_eq!(super::is_metadata(&parsed), expected, "{doc}");
        assert_eq!(super::declares_metadata(doc.as_bytes()), expected, "{doc}");
    }
    // Deeper than serde_json parses: the scan still finds `$schema` (and the depth check then
    // refuses the body before any parse).
    let deep = format!(r#"{{"x":{}{},"$schema":"{s}"}}"#, "[".repeat(300), "]".repeat(300));
    assert!(super::declares_metadata(deep.as_bytes()));
    // Not JSON: no panic, whatever the answer.
    for junk in [&b""[..], b"{", b"{\"", b"{\"$schema\"", b"{\"$schema\":", b"{\"a\":[", b"{\"a\":\"\\", b"\xff{"] {
        let _ = super::declares_metadata(junk);
    }
}
