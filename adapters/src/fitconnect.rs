//! FIT-Connect metadata (the decrypted `metadata` JSON of a submission) read into [`Meta`].
//!
//! The metadata document (schema `https://schema.fitko.de/fit-connect/metadata/<x.y.z>/…`, the
//! 1.0.0 schema is vendored under `schemas/fit-connect-metadata-1.0.0/`) says which public service
//! a submission is for, which schema its data part follows, which attachments it carries and,
//! optionally, how the applicant was identified. [`read_metadata`] maps it to [`Meta`]:
//!
//! | `Meta` field | from |
//! |---|---|
//! | `standard` | always `FIT-Connect` |
//! | `version` | the `<x.y.z>` segment of `$schema` |
//! | `namespace` | `$schema` itself |
//! | `root` | always `metadata` |
//! | `service` | `publicServiceType.identifier` (a URN; LeiKa: `urn:de:fim:leika:leistung:<14 digits>`) |
//! | `message_type` | `contentStructure.data.submissionSchema.schemaUri` |
//! | `created_at` | `additionalReferenceInfo.applicationDate` |
//! | `trust_level` | a level claim inside an `identificationReport` JWT, verified against [`trust`] keys when configured, else **not verified** (see [`jwt`]) |
//! | `warnings` | duplicate attachment ids, unverified or unreadable reports, non-LeiKa keys, … |
//!
//! This is not a JSON Schema validator: it checks the shape of what it reads (and that
//! `contentStructure.attachments` exists, the one thing the schema requires) and nothing else.
//! Input is untrusted: at most [`MAX_BYTES`] bytes and [`MAX_DEPTH`] levels of nesting, checked
//! before anything is parsed ([`check_limits`]). A caller that holds a body of unknown kind
//! learns whether it is metadata without parsing it first ([`declares_metadata`], a byte scan),
//! so it can apply these limits before its own parse too (intake does).

pub mod jwt;
#[cfg(test)]
mod tests;
pub mod trust;

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::Value;

use crate::meta::check_field;
use crate::{Meta, ReadError};
pub use jwt::{Assurance, Level};
pub use trust::TrustKeys;

/// Every FIT-Connect metadata schema URI starts with this; the version follows.
pub const SCHEMA_PREFIX: &str = "https://schema.fitko.de/fit-connect/metadata/";
/// Largest metadata document accepted (1 MiB). Real ones are a few KiB.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Deepest nesting of objects and arrays accepted (the top-level object is level 1).
pub const MAX_DEPTH: usize = 64;
/// What LeiKa service keys start with.
const LEIKA_PREFIX: &str = "urn:de:fim:leika:leistung:";

/// True when `json` is an object whose `$schema` names a FIT-Connect metadata schema.
pub fn is_metadata(json: &Value) -> bool {
    json.get("$schema").and_then(Value::as_str).is_some_and(|s| s.starts_with(SCHEMA_PREFIX))
}

/// Reads a FIT-Connect metadata document (plain JSON, already decrypted) into [`Meta`].
///
/// Fails with `LimitExceeded` above [`MAX_BYTES`] or [`MAX_DEPTH`], and with `Malformed` on
/// anything that is not JSON, not FIT-Connect metadata (`$schema`), or has the wrong shape in a
/// field read here. JSON syntax errors carry their line and column; shape errors point at the
/// start of the document (a parsed value has no positions).
pub fn read_metadata(json: &[u8]) -> Result<Meta, ReadError> {
    read_metadata_with(json, &TrustKeys::none()).map(|m| m.meta)
}

/// What [`read_metadata_with`] read.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub meta: Meta,
    /// The level of the identification reports (also in `meta.trust_level`, as text) and
    /// whether it was verified. Only a verified level may decide access.
    pub assurance: Option<Assurance>,
}

/// [`read_metadata`], verifying identification reports against `keys`: with keys, only a
/// report whose signature verifies gives a level; without, the level is read unverified.
pub fn read_metadata_with(json: &[u8], keys: &TrustKeys) -> Result<Metadata, ReadError> {
    check_limits(json)?;
    let value: Value = serde_json::from_slice(json).map_err(|e| json_error(json, &e))?;
    read_parsed(&value, keys)
}

/// The limits of a metadata document, checked on its bytes without parsing them:
/// `LimitExceeded` above [`MAX_BYTES`], or with objects and arrays nested deeper than
/// [`MAX_DEPTH`] (a byte scan; strings are skipped, the syntax is not otherwise checked).
pub fn check_limits(json: &[u8]) -> Result<(), ReadError> {
    if json.len() > MAX_BYTES {
        return Err(ReadError::LimitExceeded(format!(
            "FIT-Connect metadata is {} bytes, more than {MAX_BYTES}",
            json.len()
        )));
    }
    check_depth(json, MAX_DEPTH).map_err(|position| {
        ReadError::LimitExceeded(format!("JSON nested deeper than {MAX_DEPTH} levels at byte {position}"))
    })
}

