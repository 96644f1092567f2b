//! Schema-aware hints for the JSON form, read from an XSD set: which child elements may repeat
//! (`maxOccurs > 1`, also through a repeated sequence, choice or group: always arrays) and which
//! values are integers or booleans (typed).
//!
//! The XSD set is walked with quick-xml (`xsd` module), not with xsd-parser: the JSON form needs
//! only "child name -> (type, repeats?)" and "simple type -> kind", which a 400-line walk gets
//! from every set in the corpus, while xsd-parser's interpreter model is built for code
//! generation (DEPENDENCIES.md §3: it fails on XBau 2.6 and UBL 2.1, the very sets needed here).
//!
//! Matching is by LOCAL name within a type's content model (the JSON form keeps prefixes as
//! written, and senders pick prefixes freely). Substitution groups are followed: a member may
//! stand where its head is declared. `xs:any` content and unknown names map generically.
//!
//! Typing stays lossless: an integer is a JSON number only when its text is canonical (no
//! leading zeros or `+`, fits 64 bits), a boolean only when written `true`/`false`; any other
//! lexical form stays a string. Decimals (`xs:decimal`, `float`, `double`) always stay strings:
//! their text carries precision (`100.00`) that a JSON number would drop.

mod xsd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::emit::Kind;
use xsd::{Node, XS};

/// Type hints for one XSD set (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct Hints {
    types: Vec<TypeInfo>,
    /// Global elements by local name -> type.
    roots: HashMap<String, u32>,
}

#[derive(Debug, Default, Clone)]
struct TypeInfo {
    text: Option<Kind>,
    attrs: HashMap<String, Kind>,
    children: HashMap<String, Child>,
}

#[derive(Debug, Clone, Copy)]
struct Child {
    ty: u32,
    repeated: bool,
}

/// Where in the schema an element sits: the index of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope(u32);

/// Why hints could not be built from an XSD set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the XSD set: {0}")]
pub struct HintsError(String);

impl Hints {
    /// Reads the XSD set of `entries` (and every file they include or import; relative
    /// `schemaLocation`s are resolved next to the referring file, others through `resolve`,
    /// e.g. the catalog's [`crate::catalog::Catalog::resolve_location`]).
    pub fn from_xsd(
        entries: &[PathBuf],
        resolve: &dyn Fn(&Path, &str) -> Option<PathBuf>,
    ) -> Result<Hints, HintsError> {
        let schemas = xsd::load(entries, resolve).map_err(HintsError)?;
        Ok(Builder::new(&schemas).build())
    }

    /// Hints for one schema set of the catalog: its entry XSDs, remote `schemaLocation`s mapped
    /// through the catalog (never fetched).
    pub fn from_catalog(
        catalog: &crate::catalog::Catalog,
        schema: &crate::catalog::SchemaEntry,
    ) -> Result<Hints, HintsError> {
        Hints::from_xsd(&schema.entries, &|file, location| catalog.resolve_location(file, location))
    }

    /// Number of element names with a known type (for tests and diagnostics).
    pub fn global_elements(&self) -> usize {
        self.roots.len()
    }

    pub(crate) fn root_scope(&self, qname: &str) -> Option<Scope> {
        self.roots.get(local(qname)).map(|&t| Scope(t))
    }

    pub(crate) fn child(&self, scope: Option<Scope>, qname: &str) -> Option<Scope> {
        let t = self.types.get(scope?.0 as usize)?;
        t.children.get(local(qname)).map(|c| Scope(c.ty))
    }

    /// Whether `child` may repeat inside `parent`.
    pub(crate) fn is_repeated(&self, parent: Option<Scope>, qname: &str) -> bool {
        let Some(t) = parent.and_then(|s| self.types.get(s.0 as usize)) else {
            return false;
        };
        t.children.get(local(qname)).is_some_and(|c| c.repeated)
    }

    pub(crate) fn text_kind(&self, scope: Option<Scope>) -> Option<Kind> {
        self.types.get(scope?.0 as usize)?.text
    }

    pub(crate) fn attr_kind(&self, scope: Option<Scope>, qname: &str) -> Option<Kind> {
        self.types.get(scope?.0 as usize)?.attrs.get(local(qname)).copied()
    }
}

fn local(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

/// `{ns}local` -> local.
fn key_local(key: &str) -> &str {
    key.rsplit_once('}').map_or(key, |(_, l)| l)
}

fn global_key(node: &Node) -> Option<String> {
    Some(format!("{{{}}}{}", node.target_ns, node.attr("name")?))
}

/// Resolves the raw schema nodes into [`TypeInfo`]s.
struct Builder<'s> {
    elements: HashMap<String, &'s Node>,
    complex: HashMap<String, &'s Node>,
    simple: HashMap<String, &'s Node>,
    groups: HashMap<String, &'s Node>,
    attr_groups: HashMap<String, &'s Node>,
    attributes: HashMap<String, &'s Node>,
    /// substitution group head -> members (direct)
    substitutes: HashMap<String, Vec<String>>,
    types: Vec<TypeInfo>,
    memo: HashMap<String, u32>,
}

