//! `lotse.toml`: the raw form as the user writes it, and the validated [`Config`].
//!
//! `RawConfig` mirrors the file exactly (`deny_unknown_fields`, so a typo is an error, not a
//! silently ignored key). [`RawConfig::validate`] checks everything that can be checked without
//! I/O and reports every problem at once. Every key is documented in `docs/configuration.md`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use adapters::fitconnect::TrustKeys;
use anyhow::Context;
use routing::{Router, RuleConfig};
use serde::{Deserialize, Serialize};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Partner API address, e.g. `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Admin API address (operators, metrics). Must differ from `listen`.
    pub admin_listen: SocketAddr,
    /// Folder of the embedded store (created if missing).
    pub data_dir: PathBuf,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[retention]`; without it nothing is ever deleted.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    #[serde(default)]
    pub schemas: SchemasConfig,
    /// `[trust]`: keys that identification reports (trust levels) are verified against.
    #[serde(default)]
    pub trust: TrustConfig,
    #[serde(default)]
    pub partners: Vec<PartnerConfig>,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub routes: Vec<RuleConfig>,
}

/// `[queue]`: which backend stores submissions and queues deliveries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default)]
    pub kind: QueueKind,
    /// AMQP URL, for `kind = "rabbitmq"`.
    pub url: Option<String>,
    /// The environment variable that holds the AMQP URL, instead of `url`: its password then
    /// stays out of the config file.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Prefix of every queue, exchange and stream name (RabbitMQ).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// PEM file of CA certificates to trust for the broker's certificate, besides the system's
    /// (an administration's own PKI). `amqps://` only.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) Lotse shows the broker: mutual TLS.
    /// Needs `tls_client_key`. `amqps://` only.
    #[serde(default)]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_client_cert` (PKCS#8, RSA or SEC1).
    #[serde(default)]
    pub tls_client_key: Option<PathBuf>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            kind: QueueKind::default(),
            url: None,
            url_env: None,
            prefix: default_prefix(),
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }
}

impl QueueConfig {
    /// The TLS files for the broker connection, read and checked (see [`amqp_tls`]).
    pub fn tls(&self) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
        amqp_tls(self.tls_ca.as_deref(), self.tls_client_cert.as_deref(), self.tls_client_key.as_deref())
    }
}

/// TLS of an `amqps://` connection (the `[queue]` broker, an `amqp` endpoint): the CAs of
/// `ca` are trusted besides the system's (lapin's TLS connector adds them to the platform's
/// trust store; it cannot replace it), and `cert` with `key` is shown to the broker as a client
/// certificate. Read at start, so a wrong path or a broken PEM stops the hub with the reason
/// instead of failing every connection.
pub fn amqp_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display()));
    let certificates = |what: &str, p: &Path, pem: &[u8]| -> anyhow::Result<()> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("`{what}` `{}` is not PEM certificates: {e}", p.display()))?;
        anyhow::ensure!(!certs.is_empty(), "`{what}` `{}` holds no certificate", p.display());
        Ok(())
    };
    let cert_chain = match ca {
        None => None,
        Some(path) => {
            let pem = read(path)?;
            certificates("tls_ca", path, &pem)?;
            Some(String::from_utf8(pem).map_err(|_| anyhow::anyhow!("`tls_ca` `{}` is not text", path.display()))?)
        }
    };
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => {
            let pem = read(cert)?;
            certificates("tls_client_cert", cert, &pem)?;
            let key_pem = read(key)?;
            PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| anyhow::anyhow!("`tls_client_key` `{}` is not a PEM private key: {e}", key.display()))?;
            Some(lapin::tcp::OwnedIdentity::PKCS8 { pem, key: key_pem })
        }
        _ => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig { identity, cert_chain })
}

fn default_prefix() -> String {
    "lotse".to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// redb in `data_dir`: one process, no other service needed.
    #[default]
    Embedded,
    /// RabbitMQ quorum queues: several processes share the work.
    Rabbitmq,
}

