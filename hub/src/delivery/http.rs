//! The HTTP transport: POST the payload with the Lotse headers and classify the answer.

use std::time::{Duration, SystemTime};

use super::retry::{AttemptResult, parse_retry_after};
use crate::config::EndpointConfig;
use crate::store::{Handover, Lease};

pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(endpoint: &EndpointConfig) -> anyhow::Result<HttpTransport> {
        let tls = endpoint.tls()?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(endpoint.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(endpoint.concurrency)
            // Redirects could send a case to a host the operator never configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lotse/", env!("CARGO_PKG_VERSION")));
        if let Some(roots) = tls.roots {
            client = client.tls_certs_only(roots);
        }
        if let Some(identity) = tls.identity {
            client = client.identity(identity);
        }
        let client = client.build()?;
        Ok(HttpTransport { client, url: reqwest::Url::parse(&endpoint.url)?, timeout: endpoint.timeout })
    }

    pub async fn send(&self, lease: &Lease) -> AttemptResult {
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header("content-type", &lease.content_type)
            .body(lease.payload.clone());
        // A message id no header can carry (the reader leaves those out; this guards the
        // other sources) is not sent, rather than failing every attempt of the delivery.
        for (name, value) in super::lotse_headers(lease) {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
                req = req.header(name, v);
            }
        }
        match req.send().await {
            Ok(resp) => classify(resp).await,
            // Without the URL: its query may hold the receiver's token, and the event log
            // (which the partner reads) names the endpoint anyway.
            Err(e) => AttemptResult::Transient { error: request_error(e), retry_after: None },
        }
    }
}

