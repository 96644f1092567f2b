//! Writes a [`Tree`] in the JSON form: as JSON text straight into a byte buffer (fast path) or
//! as a `serde_json::Value`. Both follow the same rules (see `docs/json-mapping.md`).

use serde_json::{Map, Value};

use super::schema::{Hints, Scope};
use super::tree::{Elem, Item, Shape, Tree};

/// Writes the JSON form of `tree` as JSON text.
pub(crate) fn write_json(tree: &Tree<'_>, hints: Option<&Hints>, out: &mut Vec<u8>) {
    let root = &tree.elems[tree.root as usize];
    let scope = hints.and_then(|h| h.root_scope(root.name));
    out.push(b'{');
    write_str(out, root.name);
    out.push(b':');
    write_elem(tree, root, hints, scope, out);
    out.push(b'}');
}

fn write_elem(tree: &Tree<'_>, e: &Elem<'_>, hints: Option<&Hints>, scope: Option<Scope>, out: &mut Vec<u8>) {
    let items = tree.children(e);
    if e.shape == Shape::Leaf {
        let text = leaf_text(tree, items);
        write_scalar(out, text, hints.and_then(|h| h.text_kind(scope)));
        return;
    }
    out.push(b'{');
    let mut first = true;
    for a in tree.attrs_of(e) {
        sep(out, &mut first);
        write_key(out, "@", a.name);
        write_scalar(out, &a.value, hints.and_then(|h| h.attr_kind(scope, a.name)));
    }
    if e.shape == Shape::Ordered {
        sep(out, &mut first);
        out.extend_from_slice(b"\"#content\":[");
        let mut first_item = true;
        for item in items {
            sep(out, &mut first_item);
            match *item {
                Item::Text(t) => write_str(out, &tree.texts[t as usize]),
                Item::Elem(c) => {
                    let child = &tree.elems[c as usize];
                    out.push(b'{');
                    write_str(out, child.name);
                    out.push(b':');
                    let child_scope = hints.and_then(|h| h.child(scope, child.name));
                    write_elem(tree, child, hints, child_scope, out);
                    out.push(b'}');
                }
            }
        }
        out.extend_from_slice(b"]}");
        return;
    }
    let mut i = 0;
    while i < items.len() {
        match items[i] {
            Item::Text(t) => {
                // only an element without child elements keeps its text here
                let text = &tree.texts[t as usize];
                if !text.is_empty() {
                    sep(out, &mut first);
                    out.extend_from_slice(b"\"#text\":");
                    write_scalar(out, text, hints.and_then(|h| h.text_kind(scope)));
                }
                i += 1;
            }
            Item::Elem(c) => {
                let name = tree.elems[c as usize].name;
                let run = if e.runs { run_len(tree, &items[i..], name) } else { 1 };
                let child_scope = hints.and_then(|h| h.child(scope, name));
                let array = run > 1 || hints.is_some_and(|h| h.is_repeated(scope, name));
                sep(out, &mut first);
                write_str(out, name);
                out.push(b':');
                if array {
                    out.push(b'[');
                }
                for (k, item) in items[i..i + run].iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    if let Item::Elem(c) = *item {
                        write_elem(tree, &tree.elems[c as usize], hints, child_scope, out);
                    }
                }
                if array {
                    out.push(b']');
                }
                i += run;
            }
        }
    }
    out.push(b'}');
}

/// Builds the JSON form of `tree` as a `serde_json::Value`.
pub(crate) fn to_value(tree: &Tree<'_>, hints: Option<&Hints>) -> Value {
    let root = &tree.elems[tree.root as usize];
    let scope = hints.and_then(|h| h.root_scope(root.name));
    let mut map = Map::with_capacity(1);
    map.insert(root.name.to_owned(), elem_value(tree, root, hints, scope));
    Value::Object(map)
}

