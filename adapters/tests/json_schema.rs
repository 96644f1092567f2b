//! Schema-aware JSON form on the corpus: hints read from each standard's XSD set (corpus
//! copies; the catalog's vendored sets work the same), every message of the standard converts
//! typed and round-trips to the same canonical form; spot checks of arrays and typed values.

use std::path::{Path, PathBuf};

mod common;
use common::{corpus, xml_files_in};

use adapters::Limits;
use adapters::json::{Hints, canonical_form, json_to_xml, write_json_typed, xml_to_json_typed};
use serde_json::{Value, json};

/// XWasser imports the XÖV library by URL; the corpus keeps cached copies (MANIFEST §4).
fn xwasser_remote(dir: &Path) -> impl Fn(&Path, &str) -> Option<PathBuf> + '_ {
    move |_, location| {
        let remote = dir.join("xwasser-hd-gmbh/schemas/remote");
        let file = if location.ends_with("xoev-basisnachricht-unqualified-g2g_1.1.xsd") {
            "0fd6e3cbcdf3573e93d05085f352b4ac"
        } else if location.ends_with("xoev-code.xsd") {
            "5c6293afe2285cfd958bb469742a6ebe"
        } else if location.ends_with("din-norm-91379-datatypes.xsd") {
            "0b049ee8a5305212b4fe17d175d54461"
        } else if location.ends_with("xmldsig-core-schema.xsd") {
            "85c1760756695ed48066b57f48cb5b1d"
        } else {
            return None;
        };
        Some(remote.join(file))
    }
}

type Resolver<'a> = &'a dyn Fn(&Path, &str) -> Option<PathBuf>;

fn no_remote(_: &Path, _: &str) -> Option<PathBuf> {
    None
}

fn hints(entries: &[PathBuf], resolve: &dyn Fn(&Path, &str) -> Option<PathBuf>) -> Hints {
    let h = Hints::from_xsd(entries, resolve).unwrap_or_else(|e| panic!("{entries:?}: {e}"));
    assert!(h.global_elements() > 0, "{entries:?}: no global elements");
    h
}

fn assert_typed_round_trip(path: &Path, hints: &Hints) -> Value {
    let limits = Limits::default();
    let xml = std::fs::read(path).expect("readable");
    let value = xml_to_json_typed(&xml, &limits, hints).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = Vec::new();
    write_json_typed(&xml, &limits, hints, &mut text).expect("typed fast path");
    let reparsed: Value = serde_json::from_slice(&text).expect("valid JSON");
    assert_eq!(reparsed, value, "{}: typed fast path differs", path.display());
    let back = json_to_xml(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        canonical_form(&xml, &limits).expect("canonical"),
        canonical_form(&back, &limits).expect("canonical"),
        "{}: typed round trip changed the document",
        path.display()
    );
    value
}

#[test]
fn xbau_messages_typed() {
    let Some(dir) = corpus() else { return };
    let xsd = dir.join("xbau-releases/artifacts/xbau/2.6/xsd/xsd_dev");
    let entries = vec![xsd.join("xbau-nachrichten-baugenehmigung.xsd"), xsd.join("xbau-nachrichten-statistik.xsd")];
    let hints = hints(&entries, &no_remote);
    let messages = dir.join("xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6");
    let mut seen = 0;
    for path in xml_files_in(&messages) {
        let v = assert_typed_round_trip(&path, &hints);
        seen += 1;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("baugenehmigung.antrag.0200") {
            let root = &v["xbau:baugenehmigung.antrag.0200"];
            // antragsteller has maxOccurs="unbounded": an array even with one applicant
            assert!(
                root["xbau:antragsteller"].as_array().is_some_and(|a| a.len() == 1),
                "{}",
                root["xbau:antragsteller"]
            );
        }
        if name.starts_with("statistik.baugenehmigung.0421") {
            let angaben = &v["xbau:statistik.baugenehmigung.0421"]["xbau:allgemeineAngaben"];
            assert_eq!(angaben["xbau:anzahlDerGebaeudeImBauvorhaben"], json!(1), "xs:int typed");
        }
    }
    assert_eq!(seen, 9);
}

