//! Staging a schema set for libxml2: a temporary copy of its import/include closure in which every
//! `schemaLocation` names a staged local file.
//!
//! Why staging (and not an XML catalog via `XML_CATALOG_FILES`, nor libxml's entity loader): the
//! XML catalog is process-global state read from an environment variable once, which neither
//! merges per-folder catalogs nor can be changed safely in a multi-threaded process; libxml's
//! external entity loader is a global C callback that needs `unsafe` code. A staged copy is plain
//! files: libxml2 sees only local paths, so it cannot reach the network even if a mapping is
//! missing (an unmapped remote URL is an error before libxml2 runs), and `xmllint` compiles the very
//! same staged entry, which the corpus test relies on. The copies exist only in a temporary folder;
//! the vendored originals (some under CC BY-ND) are never modified.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::{CatalogError, SchemaEntry};

const XSD_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema";

/// A staged schema set. The temporary folder is removed on drop.
#[derive(Debug)]
pub struct StagedSchema {
    dir: tempfile::TempDir,
    entry: PathBuf,
    files: usize,
}

impl StagedSchema {
    /// The file to compile (`xmllint --schema` takes the same path).
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    /// The temporary folder holding the staged copies.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Number of schema files staged (the closure of the entries, without the driver).
    pub fn files(&self) -> usize {
        self.files
    }
}

/// One `schemaLocation` attribute value in a schema file: its byte span and its text.
struct Reference {
    start: usize,
    end: usize,
    location: String,
}

pub(super) fn stage(remote: &BTreeMap<String, PathBuf>, schema: &SchemaEntry) -> Result<StagedSchema, CatalogError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CatalogError::Io { path, source }
    };
    let dir = tempfile::Builder::new().prefix("lotse-schema-").tempdir().map_err(io(Path::new("temporary folder")))?;
    // Staged name of every original file, assigned in discovery order; the work list holds files
    // whose references are not yet rewritten.
    let mut names: HashMap<PathBuf, String> = HashMap::new();
    let mut work: Vec<PathBuf> = Vec::new();
    for entry in &schema.entries {
        staged_name(&mut names, &mut work, entry);
    }
    while let Some(original) = work.pop() {
        let bytes = std::fs::read(&original).map_err(io(&original))?;
        let references = references(&bytes).map_err(|message| CatalogError::Xsd {
            schema: schema.id.clone(),
            file: original.clone(),
            message,
        })?;
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut copied = 0;
        for r in references {
            let Some(target) = resolve_location(remote, &original, &r.location) else {
                return Err(CatalogError::UnmappedRemote {
                    schema: schema.id.clone(),
                    file: original.clone(),
                    location: r.location,
                });
            };
            let target = std::fs::canonicalize(&target).map_err(io(&target))?;
            let name = staged_name(&mut names, &mut work, &target);
            out.extend_from_slice(&bytes[copied..r.start]);
            out.extend_from_slice(name.as_bytes());
            copied = r.end;
        }
        out.extend_from_slice(&bytes[copied..]);
        let name = &names[&original];
        let staged = dir.path().join(name);
        std::fs::write(&staged, out).map_err(io(&staged))?;
    }
    let files = names.len();
    let entry = if let [only] = schema.entries.as_slice() {
        dir.path().join(&names[only])
    } else {
        let driver = dir.path().join("lotse-driver.xsd");
        let text = driver_schema(&schema.namespace, schema.entries.iter().map(|e| names[e].as_str()));
        std::fs::write(&driver, text).map_err(io(&driver))?;
        driver
    };
    Ok(StagedSchema { dir, entry, files })
}

/// The staged name of `original`, assigning one (and queueing the file) on first sight. Names are
/// `<n>-<original file name>` with anything but `[A-Za-z0-9._-]` replaced, so they need no URI
/// escaping and error messages still name the original file.
fn staged_name(names: &mut HashMap<PathBuf, String>, work: &mut Vec<PathBuf>, original: &Path) -> String {
    if let Some(n) = names.get(original) {
        return n.clone();
    }
    let base = original.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let name = format!("{:03}-{clean}", names.len());
    names.insert(original.to_path_buf(), name.clone());
    work.push(original.to_path_buf());
    name
}

/// A schema that includes every entry (they share `namespace`), so libxml2 compiles one schema.
fn driver_schema<'a>(namespace: &str, entries: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str("<!-- generated by Lotse: includes every entry schema of one catalog entry -->\n");
    s.push_str(&format!(
        "<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" targetNamespace=\"{}\">\n",
        escape_attr(namespace)
    ));
    for e in entries {
        s.push_str(&format!("  <xs:include schemaLocation=\"{e}\"/>\n"));
    }
    s.push_str("</xs:schema>\n");
    s
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;")
}

/// Every `schemaLocation` of an `xs:import`, `xs:include` or `xs:redefine` in a schema document.
/// Only children of the root `xs:schema` count, as in XSD: anything inside `xs:annotation` that
/// merely looks like an import is skipped.
fn references(bytes: &[u8]) -> Result<Vec<Reference>, String> {
    let mut reader = NsReader::from_reader(bytes);
    let base = bytes.as_ptr() as usize;
    let mut out = Vec::new();
    let mut depth = 0usize;
    loop {
        let event = match reader.read_resolved_event() {
            Ok(event) => event,
            Err(e) => return Err(format!("at byte {}: {e}", reader.error_position())),
        };
        let (ns, e) = match event {
            (ns, Event::Start(e)) => {
                depth += 1;
                if depth != 2 {
                    continue;
                }
                (ns, e)
            }
            (ns, Event::Empty(e)) if depth == 1 => (ns, e),
            (_, Event::End(_)) => {
                depth = depth.saturating_sub(1);
                continue;
            }
            (_, Event::Eof) => break,
            _ => continue,
        };
        let is_xsd = matches!(ns, ResolveResult::Bound(n) if n.as_ref() == XSD_NS);
        if !is_xsd || !matches!(e.local_name().as_ref(), b"import" | b"include" | b"redefine") {
            continue;
        }
        for attr in e.attributes() {
            let attr = attr.map_err(|err| format!("bad attribute: {err}"))?;
            if attr.key.as_ref() != b"schemaLocation" {
                continue;
            }
            // The raw value borrows from `bytes` (the reader works on the slice), so its address
            // gives its offset. Unescaping is for the lookup only; the span is replaced whole.
            let raw: &[u8] = &attr.value;
            let start = (raw.as_ptr() as usize).wrapping_sub(base);
            if start > bytes.len() || start + raw.len() > bytes.len() {
                return Err("schemaLocation value is not a slice of the file".into());
            }
            let location =
                attr.unescape_value().map_err(|err| format!("bad schemaLocation: {err}"))?.trim().to_string();
            out.push(Reference { start, end: start + raw.len(), location });
        }
    }
    Ok(out)
}

/// Resolves a `schemaLocation` offline. `None`: a remote URL without mapping, or an unsupported
/// scheme.
pub(super) fn resolve_location(
    remote: &BTreeMap<String, PathBuf>,
    referring: &Path,
    location: &str,
) -> Option<PathBuf> {
    if let Some(path) = location.strip_prefix("file://") {
        return Some(PathBuf::from(percent_decode(path)));
    }
    if has_scheme(location) {
        return remote.get(location).cloned();
    }
    let dir = referring.parent().unwrap_or(Path::new("."));
    Some(dir.join(percent_decode(location)))
}

/// `scheme:` with a scheme of two or more letters (one letter is a Windows drive).
fn has_scheme(location: &str) -> bool {
    match location.find(':') {
        Some(i) if i >= 2 => location[..i].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')),
        _ => false,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}