impl<'s> Builder<'s> {
    fn new(schemas: &'s [Node]) -> Self {
        let mut b = Builder {
            elements: HashMap::new(),
            complex: HashMap::new(),
            simple: HashMap::new(),
            groups: HashMap::new(),
            attr_groups: HashMap::new(),
            attributes: HashMap::new(),
            substitutes: HashMap::new(),
            types: Vec::new(),
            memo: HashMap::new(),
        };
        for schema in schemas {
            b.collect(schema);
        }
        b
    }

    fn collect(&mut self, parent: &'s Node) {
        for node in &parent.children {
            let Some(key) = global_key(node) else {
                if matches!(node.name.as_str(), "redefine" | "override") {
                    self.collect(node);
                }
                continue;
            };
            let table = match node.name.as_str() {
                "element" => {
                    if let Some(head) = node.attr("substitutionGroup") {
                        self.substitutes.entry(head.to_owned()).or_default().push(key.clone());
                    }
                    &mut self.elements
                }
                "complexType" => &mut self.complex,
                "simpleType" => &mut self.simple,
                "group" => &mut self.groups,
                "attributeGroup" => &mut self.attr_groups,
                "attribute" => &mut self.attributes,
                _ => continue,
            };
            table.entry(key).or_insert(node);
        }
    }

    fn build(mut self) -> Hints {
        let mut roots = HashMap::new();
        let mut keys: Vec<&String> = self.elements.keys().collect();
        keys.sort();
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        for key in keys {
            let node = self.elements[&key];
            let ty = self.element_type(node);
            roots.entry(key_local(&key).to_owned()).or_insert(ty);
        }
        Hints { types: self.types, roots }
    }

    /// The type of an element declaration (named, anonymous, or `anyType`).
    fn element_type(&mut self, el: &'s Node) -> u32 {
        if let Some(t) = el.attr("type") {
            return self.named_type(t);
        }
        if let Some(inline) = el.children.iter().find(|c| matches!(c.name.as_str(), "complexType" | "simpleType")) {
            return self.anonymous(inline);
        }
        if let Some(head) = el.attr("substitutionGroup").and_then(|h| self.elements.get(h).copied()) {
            // no own type: the head's
            if !std::ptr::eq(head, el) {
                return self.element_type(head);
            }
        }
        self.named_type(&format!("{{{XS}}}anyType"))
    }

    fn fresh(&mut self) -> u32 {
        self.types.push(TypeInfo::default());
        (self.types.len() - 1) as u32
    }

    fn named_type(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.memo.get(key) {
            return id;
        }
        let id = self.fresh();
        self.memo.insert(key.to_owned(), id);
        let info = if let Some(node) = self.complex.get(key).copied() {
            self.complex_info(node)
        } else {
            TypeInfo { text: self.simple_kind(key, 0), ..TypeInfo::default() }
        };
        self.types[id as usize] = info;
        id
    }

    fn anonymous(&mut self, node: &'s Node) -> u32 {
        let id = self.fresh();
        let info = if node.name == "complexType" {
            self.complex_info(node)
        } else {
            TypeInfo { text: self.simple_node_kind(node, 0), ..TypeInfo::default() }
        };
        self.types[id as usize] = info;
        id
    }

    /// Kind of a simple type by key (`{ns}name`).
    fn simple_kind(&self, key: &str, depth: usize) -> Option<Kind> {
        if depth > 32 {
            return None;
        }
        if let Some(builtin) = key.strip_prefix(&format!("{{{XS}}}")) {
            return builtin_kind(builtin);
        }
        if let Some(node) = self.simple.get(key) {
            return self.simple_node_kind(node, depth + 1);
        }
        // a complex type with simple content used as a base
        let node = self.complex.get(key)?;
        let content = node.children.iter().find(|c| c.name == "simpleContent")?;
        let derivation = content.children.iter().find(|c| matches!(c.name.as_str(), "extension" | "restriction"))?;
        self.simple_kind(derivation.attr("base")?, depth + 1)
    }

    fn simple_node_kind(&self, node: &Node, depth: usize) -> Option<Kind> {
        let restriction = node.children.iter().find(|c| c.name == "restriction")?;
        match restriction.attr("base") {
            Some(base) => self.simple_kind(base, depth),
            None => {
                let inner = restriction.children.iter().find(|c| c.name == "simpleType")?;
                self.simple_node_kind(inner, depth + 1)
            }
        }
    }