#[test]
fn decimals_stay_strings() {
    let Some(dir) = corpus() else { return };
    let xsd = dir.join("xbau-releases/artifacts/xbau/2.6/xsd/xsd_dev");
    let hints = hints(&[xsd.join("xbau-nachrichten-statistik.xsd")], &no_remote);
    let path = dir.join("xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/statistik.baugenehmigung.0421_sample.xml");
    let v = assert_typed_round_trip(&path, &hints);
    let text = serde_json::to_string(&v).expect("serialises");
    assert!(text.contains(r#""xbau:bruttoRauminhaltBRI":"500.00""#), "decimal kept as written");
}

#[test]
fn other_standards_typed_round_trip() {
    let Some(dir) = corpus() else { return };
    let xdomea = |v: &str| {
        dir.join(format!(
            "xdomea-landesarchiv-thueringen/message_generation/schemes/xdomea_{v}/xdomea-Nachrichten-AussonderungDurchfuehren.xsd"
        ))
    };
    let cii = dir.join(
        "cen-en16931-cii-d16b/cii/schema/D16B SCRDM (Subset)/uncoupled clm/CII/uncefact/data/standard/CrossIndustryInvoice_100pD16B.xsd",
    );
    let ubl = dir.join("oasis-ubl-2.1/xsd/maindoc");
    let remote = xwasser_remote(&dir);
    let sets: Vec<(&str, Vec<PathBuf>, Resolver<'_>, Vec<PathBuf>)> = vec![
        (
            "XBeteiligung",
            vec![dir.join("xbeteiligung-demosplan/Resources/xsd/xbeteiligung.xsd")],
            &no_remote,
            [
                xml_files_in(&dir.join("xbeteiligung-demosplan/tests/res")),
                xml_files_in(&dir.join("xbeteiligung-demosplan/tests/res/xmlv14")),
            ]
            .concat(),
        ),
        (
            "XWasser",
            vec![dir.join("xwasser-hd-gmbh/schemas/V1_0_0/xwasser.xsd")],
            &remote,
            xml_files_in(&dir.join("xwasser-hd-gmbh/tests")),
        ),
        (
            "xdomea 2.3",
            vec![xdomea("2.3.0")],
            &no_remote,
            xml_files_in(&dir.join("xdomea-landesarchiv-thueringen/message_generation/pattern/xdomea_2.3.0")),
        ),
        (
            "xdomea 2.4",
            vec![xdomea("2.4.0")],
            &no_remote,
            xml_files_in(&dir.join("xdomea-landesarchiv-thueringen/message_generation/pattern/xdomea_2.4.0")),
        ),
        (
            "xdomea 3.0",
            vec![xdomea("3.0.0")],
            &no_remote,
            [
                xml_files_in(&dir.join("xdomea-landesarchiv-thueringen/message_generation/pattern/xdomea_3.0.0")),
                xml_files_in(&dir.join("xdomea-examples-lavnrw/v3.0.0")),
            ]
            .concat(),
        ),
        (
            "XJustiz 3.4.1",
            vec![dir.join("xjustiz-tools-digidigital/assets/eEB_3_5_1/xsd/341/xjustiz_0005_nachrichten_3_0.xsd")],
            &no_remote,
            xml_files_in(&dir.join("fit-connect-adapter-zechmeister/src/test/resources/test")),
        ),
        (
            "XRechnung CII",
            vec![cii],
            &no_remote,
            xml_files_in(&dir.join("kosit-xrechnung-testsuite/src/test/business-cases/standard"))
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with("_uncefact.xml"))
                .collect(),
        ),
        (
            "XRechnung UBL",
            vec![ubl.join("UBL-Invoice-2.1.xsd"), ubl.join("UBL-CreditNote-2.1.xsd")],
            &no_remote,
            xml_files_in(&dir.join("kosit-xrechnung-testsuite/src/test/business-cases/standard"))
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with("_ubl.xml"))
                .collect(),
        ),
    ];
    for (standard, entries, resolve, messages) in sets {
        let hints = hints(&entries, resolve);
        assert!(!messages.is_empty(), "{standard}: no messages");
        let mut arrays = 0;
        for path in &messages {
            let v = assert_typed_round_trip(path, &hints);
            arrays += count_single_arrays(&v);
        }
        eprintln!("{standard:14} {:3} messages typed and round-tripped, {arrays} one-element arrays", messages.len());
    }
}

fn count_single_arrays(v: &Value) -> usize {
    match v {
        Value::Array(a) => usize::from(a.len() == 1) + a.iter().map(count_single_arrays).sum::<usize>(),
        Value::Object(o) => o.values().map(count_single_arrays).sum(),
        _ => 0,
    }
}

#[test]
fn ubl_lines_are_arrays_and_quantities_strings() {
    let Some(dir) = corpus() else { return };
    let ubl = dir.join("oasis-ubl-2.1/xsd/maindoc/UBL-Invoice-2.1.xsd");
    let hints = hints(&[ubl], &no_remote);
    let path = dir.join("kosit-xrechnung-testsuite/src/test/business-cases/standard/01.01a-INVOICE_ubl.xml");
    let v = assert_typed_round_trip(&path, &hints);
    let invoice = &v["ubl:Invoice"];
    assert!(invoice["cac:InvoiceLine"].is_array(), "InvoiceLine repeats (1..n)");
    assert!(invoice["cbc:Note"].is_array(), "Note repeats (0..n)");
    // amounts are xs:decimal based: kept as written
    assert!(invoice["cac:LegalMonetaryTotal"]["cbc:PayableAmount"]["#text"].is_string());
}

/// Every schema set of the built-in catalog (`schemas/`) yields hints, and the corpus messages
/// of its namespace round-trip typed with them.
#[test]
fn every_catalog_schema_set_gives_hints() {
    let catalog = match adapters::catalog::Catalog::load_with_builtin(&[]) {
        Ok(c) => c,
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "built-in catalog missing: {e}");
            eprintln!("skipped: {e}");
            return;
        }
    };
    assert!(!catalog.schemas().is_empty());
    for schema in catalog.schemas() {
        let hints = Hints::from_catalog(&catalog, schema).unwrap_or_else(|e| panic!("{}: {e}", schema.id));
        eprintln!("{:24} {:5} global elements", schema.id, hints.global_elements());
        assert!(hints.global_elements() > 0, "{}", schema.id);
    }
}
