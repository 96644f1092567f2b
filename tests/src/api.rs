//! HTTP helpers for the partner and admin APIs.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::process::Hub;

/// One answer of the hub, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub duplicate: bool,
    pub body: Value,
    pub raw: String,
}

/// A reqwest client with the helpers the suites share.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    /// Bearer token sent with every request, when set.
    pub token: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api::new()
    }
}

impl Api {
    pub fn new() -> Api {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .http1_only()
            .build()
            // Building a plain client fails only without a TLS backend, which reqwest ships.
            .expect("reqwest client");
        Api { client, token: None }
    }

    /// The same client, sending `Authorization: Bearer <token>` on every request.
    pub fn with_token(&self, token: &str) -> Api {
        Api { client: self.client.clone(), token: Some(token.to_owned()) }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `POST /v1/submissions` with the given media type and extra headers.
    pub async fn submit(
        &self,
        hub: &Hub,
        body: impl Into<reqwest::Body>,
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request =
            self.authorize(self.client.post(hub.partner_url("/v1/submissions")).header("content-type", content_type));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.body(body).send().await.context("POST /v1/submissions")?;
        read_answer(response).await
    }

    pub async fn submit_xml(&self, hub: &Hub, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.submit(hub, body, "application/xml", &[]).await
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        let response = self.authorize(self.client.get(url)).send().await.with_context(|| format!("GET {url}"))?;
        read_answer(response).await
    }

    /// `GET /v1/submissions/{id}` on the partner API; fails unless 200.
    pub async fn submission(&self, hub: &Hub, id: &str) -> anyhow::Result<Value> {
        let answer = self.get(&hub.partner_url(&format!("/v1/submissions/{id}"))).await?;
        if answer.status != 200 {
            bail!("GET submission {id}: {} {}", answer.status, answer.raw);
        }
        Ok(answer.body)
    }

    /// Polls a submission until `done` holds (every 50 ms) or `timeout` passes; returns the last view.
    pub async fn wait_submission(
        &self,
        hub: &Hub,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let view = self.submission(hub, id).await?;
            if done(&view) {
                return Ok(view);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("submission {id} did not reach the expected state in {timeout:?}; last view:\n{view:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type");
    let location = header("location");
    let duplicate = header("lotse-duplicate").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let raw = response.text().await.context("reading the answer body")?;
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Ok(Answer { status, content_type, location, duplicate, body, raw })
}

/// The kinds of a submission view's events, in order.
pub fn event_kinds(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["kind"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

/// `(kind, attempt)` of the events that concern one delivery.
pub fn delivery_events(view: &Value, delivery_id: &str) -> Vec<(String, Option<u64>)> {
    let Some(events) = view["events"].as_array() else { return Vec::new() };
    events
        .iter()
        .filter(|e| e["delivery_id"].as_str() == Some(delivery_id))
        .map(|e| (e["kind"].as_str().unwrap_or("?").to_owned(), e["attempt"].as_u64()))
        .collect()
}

/// The state of one delivery in a submission view.
pub fn delivery_state(view: &Value, delivery_id: &str) -> Option<String> {
    view["deliveries"]
        .as_array()?
        .iter()
        .find(|d| d["id"].as_str() == Some(delivery_id))
        .and_then(|d| d["state"].as_str())
        .map(str::to_owned)
}
