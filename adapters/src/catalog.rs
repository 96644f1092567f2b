//! The schema catalog: which XSD set validates which namespace (and version), and which local file
//! stands in for each remote `schemaLocation` URL.
//!
//! A catalog is a folder with a `catalog.toml` (format in `docs/schemas.md`). Lotse loads the
//! built-in folder ([`locate_builtin`]) and every `[schemas] extra_dirs` folder the same way, and
//! merges them: a namespace and version may be claimed by only one folder, and a remote URL may map
//! to only one file. Loading reads only the TOML files; XSDs are read when a schema is staged
//! ([`Catalog::stage`]) for compilation. Nothing is ever fetched over the network.

mod file;
mod locate;
mod stage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use locate::{BUILTIN_ENV, locate_builtin};
pub use stage::StagedSchema;

/// Name of the catalog file in every schema folder.
pub const CATALOG_FILE: &str = "catalog.toml";

/// Why a catalog could not be loaded or a schema set could not be staged. Every variant is an
/// operator's (or packager's) fault: the files on disk need fixing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid catalog `{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no built-in schema folder found (tried {tried}); set {BUILTIN_ENV}")]
    NoBuiltin { tried: String },
    #[error("schema `{schema}`: `{file}` refers to `{location}`, which no catalog maps to a local file")]
    UnmappedRemote { schema: String, file: PathBuf, location: String },
    #[error("schema `{schema}`: cannot parse `{file}`: {message}")]
    Xsd { schema: String, file: PathBuf, message: String },
}

/// One XSD schema set: the entry schema(s) for a namespace, maybe pinned to a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaEntry {
    /// Unique id, e.g. `xbau-2.6`.
    pub id: String,
    /// Standard name for people, e.g. `XBau`.
    pub standard: String,
    /// Version of the standard this set implements, e.g. `2.6`.
    pub version: String,
    /// Target namespace of the entry schemas (and of the messages' root element).
    pub namespace: String,
    /// Where the standard pins its version in the document (XJustiz: `xjustizVersion`): this
    /// entry only applies to documents whose root, or a child of the root, carries this attribute
    /// with the value [`version`](Self::version).
    pub version_attribute: Option<String>,
    /// Absolute paths of the entry schemas. More than one: Lotse compiles a generated driver
    /// schema that includes them all (they must share the target namespace).
    pub entries: Vec<PathBuf>,
    /// Folder of the catalog that declared this entry.
    pub catalog_dir: PathBuf,
}

/// A JSON Schema the catalog lists (not used for validation yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSchemaEntry {
    pub id: String,
    pub standard: String,
    pub version: String,
    /// The schema's `$id`.
    pub uri: String,
    /// Absolute path of the JSON file.
    pub file: PathBuf,
}

/// Which schema applies to a document, by its root namespace and stated version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection<'a> {
    Schema(&'a SchemaEntry),
    /// No catalog knows the namespace.
    UnknownNamespace,
    /// The namespace is known, but only for other versions than the document states (or the
    /// document states none).
    UnknownVersion,
}

