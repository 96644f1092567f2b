//! HTTP APIs: the partner API ([`partner`]) on `listen` and the admin API ([`admin`]) on
//! `admin_listen`, never on the same port. Errors are RFC 9457 problem+json ([`problem`]).

pub mod admin;
pub mod admin_cli;
pub mod partner;
pub mod problem;

use std::sync::Arc;

use crate::config::Config;
use crate::intake::Pipeline;

/// What the handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    /// sha256(token) -> partner name; empty = open access as `anonymous`.
    pub partners: std::collections::HashMap<[u8; 32], String>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub paused: crate::delivery::Paused,
}

pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;
