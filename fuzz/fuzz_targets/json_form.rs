//! Fuzz target: arbitrary bytes as a partner's JSON body, read the way intake reads it
//! (`hub/src/intake.rs`): FIT-Connect metadata, or the JSON form of an XÖV message.
//!
//! Checks more than "no panic": a JSON form that converts to XML gives XML that the hardened
//! reader accepts (or refuses for a limit only): `json_to_xml` promises well-formed output, and
//! intake reads the header from it, so a partner would otherwise get "malformed XML" for a
//! JSON body. And the XML's own JSON form converts back to XML with the same infoset.

#![no_main]

use adapters::json::{canonical_form, json_to_xml, xml_to_json};
use adapters::{Limits, ReadError, read_meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As intake: FIT-Connect metadata, found by a byte scan, is held to its limits before any
    // parse; then the strict parse (no duplicate keys).
    let declared = adapters::fitconnect::declares_metadata(data);
    if declared && adapters::fitconnect::check_limits(data).is_err() {
        return;
    }
    let Ok(value) = adapters::json::parse_strict(data) else {
        return;
    };
    // The byte scan decides whether the limits apply: it must agree with the parsed document
    // (no duplicate keys here), or intake would parse a metadata body before its limits held.
    assert_eq!(declared, adapters::fitconnect::is_metadata(&value), "declares_metadata disagrees with the parse");
    if declared {
        let _ = adapters::fitconnect::read_metadata(data);
        return;
    }
    let Ok(xml) = json_to_xml(&value) else {
        return;
    };
    let limits = Limits { max_depth: 64, max_attributes: 32, max_elements: 20_000 };
    match read_meta(&xml, &limits) {
        Ok(_) => {}
        Err(ReadError::LimitExceeded(_)) => return,
        Err(e) => panic!("json_to_xml wrote XML the reader refuses: {e}\n{}", String::from_utf8_lossy(&xml)),
    }
    let again = xml_to_json(&xml, &limits).expect("XML the reader accepts converts to JSON");
    let back = json_to_xml(&again).expect("the JSON form of a read document converts back");
    let a = canonical_form(&xml, &limits).expect("canonical form of converted XML");
    let b = canonical_form(&back, &limits).expect("canonical form of the round trip");
    assert_eq!(a, b, "round trip changed the infoset");
});
