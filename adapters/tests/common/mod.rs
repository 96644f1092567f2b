//! Shared by the adapters integration tests: where the corpus is, and walking it.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "../../src/test_corpus.rs"]
mod test_corpus;
pub use test_corpus::corpus;

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
