//! Wiring: open the store, bind the listeners, start the delivery workers and serve until a
//! shutdown signal.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::config::{Config, QueueKind};
use crate::delivery::{self, Paused};
use crate::intake::{Pipeline, Schemas};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;

/// A running hub: its bound addresses and a way to stop it.
pub struct Running {
    pub partner_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets in-flight attempts finish, and waits for everything to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.store.close().await;
    }

    /// Waits until the hub stops (for `serve`, after a signal).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.raw.queue.kind {
        QueueKind::Embedded => Arc::new(EmbeddedStore::open(&config.raw.data_dir)?),
        QueueKind::Rabbitmq => {
            let endpoints: Vec<String> = config.raw.endpoints.iter().map(|e| e.name.clone()).collect();
            // Mailboxes are leased only when an agency polls, so their work is pulled on demand.
            let mailboxes: Vec<String> = config
                .raw
                .endpoints
                .iter()
                .filter(|e| e.kind == crate::config::EndpointKind::Mailbox)
                .map(|e| e.name.clone())
                .collect();
            let store =
                crate::store::rabbitmq::connect(&config.raw.queue, &endpoints, &mailboxes, &config.raw.data_dir)
                    .await?;
            store.expire_dead_copies(config.raw.retention.as_ref().and_then(|r| r.dead));
            Arc::new(store)
        }
    })
}

/// The schema catalog (built-in plus `[schemas] extra_dirs`): the XSD validator, every schema
/// compiled at start (a broken schema stops the start instead of failing requests later), and
/// the JSON-form type hints of each schema.
pub fn build_schemas(config: &Config) -> anyhow::Result<Option<Arc<Schemas>>> {
    if !config.raw.schemas.validate {
        tracing::warn!("[schemas] validate = false: messages are routed without XSD validation");
        return Ok(None);
    }
    let catalog = adapters::catalog::Catalog::load_with_builtin(&config.raw.schemas.extra_dirs)
        .context("cannot load the schema catalog")?;
    let catalog = Arc::new(catalog);
    let mut hints = std::collections::HashMap::new();
    for schema in catalog.schemas() {
        match adapters::json::Hints::from_catalog(&catalog, schema) {
            Ok(h) => {
                hints.insert(schema.id.clone(), h);
            }
            Err(e) => {
                tracing::warn!(schema = %schema.id, error = %e, "no schema-aware JSON form for this schema; using the generic form")
            }
        }
    }
    // Check that every schema compiles, in a throwaway one-worker validator: a broken schema
    // stops the start instead of failing requests later. The serving validator then compiles a
    // schema in each worker on first use, so memory follows the standards actually received
    // (all 15 built-in sets compiled in every worker cost about 180 MB).
    let check = adapters::validate::ValidatorOptions { workers: 1, precompile: true, ..Default::default() };
    drop(adapters::validate::Validator::new(catalog.clone(), check).context("cannot compile the schemas")?);
    let options = adapters::validate::ValidatorOptions { precompile: false, ..Default::default() };
    let validator = adapters::validate::Validator::new(catalog, options).context("cannot start the validator")?;
    Ok(Some(Arc::new(Schemas { validator, hints })))
}

/// How often recorded histogram samples are folded into their summaries.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok()?;
            // `install_recorder` leaves upkeep to the caller: without it every histogram sample
            // (several per submission) stays in memory until `/metrics` is scraped, which a
            // deployment without Prometheus never does, and the summaries it showed were wrong
            // (a maximum under 10 ms while requests waited 100 ms). One thread for the process,
            // like the recorder itself.
            let upkeep = handle.clone();
            let started = std::thread::Builder::new().name("lotse-metrics".into()).spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                }
            });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded only when scraped");
            }
            Some(handle)
        })
        .clone()
}

