//! A routing rule as the user writes it in `[[routes]]`, and its validation.

use serde::Deserialize;

use crate::{Pattern, Route, TrustLevel};

/// `[[routes]]` in `lotse.toml`. Every match field is optional; a rule with none matches all.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Namespace URI of the root element, e.g. `http://www.xleitstelle.de/xbau/2/6`.
    pub namespace: Option<String>,
    /// Local name of the root element.
    pub root: Option<String>,
    /// Header message type code, e.g. `0200`.
    pub message_type: Option<String>,
    /// Reader (recipient) key, e.g. `bab:09162000` or `bab:09*`.
    pub reader: Option<String>,
    /// Author (sender) key.
    pub author: Option<String>,
    /// Public service (LeiKa) key.
    pub service: Option<String>,
    /// Minimum trust level: `low`, `substantial` or `high`.
    pub min_trust_level: Option<TrustLevel>,
    /// Refuse messages whose namespace no schema catalog knows (they cannot be validated).
    #[serde(default)]
    pub require_schema: bool,
    /// Accept messages whose header reading raised warnings (e.g. the root name's message type
    /// disagrees with the header's), recording each warning as an event instead of refusing.
    #[serde(default)]
    pub accept_warnings: bool,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("route `{route}`: field `{field}`: {message}")]
    BadPattern { route: String, field: &'static str, message: String },
    #[error("route `{route}` names unknown endpoint `{endpoint}`")]
    UnknownEndpoint { route: String, endpoint: String },
    #[error("route `{route}` has no endpoints")]
    NoEndpoints { route: String },
    #[error("route #{index} has an empty name")]
    EmptyName { index: usize },
    #[error("route name `{name}` is used twice")]
    DuplicateName { name: String },
}

impl RuleConfig {
    pub(crate) fn build(&self, index: usize, known_endpoints: &[&str]) -> Result<Route, Vec<RuleError>> {
        let mut errors = Vec::new();
        if self.name.trim().is_empty() {
            errors.push(RuleError::EmptyName { index });
        }
        let mut pattern = |field: &'static str, v: &Option<String>| -> Option<Pattern> {
            let v = v.as_deref()?;
            match Pattern::parse(v) {
                Ok(p) => Some(p),
                Err(message) => {
                    errors.push(RuleError::BadPattern { route: self.name.clone(), field, message });
                    None
                }
            }
        };
        let route = Route {
            name: self.name.clone(),
            namespace: pattern("namespace", &self.namespace),
            root: pattern("root", &self.root),
            message_type: pattern("message_type", &self.message_type),
            reader: pattern("reader", &self.reader),
            author: pattern("author", &self.author),
            service: pattern("service", &self.service),
            min_trust_level: self.min_trust_level,
            require_schema: self.require_schema,
            accept_warnings: self.accept_warnings,
            endpoints: self.endpoints.clone(),
        };
        if self.endpoints.is_empty() {
            errors.push(RuleError::NoEndpoints { route: self.name.clone() });
        }
        for e in &self.endpoints {
            if !known_endpoints.contains(&e.as_str()) {
                errors.push(RuleError::UnknownEndpoint { route: self.name.clone(), endpoint: e.clone() });
            }
        }
        if errors.is_empty() { Ok(route) } else { Err(errors) }
    }
}
