//! Benchmark: XSD validation of the XBau 0200 message (7.5 KB) with the schema compiled once,
//! next to `xmllint --repeat` on the same staged schema (PERFORMANCE.md §3a method:
//! `(repeat − single) / 99`, median of 9 rounds).
//!
//! `cargo bench -p adapters --bench validate`. Needs the shared corpus (`../shared/corpus`).
//! - `validator`: [`Validator::validate`], the hub's path: a copy of the bytes to a worker
//!   thread, parse (recover off, nonet), validate, reply.
//! - `validator_inline`: the same with `workers: 0` (thread-local schemas, no hand-off).
//! - `libxml_same_thread`: libxml2 parse + validate on the calling thread, with no worker hop;
//!   the difference is the cost of the thread hand-off.
//! - `parse_only`: the parse alone (recover off, nonet), to split parse from validation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use adapters::catalog::Catalog;
use adapters::validate::{Validator, ValidatorOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use libxml::parser::{Parser, ParserOptions};
use libxml::schemas::{SchemaParserContext, SchemaValidationContext};

fn xbau_0200() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/corpus/xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/\
         baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    )
}

/// Wall time of one xmllint process, in ms.
fn xmllint_ms(schema: &Path, file: &Path, repeat: bool) -> f64 {
    let mut cmd = Command::new("xmllint");
    cmd.args(["--nonet", "--noout", "--schema"]).arg(schema).arg(file);
    if repeat {
        cmd.arg("--repeat");
    }
    let start = Instant::now();
    let out = cmd.output().expect("xmllint runs");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "xmllint rejects the benchmark file");
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let file = xbau_0200();
    let Ok(xml) = std::fs::read(&file) else {
        eprintln!("skipped: no corpus file {}", file.display());
        return;
    };
    let catalog = Arc::new(Catalog::load_with_builtin(&[]).expect("catalog"));
    let entry = catalog.schema_for("http://www.xleitstelle.de/xbau/2/6", None).expect("xbau").clone();
    let staged = catalog.stage(&entry).expect("stage");

    let options = ValidatorOptions { workers: 1, precompile: true, ..ValidatorOptions::default() };
    let validator = Validator::new(Arc::clone(&catalog), options).expect("validator");
    assert!(validator.validate(&xml).expect("verdict").is_valid());
    let options = ValidatorOptions { workers: 0, precompile: true, ..ValidatorOptions::default() };
    let inline = Validator::new(Arc::clone(&catalog), options).expect("inline validator");
    assert!(inline.validate(&xml).expect("verdict").is_valid());

    // Side by side (PERFORMANCE.md method): each round times xmllint ((repeat - single)/99) and
    // 300 in-process validations of each kind, in flipping order; medians over the rounds.
    let rounds = 9;
    let (mut lint, mut workers, mut local, mut ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let time_lotse = |v: &Validator| {
            let start = Instant::now();
            for _ in 0..300 {
                assert!(v.validate(&xml).is_ok());
            }
            start.elapsed().as_secs_f64() * 1e3 / 300.0
        };
        let (x, w, l);
        if round % 2 == 0 {
            x = (xmllint_ms(staged.entry(), &file, true) - xmllint_ms(staged.entry(), &file, false)) / 99.0;
            w = time_lotse(&validator);
            l = time_lotse(&inline);
        } else {
            l = time_lotse(&inline);
            w = time_lotse(&validator);
            x = (xmllint_ms(staged.entry(), &file, true) - xmllint_ms(staged.entry(), &file, false)) / 99.0;
        }
        lint.push(x);
        workers.push(w);
        local.push(l);
        ratio.push(w / x);
    }
    eprintln!("XBau 0200 ({} bytes), ms per document, median of {rounds} rounds:", xml.len());
    eprintln!("  xmllint --repeat (schema compiled once)  {:.3}", median(lint));
    eprintln!("  Validator (worker thread)                {:.3}", median(workers));
    eprintln!("  Validator (workers: 0, calling thread)   {:.3}", median(local));
    eprintln!("  ratio Validator / xmllint, per round     {:.2}", median(ratio));

    let mut group = c.benchmark_group("validate_xbau_0200");
    group.throughput(criterion::Throughput::Bytes(xml.len() as u64));
    group.bench_function("validator", |b| b.iter(|| validator.validate(&xml)));
    group.bench_function("validator_inline", |b| b.iter(|| inline.validate(&xml)));

    let path = staged.entry().to_str().expect("utf-8 temp path");
    let mut context =
        SchemaValidationContext::from_parser(&mut SchemaParserContext::from_file(path)).expect("compiles");
    let parser = Parser::default();
    group.bench_function("libxml_same_thread", |b| {
        b.iter(|| {
            let options = ParserOptions { recover: false, no_net: true, ..ParserOptions::default() };
            let doc = parser.parse_string_with_options(&xml, options).expect("parses");
            context.validate_document(&doc).is_ok()
        })
    });
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let options = ParserOptions { recover: false, no_net: true, ..ParserOptions::default() };
            parser.parse_string_with_diagnostics(&xml, options).is_ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
