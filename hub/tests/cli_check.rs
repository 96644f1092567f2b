//! `lotse validate | convert | inspect`, run as the built binary.
//!
//! Most cases use a tiny standard defined here (an extra schema folder), so they need no corpus;
//! the corpus cases are required with `CI=true` and skipped with a reason otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:cli:test"
  elementFormDefault="qualified">
  <xs:element name="nachricht.0001">
    <xs:complexType><xs:sequence>
      <xs:element name="betrag" type="xs:decimal" maxOccurs="2"/>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>"#;

const CATALOG: &str = "format = 1\n[[schema]]\nid = \"cli-test-1\"\nstandard = \"CliTest\"\nversion = \"1\"\n\
                       namespace = \"urn:cli:test\"\nentry = [\"test.xsd\"]\n";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let schemas = dir.path().join("schemas");
        std::fs::create_dir(&schemas).expect("mkdir");
        std::fs::write(schemas.join("test.xsd"), XSD).expect("write");
        std::fs::write(schemas.join("catalog.toml"), CATALOG).expect("write");
        let f = Fixture { dir };
        f.file("valid.xml", "<n:nachricht.0001 xmlns:n=\"urn:cli:test\"><n:betrag>1.50</n:betrag></n:nachricht.0001>");
        f.file(
            "invalid.xml",
            "<n:nachricht.0001 xmlns:n=\"urn:cli:test\">\n  <n:betrag>1.50</n:betrag>\n  <n:betrag>viel</n:betrag>\n</n:nachricht.0001>",
        );
        f.file("malformed.xml", "<n:nachricht.0001 xmlns:n=\"urn:cli:test\">\n<n:betrag>");
        f.file("unknown.xml", "<x:other xmlns:x=\"urn:nobody\"/>");
        f
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lotse(&self, args: &[&str]) -> Output {
        let schemas = self.dir.path().join("schemas");
        Command::new(env!("CARGO_BIN_EXE_lotse"))
            .args(args)
            .arg("--schemas-dir")
            .arg(schemas)
            .current_dir(self.dir.path())
            .output()
            .expect("lotse runs")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn validate_exits_0_when_all_files_are_valid() {
    let f = Fixture::new();
    let out = f.lotse(&["validate", "valid.xml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out).trim(), "valid.xml: valid (cli-test-1)");
}

#[test]
fn validate_exits_1_and_prints_file_line_column_path_message() {
    let f = Fixture::new();
    let out = f.lotse(&["validate", "valid.xml", "invalid.xml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let line =
        text.lines().find(|l| l.starts_with("invalid.xml:3:")).unwrap_or_else(|| panic!("no violation line:\n{text}"));
    assert!(
        line.starts_with("invalid.xml:3:3: /n:nachricht.0001/n:betrag[2]: Element '{urn:cli:test}betrag'"),
        "{line}"
    );
    assert!(line.contains("'viel' is not a valid value"), "{line}");
    assert!(text.contains("2 files: 1 valid, 1 invalid, 0 without schema"), "{text}");
}

#[test]
fn malformed_and_unknown_files_fail_unless_unknown_is_allowed() {
    let f = Fixture::new();
    let out = f.lotse(&["validate", "malformed.xml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).starts_with("malformed.xml:2:"), "{}", stdout(&out));
    assert!(stdout(&out).contains(": malformed: "), "{}", stdout(&out));

    let out = f.lotse(&["validate", "unknown.xml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("no schema for namespace `urn:nobody`"), "{}", stdout(&out));
    let out = f.lotse(&["validate", "--allow-unknown", "unknown.xml", "valid.xml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn validate_json_lines_carry_the_verdict() {
    let f = Fixture::new();
    let out = f.lotse(&["validate", "--json", "valid.xml", "invalid.xml", "malformed.xml"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["result"]["verdict"], "valid");
    assert_eq!(lines[1]["result"]["verdict"], "invalid");
    assert_eq!(lines[1]["result"]["violations"][0]["path"], "/n:nachricht.0001/n:betrag[2]");
    assert_eq!(lines[2]["result"]["error"]["kind"], "malformed");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let f = Fixture::new();
    let out = f.lotse(&["validate", "does-not-exist.xml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `does-not-exist.xml`"));
    let out = Command::new(env!("CARGO_BIN_EXE_lotse")).arg("validate").output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "no files is a usage error");
    let out = f.lotse(&["convert", "valid.xml", "--to", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_broken_schema_folder_is_an_error_not_a_verdict() {
    let f = Fixture::new();
    std::fs::write(f.path("schemas/catalog.toml"), "format = 1\n[[schema]]\nid = \"x\"\n").expect("write");
    let out = f.lotse(&["validate", "valid.xml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("catalog.toml"), "{out:?}");
}

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if dir.join("MANIFEST.md").is_file() {
        return Some(dir);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but the corpus is missing at {}", dir.display());
    println!("skipped: no corpus at {}", dir.display());
    None
}

#[test]
fn inspect_prints_meta_catalog_entry_and_verdict_of_a_real_message() {
    let Some(corpus) = corpus() else { return };
    let file = corpus.join(
        "xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    );
    let f = Fixture::new();
    let out = f.lotse(&["inspect", "--json", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["meta"]["message_type"], "0200");
    assert_eq!(report["meta"]["message_id"], "8fa6a8ae-6a53-4980-bbd1-58d3abe540e0");
    assert_eq!(report["schema"]["id"], "xbau-2.6");
    assert_eq!(report["validation"]["verdict"], "valid");

    let out = f.lotse(&["inspect", file.to_str().expect("utf-8 path")]);
    let text = stdout(&out);
    assert!(text.contains("message type: 0200"), "{text}");
    assert!(text.contains("schema:       xbau-2.6"), "{text}");
    assert!(text.contains("validation:   valid"), "{text}");
}

#[test]
fn convert_to_json_and_back_gives_a_message_that_still_validates() {
    let Some(corpus) = corpus() else { return };
    let file = corpus.join("xwasser-hd-gmbh/tests/administration_receipt.xml");
    let f = Fixture::new();
    let out = f.lotse_plain(&["convert", file.to_str().expect("utf-8 path"), "--to", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(json.is_object());
    let json_file = f.file("receipt.json", &stdout(&out));
    let out = f.lotse_plain(&["convert", json_file.to_str().expect("utf-8 path"), "--to", "xml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    f.file("receipt.xml", &stdout(&out));
    let out = f.lotse(&["validate", "receipt.xml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("valid (xwasser-1.0.0)"), "{}", stdout(&out));
}

impl Fixture {
    /// Without `--schemas-dir` (for `convert`, which takes no schema flags).
    fn lotse_plain(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lotse")).args(args).current_dir(self.dir.path()).output().expect("lotse runs")
    }
}

#[test]
fn lotse_schemas_dir_replaces_the_builtin_folder_and_must_be_valid() {
    let f = Fixture::new();
    let xbau = f.file("xbau.xml", "<x:baugenehmigung.antrag.0200 xmlns:x=\"http://www.xleitstelle.de/xbau/2/6\"/>");
    let run = |dir: &Path, file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lotse"))
            .arg("validate")
            .arg(file)
            .env("LOTSE_SCHEMAS_DIR", dir)
            .output()
            .expect("lotse runs")
    };
    // The tiny folder as the built-in one: its standard validates, XBau is unknown.
    let out = run(&f.path("schemas"), &f.path("valid.xml"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(&f.path("schemas"), &xbau);
    assert!(stdout(&out).contains("no schema for namespace `http://www.xleitstelle.de/xbau/2/6`"), "{out:?}");
    // A folder without catalog is an error, not a silent fallback.
    let out = run(f.dir.path(), &f.path("valid.xml"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOTSE_SCHEMAS_DIR"), "{out:?}");
}

#[test]
fn a_doctype_is_refused() {
    let f = Fixture::new();
    f.file("dtd.xml", "<!DOCTYPE n [<!ENTITY e \"x\">]><n:nachricht.0001 xmlns:n=\"urn:cli:test\"/>");
    let out = f.lotse(&["validate", "dtd.xml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("dtd.xml: refused: DOCTYPE"), "{}", stdout(&out));
}

#[test]
fn the_json_form_is_validated_and_inspected_after_conversion() {
    let Some(corpus) = corpus() else { return };
    let f = Fixture::new();
    let xml = corpus.join("xbeteiligung-demosplan/tests/res/example402FromCockpit.xml");
    let out = f.lotse_plain(&["convert", xml.to_str().expect("utf-8 path"), "--to", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    f.file("message.json", &stdout(&out));
    let out = f.lotse(&["validate", "message.json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("message.json: valid (xbeteiligung-1.2)"), "{}", stdout(&out));
    let out = f.lotse(&["inspect", "--json", "message.json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["meta"]["root"], "kommunal.Aktualisieren.0402");
    assert_eq!(report["validation"]["verdict"], "valid");

    f.file("broken.json", "{\"not\": [\"a message\"");
    let out = f.lotse(&["validate", "broken.json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).starts_with("broken.json: not JSON"), "{}", stdout(&out));
}