async fn classify(resp: reqwest::Response) -> AttemptResult {
    let status = resp.status();
    if status.is_success() {
        return AttemptResult::Delivered { via: Handover::Http(status.as_u16()) };
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let snippet = snippet(resp).await;
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

/// How much of a refusing receiver's answer is read: its start helps the operator (200
/// characters go into the event log); the rest is never read, so a receiver that answers an
/// error with a huge or endless body cannot fill the hub's memory or hold the attempt until
/// its timeout. The connection is dropped with the unread rest.
const SNIPPET_READ_BYTES: usize = 4096;

async fn snippet(mut resp: reqwest::Response) -> String {
    let mut head = Vec::new();
    while head.len() < SNIPPET_READ_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk[..chunk.len().min(SNIPPET_READ_BYTES - head.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).chars().take(200).collect()
}

/// A request that got no answer, in one line: what kind of failure and its causes, without the
/// URL (also for `lotse fetch`).
pub(crate) fn request_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    format!("{kind}: {}", error_chain(&e))
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;

    use super::{Handover, HttpTransport};
    use crate::config::{EndpointConfig, EndpointKind, Format};
    use crate::delivery::retry::AttemptResult;
    use crate::store::Lease;

    /// A receiver answering every request with `status` and a body that never ends.
    async fn endless_receiver(status: StatusCode) -> std::net::SocketAddr {
        let app = axum::Router::new().fallback(move || async move {
            let chunk = Bytes::from("Wartung: bitte spaeter erneut senden. ".repeat(100));
            (status, Body::from_stream(futures::stream::repeat(Ok::<_, Infallible>(chunk))))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn endpoint(url: impl Into<String>, timeout: Duration) -> EndpointConfig {
        EndpointConfig {
            name: "bauamt".into(),
            kind: EndpointKind::Http,
            url: url.into(),
            url_env: None,
            format: Format::default(),
            concurrency: 1,
            timeout,
            path: None,
            exchange: None,
            routing_key: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            token: None,
            token_env: None,
        }
    }

    fn lease() -> Lease {
        crate::delivery::sample_lease("application/xml", "<a/>", None)
    }

    /// An error answer with an endless body: the attempt reads its start, reports it, and ends,
    /// without reading on until the (here one-minute) timeout or buffering what it read.
    #[tokio::test]
    async fn an_endless_error_body_is_cut_after_its_start() {
        for (status, transient) in [(StatusCode::SERVICE_UNAVAILABLE, true), (StatusCode::BAD_REQUEST, false)] {
            let addr = endless_receiver(status).await;
            let endpoint = endpoint(format!("http://{addr}/"), Duration::from_secs(60));
            let transport = HttpTransport::new(&endpoint).expect("transport");
            let result = tokio::time::timeout(Duration::from_secs(20), transport.send(&lease()))
                .await
                .expect("the attempt ended long before its timeout");
            let error = match (result, transient) {
                (AttemptResult::Transient { error, .. }, true) | (AttemptResult::Permanent { error }, false) => error,
                (other, _) => panic!("{status}: {other:?}"),
            };
            let want = format!("HTTP {}: Wartung: bitte spaeter erneut senden.", status.as_u16());
            assert!(error.starts_with(&want), "{error}");
            assert!(error.chars().count() <= 200 + want.len(), "{} characters kept", error.chars().count());
        }
    }

    /// An endpoint URL may carry the receiver's credentials (`https://user:password@host/`):
    /// they reach the receiver as basic auth, and never the attempt's error text, which goes
    /// into the event log that partners and operators read.
    #[tokio::test]
    async fn credentials_in_the_endpoint_url_stay_out_of_errors() {
        let endpoint = endpoint("http://lotse:s3cret-pw@127.0.0.1:1/eingang?token=q-s3cret", Duration::from_secs(5));
        let transport = HttpTransport::new(&endpoint).expect("transport");
        let error = match transport.send(&lease()).await {
            AttemptResult::Transient { error, .. } => error,
            other => panic!("nothing listens on port 1: {other:?}"),
        };
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("connect"), "{error}");
    }

    /// A message id that no HTTP header can carry does not fail the delivery: the payload goes
    /// out without `Lotse-Message-Id`; a normal one is sent.
    #[tokio::test]
    async fn a_message_id_no_header_can_carry_is_left_out() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(headers.get("lotse-message-id").map(|v| v.as_bytes().to_vec()));
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let endpoint = endpoint(format!("http://{addr}/"), Duration::from_secs(10));
        let transport = HttpTransport::new(&endpoint).expect("transport");
        for (id, sent) in [("a\nb", None), ("8fa6a8ae-6a53", Some(b"8fa6a8ae-6a53".to_vec()))] {
            let lease = Lease { message_id: Some(id.into()), ..lease() };
            assert_eq!(transport.send(&lease).await, AttemptResult::Delivered { via: Handover::Http(200) }, "{id:?}");
            assert_eq!(rx.recv().await.expect("the receiver saw it"), sent, "{id:?}");
        }
    }

    /// An endpoint with `tls_ca` and a client certificate reaches a receiver on its own PKI
    /// that demands one; without the client certificate, or trusting the system's CAs instead
    /// of `tls_ca`, the attempt fails (transient: the receiver or the config can be fixed).
    #[tokio::test]
    async fn mutual_tls_to_a_receiver_on_its_own_pki() {
        let pki = crate::testing_pki::Pki::new();
        let addr = pki.receiver().await;
        let url = format!("https://127.0.0.1:{}/eingang", addr.port());
        let cases = [
            ("CA and client certificate", pki.file("ca.pem"), pki.file("client.pem"), pki.file("client.key"), None),
            ("no client certificate", pki.file("ca.pem"), None, None, Some("CertificateRequired")),
            ("the system's CAs", None, pki.file("client.pem"), pki.file("client.key"), Some("UnknownIssuer")),
        ];
        for (case, tls_ca, tls_client_cert, tls_client_key, refused) in cases {
            let endpoint = EndpointConfig {
                tls_ca,
                tls_client_cert,
                tls_client_key,
                ..endpoint(url.as_str(), Duration::from_secs(10))
            };
            let transport = HttpTransport::new(&endpoint).expect("transport");
            match (transport.send(&lease()).await, refused) {
                (AttemptResult::Delivered { via: Handover::Http(200) }, None) => {}
                (AttemptResult::Transient { error, .. }, Some(why)) if error.contains(why) => {}
                (other, _) => panic!("{case}: {other:?}"),
            }
        }
    }
}
