//! Routing for Lotse: which endpoints receive a message.
//!
//! Pure and synchronous (no I/O, no tokio). The hub turns what it read from a message into
//! [`Keys`]; a [`Router`] compiled from the user's [`RuleConfig`]s answers with the first
//! matching [`Route`]. Modules:
//! - [`pattern`]: one match field, exact or with a `*` wildcard suffix (`bab:02*`).
//! - [`rule`]: the rule as the user writes it, and its validation.
//! - this file: [`Router`], [`Keys`] and the "no route" explanation.

pub mod pattern;
pub mod rule;

pub use pattern::Pattern;
pub use rule::{RuleConfig, RuleError};

/// What routing looks at, borrowed from the message meta.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys<'a> {
    /// Namespace URI of the root element (the standard).
    pub namespace: Option<&'a str>,
    /// Local name of the root element, e.g. `baugenehmigung.antrag.0200`.
    pub root: &'a str,
    /// Message type code from the header, e.g. `0200`.
    pub message_type: Option<&'a str>,
    /// Reader (recipient) key, e.g. DVDV `bab:09162000`, a court code or a Leitweg-ID.
    pub reader: Option<&'a str>,
    /// Author (sender) key.
    pub author: Option<&'a str>,
    /// Public service key (LeiKa), when the message carries one.
    pub service: Option<&'a str>,
}

/// A compiled rule: name, fields to match, and the endpoints it fans out to.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub namespace: Option<Pattern>,
    pub root: Option<Pattern>,
    pub message_type: Option<Pattern>,
    pub reader: Option<Pattern>,
    pub author: Option<Pattern>,
    pub service: Option<Pattern>,
    /// Minimum trust level (Vertrauensniveau) the submission must carry, if any.
    pub min_trust_level: Option<TrustLevel>,
    /// The message must be valid against a schema the catalog knows.
    pub require_schema: bool,
    /// Header warnings become events instead of a refusal.
    pub accept_warnings: bool,
    pub endpoints: Vec<String>,
}

/// eIDAS / OZG trust levels (Vertrauensniveau), ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    /// "niedrig" / basic
    Low,
    /// "substanziell" / substantial
    Substantial,
    /// "hoch" / high
    High,
}

impl TrustLevel {
    /// Parses the spellings partners use: English eIDAS words and the German OZG words.
    pub fn parse(s: &str) -> Option<TrustLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" | "niedrig" | "basisregistrierung" | "basic" => Some(TrustLevel::Low),
            "substantial" | "substanziell" => Some(TrustLevel::Substantial),
            "high" | "hoch" => Some(TrustLevel::High),
            _ => None,
        }
    }
}

impl Route {
    fn matches(&self, keys: &Keys<'_>) -> bool {
        fn field(p: &Option<Pattern>, v: Option<&str>) -> bool {
            match p {
                None => true,
                Some(p) => v.is_some_and(|v| p.matches(v)),
            }
        }
        field(&self.namespace, keys.namespace)
            && field(&self.root, Some(keys.root))
            && field(&self.message_type, keys.message_type)
            && field(&self.reader, keys.reader)
            && field(&self.author, keys.author)
            && field(&self.service, keys.service)
    }
}

/// Ordered rules; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Compiles rules, reporting every problem at once. `known_endpoints` are the endpoint names
    /// the configuration defines; a rule naming another endpoint is an error.
    pub fn new(rules: &[RuleConfig], known_endpoints: &[&str]) -> Result<Router, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::with_capacity(rules.len());
        let mut seen = std::collections::HashSet::new();
        for (index, rule) in rules.iter().enumerate() {
            if !seen.insert(rule.name.as_str()) {
                errors.push(RuleError::DuplicateName { name: rule.name.clone() });
            }
            match rule.build(index, known_endpoints) {
                Ok(route) => routes.push(route),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() { Ok(Router { routes }) } else { Err(errors) }
    }

    /// The first route whose every field matches.
    pub fn route(&self, keys: &Keys<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(keys))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Human explanation of what routing looked for, for the 422 "no route" problem.
pub fn describe(keys: &Keys<'_>) -> String {
    format!(
        "no route matches message type `{}` for reader `{}` (root `{}`, namespace `{}`, author `{}`)",
        keys.message_type.unwrap_or("-"),
        keys.reader.unwrap_or("-"),
        keys.root,
        keys.namespace.unwrap_or("-"),
        keys.author.unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests;
