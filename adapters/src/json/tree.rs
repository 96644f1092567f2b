//! A compact, borrowed tree of one document, built from the guarded token stream.
//!
//! Elements, attributes and texts live in flat arrays; each element owns a contiguous range of
//! `content`. While an element is open its content collects on a per-depth scratch list and
//! moves into `content` when it closes, so the whole build allocates a handful of vectors,
//! not one per element. Text borrows from the input unless references had to be resolved.
//!
//! When an element closes its [`Shape`] is decided: this is where the JSON form's rules live.

use std::borrow::Cow;
use std::ops::Range;

use crate::reader::{Attr, Guard, HeaderSink, ReadError, Tok};
use crate::{Limits, Meta};

/// Deepest element nesting the JSON form handles (its writers recurse; serde_json itself stops
/// parsing at 128 levels of JSON nesting).
pub(crate) const JSON_MAX_DEPTH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    Elem(u32),
    Text(u32),
}

/// How an element is written in the JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// No attributes, no child elements: a plain string (`""` when empty).
    Leaf,
    /// An object: `@` attributes, then `#text` or child elements grouped by name (adjacent
    /// repeats as arrays). Whitespace-only text next to child elements is not kept.
    Object,
    /// An object whose `#content` array keeps every child and text node in order: mixed content,
    /// or a name that repeats non-adjacently.
    Ordered,
}

#[derive(Debug)]
pub(crate) struct Elem<'a> {
    pub name: &'a str,
    pub attrs: Range<u32>,
    pub content: Range<u32>,
    pub shape: Shape,
    /// Some child name repeats adjacently (`Object` shape: some value is an array).
    pub runs: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Tree<'a> {
    pub elems: Vec<Elem<'a>>,
    pub attrs: Vec<Attr<'a>>,
    pub texts: Vec<Cow<'a, str>>,
    pub content: Vec<Item>,
    pub root: u32,
}

impl<'a> Tree<'a> {
    pub(crate) fn children(&self, e: &Elem<'a>) -> &[Item] {
        &self.content[e.content.start as usize..e.content.end as usize]
    }

    pub(crate) fn attrs_of(&self, e: &Elem<'a>) -> &[Attr<'a>] {
        &self.attrs[e.attrs.start as usize..e.attrs.end as usize]
    }
}

/// Reads `xml` (fully checked, as [`crate::read_meta`] does) into a tree; also returns the meta.
pub(crate) fn build<'a>(xml: &'a [u8], limits: &Limits) -> Result<(Tree<'a>, Meta), ReadError> {
    let limits = Limits { max_depth: limits.max_depth.min(JSON_MAX_DEPTH), ..*limits };
    let mut guard = Guard::new(xml, &limits);
    // sized from the input so the build does not grow (XÖV: one tag per ~15 bytes; counting
    // `<` first costs more than the rare growth it saves)
    let estimate = xml.len() / 16 + 16;
    let mut tree = Tree {
        elems: Vec::with_capacity(estimate),
        attrs: Vec::with_capacity(estimate / 2),
        texts: Vec::with_capacity(estimate),
        content: Vec::with_capacity(estimate * 2),
        root: 0,
    };
    let mut sink: Option<HeaderSink<'a>> = None;
    // levels[d] collects the content of the open element at depth d (levels[0]: the document)
    let mut levels: Vec<Vec<Item>> = Vec::with_capacity(32);
    levels.push(Vec::with_capacity(4));
    // texted[d]: the open element at depth d has non-whitespace text
    let mut texted: Vec<bool> = Vec::with_capacity(32);
    texted.push(false);
    // the open elements' indices in `tree.elems`
    let mut open: Vec<u32> = Vec::with_capacity(32);
    loop {
        match guard.next()? {
            Tok::Start { name } => {
                let depth = guard.depth();
                let started = match sink.as_mut() {
                    Some(s) if s.is_done() => Ok(()),
                    Some(s) => s.start(name, depth, guard.attrs()),
                    None => HeaderSink::new(name, guard.element_namespace(name), guard.attrs()).map(|s| sink = Some(s)),
                };
                started.map_err(|m| ReadError::malformed(xml, guard.token_pos(), m))?;
                let a0 = tree.attrs.len() as u32;
                guard.take_attrs(&mut tree.attrs);
                let idx = tree.elems.len() as u32;
                tree.elems.push(Elem {
                    name,
                    attrs: a0..tree.attrs.len() as u32,
                    content: 0..0,
                    shape: Shape::Leaf,
                    runs: false,
                });
                open.push(idx);
                if levels.len() <= depth {
                    levels.push(Vec::with_capacity(16));
                    texted.push(false);
                } else {
                    levels[depth].clear();
                    texted[depth] = false;
                }
            }
            Tok::Text { text, blank } => {
                if let Some(s) = sink.as_mut().filter(|s| !s.is_done()) {
                    s.text(&text);
                }
                if !blank && let Some(t) = texted.get_mut(open.len()) {
                    *t = true;
                }
                // the guard delivers text only inside the root element, so a level is open
                let Some(level) = levels.get_mut(open.len()) else {
                    continue;
                };
                match level.last() {
                    Some(Item::Text(i)) => tree.texts[*i as usize].to_mut().push_str(&text),
                    _ => {
                        level.push(Item::Text(tree.texts.len() as u32));
                        tree.texts.push(text);
                    }
                }
            }
            Tok::End => {
                let depth = open.len();
                if let Some(s) = sink.as_mut().filter(|s| !s.is_done()) {
                    s.end(depth).map_err(|m| ReadError::malformed(xml, guard.token_pos(), m))?;
                }
                let Some(idx) = open.pop() else {
                    // unreachable: the guard never closes more than it opened
                    return Err(ReadError::malformed(xml, 0, "unbalanced end tag".into()));
                };
                let items = std::mem::take(&mut levels[depth]);
                close(&mut tree, idx, &items, texted[depth]);
                levels[depth] = items;
                levels[depth - 1].push(Item::Elem(idx));
            }
            Tok::Eof => break,
        }
    }
    let root = levels[0].iter().find_map(|i| match i {
        Item::Elem(e) => Some(*e),
        Item::Text(_) => None,
    });
    match (root, sink) {
        (Some(root), Some(sink)) => {
            tree.root = root;
            Ok((tree, sink.finish()))
        }
        // unreachable: the guard reports a document without root element
        _ => Err(ReadError::malformed(xml, 0, "no document element".into())),
    }
}

