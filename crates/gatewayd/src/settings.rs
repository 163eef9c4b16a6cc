//! gatewayd's settings: flags, `GATEWAY_*` environment variables and a TOML file.
//!
//! Precedence: a flag or its environment variable, then the file given with `--config`, then the
//! default. Every setting is resolved and checked here, before anything starts, so that a bad
//! one stops the node with a message naming it.

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A gateway node: Raft over gRPC, an admin API, and the data plane.
#[derive(Debug, Default, clap::Parser, Deserialize)]
#[command(name = "gatewayd", version, about)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// A TOML file with any of these settings (keys are the flag names with underscores).
    #[arg(long, env = "GATEWAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (1 or more) [default: 1].
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<u64>,
    /// Where the node keeps its data [default: ./gateway-data].
    #[arg(long, env = "GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin gRPC address [default: 127.0.0.1:9090].
    #[arg(long, env = "GATEWAY_LISTEN_ADMIN")]
    pub listen_admin: Option<SocketAddr>,
    /// Serve the web console at /console/ on the admin listener (true or false) [default:
    /// true when --listen-admin is a loopback address, false otherwise].
    #[arg(long, env = "GATEWAY_CONSOLE", num_args = 0..=1, default_missing_value = "true")]
    pub console: Option<bool>,
    /// Also serve the web console (at /console/) on this address of its own, with the admin
    /// listener's TLS certificate if it has one. Outside loopback it needs --admin-token-file,
    /// and --admin-tls-cert or --admin-plaintext, as the admin listener does. Off by default.
    #[arg(long, env = "GATEWAY_LISTEN_CONSOLE")]
    pub listen_console: Option<SocketAddr>,
    /// Peer (Raft) gRPC address [default: 127.0.0.1:9091].
    #[arg(long, env = "GATEWAY_LISTEN_PEER")]
    pub listen_peer: Option<SocketAddr>,
    /// Data-plane HTTP address [default: 127.0.0.1:8080].
    #[arg(long, env = "GATEWAY_LISTEN_HTTP")]
    pub listen_http: Option<SocketAddr>,
    /// Ops HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:9100].
    #[arg(long, env = "GATEWAY_LISTEN_OPS")]
    pub listen_ops: Option<SocketAddr>,
    /// The initial voters' peer addresses: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT. A node whose id
    /// is not listed joins them as a learner. Without it, the node is a cluster of one.
    #[arg(long, env = "GATEWAY_PEERS")]
    pub peers: Option<String>,
    /// The HOST:PORT peers use to reach this node [default: its entry in --peers, or --listen-peer].
    #[arg(long, env = "GATEWAY_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// The cluster this node belongs to. Checked against the id in the data dir and the
    /// peers' (the node refuses to start on a mismatch), and used when this node initialises a
    /// new cluster [default: the data dir's; a new cluster makes a random one].
    #[arg(long, env = "GATEWAY_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Stop serving API traffic (503 NodeNotServing, /readyz 503) after this long without
    /// contact with a quorum of the cluster, e.g. 30s, 1500ms, 2m; resume on contact. Off by
    /// default: a node cut off keeps serving its last configuration.
    #[arg(long, env = "GATEWAY_MAX_STALE_CONFIG")]
    pub max_stale_config: Option<String>,
    /// Exit (status 0, after draining) once this node knows it was removed from the cluster,
    /// instead of running on without serving.
    #[arg(long, env = "GATEWAY_EXIT_WHEN_REMOVED", num_args = 0..=1, default_missing_value = "true")]
    pub exit_when_removed: Option<bool>,
    /// Let account webhooks target loopback, private (RFC 1918, fc00::/7), link-local
    /// (169.254.0.0/16, fe80::/10), unspecified, multicast, 100.64.0.0/10 and 198.18.0.0/15
    /// addresses. Refused by default, when a webhook is set and again after each DNS lookup
    /// before it is called, so that an account cannot make the gateway call the cloud
    /// metadata address or the operator's private network. For tests and private deployments.
    #[arg(long, env = "GATEWAY_ALLOW_PRIVATE_WEBHOOKS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_webhooks: Option<bool>,
    /// A price catalog file to use instead of the built-in one (every node must use the same).
    #[arg(long, env = "GATEWAY_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// A file holding the operator's bearer token for the admin API. Without it the admin API
    /// only listens on loopback.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Derive the node id and the voters from a Kubernetes StatefulSet's identity: the hostname
    /// NAME-N gives node id N+1, and voters are NAME-K.SERVICE.NAMESPACE.svc.DOMAIN.
    #[arg(long, env = "GATEWAY_PEERS_FROM_STATEFULSET", num_args = 0..=1, default_missing_value = "true")]
    pub peers_from_statefulset: Option<bool>,
    /// The StatefulSet's headless service [default: gateway-peer].
    #[arg(long, env = "GATEWAY_STATEFULSET_SERVICE")]
    pub statefulset_service: Option<String>,
    /// How many of the StatefulSet's first pods are voters [default: 3].
    #[arg(long, env = "GATEWAY_STATEFULSET_VOTERS")]
    pub statefulset_voters: Option<u64>,
    /// The cluster's DNS domain [default: cluster.local].
    #[arg(long, env = "GATEWAY_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long, env = "GATEWAY_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout in milliseconds; each election waits a random time between this
    /// and twice it [default: 300; a leader is replaced about 0.9-1.3 s after it dies].
    #[arg(long, env = "GATEWAY_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Take a Raft snapshot after this many log entries since the last one; the log before a
    /// snapshot is purged, and a node that lags further is sent the snapshot [default: 5000].
    #[arg(long, env = "GATEWAY_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// The cluster-wide ceiling of the built-in shared instance, in requests per second; every
    /// node must use the same value [default: 5000].
    #[arg(long, env = "GATEWAY_SHARED_CEILING_RPS")]
    pub shared_ceiling_rps: Option<u32>,
    /// The region of the built-in shared instance: its outbound traffic is billed at this
    /// region's price [default: cn-hangzhou].
    #[arg(long, env = "GATEWAY_SHARED_REGION")]
    pub shared_region: Option<String>,
    /// How long after a daily cycle ends its bill is issued, in seconds (the pricing document
    /// says within 1 to 3 hours) [default: 3600].
    #[arg(long, env = "GATEWAY_BILL_DELAY_SECONDS")]
    pub bill_delay_seconds: Option<u64>,
    /// How often the journalled usage is committed into the replicated state, in ms
    /// [default: 1000].
    #[arg(long, env = "GATEWAY_USAGE_FLUSH_MS")]
    pub usage_flush_ms: Option<u64>,
    /// How often usage counters are written to this node's journal (fsynced), in ms: what a
    /// crash of the node can lose at most [default: 100].
    #[arg(long, env = "GATEWAY_USAGE_JOURNAL_INTERVAL_MS")]
    pub usage_journal_interval_ms: Option<u64>,
    /// How long a day's bill, once due (--bill-delay-seconds after the day), waits for a node
    /// whose usage of the day has not arrived (it is down), in seconds of the leader's
    /// running time; after it the day is billed without that node, and its late usage goes on
    /// the next day's bill [default: 7200, so that bills come within the pricing document's
    /// 3 hours].
    #[arg(long, env = "GATEWAY_USAGE_GRACE_SECONDS")]
    pub usage_grace_seconds: Option<u64>,
    /// Development mode: allows the settings below. Never use it in production.
    #[arg(long, env = "GATEWAY_DEV_MODE", num_args = 0..=1, default_missing_value = "true")]
    pub dev_mode: Option<bool>,
    /// (Development mode only.) Read the current time, in Unix milliseconds, from this file
    /// instead of the system clock, so tests can run months of billing cycles in seconds.
    #[arg(long, env = "GATEWAY_DEV_CLOCK_FILE")]
    pub dev_clock_file: Option<PathBuf>,
    /// On SIGTERM, how long to keep serving after /readyz turns 503, in ms, answering every
    /// HTTP/1 request with `Connection: close`, so that load balancers stop sending and
    /// keep-alive clients move on before the listener closes [default: 3000].
    #[arg(long, env = "GATEWAY_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// Data plane: the largest request body, in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Data plane: the largest request head (line and headers), in bytes; larger get 431
    /// [default: 16384].
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Data plane: a request head must arrive within this many ms, or the connection is closed
    /// (this is what stops slow-loris clients) [default: 10000].
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Data plane: a connection on which nothing moves for this many ms is closed [default: 60000].
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Data plane: a tunnel (an upgraded connection such as a WebSocket) on which no byte
    /// moves either way for this many ms is closed [default: 300000].
    #[arg(long, env = "GATEWAY_TUNNEL_IDLE_TIMEOUT_MS")]
    pub tunnel_idle_timeout_ms: Option<u64>,
    /// Data plane, APIs with several backends: failures in a row (no connection, a broken one,
    /// a timeout, a 5xx) that take a backend out of the rotation [default: 3].
    #[arg(long, env = "GATEWAY_BACKEND_EJECT_AFTER")]
    pub backend_eject_after: Option<u32>,
    /// Data plane: how long a backend is first taken out, in ms; doubled at each ejection in a
    /// row, up to --backend-eject-max-ms [default: 1000].
    #[arg(long, env = "GATEWAY_BACKEND_EJECT_MIN_MS")]
    pub backend_eject_min_ms: Option<u64>,
    /// Data plane: the longest a backend is taken out, in ms [default: 30000].
    #[arg(long, env = "GATEWAY_BACKEND_EJECT_MAX_MS")]
    pub backend_eject_max_ms: Option<u64>,
    /// Data plane: connections served at once per node; more wait in the backlog [default: 10000].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long the data plane drains in-flight requests on SIGTERM, in seconds [default: 30].
    #[arg(long, env = "GATEWAY_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Data plane: threads serving it, each with its own runtime; an extra thread accepts and
    /// gives each new connection to the thread serving the fewest [default: the number of
    /// CPUs].
    #[arg(long, env = "GATEWAY_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Data plane: pass request headers whose names contain `_` on to backends. By default
    /// they are dropped, as nginx does: a backend that maps header names to variables reads
    /// `Content_Length` or `X_Ca_Key` as the header the gateway checked.
    #[arg(long, env = "GATEWAY_ALLOW_UNDERSCORE_HEADERS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_underscore_headers: Option<bool>,
    /// Peer TLS: this node's certificate chain (PEM), presented both as the peer listener's
    /// server certificate and as the client certificate when dialling peers. With
    /// --peer-tls-key and --peer-tls-ca, peers speak mutual TLS and only holders of a
    /// certificate from the cluster CA can join or send Raft messages.
    #[arg(long, env = "GATEWAY_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Peer TLS: the private key of --peer-tls-cert (PEM).
    #[arg(long, env = "GATEWAY_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// Peer TLS: the cluster CA bundle (PEM) that every peer's certificate must chain to.
    #[arg(long, env = "GATEWAY_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Serve and dial peers without TLS on a non-loopback --listen-peer. Anyone who reaches the
    /// port can then join the cluster or forge Raft messages: development only.
    #[arg(long, env = "GATEWAY_PEER_PLAINTEXT", num_args = 0..=1, default_missing_value = "true")]
    pub peer_plaintext: Option<bool>,
    /// Admin TLS: the admin listener's certificate chain (PEM); with --admin-tls-key.
    #[arg(long, env = "GATEWAY_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// Admin TLS: the private key of --admin-tls-cert (PEM).
    #[arg(long, env = "GATEWAY_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// Serve the admin API without TLS on a non-loopback --listen-admin (for example behind a
    /// mesh sidecar that terminates TLS). Bearer tokens then cross the network in the clear.
    #[arg(long, env = "GATEWAY_ADMIN_PLAINTEXT", num_args = 0..=1, default_missing_value = "true")]
    pub admin_plaintext: Option<bool>,
    /// Data-plane TLS: the certificate chain (PEM) served on --listen-http; with
    /// --http-tls-key. Without them the data plane speaks plain HTTP.
    #[arg(long, env = "GATEWAY_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<PathBuf>,
    /// Data-plane TLS: the private key of --http-tls-cert (PEM).
    #[arg(long, env = "GATEWAY_HTTP_TLS_KEY")]
    pub http_tls_key: Option<PathBuf>,
    /// How often certificate files are checked for changes, in ms; changed files are loaded
    /// for new connections without a restart [default: 5000].
    #[arg(long, env = "GATEWAY_TLS_RELOAD_MS")]
    pub tls_reload_ms: Option<u64>,
    /// Access log: one JSON line per data-plane request, to `stdout` or to a file PATH
    /// (rotated by size) [default: none].
    #[arg(long, env = "GATEWAY_ACCESS_LOG", value_name = "stdout|PATH")]
    pub access_log: Option<String>,
    /// Access log file: rotated before it would grow past this many bytes [default: 104857600].
    #[arg(long, env = "GATEWAY_ACCESS_LOG_MAX_BYTES")]
    pub access_log_max_bytes: Option<u64>,
    /// Access log file: rotated files kept, PATH.1 (newest) to PATH.N [default: 5].
    #[arg(long, env = "GATEWAY_ACCESS_LOG_KEEP", value_name = "N")]
    pub access_log_keep: Option<usize>,
    /// OpenTelemetry: export a span per data-plane request and per admin write over OTLP/gRPC
    /// to this collector, `http://HOST:PORT` (usually port 4317) [default: none, no export].
    #[arg(long, env = "GATEWAY_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The node's own log (on stderr): `text` or `json` (one object per line) [default: text].
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
    /// The node's log level: error, warn, info, debug or trace, or a filter such as
    /// `info,cluster=debug`. RUST_LOG, when set, overrides it [default: info].
    #[arg(long, env = "GATEWAY_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// How the node logs (see `--log-format`, `--log-level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub json: bool,
    /// The filter: `--log-level` with quiet defaults for chatty dependencies.
    pub filter: String,
}