/// `[limits]`: bounds on what a partner may send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted body in bytes (default 16 MiB).
    pub max_body_bytes: usize,
    /// Deepest element nesting (default 128).
    pub max_depth: usize,
    /// Most attributes on one element (default 64).
    pub max_attributes: usize,
    /// Most submissions being taken in at once (default 1024). Beyond it the partner API sheds
    /// load: `503` with `Retry-After`, so an overload costs latency for nobody and memory stays
    /// bounded.
    pub max_in_flight: usize,
    /// Most submissions one configured partner may have in flight at once (default: half of
    /// `max_in_flight`). Beyond it that partner gets `429` with `Retry-After`, while the others
    /// keep their share: one partner's flood cannot take every place. Not applied to
    /// `anonymous` (a hub without `[[partners]]` has no one to be fair between).
    pub max_in_flight_per_partner: Option<usize>,
    /// How long a client may take to send a request's headers, and again its body (default
    /// `30s`). A slower one gets its connection closed (headers) or `408` (body): a client that
    /// trickles bytes cannot hold a connection, or a place among `max_in_flight`, for ever.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Most connections open at once on each port (default 4096). One more is closed as soon
    /// as it is accepted: idle or slow clients cannot take every file descriptor. Keep it
    /// below the process's open-file limit (`ulimit -n`).
    pub max_connections: usize,
}

impl LimitsConfig {
    /// [`LimitsConfig::max_in_flight_per_partner`] with its default filled in.
    pub fn per_partner(&self) -> usize {
        self.max_in_flight_per_partner.unwrap_or((self.max_in_flight / 2).max(1))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 16 * 1024 * 1024,
            max_depth: 128,
            max_attributes: 64,
            max_in_flight: 1024,
            max_in_flight_per_partner: None,
            read_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// `[retention]`: how long finished submissions are kept (both stores). A submission is
/// deleted (payload, renditions, deliveries, event log, dedup keys) once every one of its
/// deliveries is final and was last changed longer ago than the limit of its state.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long after its last delivery a delivered submission is kept (e.g. `30d`).
    #[serde(default, with = "humantime_serde")]
    pub delivered: Option<Duration>,
    /// How long after it went dead a submission with a dead delivery is kept; without it, until
    /// an operator replays it (and it is delivered).
    #[serde(default, with = "humantime_serde")]
    pub dead: Option<Duration>,
    /// How often the hub looks for what to delete (default `10m`).
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
}

fn default_check_every() -> Duration {
    Duration::from_secs(600)
}

/// `[retry]`: backoff for transient delivery failures.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts before a delivery is dead (default 10).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry (default `1s`).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest backoff (default `5m`).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 10, initial_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(300) }
    }
}

/// `[schemas]`: XSD validation; extra schema directories (each with XSDs and a `catalog.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// Validate every message whose namespace a catalog knows (default true).
    pub validate: bool,
    pub extra_dirs: Vec<PathBuf>,
    /// Refuse (422) messages whose namespace no catalog knows. Default false: they are accepted
    /// unvalidated, and a route may still demand validation.
    pub require_known: bool,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig { validate: true, extra_dirs: Vec::new(), require_known: false }
    }
}

/// `[trust]`: the public keys of the identity providers whose FIT-Connect `identificationReport`s
/// are trusted (`docs/fitconnect.md`, "Trust level"). Without keys a level is read but not
/// verified, and no route with `min_trust_level` accepts it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Key files: a JWK set, a JWK, or PEM public keys. Read at load; an unreadable or
    /// unsupported one stops the start.
    pub keys: Vec<PathBuf>,
}

/// `[[partners]]`: who may submit. Without any, the partner API is open and every submission
/// counts as partner `anonymous` (fine for a demo, logged as a warning at start).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    pub name: String,
    /// Bearer token, inline. Prefer `token_env`.
    pub token: Option<String>,
    /// Name of an environment variable holding the bearer token.
    pub token_env: Option<String>,
}

impl std::fmt::Debug for PartnerConfig {
    // Tokens are secrets: never in logs or error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerConfig")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// `[[endpoints]]`: where deliveries go.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    pub kind: EndpointKind,
    /// Target URL (`kind = "http"`), or the agency's broker (`kind = "amqp"`).
    #[serde(default)]
    pub url: String,
    /// The environment variable that holds `url` (with its password or token), instead of `url`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The exchange to publish to (`kind = "amqp"`; default: the default exchange, where the
    /// routing key is a queue name).
    #[serde(default)]
    pub exchange: Option<String>,
    /// The routing key (`kind = "amqp"`): with the default exchange, the agency's queue.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// The folder deliveries are written to (`kind = "file"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// What the endpoint receives: the original bytes (default), the JSON form, or XML.
    #[serde(default)]
    pub format: Format,
    /// Attempts in flight at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-attempt timeout (default `30s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of the CA certificates the receiver's server certificate must chain to, instead
    /// of the system's trust store (an administration's own PKI). `https` only.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of the client certificate (and its chain) Lotse shows the receiver: mutual TLS.
    /// Needs `tls_client_key`. `https` only.
    #[serde(default)]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_client_cert` (PKCS#8, RSA or SEC1).
    #[serde(default)]
    pub tls_client_key: Option<PathBuf>,
    /// The bearer token the agency fetches with (`kind = "mailbox"`), inline. Prefer `token_env`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Name of an environment variable holding the mailbox's bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
}

