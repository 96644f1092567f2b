//! Corpus test: Lotse's verdict agrees with `xmllint --nonet --schema <entry>` on every XML file
//! of the shared corpus (required with `CI=true`; skipped with a reason when the corpus is absent).
//!
//! The entry given to xmllint is the very staged entry Lotse compiles (`Catalog::stage`): the
//! vendored files with remote locations mapped to local copies, plus a driver schema where a
//! catalog entry has several entry files. Run with `--nocapture` for the per-standard table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod common;

use adapters::catalog::Catalog;
use adapters::validate::{ValidateError, Validator, ValidatorOptions, Verdict};

/// Runs xmllint on many files against one schema; returns file -> valid?
fn xmllint(schema: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, bool> {
    let output = Command::new("xmllint")
        .arg("--nonet")
        .arg("--noout")
        .arg("--schema")
        .arg(schema)
        .args(files)
        .output()
        .expect("xmllint runs (apt-get install libxml2-utils)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut out = BTreeMap::new();
    for f in files {
        let name = f.to_string_lossy();
        let valid = stderr.lines().any(|l| l == format!("{name} validates"));
        let invalid = stderr.lines().any(|l| l == format!("{name} fails to validate"));
        assert!(valid != invalid, "xmllint gave no clear verdict for {name}:\n{stderr}");
        out.insert(f.clone(), valid);
    }
    out
}

/// Well-formed by xmllint's parser alone?
fn xmllint_well_formed(file: &Path) -> bool {
    Command::new("xmllint").arg("--nonet").arg("--noout").arg(file).output().expect("xmllint runs").status.success()
}

#[derive(Default)]
struct Tally {
    files: usize,
    valid: usize,
    agree: usize,
}

#[test]
fn verdicts_agree_with_xmllint_on_the_whole_corpus() {
    let Some(corpus) = common::corpus() else { return };
    let catalog = Arc::new(Catalog::load_with_builtin(&[]).expect("built-in catalog"));
    let validator = Validator::new(Arc::clone(&catalog), ValidatorOptions::default()).expect("validator");
    let files = common::xml_files(&corpus);

    let mut by_schema: BTreeMap<String, Vec<(PathBuf, bool)>> = BTreeMap::new();
    let mut unknown_version: Vec<(PathBuf, String, String)> = Vec::new();
    let mut unknown_ns: BTreeMap<String, usize> = BTreeMap::new();
    let mut malformed: Vec<PathBuf> = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("read corpus file");
        match validator.validate(&bytes) {
            Ok(Verdict::Valid { schema }) => by_schema.entry(schema).or_default().push((f.clone(), true)),
            Ok(Verdict::Invalid { schema, violations }) => {
                assert!(!violations.is_empty(), "{}: invalid without violations", f.display());
                by_schema.entry(schema).or_default().push((f.clone(), false));
            }
            Ok(Verdict::UnknownNamespace { namespace: Some(ns), version: Some(v) }) => {
                unknown_version.push((f.clone(), ns, v))
            }
            Ok(Verdict::UnknownNamespace { namespace, .. }) => {
                *unknown_ns.entry(namespace.unwrap_or_else(|| "(none)".into())).or_default() += 1
            }
            Err(ValidateError::Malformed { .. }) => malformed.push(f.clone()),
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }

    let mut disagreements = Vec::new();
    println!("{:<28} {:>6} {:>6} {:>8} {:>6}", "schema", "files", "valid", "invalid", "agree");
    let mut total = Tally::default();
    for (id, results) in &by_schema {
        let entry = catalog.schemas().iter().find(|s| &s.id == id).expect("verdict names a catalog schema");
        let staged = catalog.stage(entry).expect("stage");
        let paths: Vec<PathBuf> = results.iter().map(|(p, _)| p.clone()).collect();
        let reference = xmllint(staged.entry(), &paths);
        let mut t = Tally::default();
        for (p, ours) in results {
            t.files += 1;
            t.valid += usize::from(*ours);
            if reference[p] == *ours {
                t.agree += 1;
            } else {
                disagreements.push(format!("{} [{id}]: lotse {ours}, xmllint {}", p.display(), reference[p]));
            }
        }
        println!("{id:<28} {:>6} {:>6} {:>8} {:>6}", t.files, t.valid, t.files - t.valid, t.agree);
        total.files += t.files;
        total.valid += t.valid;
        total.agree += t.agree;
    }
    println!(
        "{:<28} {:>6} {:>6} {:>8} {:>6}",
        "total",
        total.files,
        total.valid,
        total.files - total.valid,
        total.agree
    );

    // A version no catalog entry has: every schema of that namespace must reject the file too,
    // or Lotse would be passing unvalidated something a vendored schema could have judged.
    let mut version_counts: BTreeMap<String, usize> = BTreeMap::new();
    for (f, ns, v) in &unknown_version {
        *version_counts.entry(format!("{ns} version {v}")).or_default() += 1;
        for entry in catalog.schemas().iter().filter(|s| &s.namespace == ns) {
            let staged = catalog.stage(entry).expect("stage");
            if xmllint(staged.entry(), std::slice::from_ref(f))[f] {
                disagreements.push(format!("{}: unknown version {v}, but {} accepts it", f.display(), entry.id));
            }
        }
    }
    for (what, n) in &version_counts {
        println!("no schema for {what}: {n} files (every vendored schema of the namespace rejects them, checked)");
    }
    for f in &malformed {
        if xmllint_well_formed(f) {
            disagreements.push(format!("{}: lotse says malformed, xmllint parses it", f.display()));
        }
    }
    println!("malformed (xmllint agrees): {}", malformed.len());
    for (ns, n) in &unknown_ns {
        println!("namespace not in the catalog: {ns}: {n} files");
    }

    assert!(disagreements.is_empty(), "disagreements with xmllint:\n{}", disagreements.join("\n"));
    // Anchors from MANIFEST.md, so the test cannot pass by calling everything unknown.
    let expected = ["xbau-2.6", "xbeteiligung-1.2", "xwasser-1.0.0", "xdomea-2.3.0", "xdomea-2.4.0", "xdomea-3.0.0"];
    let expected = expected.iter().chain(&["xjustiz-3.4.1", "ubl-invoice-2.1", "ubl-creditnote-2.1", "cii-d16b"]);
    for id in expected {
        assert!(by_schema.contains_key(*id), "no corpus file was validated against `{id}`");
    }
    for known_invalid in ["monitoring_plan_minimal.xml", "monitoring_plan_maximal.xml", "ubl005.xml"] {
        let hit = by_schema.values().flatten().find(|(p, _)| p.ends_with(known_invalid));
        assert!(matches!(hit, Some((_, false))), "{known_invalid} must be judged invalid, got {hit:?}");
    }
    assert!(malformed.iter().any(|p| p.ends_with("ubl007.xml")), "truncated ubl007.xml must be malformed");
    assert!(malformed.iter().any(|p| p.ends_with("bin001.xml")), "the BMP bin001.xml must be malformed");
}