impl Flags {
    /// The log settings alone: read before the rest, so that resolving logs as configured.
    pub fn log_settings(&self) -> Result<LogSettings> {
        let file = match &self.config {
            Some(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|t| toml::from_str::<Flags>(&t).ok()),
            None => None,
        };
        let format = self
            .log_format
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.log_format.clone()));
        let json = match format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("invalid --log-format '{other}': use text or json"),
        };
        let level = self
            .log_level
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.log_level.clone()))
            .unwrap_or_else(|| "info".into());
        if level.trim().is_empty() {
            bail!("invalid --log-level '': use error, warn, info, debug, trace or a filter");
        }
        // Dependencies stay quiet at the default level; a filter naming them wins (later
        // directives for the same target override earlier ones). openraft's replication lines
        // about an unreachable peer come several a second: the node logs those itself, at most
        // once per peer every 30 s (`cluster::network`). raft_core warns of stale messages it
        // ignores, which happens on every vote (a follower's own vote notification).
        let filter = format!(
            "openraft=warn,openraft::replication=off,\
             openraft::engine::handler::replication_handler=off,openraft::core::raft_core=error,\
             sled=warn,h2=warn,tower=warn,{level}"
        );
        tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|e| anyhow!("invalid --log-level '{level}': {e}"))?;
        Ok(LogSettings { json, filter })
    }
}

