//! A standard that only this test defines, added through an extra schema folder (as
//! `[schemas] extra_dirs` does), is validated next to the built-in ones; its remote import is
//! served from the folder's own `[[remote]]` map.

use std::path::Path;
use std::sync::Arc;

use adapters::catalog::{CATALOG_FILE, Catalog};
use adapters::validate::{Validator, ValidatorOptions, Verdict};

const MAIN_XSD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:c="urn:example:common"
  targetNamespace="urn:example:antrag:1" elementFormDefault="qualified">
  <xs:import namespace="urn:example:common" schemaLocation="https://schemas.example.invalid/common/1/common.xsd"/>
  <xs:element name="antrag.0001">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="betreff" type="xs:string"/>
        <xs:element ref="c:kennung" maxOccurs="unbounded"/>
      </xs:sequence>
      <xs:attribute name="version" type="xs:string" use="required" fixed="1.0"/>
    </xs:complexType>
  </xs:element>
</xs:schema>"#;

const COMMON_XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:example:common">
  <xs:element name="kennung"><xs:simpleType><xs:restriction base="xs:string">
    <xs:pattern value="[a-z]{3}:[0-9]{8}"/>
  </xs:restriction></xs:simpleType></xs:element>
</xs:schema>"#;

const CATALOG: &str = r#"format = 1

[[schema]]
id = "example-antrag-1.0"
standard = "Example-Antrag"
version = "1.0"
namespace = "urn:example:antrag:1"
entry = ["antrag/antrag.xsd"]

[[remote]]
url = "https://schemas.example.invalid/common/1/common.xsd"
file = "remote/common.xsd"
"#;

fn extra_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("antrag")).expect("mkdir");
    std::fs::create_dir_all(dir.join("remote")).expect("mkdir");
    std::fs::write(dir.join("antrag/antrag.xsd"), MAIN_XSD).expect("write");
    std::fs::write(dir.join("remote/common.xsd"), COMMON_XSD).expect("write");
    std::fs::write(dir.join(CATALOG_FILE), CATALOG).expect("write");
}

#[test]
fn a_standard_added_by_an_extra_folder_is_validated_like_a_builtin_one() {
    // A space in the folder name: staged paths must not depend on URI escaping.
    let tmp = tempfile::Builder::new().prefix("extra schemas ").tempdir().expect("tempdir");
    extra_dir(tmp.path());
    let catalog = Catalog::load_with_builtin(&[tmp.path().to_path_buf()]).expect("built-in + extra load");
    let entry = catalog.schema_for("urn:example:antrag:1", None).expect("extra schema is in the catalog");
    assert_eq!(entry.standard, "Example-Antrag");
    let validator =
        Validator::new(Arc::new(catalog), ValidatorOptions { workers: 1, ..Default::default() }).expect("validator");

    let valid = br#"<a:antrag.0001 xmlns:a="urn:example:antrag:1" xmlns:c="urn:example:common" version="1.0">
  <a:betreff>Bauantrag</a:betreff>
  <c:kennung>bab:09162000</c:kennung>
</a:antrag.0001>"#;
    assert_eq!(validator.validate(valid), Ok(Verdict::Valid { schema: "example-antrag-1.0".into() }));

    let invalid = br#"<a:antrag.0001 xmlns:a="urn:example:antrag:1" xmlns:c="urn:example:common" version="1.0">
  <a:betreff>Bauantrag</a:betreff>
  <c:kennung>bab:09162000</c:kennung>
  <c:kennung>not a key</c:kennung>
</a:antrag.0001>"#;
    let Ok(Verdict::Invalid { schema, violations }) = validator.validate(invalid) else {
        panic!("expected an invalid verdict")
    };
    assert_eq!(schema, "example-antrag-1.0");
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].path, "/a:antrag.0001/c:kennung[2]");
    assert_eq!((violations[0].line, violations[0].column), (4, 3));

    // The built-in catalog is still there: an XBau document is judged by XBau 2.6.
    let xbau = br#"<x:baugenehmigung.antrag.0200 xmlns:x="http://www.xleitstelle.de/xbau/2/6"/>"#;
    assert!(matches!(validator.validate(xbau), Ok(Verdict::Invalid { schema, .. }) if schema == "xbau-2.6"));
}

#[test]
fn an_extra_folder_cannot_take_over_a_builtin_namespace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    extra_dir(tmp.path());
    let hijack = CATALOG.replace("urn:example:antrag:1", "http://www.xleitstelle.de/xbau/2/6");
    std::fs::write(tmp.path().join(CATALOG_FILE), hijack).expect("write");
    let err = Catalog::load_with_builtin(&[tmp.path().to_path_buf()]).expect_err("conflict").to_string();
    assert!(err.contains("already claimed by schema `xbau-2.6`"), "{err}");
}
