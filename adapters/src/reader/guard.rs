//! The hardened token stream every reader in this crate is built on.
//!
//! [`Guard`] wraps quick-xml's slice reader and turns its events into a small,
//! checked token stream: start tag (with decoded, normalised attributes), end tag, text. It
//! enforces, for every byte it reads:
//! - no DOCTYPE (so no DTD, no entity declarations) -> [`ReadError::Forbidden`];
//! - no entity references but the five predefined ones and character references, in text and
//!   attribute values -> `Forbidden`;
//! - UTF-8 only (a UTF-8 BOM is fine; a declaration naming another encoding is `Malformed`);
//! - XML 1.0 characters only, well-formed names, bound namespace prefixes, matching end tags,
//!   exactly one root element, nothing but whitespace, comments and PIs outside it;
//! - depth, attributes per element and element count within [`Limits`] -> `LimitExceeded`.
//!
//! Comments, processing instructions and the XML declaration are checked and then dropped:
//! nothing downstream needs them. Text is delivered with line ends normalised (`\r\n` -> `\n`)
//! and references resolved; attribute values are normalised as XML 1.0 §3.3.3 says for CDATA
//! attributes (literal tab, CR, LF become spaces).
//!
//! Namespaces are tracked here, not by quick-xml's `NsReader`: the guard walks every start
//! tag's attributes anyway, and `NsReader` walking them a second time cost a third of the
//! reader's time. (It also counts scopes in a `u16` and overflows past 65,535 open elements:
//! a panic in debug builds, wrong resolution in release builds. Repro:
//! `NsReader::from_str(&"<a>".repeat(70_000))`, then `read_event()` until it fails.)

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use quick_xml::Reader;
use quick_xml::events::Event;

use super::ReadError;
use crate::Limits;

/// One attribute of the current start tag: the qualified name as written and its value.
#[derive(Debug, Clone)]
pub(crate) struct Attr<'a> {
    pub name: &'a str,
    pub value: Cow<'a, str>,
}

/// One checked token.
#[derive(Debug)]
pub(crate) enum Tok<'a> {
    /// A start tag (an empty-element tag gives `Start` then `End`). `name` is the qualified name
    /// as written; the attributes are in [`Guard::attrs`] until the next call.
    Start { name: &'a str },
    /// The end tag of the innermost open element.
    End,
    /// A piece of character data (adjacent pieces belong together: text, references and CDATA
    /// sections come as separate pieces). `blank`: the piece is whitespace only.
    Text { text: Cow<'a, str>, blank: bool },
    /// End of the document, after the root element closed.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before anything: the XML declaration may come.
    Start,
    /// Before the root element.
    Prolog,
    /// Inside the root element.
    Body,
    /// After the root element closed.
    Epilog,
}

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Up to this many namespace declarations in scope, a prefix is looked up by a scan.
const SCAN_BINDINGS: usize = 8;

/// Up to this many attributes on a tag, duplicates are found by a scan.
const SCAN_ATTRIBUTES: usize = 8;

/// One namespace declaration in scope: prefix (`""` for the default namespace), URI, and the
/// depth of the element that declared it.
///
/// Lookups scan the declarations from the innermost when there are a few (the common case: all
/// on the root); past [`SCAN_BINDINGS`] they go through `Guard::scopes`, a stack of declarations
/// per prefix, because an element may declare any number of prefixes (up to `max_attributes`,
/// which the JSON form's check leaves high) and every prefixed name would scan them all.
#[derive(Debug)]
struct Binding<'a> {
    prefix: &'a str,
    uri: Cow<'a, str>,
    depth: usize,
}

/// The checked token stream over one document.
pub(crate) struct Guard<'a> {
    reader: Reader<&'a [u8]>,
    bindings: Vec<Binding<'a>>,
    /// Per prefix: indexes into `bindings` of its declarations in scope, innermost last.
    scopes: HashMap<&'a str, Vec<usize>>,
    input: &'a [u8],
    /// The input as text: validated as UTF-8 once, up front, so every name, value and text
    /// is a plain slice of it (no per-token UTF-8 check). Up to the first bad byte if any.
    doc: &'a str,
    /// Position of the first byte that is not UTF-8.
    bad_utf8: Option<usize>,
    limits: Limits,
    depth: usize,
    elements: usize,
    phase: Phase,
    /// An empty-element tag was delivered as `Start`; its `End` comes next.
    pending_end: bool,
    attrs: Vec<Attr<'a>>,
    /// Offset of the current token (for error messages).
    token_pos: u64,
    /// Byte classes of the last text piece.
    last_flags: u8,
}

