//! The hardened token stream every reader in this crate is built on.
//!
//! [`Guard`] wraps quick-xml's namespace-aware slice reader and turns its events into a small,
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

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};

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
    /// sections come as separate pieces).
    Text(Cow<'a, str>),
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

/// Hard ceiling on nesting depth, whatever [`Limits`] says: quick-xml 0.38.4 counts namespace
/// scopes in a `u16` (`NamespaceResolver::nesting_level`) and overflows past 65,535 open
/// elements (a panic in debug builds, wrong namespace resolution in release builds). Repro:
/// `NsReader::from_str(&"<a>".repeat(70_000))`, then `read_event()` until it fails.
pub(crate) const DEPTH_CEILING: usize = 60_000;

/// The checked token stream over one document.
pub(crate) struct Guard<'a> {
    reader: NsReader<&'a [u8]>,
    input: &'a [u8],
    limits: Limits,
    depth: usize,
    elements: usize,
    phase: Phase,
    /// An empty-element tag was delivered as `Start`; its `End` comes next.
    pending_end: bool,
    attrs: Vec<Attr<'a>>,
    /// Offset of the current token (for error messages).
    token_pos: u64,
}

impl<'a> Guard<'a> {
    pub(crate) fn new(input: &'a [u8], limits: &Limits) -> Self {
        let mut reader = NsReader::from_reader(input);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        config.allow_unmatched_ends = false;
        config.trim_text(false);
        Guard {
            reader,
            input,
            limits: Limits { max_depth: limits.max_depth.min(DEPTH_CEILING), ..*limits },
            depth: 0,
            elements: 0,
            phase: Phase::Start,
            pending_end: false,
            attrs: Vec::new(),
            token_pos: 0,
        }
    }

    /// The attributes of the last `Start` token.
    pub(crate) fn attrs(&self) -> &[Attr<'a>] {
        &self.attrs
    }

    /// Current nesting depth (1 inside the root element).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The namespace URI a qualified element name resolves to in the current scope (`None` for
    /// no namespace). Valid for the name of the last `Start` token.
    pub(crate) fn element_namespace(&self, qname: &str) -> Option<&[u8]> {
        match self.reader.resolver().resolve_element(QName(qname.as_bytes())).0 {
            ResolveResult::Bound(ns) => Some(ns.into_inner()).filter(|ns| !ns.is_empty()),
            _ => None,
        }
    }

