//! Unit tests of catalog parsing, selection and staging.

use std::path::{Path, PathBuf};

use super::*;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

const XSD_A: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">
  <xs:annotation><xs:documentation>&lt;xs:import schemaLocation="http://example.invalid/not-real.xsd"/&gt;
    <xs:import schemaLocation="http://example.invalid/in-docs.xsd"/></xs:documentation></xs:annotation>
  <xs:import namespace="urn:u" schemaLocation="http://example.invalid/u.xsd"/>
  <xs:include schemaLocation='sub/b.xsd'/>
</xs:schema>"#;

fn sample(dir: &Path) {
    write(dir, "a.xsd", XSD_A);
    write(dir, "sub/b.xsd", r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t"/>"#);
    write(dir, "remote/u.xsd", r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:u"/>"#);
    write(
        dir,
        CATALOG_FILE,
        r#"format = 1
[[schema]]
id = "t-1"
standard = "T"
version = "1"
namespace = "urn:t"
version_attribute = "v"
entry = ["a.xsd"]
[[schema]]
id = "t-2"
standard = "T"
version = "2"
namespace = "urn:t"
version_attribute = "v"
entry = ["a.xsd", "sub/b.xsd"]
[[remote]]
url = "http://example.invalid/u.xsd"
file = "remote/u.xsd"
"#,
    );
}

#[test]
fn select_honours_the_version_attribute() {
    let dir = tempfile::tempdir().expect("tempdir");
    sample(dir.path());
    let c = Catalog::load(&[dir.path().to_path_buf()]).expect("loads");
    let v2 = |a: &str| (a == "v").then(|| "2".to_string());
    assert!(matches!(c.select("urn:t", v2), Selection::Schema(s) if s.id == "t-2"));
    assert_eq!(c.select("urn:t", |_| Some("9".into())), Selection::UnknownVersion);
    assert_eq!(c.select("urn:t", |_| None), Selection::UnknownVersion);
    assert_eq!(c.select("urn:x", |_| None), Selection::UnknownNamespace);
    assert_eq!(c.schema_for("urn:t", Some("1")).map(|s| s.id.as_str()), Some("t-1"));
    assert_eq!(c.schema_for("urn:t", None), None, "two versions: a version is needed");
    assert_eq!(c.version_attributes("urn:t"), vec!["v"]);
}

#[test]
fn staging_rewrites_real_imports_and_leaves_documentation_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    sample(dir.path());
    let c = Catalog::load(&[dir.path().to_path_buf()]).expect("loads");
    let staged = c.stage(&c.schemas()[0]).expect("stages");
    assert_eq!(staged.files(), 3);
    let entry = std::fs::read_to_string(staged.entry()).expect("staged entry");
    assert!(
        entry.contains("schemaLocation=\"001-u.xsd\"") || entry.contains("schemaLocation=\"002-u.xsd\""),
        "{entry}"
    );
    assert!(entry.contains("schemaLocation='00"), "single quotes kept: {entry}");
    assert!(entry.contains("http://example.invalid/in-docs.xsd"), "documentation untouched: {entry}");
    assert!(!entry.contains("schemaLocation=\"http://example.invalid/u.xsd\""), "{entry}");
    // Two entries: a driver includes both staged files.
    let staged = c.stage(&c.schemas()[1]).expect("stages");
    let driver = std::fs::read_to_string(staged.entry()).expect("driver");
    assert_eq!(driver.matches("<xs:include").count(), 2, "{driver}");
    assert!(driver.contains("targetNamespace=\"urn:t\""));
}

#[test]
fn an_unmapped_remote_location_is_an_error_not_a_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    sample(dir.path());
    let cat = std::fs::read_to_string(dir.path().join(CATALOG_FILE)).expect("read");
    let cut = cat.find("[[remote]]").expect("has remote");
    write(dir.path(), CATALOG_FILE, &cat[..cut]);
    let c = Catalog::load(&[dir.path().to_path_buf()]).expect("loads");
    let err = c.stage(&c.schemas()[0]).expect_err("unmapped");
    assert!(
        matches!(err, CatalogError::UnmappedRemote { ref location, .. } if location == "http://example.invalid/u.xsd"),
        "{err}"
    );
}

#[test]
fn catalog_problems_are_all_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        CATALOG_FILE,
        "format = 2\n[[schema]]\nid = \"x\"\nstandard = \"X\"\nversion = \"1\"\nnamespace = \"urn:x\"\nentry = [\"missing.xsd\", \"../escape.xsd\"]\n[[remote]]\nurl = \"ftp://x\"\nfile = \"nope.xsd\"\n",
    );
    let err = Catalog::load(&[dir.path().to_path_buf()]).expect_err("invalid").to_string();
    for needle in ["unsupported format 2", "missing.xsd", "escape.xsd", "ftp://x"] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
}

#[test]
fn two_folders_may_not_claim_the_same_namespace() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    for d in [a.path(), b.path()] {
        write(d, "s.xsd", r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:s"/>"#);
    }
    write(
        a.path(),
        CATALOG_FILE,
        "format = 1\n[[schema]]\nid = \"s\"\nstandard = \"S\"\nversion = \"1\"\nnamespace = \"urn:s\"\nentry = [\"s.xsd\"]\n",
    );
    write(
        b.path(),
        CATALOG_FILE,
        "format = 1\n[[schema]]\nid = \"s2\"\nstandard = \"S\"\nversion = \"2\"\nnamespace = \"urn:s\"\nentry = [\"s.xsd\"]\n",
    );
    let dirs: Vec<PathBuf> = vec![a.path().into(), b.path().into()];
    let err = Catalog::load(&dirs).expect_err("conflict").to_string();
    assert!(err.contains("already claimed by schema `s`"), "{err}");
}

#[test]
fn the_builtin_catalog_loads_and_maps_xwasser_remote_imports() {
    let dir = locate_builtin().expect("built-in schemas");
    let c = Catalog::load(&[dir]).expect("built-in catalog loads");
    assert!(c.schemas().len() >= 15);
    let xwasser =
        c.schema_for("https://gitlab.opencode.de/akdb/xoev/xwasser/-/raw/main/V1_0_0", None).expect("xwasser");
    let staged = c.stage(xwasser).expect("xwasser stages");
    assert_eq!(staged.files(), 14, "10 XWasser files + 4 remote stand-ins");
    for entry in std::fs::read_dir(staged.dir()).expect("staged dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("staged file");
        assert!(!text.contains("schemaLocation=\"http"), "a remote location survived staging");
    }
}
