//! JSON form -> XML: the reverse of the mapping, for JSON senders and for round trips.
//!
//! Accepts everything the forward mapping produces, plus what a JSON sender naturally writes:
//! numbers and booleans as text, `null` for an empty element. The result is re-read by the
//! hardened reader, so a JSON document that would give ill-formed XML (an undeclared prefix,
//! say) is refused instead of passed on.

use serde_json::{Map, Value};

use super::ConvertError;
use super::tree::JSON_MAX_DEPTH;
use crate::reader::{is_name_char, is_name_start};
use crate::{Limits, Meta, ReadError};

fn invalid(message: impl Into<String>) -> ConvertError {
    ConvertError::InvalidJson(message.into())
}

/// Writes the XML document for `json` (UTF-8, with an XML declaration), re-read under `limits`.
/// Stops with [`ConvertError::TooLarge`] once the XML grows past `max_bytes` (a JSON array of
/// `null`s repeats its element name per item: a small body could otherwise make a huge document).
pub(crate) fn write_xml(
    json: &Value,
    out: &mut Vec<u8>,
    max_bytes: usize,
    limits: &Limits,
) -> Result<Meta, ConvertError> {
    let Value::Object(top) = json else {
        return Err(invalid("the JSON form is an object with one key, the root element"));
    };
    let mut keys = top.iter();
    let (Some((name, value)), None) = (keys.next(), keys.next()) else {
        return Err(invalid(format!("the JSON form has exactly one key, the root element (found {})", top.len())));
    };
    out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let body = out.len();
    let limit = out.len().saturating_add(max_bytes);
    element(name, value, 1, out, limit)?;
    if out.len() > limit {
        return Err(ConvertError::TooLarge);
    }
    check_well_formed(&out[body..], limits)
}

/// Re-reads the XML as intake reads XML ([`crate::read_meta`]) under the caller's limits (the
/// XML intake's): one JSON object can hold any number of `@` keys, and XML sent directly could
/// not carry more than `max_attributes`; and a header value the reader refuses (a line break in
/// `@standard`, say) is refused here, so the reader accepts whatever this function writes.
/// Its meta is what intake would read from the XML, so intake need not read it again.
fn check_well_formed(xml: &[u8], limits: &Limits) -> Result<Meta, ConvertError> {
    let limits = Limits { max_depth: limits.max_depth.min(JSON_MAX_DEPTH), ..*limits };
    match crate::read_meta(xml, &limits) {
        Ok(meta) => Ok(meta),
        Err(e @ ReadError::LimitExceeded(_)) => Err(ConvertError::Read(e)),
        Err(e) => Err(invalid(format!("the XML it gives is refused by the reader: {e}"))),
    }
}

fn element(name: &str, value: &Value, depth: usize, out: &mut Vec<u8>, limit: usize) -> Result<(), ConvertError> {
    // Checked before each element: what one element adds before the next check is bounded by
    // the size of its own name and text in the JSON.
    if out.len() > limit {
        return Err(ConvertError::TooLarge);
    }
    if depth > JSON_MAX_DEPTH {
        return Err(invalid(format!("nesting deeper than {JSON_MAX_DEPTH} elements")));
    }
    check_name(name)?;
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    match value {
        Value::Null => out.extend_from_slice(b"/>"),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {
            let text = scalar_text(value, name)?;
            if text.is_empty() {
                out.extend_from_slice(b"/>");
            } else {
                out.push(b'>');
                escape_text(&text, out, limit)?;
                end_tag(name, out);
            }
        }
        Value::Object(map) => object(name, map, depth, out, limit)?,
        Value::Array(_) => {
            return Err(invalid(format!("`{name}`: an array is only allowed as the value of an element key")));
        }
    }
    Ok(())
}

