//! Unit tests of the validator on a tiny schema defined here.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::catalog::{CATALOG_FILE, Catalog};

const XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:tiny"
  xmlns="urn:tiny" elementFormDefault="qualified">
  <xs:element name="msg">
    <xs:complexType><xs:sequence>
      <xs:element name="head"><xs:complexType><xs:attribute name="v" type="xs:string" fixed="1"/></xs:complexType></xs:element>
      <xs:element name="n" type="xs:int" maxOccurs="3"/>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>"#;

fn validator(dir: &Path, options: ValidatorOptions) -> Validator {
    std::fs::write(dir.join("tiny.xsd"), XSD).expect("write xsd");
    std::fs::write(
        dir.join(CATALOG_FILE),
        "format = 1\n[[schema]]\nid = \"tiny-1\"\nstandard = \"Tiny\"\nversion = \"1\"\nnamespace = \"urn:tiny\"\n\
         version_attribute = \"v\"\nentry = [\"tiny.xsd\"]\n",
    )
    .expect("write catalog");
    let catalog = Catalog::load(&[dir.to_path_buf()]).expect("catalog");
    Validator::new(Arc::new(catalog), options).expect("validator")
}

#[test]
fn validator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Validator>();
}

#[test]
fn valid_invalid_and_unknown_documents_get_their_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = validator(dir.path(), ValidatorOptions { workers: 2, precompile: true, ..Default::default() });
    let ok = br#"<t:msg xmlns:t="urn:tiny"><t:head v="1"/><t:n>1</t:n></t:msg>"#;
    assert_eq!(v.validate(ok), Ok(Verdict::Valid { schema: "tiny-1".into() }));

    let bad = b"<t:msg xmlns:t=\"urn:tiny\">\n  <t:head v=\"1\"/>\n  <t:n>1</t:n>\n  <t:n>x</t:n>\n</t:msg>";
    let Ok(Verdict::Invalid { schema, violations }) = v.validate(bad) else { panic!("expected invalid") };
    assert_eq!(schema, "tiny-1");
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!((violations[0].line, violations[0].column), (4, 3));
    assert_eq!(violations[0].path, "/t:msg/t:n[2]");
    assert!(violations[0].message.contains("'x' is not a valid value"), "{}", violations[0].message);

    let other_version = br#"<t:msg xmlns:t="urn:tiny"><t:head v="2"/><t:n>1</t:n></t:msg>"#;
    assert_eq!(
        v.validate(other_version),
        Ok(Verdict::UnknownNamespace { namespace: Some("urn:tiny".into()), version: Some("2".into()) })
    );
    assert_eq!(
        v.validate(b"<x xmlns=\"urn:other\"/>"),
        Ok(Verdict::UnknownNamespace { namespace: Some("urn:other".into()), version: None })
    );
    assert_eq!(v.validate(b"<x/>"), Ok(Verdict::UnknownNamespace { namespace: None, version: None }));
}

#[test]
fn inline_mode_gives_the_same_verdicts_on_every_calling_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Arc::new(validator(dir.path(), ValidatorOptions { workers: 0, precompile: true, ..Default::default() }));
    let bad = b"<t:msg xmlns:t=\"urn:tiny\"><t:head v=\"1\"/><t:x/></t:msg>";
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let v = Arc::clone(&v);
            std::thread::spawn(move || v.validate(bad))
        })
        .collect();
    for t in threads {
        let verdict = t.join().expect("thread");
        assert!(
            matches!(verdict, Ok(Verdict::Invalid { ref violations, .. }) if violations[0].path == "/t:msg/t:x"),
            "{verdict:?}"
        );
    }
}

#[test]
fn malformed_input_and_doctypes_are_errors_not_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = validator(dir.path(), ValidatorOptions { workers: 1, ..Default::default() });
    // Recovery off: libxml2 would otherwise repair this and validate the repair.
    let Err(ValidateError::Malformed { line, .. }) = v.validate(b"<t:msg xmlns:t=\"urn:tiny\">\n<t:head v=\"1\">")
    else {
        panic!("truncated document must be malformed")
    };
    assert_eq!(line, 2);
    assert!(matches!(v.validate(b"\x89PNG\r\n"), Err(ValidateError::Malformed { .. })));
    let dtd = b"<!DOCTYPE t:msg [<!ENTITY a \"b\">]><t:msg xmlns:t=\"urn:tiny\"/>";
    assert!(matches!(v.validate(dtd), Err(ValidateError::Forbidden(_))));
    // The same in UTF-16 (with BOM, and without in big endian): still refused, not parsed.
    let text = std::str::from_utf8(dtd).expect("ascii");
    let mut le = vec![0xFF, 0xFE];
    le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    assert!(matches!(v.validate(&le), Err(ValidateError::Forbidden(_))));
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    assert!(matches!(v.validate(&be), Err(ValidateError::Forbidden(_))));
    // UTF-16 without a DOCTYPE is validated as usual.
    let ok = r#"<t:msg xmlns:t="urn:tiny"><t:head v="1"/><t:n>1</t:n></t:msg>"#;
    let mut le = vec![0xFF, 0xFE];
    le.extend(ok.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(v.validate(&le), Ok(Verdict::Valid { schema: "tiny-1".into() }));
}

