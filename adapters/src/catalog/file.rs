//! `catalog.toml` as written, and its check: paths relative to the folder, every problem reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CATALOG_FILE, CatalogError, JsonSchemaEntry, SchemaEntry};

/// The only format version this code reads.
const FORMAT: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    format: u32,
    #[serde(default)]
    schema: Vec<RawSchema>,
    #[serde(default)]
    remote: Vec<RawRemote>,
    #[serde(default)]
    json_schema: Vec<RawJsonSchema>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    id: String,
    standard: String,
    version: String,
    namespace: String,
    version_attribute: Option<String>,
    entry: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    url: String,
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonSchema {
    id: String,
    standard: String,
    version: String,
    uri: String,
    file: String,
}

/// What one folder's catalog declares, with absolute paths.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub schemas: Vec<SchemaEntry>,
    pub json_schemas: Vec<JsonSchemaEntry>,
    pub remote: BTreeMap<String, PathBuf>,
}

/// Reads `dir/catalog.toml` and checks it: every referenced file exists inside `dir`.
pub(super) fn load_dir(dir: &Path) -> Result<Loaded, CatalogError> {
    let path = dir.join(CATALOG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Io { path: path.clone(), source })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| CatalogError::Io { path: dir.to_path_buf(), source })?;
    parse(&text, &dir).map_err(|problems| CatalogError::Invalid { path, message: problems.join("; ") })
}

/// Parses catalog text; `dir` is the canonical folder relative paths start from.
pub(super) fn parse(text: &str, dir: &Path) -> Result<Loaded, Vec<String>> {
    let raw: RawCatalog = toml::from_str(text).map_err(|e| vec![e.message().to_string()])?;
    let mut problems = Vec::new();
    if raw.format != FORMAT {
        problems.push(format!("unsupported format {} (this Lotse reads format {FORMAT})", raw.format));
    }
    let mut loaded = Loaded::default();
    for s in raw.schema {
        if s.entry.is_empty() {
            problems.push(format!("schema `{}` has no entry", s.id));
        }
        if s.namespace.is_empty() {
            problems.push(format!("schema `{}` has an empty namespace", s.id));
        }
        if loaded.schemas.iter().any(|o: &SchemaEntry| o.id == s.id) {
            problems.push(format!("schema id `{}` appears twice", s.id));
        }
        let mut entries = Vec::new();
        for e in &s.entry {
            match local_file(dir, e) {
                Ok(p) => entries.push(p),
                Err(m) => problems.push(format!("schema `{}`: {m}", s.id)),
            }
        }
        loaded.schemas.push(SchemaEntry {
            id: s.id,
            standard: s.standard,
            version: s.version,
            namespace: s.namespace,
            version_attribute: s.version_attribute,
            entries,
            catalog_dir: dir.to_path_buf(),
        });
    }
    for r in raw.remote {
        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            problems.push(format!("remote `{}` is not an http(s) URL", r.url));
        }
        match local_file(dir, &r.file) {
            Ok(p) => {
                if loaded.remote.insert(r.url.clone(), p).is_some() {
                    problems.push(format!("remote `{}` appears twice", r.url));
                }
            }
            Err(m) => problems.push(format!("remote `{}`: {m}", r.url)),
        }
    }
    for j in raw.json_schema {
        match local_file(dir, &j.file) {
            Ok(file) => loaded.json_schemas.push(JsonSchemaEntry {
                id: j.id,
                standard: j.standard,
                version: j.version,
                uri: j.uri,
                file,
            }),
            Err(m) => problems.push(format!("json_schema `{}`: {m}", j.id)),
        }
    }
    if problems.is_empty() { Ok(loaded) } else { Err(problems) }
}

/// A relative path inside `dir` that names an existing file, made absolute and canonical.
fn local_file(dir: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if rel.is_absolute() {
        return Err(format!("`{relative}` must be relative to the catalog folder"));
    }
    let path = std::fs::canonicalize(dir.join(rel)).map_err(|e| format!("`{relative}`: {e}"))?;
    if !path.starts_with(dir) {
        return Err(format!("`{relative}` is outside the catalog folder"));
    }
    if !path.is_file() {
        return Err(format!("`{relative}` is not a file"));
    }
    Ok(path)
}
