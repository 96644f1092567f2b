//! The rule for RabbitMQ tests: run when a broker answers at `LOTSE_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), skip with a printed reason when none does, and fail
//! when none does under `CI=true`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL to test against, or `None` (after printing why) when no broker answers.
/// Panics when no broker answers and `CI=true`.
pub async fn require_rabbitmq() -> Option<String> {
    let url =
        std::env::var("LOTSE_TEST_AMQP_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_AMQP_URL.into());
    match broker_answers(&url).await {
        Ok(()) => Some(url),
        Err(reason) if crate::in_ci() => panic!("no RabbitMQ at {} and CI=true: {reason}", redact(&url)),
        Err(reason) => {
            eprintln!("SKIPPED: no RabbitMQ at {} ({reason}); set LOTSE_TEST_AMQP_URL or start one", redact(&url));
            None
        }
    }
}

/// Connects and sends the AMQP 0-9-1 protocol header; a broker answers with a method frame
/// (`Connection.Start`, frame type 1). Needs no credentials and leaves nothing behind.
pub async fn broker_answers(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
    let host = parsed.host_str().ok_or("url has no host")?.to_owned();
    let port = parsed.port().unwrap_or(if parsed.scheme() == "amqps" { 5671 } else { 5672 });
    if parsed.scheme() == "amqps" {
        // A TLS broker: a TCP connect is the most this check does without a TLS handshake.
        return tcp(&host, port).await.map(drop);
    }
    let probe = async {
        let mut stream = tcp(&host, port).await?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.map_err(|e| format!("write: {e}"))?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.map_err(|e| format!("no answer: {e}"))?;
        if first[0] == 1 { Ok(()) } else { Err(format!("not an AMQP 0-9-1 broker (first byte {})", first[0])) }
    };
    tokio::time::timeout(Duration::from_secs(5), probe).await.map_err(|_| "timed out".to_owned())?
}

async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_no_broker() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let err = broker_answers(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await.expect_err("nothing there");
        assert!(err.contains("connect"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_amqp_is_no_broker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut header = [0u8; 8];
                let _ = socket.read_exact(&mut header).await;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let err = broker_answers(&format!("amqp://127.0.0.1:{port}")).await.expect_err("an HTTP server");
        assert!(err.contains("not an AMQP"), "{err}");
        assert_eq!(redact("amqp://u:secret@h:1/v"), "amqp://u:***@h:1/v");
    }
}