/// A secret read from the config file: `Debug` never shows it (configs are logged and printed
/// in errors).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The value of `<key>_env` (the variable `var`) of `owner`, which must not also set `key`
/// (`inline`); each problem goes to `problems`.
fn resolve_env(
    owner: &str,
    key: &str,
    inline: bool,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    if inline {
        problems.push(format!("{owner}: set one of `{key}` and `{key}_env`, not both"));
        return None;
    }
    match env(var) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            problems.push(format!("{owner}: environment variable `{var}` (`{key}_env`) is not set"));
            None
        }
    }
}

/// The token of a partner or a mailbox: exactly one of `token` and `token_env`, at least 16
/// characters; each problem goes to `problems` under `owner`.
fn resolve_token(
    owner: &str,
    token: Option<&str>,
    token_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    let token = match (token, token_env) {
        (Some(t), None) => t.to_owned(),
        (None, Some(var)) => match env(var) {
            Some(t) => t,
            None => {
                problems.push(format!("{owner}: environment variable `{var}` is not set"));
                return None;
            }
        },
        _ => {
            problems.push(format!("{owner}: set exactly one of `token` and `token_env`"));
            return None;
        }
    };
    if token.len() < 16 {
        problems.push(format!("{owner}: token must be at least 16 characters"));
    }
    Some(token)
}

/// A URL as logs and operators may see it: a password and query values (where receivers'
/// tokens go) replaced by `***` (the admin endpoint listing, a broker that cannot be reached).
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else { return "(unparsable)".into() };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let names: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        parsed.query_pairs_mut().clear().extend_pairs(names.iter().map(|k| (k.as_str(), "***")));
    }
    parsed.to_string()
}

/// What [`EndpointConfig::tls`] read from the endpoint's TLS files.
#[derive(Default)]
pub struct EndpointTls {
    /// The only CAs to trust (`tls_ca`); `None`: the system's.
    pub roots: Option<Vec<reqwest::Certificate>>,
    /// The client certificate and key (`tls_client_cert`, `tls_client_key`).
    pub identity: Option<reqwest::Identity>,
}

impl EndpointConfig {
    /// The TLS files of an `amqp` endpoint, read and checked (see [`amqp_tls`]).
    pub fn amqp_tls(&self) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
        amqp_tls(self.tls_ca.as_deref(), self.tls_client_cert.as_deref(), self.tls_client_key.as_deref())
    }

    /// Reads and parses the endpoint's TLS files (at start, so a wrong path or a broken PEM
    /// stops the hub with the reason rather than failing every delivery).
    pub fn tls(&self) -> anyhow::Result<EndpointTls> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display()));
        let roots = match &self.tls_ca {
            None => None,
            Some(path) => {
                let certs = reqwest::Certificate::from_pem_bundle(&read(path)?)
                    .with_context(|| format!("`tls_ca` `{}` is not PEM certificates", path.display()))?;
                anyhow::ensure!(!certs.is_empty(), "`tls_ca` `{}` holds no certificate", path.display());
                Some(certs)
            }
        };
        let identity = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(reqwest::Identity::from_pem(&pem).with_context(|| {
                    format!(
                        "`tls_client_cert` `{}` with `tls_client_key` `{}`: not a PEM certificate and private key",
                        cert.display(),
                        key.display()
                    )
                })?)
            }
            _ => None,
        };
        Ok(EndpointTls { roots, identity })
    }
}

