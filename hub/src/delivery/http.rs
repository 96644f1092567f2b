//! The HTTP transport: POST the payload with the Lotse headers and classify the answer.

use std::time::{Duration, SystemTime};

use super::retry::{AttemptResult, parse_retry_after};
use crate::config::EndpointConfig;
use crate::store::Lease;

pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(endpoint: &EndpointConfig) -> anyhow::Result<HttpTransport> {
        let client = reqwest::Client::builder()
            .connect_timeout(endpoint.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(endpoint.concurrency)
            // Redirects could send a case to a host the operator never configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lotse/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpTransport { client, url: reqwest::Url::parse(&endpoint.url)?, timeout: endpoint.timeout })
    }

    pub async fn send(&self, lease: &Lease) -> AttemptResult {
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header("content-type", &lease.content_type)
            .header("lotse-delivery-id", lease.delivery_id.to_string())
            .header("lotse-submission-id", lease.submission_id.to_string())
            .header("lotse-attempt", lease.attempt.to_string())
            .body(lease.payload.clone());
        if let Some(m) = &lease.message_id {
            req = req.header("lotse-message-id", m);
        }
        match req.send().await {
            Ok(resp) => classify(resp).await,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect error"
                } else {
                    "request error"
                };
                AttemptResult::Transient { error: format!("{kind}: {}", error_chain(&e)), retry_after: None }
            }
        }
    }
}

async fn classify(resp: reqwest::Response) -> AttemptResult {
    let status = resp.status();
    if status.is_success() {
        return AttemptResult::Delivered { status: status.as_u16() };
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // A little of the receiver's answer helps the operator; more would bloat the event log.
    let snippet: String = match resp.text().await {
        Ok(t) => t.chars().take(200).collect(),
        Err(_) => String::new(),
    };
    let error = if snippet.trim().is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), snippet.trim())
    };
    match status.as_u16() {
        408 | 429 => AttemptResult::Transient { error, retry_after },
        s if s >= 500 => AttemptResult::Transient { error, retry_after },
        _ => AttemptResult::Permanent { error },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
