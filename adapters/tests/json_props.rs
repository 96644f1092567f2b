//! Property tests of the JSON form: random element trees (namespaces, attributes, mixed
//! content, repeats, awkward characters) round-trip XML -> JSON -> XML to the same canonical
//! form, and JSON -> XML -> JSON is stable. Also: arbitrary bytes never panic the reader.

use adapters::json::{canonical_form, json_to_xml, write_json, xml_to_json};
use adapters::{Limits, read_header, read_meta};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Elem { name: String, attrs: Vec<(String, String)>, children: Vec<Node> },
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "p:d", "q:e", "x.y-z"]).prop_map(str::to_owned)
}

fn text() -> impl Strategy<Value = String> {
    "[ a-z&<>\"'\n\t\r\u{e4}\u{20ac}\u{1d11e}\\]]{0,6}"
}

fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(prop::sample::select(vec!["x", "y", "p:z", "listURI"]), text(), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        text().prop_map(Node::Text),
        (name(), attrs()).prop_map(|(name, attrs)| Node::Elem { name, attrs, children: vec![] }),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            1 => text().prop_map(Node::Text),
            3 => (name(), attrs(), prop::collection::vec(inner, 0..6))
                .prop_map(|(name, attrs, children)| Node::Elem { name, attrs, children }),
        ]
    })
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attr => out.push_str("&quot;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

fn write(node: &Node, out: &mut String) {
    match node {
        Node::Text(t) => out.push_str(&escape(t, false)),
        Node::Elem { name, attrs, children } => {
            out.push('<');
            out.push_str(name);
            for (k, v) in attrs {
                out.push_str(&format!(" {k}=\"{}\"", escape(v, true)));
            }
            out.push('>');
            for c in children {
                write(c, out);
            }
            out.push_str(&format!("</{name}>"));
        }
    }
}

fn document(children: Vec<Node>, attrs: Vec<(String, String)>) -> String {
    let mut out = String::from(r#"<root xmlns:p="urn:p" xmlns:q="urn:q""#);
    for (k, v) in attrs {
        out.push_str(&format!(" {k}=\"{}\"", escape(&v, true)));
    }
    out.push('>');
    for c in &children {
        write(c, &mut out);
    }
    out.push_str("</root>");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(children in prop::collection::vec(node(), 0..8), attrs in attrs()) {
        let xml = document(children, attrs);
        let limits = Limits::default();
        let value = xml_to_json(xml.as_bytes(), &limits).expect("generated XML is well-formed");
        let mut text = Vec::new();
        write_json(xml.as_bytes(), &limits, &mut text).expect("fast path");
        let reparsed: serde_json::Value = serde_json::from_slice(&text).expect("valid JSON");
        prop_assert_eq!(&reparsed, &value);
        let back = json_to_xml(&value).expect("the forward form converts back");
        prop_assert_eq!(
            canonical_form(xml.as_bytes(), &limits).expect("canonical"),
            canonical_form(&back, &limits).expect("canonical")
        );
        let again = xml_to_json(&back, &limits).expect("round-tripped XML reads");
        prop_assert_eq!(again, value);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits { max_depth: 16, max_attributes: 8, max_elements: 256 };
        let _ = read_meta(&bytes, &limits);
        let _ = read_header(&bytes, &limits);
        if let Ok(v) = xml_to_json(&bytes, &limits) {
            let back = json_to_xml(&v).expect("what the reader accepted converts back");
            prop_assert!(xml_to_json(&back, &limits).is_ok());
        }
    }

    #[test]
    fn mutated_messages_never_panic(cut in 0usize..600, flip in 0usize..600, byte in any::<u8>()) {
        let base = br#"<?xml version="1.0" encoding="UTF-8"?><x:m.0200 xmlns:x="urn:x" standard="S"><nachrichtenkopf.g2g><identifikation.nachricht><nachrichtenUUID>u</nachrichtenUUID><nachrichtentyp><code>0200</code></nachrichtentyp></identifikation.nachricht><leser><kennung>bab:1</kennung></leser></nachrichtenkopf.g2g><x:b a="&amp;">t&#65;<![CDATA[c]]></x:b></x:m.0200>"#;
        let mut bytes = base.to_vec();
        let i = flip % bytes.len();
        bytes[i] = byte;
        bytes.truncate(cut.max(1));
        let limits = Limits::default();
        let _ = read_meta(&bytes, &limits);
        let _ = read_header(&bytes, &limits);
        if let Ok(v) = xml_to_json(&bytes, &limits) {
            prop_assert!(json_to_xml(&v).is_ok());
        }
    }
}
