//! Element paths for violations: libxml2 reports a line and a message naming the element; this
//! finds that element in the source bytes and gives its path and start-tag position.
//!
//! libxml2 records an element's line where its start tag ends (the `>`), so the match is on that
//! line and on the element's name from the message. Several candidates (a minified document has
//! every element on line 1): the first not yet reported wins, in document order, which follows
//! libxml2's reporting order for the common case. Lines above 65535 are clamped by libxml2 2.9;
//! such violations may carry no path.

use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// Where a violation's element is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub line: u32,
    pub column: u32,
    pub path: String,
}

/// The element a libxml2 validity message is about: `Element '{ns}local'...` or
/// `Element 'local'...`. Returns (namespace, local name).
pub(super) fn element_in_message(message: &str) -> Option<(Option<&str>, &str)> {
    let rest = message.strip_prefix("Element '")?;
    let end = rest.find('\'')?;
    let name = &rest[..end];
    if let Some(stripped) = name.strip_prefix('{') {
        let close = stripped.find('}')?;
        return Some((Some(&stripped[..close]), &stripped[close + 1..]));
    }
    Some((None, name))
}

struct Element {
    /// Line of the start tag's `>` (libxml2's line for the node).
    end_line: u32,
    line: u32,
    column: u32,
    /// Index into [`Index::namespaces`]; `None`: no namespace.
    namespace: Option<u32>,
    /// The qualified name as written: `xml[name_at..name_at + name_len]`.
    name_at: usize,
    name_len: usize,
    /// Length of the prefix and colon (0 without a prefix).
    prefix_len: usize,
    /// Index of the parent element; `None` for the root.
    parent: Option<usize>,
    /// Which sibling of this name it is (1-based).
    nth: u32,
    reported: bool,
}

/// The document's elements up to the last line a violation names. An element keeps only its
/// parent's index and the place of its name in the source: a path is built for the few elements
/// that are reported, never for every element (a deep document of long names would otherwise
/// need depth × name length for each element).
struct Index {
    elements: Vec<Element>,
    /// Distinct namespace URIs, interned: one copy each, however many elements use them.
    namespaces: Vec<Vec<u8>>,
}

/// Index of the document's elements, built on first use.
pub(super) struct Locator<'a> {
    xml: &'a [u8],
    /// The largest line any violation names: no element whose start tag begins below it is
    /// indexed.
    last_line: u32,
    index: Option<Index>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(xml: &'a [u8], last_line: u32) -> Locator<'a> {
        Locator { xml, last_line, index: None }
    }

    pub(super) fn find(&mut self, line: u32, name: Option<(Option<&str>, &str)>) -> Option<Found> {
        let (namespace, local) = name?;
        if line > self.last_line {
            return None;
        }
        let xml = self.xml;
        let last_line = self.last_line;
        let index = self.index.get_or_insert_with(|| index(xml, last_line));
        let namespace = match namespace {
            Some(uri) => Some(index.namespaces.iter().position(|n| n == uri.as_bytes())?),
            None => None,
        };
        let matches = |e: &Element| {
            e.end_line == line
                && e.namespace.map(|n| n as usize) == namespace
                && &xml[e.name_at + e.prefix_len..e.name_at + e.name_len] == local.as_bytes()
        };
        let elements = &mut index.elements;
        let pick =
            elements.iter().position(|e| matches(e) && !e.reported).or_else(|| elements.iter().position(matches))?;
        elements[pick].reported = true;
        let e = &elements[pick];
        Some(Found { line: e.line, column: e.column, path: path_of(xml, elements, pick) })
    }
}

/// The path of one element, from its ancestors' names.
fn path_of(xml: &[u8], elements: &[Element], at: usize) -> String {
    let mut chain = Vec::new();
    let mut next = Some(at);
    while let Some(i) = next {
        chain.push(i);
        next = elements[i].parent;
    }
    let mut path = String::new();
    for &i in chain.iter().rev() {
        let e = &elements[i];
        path.push('/');
        path.push_str(&String::from_utf8_lossy(&xml[e.name_at..e.name_at + e.name_len]));
        if e.nth > 1 {
            path.push_str(&format!("[{}]", e.nth));
        }
    }
    path
}