/// TLS for the three listeners, as files (loaded when the node starts, then reloaded on change).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Mutual TLS between peers: the server side of the peer listener, the client side of
    /// connections to peers.
    pub peer: Option<(tls::ServerFiles, tls::ClientFiles)>,
    pub admin: Option<tls::ServerFiles>,
    pub http: Option<tls::ServerFiles>,
    pub reload_every: Duration,
}

/// Everything the node needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen_admin: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_http: SocketAddr,
    pub listen_ops: SocketAddr,
    /// Whether the admin listener serves the web console.
    pub console_on_admin: bool,
    /// The web console's own listener, if any.
    pub listen_console: Option<SocketAddr>,
    pub voters: BTreeMap<u64, String>,
    pub advertise_peer: String,
    pub catalog: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_every: u64,
    pub shared_ceiling_rps: u32,
    pub shared_region: String,
    pub bill_delay: Duration,
    pub usage_flush: Duration,
    pub usage_journal_interval: Duration,
    pub usage_grace: Duration,
    pub dev_clock_file: Option<PathBuf>,
    pub shutdown_delay: Duration,
    pub limits: dataplane::ServerLimits,
    pub http_threads: usize,
    pub tls: TlsSettings,
    pub cluster_id: Option<String>,
    pub max_stale_config: Option<Duration>,
    pub exit_when_removed: bool,
    pub allow_private_webhooks: bool,
    /// When a backend of an API with several is taken out, and for how long.
    pub backend_health: dataplane::HealthPolicy,
    pub access_log: Option<dataplane::AccessLogSettings>,
    pub otlp: Option<otel::OtlpSettings>,
}