/// Decides the shape of a closing element and moves its content into the tree.
fn close(tree: &mut Tree<'_>, idx: u32, items: &[Item], texted: bool) {
    let has_elems = items.iter().any(|i| matches!(i, Item::Elem(_)));
    let has_attrs = {
        let e = &tree.elems[idx as usize];
        e.attrs.start != e.attrs.end
    };
    let mixed = has_elems && texted;
    let mut runs = false;
    let shape = if !has_elems {
        if has_attrs { Shape::Object } else { Shape::Leaf }
    } else {
        let (apart, adjacent) = repeats(tree, items);
        runs = adjacent;
        if mixed || apart { Shape::Ordered } else { Shape::Object }
    };
    let start = tree.content.len() as u32;
    if has_elems && !mixed {
        // element-only content: indentation between children is not part of the data
        tree.content.extend(items.iter().filter(|i| matches!(i, Item::Elem(_))));
    } else {
        tree.content.extend_from_slice(items);
    }
    let e = &mut tree.elems[idx as usize];
    e.content = start..tree.content.len() as u32;
    e.shape = shape;
    e.runs = runs;
}

/// Whether some child name occurs in two runs separated by another name (`a b a`), and
/// whether some name repeats adjacently (`a a`). Allocation-free for the usual handful of
/// children; a set beyond that.
fn repeats(tree: &Tree<'_>, items: &[Item]) -> (bool, bool) {
    let name_of = |i: &Item| match *i {
        Item::Elem(e) => Some(tree.elems[e as usize].name),
        Item::Text(_) => None,
    };
    let mut adjacent = false;
    let mut last = None;
    if items.len() > 64 {
        let mut seen = std::collections::HashSet::new();
        for name in items.iter().filter_map(name_of) {
            if last == Some(name) {
                adjacent = true;
            } else if !seen.insert(name) {
                return (true, adjacent);
            }
            last = Some(name);
        }
        return (false, adjacent);
    }
    for (i, name) in items.iter().enumerate().filter_map(|(i, it)| name_of(it).map(|n| (i, n))) {
        if last == Some(name) {
            adjacent = true;
        } else if items[..i].iter().filter_map(name_of).any(|n| n == name) {
            return (true, adjacent);
        }
        last = Some(name);
    }
    (false, adjacent)
}
