//! Corpus round trip of the JSON form: every XML file of the corpus, XML -> JSON -> XML, must
//! give the same canonical form; the JSON text fast path must agree with the `Value` path.
//! Prints files and pass rate per standard (`cargo test -p adapters --test json_corpus -- --nocapture`).

use std::collections::BTreeMap;

mod common;
use common::{corpus, files as all_files, xml_files};

use adapters::json::{ConvertError, canonical_form, json_to_xml, write_json, xml_to_json};
use adapters::{Limits, ReadError};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Instance messages per standard (issue 3), by corpus folder.
const STANDARDS: &[(&str, &str)] = &[
    ("XBau 2.6", "xbau-testfiles-arecklies"),
    ("XBeteiligung 1.2", "xbeteiligung-demosplan/tests"),
    ("XWasser 1.0.0", "xwasser-hd-gmbh/tests"),
    ("xdomea 2.3/2.4/3.0", "xdomea-landesarchiv-thueringen/message_generation/pattern"),
    ("xdomea 3.0/4.0 (LAV NRW)", "xdomea-examples-lavnrw"),
    ("XGewerbeanzeige", "kosit-xgewerbeanzeige"),
    ("XJustiz", "xjustiz-testdaten-xjv"),
    ("XJustiz (FIT-Connect)", "fit-connect-adapter-zechmeister"),
    ("XRechnung test suite", "kosit-xrechnung-testsuite"),
    ("XRechnung validator instances", "kosit-validator-configuration-xrechnung"),
];

/// Known not-well-formed inputs (MANIFEST): they must be refused, not converted.
const BROKEN: &[&str] = &["bin001.xml", "ubl007.xml"];

fn round_trip(bytes: &[u8]) -> Result<(), String> {
    let limits = Limits::default();
    let value = xml_to_json(bytes, &limits).map_err(|e| format!("to json: {e}"))?;
    let mut text = Vec::new();
    write_json(bytes, &limits, &mut text).map_err(|e| format!("write_json: {e}"))?;
    let reparsed: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("fast path JSON: {e}"))?;
    if reparsed != value {
        return Err("fast path JSON differs from the Value".into());
    }
    let back = json_to_xml(&value).map_err(|e| format!("to xml: {e}"))?;
    let a = canonical_form(bytes, &limits).map_err(|e| format!("canonical original: {e}"))?;
    let b = canonical_form(&back, &limits).map_err(|e| format!("canonical round trip: {e}"))?;
    if a != b {
        let line = a.lines().zip(b.lines()).position(|(x, y)| x != y).unwrap_or(0);
        return Err(format!("canonical forms differ at line {line}"));
    }
    Ok(())
}

#[test]
fn every_corpus_message_round_trips_losslessly() {
    let Some(dir) = corpus() else {
        return;
    };
    let mut report: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (standard, folder) in STANDARDS {
        for path in xml_files(&dir.join(folder)) {
            let bytes = std::fs::read(&path).expect("readable");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if BROKEN.contains(&name) {
                assert!(xml_to_json(&bytes, &Limits::default()).is_err(), "{} must be refused", path.display());
                continue;
            }
            let entry = report.entry(standard).or_default();
            entry.0 += 1;
            match round_trip(&bytes) {
                Ok(()) => entry.1 += 1,
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    eprintln!("JSON round trip per standard (files, passed):");
    for (standard, (files, passed)) in &report {
        eprintln!("  {standard:32} {files:4} {passed:4}");
    }
    let total: usize = report.values().map(|r| r.0).sum();
    assert!(total > 200, "only {total} corpus messages found");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Not messages, but XML all the same (schemas, WSDLs, code lists): a stress test of the
/// generic mapping on other shapes (xs:documentation mixed content, long code lists).
#[test]
fn every_other_corpus_xml_file_round_trips_too() {
    let Some(dir) = corpus() else {
        return;
    };
    let mut files = 0;
    let mut refused = 0;
    let mut failures = Vec::new();
    for p in all_files(&dir) {
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or_default();
        let schema_like = matches!(ext, "xsd" | "wsdl" | "sch");
        let code_list = ext == "xml" && p.to_string_lossy().contains("code");
        if !schema_like && !code_list {
            continue;
        }
        let bytes = std::fs::read(&p).expect("readable");
        files += 1;
        let limits = Limits { max_elements: 10_000_000, ..Limits::default() };
        let value = match xml_to_json(&bytes, &limits) {
            Ok(v) => v,
            Err(ConvertError::Read(ReadError::Forbidden(_))) if contains(&bytes, b"<!DOCTYPE") => {
                // xmldsig-core-schema.xsd carries a DOCTYPE: refused by design
                refused += 1;
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        let back = json_to_xml(&value).expect("forward output converts back");
        let a = canonical_form(&bytes, &limits).expect("canonical");
        let b = canonical_form(&back, &limits).expect("canonical");
        if a != b {
            failures.push(format!("{}: canonical forms differ", p.display()));
        }
    }
    eprintln!(
        "other XML files (XSD, WSDL, Schematron, code lists): {files}, refused for a DOCTYPE {refused}, failures {}",
        failures.len()
    );
    assert!(files > 300, "only {files} files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