impl Flags {
    /// Fills what the flags leave unset from the config file.
    fn merge_file(mut self) -> Result<Flags> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: Flags = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))?;
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f; } )* };
        }
        fill!(
            node_id,
            data_dir,
            listen_admin,
            console,
            listen_console,
            listen_peer,
            listen_http,
            listen_ops,
            peers,
            advertise_peer,
            cluster_id,
            max_stale_config,
            exit_when_removed,
            allow_private_webhooks,
            catalog,
            admin_token_file,
            peers_from_statefulset,
            statefulset_service,
            statefulset_voters,
            cluster_domain,
            heartbeat_ms,
            election_timeout_ms,
            snapshot_every,
            shared_ceiling_rps,
            shared_region,
            bill_delay_seconds,
            usage_flush_ms,
            usage_journal_interval_ms,
            usage_grace_seconds,
            dev_mode,
            dev_clock_file,
            shutdown_delay_ms,
            max_body_bytes,
            max_header_bytes,
            header_read_timeout_ms,
            idle_timeout_ms,
            tunnel_idle_timeout_ms,
            backend_eject_after,
            backend_eject_min_ms,
            backend_eject_max_ms,
            max_connections,
            drain_seconds,
            http_threads,
            allow_underscore_headers,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_ca,
            peer_plaintext,
            admin_tls_cert,
            admin_tls_key,
            admin_plaintext,
            http_tls_cert,
            http_tls_key,
            tls_reload_ms,
            access_log,
            access_log_max_bytes,
            access_log_keep,
            otlp_endpoint,
            log_format,
            log_level
        );
        Ok(self)
    }

    pub fn resolve(self) -> Result<Settings> {
        let f = self.merge_file()?;
        let listen_peer = f.listen_peer.unwrap_or(([127, 0, 0, 1], 9091).into());
        let (node_id, voters, advertise) = if f.peers_from_statefulset.unwrap_or(false) {
            if f.peers.is_some() || f.node_id.is_some() {
                bail!(
                    "--peers-from-statefulset derives --node-id and --peers; do not set them too"
                );
            }
            let hostname = hostname()?;
            let namespace = std::env::var("POD_NAMESPACE").map_err(|_| {
                anyhow!("--peers-from-statefulset needs POD_NAMESPACE (from the downward API)")
            })?;
            let sts = StatefulSet {
                service: f
                    .statefulset_service
                    .clone()
                    .unwrap_or_else(|| "gateway-peer".into()),
                namespace,
                domain: f
                    .cluster_domain
                    .clone()
                    .unwrap_or_else(|| "cluster.local".into()),
                voters: f.statefulset_voters.unwrap_or(3),
                peer_port: listen_peer.port(),
            };
            let (id, voters, me) = sts.derive(&hostname)?;
            (id, voters, f.advertise_peer.clone().unwrap_or(me))
        } else {
            let node_id = f.node_id.unwrap_or(1);
            if node_id == 0 {
                bail!("invalid --node-id 0: node ids start at 1");
            }
            let mut voters = match &f.peers {
                Some(p) => parse_peers(p)?,
                None => BTreeMap::new(),
            };
            let advertise = match (&f.advertise_peer, voters.get(&node_id)) {
                (Some(a), _) => a.clone(),
                (None, Some(a)) => a.clone(),
                (None, None) if listen_peer.ip().is_unspecified() => {
                    bail!(
                        "--listen-peer {listen_peer} is not an address peers can use: set --advertise-peer"
                    )
                }
                (None, None) => listen_peer.to_string(),
            };
            if voters.is_empty() {
                voters.insert(node_id, advertise.clone());
            }
            (node_id, voters, advertise)
        };
        let listen_admin = f.listen_admin.unwrap_or(([127, 0, 0, 1], 9090).into());
        let admin_token = match &f.admin_token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read --admin-token-file {}", path.display())
                })?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    bail!(
                        "the admin token in {} is shorter than 16 characters",
                        path.display()
                    );
                }
                Some(t)
            }
            None => None,
        };
        if admin_token.is_none() && !listen_admin.ip().is_loopback() {
            bail!(
                "--listen-admin {listen_admin} is not a loopback address: give --admin-token-file so that the admin API is not open to anyone who can reach it"
            );
        }
        let tls = tls_settings(&f, listen_peer, listen_admin)?;
        // The console's own listener is exposed by the same rule as the admin listener.
        if let Some(addr) = f.listen_console
            && !addr.ip().is_loopback()
        {
            if admin_token.is_none() {
                bail!(
                    "--listen-console {addr} is not a loopback address: give --admin-token-file so that the console is not open to anyone who can reach it"
                );
            }
            if tls.admin.is_none() && f.admin_plaintext != Some(true) {
                bail!(
                    "--listen-console {addr} is not a loopback address: give --admin-tls-cert and --admin-tls-key so that bearer tokens are not sent in the clear, or --admin-plaintext if something in front of the node terminates TLS"
                );
            }
        }
        let http_threads = match f.http_threads {
            Some(n) if !(1..=256).contains(&n) => {
                bail!("--http-threads {n} is outside 1..=256")
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if f.dev_clock_file.is_some() && f.dev_mode != Some(true) {
            bail!("--dev-clock-file is a development setting: it is refused without --dev-mode");
        }
        let usage_flush_ms = f.usage_flush_ms.unwrap_or(1000);
        if usage_flush_ms < 10 {
            bail!("--usage-flush-ms {usage_flush_ms} is below the minimum of 10");
        }
        let journal_ms = f.usage_journal_interval_ms.unwrap_or(100);
        if !(10..=1000).contains(&journal_ms) {
            bail!(
                "--usage-journal-interval-ms {journal_ms} is outside 10..=1000 (what a crash may lose)"
            );
        }
        let limits = server_limits(&f)?;
        let backend_health = backend_health(&f)?;
        let snapshot_every = f.snapshot_every.unwrap_or(5000);
        if snapshot_every < 10 {
            bail!("--snapshot-every {snapshot_every} is below the minimum of 10 log entries");
        }
        let election = f.election_timeout_ms.unwrap_or(300);
        let heartbeat = f.heartbeat_ms.unwrap_or(100);
        if heartbeat == 0 || election <= heartbeat * 2 {
            bail!(
                "--election-timeout-ms ({election}) must be more than twice --heartbeat-ms ({heartbeat})"
            );
        }
        if let Some(id) = &f.cluster_id {
            cluster::check_cluster_id(id).map_err(|e| anyhow!("invalid --cluster-id: {e}"))?;
        }
        let max_stale_config = match &f.max_stale_config {
            None => None,
            Some(text) => {
                let d = parse_duration(text)
                    .map_err(|e| anyhow!("invalid --max-stale-config '{text}': {e}"))?;
                // Below an election timeout, an ordinary leader change would stop the node.
                let min = Duration::from_millis(election * 2);
                if d < min {
                    bail!(
                        "--max-stale-config {text} is below twice --election-timeout-ms ({} ms): every leader election would stop the data plane",
                        min.as_millis()
                    );
                }
                Some(d)
            }
        };
        let access_log = access_log_settings(&f)?;
        let otlp = otlp_settings(f.otlp_endpoint.as_deref())?;
        Ok(Settings {
            access_log,
            otlp,
            node_id,
            data_dir: f.data_dir.unwrap_or_else(|| PathBuf::from("gateway-data")),
            listen_admin,
            listen_peer,
            listen_http: f.listen_http.unwrap_or(([127, 0, 0, 1], 8080).into()),
            listen_ops: f.listen_ops.unwrap_or(([127, 0, 0, 1], 9100).into()),
            console_on_admin: f.console.unwrap_or(listen_admin.ip().is_loopback()),
            listen_console: f.listen_console,
            voters,
            advertise_peer: advertise,
            catalog: f.catalog,
            admin_token,
            heartbeat: Duration::from_millis(heartbeat),
            election_timeout: Duration::from_millis(election),
            snapshot_every,
            shared_ceiling_rps: f.shared_ceiling_rps.unwrap_or(5000),
            shared_region: f.shared_region.unwrap_or_else(|| "cn-hangzhou".into()),
            bill_delay: Duration::from_secs(f.bill_delay_seconds.unwrap_or(3600)),
            usage_flush: Duration::from_millis(usage_flush_ms),
            usage_journal_interval: Duration::from_millis(journal_ms),
            usage_grace: Duration::from_secs(f.usage_grace_seconds.unwrap_or(7200)),
            dev_clock_file: f.dev_clock_file,
            shutdown_delay: Duration::from_millis(f.shutdown_delay_ms.unwrap_or(3000)),
            limits,
            http_threads,
            tls,
            cluster_id: f.cluster_id,
            max_stale_config,
            exit_when_removed: f.exit_when_removed.unwrap_or(false),
            allow_private_webhooks: f.allow_private_webhooks.unwrap_or(false),
            backend_health,
        })
    }
}