impl<'a> Guard<'a> {
    pub(crate) fn new(input: &'a [u8], limits: &Limits) -> Self {
        let mut reader = Reader::from_reader(input);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        config.trim_text(false);
        let (doc, bad_utf8) = match std::str::from_utf8(input) {
            Ok(doc) => (doc, None),
            Err(e) => (std::str::from_utf8(&input[..e.valid_up_to()]).unwrap_or_default(), Some(e.valid_up_to())),
        };
        Guard {
            reader,
            bindings: Vec::new(),
            scopes: HashMap::new(),
            input,
            doc,
            bad_utf8,
            limits: *limits,
            depth: 0,
            elements: 0,
            phase: Phase::Start,
            pending_end: false,
            attrs: Vec::new(),
            token_pos: 0,
            last_flags: 0,
        }
    }

    /// The attributes of the last `Start` token.
    pub(crate) fn attrs(&self) -> &[Attr<'a>] {
        &self.attrs
    }

    /// Moves the attributes of the last `Start` token to the end of `out` (no clone).
    pub(crate) fn take_attrs(&mut self, out: &mut Vec<Attr<'a>>) {
        out.append(&mut self.attrs);
    }

    /// Byte offset of the last token (for errors found by the token's consumer).
    pub(crate) fn token_pos(&self) -> u64 {
        self.token_pos
    }

    /// Current nesting depth (1 inside the root element).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The namespace URI a qualified element name resolves to in the current scope (`None` for
    /// no namespace). Valid for the name of the last `Start` token.
    pub(crate) fn element_namespace(&self, qname: &str) -> Option<&str> {
        let prefix = qname.split_once(':').map_or("", |(p, _)| p);
        self.lookup(prefix).filter(|ns| !ns.is_empty())
    }

