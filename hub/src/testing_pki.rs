//! Test support: an administration's own PKI (a CA, a server certificate for 127.0.0.1, a
//! client certificate) and TLS servers on it that demand a client certificate (mutual TLS):
//! an HTTPS receiver, and a TLS front for the local RabbitMQ, so `amqps://` is tested against
//! the real broker. Built with rcgen and rustls at test time; nothing is stored in the repository.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;

/// A CA, its certificates as PEM files in a temporary folder (`ca.pem`, `client.pem`,
/// `client.key`), and a server config that presents the server certificate and verifies
/// client certificates against the CA.
pub struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Test-Verwaltungs-PKI");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
        let server_key = KeyPair::generate().expect("key");
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
        client.distinguished_name.push(DnType::CommonName, "lotse");
        let client_cert = client.signed_by(&client_key, &ca).expect("client certificate");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).expect("write");
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).expect("write");

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("CA root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("client verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone()], key)
            .expect("server config");
        Pki { dir, server: Arc::new(server) }
    }

    /// One of the PEM files: `ca.pem`, `client.pem`, `client.key`.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.path().join(name))
    }

    /// An HTTPS receiver answering 200 to every request over a verified client certificate.
    pub async fn receiver(&self) -> SocketAddr {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::service::TowerToHyperService;

        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(|| async { StatusCode::OK });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client without an acceptable certificate fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app)).await;
                });
            }
        });
        addr
    }

    /// A TLS front for a plain TCP service (the local RabbitMQ): each connection that passes
    /// the handshake (a client certificate of this CA included) is relayed to `upstream`, byte
    /// for byte, as a broker with a TLS listener would take it.
    pub async fn tls_front(&self, upstream: SocketAddr) -> SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        addr
    }

    /// The `amqps://` URL of a TLS front (see [`Pki::tls_front`]) for the broker of the plain
    /// `amqp://` URL `url`: same user, password and virtual host, host `127.0.0.1` (the name in
    /// the server certificate).
    pub async fn amqps_front(&self, url: &str) -> anyhow::Result<String> {
        let parsed = reqwest::Url::parse(url)?;
        let front = self.tls_front(broker_addr(url).await?).await;
        let mut amqps = parsed;
        amqps.set_scheme("amqps").map_err(|_| anyhow::anyhow!("no amqps scheme"))?;
        amqps.set_host(Some("127.0.0.1"))?;
        amqps.set_port(Some(front.port())).map_err(|_| anyhow::anyhow!("no port"))?;
        Ok(amqps.to_string())
    }
}

/// The socket address of the broker of an `amqp://` URL (port 5672 unless it says another).
pub async fn broker_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url)?;
    tokio::net::lookup_host((parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(5672)))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("the broker's address of the URL does not resolve"))
}