/// When a backend of an API with several is taken out and for how long: the defaults, with
/// what the flags set, each checked for sense.
fn backend_health(f: &Flags) -> Result<dataplane::HealthPolicy> {
    let d = dataplane::HealthPolicy::default();
    let failures_to_eject = f.backend_eject_after.unwrap_or(d.failures_to_eject);
    if !(1..=1000).contains(&failures_to_eject) {
        bail!("--backend-eject-after {failures_to_eject} must be 1..=1000 failures in a row");
    }
    let ms = |flag: &str, v: Option<u64>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(v) if (100..=3_600_000).contains(&v) => Ok(Duration::from_millis(v)),
            Some(v) => bail!("--{flag} {v} must be 100..=3600000 ms"),
        }
    };
    let backoff_min = ms(
        "backend-eject-min-ms",
        f.backend_eject_min_ms,
        d.backoff_min,
    )?;
    // Unset, the longest is the default or the first, whichever is longer.
    let backoff_max = ms(
        "backend-eject-max-ms",
        f.backend_eject_max_ms,
        d.backoff_max.max(backoff_min),
    )?;
    if backoff_max < backoff_min {
        bail!(
            "--backend-eject-max-ms {} is below --backend-eject-min-ms {}: the longest time out cannot be shorter than the first",
            backoff_max.as_millis(),
            backoff_min.as_millis()
        );
    }
    Ok(dataplane::HealthPolicy {
        failures_to_eject,
        backoff_min,
        backoff_max,
    })
}

/// Where spans are exported, if anywhere.
fn otlp_settings(endpoint: Option<&str>) -> Result<Option<otel::OtlpSettings>> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        anyhow::anyhow!(
            "--otlp-endpoint {endpoint:?} is not a URL ({e}); expected http://HOST:PORT"
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("--otlp-endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST:PORT");
    }
    Ok(Some(otel::OtlpSettings::new(endpoint.to_owned())))
}

/// The access log's target and rotation.
fn access_log_settings(f: &Flags) -> Result<Option<dataplane::AccessLogSettings>> {
    let max_bytes = f.access_log_max_bytes.unwrap_or(100 * 1024 * 1024);
    if max_bytes < 4096 {
        bail!("--access-log-max-bytes {max_bytes} is below the minimum of 4096");
    }
    let keep = f.access_log_keep.unwrap_or(5);
    if keep > 1000 {
        bail!("--access-log-keep {keep} is above the maximum of 1000");
    }
    let target = match f.access_log.as_deref() {
        None => {
            if f.access_log_max_bytes.is_some() || f.access_log_keep.is_some() {
                bail!("--access-log-max-bytes and --access-log-keep need --access-log PATH");
            }
            return Ok(None);
        }
        Some("") => bail!("invalid --access-log '': use stdout or a file path"),
        Some("stdout" | "-") => dataplane::AccessLogTarget::Stdout,
        Some(path) => dataplane::AccessLogTarget::File(PathBuf::from(path)),
    };
    Ok(Some(dataplane::AccessLogSettings {
        target,
        max_bytes,
        keep,
    }))
}

/// Both files of a certificate and its key, or neither.
fn cert_and_key(
    listener: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("--{listener}-tls-cert needs --{listener}-tls-key"),
        (None, Some(_)) => bail!("--{listener}-tls-key needs --{listener}-tls-cert"),
    }
}

