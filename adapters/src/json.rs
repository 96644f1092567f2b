//! The JSON form of a message, and back. The mapping is specified (with examples agency
//! developers can code against) in `docs/json-mapping.md`; in short:
//!
//! - the document is `{"<root qname>": <element>}`; names are kept exactly as written,
//!   prefixes included, and namespace declarations are attributes (`@xmlns`, `@xmlns:p`), so
//!   the namespace URIs round-trip;
//! - an element without attributes and child elements is a string (`""` when empty);
//! - otherwise an object: `@name` attributes, then either `#text` or the child elements by
//!   name in document order, adjacent repeats as an array;
//! - where keys cannot keep the order (mixed content, a name repeating non-adjacently) the
//!   object has `#content`: an array of text strings and one-key element objects, in order;
//! - generic mode: every value is a string. Schema-aware mode ([`Hints`]): elements the
//!   schema lets repeat are always arrays, numbers and booleans typed (only when the JSON
//!   number reproduces the XML text exactly, so typing never loses anything).
//!
//! Lossless: XML -> JSON -> XML gives the same [`canonical_form`] (comments, processing
//! instructions and indentation in element-only content are not part of it).
//!
//! Modules: `tree` (borrowed document tree, shape decisions), `emit` (tree -> JSON text or
//! `Value`), `to_xml` (JSON -> XML), `canon` (canonical form), `schema` (type hints), `strict`
//! (the strict JSON parse of partner bodies).

mod canon;
mod emit;
mod schema;
mod strict;
#[cfg(test)]
mod tests;
mod to_xml;
mod tree;

pub use canon::canonical_form;
pub use schema::{Hints, HintsError};
pub use strict::parse_strict;

use crate::{Limits, Meta};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The XML could not be read (malformed, forbidden, over a limit).
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    /// The JSON is not a JSON form of an XML document.
    #[error("invalid JSON form: {0}")]
    InvalidJson(String),
    /// The XML would be larger than the caller's limit ([`json_to_xml_within`]).
    #[error("its XML form is larger than the limit")]
    TooLarge,
}

/// XML -> JSON form (generic: all values strings). Checks the whole document as
/// [`crate::read_meta`] does.
pub fn xml_to_json(xml: &[u8], limits: &Limits) -> Result<serde_json::Value, ConvertError> {
    let (tree, _) = tree::build(xml, limits)?;
    Ok(emit::to_value(&tree, None))
}

/// XML -> JSON form, and the header meta, in one pass (intake: read, check and convert once).
pub fn xml_to_json_with_meta(xml: &[u8], limits: &Limits) -> Result<(Meta, serde_json::Value), ConvertError> {
    let (tree, meta) = tree::build(xml, limits)?;
    Ok((meta, emit::to_value(&tree, None)))
}

/// XML -> JSON form as JSON text (UTF-8, compact) written straight into `out`: the fast path
/// for delivering JSON, same result as serialising [`xml_to_json`]. Returns the meta too.
pub fn write_json(xml: &[u8], limits: &Limits, out: &mut Vec<u8>) -> Result<Meta, ConvertError> {
    let (tree, meta) = tree::build(xml, limits)?;
    out.reserve(xml.len());
    emit::write_json(&tree, None, out);
    Ok(meta)
}

/// Schema-aware XML -> JSON form: like [`xml_to_json`], with repeats as arrays and typed
/// numbers and booleans where `hints` (built from the standard's XSD) say so.
pub fn xml_to_json_typed(xml: &[u8], limits: &Limits, hints: &Hints) -> Result<serde_json::Value, ConvertError> {
    let (tree, _) = tree::build(xml, limits)?;
    Ok(emit::to_value(&tree, Some(hints)))
}

/// Schema-aware variant of [`write_json`].
pub fn write_json_typed(xml: &[u8], limits: &Limits, hints: &Hints, out: &mut Vec<u8>) -> Result<Meta, ConvertError> {
    let (tree, meta) = tree::build(xml, limits)?;
    out.reserve(xml.len());
    emit::write_json(&tree, Some(hints), out);
    Ok(meta)
}

/// JSON form -> XML bytes (UTF-8, with an XML declaration). Accepts both the generic and the
/// schema-aware form; the result is checked to be well-formed.
pub fn json_to_xml(json: &serde_json::Value) -> Result<Vec<u8>, ConvertError> {
    json_to_xml_within(json, usize::MAX)
}

/// [`json_to_xml`], refusing with [`ConvertError::TooLarge`] once the XML (after its
/// declaration) grows past `max_bytes`: XML from a partner's JSON is held to the same size
/// limit as XML sent directly, and is not built in full first. The XML is re-read with the
/// default attribute limit; see [`json_to_xml_with_limits`].
pub fn json_to_xml_within(json: &serde_json::Value, max_bytes: usize) -> Result<Vec<u8>, ConvertError> {
    // Element count open: `max_bytes` bounds it.
    let limits = Limits { max_depth: tree::JSON_MAX_DEPTH, max_elements: usize::MAX, ..Limits::default() };
    json_to_xml_with_limits(json, max_bytes, &limits)
}

/// [`json_to_xml_within`], re-reading the XML under `limits` (depth at most the JSON form's
/// 1,024): the caller's XML intake limits, so that a JSON body is refused exactly when the same
/// message sent as XML would be (a deployment that allows more attributes than the default
/// allows them in JSON too).
pub fn json_to_xml_with_limits(
    json: &serde_json::Value,
    max_bytes: usize,
    limits: &Limits,
) -> Result<Vec<u8>, ConvertError> {
    json_to_xml_and_meta(json, max_bytes, limits).map(|(xml, _)| xml)
}

/// [`json_to_xml_with_limits`] with the XML's [`Meta`], read from it under `limits` as
/// [`crate::read_meta`] reads XML (the re-read that checks the XML gives it; intake uses it
/// instead of reading the XML a second time).
pub fn json_to_xml_and_meta(
    json: &serde_json::Value,
    max_bytes: usize,
    limits: &Limits,
) -> Result<(Vec<u8>, Meta), ConvertError> {
    let mut out = Vec::with_capacity(4096);
    let meta = to_xml::write_xml(json, &mut out, max_bytes, limits)?;
    Ok((out, meta))
}