    /// The URI bound to `prefix` (`""`: the default namespace) in the current scope.
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        if self.bindings.len() <= SCAN_BINDINGS {
            return self.bindings.iter().rev().find(|b| b.prefix == prefix).map(|b| b.uri.as_ref());
        }
        let &innermost = self.scopes.get(prefix)?.last()?;
        Some(self.bindings[innermost].uri.as_ref())
    }

    /// The namespace URI of a qualified attribute name of the last `Start` token (`None` for
    /// unprefixed attributes and for namespace declarations).
    pub(crate) fn attribute_namespace(&self, qname: &str) -> Option<&str> {
        if qname == "xmlns" || qname.starts_with("xmlns:") {
            return None;
        }
        let (prefix, _) = qname.split_once(':')?;
        self.lookup(prefix)
    }

    fn malformed_at(&self, position: u64, message: impl Into<String>) -> ReadError {
        ReadError::malformed(self.input, position, message.into())
    }

    fn malformed(&self, message: impl Into<String>) -> ReadError {
        self.malformed_at(self.token_pos, message)
    }

    /// The next checked token.
    pub(crate) fn next(&mut self) -> Result<Tok<'a>, ReadError> {
        if self.pending_end {
            self.pending_end = false;
            return Ok(self.close());
        }
        if let Some(at) = self.bad_utf8.take() {
            return Err(self.malformed_at(at as u64, "invalid UTF-8 (only UTF-8 is accepted)"));
        }
        loop {
            self.token_pos = self.reader.buffer_position();
            let first = self.phase == Phase::Start;
            if first {
                self.phase = Phase::Prolog;
            }
            // One match on the result, with the event matched in place: unwrapping the `Ok` first
            // made the compiler copy the whole event with wide loads that cannot be forwarded
            // from quick-xml's narrower stores (a stall on every token).
            match self.reader.read_event() {
                Err(e) => {
                    if first {
                        self.phase = Phase::Start;
                    }
                    let pos = self.reader.error_position();
                    return Err(self.malformed_at(pos, e.to_string()));
                }
                Ok(Event::Start(e) | Event::Empty(e)) if self.phase == Phase::Epilog => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    return Err(self.malformed(format!("second root element `{name}` after the document element")));
                }
                Ok(Event::Start(e)) => {
                    let name = self.open(&e)?;
                    return Ok(Tok::Start { name });
                }
                Ok(Event::Empty(e)) => {
                    let name = self.open(&e)?;
                    self.pending_end = true;
                    return Ok(Tok::Start { name });
                }
                Ok(Event::End(_)) => {
                    // quick-xml checked that the name matches the open element.
                    return Ok(self.close());
                }
                Ok(Event::Text(t)) => {
                    let (text, blank) = self.text(t.into_inner())?;
                    if self.last_flags & BRACKET != 0 && text.contains("]]>") {
                        return Err(self.malformed("`]]>` is not allowed in text"));
                    }
                    if self.phase == Phase::Body {
                        return Ok(Tok::Text { text, blank });
                    }
                    if !blank {
                        let where_ = if self.phase == Phase::Epilog { "after" } else { "before" };
                        return Err(self.malformed(format!("text {where_} the document element")));
                    }
                }
                Ok(Event::CData(c)) => {
                    if self.phase != Phase::Body {
                        return Err(self.malformed("CDATA section outside the document element"));
                    }
                    let (text, blank) = self.text(c.into_inner())?;
                    return Ok(Tok::Text { text, blank });
                }
                Ok(Event::GeneralRef(r)) => {
                    if self.phase != Phase::Body {
                        return Err(self.malformed("reference outside the document element"));
                    }
                    let raw = r.into_inner();
                    let text = resolve_reference(&raw).map_err(|e| self.reference_error(e))?;
                    let blank = text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
                    return Ok(Tok::Text { text, blank });
                }
                Ok(Event::Comment(c)) => {
                    self.text(c.into_inner())?;
                }
                Ok(Event::PI(pi)) => {
                    let target = pi.target();
                    if target.eq_ignore_ascii_case(b"xml") {
                        return Err(self.malformed("xml declaration not at the start of the document"));
                    }
                    check_name(target).map_err(|m| self.malformed(format!("processing instruction: {m}")))?;
                    self.text(pi.into_inner())?;
                }
                Ok(Event::Decl(d)) => {
                    if !first {
                        return Err(self.malformed("xml declaration not at the start of the document"));
                    }
                    let version = d.version().map_err(|e| self.malformed(e.to_string()))?;
                    if version.as_ref() != b"1.0" {
                        return Err(self.malformed(format!(
                            "unsupported XML version `{}` (only 1.0)",
                            String::from_utf8_lossy(&version)
                        )));
                    }
                    if let Some(enc) = d.encoding() {
                        let enc = enc.map_err(|e| self.malformed(e.to_string()))?;
                        if !enc.eq_ignore_ascii_case(b"utf-8") {
                            return Err(self.malformed(format!(
                                "declared encoding `{}` is not UTF-8",
                                String::from_utf8_lossy(&enc)
                            )));
                        }
                    }
                }
                Ok(Event::DocType(_)) => {
                    return Err(ReadError::Forbidden(format!(
                        "DOCTYPE (DTD) at byte {} is not allowed",
                        self.token_pos
                    )));
                }
                Ok(Event::Eof) => {
                    return match self.phase {
                        Phase::Epilog => Ok(Tok::Eof),
                        Phase::Body => {
                            Err(self.malformed(format!("document ends inside an element ({} still open)", self.depth)))
                        }
                        _ => Err(self.malformed("no document element")),
                    };
                }
            }
        }
    }

    fn close(&mut self) -> Tok<'a> {
        while self.bindings.last().is_some_and(|b| b.depth == self.depth) {
            if let Some(b) = self.bindings.pop()
                && let Some(stack) = self.scopes.get_mut(b.prefix)
            {
                stack.pop();
                if stack.is_empty() {
                    self.scopes.remove(b.prefix);
                }
            }
        }
        self.depth -= 1;
        if self.depth == 0 {
            self.phase = Phase::Epilog;
        }
        Tok::End
    }

    /// Checks a start tag, records its attributes, and returns its name.
    fn open(&mut self, e: &quick_xml::events::BytesStart<'_>) -> Result<&'a str, ReadError> {
        self.phase = Phase::Body;
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(ReadError::LimitExceeded(format!(
                "nesting depth exceeds {} at byte {}",
                self.limits.max_depth, self.token_pos
            )));
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(ReadError::LimitExceeded(format!(
                "more than {} elements (at byte {})",
                self.limits.max_elements, self.token_pos
            )));
        }
        let raw_name = self.rebase(e.name().into_inner())?;
        let (name, colon) = qname(raw_name).map_err(|m| self.malformed(format!("element name: {m}")))?;
        self.attrs.clear();
        let mut prefixed_attrs = false;
        // quick-xml's duplicate check allocates per tag; the one below does not while a tag has
        // a few attributes, and switches to a set past that (a scan per attribute is quadratic:
        // 10^12 comparisons for the 1.8M attributes a 16 MiB JSON form can put on one element)
        let mut seen: Option<HashSet<&'a str>> = None;
        for attr in e.attributes().with_checks(false) {
            let attr = attr.map_err(|err| self.malformed(err.to_string()))?;
            if self.attrs.len() == self.limits.max_attributes {
                return Err(ReadError::LimitExceeded(format!(
                    "more than {} attributes on element `{name}` at byte {}",
                    self.limits.max_attributes, self.token_pos
                )));
            }
            let key = self.rebase(attr.key.into_inner())?;
            let (key, key_colon) = qname(key).map_err(|m| self.malformed(format!("attribute name: {m}")))?;
            let duplicate = match seen.as_mut() {
                Some(seen) => !seen.insert(key),
                None if self.attrs.len() < SCAN_ATTRIBUTES => self.attrs.iter().any(|a| a.name == key),
                None => {
                    let mut set: HashSet<&'a str> = self.attrs.iter().map(|a| a.name).collect();
                    let duplicate = !set.insert(key);
                    seen = Some(set);
                    duplicate
                }
            };
            if duplicate {
                return Err(self.malformed(format!("duplicated attribute `{key}`")));
            }
            let value = attribute_value(self.rebase(&attr.value)?).map_err(|e| self.reference_error(e))?;
            let declared = match key_colon {
                0 if key == "xmlns" => Some(""),
                5 if key.starts_with("xmlns") => Some(&key[6..]),
                0 => None,
                _ => {
                    prefixed_attrs = true;
                    None
                }
            };
            if let Some(prefix) = declared {
                if !prefix.is_empty() && value.is_empty() {
                    return Err(self.malformed(format!("namespace prefix `{prefix}` bound to an empty URI")));
                }
                if prefix == "xmlns" || (prefix == "xml" && value != XML_NS) {
                    return Err(self.malformed(format!("reserved prefix `{prefix}` cannot be declared")));
                }
                self.scopes.entry(prefix).or_default().push(self.bindings.len());
                self.bindings.push(Binding { prefix, uri: value.clone(), depth: self.depth });
            }
            self.attrs.push(Attr { name: key, value });
        }
        // prefixes resolve after the tag's own declarations are in scope
        if colon != 0 && self.lookup(&name[..colon]).is_none() {
            return Err(self.malformed(format!("unbound namespace prefix `{}`", &name[..colon])));
        }
        if prefixed_attrs {
            for a in &self.attrs {
                if let Some((prefix, _)) = a.name.split_once(':')
                    && prefix != "xmlns"
                    && self.lookup(prefix).is_none()
                {
                    return Err(self.malformed(format!("unbound namespace prefix `{prefix}`")));
                }
            }
        }
        Ok(name)
    }

    /// Re-borrows a slice that quick-xml handed out from the input for the input's lifetime
    /// (the slice reader never copies names or attribute values).
    /// The error is unreachable in practice (the slice reader hands out slices of its input,
    /// which is valid UTF-8 by now, and cuts only at ASCII delimiters) and merely avoids a panic.
    #[inline]
    fn rebase(&self, part: &[u8]) -> Result<&'a str, ReadError> {
        let start = (part.as_ptr() as usize).wrapping_sub(self.input.as_ptr() as usize);
        self.doc.get(start..start.wrapping_add(part.len())).ok_or_else(|| self.malformed("token outside the input"))
    }

    /// Decodes character data: UTF-8, XML 1.0 characters, `\r\n` and lone `\r` become `\n`.
    fn text(&mut self, raw: Cow<'a, [u8]>) -> Result<(Cow<'a, str>, bool), ReadError> {
        // One table-driven pass finds everything that needs a closer look; the common case
        // (ASCII text, indentation) needs no other pass.
        let flags = raw.iter().fold(0u8, |acc, &b| acc | BYTE_CLASS[b as usize]);
        self.last_flags = flags;
        if flags & CONTROL != 0 {
            let bad = raw.iter().find(|&&b| BYTE_CLASS[b as usize] & CONTROL != 0).copied().unwrap_or(0);
            return Err(self.malformed(format!("control character U+{bad:04X} is not allowed in XML")));
        }
        let text = match raw {
            Cow::Borrowed(b) => Cow::Borrowed(self.rebase(b)?),
            Cow::Owned(b) => Cow::Owned(String::from_utf8(b).map_err(|e| self.utf8_error(e.utf8_error()))?),
        };
        if flags & NON_ASCII != 0 && text.contains(['\u{FFFE}', '\u{FFFF}']) {
            return Err(self.malformed("non-character U+FFFE/U+FFFF is not allowed in XML"));
        }
        let blank = flags & NOT_BLANK == 0;
        if flags & CR != 0 {
            return Ok((Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n")), blank));
        }
        Ok((text, blank))
    }

    fn utf8_error(&self, e: std::str::Utf8Error) -> ReadError {
        self.malformed_at(self.token_pos + e.valid_up_to() as u64, "invalid UTF-8")
    }

    fn reference_error(&self, e: RefError) -> ReadError {
        match e {
            RefError::Entity(name) => {
                ReadError::Forbidden(format!("entity reference `&{name};` at byte {} is not allowed", self.token_pos))
            }
            RefError::Malformed(m) => self.malformed(m),
        }
    }
}

const CONTROL: u8 = 1;
const CR: u8 = 2;
const NON_ASCII: u8 = 4;
const NOT_BLANK: u8 = 8;
const BRACKET: u8 = 16;

/// Byte classes for the text scan: C0 controls other than tab/LF/CR, CR, non-ASCII, and
/// everything but the four whitespace characters.
static BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if b < 0x20 && b != 0x09 && b != 0x0A && b != 0x0D {
            CONTROL | NOT_BLANK
        } else if b == 0x0D {
            CR
        } else if b == 0x09 || b == 0x0A || b == 0x20 {
            0
        } else if b >= 0x80 {
            NON_ASCII | NOT_BLANK
        } else if b == b']' as usize {
            BRACKET | NOT_BLANK
        } else {
            NOT_BLANK
        };
        b += 1;
    }
    t
};