/// TLS for each listener. Plaintext is the default only on loopback; elsewhere the peer and
/// admin listeners need TLS unless plaintext is asked for by name.
fn tls_settings(
    f: &Flags,
    listen_peer: SocketAddr,
    listen_admin: SocketAddr,
) -> Result<TlsSettings> {
    let peer = match (
        cert_and_key("peer", &f.peer_tls_cert, &f.peer_tls_key)?,
        &f.peer_tls_ca,
    ) {
        (Some((cert, key)), Some(ca)) => Some((
            tls::ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: Some(ca.clone()),
            },
            tls::ClientFiles {
                ca: ca.clone(),
                identity: Some((cert, key)),
            },
        )),
        (None, None) => None,
        (Some(_), None) => bail!(
            "--peer-tls-cert needs --peer-tls-ca: peers must present certificates of the cluster CA"
        ),
        (None, Some(_)) => bail!("--peer-tls-ca needs --peer-tls-cert and --peer-tls-key"),
    };
    let peer_plaintext = f.peer_plaintext == Some(true);
    if peer.is_some() && peer_plaintext {
        bail!("--peer-plaintext contradicts --peer-tls-cert: choose one");
    }
    if peer.is_none() && !peer_plaintext && !listen_peer.ip().is_loopback() {
        bail!(
            "--listen-peer {listen_peer} is not a loopback address: give --peer-tls-cert, --peer-tls-key and --peer-tls-ca so that only cluster members can join or send Raft messages, or --peer-plaintext to accept anyone (development only)"
        );
    }
    let admin = cert_and_key("admin", &f.admin_tls_cert, &f.admin_tls_key)?.map(|(cert, key)| {
        tls::ServerFiles {
            cert,
            key,
            client_ca: None,
        }
    });
    let admin_plaintext = f.admin_plaintext == Some(true);
    if admin.is_some() && admin_plaintext {
        bail!("--admin-plaintext contradicts --admin-tls-cert: choose one");
    }
    if admin.is_none() && !admin_plaintext && !listen_admin.ip().is_loopback() {
        bail!(
            "--listen-admin {listen_admin} is not a loopback address: give --admin-tls-cert and --admin-tls-key so that bearer tokens are not sent in the clear, or --admin-plaintext if something in front of the node terminates TLS"
        );
    }
    let http = cert_and_key("http", &f.http_tls_cert, &f.http_tls_key)?.map(|(cert, key)| {
        tls::ServerFiles {
            cert,
            key,
            client_ca: None,
        }
    });
    let reload_ms = f.tls_reload_ms.unwrap_or(5000);
    if reload_ms < 100 {
        bail!("--tls-reload-ms {reload_ms} is below the minimum of 100");
    }
    Ok(TlsSettings {
        peer,
        admin,
        http,
        reload_every: Duration::from_millis(reload_ms),
    })
}

/// The data plane's limits: the defaults, with what the flags set, each checked for sense.
fn server_limits(f: &Flags) -> Result<dataplane::ServerLimits> {
    let d = dataplane::ServerLimits::default();
    let at_least = |flag: &str, v: u64, min: u64| {
        if v < min {
            bail!("--{flag} {v} is below the minimum of {min}");
        }
        Ok(v)
    };
    Ok(dataplane::ServerLimits {
        max_body_bytes: match f.max_body_bytes {
            Some(v) => at_least("max-body-bytes", v, 1)?,
            None => d.max_body_bytes,
        },
        max_header_bytes: match f.max_header_bytes {
            Some(v) => at_least("max-header-bytes", v as u64, 1024)? as usize,
            None => d.max_header_bytes,
        },
        header_read_timeout: match f.header_read_timeout_ms {
            Some(v) => Duration::from_millis(at_least("header-read-timeout-ms", v, 100)?),
            None => d.header_read_timeout,
        },
        idle_timeout: match f.idle_timeout_ms {
            Some(v) => Duration::from_millis(at_least("idle-timeout-ms", v, 100)?),
            None => d.idle_timeout,
        },
        max_connections: match f.max_connections {
            Some(v) => at_least("max-connections", v as u64, 1)? as usize,
            None => d.max_connections,
        },
        drain_timeout: Duration::from_secs(f.drain_seconds.unwrap_or(30)),
        allow_underscore_headers: f.allow_underscore_headers.unwrap_or(false),
        tunnel_idle_timeout: match f.tunnel_idle_timeout_ms {
            Some(v) => Duration::from_millis(at_least("tunnel-idle-timeout-ms", v, 100)?),
            None => d.tunnel_idle_timeout,
        },
    })
}

/// Parses a duration: a whole number with the unit `ms`, `s`, `m` or `h` (`1500ms`, `30s`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow!("expected a whole number and a unit (ms, s, m or h), e.g. 30s"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("unknown unit '{unit}': use ms, s, m or h, e.g. 30s"),
    };
    if d.is_zero() {
        bail!("must be more than zero");
    }
    Ok(d)
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            anyhow!(
                "malformed --peers entry '{entry}': {why} (expected ID=HOST:PORT, e.g. 1=127.0.0.1:9091)"
            )
        };
        let (id, addr) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        if id == 0 {
            return Err(bad("node ids start at 1"));
        }
        let addr = addr.trim();
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(
                "the address must be HOST:PORT with a port from 1 to 65535",
            ));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(bad("the id is listed twice"));
        }
    }
    if out.is_empty() {
        bail!("--peers is empty (expected ID=HOST:PORT,...)");
    }
    Ok(out)
}

/// The pod's identity in a StatefulSet.
struct StatefulSet {
    service: String,
    namespace: String,
    domain: String,
    voters: u64,
    peer_port: u16,
}