/// Every element whose start tag begins on or above `last_line`, with its position and place in
/// the tree. Stops quietly at a syntax error (libxml2 already parsed the document, so there is
/// none in practice).
fn index(xml: &[u8], last_line: u32) -> Index {
    let mut reader = NsReader::from_reader(xml);
    let mut lines = LineCounter::default();
    let mut elements = Vec::new();
    let mut namespaces: Vec<Vec<u8>> = Vec::new();
    let mut namespace_ids: HashMap<Vec<u8>, u32> = HashMap::new();
    // Per open element: its index and the count of each child name seen so far.
    let mut stack: Vec<(usize, HashMap<&[u8], u32>)> = Vec::new();
    let mut root_seen = false;
    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let Ok((ns, event)) = reader.read_resolved_event() else { break };
        let namespace = match ns {
            ResolveResult::Bound(n) => match namespace_ids.get(n.as_ref()) {
                Some(&id) => Some(id),
                None => {
                    let id = u32::try_from(namespaces.len()).unwrap_or(u32::MAX);
                    namespaces.push(n.as_ref().to_vec());
                    namespace_ids.insert(n.as_ref().to_vec(), id);
                    Some(id)
                }
            },
            _ => None,
        };
        let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let (e, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name_len = e.name().as_ref().len();
        let prefix_len = name_len - e.local_name().as_ref().len();
        // The event starts at `<` after any whitespace text the reader skipped into this event.
        let lt = xml.get(start..end).and_then(|s| s.iter().position(|&b| b == b'<')).map_or(start, |i| start + i);
        let name_at = lt + 1;
        let Some(qname) = xml.get(name_at..name_at + name_len) else { break };
        let (line, column) = lines.position(xml, lt);
        if line > last_line {
            break;
        }
        let (end_line, _) = lines.position(xml, end.saturating_sub(1).max(lt));
        let (parent, nth) = match stack.last_mut() {
            Some((parent, counts)) => {
                let n = counts.entry(qname).or_insert(0);
                *n += 1;
                (Some(*parent), *n)
            }
            None if !root_seen => (None, 1),
            None => break,
        };
        root_seen = true;
        if !empty {
            stack.push((elements.len(), HashMap::new()));
        }
        elements.push(Element {
            end_line,
            line,
            column,
            namespace,
            name_at,
            name_len,
            prefix_len,
            parent,
            nth,
            reported: false,
        });
    }
    Index { elements, namespaces }
}

/// Turns byte offsets (asked in increasing order) into 1-based line and column, counting each
/// byte once: the column is carried forward, not recounted from the line's start (a minified
/// document is one long line).
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: u32,
    /// Characters between the start of the current line and `offset`.
    column: usize,
}

impl LineCounter {
    fn position(&mut self, xml: &[u8], at: usize) -> (u32, u32) {
        let at = at.min(xml.len());
        if at < self.offset {
            *self = LineCounter::default();
        }
        let chunk = &xml[self.offset..at];
        let after_newline = match chunk.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                let newlines = chunk.iter().filter(|&&b| b == b'\n').count();
                self.line = self.line.saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX));
                self.column = 0;
                &chunk[i + 1..]
            }
            None => chunk,
        };
        // Characters, not bytes: every UTF-8 byte but a continuation byte starts one.
        self.column += after_newline.iter().filter(|&&b| b & 0xC0 != 0x80).count();
        self.offset = at;
        (self.line + 1, u32::try_from(self.column + 1).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_name_is_read_from_namespaced_and_plain_messages() {
        assert_eq!(element_in_message("Element '{urn:a}b': This element is not expected."), Some((Some("urn:a"), "b")));
        assert_eq!(element_in_message("Element 'code', attribute 'x': nope"), Some((None, "code")));
        assert_eq!(element_in_message("Missing child"), None);
    }

    #[test]
    fn paths_count_same_name_siblings_and_positions_point_at_the_start_tag() {
        let xml = b"<a:r xmlns:a=\"urn:a\">\n  <x/>\n  <x\n   k=\"v\"/><y>\n</y></a:r>";
        let mut l = Locator::new(xml, u32::MAX);
        assert_eq!(l.find(2, Some((None, "x"))), Some(Found { line: 2, column: 3, path: "/a:r/x".into() }));
        // The second x's start tag ends on line 4, where libxml2 reports it.
        assert_eq!(l.find(4, Some((None, "x"))), Some(Found { line: 3, column: 3, path: "/a:r/x[2]".into() }));
        assert_eq!(l.find(4, Some((None, "y"))).map(|f| f.path), Some("/a:r/y".into()));
        assert_eq!(l.find(1, Some((Some("urn:a"), "r"))).map(|f| f.path), Some("/a:r".into()));
        assert_eq!(l.find(9, Some((None, "y"))), None);
    }

    #[test]
    fn on_one_line_each_report_takes_the_next_unreported_element() {
        let xml = "<r><e/><e/><ü/></r>".as_bytes();
        let mut l = Locator::new(xml, u32::MAX);
        assert_eq!(l.find(1, Some((None, "e"))).map(|f| f.path), Some("/r/e".into()));
        assert_eq!(l.find(1, Some((None, "e"))).map(|f| f.path), Some("/r/e[2]".into()));
        assert_eq!(l.find(1, Some((None, "ü"))).map(|f| f.column), Some(12));
    }
}