fn default_concurrency() -> usize {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// HTTP POST of the payload.
    Http,
    /// The payload written as a file into a folder, with its metadata beside it.
    File,
    /// The payload published to the agency's AMQP broker, with publisher confirms.
    Amqp,
    /// A mailbox the agency's software fetches from and acknowledges, on the partner port
    /// (`docs/api.md`, "Mailboxes"): for software that cannot take incoming connections.
    Mailbox,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The exact bytes the partner sent.
    #[default]
    Original,
    /// The JSON form (`docs/json-mapping.md`).
    Json,
    /// XML: the original for XML submissions, converted for JSON submissions.
    Xml,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub raw: RawConfig,
    pub router: Router,
    /// Partner name by bearer token; empty = open access.
    pub partner_tokens: Vec<(String, String)>,
    /// Endpoint name by mailbox bearer token (`kind = "mailbox"`).
    pub mailbox_tokens: Vec<(String, String)>,
    /// The keys of `[trust]`, read by [`Config::load`] and [`Config::parse`] (empty after
    /// [`RawConfig::validate`], which does no I/O).
    pub trust_keys: Arc<TrustKeys>,
}

/// A TOML error without the source line the `toml` crate quotes in its message: the line may
/// hold a token or a URL with a password (a typo in `tokn = "..."`), and the message goes to
/// stderr and the journal. Where it is (line, column) and what is wrong are enough to find it.
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            anyhow::anyhow!("line {line}, column {column}: {}", e.message())
        }
        None => anyhow::anyhow!("{}", e.message()),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Config::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with a given environment (for `token_env`).
    pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config `{}`", path.display()))?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| toml_error(&text, &e))
            .with_context(|| format!("invalid config `{}`", path.display()))?;
        let mut config = raw.validate_with(env).with_context(|| format!("invalid config `{}`", path.display()))?;
        // Relative paths in the file are relative to the file, not to the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        if config.raw.data_dir.is_relative() {
            config.raw.data_dir = base.join(&config.raw.data_dir);
        }
        for dir in &mut config.raw.schemas.extra_dirs {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        let mut problems = Vec::new();
        let queue = &mut config.raw.queue;
        for file in [&mut queue.tls_ca, &mut queue.tls_client_cert, &mut queue.tls_client_key].into_iter().flatten() {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if let Err(err) = queue.tls() {
            problems.push(format!("- `queue`: {err:#}"));
        }
        for e in &mut config.raw.endpoints {
            for file in
                [&mut e.tls_ca, &mut e.tls_client_cert, &mut e.tls_client_key, &mut e.path].into_iter().flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
            let checked = if e.kind == EndpointKind::Amqp { e.amqp_tls().map(drop) } else { e.tls().map(drop) };
            if let Err(err) = checked {
                problems.push(format!("- endpoint `{}`: {err:#}", e.name));
            }
        }
        for file in &mut config.raw.trust.keys {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        match config.read_trust_keys() {
            Ok(keys) => config.trust_keys = Arc::new(keys),
            Err(errs) => problems.extend(errs.iter().map(|e| format!("- {e}"))),
        }
        anyhow::ensure!(
            problems.is_empty(),
            "invalid config `{}`: {} problem(s):\n{}",
            path.display(),
            problems.len(),
            problems.join("\n")
        );
        Ok(config)
    }

    /// A config from text; `[trust]` key paths are relative to the working directory.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut config = raw.validate()?;
        match config.read_trust_keys() {
            Ok(keys) => config.trust_keys = Arc::new(keys),
            Err(errs) => {
                let list: Vec<String> = errs.iter().map(|e| format!("  - {e}")).collect();
                anyhow::bail!("{} problem(s):\n{}", errs.len(), list.join("\n"))
            }
        }
        Ok(config)
    }

    /// The keys of `[trust] keys`, or every file that cannot be used.
    fn read_trust_keys(&self) -> Result<TrustKeys, Vec<adapters::fitconnect::trust::KeyError>> {
        let mut keys = TrustKeys::none();
        let mut errors = Vec::new();
        for file in &self.raw.trust.keys {
            if let Err(e) = keys.add_file(file) {
                errors.push(e);
            }
        }
        if errors.is_empty() { Ok(keys) } else { Err(errors) }
    }

    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.raw.endpoints.iter().find(|e| e.name == name)
    }
}

impl RawConfig {
    /// Checks everything that needs no I/O (except reading `token_env` variables) and reports
    /// every problem at once.
    pub fn validate(self) -> anyhow::Result<Config> {
        self.validate_with(&|k| std::env::var(k).ok())
    }