enum RefError {
    /// A general entity other than the five predefined ones.
    Entity(String),
    Malformed(String),
}

/// Resolves the body of a reference (`amp`, `#38`, `#x26`).
fn resolve_reference<'a>(body: &[u8]) -> Result<Cow<'a, str>, RefError> {
    let predefined = match body {
        b"lt" => "<",
        b"gt" => ">",
        b"amp" => "&",
        b"apos" => "'",
        b"quot" => "\"",
        _ => "",
    };
    if !predefined.is_empty() {
        return Ok(Cow::Borrowed(predefined));
    }
    let Some(num) = body.strip_prefix(b"#") else {
        return Err(RefError::Entity(String::from_utf8_lossy(body).into_owned()));
    };
    let code = match num.strip_prefix(b"x") {
        Some(hex) => parse_number(hex, 16),
        None => parse_number(num, 10),
    };
    match code.and_then(char::from_u32) {
        Some(c) if is_xml_char(c) => Ok(Cow::Owned(c.to_string())),
        _ => Err(RefError::Malformed(format!("invalid character reference `&{};`", String::from_utf8_lossy(body)))),
    }
}

fn parse_number(digits: &[u8], radix: u32) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let s = std::str::from_utf8(digits).ok()?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, radix).ok()
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Bytes that send an attribute value down the slow path: controls (tab, CR, LF included), `&`,
/// `<`, and 0xEF, the lead byte of U+FFFE/U+FFFF (and of other characters: then the slow path
/// merely finds nothing to do). One load per byte instead of four comparisons.
static ATTR_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b == b'&' as usize || b == b'<' as usize || b == 0xEF;
        b += 1;
    }
    t
};

