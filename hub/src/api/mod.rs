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
    /// Each configured partner's places among the submissions in flight.
    pub partner_slots: PartnerSlots,
}

/// Per configured partner, a semaphore of `limits.max_in_flight_per_partner` places.
#[derive(Default)]
pub struct PartnerSlots(std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>);

impl PartnerSlots {
    pub fn for_config(config: &Config) -> PartnerSlots {
        let places = config.raw.limits.per_partner();
        let slots = config
            .raw
            .partners
            .iter()
            .map(|p| (p.name.clone(), Arc::new(tokio::sync::Semaphore::new(places))))
            .collect();
        PartnerSlots(slots)
    }

    /// A place for one submission of `partner`, held until dropped; `None` when the partner
    /// has all of its places taken. Partners without slots (`anonymous`) always get one.
    pub fn take(&self, partner: &str) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        match self.0.get(partner) {
            None => Some(None),
            Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        }
    }
}

pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;