/// All loaded catalogs, merged.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    schemas: Vec<SchemaEntry>,
    json_schemas: Vec<JsonSchemaEntry>,
    remote: BTreeMap<String, PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Catalog {
    /// Loads the built-in folder ([`locate_builtin`]), then each extra folder.
    pub fn load_with_builtin(extra_dirs: &[PathBuf]) -> Result<Catalog, CatalogError> {
        let mut dirs = vec![locate_builtin()?];
        dirs.extend(extra_dirs.iter().cloned());
        Catalog::load(&dirs)
    }

    /// Loads and merges the catalogs of these folders, in order. Reports the first problem.
    pub fn load(dirs: &[PathBuf]) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        for dir in dirs {
            catalog.add_dir(dir)?;
        }
        Ok(catalog)
    }

    /// Loads one more folder into this catalog.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), CatalogError> {
        let loaded = file::load_dir(dir)?;
        let path = dir.join(CATALOG_FILE);
        let invalid = |message: String| CatalogError::Invalid { path: path.clone(), message };
        for entry in &loaded.schemas {
            if self.schemas.iter().any(|s| s.id == entry.id) {
                return Err(invalid(format!("schema id `{}` is already defined", entry.id)));
            }
            for other in self.schemas.iter().filter(|s| s.namespace == entry.namespace) {
                if other.version_attribute.is_none() || entry.version_attribute.is_none() {
                    return Err(invalid(format!(
                        "namespace `{}` is already claimed by schema `{}` (two schemas may share a namespace only \
                         when both set `version_attribute`)",
                        entry.namespace, other.id
                    )));
                }
                if other.version == entry.version {
                    return Err(invalid(format!(
                        "namespace `{}` version `{}` is already claimed by schema `{}`",
                        entry.namespace, entry.version, other.id
                    )));
                }
            }
        }
        for (url, target) in &loaded.remote {
            if let Some(existing) = self.remote.get(url)
                && existing != target
            {
                return Err(invalid(format!("remote `{url}` is already mapped to `{}`", existing.display())));
            }
        }
        self.schemas.extend(loaded.schemas);
        self.json_schemas.extend(loaded.json_schemas);
        self.remote.extend(loaded.remote);
        self.dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// Every schema set, in load order.
    pub fn schemas(&self) -> &[SchemaEntry] {
        &self.schemas
    }

    /// Every JSON Schema listed.
    pub fn json_schemas(&self) -> &[JsonSchemaEntry] {
        &self.json_schemas
    }

    /// The folders loaded, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Remote `schemaLocation` URL -> absolute path of the local file standing in for it.
    pub fn remote_files(&self) -> &BTreeMap<String, PathBuf> {
        &self.remote
    }

    /// The schema set for a namespace: with `version`, the entry of exactly that version; without,
    /// the namespace's entry if it has only one. The cheap lookup for callers that know the
    /// version (the JSON mapper); [`select`](Self::select) applies the document rules.
    pub fn schema_for(&self, namespace: &str, version: Option<&str>) -> Option<&SchemaEntry> {
        let mut matching = self.schemas.iter().filter(|s| s.namespace == namespace);
        match version {
            Some(v) => matching.find(|s| s.version == v),
            None => {
                let first = matching.next()?;
                if matching.next().is_some() { None } else { Some(first) }
            }
        }
    }

    /// The attribute names that pin versions in this namespace (empty for most standards).
    pub fn version_attributes(&self, namespace: &str) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for s in self.schemas.iter().filter(|s| s.namespace == namespace) {
            if let Some(a) = s.version_attribute.as_deref()
                && !names.contains(&a)
            {
                names.push(a);
            }
        }
        names
    }

    /// The schema for a document whose root is in `namespace`. `stated_version(attr)` returns
    /// the value the document gives the version attribute `attr`, if any.
    pub fn select<'a>(&'a self, namespace: &str, stated_version: impl Fn(&str) -> Option<String>) -> Selection<'a> {
        let mut known = false;
        for s in self.schemas.iter().filter(|s| s.namespace == namespace) {
            known = true;
            match s.version_attribute.as_deref() {
                None => return Selection::Schema(s),
                Some(attr) => {
                    if stated_version(attr).as_deref() == Some(s.version.as_str()) {
                        return Selection::Schema(s);
                    }
                }
            }
        }
        if known { Selection::UnknownVersion } else { Selection::UnknownNamespace }
    }

    /// Resolves a `schemaLocation` as libxml2 would, but offline: a relative reference against
    /// the referring file's folder, a remote URL through the catalog's `[[remote]]` map.
    /// `None` for a remote URL no catalog maps.
    pub fn resolve_location(&self, referring_file: &Path, location: &str) -> Option<PathBuf> {
        stage::resolve_location(&self.remote, referring_file, location)
    }

    /// Stages a schema set for compilation: copies the import/include closure of its entries into
    /// a fresh temporary folder, rewriting every `schemaLocation` to the staged copy (remote URLs
    /// through the catalog), and adds a driver schema when the set has several entries. The
    /// originals stay untouched. The staged folder lives as long as the returned value.
    pub fn stage(&self, schema: &SchemaEntry) -> Result<StagedSchema, CatalogError> {
        stage::stage(&self.remote, schema)
    }
}