fn elem_value(tree: &Tree<'_>, e: &Elem<'_>, hints: Option<&Hints>, scope: Option<Scope>) -> Value {
    let items = tree.children(e);
    if e.shape == Shape::Leaf {
        return scalar(leaf_text(tree, items), hints.and_then(|h| h.text_kind(scope)));
    }
    let mut map = Map::new();
    for a in tree.attrs_of(e) {
        map.insert(format!("@{}", a.name), scalar(&a.value, hints.and_then(|h| h.attr_kind(scope, a.name))));
    }
    if e.shape == Shape::Ordered {
        let mut content = Vec::with_capacity(items.len());
        for item in items {
            match *item {
                Item::Text(t) => content.push(Value::String(tree.texts[t as usize].to_string())),
                Item::Elem(c) => {
                    let child = &tree.elems[c as usize];
                    let child_scope = hints.and_then(|h| h.child(scope, child.name));
                    let mut one = Map::with_capacity(1);
                    one.insert(child.name.to_owned(), elem_value(tree, child, hints, child_scope));
                    content.push(Value::Object(one));
                }
            }
        }
        map.insert("#content".to_owned(), Value::Array(content));
        return Value::Object(map);
    }
    let mut i = 0;
    while i < items.len() {
        match items[i] {
            Item::Text(t) => {
                let text = &tree.texts[t as usize];
                if !text.is_empty() {
                    map.insert("#text".to_owned(), scalar(text, hints.and_then(|h| h.text_kind(scope))));
                }
                i += 1;
            }
            Item::Elem(c) => {
                let name = tree.elems[c as usize].name;
                let run = if e.runs { run_len(tree, &items[i..], name) } else { 1 };
                let child_scope = hints.and_then(|h| h.child(scope, name));
                let array = run > 1 || hints.is_some_and(|h| h.is_repeated(scope, name));
                let mut values = items[i..i + run].iter().filter_map(|item| match *item {
                    Item::Elem(c) => Some(elem_value(tree, &tree.elems[c as usize], hints, child_scope)),
                    Item::Text(_) => None,
                });
                let value = if array { Value::Array(values.collect()) } else { values.next().unwrap_or_default() };
                map.insert(name.to_owned(), value);
                i += run;
            }
        }
    }
    Value::Object(map)
}

fn leaf_text<'t>(tree: &'t Tree<'_>, items: &[Item]) -> &'t str {
    match items.first() {
        Some(Item::Text(t)) => &tree.texts[*t as usize],
        _ => "",
    }
}

/// Number of consecutive elements named `name` at the start of `items`.
fn run_len(tree: &Tree<'_>, items: &[Item], name: &str) -> usize {
    items.iter().take_while(|i| matches!(i, Item::Elem(c) if tree.elems[*c as usize].name == name)).count()
}

/// A typed scalar in schema-aware mode; a string otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Number,
    Boolean,
}

fn typed(text: &str, kind: Option<Kind>) -> Option<Value> {
    match kind? {
        // `1`/`0` are valid xs:boolean too, but as JSON `true`/`false` they would not come back
        // as written: they stay strings
        Kind::Boolean => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Number => number(text),
    }
}

/// An integer whose JSON text reproduces the XML text exactly (so the mapping stays lossless);
/// anything else (`007`, `+3`, ` 7`, beyond 64 bits) stays a string.
pub(crate) fn number(text: &str) -> Option<Value> {
    let n: serde_json::Number =
        if text.starts_with('-') { text.parse::<i64>().ok()?.into() } else { text.parse::<u64>().ok()?.into() };
    (n.to_string() == text).then_some(Value::Number(n))
}

fn scalar(text: &str, kind: Option<Kind>) -> Value {
    typed(text, kind).unwrap_or_else(|| Value::String(text.to_owned()))
}

fn write_scalar(out: &mut Vec<u8>, text: &str, kind: Option<Kind>) {
    // generic mode: every value is a string
    if kind.is_none() {
        return write_str(out, text);
    }
    match typed(text, kind) {
        Some(Value::Bool(b)) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Some(Value::Number(n)) => out.extend_from_slice(n.to_string().as_bytes()),
        _ => write_str(out, text),
    }
}

fn sep(out: &mut Vec<u8>, first: &mut bool) {
    if *first {
        *first = false;
    } else {
        out.push(b',');
    }
}

fn write_key(out: &mut Vec<u8>, prefix: &str, name: &str) {
    out.push(b'"');
    out.extend_from_slice(prefix.as_bytes());
    escape_into(out, name);
    out.extend_from_slice(b"\":");
}

/// Writes `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s);
    out.push(b'"');
}

/// Bytes that need escaping in a JSON string: 1 for `"` and `\\`, 2 for control characters.
static JSON_ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = 2;
        b += 1;
    }
    t[b'"' as usize] = 1;
    t[b'\\' as usize] = 1;
    t
};

/// True when some byte of the 8 in `x` is a control character, `"` or `\\` (SWAR: the
/// classic "has a byte less than n" and "has a zero byte" tricks).
fn needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = x ^ (ONES * b'"' as u64);
    let backslash = x ^ (ONES * b'\\' as u64);
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    (below_space | zero(quote) | zero(backslash)) & HIGHS != 0
}

/// True when some byte of `bytes` needs escaping: whole words, then the tail byte by byte
/// (a word assembled from the tail would be read right after byte-wise stores: a stall).
fn any_needs_escape(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if needs_escape(u64::from_le_bytes(word)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| JSON_ESCAPE[b as usize] != 0)
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    // the common case (names, most values): nothing to escape, one copy
    if !any_needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    escape_slow(out, s);
}

// kept out of line so the fast path stays small (no register saves for the escaping loop)
#[cold]
#[inline(never)]
fn escape_slow(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // the common case: runs of bytes that need nothing, 8 at a time
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        while i < bytes.len() && JSON_ESCAPE[bytes[i] as usize] == 0 {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let b = bytes[i];
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}
