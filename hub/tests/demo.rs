//! The README's run command: `lotse demo` routes the shipped samples to the sample receiver.

use std::process::Command;

#[test]
fn the_demo_delivers_every_shipped_sample_and_shows_dedup_and_dtd_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_lotse"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run lotse demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lotse demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("demo ok: every sample was delivered"), "{stdout}");
    assert!(stdout.contains("(duplicate: answered with the first receipt, stored once)"), "{stdout}");
    assert!(stdout.contains("-> 400 refused: DOCTYPE"), "{stdout}");
    // Five samples, one fanned out to two endpoints: six deliveries, each written once.
    let received = dir.path().join("received");
    let mut files = Vec::new();
    for endpoint in std::fs::read_dir(&received).expect("received dir") {
        let endpoint = endpoint.expect("entry").path();
        if endpoint.is_dir() {
            for f in std::fs::read_dir(&endpoint).expect("endpoint dir") {
                files.push(f.expect("file").path());
            }
        }
    }
    assert_eq!(files.len(), 6, "{files:?}");
    let json: Vec<_> = files.iter().filter(|f| f.extension().is_some_and(|e| e == "json")).collect();
    assert_eq!(json.len(), 1, "the water authority gets the JSON form: {files:?}");
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(json[0]).expect("read")).expect("valid JSON");
    assert!(body.get("xwas:vorgang.transportieren.2010").is_some(), "{body}");
}