/// Decodes and normalises an attribute value: UTF-8, references resolved, literal tab/CR/LF
/// replaced by a space (XML 1.0 §3.3.3), `<` refused.
fn attribute_value(s: &str) -> Result<Cow<'_, str>, RefError> {
    if !s.bytes().any(|b| ATTR_SPECIAL[b as usize]) {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['&', '<', '\t', '\n', '\r', '\u{FFFE}', '\u{FFFF}']) {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().unwrap_or(' ');
        match c {
            '&' => {
                let Some(end) = rest[i..].find(';') else {
                    return Err(RefError::Malformed("unterminated reference in attribute value".into()));
                };
                let body = &rest[i + 1..i + end];
                out.push_str(&resolve_reference(body.as_bytes())?);
                rest = &rest[i + end + 1..];
                continue;
            }
            '<' => return Err(RefError::Malformed("`<` in attribute value".into())),
            '\r' if rest[i + 1..].starts_with('\n') => {
                out.push(' ');
                rest = &rest[i + 2..];
                continue;
            }
            '\t' | '\n' | '\r' => out.push(' '),
            _ => return Err(RefError::Malformed("non-character in attribute value".into())),
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
    if let Some(bad) = out.bytes().find(|&b| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') {
        return Err(RefError::Malformed(format!("control character U+{bad:04X} in attribute value")));
    }
    Ok(Cow::Owned(out))
}

const NAME_CHAR: u8 = 1;
const NAME_START: u8 = 2;
const COLON: u8 = 4;
const HIGH: u8 = 8;
const BAD: u8 = 16;

/// Byte classes for names: ASCII exactly as XML 1.0 says; names with non-ASCII bytes are then
/// checked character by character ([`is_name_start`], [`is_name_char`]).
static NAME_CLASS: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() || c == b'_' {
            NAME_CHAR | NAME_START
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            NAME_CHAR
        } else if c == b':' {
            COLON
        } else if c >= 0x80 {
            NAME_CHAR | NAME_START | HIGH
        } else {
            BAD
        };
        b += 1;
    }
    t
};

