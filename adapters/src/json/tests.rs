//! Tests of the JSON form: the shapes of the mapping, the reverse direction, the canonical form.

use serde_json::{Value, json};

use super::{ConvertError, canonical_form, json_to_xml, write_json, xml_to_json};
use crate::Limits;

fn to_json(xml: &str) -> Value {
    xml_to_json(xml.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{xml}: {e}"))
}

/// XML -> JSON -> XML, compared through the canonical form; also checks that the JSON text
/// fast path gives the same JSON.
fn assert_round_trip(xml: &str) -> Value {
    let limits = Limits::default();
    let value = to_json(xml);
    let mut text = Vec::new();
    write_json(xml.as_bytes(), &limits, &mut text).expect("fast path");
    let reparsed: Value = serde_json::from_slice(&text).expect("fast path writes valid JSON");
    assert_eq!(reparsed, value, "fast path and Value differ for {xml}");
    let back = json_to_xml(&value).unwrap_or_else(|e| panic!("{value}: {e}"));
    let original = canonical_form(xml.as_bytes(), &limits).expect("canonical original");
    let again = canonical_form(&back, &limits).expect("canonical round trip");
    assert_eq!(original, again, "round trip differs:\n{}", String::from_utf8_lossy(&back));
    value
}

#[test]
fn text_only_element_without_attributes_is_a_string() {
    assert_eq!(assert_round_trip("<a><b>x</b><c/><d></d></a>"), json!({"a": {"b": "x", "c": "", "d": ""}}));
}

#[test]
fn attributes_are_at_keys_and_text_is_hash_text() {
    let v =
        assert_round_trip(r#"<a x="1"><b listURI="urn:l" listVersionID="2"><code>0200</code></b><c y="2">t</c></a>"#);
    assert_eq!(
        v,
        json!({"a": {"@x": "1", "b": {"@listURI": "urn:l", "@listVersionID": "2", "code": "0200"}, "c": {"@y": "2", "#text": "t"}}})
    );
}

#[test]
fn adjacent_repeats_are_arrays() {
    let v = assert_round_trip("<a><k>1</k><k>2</k><z/></a>");
    assert_eq!(v, json!({"a": {"k": ["1", "2"], "z": ""}}));
}

#[test]
fn non_adjacent_repeats_use_ordered_content() {
    let v = assert_round_trip("<a>\n  <k>1</k>\n  <z/>\n  <k>2</k>\n</a>");
    assert_eq!(v, json!({"a": {"#content": [{"k": "1"}, {"z": ""}, {"k": "2"}]}}));
}

#[test]
fn mixed_content_keeps_every_text_node() {
    let v = assert_round_trip(r#"<p lang="de">Hallo <b>du</b> da, <i> </i> !</p>"#);
    assert_eq!(v, json!({"p": {"@lang": "de", "#content": ["Hallo ", {"b": "du"}, " da, ", {"i": " "}, " !"]}}));
}

#[test]
fn namespaces_and_prefixes_are_kept() {
    let xml = r#"<x:m xmlns:x="urn:x" xmlns:y="urn:y"><k xmlns=""><y:v y:a="1">t</y:v></k></x:m>"#;
    let v = assert_round_trip(xml);
    assert_eq!(
        v,
        json!({"x:m": {"@xmlns:x": "urn:x", "@xmlns:y": "urn:y", "k": {"@xmlns": "", "y:v": {"@y:a": "1", "#text": "t"}}}})
    );
}

#[test]
fn special_characters_survive() {
    let xml = "<a t=\"&quot;&amp;&lt;&#9;x\">&lt;&amp;&gt; \"quoted\" ü € 𝄞 <![CDATA[<raw>&]]>\r\nnext</a>";
    let v = assert_round_trip(xml);
    assert_eq!(v, json!({"a": {"@t": "\"&<\tx", "#text": "<&> \"quoted\" ü € 𝄞 <raw>&\nnext"}}));
}

#[test]
fn whitespace_in_leaves_is_kept_indentation_is_not() {
    let v = assert_round_trip("<a>\n  <b>  two spaces  </b>\n  <c>\n</c>\n</a>");
    assert_eq!(v, json!({"a": {"b": "  two spaces  ", "c": "\n"}}));
}

#[test]
fn comments_and_processing_instructions_are_dropped() {
    let v = assert_round_trip("<?xml version=\"1.0\"?><!-- c --><a><!-- inside --><b>1</b><?pi x?></a><!-- after -->");
    assert_eq!(v, json!({"a": {"b": "1"}}));
}

#[test]
fn conversion_refuses_what_the_reader_refuses() {
    let doctype = br#"<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>"#;
    assert!(matches!(
        xml_to_json(doctype, &Limits::default()),
        Err(ConvertError::Read(crate::ReadError::Forbidden(_)))
    ));
    assert!(matches!(xml_to_json(b"<a><b></a>", &Limits::default()), Err(ConvertError::Read(_))));
}

#[test]
fn json_senders_may_use_numbers_booleans_and_null() {
    let v = json!({"a": {"@n": 5, "b": 1.5, "c": true, "d": null, "e": ["x", 2]}});
    let xml = json_to_xml(&v).expect("valid form");
    assert_eq!(
        String::from_utf8(xml).expect("utf-8"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a n=\"5\"><b>1.5</b><c>true</c><d/><e>x</e><e>2</e></a>"
    );
}

/// Regression: numbers went through `f64` (non-integers, integers beyond 64 bits), so an amount
/// of `1234567890.123456789012` reached the XML rounded and `1.50` as `1.5`. The text of a JSON
/// number is the XML text now (exponents as serde_json writes them: `1E2` is `1e+2`).
#[test]
fn json_numbers_reach_the_xml_as_written() {
    let cases = [
        ("12345678901234567890123", "12345678901234567890123"),
        ("1234567890.123456789012", "1234567890.123456789012"),
        ("-98765432109876543210.00", "-98765432109876543210.00"),
        ("1.50", "1.50"),
        ("100.0", "100.0"),
        ("-0", "-0"),
        ("0.1", "0.1"),
        ("1e2", "1e+2"),
        ("1E-7", "1e-7"),
        ("2.5e+300", "2.5e+300"),
        ("1e400", "1e+400"),
    ];
    for (number, text) in cases {
        let body = format!(r#"{{"r":{{"@a":{number},"b":{number}}}}}"#);
        let value = super::parse_strict(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        let xml = String::from_utf8(json_to_xml(&value).expect("valid form")).expect("utf-8");
        assert!(xml.ends_with(&format!(r#"<r a="{text}"><b>{text}</b></r>"#)), "{number}: {xml}");
    }
}

/// Regression: the re-read of a JSON form's XML checked well-formedness only, so `json_to_xml`
/// wrote XML whose header the reader then refused (a line break in `@standard`), breaking its
/// promise (the `json_form` fuzz target asserts the reader accepts what it writes).
#[test]
fn json_forms_whose_header_the_reader_refuses_are_refused() {
    for case in [
        json!({"a": {"@standard": "x\ny"}}),
        json!({"t:a": {"@xmlns:t": "urn:x\ny", "b": ""}}),
        json!({"a": {"nachrichtenkopf.g2g": {"leser": {"kennung": "bab:1\r\nforged"}}}}),
        json!({"a": {"@version": "v".repeat(crate::meta::MAX_FIELD_CHARS + 1)}}),
    ] {
        match json_to_xml(&case) {
            Err(ConvertError::InvalidJson(m)) => assert!(m.contains("header field"), "{m}"),
            other => panic!("{case}: {other:?}"),
        }
    }
    assert!(json_to_xml(&json!({"a": {"@standard": "x y"}})).is_ok());
}

#[test]
fn invalid_json_forms_are_refused() {
    let cases = [
        json!("text"),
        json!({}),
        json!({"a": "1", "b": "2"}),
        json!({"a": [1, 2]}),
        json!({"a": {"b": [[1]]}}),
        json!({"a": {"#content": "x"}}),
        json!({"a": {"#content": [], "b": "1"}}),
        json!({"a": {"#content": [{"b": "1", "c": "2"}]}}),
        json!({"a": {"#weird": "1"}}),
        json!({"1a": ""}),
        json!({"a b": ""}),
        json!({"p:a": ""}),
        json!({"a": {"@x": {"nested": 1}}}),
        json!({"a": "\u{1}"}),
        json!({"a": "x\u{fffe}"}),
        json!({"a": {"@b": "\u{ffff}"}}),
    ];
    for case in cases {
        assert!(matches!(json_to_xml(&case), Err(ConvertError::InvalidJson(_))), "{case} should be refused");
    }
}

#[test]
fn canonical_form_sees_real_differences() {
    let c = |x: &str| canonical_form(x.as_bytes(), &Limits::default()).expect("well-formed");
    assert_eq!(c("<a>\n <b/>\n</a>"), c("<a><b></b></a>"));
    assert_eq!(c(r#"<a y="2" x="1"/>"#), c(r#"<a x="1" y="2"/>"#));
    assert_ne!(c("<a><b/><c/></a>"), c("<a><c/><b/></a>"));
    assert_ne!(c("<a>x </a>"), c("<a>x</a>"));
    assert_ne!(c(r#"<p:a xmlns:p="urn:1"/>"#), c(r#"<p:a xmlns:p="urn:2"/>"#));
    assert_ne!(c(r#"<a x="1"/>"#), c(r#"<a x="2"/>"#));
    assert_ne!(c("<a>t<b/></a>"), c("<a><b/>t</a>"));
}

/// Regression (found by the fuzz target): the reader accepted an attribute name starting with
/// U+FEFF (a NameStartChar in XML 1.0 fifth edition) but json_to_xml refused it as a name.
#[test]
fn names_with_non_ascii_characters_convert_both_ways() {
    assert_round_trip("<a \u{feff}x=\"1\" \u{e4}b=\"2\"><\u{3b1}:b xmlns:\u{3b1}=\"urn:g\">t</\u{3b1}:b></a>");
    // and what is not a name is refused on both sides
    assert!(xml_to_json("<a \u{2000}x=\"1\"/>".as_bytes(), &Limits::default()).is_err());
    assert!(json_to_xml(&json!({"a": {"@\u{2000}x": "1"}})).is_err());
    assert!(xml_to_json("<a><\u{b7}b/></a>".as_bytes(), &Limits::default()).is_err());
}

#[test]
fn json_strings_match_serde_json_for_every_byte_class_at_every_position() {
    let specials = ['"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', '\u{e4}', '\u{20ac}', ' ', 'a'];
    for len in 0..=20 {
        for pos in 0..len {
            for c in specials {
                let s: String = (0..len).map(|i| if i == pos { c } else { 'x' }).collect();
                let mut out = Vec::new();
                super::emit::write_str(&mut out, &s);
                let expected = serde_json::to_string(&s).expect("a string serialises");
                assert_eq!(String::from_utf8(out).expect("JSON text is UTF-8"), expected, "{s:?}");
            }
        }
    }
}

/// A JSON array repeats its element's name per item, so a small JSON document can stand for a
/// huge XML one: the bounded conversion stops once the XML passes the limit.
#[test]
fn the_xml_of_a_json_form_is_bounded_while_it_is_built() {
    let name = "n".repeat(10_000);
    let items = vec![serde_json::Value::Null; 100_000];
    let json = json!({ "r": { name.as_str(): items } });
    // 100,000 × 10,002 bytes (about 1 GB) unbounded; refused after about 1 MB.
    assert!(matches!(super::json_to_xml_within(&json, 1 << 20), Err(ConvertError::TooLarge)));
    let small = json!({ "r": { "a": [null, null] } });
    let xml = super::json_to_xml_within(&small, 1 << 20).expect("within the limit");
    assert!(xml.ends_with(b"<r><a/><a/></r>"), "{}", String::from_utf8_lossy(&xml));
    assert!(matches!(super::json_to_xml_within(&small, 10), Err(ConvertError::TooLarge)));
}

/// Regression: the XML of a JSON form was re-read with no attribute limit, so one object with
/// a million `@` keys cost the reader's duplicate check 10^12 comparisons. It is held to the
/// XML intake's default limit now.
#[test]
fn more_attributes_on_one_element_than_the_default_limit_are_refused() {
    let max = crate::Limits::default().max_attributes;
    let attrs = |n: usize| {
        let map: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("@a{i}"), serde_json::Value::from(0))).collect();
        json!({ "r": map })
    };
    assert!(json_to_xml(&attrs(max)).is_ok());
    let err = json_to_xml(&attrs(max + 1)).expect_err("one attribute too many");
    assert!(matches!(err, ConvertError::Read(crate::ReadError::LimitExceeded(ref m)) if m.contains("attributes")));
    let err = super::json_to_xml_within(&attrs(200_000), 16 << 20).expect_err("far too many");
    assert!(matches!(err, ConvertError::Read(crate::ReadError::LimitExceeded(_))), "{err}");
}

/// Regression: the JSON form's XML was re-read with the default attribute limit (64) whatever
/// the caller's limits: a deployment allowing more refused as JSON what it took as XML.
#[test]
fn the_xml_of_a_json_form_is_read_under_the_callers_limits() {
    let attrs = |n: usize| {
        let map: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("@a{i}"), serde_json::Value::from(0))).collect();
        json!({ "r": map })
    };
    let limits = crate::Limits { max_attributes: 100, ..crate::Limits::default() };
    assert!(super::json_to_xml_with_limits(&attrs(100), 1 << 20, &limits).is_ok());
    let err = super::json_to_xml_with_limits(&attrs(101), 1 << 20, &limits).expect_err("one too many");
    assert!(matches!(err, ConvertError::Read(crate::ReadError::LimitExceeded(ref m)) if m.contains("attributes")));
    let limits = crate::Limits { max_attributes: 3, ..crate::Limits::default() };
    assert!(super::json_to_xml_with_limits(&attrs(4), 1 << 20, &limits).is_err());
}

/// Regression: the size limit was checked only between elements, and escaping grows a byte up
/// to six (`"` -> `&quot;`), so one value could take six times its size past the limit first.
#[test]
fn escaping_one_large_value_stops_at_the_limit() {
    for json in [json!({ "r": "<".repeat(100_000) }), json!({ "r": { "@a": "\"".repeat(100_000) } })] {
        let mut out = Vec::new();
        let result = super::to_xml::write_xml(&json, &mut out, 1_000, &crate::Limits::default());
        assert!(matches!(result, Err(ConvertError::TooLarge)), "{result:?}");
        assert!(out.len() < 2_000, "the buffer grew to {} bytes", out.len());
    }
    // A value that needs escaping but fits is written whole.
    let xml = super::json_to_xml_within(&json!({ "r": "<".repeat(100) }), 1_000).expect("fits");
    assert!(xml.ends_with(format!("<r>{}</r>", "&lt;".repeat(100)).as_bytes()));
    assert!(matches!(super::json_to_xml_within(&json!({ "r": "<".repeat(300) }), 1_000), Err(ConvertError::TooLarge)));
}