fn object(
    name: &str,
    map: &Map<String, Value>,
    depth: usize,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ConvertError> {
    for (key, value) in map {
        if let Some(attr) = key.strip_prefix('@') {
            check_name(attr)?;
            let text = scalar_text(value, key)?;
            out.push(b' ');
            out.extend_from_slice(attr.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_attr(&text, out, limit)?;
            out.push(b'"');
        }
    }
    let content = map.get("#content");
    let has_children = map.keys().any(|k| !k.starts_with('@'));
    if !has_children {
        out.extend_from_slice(b"/>");
        return Ok(());
    }
    out.push(b'>');
    if let Some(content) = content {
        if map.keys().any(|k| !k.starts_with('@') && k != "#content") {
            return Err(invalid(format!("`{name}`: `#content` cannot be combined with other content keys")));
        }
        let Value::Array(items) = content else {
            return Err(invalid(format!("`{name}`: `#content` must be an array")));
        };
        for item in items {
            match item {
                Value::Object(one) => {
                    let mut it = one.iter();
                    let (Some((child, value)), None) = (it.next(), it.next()) else {
                        return Err(invalid(format!("`{name}`: each `#content` object has exactly one key")));
                    };
                    if child.starts_with(['@', '#']) {
                        return Err(invalid(format!("`{name}`: `{child}` is not an element name")));
                    }
                    element(child, value, depth + 1, out, limit)?;
                }
                Value::Array(_) => return Err(invalid(format!("`{name}`: nested array in `#content`"))),
                scalar => escape_text(&scalar_text(scalar, name)?, out, limit)?,
            }
        }
    } else {
        for (key, value) in map {
            if key.starts_with('@') {
                continue;
            }
            if key == "#text" {
                escape_text(&scalar_text(value, key)?, out, limit)?;
                continue;
            }
            if key.starts_with('#') {
                return Err(invalid(format!("`{name}`: unknown key `{key}`")));
            }
            match value {
                Value::Array(items) => {
                    for item in items {
                        if item.is_array() {
                            return Err(invalid(format!("`{key}`: nested arrays are not allowed")));
                        }
                        element(key, item, depth + 1, out, limit)?;
                    }
                }
                _ => element(key, value, depth + 1, out, limit)?,
            }
        }
    }
    end_tag(name, out);
    Ok(())
}

fn end_tag(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn scalar_text(value: &Value, what: &str) -> Result<String, ConvertError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(invalid(format!("`{what}`: expected a string, number, boolean or null"))),
    }
}

fn check_char(c: char) -> Result<(), ConvertError> {
    let ok = matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    if ok { Ok(()) } else { Err(invalid(format!("character U+{:04X} cannot be written in XML 1.0", c as u32))) }
}

/// Byte classes for escaping: 1 text-special, 2 attribute-special, 4 needs a character check
/// (C0 controls; 0xEF leads U+FFFE/U+FFFF).
static XML_ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = 4;
        b += 1;
    }
    t[b'\t' as usize] = 2;
    t[b'\n' as usize] = 2;
    t[b'\r' as usize] = 1 | 2;
    t[b'&' as usize] = 1 | 2;
    t[b'<' as usize] = 1 | 2;
    t[b'>' as usize] = 1;
    t[b'"' as usize] = 2;
    t[0xEF] = 4;
    t
};

fn escape_text(s: &str, out: &mut Vec<u8>, limit: usize) -> Result<(), ConvertError> {
    escape(s, 1, out, limit)
}

fn escape_attr(s: &str, out: &mut Vec<u8>, limit: usize) -> Result<(), ConvertError> {
    escape(s, 2, out, limit)
}

/// Escapes `s` for text (`class` 1) or a double-quoted attribute value (`class` 2), byte-wise:
/// every character that needs care is ASCII or starts with a byte the table marks.
///
/// Stops with [`ConvertError::TooLarge`] once `out` passes `limit`: an escape grows a byte up to
/// six (`"` -> `&quot;`), so one value could otherwise take six times its size before the next
/// check between elements. The value fits as written or not at all, so that is checked first;
/// then each escape is, and `out` never passes the limit by more than one escape.
fn escape(s: &str, class: u8, out: &mut Vec<u8>, limit: usize) -> Result<(), ConvertError> {
    let bytes = s.as_bytes();
    if out.len().saturating_add(bytes.len()) > limit {
        return Err(ConvertError::TooLarge);
    }
    // Room for the worst case: no need to watch each escape.
    let watch = out.len().saturating_add(bytes.len().saturating_mul(6)) > limit;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let c = XML_ESCAPE[b as usize];
        if c & (class | 4) == 0 {
            continue;
        }
        if c & 4 != 0 && c & class == 0 {
            if b == 0xEF {
                // U+FFFE / U+FFFF are EF BF BE / EF BF BF
                if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
                    return check_char(if bytes[i + 2] == 0xBE { '\u{FFFE}' } else { '\u{FFFF}' });
                }
                continue;
            }
            return check_char(char::from(b));
        }
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            _ => b"&#13;",
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
        if watch && out.len() > limit {
            return Err(ConvertError::TooLarge);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    Ok(())
}

/// Element and attribute names must be XML names (`local` or `prefix:local`), by the same
/// rules the reader applies.
fn check_name(name: &str) -> Result<(), ConvertError> {
    let exact = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
    };
    let ok = match name.split_once(':') {
        Some((prefix, local)) => exact(prefix) && exact(local),
        None => exact(name),
    };
    if ok { Ok(()) } else { Err(invalid(format!("`{name}` is not an XML name"))) }
}
