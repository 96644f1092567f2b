//! The hardened streaming reader and header extraction.
//!
//! Two entry points, one machinery (`guard` checks every token, `header` collects the meta):
//!
//! | function | reads | use it for |
//! |---|---|---|
//! | [`read_meta`] | the WHOLE document: every byte is checked (DTD, entities, UTF-8, limits, well-formedness) | intake: a message Lotse accepts |
//! | [`read_header`] | only up to the end of the header, then stops | the routing fast path over bytes that were already checked (re-reading a stored message), or peeking |
//!
//! `read_header` checks what it reads just as strictly, but says nothing about the rest of the
//! document: a DOCTYPE cannot hide after the header (it must come before the root), but an
//! undeclared entity or a mismatched tag in the body can. Never accept a message on
//! `read_header` alone.
//!
//! Header formats and the keys built from them are documented in `docs/json-mapping.md`
//! ("Header meta") and on [`Meta`].

mod guard;
mod header;
#[cfg(test)]
mod tests;

#[allow(unused_imports)] // used by the JSON form
pub(crate) use guard::{Attr, Guard, Tok, is_name_char, is_name_start};
pub(crate) use header::HeaderSink;

use crate::{Limits, Meta};

/// Why a document could not be read. Every variant is the sender's fault: retrying the same
/// bytes cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Not well-formed XML (or not UTF-8). `message` starts with `line L, column C: `.
    #[error("malformed XML at byte {position}: {message}")]
    Malformed { position: u64, message: String },
    /// Well-formed but refused on principle: a DOCTYPE (DTD), an entity reference.
    #[error("refused: {0}")]
    Forbidden(String),
    /// Depth, attribute count or element count above [`Limits`].
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
}

impl ReadError {
    /// A `Malformed` error with line and column computed from the byte position.
    pub(crate) fn malformed(input: &[u8], position: u64, message: String) -> Self {
        let end = usize::try_from(position).unwrap_or(usize::MAX).min(input.len());
        let before = &input[..end];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        ReadError::Malformed { position, message: format!("line {line}, column {column}: {message}") }
    }
}

/// Reads the routing meta of an XML message and checks the WHOLE document (intake).
///
/// Fails with `Forbidden` on a DOCTYPE or an entity reference other than the five predefined
/// ones, `LimitExceeded` beyond `limits`, and `Malformed` on anything not well-formed UTF-8 XML.
pub fn read_meta(xml: &[u8], limits: &Limits) -> Result<Meta, ReadError> {
    scan(xml, limits, false)
}

/// Reads the routing meta and stops at the end of the header (routing fast path). Only the
/// part read is checked: see the module documentation.
pub fn read_header(xml: &[u8], limits: &Limits) -> Result<Meta, ReadError> {
    scan(xml, limits, true)
}

fn scan(xml: &[u8], limits: &Limits, stop_early: bool) -> Result<Meta, ReadError> {
    let mut guard = Guard::new(xml, limits);
    let mut sink: Option<HeaderSink<'_>> = None;
    loop {
        match guard.next()? {
            Tok::Start { name } => {
                let started = match sink.as_mut() {
                    Some(sink) if sink.is_done() => Ok(()),
                    Some(sink) => sink.start(name, guard.depth(), guard.attrs()),
                    None => HeaderSink::new(name, guard.element_namespace(name), guard.attrs()).map(|s| sink = Some(s)),
                };
                started.map_err(|m| ReadError::malformed(xml, guard.token_pos(), m))?;
            }
            Tok::Text { text, .. } => {
                if let Some(sink) = sink.as_mut() {
                    sink.text(&text);
                }
            }
            Tok::End => {
                if let Some(sink) = sink.as_mut() {
                    sink.end(guard.depth() + 1).map_err(|m| ReadError::malformed(xml, guard.token_pos(), m))?;
                    if sink.is_done() {
                        if stop_early {
                            break;
                        }
                        // The header is read; the rest of the document is only checked. The
                        // guard checks every token all the same; this loop merely skips the
                        // dispatch above, whose branches only the sink needed.
                        while !matches!(guard.next()?, Tok::Eof) {}
                        break;
                    }
                }
            }
            Tok::Eof => break,
        }
    }
    match sink {
        Some(sink) => Ok(sink.finish()),
        // unreachable: the guard reports a document without root element as malformed
        None => Err(ReadError::malformed(xml, 0, "no document element".into())),
    }
}
