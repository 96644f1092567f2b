//! The path of one submission: read -> validate -> authorize -> route -> render -> store.
//!
//! Everything here runs before the 202; the answer is given only after [`Store::intake`]
//! returned, i.e. after the submission is durable.

use std::sync::Arc;

use adapters::{Limits, Meta, ReadError};
use bytes::Bytes;

use crate::config::{Config, Format};
use crate::store::{Intake, NewDelivery, NewSubmission, Rendition, Store, StoreError, SubmissionId, now_millis};

/// The media types Lotse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Xml,
    Json,
}

impl Media {
    pub fn content_type(self) -> &'static str {
        match self {
            Media::Xml => "application/xml",
            Media::Json => "application/json",
        }
    }

    /// `application/xml`, `text/xml` and `application/*+xml` are XML; `application/json` and
    /// `application/*+json` are JSON. Parameters (`; charset=utf-8`) are ignored, but a charset
    /// other than UTF-8 is refused by the reader.
    pub fn from_content_type(ct: &str) -> Option<Media> {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/xml" | "text/xml" => Some(Media::Xml),
            "application/json" => Some(Media::Json),
            e if e.starts_with("application/") && e.ends_with("+xml") => Some(Media::Xml),
            e if e.starts_with("application/") && e.ends_with("+json") => Some(Media::Json),
            _ => None,
        }
    }
}

/// Why a submission was refused. Each variant maps to one HTTP status in `api::problem`.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{message}")]
    NoRoute { message: String, message_type: Option<String>, reader: Option<String> },
    #[error("{message}")]
    Invalid { message: String, violations: Vec<serde_json::Value> },
    #[error("{0}")]
    TrustLevel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ReadError> for IntakeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Forbidden(m) => IntakeError::Malformed(format!("refused: {m}")),
            ReadError::LimitExceeded(m) => IntakeError::Malformed(format!("limit exceeded: {m}")),
            other => IntakeError::Malformed(other.to_string()),
        }
    }
}

/// What the API hands to [`Pipeline::submit`].
pub struct Submission {
    pub partner: String,
    pub media: Media,
    pub idempotency_key: Option<String>,
    pub body: Bytes,
}

pub struct Pipeline {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    limits: Limits,
}

impl Pipeline {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> Pipeline {
        let l = config.raw.limits;
        let limits = Limits { max_depth: l.max_depth, max_attributes: l.max_attributes, ..Limits::default() };
        Pipeline { config, store, limits }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Reads, routes and stores one submission.
    pub async fn submit(&self, sub: Submission) -> Result<Intake, IntakeError> {
        let Prepared { new, .. } = self.prepare(sub)?;
        Ok(self.store.intake(new).await?)
    }

    /// Everything but the store write: CPU-only, so callers may run it on a blocking thread.
    pub fn prepare(&self, sub: Submission) -> Result<Prepared, IntakeError> {
        // For JSON senders the XML form is derived first: the header lives in the XML.
        let (xml, json): (Bytes, Option<serde_json::Value>) = match sub.media {
            Media::Xml => (sub.body.clone(), None),
            Media::Json => {
                let value: serde_json::Value = serde_json::from_slice(&sub.body)
                    .map_err(|e| IntakeError::Malformed(format!("malformed JSON: {e}")))?;
                let xml = adapters::json::json_to_xml(&value)
                    .map_err(|e| IntakeError::Malformed(format!("JSON is not a Lotse JSON form: {e}")))?;
                (Bytes::from(xml), Some(value))
            }
        };
        let meta = adapters::read_meta(&xml, &self.limits)?;
        let keys = routing::Keys {
            namespace: meta.namespace.as_deref(),
            root: &meta.root,
            message_type: meta.message_type.as_deref(),
            reader: meta.reader.as_deref(),
            author: meta.author.as_deref(),
            service: meta.service.as_deref(),
        };
        let Some(route) = self.config.router.route(&keys) else {
            return Err(IntakeError::NoRoute {
                message: routing::describe(&keys),
                message_type: meta.message_type.clone(),
                reader: meta.reader.clone(),
            });
        };
        if let Some(min) = route.min_trust_level {
            let stated = meta.trust_level.as_deref().and_then(routing::TrustLevel::parse);
            if stated.is_none_or(|s| s < min) {
                return Err(IntakeError::TrustLevel(format!(
                    "route `{}` requires trust level `{min:?}`; the message states `{}`",
                    route.name,
                    meta.trust_level.as_deref().unwrap_or("none")
                )));
            }
        }
        let mut deliveries = Vec::with_capacity(route.endpoints.len());
        let mut json_cache: Option<Bytes> = None;
        for name in &route.endpoints {
            // The router only names configured endpoints (checked at config load).
            let format = self.config.endpoint(name).map(|e| e.format).unwrap_or_default();
            let rendition = match (format, sub.media) {
                (Format::Original, _) | (Format::Json, Media::Json) | (Format::Xml, Media::Xml) => None,
                (Format::Xml, Media::Json) => Some(Rendition { content_type: Media::Xml.content_type().into(), body: xml.clone() }),
                (Format::Json, Media::Xml) => {
                    let body = match &json_cache {
                        Some(b) => b.clone(),
                        None => {
                            let v = adapters::json::xml_to_json(&xml, &self.limits)
                                .map_err(|e| IntakeError::Malformed(format!("cannot convert to JSON: {e}")))?;
                            let b = Bytes::from(serde_json::to_vec(&v).map_err(|e| IntakeError::Malformed(e.to_string()))?);
                            json_cache = Some(b.clone());
                            b
                        }
                    };
                    Some(Rendition { content_type: Media::Json.content_type().into(), body })
                }
            };
            deliveries.push(NewDelivery { id: crate::store::DeliveryId::new(), endpoint: name.clone(), rendition });
        }
        drop(json);
        let mut dedup_keys = Vec::with_capacity(2);
        if let Some(k) = &sub.idempotency_key {
            dedup_keys.push(format!("idem:{}:{k}", sub.partner));
        }
        if let Some(m) = &meta.message_id {
            dedup_keys.push(format!("msg:{}:{m}", sub.partner));
        }
        let notes = meta.warnings.iter().map(|w| format!("warning: {w}")).collect();
        let new = NewSubmission {
            id: SubmissionId::new(),
            partner: sub.partner,
            dedup_keys,
            received_at: now_millis(),
            content_type: sub.media.content_type().to_owned(),
            meta: serde_json::to_value(&meta).unwrap_or_default(),
            message_id: meta.message_id.clone(),
            route: route.name.clone(),
            original: sub.body,
            deliveries,
            notes,
        };
        Ok(Prepared { new, meta })
    }
}

pub struct Prepared {
    pub new: NewSubmission,
    pub meta: Meta,
}