/// Checks a qualified name as written (`local` or `prefix:local`, both XML names) and returns
/// it as `&str` with the position of its colon (0: none).
fn qname(name: &str) -> Result<(&str, usize), String> {
    let bad = || format!("`{name}` is not a valid XML name");
    let bytes = name.as_bytes();
    // one branch-free pass over the classes; the colon is located only when there is one
    let all = bytes.iter().fold(0u8, |acc, &b| acc | NAME_CLASS[b as usize]);
    let mut colon = 0;
    if all & COLON != 0 {
        let first = bytes.iter().position(|&b| b == b':').unwrap_or(0);
        // at most one colon, and not the first byte
        if first == 0 || bytes.get(first + 1..).is_some_and(|rest| rest.contains(&b':')) {
            return Err(bad());
        }
        colon = first;
    }
    let starts_ok = |i: usize| name.as_bytes().get(i).is_some_and(|&b| NAME_CLASS[b as usize] & NAME_START != 0);
    if all & BAD != 0 || !starts_ok(0) || (colon != 0 && !starts_ok(colon + 1)) {
        return Err(bad());
    }
    if all & HIGH != 0 {
        let exact = |part: &str| {
            let mut chars = part.chars();
            chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
        };
        let ok = match name.split_once(':') {
            Some((prefix, local)) => exact(prefix) && exact(local),
            None => exact(name),
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok((name, colon))
}

/// XML 1.0 (fifth edition) `NameStartChar`, without the colon.
pub(crate) fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (fifth edition) `NameChar`, without the colon.
pub(crate) fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Checks an XML name that may not be qualified (processing instruction targets).
fn check_name(name: &[u8]) -> Result<(), String> {
    let name = std::str::from_utf8(name).map_err(|_| "name is not UTF-8".to_owned())?;
    match qname(name) {
        Ok((_, 0)) => Ok(()),
        Ok(_) => Err(format!("`{name}` is not a valid XML name")),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::{ATTR_SPECIAL, attribute_value, qname};

    #[test]
    fn attribute_fast_path_table_is_the_byte_predicate() {
        for b in 0..=255u8 {
            let expected = b < 0x20 || b == b'&' || b == b'<' || b == 0xEF;
            assert_eq!(ATTR_SPECIAL[b as usize], expected, "byte {b:#x}");
        }
        let normalised = attribute_value("a\tb\r\nc&amp;\u{e4}").map_err(|_| ()).map(|v| v.into_owned());
        assert_eq!(normalised, Ok("a b c&\u{e4}".to_owned()));
        assert!(attribute_value("a<b").is_err());
        assert!(attribute_value("a\u{FFFE}").is_err());
    }

    #[test]
    fn qualified_names_allow_exactly_one_inner_colon() {
        assert_eq!(qname("a:b"), Ok(("a:b", 1)));
        assert_eq!(qname("xbau:baugenehmigung.antrag.0200"), Ok(("xbau:baugenehmigung.antrag.0200", 4)));
        assert_eq!(qname("name"), Ok(("name", 0)));
        assert_eq!(qname("\u{e4}b:c\u{b7}"), Ok(("\u{e4}b:c\u{b7}", 3)));
        for bad in [":a", "a:", "a::b", "a:b:c", "::", ":", "", "1a", "a:1", "a b", "-a", "a:-b", "\u{b7}a"] {
            assert!(qname(bad).is_err(), "{bad:?} accepted");
        }
    }
}