/// True when `json` is an object whose `$schema` names a FIT-Connect metadata schema, found
/// without parsing the document: a byte scan over the top-level object's keys, each other
/// value skipped by counting brackets (nothing recursed into, nothing built; only a key or the
/// `$schema` value that holds an escape is unescaped through serde_json, as a single string).
///
/// On a document without duplicate keys it agrees with [`is_metadata`] of the parsed value;
/// on text that is not JSON it may say either (the parse after it refuses that text anyway).
/// The first `$schema` key counts: a strict parse refuses a second one.
pub fn declares_metadata(json: &[u8]) -> bool {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return false;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        // `}` (no `$schema`) or not JSON
        if json.get(i) != Some(&b'"') {
            return false;
        }
        let Some(end) = string_end(json, i) else { return false };
        let key = &json[i..end];
        i = skip_ws(json, end);
        if json.get(i) != Some(&b':') {
            return false;
        }
        i = skip_ws(json, i + 1);
        if unescape(key).as_deref() == Some("$schema") {
            if json.get(i) != Some(&b'"') {
                return false;
            }
            let Some(end) = string_end(json, i) else { return false };
            return unescape(&json[i..end]).is_some_and(|s| s.starts_with(SCHEMA_PREFIX));
        }
        let Some(next) = skip_value(json, i) else { return false };
        i = skip_ws(json, next);
        if json.get(i) != Some(&b',') {
            return false;
        }
        i += 1;
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just past the JSON string that starts (with its `"`) at `start`.
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&b) = json.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the value that starts at `start` (a scalar ends before the `,` or `}`
/// that follows it). Brackets are counted, not matched: the parse checks the syntax.
fn skip_value(json: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                i = string_end(json, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text of the JSON string `quoted` (quotes included); `None` when it is not one.
fn unescape(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(quoted).ok().map(Cow::Owned)
}

/// [`read_metadata_with`] of a document the caller has parsed already, after holding its bytes
/// to [`check_limits`] (intake: found by [`declares_metadata`], then parsed strictly).
pub fn read_parsed(doc: &Value, keys: &TrustKeys) -> Result<Metadata, ReadError> {
    let doc = doc.as_object().ok_or_else(|| shape("the document is not a JSON object"))?;
    let schema = match doc.get("$schema") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(shape("`$schema` is not a string")),
        None => return Err(shape("not FIT-Connect metadata: no `$schema`")),
    };
    let Some(rest) = schema.strip_prefix(SCHEMA_PREFIX) else {
        return Err(shape(&format!("not FIT-Connect metadata: `$schema` is `{schema}`")));
    };
    // `$schema`, the data schema URI and the application date become meta fields, which reach
    // log lines as XML header fields do: held to the same rule (length, no control character).
    check_field("namespace", schema).map_err(|m| shape(&m))?;
    let version = rest.split('/').next().unwrap_or_default();
    if !is_semver(version) {
        return Err(shape(&format!("no x.y.z version in `$schema` `{schema}`")));
    }
    let mut meta = Meta {
        standard: Some("FIT-Connect".into()),
        version: Some(version.into()),
        namespace: Some(schema.into()),
        root: "metadata".into(),
        ..Meta::default()
    };
    if !version.starts_with("1.0.") {
        meta.warnings.push(format!("metadata schema {version} is not vendored; read by the rules of 1.0.0"));
    }

    let content = object(doc.get("contentStructure"), "contentStructure")?
        .ok_or_else(|| shape("`contentStructure` is missing"))?;
    if let Some(data) = object(content.get("data"), "contentStructure.data")? {
        let schema = object(data.get("submissionSchema"), "contentStructure.data.submissionSchema")?;
        if let Some(schema) = schema {
            let uri = string(schema.get("schemaUri"), "submissionSchema.schemaUri")?;
            if let Some(uri) = uri {
                check_field("message_type", uri).map_err(|m| shape(&m))?;
            }
            meta.message_type = uri.map(str::to_owned);
        }
    }
    let attachments = match content.get("attachments") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(shape("`contentStructure.attachments` is not an array")),
        None => return Err(shape("`contentStructure.attachments` is missing")),
    };
    check_attachments(attachments, &mut meta.warnings)?;

    if let Some(service) = object(doc.get("publicServiceType"), "publicServiceType")? {
        let id = string(service.get("identifier"), "publicServiceType.identifier")?
            .ok_or_else(|| shape("`publicServiceType.identifier` is missing"))?;
        check_service(id, &mut meta.warnings)?;
        meta.service = Some(id.into());
    }

    // `submissionDate` (written by the fitconnect 0.4.2 SDK) is not a schema field: not read
    if let Some(info) = object(doc.get("additionalReferenceInfo"), "additionalReferenceInfo")?
        && let Some(date) = string(info.get("applicationDate"), "additionalReferenceInfo.applicationDate")?
    {
        check_field("created_at", date).map_err(|m| shape(&m))?;
        if !is_date(date) {
            meta.warnings.push(format!("applicationDate `{date}` is not a date (YYYY-MM-DD)"));
        }
        meta.created_at = Some(date.into());
    }

    let mut assurance = None;
    match doc.get("authenticationInformation") {
        None => {}
        Some(Value::Array(reports)) => assurance = jwt::trust_level(reports, keys, &mut meta.warnings),
        Some(_) => return Err(shape("`authenticationInformation` is not an array")),
    }
    meta.trust_level = assurance.map(|a| a.level.as_str().to_owned());
    Ok(Metadata { meta, assurance })
}

/// Attachment ids must be unique within a submission (the fitconnect 0.4.2 SDK gives every
/// attachment of one submission the same id): a duplicate is a warning, the hub decides.
fn check_attachments(items: &[Value], warnings: &mut Vec<String>) -> Result<(), ReadError> {
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let item = item.as_object().ok_or_else(|| shape(&format!("attachment {i} is not an object")))?;
        let Some(id) = string(item.get("attachmentId"), "attachmentId")? else {
            warnings.push(format!("attachment {i} has no attachmentId"));
            continue;
        };
        if !seen.insert(id) && reported.insert(id) {
            // Escaped: an id is any string, and warnings are shown and stored as lines.
            warnings.push(format!("duplicate attachmentId `{}`", id.escape_debug()));
        }
    }
    Ok(())
}

