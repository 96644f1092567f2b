//! Shared by the adapters integration tests: where the corpus is, and walking it.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

/// Every file below `dir`, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for p in entries.flatten().map(|e| e.path()) {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn is_xml(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "xml")
}

/// Every `.xml` file below `dir`, sorted.
pub fn xml_files(dir: &Path) -> Vec<PathBuf> {
    files(dir).into_iter().filter(|p| is_xml(p)).collect()
}

/// The `.xml` files directly in `dir` (not below), sorted.
pub fn xml_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| is_xml(p)).collect())
        .unwrap_or_default();
    out.sort();
    out
}
