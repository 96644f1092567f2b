//! Throughput of the adapters on real corpus messages (`cargo bench -p adapters`), MB/s of
//! input XML (criterion reports it as "thrpt"), next to quick-xml merely tokenizing the same
//! bytes (the physical limit). Needs `../shared/corpus`; without it the bench says so and
//! measures nothing.

use std::path::PathBuf;
use std::time::Duration;

use adapters::json::{json_to_xml, write_json, xml_to_json};
use adapters::{Limits, read_header, read_meta};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quick_xml::Reader;
use quick_xml::events::Event;

const INPUTS: &[(&str, &str)] = &[
    (
        "xbau-0200",
        "xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    ),
    ("xjustiz-synth2", "xjustiz-testdaten-xjv/code/XJustiz-Testdaten/Beispiel_synthetisch2.xml"),
    ("xwasser-quality-max", "xwasser-hd-gmbh/tests/quality_report_maximal.xml"),
    ("cii-03.07a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/03.07a-INVOICE_uncefact.xml"),
    ("ubl-03.07a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/03.07a-INVOICE_ubl.xml"),
    ("ubl-01.01a", "kosit-xrechnung-testsuite/src/test/business-cases/standard/01.01a-INVOICE_ubl.xml"),
];

fn tokenize(xml: &[u8]) -> usize {
    let mut reader = Reader::from_reader(xml);
    let mut n = 0;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

fn benches(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if !dir.is_dir() {
        eprintln!("skipped: corpus not found at {}", dir.display());
        return;
    }
    let limits = Limits::default();
    for (label, rel) in INPUTS {
        let Ok(xml) = std::fs::read(dir.join(rel)) else {
            eprintln!("skipped {label}: {rel} not found");
            continue;
        };
        let json = xml_to_json(&xml, &limits).expect("corpus message converts");
        let mut group = c.benchmark_group(*label);
        group.throughput(Throughput::Bytes(xml.len() as u64));
        group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
        group.bench_function("quick-xml tokenize", |b| b.iter(|| tokenize(std::hint::black_box(&xml))));
        group.bench_function("read_header (routing)", |b| b.iter(|| read_header(std::hint::black_box(&xml), &limits)));
        group.bench_function("read_meta (intake, whole doc)", |b| {
            b.iter(|| read_meta(std::hint::black_box(&xml), &limits))
        });
        let mut out = Vec::with_capacity(xml.len() * 2);
        group.bench_function("xml->json text (write_json)", |b| {
            b.iter(|| {
                out.clear();
                write_json(std::hint::black_box(&xml), &limits, &mut out)
            })
        });
        group.bench_function("xml->json Value", |b| b.iter(|| xml_to_json(std::hint::black_box(&xml), &limits)));
        group.bench_function("json Value->xml", |b| b.iter(|| json_to_xml(std::hint::black_box(&json))));
        group.finish();
    }
}

criterion_group!(convert, benches);
criterion_main!(convert);
