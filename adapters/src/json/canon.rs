//! A canonical text form of a document's infoset, for "is this the same message?" checks.
//!
//! Written independently of the JSON mapping (it reads the token stream itself), so a round
//! trip compared through it tests the mapping rather than agreeing with it by construction.
//!
//! Kept: every element with its qualified name as written and its namespace URI, every
//! attribute (namespace declarations included) with name, namespace URI and normalised value,
//! sorted by name; text with references resolved and adjacent pieces merged, in order.
//! Dropped: the XML declaration, comments, processing instructions, the difference between
//! `<a/>` and `<a></a>` and between CDATA and escaped text, and whitespace-only text in
//! element-only content (an element with child elements and no other text) — indentation.

use crate::Limits;
use crate::reader::{Guard, ReadError, Tok};

struct Frame {
    head: String,
    children: Vec<Node>,
    has_elem: bool,
    has_text: bool,
}

enum Node {
    Text(String),
    Elem(String),
}

/// The canonical form of `xml` (fully checked by the hardened reader first).
pub fn canonical_form(xml: &[u8], limits: &Limits) -> Result<String, ReadError> {
    let mut guard = Guard::new(xml, limits);
    let mut stack: Vec<Frame> = Vec::new();
    let mut result = String::new();
    loop {
        match guard.next()? {
            Tok::Start { name } => {
                let ns = guard.element_namespace(name).map(str::to_owned);
                let mut head = format!("({name} {{{}}}", ns.unwrap_or_default());
                let mut attrs: Vec<String> = guard
                    .attrs()
                    .iter()
                    .map(|a| {
                        let ans = guard.attribute_namespace(a.name).map(str::to_owned);
                        format!("\n@{} {{{}}}={:?}", a.name, ans.unwrap_or_default(), a.value)
                    })
                    .collect();
                attrs.sort();
                head.extend(attrs);
                stack.push(Frame { head, children: Vec::new(), has_elem: false, has_text: false });
            }
            Tok::Text { text, .. } => {
                if let Some(frame) = stack.last_mut() {
                    // (checked here, not taken from the guard's `blank`, to stay independent)
                    if !text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                        frame.has_text = true;
                    }
                    match frame.children.last_mut() {
                        Some(Node::Text(t)) => t.push_str(&text),
                        _ => frame.children.push(Node::Text(text.into_owned())),
                    }
                }
            }
            Tok::End => {
                let Some(frame) = stack.pop() else { continue };
                let drop_whitespace = frame.has_elem && !frame.has_text;
                let mut out = frame.head;
                for child in frame.children {
                    match child {
                        Node::Text(t) if drop_whitespace => debug_assert!(t.trim().is_empty()),
                        Node::Text(t) if t.is_empty() => {}
                        Node::Text(t) => {
                            out.push('\n');
                            out.push_str(&format!("{t:?}"));
                        }
                        Node::Elem(e) => {
                            out.push('\n');
                            out.push_str(&e);
                        }
                    }
                }
                out.push_str("\n)");
                match stack.last_mut() {
                    Some(parent) => {
                        parent.has_elem = true;
                        parent.children.push(Node::Elem(out));
                    }
                    None => result = out,
                }
            }
            Tok::Eof => return Ok(result),
        }
    }
}
