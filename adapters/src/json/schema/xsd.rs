//! Loads an XSD set into a small document tree: every file reachable from the entry schemas
//! through `xs:include`, `xs:import` and `xs:redefine`, with QName-valued attributes (`type`,
//! `base`, `ref`, `substitutionGroup`, ...) resolved to `{namespace}local` keys.
//!
//! Schemas are trusted local files (vendored, or mapped by the catalog): this reader does not
//! apply the message hardening (xmldsig's schema carries a DOCTYPE), but it never fetches
//! anything: a `schemaLocation` that is neither a local file nor mapped by the resolver is
//! skipped (its types then map generically).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

pub(crate) const XS: &str = "http://www.w3.org/2001/XMLSchema";

/// One XSD element (`xs:complexType`, ...) with its attributes and children.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Local name (every node is in the XSD namespace; others are dropped).
    pub name: String,
    pub attrs: HashMap<String, String>,
    pub children: Vec<Node>,
    /// Target namespace of the schema document the node comes from.
    pub target_ns: std::rc::Rc<str>,
}

impl Node {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

/// Attributes whose value is a QName and gets resolved.
const QNAME_ATTRS: &[&str] = &["type", "base", "ref", "substitutionGroup", "itemType"];

/// Reads the entry schemas and everything they pull in; returns the `xs:schema` nodes.
pub(crate) fn load(entries: &[PathBuf], resolve: &dyn Fn(&Path, &str) -> Option<PathBuf>) -> Result<Vec<Node>, String> {
    let mut done: HashMap<PathBuf, ()> = HashMap::new();
    let mut queue: Vec<(PathBuf, Option<std::rc::Rc<str>>)> = entries.iter().map(|p| (p.clone(), None)).collect();
    let mut schemas = Vec::new();
    while let Some((path, chameleon_ns)) = queue.pop() {
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if done.insert(key, ()).is_some() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let schema = parse(&bytes, chameleon_ns).map_err(|e| format!("`{}`: {e}", path.display()))?;
        for child in &schema.children {
            if !matches!(child.name.as_str(), "include" | "import" | "redefine" | "override") {
                continue;
            }
            let Some(location) = child.attr("schemaLocation") else { continue };
            let local = path.parent().map(|d| d.join(location)).filter(|p| p.is_file());
            let Some(target) = local.or_else(|| resolve(&path, location)) else { continue };
            // an included schema without a target namespace takes the includer's
            let inherit = (child.name != "import").then(|| schema.target_ns.clone());
            queue.push((target, inherit));
        }
        schemas.push(schema);
    }
    Ok(schemas)
}

/// Parses one schema document into its `xs:schema` node.
fn parse(bytes: &[u8], chameleon_ns: Option<std::rc::Rc<str>>) -> Result<Node, String> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(true);
    // namespace bindings: (prefix, uri, depth)
    let mut bindings: Vec<(String, String, usize)> =
        vec![("xml".into(), "http://www.w3.org/XML/1998/namespace".into(), 0)];
    let mut stack: Vec<Node> = Vec::new();
    let mut target_ns: std::rc::Rc<str> = std::rc::Rc::from("");
    let mut root: Option<Node> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                break;
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let depth = stack.len() + 1;
                let mut node = open(e, depth, &mut bindings)?;
                if stack.is_empty() {
                    let declared = node.attr("targetNamespace").unwrap_or("").to_owned();
                    target_ns = match (&chameleon_ns, declared.is_empty()) {
                        (Some(ns), true) => ns.clone(),
                        _ => std::rc::Rc::from(declared.as_str()),
                    };
                }
                node.target_ns = target_ns.clone();
                let is_xs = node_ns(e, &bindings).as_deref() == Some(XS);
                if !is_xs {
                    // annotations' appinfo and the like: not schema structure
                    node.name = format!("#foreign:{}", node.name);
                }
                if matches!(event, Event::Empty(_)) {
                    bindings.retain(|b| b.2 < depth);
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let depth = stack.len();
                bindings.retain(|b| b.2 < depth);
                let Some(node) = stack.pop() else { break };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let root = root.ok_or("no schema element")?;
    if root.name != "schema" {
        return Err(format!("root element is `{}`, not xs:schema", root.name));
    }
    Ok(root)
}

/// The namespace URI of a start tag's element name.
fn node_ns(e: &BytesStart<'_>, bindings: &[(String, String, usize)]) -> Option<String> {
    let name = String::from_utf8_lossy(e.name().into_inner()).into_owned();
    let prefix = name.split_once(':').map_or("", |(p, _)| p);
    lookup(bindings, prefix).map(str::to_owned)
}

fn lookup<'b>(bindings: &'b [(String, String, usize)], prefix: &str) -> Option<&'b str> {
    bindings.iter().rev().find(|b| b.0 == prefix).map(|b| b.1.as_str())
}

fn open(e: &BytesStart<'_>, depth: usize, bindings: &mut Vec<(String, String, usize)>) -> Result<Node, String> {
    let qname = String::from_utf8_lossy(e.name().into_inner()).into_owned();
    let name = qname.rsplit_once(':').map_or(qname.as_str(), |(_, l)| l).to_owned();
    let mut raw = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(attr.key.into_inner()).into_owned();
        let value = attr.unescape_value().map_err(|e| e.to_string())?.into_owned();
        if key == "xmlns" {
            bindings.push((String::new(), value, depth));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            bindings.push((prefix.to_owned(), value, depth));
        } else {
            raw.push((key, value));
        }
    }
    let mut attrs = HashMap::with_capacity(raw.len());
    for (key, value) in raw {
        let value = if QNAME_ATTRS.contains(&key.as_str()) {
            let (prefix, local) = value.split_once(':').unwrap_or(("", value.as_str()));
            let ns = lookup(bindings, prefix).unwrap_or("");
            format!("{{{ns}}}{local}")
        } else {
            value
        };
        attrs.insert(key, value);
    }
    Ok(Node { name, attrs, children: Vec::new(), target_ns: std::rc::Rc::from("") })
}
