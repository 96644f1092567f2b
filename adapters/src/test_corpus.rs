//! Where the shared XÖV corpus is, for the unit tests and (by `#[path]`) the integration tests.

use std::path::PathBuf;

/// `../shared/corpus` next to the repository; `None` (skip, with the reason printed) when it is
/// absent, a failure when `CI=true`.
pub fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "corpus missing at {} (required with CI=true)",
        dir.display()
    );
    eprintln!("skipped: corpus not found at {}", dir.display());
    None
}