    pub fn validate_with(mut self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut problems: Vec<String> = Vec::new();
        // URLs from the environment (`url_env`): checked below like URLs written in the file.
        if let Some(var) = self.queue.url_env.clone() {
            self.queue.url = resolve_env("`queue`", "url", self.queue.url.is_some(), &var, env, &mut problems);
        }
        for e in &mut self.endpoints {
            if let Some(var) = e.url_env.clone() {
                let owner = format!("endpoint `{}`", e.name);
                if let Some(url) = resolve_env(&owner, "url", !e.url.is_empty(), &var, env, &mut problems) {
                    e.url = url;
                }
            }
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems
                .push("`admin_listen` must differ from `listen`: admin endpoints never share the partner port".into());
        }
        if self.queue.kind == QueueKind::Rabbitmq
            && self.queue.url_env.is_none()
            && self.queue.url.as_deref().is_none_or(str::is_empty)
        {
            problems.push("`queue.url` (or `queue.url_env`) is required when `queue.kind = \"rabbitmq\"`".into());
        }
        let queue_tls = [&self.queue.tls_ca, &self.queue.tls_client_cert, &self.queue.tls_client_key];
        if queue_tls.iter().any(|f| f.is_some()) {
            if self.queue.kind != QueueKind::Rabbitmq {
                problems.push("`queue.tls_*` settings are for `queue.kind = \"rabbitmq\"`".into());
            } else if self.queue.url.as_deref().is_some_and(|u| !u.starts_with("amqps://")) {
                problems.push("`queue.tls_*` settings need an amqps:// url".into());
            }
        }
        if self.queue.tls_client_cert.is_some() != self.queue.tls_client_key.is_some() {
            problems.push("`queue.tls_client_cert` and `queue.tls_client_key` go together".into());
        }
        if self.queue.prefix.is_empty()
            || !self.queue.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push(format!(
                "`queue.prefix` `{}` must be non-empty ASCII letters, digits, `-`, `_` or `.`",
                self.queue.prefix
            ));
        }
        if self.limits.max_body_bytes == 0
            || self.limits.max_depth == 0
            || self.limits.max_attributes == 0
            || self.limits.max_in_flight == 0
            || self.limits.read_timeout.is_zero()
            || self.limits.max_connections == 0
            || self.limits.max_in_flight_per_partner == Some(0)
        {
            problems.push("`limits` values must be greater than 0".into());
        }
        if self.limits.max_in_flight_per_partner.is_some_and(|n| n > self.limits.max_in_flight) {
            problems.push("`limits.max_in_flight_per_partner` must be at most `limits.max_in_flight`".into());
        }
        if self.retry.max_attempts == 0 {
            problems.push("`retry.max_attempts` must be at least 1".into());
        }
        if self.retry.initial_backoff.is_zero() || self.retry.initial_backoff > self.retry.max_backoff {
            problems.push("`retry.initial_backoff` must be greater than 0 and at most `retry.max_backoff`".into());
        }
        if let Some(r) = &self.retention {
            if r.delivered.is_none() && r.dead.is_none() {
                problems.push("`[retention]` needs `delivered`, `dead` or both".into());
            }
            if r.delivered.is_some_and(|d| d.is_zero())
                || r.dead.is_some_and(|d| d.is_zero())
                || r.check_every.is_zero()
            {
                problems.push("`retention` durations must be greater than 0".into());
            }
        }
        let mut names = HashSet::new();
        for e in &self.endpoints {
            if e.name.is_empty() || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                problems.push(format!(
                    "endpoint name `{}` must be non-empty ASCII letters, digits, `-`, `_` or `.`",
                    e.name
                ));
            }
            if !names.insert(e.name.as_str()) {
                problems.push(format!("endpoint name `{}` is used twice", e.name));
            }
            match e.kind {
                EndpointKind::Http => {
                    match reqwest::Url::parse(&e.url) {
                        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                        Ok(u) => problems.push(format!(
                            "endpoint `{}`: url scheme `{}` is not http or https",
                            e.name,
                            u.scheme()
                        )),
                        // Not echoed: an unparsable URL cannot be redacted, and it may hold a password.
                        Err(err) => problems.push(format!("endpoint `{}`: `url` is not a URL: {err}", e.name)),
                    }
                    if e.path.is_some() {
                        problems.push(format!("endpoint `{}`: `path` is for `kind = \"file\"`", e.name));
                    }
                }
                EndpointKind::Amqp => {
                    if !(e.url.starts_with("amqp://") || e.url.starts_with("amqps://")) {
                        problems
                            .push(format!("endpoint `{}`: `kind = \"amqp\"` needs an amqp:// or amqps:// url", e.name));
                    }
                    if e.routing_key.as_ref().is_none_or(String::is_empty) {
                        problems.push(format!("endpoint `{}`: `kind = \"amqp\"` needs a `routing_key`", e.name));
                    }
                    if e.path.is_some() {
                        problems.push(format!("endpoint `{}`: `path` is for `kind = \"file\"`", e.name));
                    }
                }
                EndpointKind::Mailbox => {
                    if !e.url.is_empty() || e.path.is_some() {
                        problems.push(format!(
                            "endpoint `{}`: a mailbox has no `url` or `path`: the agency fetches from Lotse",
                            e.name
                        ));
                    }
                }
                EndpointKind::File => {
                    if e.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                        problems.push(format!("endpoint `{}`: `kind = \"file\"` needs a `path` (a folder)", e.name));
                    }
                    if !e.url.is_empty() {
                        problems.push(format!("endpoint `{}`: `url` is for `kind = \"http\"`", e.name));
                    }
                }
            }
            if e.concurrency == 0 || e.concurrency > 1024 {
                problems.push(format!("endpoint `{}`: concurrency must be 1 to 1024", e.name));
            }
            if e.timeout.is_zero() {
                problems.push(format!("endpoint `{}`: timeout must be greater than 0", e.name));
            }
            if e.kind != EndpointKind::Amqp && (e.exchange.is_some() || e.routing_key.is_some()) {
                problems.push(format!("endpoint `{}`: `exchange` and `routing_key` are for `kind = \"amqp\"`", e.name));
            }
            if e.tls_client_cert.is_some() != e.tls_client_key.is_some() {
                problems.push(format!("endpoint `{}`: `tls_client_cert` and `tls_client_key` go together", e.name));
            }
            let tls = e.tls_ca.is_some() || e.tls_client_cert.is_some() || e.tls_client_key.is_some();
            if tls && e.kind == EndpointKind::Amqp && !e.url.starts_with("amqps://") {
                problems.push(format!("endpoint `{}`: `tls_*` settings need an amqps:// url", e.name));
            } else if tls && e.kind != EndpointKind::Amqp && !e.url.starts_with("https://") {
                problems.push(format!("endpoint `{}`: `tls_*` settings need an https url", e.name));
            }
        }
        if self.routes.is_empty() {
            problems.push("no `[[routes]]`: every submission would be refused".into());
        }
        let endpoint_names: Vec<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
        let router = match Router::new(&self.routes, &endpoint_names) {
            Ok(r) => Some(r),
            Err(errs) => {
                problems.extend(errs.iter().map(ToString::to_string));
                None
            }
        };
        let mut partner_tokens = Vec::new();
        let mut partner_names = HashSet::new();
        for p in &self.partners {
            if !partner_names.insert(p.name.as_str()) {
                problems.push(format!("partner name `{}` is used twice", p.name));
            }
            let owner = format!("partner `{}`", p.name);
            if let Some(t) = resolve_token(&owner, p.token.as_deref(), p.token_env.as_deref(), env, &mut problems) {
                partner_tokens.push((t, p.name.clone()));
            }
        }
        let mut mailbox_tokens = Vec::new();
        for e in &self.endpoints {
            let has_token = e.token.is_some() || e.token_env.is_some();
            if e.kind != EndpointKind::Mailbox {
                if has_token {
                    problems
                        .push(format!("endpoint `{}`: `token` and `token_env` are for `kind = \"mailbox\"`", e.name));
                }
                continue;
            }
            let owner = format!("endpoint `{}`", e.name);
            let token = e.token.as_ref().map(|t| t.0.as_str());
            if let Some(t) = resolve_token(&owner, token, e.token_env.as_deref(), env, &mut problems) {
                mailbox_tokens.push((t, e.name.clone()));
            }
        }
        // One token, one caller: a token shared by two partners or mailboxes, or a partner and a
        // mailbox, would let one act as the other.
        let mut seen = HashSet::new();
        for (token, _) in partner_tokens.iter().chain(&mailbox_tokens) {
            if !seen.insert(token.as_str()) {
                problems.push("the same token is given to two partners or mailboxes; each needs its own".into());
                break;
            }
        }
        match (problems.is_empty(), router) {
            (true, Some(router)) => {
                Ok(Config { raw: self, router, partner_tokens, mailbox_tokens, trust_keys: Arc::default() })
            }
            _ => {
                let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
                anyhow::bail!("{} problem(s):\n{}", problems.len(), list.join("\n"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