    fn complex_info(&mut self, node: &'s Node) -> TypeInfo {
        let mut info = TypeInfo::default();
        for child in &node.children {
            match child.name.as_str() {
                "complexContent" | "simpleContent" => {
                    let Some(derivation) =
                        child.children.iter().find(|c| matches!(c.name.as_str(), "extension" | "restriction"))
                    else {
                        continue;
                    };
                    let base = derivation.attr("base").unwrap_or_default();
                    if child.name == "simpleContent" {
                        info.text = self.simple_kind(base, 0);
                    }
                    if let Some(base_node) = self.complex.get(base).copied() {
                        let base_id = self.named_type(base);
                        let base_info = self.types[base_id as usize].clone();
                        info.attrs.extend(base_info.attrs);
                        // a restriction restates its content model; an extension appends to the base's
                        if derivation.name == "extension" || child.name == "simpleContent" {
                            info.children.extend(base_info.children);
                        }
                        let _ = base_node;
                    }
                    self.content(derivation, false, &mut info);
                }
                _ => {}
            }
        }
        self.content(node, false, &mut info);
        info
    }

    /// Walks particles and attributes below `node` into `info`.
    fn content(&mut self, node: &'s Node, repeated: bool, info: &mut TypeInfo) {
        for child in &node.children {
            let many = repeated || max_occurs_many(child);
            match child.name.as_str() {
                "sequence" | "choice" | "all" => self.content(child, many, info),
                "group" => {
                    if let Some(group) = child.attr("ref").and_then(|r| self.groups.get(r).copied()) {
                        self.content(group, many, info);
                    }
                }
                "element" => self.particle(child, many, info),
                "attribute" => self.attribute(child, info),
                "attributeGroup" => {
                    if let Some(group) = child.attr("ref").and_then(|r| self.attr_groups.get(r).copied()) {
                        self.content(group, false, info);
                    }
                }
                _ => {}
            }
        }
    }

    fn particle(&mut self, el: &'s Node, repeated: bool, info: &mut TypeInfo) {
        let (name, ty) = match el.attr("ref") {
            Some(r) => {
                let Some(global) = self.elements.get(r).copied() else { return };
                // members of its substitution group may stand in its place
                let mut members = Vec::new();
                self.members(r, &mut members, 0);
                for m in members {
                    if let Some(node) = self.elements.get(&m).copied() {
                        let ty = self.element_type(node);
                        add_child(info, key_local(&m), ty, repeated);
                    }
                }
                (key_local(r).to_owned(), self.element_type(global))
            }
            None => {
                let Some(name) = el.attr("name") else { return };
                (name.to_owned(), self.element_type(el))
            }
        };
        add_child(info, &name, ty, repeated);
    }

    fn members(&self, head: &str, out: &mut Vec<String>, depth: usize) {
        if depth > 8 {
            return;
        }
        for m in self.substitutes.get(head).into_iter().flatten() {
            if !out.contains(m) {
                out.push(m.clone());
                self.members(m, out, depth + 1);
            }
        }
    }

    fn attribute(&mut self, attr: &'s Node, info: &mut TypeInfo) {
        let (name, node) = match attr.attr("ref") {
            Some(r) => (key_local(r).to_owned(), self.attributes.get(r).copied()),
            None => match attr.attr("name") {
                Some(n) => (n.to_owned(), Some(attr)),
                None => return,
            },
        };
        let Some(node) = node else { return };
        let kind = match node.attr("type") {
            Some(t) => self.simple_kind(t, 0),
            None => node.children.iter().find(|c| c.name == "simpleType").and_then(|s| self.simple_node_kind(s, 0)),
        };
        if let Some(kind) = kind {
            info.attrs.insert(name, kind);
        }
    }
}

fn add_child(info: &mut TypeInfo, name: &str, ty: u32, repeated: bool) {
    info.children.entry(name.to_owned()).and_modify(|c| c.repeated |= repeated).or_insert(Child { ty, repeated });
}

fn max_occurs_many(node: &Node) -> bool {
    match node.attr("maxOccurs") {
        Some("unbounded") => true,
        Some(n) => n.trim().parse::<u64>().is_ok_and(|n| n > 1),
        None => false,
    }
}

/// Built-in XSD types that map to a JSON number or boolean.
fn builtin_kind(name: &str) -> Option<Kind> {
    match name {
        "integer" | "int" | "long" | "short" | "byte" | "nonNegativeInteger" | "positiveInteger"
        | "nonPositiveInteger" | "negativeInteger" | "unsignedLong" | "unsignedInt" | "unsignedShort"
        | "unsignedByte" => Some(Kind::Number),
        "boolean" => Some(Kind::Boolean),
        _ => None,
    }
}
