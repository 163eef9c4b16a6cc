//! `gatewayd`, the gateway node.
//!
//! This crate owns the node's settings ([`settings`]) and its wiring: it opens the Raft node,
//! serves the peer and admin gRPC services, the data plane and the ops endpoints, and shuts
//! them down in order on SIGTERM. The binary itself is `src/bin/gatewayd.rs` at the workspace
//! root, which only calls [`main`].

mod jobs;
mod metering;
mod plane;
pub mod settings;
mod spans;

use anyhow::{Context, Result};
use catalog::Catalog;
use cluster::service::PeerService;
use cluster::{Node, NodeConfig};
use settings::{Flags, Settings};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Parses flags, sets up logging and runs the node until SIGTERM or SIGINT.
pub fn main() -> Result<()> {
    let flags = <Flags as clap::Parser>::parse();
    let log = flags.log_settings()?;
    // RUST_LOG, when set, overrides --log-level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.filter));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log.json {
        logger.json().flatten_event(true).init();
    } else {
        logger
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let settings = flags.resolve()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(settings, shutdown_signal()))
}

/// Development time source: the Unix milliseconds written in a file (see `--dev-clock-file`).
/// Monotonic time is the system's.
struct FileClock {
    path: std::path::PathBuf,
    last: std::sync::atomic::AtomicU64,
    monotonic: model::SystemClock,
}

impl FileClock {
    fn new(path: std::path::PathBuf) -> Self {
        FileClock {
            path,
            last: std::sync::atomic::AtomicU64::new(0),
            monotonic: model::SystemClock::new(),
        }
    }
}

impl model::Clock for FileClock {
    fn now(&self) -> model::Nanos {
        self.monotonic.now()
    }

    fn now_ms(&self) -> u64 {
        // A file being rewritten can be read empty: keep the last good reading then.
        let read = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        match read {
            Some(ms) => {
                self.last.store(ms, Ordering::Relaxed);
                ms
            }
            None => self.last.load(Ordering::Relaxed),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Accepted gRPC connections, with Nagle's algorithm off: small replies must not wait for the
/// peer's delayed ACK (it cost ~40 ms per forwarded write).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a gRPC router on `listener`, over TLS when `tls` is given.
fn spawn_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<tls::ServerTls>,
    what: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        Some(tls) => {
            let incoming = tls::incoming(listener, tls, TLS_HANDSHAKE_TIMEOUT, what);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(incoming(listener), shutdown)),
    }
}

/// The TLS configs of every listener, loaded from their files (and watched for changes).
#[derive(Default)]
struct Tls {
    peer_server: Option<tls::ServerTls>,
    peer_client: Option<tls::ClientTls>,
    admin: Option<tls::ServerTls>,
    http: Option<tls::ServerTls>,
}

impl Tls {
    /// `peer_loopback`: the peer listener is on a loopback address (plain text is the default
    /// there, and not worth a warning).
    fn load(s: &settings::TlsSettings, peer_loopback: bool) -> Result<Tls> {
        let mut t = Tls::default();
        if let Some((server, client)) = &s.peer {
            t.peer_server = Some(
                server
                    .load("peer listener", tls::ALPN_H2)
                    .context("--peer-tls-cert/--peer-tls-key/--peer-tls-ca")?,
            );
            t.peer_client = Some(
                client
                    .load("peer connections", tls::ALPN_H2)
                    .context("--peer-tls-cert/--peer-tls-key/--peer-tls-ca")?,
            );
        } else if peer_loopback {
            tracing::info!("peer traffic is not encrypted (loopback, no --peer-tls-cert)");
        } else {
            tracing::warn!("peer traffic is not encrypted (--peer-plaintext)");
        }
        if let Some(admin) = &s.admin {
            t.admin = Some(
                admin
                    .load("admin listener", tls::ALPN_H2)
                    .context("--admin-tls-cert/--admin-tls-key")?,
            );
        }
        if let Some(http) = &s.http {
            t.http = Some(
                http.load("data-plane listener", tls::ALPN_HTTP)
                    .context("--http-tls-cert/--http-tls-key")?,
            );
        }
        Ok(t)
    }