/// Starts the hub on already-bound listeners (tests and the demo bind port 0).
pub async fn start(
    config: Config,
    store: Arc<dyn Store>,
    partner: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<Running> {
    let schemas = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || build_schemas(&c)).await??
    };
    let config = Arc::new(config);
    if config.partner_tokens.is_empty() {
        tracing::warn!("no [[partners]] configured: the partner API accepts submissions from anyone, as `anonymous`");
    }
    warn_orphaned(store.as_ref(), &config).await;
    let paused = Paused::new(store.clone());
    let pipeline = Pipeline::new(config.clone(), store.clone(), schemas);
    let state = Arc::new(AppState::new(config.clone(), pipeline, metrics_handle(), paused.clone()));
    let (shutdown, rx) = watch::channel(false);
    let partner_addr = partner.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let mut tasks = delivery::spawn_workers(&config, store.clone(), paused, &state.workers, rx.clone())?;
    if !config.mailbox_tokens.is_empty() {
        tasks.spawn(api::mailbox::sweep(state.clone(), rx.clone()));
        tasks.spawn(api::mailbox::follow_verdicts(state.clone(), rx.clone()));
    }
    let partner_app = api::partner::router(state.clone());
    let admin_app = api::admin::router(state);
    let read_timeout = config.raw.limits.read_timeout;
    let max_connections = config.raw.limits.max_connections;
    tasks.spawn(serve_http(partner, partner_app, rx.clone(), "partner", read_timeout, max_connections));
    if let Some(retention) = config.raw.retention {
        tasks.spawn(sweep(store.clone(), retention, rx.clone()));
    }
    tasks.spawn(serve_http(admin, admin_app, rx, "admin", read_timeout, max_connections));
    tracing::info!(%partner_addr, %admin_addr, data_dir = %config.raw.data_dir.display(), "lotse started");
    Ok(Running { partner_addr, admin_addr, store, shutdown, tasks })
}

/// Retention: every `check_every` (the first time right after the start), deletes the
/// submissions `[retention]` lets go, until `shutdown`.
async fn sweep(store: Arc<dyn Store>, retention: crate::config::RetentionConfig, mut shutdown: watch::Receiver<bool>) {
    use crate::store::{Cutoffs, now_millis};

    tracing::info!(
        delivered = ?retention.delivered.map(humantime::format_duration).map(|d| d.to_string()),
        dead = ?retention.dead.map(humantime::format_duration).map(|d| d.to_string()),
        "retention: finished submissions older than this are deleted"
    );
    loop {
        let cutoffs = Cutoffs::before(now_millis(), retention.delivered, retention.dead);
        match store.expire(cutoffs).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("lotse_expired_submissions_total").increment(n);
                tracing::info!(submissions = n, "retention: deleted submissions past their retention period");
            }
            Err(e) => tracing::warn!(error = %e, "retention: deleting old submissions failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.check_every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets the open requests finish.
///
/// hyper's own connection builder rather than `axum::serve`, which sets no timer, so hyper's
/// header read timeout never ran: a client could open connections and send nothing, or a
/// header a byte at a time, and hold them for ever. Here a client that has not sent a
/// request's headers within `read_timeout` is disconnected (the body's own bound is in the
/// partner API's handler), and so is a connection that has sent nothing and waited for no
/// answer for `read_timeout` (HTTP/1 keep-alive by hyper's header timeout; HTTP/2, which hyper
/// keeps open for as long as the client likes, by a graceful shutdown here: requests in
/// progress still get their answers).
/// At most `max_connections` are open at once; one more is closed as soon as it is accepted.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
    read_timeout: std::time::Duration,
    max_connections: usize,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    static FULL: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut stop = shutdown.clone();
    let stop = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // That one connection went away before it was accepted: take the next.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(listener = name, error = %e, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: the client sees the connection end and may come back, instead of
            // waiting in the accept queue behind connections that may never end.
            metrics::counter!("lotse_connections_refused_total", "listener" => name).increment(1);
            if let Some(left_out) = FULL.allow() {
                tracing::warn!(
                    listener = name,
                    max_connections,
                    left_out,
                    "too many open connections; a new one is closed"
                );
            }
            drop(tcp);
            continue;
        };
        // Answers are small and complete: send them at once rather than wait to coalesce segments.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        let (builder, app, mut shutdown) = (builder.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // The builder reads a first byte to tell HTTP/1 from HTTP/2, with no timeout of its
            // own: a client that sends nothing at all is dropped here (at once when the hub stops).
            let mut first = [0u8; 1];
            tokio::select! {
                sent = tokio::time::timeout(read_timeout, tcp.peek(&mut first)) => if sent.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let io = ActivityIo::new(tcp);
            let last_read = io.last_read.clone();
            // Requests being answered: a connection waiting for its answer (a mailbox's long
            // poll, a slow store) sends nothing, and is not idle.
            let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let app = {
                let (active, last_read) = (active.clone(), last_read.clone());
                tower::ServiceExt::<hyper::Request<hyper::body::Incoming>>::map_future(app, move |answer| {
                    let guard = Answering::new(active.clone(), last_read.clone());
                    async move {
                        let r = answer.await;
                        drop(guard);
                        r
                    }
                })
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
            tokio::pin!(conn);
            // Once closing, the connection gets `read_timeout` to finish what it is doing: an
            // HTTP/2 client that never answers the server's GOAWAY ping would hold it for ever.
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                let answering = active.load(std::sync::atomic::Ordering::Relaxed) > 0;
                let idle_until =
                    if answering { tokio::time::Instant::now() + read_timeout } else { last_read.at() + read_timeout };
                tokio::select! {
                    // A client that went away or timed out: nothing to report.
                    _ = conn.as_mut() => break,
                    changed = shutdown.changed(), if closing.is_none() => {
                        if changed.is_err() || *shutdown.borrow() {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(tokio::time::Instant::now() + read_timeout);
                        }
                    }
                    () = tokio::time::sleep_until(idle_until), if closing.is_none() => {
                        let idle = active.load(std::sync::atomic::Ordering::Relaxed) == 0
                            && last_read.at() + read_timeout <= tokio::time::Instant::now();
                        if idle {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(tokio::time::Instant::now() + read_timeout);
                        }
                    }
                    () = tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => break,
                }
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all back means all answered.
    let _ = slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX)).await;
}

