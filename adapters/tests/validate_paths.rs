//! Violations on a real XBau 0200 message point at the element: line, column and path.
//! Needs the shared corpus (required with `CI=true`, skipped with a reason otherwise).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adapters::catalog::Catalog;
use adapters::validate::{Validator, ValidatorOptions, Verdict};

fn xbau_0200() -> Option<PathBuf> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/corpus/xbau-testfiles-arecklies/Input/XBau-Testdateien/2.6/\
         baugenehmigung.antrag.0200_f180ba27-4549-4752-ab01-a7513866faa6.xml",
    );
    if f.is_file() {
        return Some(f);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {} is missing", f.display());
    println!("skipped: no corpus file {}", f.display());
    None
}

#[test]
fn a_broken_header_field_is_reported_with_its_path_and_position() {
    let Some(file) = xbau_0200() else { return };
    let original = std::fs::read_to_string(&file).expect("read");
    let catalog = Arc::new(Catalog::load_with_builtin(&[]).expect("catalog"));
    let validator = Validator::new(catalog, ValidatorOptions { workers: 1, ..Default::default() }).expect("validator");
    assert!(validator.validate(original.as_bytes()).expect("verdict").is_valid());

    // The UUID pattern fails, and an unknown element appears in the author.
    let broken = original.replacen("<nachrichtenUUID>8fa6a8ae-", "<nachrichtenUUID>not-a-uuid-", 1).replacen(
        "<kennung>eca-antragsservice</kennung>",
        "<kennung>eca-antragsservice</kennung><extra/>",
        1,
    );
    let Ok(Verdict::Invalid { schema, violations }) = validator.validate(broken.as_bytes()) else {
        panic!("expected invalid")
    };
    assert_eq!(schema, "xbau-2.6");
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).map(|i| i as u32 + 1);
    let uuid = violations.iter().find(|v| v.path.ends_with("/nachrichtenUUID")).expect("uuid violation");
    assert_eq!(
        uuid.path,
        "/xbau:baugenehmigung.antrag.0200/nachrichtenkopf.g2g/identifikation.nachricht/nachrichtenUUID"
    );
    assert_eq!(Some(uuid.line), line_of("<nachrichtenUUID>"));
    assert_eq!(uuid.column, 7);
    let extra = violations.iter().find(|v| v.path.ends_with("/extra")).expect("extra violation");
    assert_eq!(extra.path, "/xbau:baugenehmigung.antrag.0200/nachrichtenkopf.g2g/autor/extra");
    assert!(extra.message.contains("This element is not expected"), "{}", extra.message);
}