/// Regression: the DOCTYPE scan read anything that was not UTF-16 as UTF-8 and let through
/// what it could not read, but libxml2 reads EBCDIC too: this cp037 document's entity was
/// declared and expanded. Only UTF-8 and UTF-16 get to libxml2 now.
#[test]
fn a_doctype_in_another_encoding_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = validator(dir.path(), ValidatorOptions { workers: 1, ..Default::default() });
    let text = r#"<?xml version="1.0" encoding="IBM037"?><!DOCTYPE r [<!ENTITY e "EXPANDED">]><r>&e;</r>"#;
    let ebcdic: Vec<u8> = text.chars().map(cp037).collect();
    assert_eq!(&ebcdic[..5], b"\x4c\x6f\xa7\x94\x93", "`<?xml` in cp037");
    let result = v.validate(&ebcdic);
    assert!(matches!(result, Err(ValidateError::Malformed { .. })), "{result:?}");
    // The same characters as UTF-8 under that declaration: refused for the declaration.
    let declared = br#"<?xml version="1.0" encoding="IBM037"?><t:msg xmlns:t="urn:tiny"/>"#;
    assert!(matches!(v.validate(declared), Err(ValidateError::Malformed { .. })));
    let utf8 =
        br#"<?xml version="1.0" encoding="utf-8"?><t:msg xmlns:t="urn:tiny"><t:head v="1"/><t:n>1</t:n></t:msg>"#;
    assert_eq!(v.validate(utf8), Ok(Verdict::Valid { schema: "tiny-1".into() }));
    // A prolog the scan cannot read is refused, not passed on.
    assert!(matches!(v.validate(b"<!-- open"), Err(ValidateError::Malformed { .. })));
}

/// cp037 (EBCDIC) for the characters the test document uses.
fn cp037(c: char) -> u8 {
    match c {
        ' ' => 0x40,
        '<' => 0x4C,
        '>' => 0x6E,
        '?' => 0x6F,
        '!' => 0x5A,
        '[' => 0xBA,
        ']' => 0xBB,
        '&' => 0x50,
        ';' => 0x5E,
        '=' => 0x7E,
        '"' => 0x7F,
        '.' => 0x4B,
        '/' => 0x61,
        '0'..='9' => 0xF0 + (c as u8 - b'0'),
        'a'..='i' => 0x81 + (c as u8 - b'a'),
        'j'..='r' => 0x91 + (c as u8 - b'j'),
        's'..='z' => 0xA2 + (c as u8 - b's'),
        'A'..='I' => 0xC1 + (c as u8 - b'A'),
        'J'..='R' => 0xD1 + (c as u8 - b'J'),
        'S'..='Z' => 0xE2 + (c as u8 - b'S'),
        _ => panic!("{c:?} is not in the table"),
    }
}

#[test]
fn a_broken_schema_fails_startup_with_precompile_and_requests_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tiny.xsd"), "<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" targetNamespace=\"urn:tiny\"><xs:element name=\"a\" type=\"nope\"/></xs:schema>").expect("write");
    std::fs::write(
        dir.path().join(CATALOG_FILE),
        "format = 1\n[[schema]]\nid = \"tiny-1\"\nstandard = \"T\"\nversion = \"1\"\nnamespace = \"urn:tiny\"\nentry = [\"tiny.xsd\"]\n",
    )
    .expect("write");
    let catalog = Arc::new(Catalog::load(&[dir.path().to_path_buf()]).expect("catalog"));
    let err = Validator::new(Arc::clone(&catalog), ValidatorOptions { precompile: true, ..Default::default() })
        .expect_err("precompile fails");
    assert!(matches!(err, ValidateError::Schema { ref schema, .. } if schema == "tiny-1"), "{err}");
    let lazy = Validator::new(catalog, ValidatorOptions { workers: 1, ..Default::default() }).expect("lazy starts");
    assert!(matches!(lazy.validate(b"<a xmlns=\"urn:tiny\"/>"), Err(ValidateError::Schema { .. })));
}