    /// The namespace URI of a qualified attribute name of the last `Start` token (`None` for
    /// unprefixed attributes and for namespace declarations).
    pub(crate) fn attribute_namespace(&self, qname: &str) -> Option<&[u8]> {
        if qname == "xmlns" || qname.starts_with("xmlns:") {
            return None;
        }
        match self.reader.resolver().resolve_attribute(QName(qname.as_bytes())).0 {
            ResolveResult::Bound(ns) => Some(ns.into_inner()).filter(|ns| !ns.is_empty()),
            _ => None,
        }
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
        loop {
            self.token_pos = self.reader.buffer_position();
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    let pos = self.reader.error_position();
                    return Err(self.malformed_at(pos, e.to_string()));
                }
            };
            let first = self.phase == Phase::Start;
            if first {
                self.phase = Phase::Prolog;
            }
            match event {
                Event::Start(e) | Event::Empty(e) if self.phase == Phase::Epilog => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    return Err(self.malformed(format!("second root element `{name}` after the document element")));
                }
                Event::Start(e) => {
                    let name = self.open(&e)?;
                    return Ok(Tok::Start { name });
                }
                Event::Empty(e) => {
                    let name = self.open(&e)?;
                    self.pending_end = true;
                    return Ok(Tok::Start { name });
                }
                Event::End(_) => {
                    // quick-xml checked that the name matches the open element.
                    return Ok(self.close());
                }
                Event::Text(t) => {
                    let text = self.text(t.into_inner())?;
                    if self.phase == Phase::Body {
                        return Ok(Tok::Text(text));
                    }
                    if !text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
                        let where_ = if self.phase == Phase::Epilog { "after" } else { "before" };
                        return Err(self.malformed(format!("text {where_} the document element")));
                    }
                }
                Event::CData(c) => {
                    if self.phase != Phase::Body {
                        return Err(self.malformed("CDATA section outside the document element"));
                    }
                    let text = self.text(c.into_inner())?;
                    return Ok(Tok::Text(text));
                }
                Event::GeneralRef(r) => {
                    if self.phase != Phase::Body {
                        return Err(self.malformed("reference outside the document element"));
                    }
                    let raw = r.into_inner();
                    let text = resolve_reference(&raw).map_err(|e| self.reference_error(e))?;
                    return Ok(Tok::Text(text));
                }
                Event::Comment(c) => {
                    self.text(c.into_inner())?;
                }
                Event::PI(pi) => {
                    let target = pi.target();
                    if target.eq_ignore_ascii_case(b"xml") {
                        return Err(self.malformed("xml declaration not at the start of the document"));
                    }
                    check_name(target).map_err(|m| self.malformed(format!("processing instruction: {m}")))?;
                    self.text(pi.into_inner())?;
                }
                Event::Decl(d) => {
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
                Event::DocType(_) => {
                    return Err(ReadError::Forbidden(format!(
                        "DOCTYPE (DTD) at byte {} is not allowed",
                        self.token_pos
                    )));
                }
                Event::Eof => {
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
        let raw_name = e.name().into_inner();
        check_qname(raw_name).map_err(|m| self.malformed(format!("element name: {m}")))?;
        let name = self.rebase_str(raw_name)?;
        if raw_name.contains(&b':')
            && let ResolveResult::Unknown(prefix) = self.reader.resolver().resolve_element(QName(raw_name)).0
        {
            return Err(self.malformed(format!("unbound namespace prefix `{}`", String::from_utf8_lossy(&prefix))));
        }
        self.attrs.clear();
        for attr in e.attributes().with_checks(true) {
            let attr = attr.map_err(|err| self.malformed(err.to_string()))?;
            if self.attrs.len() == self.limits.max_attributes {
                return Err(ReadError::LimitExceeded(format!(
                    "more than {} attributes on element `{name}` at byte {}",
                    self.limits.max_attributes, self.token_pos
                )));
            }
            let key = attr.key.into_inner();
            check_qname(key).map_err(|m| self.malformed(format!("attribute name: {m}")))?;
            let key_str = self.rebase_str(key)?;
            if key.contains(&b':')
                && !key.starts_with(b"xmlns:")
                && let ResolveResult::Unknown(prefix) = self.reader.resolver().resolve_attribute(QName(key)).0
            {
                return Err(self.malformed(format!("unbound namespace prefix `{}`", String::from_utf8_lossy(&prefix))));
            }
            let raw_value = self.rebase(&attr.value);
            let value = match raw_value {
                Some(v) => attribute_value(v),
                None => attribute_value(&attr.value).map(|c| Cow::Owned(c.into_owned())),
            }
            .map_err(|e| self.reference_error(e))?;
            self.attrs.push(Attr { name: key_str, value });
        }
        Ok(name)
    }

    /// Re-borrows a slice that quick-xml handed out from the input for the input's lifetime
    /// (the slice reader never copies names or attribute values).
    fn rebase(&self, part: &[u8]) -> Option<&'a [u8]> {
        let start = (part.as_ptr() as usize).checked_sub(self.input.as_ptr() as usize)?;
        self.input.get(start..start + part.len())
    }

    fn rebase_str(&self, part: &[u8]) -> Result<&'a str, ReadError> {
        // Names were checked to be UTF-8 by `check_qname` and always borrow from the input;
        // the error is unreachable in practice and merely avoids a panic.
        match self.rebase(part).map(std::str::from_utf8) {
            Some(Ok(s)) => Ok(s),
            _ => Err(self.malformed("name not readable in place")),
        }
    }

    /// Decodes character data: UTF-8, XML 1.0 characters, `\r\n` and lone `\r` become `\n`.
    fn text(&self, raw: Cow<'a, [u8]>) -> Result<Cow<'a, str>, ReadError> {
        let text = match raw {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|e| self.utf8_error(e))?),
            Cow::Owned(b) => Cow::Owned(String::from_utf8(b).map_err(|e| self.utf8_error(e.utf8_error()))?),
        };
        if let Some(bad) = text.bytes().find(|&b| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') {
            return Err(self.malformed(format!("control character U+{bad:04X} is not allowed in XML")));
        }
        if text.contains(['\u{FFFE}', '\u{FFFF}']) {
            return Err(self.malformed("non-character U+FFFE/U+FFFF is not allowed in XML"));
        }
        if text.contains('\r') {
            return Ok(Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n")));
        }
        Ok(text)
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

/// Decodes and normalises an attribute value: UTF-8, references resolved, literal tab/CR/LF
/// replaced by a space (XML 1.0 §3.3.3), `<` refused.
fn attribute_value(raw: &[u8]) -> Result<Cow<'_, str>, RefError> {
    let s = std::str::from_utf8(raw).map_err(|_| RefError::Malformed("invalid UTF-8 in attribute value".into()))?;
    let needs_work = s.bytes().any(|b| b < 0x20 || b == b'&' || b == b'<');
    if !needs_work && !s.contains(['\u{FFFE}', '\u{FFFF}']) {
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

/// Checks an XML name (NCName or QName as written: at most one colon, not at either end).
fn check_qname(name: &[u8]) -> Result<(), String> {
    check_name(name)?;
    let colons = name.iter().filter(|&&b| b == b':').count();
    if colons > 1 || name.first() == Some(&b':') || name.last() == Some(&b':') {
        return Err(format!("`{}` is not a valid qualified name", String::from_utf8_lossy(name)));
    }
    Ok(())
}

/// Checks an XML 1.0 name: ASCII is checked exactly; non-ASCII is accepted when it is UTF-8
/// (the exact Unicode classes of the spec are not worth their cost here).
fn check_name(name: &[u8]) -> Result<(), String> {
    let bad = || format!("`{}` is not a valid XML name", String::from_utf8_lossy(name));
    let Some(&first) = name.first() else {
        return Err("empty name".into());
    };
    if first.is_ascii() && !(first.is_ascii_alphabetic() || first == b'_' || first == b':') {
        return Err(bad());
    }
    for &b in name {
        if b.is_ascii() && !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.')) {
            return Err(bad());
        }
    }
    if !name.is_ascii() && std::str::from_utf8(name).is_err() {
        return Err(bad());
    }
    Ok(())
}
