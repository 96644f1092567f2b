//! Where the built-in `schemas/` folder is found at run time.
//!
//! Order, first folder holding a `catalog.toml` wins:
//! 1. env `LOTSE_SCHEMAS_DIR` (explicit: if set, it must be valid, there is no fallback);
//! 2. `<dir of the executable>/../share/lotse/schemas` (an installed package);
//! 3. `<dir of the executable>/schemas` (an unpacked archive or container image);
//! 4. the source tree the binary was built from (`adapters/../schemas`, compile-time path), so
//!    `cargo run` and tests work without setup.

use std::path::{Path, PathBuf};

use super::{CATALOG_FILE, CatalogError};

/// Environment variable that names the built-in schema folder explicitly.
pub const BUILTIN_ENV: &str = "LOTSE_SCHEMAS_DIR";

/// The built-in schema folder, by the order in the module docs.
pub fn locate_builtin() -> Result<PathBuf, CatalogError> {
    if let Some(dir) = std::env::var_os(BUILTIN_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join(CATALOG_FILE).is_file() {
            return Ok(dir);
        }
        return Err(CatalogError::NoBuiltin { tried: format!("{BUILTIN_ENV}={} (no {CATALOG_FILE})", dir.display()) });
    }
    let candidates = candidates(std::env::current_exe().ok().as_deref());
    for dir in &candidates {
        if dir.join(CATALOG_FILE).is_file() {
            return Ok(dir.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(CatalogError::NoBuiltin { tried: tried.join(", ") })
}

/// The non-env candidates, in order.
fn candidates(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(bin_dir) = exe.and_then(Path::parent) {
        out.push(bin_dir.join("../share/lotse/schemas"));
        out.push(bin_dir.join("schemas"));
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_put_the_installed_layout_before_the_source_tree() {
        let c = candidates(Some(Path::new("/opt/lotse/bin/lotse")));
        assert_eq!(c[0], Path::new("/opt/lotse/bin/../share/lotse/schemas"));
        assert_eq!(c[1], Path::new("/opt/lotse/bin/schemas"));
        assert!(c[2].ends_with("adapters/../schemas"), "{:?}", c[2]);
    }

    #[test]
    fn source_tree_candidate_holds_the_vendored_catalog() {
        let c = candidates(None);
        assert_eq!(c.len(), 1);
        assert!(c[0].join(CATALOG_FILE).is_file(), "{} has no catalog", c[0].display());
    }
}