impl StatefulSet {
    /// From hostname `NAME-N`: node id N+1, the voters' DNS names, and this pod's own.
    fn derive(&self, hostname: &str) -> Result<(u64, BTreeMap<u64, String>, String)> {
        let (name, ordinal) = hostname
            .rsplit_once('-')
            .and_then(|(n, o)| Some((n, o.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                anyhow!("hostname '{hostname}' is not a StatefulSet pod name like gateway-0")
            })?;
        if self.voters == 0 {
            bail!("--statefulset-voters must be 1 or more");
        }
        let dns = |k: u64| {
            format!(
                "{name}-{k}.{}.{}.svc.{}:{}",
                self.service, self.namespace, self.domain, self.peer_port
            )
        };
        let voters = (0..self.voters).map(|k| (k + 1, dns(k))).collect();
        Ok((ordinal + 1, voters, dns(ordinal)))
    }
}

fn hostname() -> Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        return Ok(h);
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("cannot read the hostname")?;
    Ok(h.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        let p = parse_peers("1=127.0.0.1:9091, 2=host-b:9091,3=[::1]:7").unwrap();
        assert_eq!(p[&2], "host-b:9091");
        assert_eq!(p.len(), 3);
        for bad in [
            "",
            "1",
            "x=a:1",
            "0=a:1",
            "1=a",
            "1=a:0",
            "1=a:1,1=b:2",
            "1=:5",
        ] {
            let e = parse_peers(bad).unwrap_err().to_string();
            assert!(e.contains("--peers"), "{bad}: {e}");
        }
    }

    #[test]
    fn statefulset_identity() {
        let s = StatefulSet {
            service: "gateway-peer".into(),
            namespace: "gw".into(),
            domain: "cluster.local".into(),
            voters: 3,
            peer_port: 9091,
        };
        let (id, voters, me) = s.derive("gateway-4").unwrap();
        assert_eq!(id, 5);
        assert_eq!(voters.len(), 3);
        assert_eq!(
            voters[&1],
            "gateway-0.gateway-peer.gw.svc.cluster.local:9091"
        );
        assert_eq!(me, "gateway-4.gateway-peer.gw.svc.cluster.local:9091");
        assert!(s.derive("gateway").is_err());
    }