    /// Reloads changed files every `every`, for as long as the node runs.
    fn watch(&self, every: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let servers = [&self.peer_server, &self.admin, &self.http];
        let mut tasks: Vec<_> = servers
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.watch(every))
            .collect();
        tasks.extend(self.peer_client.as_ref().map(|t| t.watch(every)));
        tasks
    }
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Runs a node until `shutdown` resolves.
pub async fn run(s: Settings, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let catalog = Arc::new(match &s.catalog {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::builtin().clone(),
    });
    // Bind every port first, so that a port in use stops the node before it joins anything.
    let peer_listener = bind("--listen-peer", s.listen_peer).await?;
    let admin_listener = bind("--listen-admin", s.listen_admin).await?;
    let http_listener = dataplane::bind_listener(s.listen_http)
        .with_context(|| format!("cannot listen on {} (--listen-http)", s.listen_http))?;
    let ops_listener = bind("--listen-ops", s.listen_ops).await?;
    let console_listener = match s.listen_console {
        Some(addr) => Some(bind("--listen-console", addr).await?),
        None => None,
    };
    let tls = Tls::load(&s.tls, s.listen_peer.ip().is_loopback())?;

    catalog
        .region(&s.shared_region)
        .with_context(|| "invalid --shared-region".to_string())?;
    let mut cfg = NodeConfig::new(s.node_id, s.data_dir.clone(), s.advertise_peer.clone());
    if let Some(path) = &s.dev_clock_file {
        tracing::warn!(
            "DEVELOPMENT MODE: time comes from {}, not the system clock",
            path.display()
        );
        cfg.clock = Arc::new(FileClock::new(path.clone()));
    }
    cfg.voters = s.voters.clone();
    cfg.catalog = catalog.clone();
    cfg.heartbeat = s.heartbeat;
    cfg.election_timeout = (s.election_timeout, s.election_timeout * 2);
    cfg.snapshot_every = s.snapshot_every;
    cfg.peer_tls = tls.peer_client.clone();
    cfg.cluster_id = s.cluster_id.clone();
    cfg.max_stale_config = s.max_stale_config;
    let cfg_clock = cfg.clock.clone();
    let node = Node::start(cfg).await.with_context(|| {
        format!(
            "cannot start node {} in {}",
            s.node_id,
            s.data_dir.display()
        )
    })?;
    tracing::info!(
        node = s.node_id,
        peer = %s.listen_peer,
        admin = %s.listen_admin,
        voters = ?s.voters,
        "gatewayd started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let peer_router =
        tonic::transport::Server::builder().add_service(PeerService::new(node.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "gateway.admin.v1.Admin",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    // Spans, when exported: batched to the collector by a task of their own (otel).
    let (export, export_task) = match &s.otlp {
        Some(settings) => {
            let (spans, task) = otel::Spans::start(settings, s.node_id)?;
            tracing::info!(endpoint = %settings.endpoint, "exporting spans over OTLP");
            let export = Arc::new(spans::Export {
                spans,
                node: i64::try_from(s.node_id).unwrap_or(i64::MAX),
            });
            (Some(export), Some(task))
        }
        None => (None, None),
    };
    let admin = admin::AdminService::with_spans(
        node.clone(),
        catalog.clone(),
        s.allow_private_webhooks,
        export.clone().map(|e| e as Arc<dyn admin::WriteSpans>),
    );
    // Every call passes the authorisation table first (admin::access).
    let admin = admin::Guarded::new(
        admin,
        admin::Authenticator::new(s.admin_token.clone(), node.clone()),
    );

    // The data plane: config from every applied state, shares from the peers' demand.
    // The node's clock: usage is dated on it, as proposals are.
    let dp = dataplane::Dataplane::with_options(dataplane::DataplaneOptions {
        node_id: s.node_id,
        clock: cfg_clock.clone(),
        backend_health: s.backend_health,
        ..Default::default()
    });
    plane::accept_peer_demand(&node, dp.clone());
    plane::gate_serving(&node, dp.clone());
    plane::serve_traffic(&node, dp.clone());
    // The web console calls the same guarded admin service in process, and gathers the live
    // counters of every member over the peer network.
    let console = console::Console::new(
        admin.clone(),
        {
            let node = node.clone();
            Arc::new(move |timeout| {
                let node = node.clone();
                Box::pin(async move { node.gather_traffic(timeout).await })
            })
        },
        s.node_id,
    );
    // Browsers speak HTTP/1.1 to a plain-text listener: accepted only when the console is
    // served there (gRPC clients use HTTP/2 either way).
    let mut admin_routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(admin);
    if s.console_on_admin {
        admin_routes = console.mount(admin_routes);
    }
    let admin_router = tonic::transport::Server::builder()
        .accept_http1(s.console_on_admin)
        .add_routes(admin_routes);
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let _publisher = plane::spawn_publisher(
        node.publication(),
        dp.clone(),
        plane::ConfigSource {
            catalog: catalog.clone(),
            shared: plane::SharedInstance {
                ceiling_rps: s.shared_ceiling_rps,
                region: s.shared_region.clone(),
            },
        },
    )
    .context("cannot start the config publisher")?;
    let background = [
        tokio::spawn(plane::demand_loop(
            node.clone(),
            dp.clone(),
            ready.clone(),
            draining.clone(),
        )),
        plane::watch_peers(&node, dp.clone()),
    ];
    let journal = metering::Journal::open(&s.data_dir)?;
    let backlog = journal.len();
    if backlog > 0 {
        tracing::info!(
            batches = backlog,
            "usage journal: committing batches left from before the restart"
        );
    }
    let writer = Arc::new(tokio::sync::Mutex::new(metering::JournalWriter::new(
        dp.clone(),
        node.clone(),
        journal.clone(),
    )?));
    let committer = metering::Committer::new(node.clone(), journal);
    // In development mode time may jump by days: look at the clock more often.
    let job_tick = if s.dev_clock_file.is_some() {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    };
    let jobs = [
        tokio::spawn(metering::run_writer(
            writer.clone(),
            s.usage_journal_interval,
        )),
        tokio::spawn(metering::run_committer(committer.clone(), s.usage_flush)),
        tokio::spawn(jobs::close_cycles(
            node.clone(),
            jobs::CloseTimes {
                bill_delay: s.bill_delay,
                usage_grace: s.usage_grace,
            },
            job_tick,
        )),
        tokio::spawn(jobs::deliver_events(
            node.clone(),
            job_tick,
            s.allow_private_webhooks,
        )),
    ];
    let limits = s.limits.clone();
    let (access_log, access_log_writer) = match &s.access_log {
        Some(settings) => {
            let (log, writer) = dataplane::AccessLog::start(settings.clone(), s.node_id)
                .with_context(|| format!("cannot open the access log {:?}", settings.target))?;
            (Some(log), Some(writer))
        }
        None => (None, None),
    };
    let (dp_stop_tx, dp_stop_rx) = watch::channel(false);
    let http_threads = dataplane::serve_threads(
        http_listener,
        s.http_threads,
        dp.clone(),
        limits,
        tls.http.clone(),
        dataplane::RequestHooks {
            access_log: access_log.clone(),
            spans: export
                .clone()
                .map(|e| e as Arc<dyn dataplane::RequestSpans>),
        },
        dp_stop_rx,
    )
    .context("cannot start the data-plane threads")?;
    let metrics_node = node.clone();
    let metrics_export = export.clone();
    let ops = dataplane::OpsHooks {
        ready: ready.clone(),
        extra_metrics: Some(Arc::new(move |out: &mut String| {
            plane::raft_metrics(&metrics_node, out);
            if let Some(log) = &access_log {
                log.render_metrics(out);
            }
            if let Some(export) = &metrics_export {
                export.spans.render_metrics(out);
            }
        })),
    };
    let ops_task = tokio::spawn(dataplane::serve_ops(
        ops_listener,
        dp.clone(),
        ops,
        stopped(stop_rx.clone()),
    ));
    let peer_task = spawn_grpc(
        peer_router,
        peer_listener,
        tls.peer_server.clone(),
        "peer",
        stopped(stop_rx.clone()),
    );
    let admin_task = spawn_grpc(
        admin_router,
        admin_listener,
        tls.admin.clone(),
        "admin",
        stopped(stop_rx.clone()),
    );
    let console_task = console_listener.map(|listener| {
        tracing::info!(console = %s.listen_console.unwrap_or(s.listen_admin), "web console serving at /console/");
        spawn_grpc(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(console.mount(tonic::service::Routes::default())),
            listener,
            tls.admin.clone(),
            "console",
            stopped(stop_rx.clone()),
        )
    });
    let tls_watchers = tls.watch(s.tls.reload_every);
    tracing::info!(http = %s.listen_http, ops = %s.listen_ops, "data plane serving");

    // Run until asked to stop, or until Raft itself stops (a storage failure): then exit
    // non-zero, so that a supervisor restarts the node rather than leave it serving stale
    // config without ever catching up again. A node whose cluster id and its peers' differ
    // must not run either. A removed node exits with success when asked to
    // (--exit-when-removed): its end is what the operator wanted, and a supervisor that
    // restarts only failures leaves it down.
    let exit_when_removed = async {
        if s.exit_when_removed {
            node.wait_removed().await
        } else {
            std::future::pending().await
        }
    };
    let failure = tokio::select! {
        _ = shutdown => None,
        e = raft_stopped(node.clone()) => {
            tracing::error!("raft stopped: {e}; shutting down");
            Some(format!("raft stopped: {e}"))
        }
        e = node.wait_conflict() => {
            tracing::error!("{e}: this node refuses to run; shutting down");
            Some(format!("{e}: this node refuses to run"))
        }
        why = exit_when_removed => {
            tracing::warn!(node = s.node_id, "node {} was removed from the cluster ({why}); exiting (--exit-when-removed)", s.node_id);
            None
        }
    };
    // Leaving, in an order that loses no request: /readyz fails first, so load balancers stop
    // sending; for the delay the node keeps accepting and serving, but every HTTP/1 response
    // says `Connection: close`, so keep-alive clients reconnect elsewhere; then the listener
    // closes, idle connections close between requests, and in-flight ones drain
    // (--drain-seconds); usage is flushed last.
    draining.store(true, Ordering::Relaxed);
    ready.store(false, Ordering::Relaxed);
    dp.begin_closing();
    if !s.shutdown_delay.is_zero() {
        tracing::info!(delay = ?s.shutdown_delay, "not ready; serving with Connection: close until load balancers notice");
        tokio::time::sleep(s.shutdown_delay).await;
    }
    let _ = dp_stop_tx.send(true);
    if let Err(e) = http_threads.join().await {
        tracing::warn!("data plane: {e}");
    }
    if let Some(writer) = access_log_writer {
        // The lines of the last requests are written before the node reports it stopped.
        let _ = tokio::task::spawn_blocking(move || writer.close()).await;
    }
    // Everything the data plane counted is recorded before the node leaves.
    for j in &jobs {
        j.abort();
    }
    writer.lock().await.write().await;
    let mut committer = committer;
    if !metering::final_commit(&mut committer, Duration::from_secs(5)).await {
        tracing::warn!(
            "the last usage could not be committed; it stays in the journal for the next start"
        );
    }
    health
        .set_service_status(
            "gateway.admin.v1.Admin",
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    if node.removed().is_none() {
        node.leave_if_learner(Duration::from_secs(3)).await;
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    if let Some(t) = console_task {
        let _ = t.await;
    }
    if let Some(task) = export_task {
        // The last spans go out, bounded by the export timeout.
        let _ = tokio::time::timeout(Duration::from_secs(2), task.close()).await;
    }
    let _ = ops_task.await;
    for t in background.into_iter().chain(tls_watchers) {
        t.abort();
    }
    node.shutdown().await;
    let _ = peer_task.await;
    tracing::info!(node = s.node_id, "gatewayd stopped");
    match failure {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(()),
    }
}

/// Resolves when the node's Raft stops running, with why.
async fn raft_stopped(node: Node) -> String {
    let mut metrics = node.raft().metrics();
    loop {
        if let Err(e) = &metrics.borrow().running_state {
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the Raft task ended".into();
        }
    }
}
