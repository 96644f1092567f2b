//! One match field: an exact value, or a prefix followed by a `*` wildcard.

use std::fmt;

/// `bab:09162000` matches exactly that value; `bab:09*` matches every value starting with
/// `bab:09`; `*` alone matches any present value. A `*` anywhere but at the end is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let (body, wildcard) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!("`{s}`: `*` is allowed only as the last character"));
        }
        if wildcard {
            Ok(Pattern::Prefix(body.to_owned()))
        } else if s.is_empty() {
            Err("empty pattern; leave the field out to match anything".to_owned())
        } else {
            Ok(Pattern::Exact(body.to_owned()))
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(v) => v == value,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(v) => f.write_str(v),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}
