//! RFC 9457 problem details, and the one table that maps errors to them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::intake::IntakeError;
use crate::store::StoreError;

/// A problem+json response.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Short slug; the `type` URI is `urn:lotse:problem:<slug>`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members (boxed: most problems have none, and handlers return `Result<_, Problem>`).
    pub extra: Option<Box<Map<String, Value>>>,
    /// `Retry-After` in seconds, for a condition that passes (503).
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, slug, title, detail: detail.into(), extra: None, retry_after: None }
    }

    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with(mut self, key: &str, value: Value) -> Problem {
        self.extra.get_or_insert_default().insert(key.to_owned(), value);
        self
    }

    pub fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("no {what} with this id"))
    }

    /// A query parameter out of its range or a combination the handler does not take.
    pub fn bad_filter(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-filter", "Bad filter", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("urn:lotse:problem:{}", self.slug)));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        if let Some(extra) = self.extra {
            body.extend(*extra);
        }
        let mut resp = (self.status, Value::Object(body).to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        resp
    }
}

/// Makes every error answer problem+json, also the ones axum gives before a handler runs: a
/// query string or path segment its extractor cannot read (`text/plain`), a method the route
/// does not take (`405`, empty). Answers that are problems already pass unchanged.
pub async fn every_error_as_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/problem+json");
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    // axum's own rejections are one short line of text.
    let text = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    let (slug, title) = match status {
        StatusCode::BAD_REQUEST => ("malformed", "Malformed request"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "Message too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        s if s.is_server_error() => ("internal", "Internal error"),
        _ => ("error", "Request refused"),
    };
    let mut problem = Problem::new(status, slug, title, detail).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        // 5xx bodies never carry internals; the log has them.
        static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
        if let Some(left_out) = LOG.allow() {
            tracing::error!(error = %e, left_out, "store error");
        }
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Store unavailable",
            "the submission could not be stored; nothing was accepted, send it again later",
        )
        // A full disk, a broker restart: seconds, usually. Clients that honour it spread out.
        .retry_after(5)
    }
}

impl From<IntakeError> for Problem {
    fn from(e: IntakeError) -> Problem {
        match e {
            IntakeError::Malformed(m) => Problem::new(StatusCode::BAD_REQUEST, "malformed", "Malformed message", m),
            IntakeError::Forbidden(m) => Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", m),
            IntakeError::TooLarge(m) => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "Message too large", m)
            }
            IntakeError::NoRoute { message, message_type, reader } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "no-route", "No route for this message", message)
                    .with("message_type", json!(message_type))
                    .with("reader", json!(reader))
            }
            IntakeError::Invalid { message, violations } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "Message is not valid", message)
                    .with("violations", Value::Array(violations))
            }
            IntakeError::TrustLevel(m) => {
                Problem::new(StatusCode::FORBIDDEN, "trust-level", "Trust level too low for this route", m)
            }
            IntakeError::Store(e) => e.into(),
        }
    }
}