#[test]
fn violations_are_capped_with_a_count_of_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = validator(dir.path(), ValidatorOptions { workers: 1, max_violations: 2, ..Default::default() });
    let mut doc = String::from("<t:msg xmlns:t=\"urn:tiny\"><t:head v=\"1\"/>");
    for _ in 0..3 {
        doc.push_str("<t:n>x</t:n>");
    }
    doc.push_str("</t:msg>");
    let Ok(Verdict::Invalid { violations, .. }) = v.validate(doc.as_bytes()) else { panic!("expected invalid") };
    // Three bad values, two shown, one line for the rest.
    assert_eq!(violations.len(), 2 + 1, "{violations:?}");
    assert_eq!(violations[2].message, "1 more violations not shown");
}

#[test]
fn many_threads_share_one_validator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Arc::new(validator(dir.path(), ValidatorOptions { workers: 2, ..Default::default() }));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let v = Arc::clone(&v);
            std::thread::spawn(move || {
                for j in 0..25 {
                    let n = if (i + j) % 2 == 0 { "7".to_string() } else { format!("x{j}") };
                    let doc = format!("<t:msg xmlns:t=\"urn:tiny\"><t:head v=\"1\"/><t:n>{n}</t:n></t:msg>");
                    let valid = v.validate(doc.as_bytes()).expect("verdict").is_valid();
                    assert_eq!(valid, (i + j) % 2 == 0, "thread {i} doc {j}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no thread panicked");
    }
}

/// Regression: once a document was invalid, locating the violation recounted the column from the
/// line's start for every element (quadratic on a minified, one-line document: over a minute for this
/// one) and kept every element's full path.
#[test]
fn a_violation_after_200k_siblings_on_one_line_is_located_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let xsd = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:wide"
      elementFormDefault="qualified">
      <xs:element name="msg"><xs:complexType><xs:sequence>
        <xs:element name="e" minOccurs="0" maxOccurs="unbounded"><xs:complexType/></xs:element>
        <xs:element name="f" type="xs:int"/>
      </xs:sequence></xs:complexType></xs:element>
    </xs:schema>"#;
    std::fs::write(dir.path().join("wide.xsd"), xsd).expect("write xsd");
    std::fs::write(
        dir.path().join(CATALOG_FILE),
        "format = 1\n[[schema]]\nid = \"wide-1\"\nstandard = \"Wide\"\nversion = \"1\"\nnamespace = \"urn:wide\"\n\
         entry = [\"wide.xsd\"]\n",
    )
    .expect("write catalog");
    let catalog = Catalog::load(&[dir.path().to_path_buf()]).expect("catalog");
    let v =
        Validator::new(Arc::new(catalog), ValidatorOptions { workers: 1, ..Default::default() }).expect("validator");
    let open = "<w:msg xmlns:w=\"urn:wide\">";
    let mut doc = String::from(open);
    for _ in 0..200_000 {
        doc.push_str("<w:e/>");
    }
    doc.push_str("<w:f>x</w:f></w:msg>");
    let started = std::time::Instant::now();
    let Ok(Verdict::Invalid { violations, .. }) = v.validate(doc.as_bytes()) else { panic!("expected invalid") };
    assert_eq!(violations.len(), 1, "{violations:?}");
    let column = u32::try_from(open.len() + 200_000 * "<w:e/>".len() + 1).expect("fits");
    assert_eq!((violations[0].line, violations[0].column), (1, column));
    assert_eq!(violations[0].path, "/w:msg/w:f");
    // Generous: linear work takes well under a second; the quadratic recount took over 90 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Arbitrary bytes and damaged documents give a verdict or an error, never a panic or a hang.
    #[test]
    fn hostile_input_never_panics(
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = validator(dir.path(), ValidatorOptions { workers: 0, ..Default::default() });
        let _ = v.validate(&noise);
        let mut doc = br#"<t:msg xmlns:t="urn:tiny"><t:head v="1"/><t:n>12</t:n><t:n>3</t:n></t:msg>"#.to_vec();
        for (at, byte) in flips {
            let at = at % doc.len();
            doc[at] = byte;
        }
        match v.validate(&doc) {
            Ok(Verdict::Invalid { violations, .. }) => proptest::prop_assert!(!violations.is_empty()),
            Ok(_) => {}
            Err(e) => proptest::prop_assert!(!matches!(e, ValidateError::Unavailable(_) | ValidateError::Schema { .. }), "{e}"),
        }
    }
}
