//! Element paths for violations: libxml2 reports a line and a message naming the element; this
//! finds that element in the source bytes and gives its path and start-tag position.
//!
//! libxml2 records an element's line where its start tag ends (the `>`), so the match is on that
//! line and on the element's name from the message. Several candidates (a minified document has
//! every element on line 1): the first not yet reported wins, in document order, which follows
//! libxml2's reporting order for the common case. Lines above 65535 are clamped by libxml2 2.9;
//! such violations may carry no path.

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
    namespace: Option<String>,
    local: String,
    path: String,
    reported: bool,
}

/// Index of the document's elements, built on first use.
pub(super) struct Locator<'a> {
    xml: &'a [u8],
    elements: Option<Vec<Element>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(xml: &'a [u8]) -> Locator<'a> {
        Locator { xml, elements: None }
    }

    pub(super) fn find(&mut self, line: u32, name: Option<(Option<&str>, &str)>) -> Option<Found> {
        let (namespace, local) = name?;
        let xml = self.xml;
        let elements = self.elements.get_or_insert_with(|| index(xml));
        let matches = |e: &Element| e.end_line == line && e.local == local && e.namespace.as_deref() == namespace;
        let pick =
            elements.iter().position(|e| matches(e) && !e.reported).or_else(|| elements.iter().position(matches))?;
        let e = &mut elements[pick];
        e.reported = true;
        Some(Found { line: e.line, column: e.column, path: e.path.clone() })
    }
}

/// Every element with its position and path. Stops quietly at a syntax error (libxml2 already
/// parsed the document, so there is none in practice).
fn index(xml: &[u8]) -> Vec<Element> {
    let mut reader = NsReader::from_reader(xml);
    let mut lines = LineCounter::default();
    let mut out = Vec::new();
    // Per open element: its path and the count of each child name seen so far.
    let mut stack: Vec<(String, Vec<(String, u32)>)> = Vec::new();
    let mut root_seen = false;
    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let Ok((ns, event)) = reader.read_resolved_event() else { break };
        let namespace = match ns {
            ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into_owned()),
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
        let qname = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        // The event starts at `<` after any whitespace text the reader skipped into this event.
        let lt = xml.get(start..end).and_then(|s| s.iter().position(|&b| b == b'<')).map_or(start, |i| start + i);
        let (line, column) = lines.position(xml, lt);
        let (end_line, _) = lines.position(xml, end.saturating_sub(1).max(lt));
        let path = match stack.last_mut() {
            Some((parent, counts)) => {
                let n = match counts.iter_mut().find(|(name, _)| *name == qname) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        counts.push((qname.clone(), 1));
                        1
                    }
                };
                if n > 1 { format!("{parent}/{qname}[{n}]") } else { format!("{parent}/{qname}") }
            }
            None if !root_seen => format!("/{qname}"),
            None => break,
        };
        root_seen = true;
        if !empty {
            stack.push((path.clone(), Vec::new()));
        }
        out.push(Element { end_line, line, column, namespace, local, path, reported: false });
    }
    out
}

/// Turns byte offsets (asked in increasing order, mostly) into 1-based line and column.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: u32,
    line_start: usize,
}

impl LineCounter {
    fn position(&mut self, xml: &[u8], at: usize) -> (u32, u32) {
        let at = at.min(xml.len());
        if at < self.offset {
            *self = LineCounter::default();
        }
        for (i, &b) in xml[self.offset..at].iter().enumerate() {
            if b == b'\n' {
                self.line += 1;
                self.line_start = self.offset + i + 1;
            }
        }
        self.offset = at;
        let column = String::from_utf8_lossy(&xml[self.line_start..at]).chars().count();
        (self.line + 1, u32::try_from(column + 1).unwrap_or(u32::MAX))
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
        let mut l = Locator::new(xml);
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
        let mut l = Locator::new(xml);
        assert_eq!(l.find(1, Some((None, "e"))).map(|f| f.path), Some("/r/e".into()));
        assert_eq!(l.find(1, Some((None, "e"))).map(|f| f.path), Some("/r/e[2]".into()));
        assert_eq!(l.find(1, Some((None, "ü"))).map(|f| f.column), Some(12));
    }
}