/// The schema's URN pattern is a hard requirement; a URN that is not a well-formed LeiKa key is
/// allowed by the schema (a stopgap until a LeiKa id exists) and only warned about.
fn check_service(id: &str, warnings: &mut Vec<String>) -> Result<(), ReadError> {
    if !is_urn(id) {
        return Err(shape(&format!("`publicServiceType.identifier` `{id}` is not a URN")));
    }
    match id.strip_prefix(LEIKA_PREFIX) {
        Some(key) if key.len() == 14 && key.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(_) => warnings.push(format!("service `{id}` is not a 14-digit LeiKa key")),
        None => warnings.push(format!("service `{id}` is not a LeiKa key")),
    }
    Ok(())
}

/// The schema's pattern `^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9()+,.:=@;$_!*'%/?#-]+$`, length 7..=255.
fn is_urn(s: &str) -> bool {
    if !(7..=255).contains(&s.len()) {
        return false;
    }
    let Some(rest) = s.strip_prefix("urn:") else { return false };
    let Some((nid, nss)) = rest.split_once(':') else { return false };
    let nid_ok = nid.len() <= 32
        && nid.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && nid.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let nss_ok = !nss.is_empty()
        && nss.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"()+,.:=@;$_!*'%/?#-".contains(&b));
    nid_ok && nss_ok
}

/// `x.y.z`, each a decimal number.
fn is_semver(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `YYYY-MM-DD` by shape (the schema's `format: date`), month and day in range.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return false;
    }
    let month = u32::from(b[5] - b'0') * 10 + u32::from(b[6] - b'0');
    let day = u32::from(b[8] - b'0') * 10 + u32::from(b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// The object at `value`, `None` when absent, an error naming `what` when it is something else.
fn object<'a>(value: Option<&'a Value>, what: &str) -> Result<Option<&'a serde_json::Map<String, Value>>, ReadError> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(shape(&format!("`{what}` is not an object"))),
    }
}

/// The string at `value`, `None` when absent, an error naming `what` when it is something else.
fn string<'a>(value: Option<&'a Value>, what: &str) -> Result<Option<&'a str>, ReadError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(shape(&format!("`{what}` is not a string"))),
    }
}

/// A shape error: the JSON is fine, the document is not FIT-Connect metadata as read here.
fn shape(message: &str) -> ReadError {
    ReadError::Malformed { position: 0, message: format!("line 1, column 1: {message}") }
}

/// A serde_json syntax error as `Malformed`, with the byte position recomputed from its line
/// and column (serde_json counts columns in bytes).
fn json_error(input: &[u8], e: &serde_json::Error) -> ReadError {
    let text = e.to_string();
    let message = text.rfind(" at line ").map_or(text.as_str(), |i| &text[..i]);
    let mut line_start = 0usize;
    for _ in 1..e.line() {
        match input[line_start..].iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => break,
        }
    }
    let position = (line_start + e.column().saturating_sub(1)).min(input.len());
    ReadError::malformed(input, position as u64, format!("not JSON: {message}"))
}

/// Scans raw JSON for nesting deeper than `max` without parsing it, so that no parser ever
/// recurses on hostile input. `Err` holds the byte position of the first bracket too deep.
/// Brackets inside strings do not count; the scan does not otherwise check the syntax.
pub(crate) fn check_depth(json: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}
