//! The path of one submission: read -> validate -> authorize -> route -> render -> store.
//!
//! Everything here runs before the 202; the answer is given only after [`Store::intake`]
//! returned, i.e. after the submission is durable.

use std::sync::Arc;

use std::collections::HashMap;

use adapters::fitconnect::Assurance;
use adapters::json::Hints;
use adapters::validate::{ValidateError, Validator, Verdict};
use adapters::{Limits, Meta, ReadError};
use bytes::Bytes;

use crate::config::{Config, Format};
use crate::store::{NewDelivery, NewSubmission, Rendition, Store, StoreError, SubmissionId, now_millis};

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

/// What the API hands to [`Pipeline::prepare`].
pub struct Submission {
    pub partner: String,
    pub media: Media,
    pub idempotency_key: Option<String>,
    pub body: Bytes,
}

/// What the schema catalog gives intake: XSD validation, and per schema the type hints of the
/// schema-aware JSON form.
pub struct Schemas {
    pub validator: Validator,
    /// Catalog schema id -> hints; a schema whose hints could not be built is missing here and
    /// its messages get the generic JSON form.
    pub hints: HashMap<String, Hints>,
}

pub struct Pipeline {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    limits: Limits,
    schemas: Option<Arc<Schemas>>,
}

impl Pipeline {
    /// Without schemas, no message is validated (and routes with `require_schema` refuse all),
    /// and JSON renditions use the generic form.
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, schemas: Option<Arc<Schemas>>) -> Pipeline {
        let l = config.raw.limits;
        let limits = Limits { max_depth: l.max_depth, max_attributes: l.max_attributes, ..Limits::default() };
        Pipeline { config, store, limits, schemas }
    }

    /// Whether `prepare` may block on XSD validation (callers then run it on a blocking thread).
    pub fn validates(&self) -> bool {
        self.schemas.is_some()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Everything but the store write: CPU-only, so callers may run it on a blocking thread. The
    /// caller then hands the result to [`Store::intake`].
    pub fn prepare(&self, sub: Submission) -> Result<NewSubmission, IntakeError> {
        // What the body is: XML, the JSON form of XML (converted first: the header lives in the
        // XML), or FIT-Connect metadata (JSON with its own meta; it has no XML form).
        // `assurance`: the trust level of FIT-Connect identification reports, and whether it was
        // verified (XÖV headers state none).
        let (xml, meta, assurance): (Option<Bytes>, Meta, Option<Assurance>) = match sub.media {
            Media::Xml => (Some(sub.body.clone()), adapters::read_meta(&sub.body, &self.limits)?, None),
            Media::Json => {
                // FIT-Connect metadata is held to its own limits (1 MiB, 64 levels) before
                // anything parses it: a byte scan finds its `$schema`.
                if adapters::fitconnect::declares_metadata(&sub.body) {
                    adapters::fitconnect::check_limits(&sub.body).map_err(|e| {
                        // Too many bytes is 413, as for any body over its limit; too deep, 400.
                        if sub.body.len() > adapters::fitconnect::MAX_BYTES {
                            IntakeError::TooLarge(e.to_string())
                        } else {
                            IntakeError::Malformed(format!("malformed FIT-Connect metadata: {e}"))
                        }
                    })?;
                }
                // Strict: a duplicate key or serde_json's `RawValue` key would let routing read
                // one document while a `format = "json"` endpoint gets the bytes, another.
                let value = adapters::json::parse_strict(&sub.body)
                    .map_err(|e| IntakeError::Malformed(format!("malformed JSON: {e}")))?;
                if adapters::fitconnect::is_metadata(&value) {
                    // Held to its limits above: `declares_metadata` agrees with `is_metadata` on
                    // a strictly parsed document (the json_form fuzz target asserts it).
                    let read = adapters::fitconnect::read_parsed(&value, &self.config.trust_keys)
                        .map_err(|e| IntakeError::Malformed(format!("malformed FIT-Connect metadata: {e}")))?;
                    (None, read.meta, read.assurance)
                } else {
                    // Its XML is held to the body limit too, and refused while it is built (a
                    // JSON array repeats its element's name per item: a few hundred KB of JSON
                    // could otherwise become gigabytes of XML); and re-read under this intake's
                    // limits, so JSON is refused exactly where the same XML would be.
                    let max = self.config.raw.limits.max_body_bytes;
                    let (xml, meta) =
                        adapters::json::json_to_xml_and_meta(&value, max, &self.limits).map_err(|e| match e {
                            adapters::json::ConvertError::TooLarge => IntakeError::TooLarge(format!(
                                "the XML form of this JSON is larger than the limit of {max} bytes"
                            )),
                            adapters::json::ConvertError::Read(e @ ReadError::LimitExceeded(_)) => IntakeError::from(e),
                            e => IntakeError::Malformed(format!("JSON is not a Lotse JSON form: {e}")),
                        })?;
                    (Some(Bytes::from(xml)), meta, None)
                }
            }
        };
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
        // Only a verified level counts: an unverified one is a claim anyone can forge.
        let verified_assurance = assurance.filter(|a| a.verified);
        let verified = verified_assurance.and_then(|a| routing::TrustLevel::parse(a.level.as_str()));
        if let Some(min) = route.min_trust_level
            && verified.is_none_or(|s| s < min)
        {
            let stated = match (&meta.trust_level, verified) {
                (Some(level), Some(_)) => format!("`{level}`"),
                (Some(level), None) => format!("`{level}`, not verified (no trust key in `[trust]` checked it)"),
                (None, _) => "no verified level".to_owned(),
            };
            return Err(IntakeError::TrustLevel(format!(
                "route `{}` requires trust level `{min:?}`; the message states {stated}",
                route.name
            )));
        }
        let mut notes: Vec<String> = Vec::new();
        if let Some(a) = verified_assurance {
            notes.push(format!(
                "trust level `{}` verified: identificationReport signed by a `[trust]` key",
                a.level.as_str()
            ));
        }
        if !meta.warnings.is_empty() {
            // An inconsistent XÖV header is refused unless the route accepts it. FIT-Connect
            // metadata warnings (e.g. an unverified trust level) are information: recorded only.
            if xml.is_some() && !route.accept_warnings {
                return Err(IntakeError::Invalid {
                    message: format!(
                        "the message header is inconsistent: {} (route `{}` does not accept warnings)",
                        meta.warnings.join("; "),
                        route.name
                    ),
                    violations: Vec::new(),
                });
            }
            notes.extend(meta.warnings.iter().map(|w| format!("warning: {w}")));
        }
        let mut schema_id = None;
        let verdict = match &xml {
            Some(xml) => self.validate(xml)?,
            None => {
                if route.require_schema || self.config.raw.schemas.require_known {
                    return Err(IntakeError::Invalid {
                        message: format!(
                            "FIT-Connect metadata is not validated against its JSON schema yet, and route `{}` requires validation",
                            route.name
                        ),
                        violations: Vec::new(),
                    });
                }
                notes.push("FIT-Connect metadata: read, not validated against its JSON schema".into());
                Some(Verdict::UnknownNamespace { namespace: meta.namespace.clone(), version: meta.version.clone() })
            }
        };
        match verdict {
            Some(Verdict::Valid { schema }) => {
                notes.push(format!("valid against schema `{schema}`"));
                schema_id = Some(schema);
            }
            Some(Verdict::Invalid { schema, violations }) => {
                let first = violations
                    .first()
                    .map(|v| format!(": line {}, {}: {}", v.line, v.path, v.message))
                    .unwrap_or_default();
                return Err(IntakeError::Invalid {
                    message: format!("not valid against schema `{schema}` ({} violation(s)){first}", violations.len()),
                    violations: violations.iter().map(|v| serde_json::to_value(v).unwrap_or_default()).collect(),
                });
            }
            Some(Verdict::UnknownNamespace { .. }) | None
                if route.require_schema || self.config.raw.schemas.require_known =>
            {
                return Err(IntakeError::Invalid {
                    message: format!(
                        "no schema is known for namespace `{}`{} and route `{}` requires validation",
                        meta.namespace.as_deref().unwrap_or("-"),
                        meta.version.as_deref().map(|v| format!(" version `{v}`")).unwrap_or_default(),
                        route.name
                    ),
                    violations: Vec::new(),
                });
            }
            Some(Verdict::UnknownNamespace { .. }) => {
                notes.push("not validated: no schema known for this namespace".into())
            }
            None => notes.push("not validated: validation is switched off".into()),
        }
        let mut deliveries = Vec::with_capacity(route.endpoints.len());
        let mut json_cache: Option<Bytes> = None;
        for name in &route.endpoints {
            // The router only names configured endpoints (checked at config load).
            let format = self.config.endpoint(name).map(|e| e.format).unwrap_or_default();
            let Some(xml) = &xml else {
                // FIT-Connect metadata travels as sent; it has no XML form.
                if format == Format::Xml {
                    return Err(IntakeError::Invalid {
                        message: format!("endpoint `{name}` wants XML, and FIT-Connect metadata has no XML form"),
                        violations: Vec::new(),
                    });
                }
                deliveries.push(NewDelivery {
                    id: crate::store::DeliveryId::new(),
                    endpoint: name.clone(),
                    rendition: None,
                });
                continue;
            };
            let rendition = match (format, sub.media) {
                (Format::Original, _) | (Format::Json, Media::Json) | (Format::Xml, Media::Xml) => None,
                (Format::Xml, Media::Json) => {
                    Some(Rendition { content_type: Media::Xml.content_type().into(), body: xml.clone() })
                }
                (Format::Json, Media::Xml) => {
                    let body = match &json_cache {
                        Some(b) => b.clone(),
                        None => {
                            // Schema-aware form when the message was validated against a schema
                            // whose hints we have; the generic form otherwise.
                            let hints = schema_id.as_deref().and_then(|id| self.schemas.as_ref()?.hints.get(id));
                            let mut out = Vec::new();
                            let written = match hints {
                                Some(h) => adapters::json::write_json_typed(xml, &self.limits, h, &mut out),
                                None => adapters::json::write_json(xml, &self.limits, &mut out),
                            };
                            written.map_err(|e| IntakeError::Malformed(format!("cannot convert to JSON: {e}")))?;
                            let b = Bytes::from(out);
                            json_cache = Some(b.clone());
                            b
                        }
                    };
                    Some(Rendition { content_type: Media::Json.content_type().into(), body })
                }
            };
            deliveries.push(NewDelivery { id: crate::store::DeliveryId::new(), endpoint: name.clone(), rendition });
        }
        let mut dedup_keys = Vec::with_capacity(2);
        if let Some(k) = &sub.idempotency_key {
            dedup_keys.push(crate::store::PartnerRef::IdempotencyKey(k).dedup_key(&sub.partner));
        }
        if let Some(m) = &meta.message_id {
            dedup_keys.push(crate::store::PartnerRef::MessageId(m).dedup_key(&sub.partner));
        }
        Ok(NewSubmission {
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
        })
    }
}

impl Pipeline {
    /// `None` when no validator is configured.
    fn validate(&self, xml: &[u8]) -> Result<Option<Verdict>, IntakeError> {
        let Some(schemas) = &self.schemas else { return Ok(None) };
        match schemas.validator.validate(xml) {
            Ok(verdict) => Ok(Some(verdict)),
            Err(ValidateError::Malformed { line, column, message }) => {
                Err(IntakeError::Malformed(format!("malformed XML at line {line}, column {column}: {message}")))
            }
            Err(ValidateError::Forbidden(m)) => Err(IntakeError::Malformed(format!("refused: {m}"))),
            Err(e @ (ValidateError::Schema { .. } | ValidateError::Unavailable(_))) => {
                tracing::error!(error = %e, "validation failed on Lotse's side");
                Err(IntakeError::Store(StoreError::Unavailable(format!("validation unavailable: {e}"))))
            }
        }
    }
}