/// When a connection last received bytes (see [`ActivityIo`]): milliseconds after `base`.
#[derive(Clone)]
struct LastRead {
    base: tokio::time::Instant,
    millis: Arc<std::sync::atomic::AtomicU64>,
}

impl LastRead {
    fn at(&self) -> tokio::time::Instant {
        self.base + std::time::Duration::from_millis(self.millis.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Notes activity now.
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One request being answered on a connection (see `serve_http`): counted while it lives, and
/// its end is activity.
struct Answering {
    active: Arc<std::sync::atomic::AtomicUsize>,
    last: LastRead,
}

impl Answering {
    fn new(active: Arc<std::sync::atomic::AtomicUsize>, last: LastRead) -> Answering {
        active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Answering { active, last }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.last.touch();
        self.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TCP stream that notes when it last read bytes, so an idle HTTP/2 connection can be
/// closed (hyper has no idle timeout for HTTP/2). Hand-written: a few lines over tokio's
/// traits, which no crate offers as such.
struct ActivityIo {
    inner: tokio::net::TcpStream,
    last_read: LastRead,
}

impl ActivityIo {
    fn new(inner: tokio::net::TcpStream) -> ActivityIo {
        let last_read = LastRead { base: tokio::time::Instant::now(), millis: Arc::default() };
        ActivityIo { inner, last_read }
    }
}

impl tokio::io::AsyncRead for ActivityIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last_read.touch();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept backlog of every listener Lotse opens (the kernel caps it at `net.core.somaxconn`).
///
/// tokio's `TcpListener::bind` listens with a backlog of 128. A burst of more new connections
/// than that (a partner's pool connecting at once, a load test's clients) overflowed the queue;
/// the kernel dropped the extra SYNs and those clients waited a full second for their retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets
/// it on Unix, so a restart can bind at once while old connections linger in `TIME_WAIT`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `lotse serve --check`: what a start would check before it opens the store and the ports
/// (the config was loaded already), and a summary. Folders of file endpoints that are not there
/// are warnings: a start would go on, and those deliveries would wait for the folder.
pub async fn check(config: Config, path: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    use crate::config::EndpointKind;

    let config = Arc::new(config);
    let c = config.clone();
    let schemas = tokio::task::spawn_blocking(move || build_schemas(&c)).await??;
    let raw = &config.raw;
    let store = match raw.queue.kind {
        QueueKind::Embedded => format!("embedded store in `{}`", raw.data_dir.display()),
        QueueKind::Rabbitmq => {
            let q = &raw.queue;
            let tls = match (q.url.as_deref().is_some_and(|u| u.starts_with("amqps://")), &q.tls_ca, &q.tls_client_cert)
            {
                (false, ..) => "",
                (true, None, None) => " over TLS (the system's CAs)",
                (true, Some(_), None) => " over TLS (the system's CAs and `tls_ca`)",
                (true, None, Some(_)) => " over TLS (the system's CAs, a client certificate)",
                (true, Some(_), Some(_)) => " over TLS (the system's CAs and `tls_ca`, a client certificate)",
            };
            format!("RabbitMQ{tls}, prefix `{}`, index snapshot in `{}`", q.prefix, raw.data_dir.display())
        }
    };
    let retention = match &raw.retention {
        None => "nothing deleted (no [retention])".to_owned(),
        Some(r) => {
            let kept = |d: Option<std::time::Duration>, otherwise: &str| match d {
                Some(d) => humantime::format_duration(d).to_string(),
                None => otherwise.to_owned(),
            };
            format!(
                "delivered submissions kept {}, dead ones {}",
                kept(r.delivered, "for ever"),
                kept(r.dead, "until replayed and delivered")
            )
        }
    };
    let validation = match &schemas {
        Some(s) => format!("every schema compiled ({} with a schema-aware JSON form)", s.hints.len()),
        None => "validation off".to_owned(),
    };
    println!(
        "config `{}` ok: {} endpoints, {} routes, {} partners; {store}; {retention}; {validation}",
        path.display(),
        raw.endpoints.len(),
        raw.routes.len(),
        raw.partners.len()
    );
    for e in &raw.endpoints {
        if let (EndpointKind::File, Some(dir)) = (e.kind, &e.path)
            && !dir.is_dir()
        {
            println!(
                "warning: endpoint `{}`: folder `{}` is not there: its deliveries would wait (retried) until it is",
                e.name,
                dir.display()
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Pending deliveries for an endpoint the config no longer has: no worker sends them, so they
/// wait until the endpoint is added back. Said once at start, per endpoint (counted among the
/// newest 10,000 pending deliveries).
async fn warn_orphaned(store: &dyn Store, config: &Config) {
    use crate::store::{DeliveryFilter, DeliveryState};

    let filter =
        DeliveryFilter { state: Some(DeliveryState::Pending), limit: DeliveryFilter::MAX_LIMIT, ..Default::default() };
    let pending = match store.deliveries(&filter).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pending deliveries to check their endpoints");
            return;
        }
    };
    let mut orphaned = std::collections::BTreeMap::<&str, usize>::new();
    for d in pending.iter().filter(|d| config.endpoint(&d.endpoint).is_none()) {
        *orphaned.entry(d.endpoint.as_str()).or_default() += 1;
    }
    for (endpoint, count) in orphaned {
        tracing::warn!(
            endpoint,
            pending = count,
            "pending deliveries for an endpoint the config no longer has: nothing sends them until it is added back (`lotse deliveries list --endpoint {endpoint}`)"
        );
    }
}

/// `lotse serve`: bind, print the bound addresses as the first stdout line, run until SIGINT or
/// SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let partner = bind(config.raw.listen).with_context(|| format!("cannot listen on {}", config.raw.listen))?;
    let admin =
        bind(config.raw.admin_listen).with_context(|| format!("cannot listen on {}", config.raw.admin_listen))?;
    let store = open_store(&config).await?;
    let running = start(config, store, partner, admin).await?;
    // Tests and scripts read this line to learn the ports (the config may say port 0).
    println!("listening partner={} admin={}", running.partner_addr, running.admin_addr);
    shutdown_signal().await;
    tracing::info!("shutting down: finishing attempts in flight (a second signal stops at once)");
    // A second signal ends the process at once. Nothing acknowledged is lost by that: a 202
    // was stored before it was sent, an attempt not yet settled is made again (at least once).
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal: stopping at once; attempts in flight will be made again");
        std::process::exit(130);
    });
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// `serve_http` on a free local port, as the hub runs it.
    struct TestServer {
        addr: std::net::SocketAddr,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        fn start(app: axum::Router, read_timeout: Duration, max_connections: usize) -> TestServer {
            let listener = super::bind(([127, 0, 0, 1], 0).into()).expect("bind");
            let addr = listener.local_addr().expect("the bound address");
            let (stop, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(super::serve_http(listener, app, rx, "test", read_timeout, max_connections));
            TestServer { addr, stop, task }
        }

        /// Stops it; it must have stopped `within`.
        async fn stop(self, within: Duration) {
            self.stop.send(true).expect("the server listens");
            tokio::time::timeout(within, self.task).await.expect("the server stops in time").expect("no panic");
        }
    }

    /// The recorder comes with a thread that folds histogram samples (otherwise they pile up in
    /// memory until `/metrics` is scraped).
    #[test]
    fn the_metrics_recorder_has_its_upkeep_thread() {
        assert!(super::metrics_handle().is_some(), "no recorder installed");
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // A new thread sets its own name once it runs: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !names().iter().any(|n| n == "lotse-metrics") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let names = names();
        assert!(names.iter().any(|n| n == "lotse-metrics"), "threads: {names:?}");
    }

    /// A client that opens a connection and sends part of a request's headers (or nothing) is
    /// disconnected once `read_timeout` has passed; a complete request on another connection
    /// is answered meanwhile.
    #[tokio::test]
    async fn a_client_that_does_not_send_its_headers_is_disconnected() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = TestServer::start(app, Duration::from_millis(500), 64);
        let addr = server.addr;

        for partial in [&b"POST /v1/submissions HTTP/1.1\r\nHost: lotse\r\nContent-Ty"[..], b""] {
            let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
            slow.write_all(partial).await.expect("send part of the headers");
            let mut fine = tokio::net::TcpStream::connect(addr).await.expect("connect");
            fine.write_all(b"GET / HTTP/1.1\r\nHost: lotse\r\nConnection: close\r\n\r\n").await.expect("send");
            let mut answer = String::new();
            fine.read_to_string(&mut answer).await.expect("read the answer");
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
            // The server closes the slow connection (it may first answer 408): EOF, not a hang.
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "a connection with {} bytes of headers still open after 10 s", partial.len());
        }
        server.stop(Duration::from_secs(10)).await;
    }

    /// An HTTP/2 connection (prior knowledge, as `h2c` clients open it) that sends nothing after
    /// its preface is closed once `read_timeout` has passed; hyper alone kept it open for ever.
    #[tokio::test]
    async fn an_idle_http2_connection_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = TestServer::start(app, Duration::from_millis(500), 64);
        let addr = server.addr;
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The client preface and an empty SETTINGS frame.
        idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
        let mut frames = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut frames)).await;
        assert!(read.is_ok(), "an idle HTTP/2 connection still open after 10 s");
        // Told first: among the frames the server sent is a GOAWAY (type 7).
        let mut types = Vec::new();
        let mut at = 0;
        while let Some(header) = frames.get(at..at + 9) {
            types.push(header[3]);
            at += 9 + (usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]));
        }
        assert!(types.contains(&7), "no GOAWAY among the frame types {types:?}");
        server.stop(Duration::from_secs(10)).await;
    }

    /// A request whose answer takes longer than `read_timeout` (a long poll) is answered: the
    /// connection sends nothing meanwhile, yet it is not idle.
    #[tokio::test]
    async fn a_slow_answer_is_not_taken_for_an_idle_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "late"
            }),
        );
        let server = TestServer::start(app, Duration::from_millis(300), 64);
        let addr = server.addr;
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\nHost: lotse\r\nConnection: close\r\n\r\n").await.expect("send");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("late"), "{answer:?}");
        server.stop(Duration::from_secs(10)).await;
    }

    /// A stop does not wait for a connection that has sent nothing yet (it would have waited out
    /// `read_timeout`, 30 s by default).
    #[tokio::test]
    async fn a_stop_does_not_wait_for_a_silent_connection() {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = TestServer::start(app, Duration::from_secs(30), 64);
        let addr = server.addr;
        let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop(Duration::from_secs(5)).await;
    }

    /// Beyond `max_connections` a new connection is closed at once, the open ones stay, and once
    /// one of them ends a new client is served again.
    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = TestServer::start(app, Duration::from_secs(30), 2);
        let addr = server.addr;
        let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection over the limit was not closed: {read:?}");
        // The two within the limit are still served.
        second.write_all(b"GET / HTTP/1.1\r\nHost: lotse\r\n\r\n").await.expect("send");
        let mut answer = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut answer))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
            next.write_all(b"GET / HTTP/1.1\r\nHost: lotse\r\nConnection: close\r\n\r\n").await.ok();
            let mut answer = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), next.read_to_string(&mut answer)).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no place again after a connection ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(second);
        server.stop(Duration::from_secs(10)).await;
    }

    /// More clients than tokio's default backlog (128) connect at once while nobody accepts:
    /// every connect must complete from the queue at once. With a backlog of 128 the kernel drops
    /// the extra SYNs and those connects take a full second (the SYN retry); this test then sees
    /// hundreds of them late.
    #[tokio::test]
    async fn a_burst_of_connects_fits_the_accept_queue() {
        let listener = super::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("the bound address");
        let connects =
            (0..600).map(|_| tokio::time::timeout(Duration::from_millis(700), tokio::net::TcpStream::connect(addr)));
        let results = futures::future::join_all(connects).await;
        let late = results.iter().filter(|r| r.is_err()).count();
        let failed = results.iter().filter(|r| matches!(r, Ok(Err(_)))).count();
        assert_eq!((late, failed), (0, 0), "connects that waited for a SYN retry, connects that failed");
        drop(listener);
    }
}
