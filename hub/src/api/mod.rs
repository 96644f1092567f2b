//! HTTP APIs: the partner API ([`partner`]) on `listen` and the admin API ([`admin`]) on
//! `admin_listen`, never on the same port. Errors are RFC 9457 problem+json ([`problem`]).

pub mod admin;
pub mod admin_cli;
pub mod mailbox;
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
    /// Mailbox endpoints: their tokens and what their agencies fetched.
    pub mailboxes: mailbox::Mailboxes,
    /// What this process's delivery workers are doing (for the admin overview).
    pub workers: crate::delivery::Workers,
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

impl AppState {
    /// The handlers' state for `config`: partners by token digest, their places in flight.
    pub fn new(
        config: Arc<Config>,
        pipeline: Pipeline,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        paused: crate::delivery::Paused,
    ) -> AppState {
        AppState {
            partners: config.partner_tokens.iter().map(|(t, n)| (token_digest(t), n.clone())).collect(),
            partner_slots: PartnerSlots::for_config(&config),
            mailboxes: mailbox::Mailboxes::for_config(&config),
            config,
            pipeline,
            metrics,
            paused,
            workers: crate::delivery::Workers::default(),
        }
    }
}

/// Whom the request's bearer token names in `holders` (sha256(token) -> name): a partner or a
/// mailbox. Comparing digests keeps the lookup free of timing differences on the secret itself.
pub fn token_holder<'a>(
    holders: &'a std::collections::HashMap<[u8; 32], String>,
    headers: &axum::http::HeaderMap,
) -> Option<&'a String> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)?;
    holders.get(&token_digest(token))
}

pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;

/// `?message_id=` or `?idempotency_key=`: the id a partner knows its submission by (the partner
/// API's and the admin API's lookup).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FindQuery {
    message_id: Option<String>,
    idempotency_key: Option<String>,
    /// Admin API only: one partner's (the partner API always looks up the caller's own).
    pub partner: Option<String>,
}

impl FindQuery {
    /// The one id given, or `400 bad-filter`.
    pub fn partner_ref(&self) -> Result<crate::store::PartnerRef<'_>, problem::Problem> {
        use crate::store::PartnerRef;
        match (self.message_id.as_deref(), self.idempotency_key.as_deref()) {
            (Some(m), None) if !m.is_empty() => Ok(PartnerRef::MessageId(m)),
            (None, Some(k)) if !k.is_empty() => Ok(PartnerRef::IdempotencyKey(k)),
            _ => Err(problem::Problem::bad_filter("give exactly one of `message_id` and `idempotency_key`")),
        }
    }
}
