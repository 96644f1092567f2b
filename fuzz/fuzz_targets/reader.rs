//! Fuzz target: arbitrary bytes into the hardened reader and the JSON form.
//!
//! Checks more than "no panic": whatever `read_meta` accepts, `read_header` accepts with the
//! same meta; whatever converts to JSON was accepted by `read_meta`, converts back to XML,
//! and that XML has the same canonical form and the same JSON.

#![no_main]

use adapters::json::{canonical_form, json_to_xml, write_json, xml_to_json};
use adapters::{Limits, read_header, read_meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_depth: 64, max_attributes: 32, max_elements: 20_000 };
    let full = read_meta(data, &limits);
    let fast = read_header(data, &limits);
    if let Ok(meta) = &full {
        assert_eq!(fast.as_ref().ok(), Some(meta), "read_header disagrees with read_meta");
    }
    let Ok(value) = xml_to_json(data, &limits) else {
        return;
    };
    assert!(full.is_ok(), "xml_to_json accepted what read_meta refused");
    let mut text = Vec::new();
    write_json(data, &limits, &mut text).expect("fast path accepts what the Value path accepts");
    let reparsed: serde_json::Value = serde_json::from_slice(&text).expect("fast path writes JSON");
    assert_eq!(reparsed, value, "fast path JSON differs");
    let back = json_to_xml(&value).expect("the JSON form of a read document converts back");
    let again = xml_to_json(&back, &limits).expect("converted-back XML reads");
    assert_eq!(again, value, "JSON not stable over a round trip");
    let a = canonical_form(data, &limits).expect("canonical form of an accepted document");
    let b = canonical_form(&back, &limits).expect("canonical form of the round trip");
    assert_eq!(a, b, "round trip changed the infoset");
});