    #[test]
    fn defaults_make_a_single_node_cluster() {
        let s = Flags::default().resolve().unwrap();
        assert_eq!(s.node_id, 1);
        assert_eq!(s.voters.len(), 1);
        assert_eq!(s.voters[&1], "127.0.0.1:9091");
        assert_eq!(s.listen_http.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn open_admin_needs_a_token() {
        let f = Flags {
            listen_admin: Some("0.0.0.0:9090".parse().unwrap()),
            ..Default::default()
        };
        assert!(
            f.resolve()
                .unwrap_err()
                .to_string()
                .contains("--admin-token-file")
        );
    }

    #[test]
    fn the_console_is_exposed_by_the_admin_rule() {
        // On by default on a loopback admin listener, off on another unless asked for.
        assert!(Flags::default().resolve().unwrap().console_on_admin);
        let token = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token.path(), "0123456789abcdef0123").unwrap();
        let open = || Flags {
            listen_admin: Some("0.0.0.0:9090".parse().unwrap()),
            admin_token_file: Some(token.path().into()),
            admin_plaintext: Some(true),
            ..Default::default()
        };
        assert!(!open().resolve().unwrap().console_on_admin);
        let asked = Flags {
            console: Some(true),
            ..open()
        };
        assert!(asked.resolve().unwrap().console_on_admin);
        // A console listener of its own outside loopback needs the token and TLS (or the
        // explicit plaintext), as the admin listener does.
        let bare = Flags {
            listen_console: Some("0.0.0.0:9443".parse().unwrap()),
            ..Default::default()
        };
        let e = bare.resolve().unwrap_err().to_string();
        assert!(
            e.contains("--listen-console") && e.contains("--admin-token-file"),
            "{e}"
        );
        let no_tls = Flags {
            listen_console: Some("0.0.0.0:9443".parse().unwrap()),
            admin_token_file: Some(token.path().into()),
            ..Default::default()
        };
        let e = no_tls.resolve().unwrap_err().to_string();
        assert!(
            e.contains("--listen-console") && e.contains("--admin-tls-cert"),
            "{e}"
        );
        let local = Flags {
            listen_console: Some("127.0.0.1:9443".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            local.resolve().unwrap().listen_console,
            Some("127.0.0.1:9443".parse().unwrap())
        );
        let plain = Flags {
            listen_console: Some("0.0.0.0:9443".parse().unwrap()),
            ..open()
        };
        assert!(plain.resolve().is_ok());
    }

    #[test]
    fn membership_flags() {
        let s = Flags::default().resolve().unwrap();
        assert_eq!(s.max_stale_config, None, "off by default");
        assert!(!s.exit_when_removed);
        let s = Flags {
            max_stale_config: Some("1500ms".into()),
            cluster_id: Some("prod-1".into()),
            exit_when_removed: Some(true),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.max_stale_config, Some(Duration::from_millis(1500)));
        assert_eq!(s.cluster_id.as_deref(), Some("prod-1"));
        assert!(s.exit_when_removed);
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for (bad, says) in [
            ("30", "unknown unit"),
            ("s", "whole number"),
            ("0s", "more than zero"),
            ("500ms", "below twice --election-timeout-ms"),
        ] {
            refused(
                Flags {
                    max_stale_config: Some(bad.into()),
                    ..Default::default()
                },
                &["--max-stale-config", says],
            );
        }
        refused(
            Flags {
                cluster_id: Some("a b".into()),
                ..Default::default()
            },
            &["--cluster-id", "1 to 64 characters"],
        );
    }

    fn refused(f: Flags, wanted: &[&str]) {
        let e = f.resolve().unwrap_err().to_string();
        for w in wanted {
            assert!(e.contains(w), "{e:?} should mention {w}");
        }
    }

    #[test]
    fn open_listeners_need_tls_or_plaintext_by_name() {
        let p = |s: &str| Some(PathBuf::from(s));
        // Peer listener on a pod address, no TLS: refused, naming the ways out.
        refused(
            Flags {
                listen_peer: Some("0.0.0.0:9091".parse().unwrap()),
                advertise_peer: Some("gw-0.peers:9091".into()),
                ..Default::default()
            },
            &["--peer-tls-cert", "--peer-tls-ca", "--peer-plaintext"],
        );
        let open_peer = || Flags {
            listen_peer: Some("0.0.0.0:9091".parse().unwrap()),
            advertise_peer: Some("gw-0.peers:9091".into()),
            peer_plaintext: Some(true),
            ..Default::default()
        };
        assert!(open_peer().resolve().unwrap().tls.peer.is_none());
        // Mutual TLS needs the CA; a key without a certificate is named.
        refused(
            Flags {
                peer_plaintext: None,
                peer_tls_cert: p("c.pem"),
                peer_tls_key: p("k.pem"),
                ..open_peer()
            },
            &["--peer-tls-ca"],
        );
        refused(
            Flags {
                peer_tls_key: p("k.pem"),
                ..Default::default()
            },
            &["--peer-tls-key needs --peer-tls-cert"],
        );
        refused(
            Flags {
                peer_tls_cert: p("c.pem"),
                peer_tls_key: p("k.pem"),
                peer_tls_ca: p("ca.pem"),
                ..open_peer()
            },
            &["--peer-plaintext contradicts"],
        );
        let mtls = Flags {
            peer_plaintext: None,
            peer_tls_cert: p("c.pem"),
            peer_tls_key: p("k.pem"),
            peer_tls_ca: p("ca.pem"),
            ..open_peer()
        }
        .resolve()
        .unwrap();
        let (server, client) = mtls.tls.peer.unwrap();
        assert_eq!(server.client_ca, p("ca.pem"));
        assert_eq!(client.identity, Some(("c.pem".into(), "k.pem".into())));

        // The admin API off loopback needs TLS (the token file is there).
        let token = std::env::temp_dir().join(format!("gw-settings-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123").unwrap();
        let open_admin = || Flags {
            listen_admin: Some("0.0.0.0:9090".parse().unwrap()),
            admin_token_file: Some(token.clone()),
            ..Default::default()
        };
        refused(open_admin(), &["--admin-tls-cert", "--admin-plaintext"]);
        assert!(
            Flags {
                admin_plaintext: Some(true),
                ..open_admin()
            }
            .resolve()
            .is_ok()
        );
        let with_tls = Flags {
            admin_tls_cert: p("a.pem"),
            admin_tls_key: p("a-key.pem"),
            ..open_admin()
        }
        .resolve()
        .unwrap();
        assert_eq!(with_tls.tls.admin.unwrap().cert, PathBuf::from("a.pem"));
        refused(
            Flags {
                http_tls_cert: p("h.pem"),
                ..Default::default()
            },
            &["--http-tls-cert needs --http-tls-key"],
        );
        refused(
            Flags {
                tls_reload_ms: Some(5),
                ..Default::default()
            },
            &["--tls-reload-ms"],
        );
        let _ = std::fs::remove_file(token);
    }

    #[test]
    fn backend_ejection_flags_are_checked_and_named() {
        let d = Flags::default().resolve().unwrap().backend_health;
        assert_eq!(d, dataplane::HealthPolicy::default());
        let f = |after, min, max| Flags {
            backend_eject_after: after,
            backend_eject_min_ms: min,
            backend_eject_max_ms: max,
            ..Flags::default()
        };
        let s = f(Some(1), Some(200), Some(5000)).resolve().unwrap();
        assert_eq!(s.backend_health.failures_to_eject, 1);
        assert_eq!(s.backend_health.backoff_min, Duration::from_millis(200));
        assert_eq!(s.backend_health.backoff_max, Duration::from_secs(5));
        // A first period longer than the default longest one raises that too.
        let s = f(None, Some(60_000), None).resolve().unwrap();
        assert_eq!(s.backend_health.backoff_max, Duration::from_secs(60));
        for (flags, names) in [
            (
                f(Some(0), None, None),
                "--backend-eject-after 0 must be 1..=1000",
            ),
            (
                f(None, Some(10), None),
                "--backend-eject-min-ms 10 must be 100..=3600000",
            ),
            (f(None, None, Some(u64::MAX)), "--backend-eject-max-ms"),
            (
                f(None, Some(5000), Some(2000)),
                "--backend-eject-max-ms 2000 is below --backend-eject-min-ms 5000",
            ),
        ] {
            let e = flags.resolve().unwrap_err().to_string();
            assert!(e.contains(names), "{e}");
        }
    }

    #[test]
    fn the_dev_clock_needs_dev_mode() {
        let f = Flags {
            dev_clock_file: Some("/tmp/clock".into()),
            ..Default::default()
        };
        assert!(
            f.resolve()
                .unwrap_err()
                .to_string()
                .contains("refused without --dev-mode")
        );
        let f = Flags {
            dev_clock_file: Some("/tmp/clock".into()),
            dev_mode: Some(true),
            ..Default::default()
        };
        assert!(f.resolve().is_ok());
    }

    #[test]
    fn file_fills_what_flags_leave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "node_id = 2\npeers = \"1=a:1,2=b:2\"\nlisten_http = \"127.0.0.1:1234\"\n",
        )
        .unwrap();
        let f = Flags {
            config: Some(path.clone()),
            listen_http: Some("127.0.0.1:5555".parse().unwrap()),
            ..Default::default()
        };
        let s = f.resolve().unwrap();
        assert_eq!(s.node_id, 2);
        assert_eq!(s.advertise_peer, "b:2");
        assert_eq!(s.listen_http.port(), 5555);
        std::fs::write(&path, "nodeid = 2\n").unwrap();
        let f = Flags {
            config: Some(path),
            ..Default::default()
        };
        assert!(format!("{:#}", f.resolve().unwrap_err()).contains("unknown field"));
    }
}
