//! The AMQP transport (`kind = "amqp"`): each delivery published to the agency's broker, as a
//! persistent message with publisher confirms.
//!
//! Delivered means the agency's broker confirmed the message (it is in a queue there, on its
//! disk for a durable queue). Published with `mandatory`: a message no queue takes (the
//! exchange or the binding is missing) comes back and counts as a transient failure, like a
//! broker that does not answer, nacks, or blocks publishers; the operator or the agency can fix
//! each, and the retry budget applies. The message id is the delivery id and the `lotse-*`
//! headers carry what the HTTP headers carry, so consumers can drop repeats. One connection per
//! endpoint, opened on the first attempt and again after any failure.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::retry::AttemptResult;
use crate::config::EndpointConfig;
use crate::store::{Handover, Lease};

/// How long closing a connection to an agency's broker may take (it is dropped after).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub struct AmqpTransport {
    name: String,
    url: String,
    exchange: String,
    routing_key: String,
    timeout: Duration,
    /// CAs and client certificate for an `amqps://` URL (`tls_*`).
    tls: lapin::tcp::OwnedTLSConfig,
    /// The open connection and its confirming channel; `None` until the first attempt and after
    /// a failure.
    session: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl AmqpTransport {
    pub fn new(endpoint: &EndpointConfig) -> anyhow::Result<AmqpTransport> {
        Ok(AmqpTransport {
            name: endpoint.name.clone(),
            url: endpoint.url.clone(),
            tls: endpoint.amqp_tls()?,
            exchange: endpoint.exchange.clone().unwrap_or_default(),
            routing_key: endpoint.routing_key.clone().unwrap_or_default(),
            timeout: endpoint.timeout,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// A confirming channel on a live connection, opening one if needed. Errors never carry
    /// the URL (it holds the password; the event log is read by partners).
    async fn channel(&self) -> Result<Channel, String> {
        let mut session = self.session.lock().await;
        if let Some((conn, ch)) = session.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let props = ConnectionProperties::default()
            .with_connection_name(format!("lotse endpoint {} pid {}", self.name, std::process::id()).into());
        // Every step bounded by the endpoint's timeout, the session lock held meanwhile: a
        // broker that accepts the connection and then stops answering must not stall every
        // attempt of the endpoint (and shutdown) until heartbeats notice.
        let connect = async {
            let runtime = lapin::runtime::default_runtime()?;
            lapin::Connect::connect_with_config(self.url.as_str(), props, self.tls.clone(), runtime).await
        };
        let conn = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("no connection to the broker within {:?}", self.timeout))?
            .map_err(|e| format!("cannot connect to the broker: {e}"))?;
        let opened = tokio::time::timeout(self.timeout, async {
            let ch = conn.create_channel().await.map_err(|e| format!("cannot open a channel: {e}"))?;
            ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| format!("confirm mode: {e}"))?;
            Ok::<_, String>(ch)
        })
        .await
        .unwrap_or_else(|_| Err(format!("the broker did not open a channel within {:?}", self.timeout)));
        let ch = match opened {
            Ok(ch) => ch,
            Err(e) => {
                let _ = tokio::time::timeout(CLOSE_WAIT, conn.close(200, "lotse: channel setup failed".into())).await;
                return Err(e);
            }
        };
        *session = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn forget(&self) {
        if let Some((conn, _)) = self.session.lock().await.take() {
            let closing = conn.close(200, "lotse: starting over after a failed publish".into());
            let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
        }
    }

    pub async fn send(&self, lease: &Lease) -> AttemptResult {
        let transient = |error: String| AttemptResult::Transient { error, retry_after: None };
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => return transient(format!("amqp: {e}")),
        };
        let (Ok(exchange), Ok(routing_key)) =
            (ShortString::try_new(self.exchange.as_str()), ShortString::try_new(self.routing_key.as_str()))
        else {
            return AttemptResult::Permanent { error: "amqp: exchange or routing key longer than 255 bytes".into() };
        };
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let published = tokio::time::timeout(self.timeout, async {
            ch.basic_publish(exchange, routing_key, options, &lease.payload, properties(lease)).await?.await
        })
        .await;
        match published {
            Ok(Ok(Confirmation::Ack(None))) => AttemptResult::Delivered { via: Handover::Amqp },
            Ok(Ok(Confirmation::Ack(Some(_)))) => transient(format!(
                "amqp: no queue took the message (exchange `{}`, routing key `{}`)",
                self.exchange, self.routing_key
            )),
            Ok(Ok(Confirmation::Nack(_))) => transient("amqp: the broker refused the message (nack)".into()),
            Ok(Ok(Confirmation::NotRequested)) => transient("amqp: publisher confirms are off".into()),
            Ok(Err(e)) => {
                self.forget().await;
                transient(format!("amqp: publish failed: {e}"))
            }
            Err(_) => {
                self.forget().await;
                transient(format!("amqp: no confirm within {:?}", self.timeout))
            }
        }
    }
}

/// Persistent, with the delivery id as message id and the Lotse headers.
fn properties(lease: &Lease) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in super::lotse_headers(lease) {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value.into_bytes())));
    }
    let mut props =
        BasicProperties::default().with_delivery_mode(2).with_message_id(lease.delivery_id.to_string().into());
    if let Ok(ct) = ShortString::try_new(lease.content_type.as_str()) {
        props = props.with_content_type(ct);
    }
    props.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};

    use super::*;
    use crate::config::{EndpointKind, Format};

    fn endpoint(url: &str, queue: &str) -> EndpointConfig {
        EndpointConfig {
            name: "gewerbeamt".into(),
            kind: EndpointKind::Amqp,
            url: url.into(),
            url_env: None,
            path: None,
            exchange: None,
            routing_key: Some(queue.into()),
            format: Format::default(),
            concurrency: 1,
            timeout: Duration::from_secs(10),
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            token: None,
            token_env: None,
        }
    }

    /// The agency's broker: the local one at `LOTSE_TEST_AMQP_URL`; `None` (skip) when none
    /// answers and CI is not set.
    async fn broker() -> Option<(String, Connection)> {
        let url =
            std::env::var("LOTSE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        match tokio::time::timeout(Duration::from_secs(10), Connection::connect(&url, ConnectionProperties::default()))
            .await
        {
            Ok(Ok(conn)) => Some((url, conn)),
            failed => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true needs RabbitMQ: {failed:?}");
                eprintln!("skipped: no RabbitMQ at LOTSE_TEST_AMQP_URL");
                None
            }
        }
    }

    /// A fresh queue of the agency's, and a channel to read it.
    async fn agency_queue(conn: &Connection) -> (String, Channel) {
        let queue = format!("lotse-test-agency-{}", uuid::Uuid::new_v4().simple());
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("the agency's queue");
        (queue, ch)
    }

    /// A delivery arrives in the agency's queue with its bytes, id and Lotse headers; a routing
    /// key no queue is bound to is a transient failure (the message came back), and the
    /// transport keeps working after it.
    #[tokio::test]
    async fn a_delivery_lands_in_the_agencys_queue_and_an_unroutable_one_is_retried() {
        let Some((url, conn)) = broker().await else { return };
        let (queue, ch) = agency_queue(&conn).await;

        let transport = AmqpTransport::new(&endpoint(&url, &queue)).expect("transport");
        let lease = Lease {
            attempt: 2,
            ..crate::delivery::sample_lease(
                "application/xml",
                "<gewerbeanzeige/>",
                Some("8fa6a8ae-6a53-4980-bbd1-58d3abe540e0"),
            )
        };
        assert_eq!(transport.send(&lease).await, AttemptResult::Delivered { via: Handover::Amqp });

        let mut consumer = ch
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume");
        let got = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream goes on")
            .expect("a delivery");
        assert_eq!(got.data, b"<gewerbeanzeige/>");
        assert_eq!(got.properties.message_id().as_ref().map(|m| m.to_string()), Some(lease.delivery_id.to_string()));
        assert_eq!(got.properties.delivery_mode(), &Some(2));
        let headers = got.properties.headers().clone().unwrap_or_default();
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        };
        assert_eq!(header("lotse-message-id").as_deref(), Some("8fa6a8ae-6a53-4980-bbd1-58d3abe540e0"));
        assert_eq!(header("lotse-attempt").as_deref(), Some("2"));
        got.acker.ack(BasicAckOptions::default()).await.expect("ack");

        let lost = AmqpTransport::new(&endpoint(&url, &format!("{queue}-missing"))).expect("transport");
        match lost.send(&lease).await {
            AttemptResult::Transient { error, .. } => {
                assert!(error.contains("no queue took the message") && !error.contains("guest"), "{error}")
            }
            other => panic!("unroutable: {other:?}"),
        }
        assert_eq!(transport.send(&lease).await, AttemptResult::Delivered { via: Handover::Amqp }, "still working");
        let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }

    /// No broker there: transient, and the message does not show the URL's password.
    #[tokio::test]
    async fn no_broker_is_transient_without_the_password() {
        let transport = AmqpTransport::new(&endpoint("amqp://lotse:s3cret@127.0.0.1:1/%2f", "q")).expect("transport");
        let lease = crate::delivery::sample_lease("application/xml", "<a/>", None);
        match transport.send(&lease).await {
            AttemptResult::Transient { error, .. } => assert!(!error.contains("s3cret"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    /// An agency's broker on its own PKI over `amqps://`, wanting a client certificate (the
    /// local RabbitMQ behind a TLS front that verifies one): with `tls_ca` and the client
    /// certificate the delivery lands in the agency's queue; without the certificate, or
    /// without the CA, the attempt fails (transient: the agency or the config can be fixed).
    #[tokio::test]
    async fn amqps_to_an_agencys_broker_on_its_own_pki() {
        let Some((url, conn)) = broker().await else { return };
        let (queue, ch) = agency_queue(&conn).await;
        let pki = crate::testing_pki::Pki::new();
        let amqps = pki.amqps_front(&url).await.expect("a TLS front for the broker");

        let lease = crate::delivery::sample_lease("application/xml", "<gewerbeanzeige/>", None);
        let cases = [
            ("CA and client certificate", pki.file("ca.pem"), pki.file("client.pem"), pki.file("client.key"), None),
            ("no client certificate", pki.file("ca.pem"), None, None, Some("CertificateRequired")),
            ("the system's CAs only", None, pki.file("client.pem"), pki.file("client.key"), Some("UnknownIssuer")),
        ];
        for (case, tls_ca, tls_client_cert, tls_client_key, refused) in cases {
            let endpoint = EndpointConfig { tls_ca, tls_client_cert, tls_client_key, ..endpoint(&amqps, &queue) };
            let transport = AmqpTransport::new(&endpoint).expect("transport");
            match (transport.send(&lease).await, refused) {
                (AttemptResult::Delivered { via: Handover::Amqp }, None) => {}
                (AttemptResult::Transient { error, .. }, Some(why)) if error.contains(why) => {
                    assert!(!error.contains("guest"), "{case}: the password is in the error: {error}")
                }
                (other, _) => panic!("{case}: {other:?}"),
            }
        }
        let got = ch
            .basic_get(queue.as_str().into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("the delivery sent over amqps is in the agency's queue");
        assert_eq!(got.delivery.data, b"<gewerbeanzeige/>");
        let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
}
