//! Scale benchmark: what an admin write costs, and how fast it reaches the data plane, as the
//! replicated state grows to production sizes; on real `gatewayd` processes on loopback.
//!
//! Run with `cargo bench --bench scale` (cargo builds gatewayd in release for benches), or
//! `BENCH_SCALE_QUICK=1 cargo bench --bench scale` for a smoke test with small sizes. Every row
//! runs on a fresh 3-node cluster started with `testkit` (127.0.0.1, leased ports, data in
//! a temp dir, every node killed when its cluster is dropped):
//!
//! 1. **Empty cluster**: the latency of one admin write, CreateApi then DeployApi (RELEASE),
//!    sent through a follower (which forwards to the leader), over `BENCH_SCALE_SAMPLES`
//!    samples; and deploy-to-routable: from the DeployApi reply until the new API answers
//!    something other than the gateway's 404 on every node's data-plane port (polled over a
//!    keep-alive connection per node). Also each node's RSS when empty.
//! 2. **10,000 APIs in 200 groups** (50 each, paths `/items/{id}/x<n>`), loaded with
//!    `BENCH_SCALE_INFLIGHT` concurrent writes spread over all nodes; then the same two figures
//!    as row 1, and their ratio to row 1.
//! 3. **100,000 APIs in 5,000 groups** (20 each): the same, plus each node's RSS above an empty
//!    node's per deployed API, and the time a SIGKILLed follower, restarted on its data, takes
//!    to serve the full configuration (the last-created API answers and `/readyz` is 200).
//! 4. **1,000 accounts over 365 daily cycles** (nodes on a development clock file): each account
//!    has a recharge and a pay-as-you-go dedicated instance, so every day bills every account.
//!    The clock advances `BENCH_SCALE_DAY_STEP` days at a time and each step waits until the
//!    leader has closed the days (the leader's job ticks every 50 ms in dev mode and closes at
//!    most 64 days a tick; no flag sets the tick). Reported: the year's duration, the admin
//!    write (the same probe write, and a Recharge) before and after it, the Raft data on disk,
//!    and how long a new learner (`Cluster::add_node`) takes to apply the leader's index and
//!    answer DescribeBills for the last day.
//!
//! The probe writes of every row go to one group of their own (`/probe`), so that the rows differ
//! only in what else the state holds. Each row also reports its elections (Raft terms won while
//! it ran): a write that waits for a new leader pays for one. The figures are printed as Markdown tables and written as
//! JSON to `target/bench-scale.json` (or `BENCH_SCALE_JSON`).
//!
//! Sizes and bounds (production defaults; quick-mode defaults in brackets):
//! `BENCH_SCALE_ROWS` (1,2,3,4; row 1 always runs, it is the baseline),
//! `BENCH_SCALE_SAMPLES` (200 [20]), `BENCH_SCALE_ROW2_APIS` (10000 [500]),
//! `BENCH_SCALE_ROW2_GROUPS` (200 [10]), `BENCH_SCALE_ROW3_APIS` (100000 [2000]),
//! `BENCH_SCALE_ROW3_GROUPS` (5000 [100]), `BENCH_SCALE_ACCOUNTS` (1000 [20]),
//! `BENCH_SCALE_DAYS` (365 [30]), `BENCH_SCALE_DAY_STEP` (1), `BENCH_SCALE_INFLIGHT` (48 [16]),
//! `BENCH_SCALE_LOAD_SECS` (3600 [300]: loading stops there and the row is measured at the size
//! reached), `BENCH_SCALE_YEAR_SECS` (3600 [300]: likewise for the days), and
//! `BENCH_SCALE_NODE_ARGS` (none: more gatewayd flags for every node, split at whitespace, e.g.
//! `--snapshot-every 1000` where the binary has it).
//!
//! Every wait polls against a deadline; every request loop is bounded in count and time.

use hdrhistogram::Histogram;
use proto::admin::admin_client::AdminClient;
use proto::admin::{
    ApiDefinition, ChargeType, CreateAccountRequest, CreateApiGroupRequest, CreateApiRequest,
    CreateInstanceRequest, DeployApiRequest, DescribeAccountsRequest, DescribeBillsRequest,
    DescribeClusterRequest, RechargeRequest,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::Cluster;
use testkit::http::Server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

#[path = "support/machine.rs"]
mod machine;
use machine::{cpu_model, loadavg};

type Admin = AdminClient<Channel>;

/// The client timeout of one admin call: longer than the node's own write timeout, so that the
/// node's answer (even a timeout) is what we see.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one write in the loading phases before it counts as failed.
const WRITE_ATTEMPTS: u32 = 3;
/// Unrecorded probe writes before each row's samples: connections, first publication.
const WARMUP_WRITES: usize = 5;
/// How long a cluster may take to elect a leader, or a node to apply what the leader has.
const SETTLE: Duration = Duration::from_secs(30);
/// The longest wait for the followers to apply a loading backlog.
const APPLIED_BOUND: Duration = Duration::from_secs(900);
/// A deployed API that is not routable on a node within this counts as a failure.
const ROUTABLE_BOUND: Duration = Duration::from_secs(10);
/// Between two polls of a node's data plane: short, so the figure is accurate to ~1 ms, but
/// not a busy loop that would take CPU from the nodes being measured (2 cores).
const ROUTE_POLL: Duration = Duration::from_millis(1);
/// Between two polls of an admin RPC or the ops port.
const STATUS_POLL: Duration = Duration::from_millis(5);
/// The longest a restarted follower or a new learner may take to catch up.
const CATCHUP_BOUND: Duration = Duration::from_secs(1800);
/// The longest one step of the dev clock may take to be billed.
const DAY_BOUND: Duration = Duration::from_secs(300);
/// How often a long loading phase says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Latency by state size while loading is reported in this many buckets.
const TREND_BUCKETS: usize = 10;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// 2026-01-01T00:00:00Z: the dev clock's day 0.
const JAN_1_MS: u64 = 1_767_225_600_000;
/// The bill delay passed to the nodes of row 4 (gatewayd's default), so the clock math holds
/// whatever the default becomes.
const BILL_DELAY_SECS: u64 = 3600;
/// Each account's recharge: covers a year of its api.s1.small (20.88 a day), so no account is
/// suspended and every day bills every account the same way.
const RECHARGE_USD: &str = "100000";

// ------------------------------------------------------------------------------------------
// Settings

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `apis` APIs spread evenly over `groups` groups.
#[derive(Debug, Clone, Copy)]
struct Layout {
    apis: usize,
    groups: usize,
}

impl Layout {
    fn per_group(&self) -> usize {
        self.apis.div_ceil(self.groups.max(1))
    }
}

/// What to run, from the environment.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    rows: BTreeSet<u8>,
    samples: usize,
    row2: Layout,
    row3: Layout,
    accounts: usize,
    days: u64,
    day_step: u64,
    inflight: usize,
    load_limit: Duration,
    year_limit: Duration,
    /// More flags for every node.
    node_args: Vec<String>,
}

impl Config {
    fn from_env() -> Config {
        let quick = env_or("BENCH_SCALE_QUICK", 0) != 0;
        // Production sizes, or small ones for a smoke test.
        let pick =
            |name: &str, prod: u64, small: u64| env_or(name, if quick { small } else { prod });
        let rows = std::env::var("BENCH_SCALE_ROWS")
            .ok()
            .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
            .unwrap_or_else(|| BTreeSet::from([1, 2, 3, 4]));
        Config {
            quick,
            rows,
            samples: pick("BENCH_SCALE_SAMPLES", 200, 20).max(1) as usize,
            row2: Layout {
                apis: pick("BENCH_SCALE_ROW2_APIS", 10_000, 500) as usize,
                groups: pick("BENCH_SCALE_ROW2_GROUPS", 200, 10).max(1) as usize,
            },
            row3: Layout {
                apis: pick("BENCH_SCALE_ROW3_APIS", 100_000, 2_000) as usize,
                groups: pick("BENCH_SCALE_ROW3_GROUPS", 5_000, 100).max(1) as usize,
            },
            accounts: pick("BENCH_SCALE_ACCOUNTS", 1_000, 20).max(1) as usize,
            days: pick("BENCH_SCALE_DAYS", 365, 30).max(1),
            day_step: env_or("BENCH_SCALE_DAY_STEP", 1).max(1),
            inflight: pick("BENCH_SCALE_INFLIGHT", 48, 16).max(1) as usize,
            load_limit: Duration::from_secs(pick("BENCH_SCALE_LOAD_SECS", 3600, 300)),
            year_limit: Duration::from_secs(pick("BENCH_SCALE_YEAR_SECS", 3600, 300)),
            node_args: std::env::var("BENCH_SCALE_NODE_ARGS")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

// ------------------------------------------------------------------------------------------
// Histograms and figures

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 us to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn q_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A histogram as JSON, in milliseconds.
fn hist_json(h: &Histogram<u64>) -> Value {
    json!({
        "n": h.len(),
        "p50_ms": q_ms(h, 0.5),
        "p90_ms": q_ms(h, 0.9),
        "p99_ms": q_ms(h, 0.99),
        "max_ms": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64()))
        .unwrap_or_else(|| "FAILED".into())
}

fn count_error(errors: &mut BTreeMap<String, usize>, e: String) {
    *errors.entry(e).or_default() += 1;
}

fn errors_text(e: &BTreeMap<String, usize>) -> String {
    if e.is_empty() {
        "none".into()
    } else {
        format!("{e:?}")
    }
}

// ------------------------------------------------------------------------------------------
// The machine

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit, and whether the work tree differs from it (the figures are then of that tree).
fn git_commit() -> String {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if dirty > 0 {
        format!("{commit} + {dirty} modified files")
    } else {
        commit
    }
}

/// A process's resident memory, from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_of_nodes(c: &Cluster) -> BTreeMap<u64, u64> {
    c.nodes
        .iter()
        .filter_map(|(id, n)| Some((*id, rss_kb(n.pid()?)?)))
        .collect()
}

/// Bytes under `dir`: (apparent size, allocated on disk).
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => (m.len(), m.blocks() * 512),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

/// Files or directories under `dir` whose name says they are a Raft snapshot.
fn snapshot_paths(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_lowercase();
        // sled's own page-table snapshots are `snap.<hex>`: not the state machine's.
        let sled_internal = name
            .strip_prefix("snap.")
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_hexdigit()));
        if name.contains("snap") && !sled_internal {
            found.push(path);
        } else if path.is_dir() {
            found.extend(snapshot_paths(&path));
        }
    }
    found
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

// ------------------------------------------------------------------------------------------
// Clusters and admin calls

/// Starts 3 voters and waits for a leader; returns it and a follower.
async fn start_cluster(cfg: &Config) -> (Cluster, u64, u64) {
    let mut c = Cluster::new(testkit::binaries!(), 3);
    c.extra_args = cfg.node_args.clone();
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.wait_leader(SETTLE).await;
    let follower = followers(&c, leader)[0];
    (c, leader, follower)
}

fn followers(c: &Cluster, leader: u64) -> Vec<u64> {
    c.nodes.keys().copied().filter(|id| *id != leader).collect()
}

/// An admin client for node `id`; the channel connects on first use (the node may be starting).
fn admin(c: &Cluster, id: u64) -> Admin {
    let ch = Endpoint::from_shared(c.admin_endpoint(id))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(WRITE_TIMEOUT)
        .connect_lazy();
    // A reply listing 100,000 APIs or a year of bills is larger than tonic's 4 MB default.
    AdminClient::new(ch).max_decoding_message_size(1 << 30)
}

fn admins(c: &Cluster) -> Vec<Admin> {
    c.nodes.keys().map(|id| admin(c, *id)).collect()
}

/// A request that the server also drops at the client's deadline.
fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(WRITE_TIMEOUT);
    r
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// Errors worth retrying: the write may not have been made (a retried create then finds it).
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable | DeadlineExceeded | Cancelled | Unknown | Aborted | ResourceExhausted
    )
}

/// Runs `call` up to [`WRITE_ATTEMPTS`] times while it fails with a retryable error.
async fn with_retries<Fut>(mut call: impl FnMut() -> Fut) -> Result<(), tonic::Status>
where
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(s) if retryable(&s) && attempt < WRITE_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            }
            // A create that was made by an attempt whose reply was lost.
            Err(s) if s.code() == tonic::Code::AlreadyExists && attempt > 1 => return Ok(()),
            other => return other,
        }
    }
}

async fn create_group(a: &Admin, name: String, base_path: String) -> Result<(), tonic::Status> {
    with_retries(|| {
        let mut a = a.clone();
        let r = req(CreateApiGroupRequest {
            name: name.clone(),
            base_path: Some(base_path.clone()),
            ..Default::default()
        });
        async move { a.create_api_group(r).await.map(|_| ()) }
    })
    .await
}

/// CreateApi (GET `path` on `backend`) then DeployApi to RELEASE: the admin write measured.
async fn create_and_deploy(
    a: &Admin,
    group: &str,
    name: &str,
    path: &str,
    backend: &str,
) -> Result<(), tonic::Status> {
    with_retries(|| {
        let mut a = a.clone();
        let r = req(CreateApiRequest {
            group: group.into(),
            name: name.into(),
            definition: Some(ApiDefinition {
                method: "GET".into(),
                path: path.into(),
                backend: backend.into(),
                ..Default::default()
            }),
        });
        async move { a.create_api(r).await.map(|_| ()) }
    })
    .await?;
    with_retries(|| {
        let mut a = a.clone();
        let r = req(DeployApiRequest {
            group: group.into(),
            name: name.into(),
            stage: "RELEASE".into(),
        });
        async move { a.deploy_api(r).await.map(|_| ()) }
    })
    .await
}

async fn applied_index(a: &Admin) -> Option<u64> {
    let mut a = a.clone();
    let mut r = tonic::Request::new(DescribeClusterRequest {});
    r.set_timeout(Duration::from_secs(2));
    let s = tokio::time::timeout(Duration::from_secs(2), a.describe_cluster(r))
        .await
        .ok()?
        .ok()?;
    s.into_inner().applied_index
}

/// Polls `check` every `every` until it returns true or `bound` has passed since `since`;
/// returns the time from `since` when it did.
async fn wait_for<Fut>(
    since: Instant,
    bound: Duration,
    every: Duration,
    mut check: impl FnMut() -> Fut,
) -> Option<Duration>
where
    Fut: Future<Output = bool>,
{
    let deadline = since + bound;
    // Bounded in count too, whatever the time each check takes.
    let max_checks = (bound.as_micros() / every.as_micros().max(1)) as usize + 1;
    for _ in 0..max_checks {
        if check().await {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// The Raft term as node `id` sees it.
async fn term(c: &Cluster, id: u64) -> Option<u64> {
    c.status(id).await.map(|s| s.term)
}

/// Waits until every running node has applied what the leader had applied when called.
async fn wait_applied_everywhere(c: &mut Cluster, bound: Duration) -> Option<Duration> {
    let leader = c.wait_leader(SETTLE).await;
    let target = applied_index(&admin(c, leader)).await?;
    let running: Vec<u64> = c
        .nodes
        .values_mut()
        .filter_map(|n| n.is_running().then_some(n.id))
        .collect();
    let running: Vec<Admin> = running.into_iter().map(|id| admin(c, id)).collect();
    wait_for(Instant::now(), bound, STATUS_POLL * 4, || {
        let running = running.clone();
        async move {
            for a in &running {
                if applied_index(a).await.is_none_or(|i| i < target) {
                    return false;
                }
            }
            true
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------
// The data plane, polled over keep-alive connections

/// A minimal HTTP/1.1 client on one keep-alive connection, reconnecting when it is closed:
/// polling every millisecond on fresh connections would exhaust loopback ports (TIME_WAIT).
struct HttpConn {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpConn {
    fn new(addr: String) -> HttpConn {
        HttpConn { addr, conn: None }
    }

    /// The status of `GET path`, or `None` if the node did not answer within 2 s.
    async fn status(&mut self, path: &str) -> Option<u16> {
        // Twice: a kept-alive connection may have been closed by the server meanwhile.
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(2), self.exchange(path)).await;
            match r {
                Ok(Ok(status)) => return Some(status),
                _ => self.conn = None,
            }
        }
        None
    }

    async fn exchange(&mut self, path: &str) -> std::io::Result<u16> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let head = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
        conn.get_mut().write_all(head.as_bytes()).await?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(bad());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Err(bad());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<u64>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
        if chunked {
            skip_chunked(conn).await?;
        } else if let Some(n) = length {
            let mut body = (&mut *conn).take(n);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        } else {
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(status)
    }
}

async fn skip_chunked(conn: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "chunk size"))?;
        let mut chunk = (&mut *conn).take(size + 2);
        tokio::io::copy(&mut chunk, &mut tokio::io::sink()).await?;
        if size == 0 {
            return Ok(());
        }
    }
}

/// Polls `path` on `conn` until the gateway answers anything but 404 (its answer for a path
/// no deployed API matches); the time from `since`.
async fn wait_routable(conn: &mut HttpConn, path: &str, since: Instant) -> Option<Duration> {
    let deadline = since + ROUTABLE_BOUND;
    let max_polls = (ROUTABLE_BOUND.as_micros() / ROUTE_POLL.as_micros()) as usize;
    for _ in 0..max_polls {
        if conn.status(path).await.is_some_and(|s| s != 404) {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(ROUTE_POLL).await;
    }
    None
}

// ------------------------------------------------------------------------------------------
// The probe: the admin write measured in every row

/// Probe APIs live in a group of their own, `probe` at `/probe`; API `p<i>` at `/p<i>/{id}`.
struct Probe {
    backend: String,
    next: usize,
}

impl Probe {
    async fn create(a: &Admin, backend: &Server) -> Probe {
        create_group(a, "probe".into(), "/probe".into())
            .await
            .expect("create the probe group");
        Probe {
            backend: format!("http://{}", backend.addr),
            next: 0,
        }
    }

    /// The request path that reaches probe API `i`.
    fn url_path(i: usize) -> String {
        format!("/probe/p{i}/1")
    }

    /// One probe write; returns its index.
    async fn write(&mut self, a: &Admin) -> (usize, Result<(), tonic::Status>) {
        let i = self.next;
        self.next += 1;
        let r = create_and_deploy(
            a,
            "probe",
            &format!("p{i}"),
            &format!("/p{i}/{{id}}"),
            &self.backend,
        )
        .await;
        (i, r)
    }
}

/// What the probe samples of one row measured.
struct Sampled {
    /// CreateApi + DeployApi, through a follower.
    write: Histogram<u64>,
    /// DeployApi reply -> routable, one value per sample and node.
    routable_each: Histogram<u64>,
    /// DeployApi reply -> routable on every node (the slowest node), one value per sample.
    routable_all: Histogram<u64>,
    not_routable: usize,
    errors: BTreeMap<String, usize>,
    /// The request path of the last probe API deployed.
    last_path: Option<String>,
}

impl Sampled {
    fn json(&self) -> Value {
        json!({
            "write": hist_json(&self.write),
            "routable_each_node": hist_json(&self.routable_each),
            "routable_all_nodes": hist_json(&self.routable_all),
            "not_routable": self.not_routable,
            "errors": self.errors,
        })
    }
}

/// `n` probe writes through `via`, one at a time; after each, waits until it is routable on
/// every node of `c` before the next.
async fn sample(c: &Cluster, via: u64, probe: &mut Probe, n: usize) -> Sampled {
    let a = admin(c, via);
    let mut conns: Vec<HttpConn> = c
        .nodes
        .keys()
        .map(|id| HttpConn::new(c.http_addr(*id)))
        .collect();
    let mut s = Sampled {
        write: new_hist(),
        routable_each: new_hist(),
        routable_all: new_hist(),
        not_routable: 0,
        errors: BTreeMap::new(),
        last_path: None,
    };
    for _ in 0..n {
        let t = Instant::now();
        let (i, r) = probe.write(&a).await;
        if let Err(e) = r {
            count_error(&mut s.errors, status_text(&e));
            continue;
        }
        let deployed = Instant::now();
        record(&mut s.write, deployed - t);
        let path = Probe::url_path(i);
        s.last_path = Some(path.clone());
        // Every node polled at once, each on its own connection.
        let mut tasks = tokio::task::JoinSet::new();
        for mut conn in conns.drain(..) {
            let path = path.clone();
            tasks.spawn(async move {
                let d = wait_routable(&mut conn, &path, deployed).await;
                (conn, d)
            });
        }
        let mut slowest = Some(Duration::ZERO);
        while let Some(done) = tasks.join_next().await {
            let (conn, d) = done.expect("poll task");
            conns.push(conn);
            match d {
                Some(d) => {
                    record(&mut s.routable_each, d);
                    slowest = slowest.map(|m| m.max(d));
                }
                None => {
                    s.not_routable += 1;
                    slowest = None;
                }
            }
        }
        if let Some(d) = slowest {
            record(&mut s.routable_all, d);
        }
    }
    s
}

/// Warm-up probe writes, then `n` measured ones.
async fn warm_and_sample(c: &Cluster, via: u64, probe: &mut Probe, n: usize) -> Sampled {
    sample(c, via, probe, WARMUP_WRITES).await;
    sample(c, via, probe, n).await
}

// ------------------------------------------------------------------------------------------
// Loading: many writes at once, spread over every node

/// What a pool of concurrent writers did.
struct Pool {
    done: usize,
    elapsed: Duration,
    /// Latency of each job by the share of the jobs before it ([`TREND_BUCKETS`] buckets).
    trend: Vec<Histogram<u64>>,
    errors: BTreeMap<String, usize>,
    /// Whether every job ran before the time limit.
    complete: bool,
}

impl Pool {
    fn json(&self) -> Value {
        json!({
            "done": self.done,
            "secs": self.elapsed.as_secs_f64(),
            "complete": self.complete,
            "errors": self.errors,
            "latency_by_progress": self.trend.iter().map(hist_json).collect::<Vec<_>>(),
        })
    }
}

/// Runs `job(client, i)` for i in 0..total with `inflight` jobs at once, job `i` through
/// `clients[i % len]`, starting no job after `limit`; says how far it got on stderr every
/// [`PROGRESS_EVERY`].
async fn run_pool<F, Fut>(
    label: &str,
    total: usize,
    inflight: usize,
    limit: Duration,
    clients: &[Admin],
    job: F,
) -> Pool
where
    F: Fn(Admin, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let deadline = start + limit;
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..inflight.min(total.max(1)) {
        let (next, job, clients) = (next.clone(), job.clone(), clients.to_vec());
        tasks.spawn(async move {
            let mut trend: Vec<Histogram<u64>> = (0..TREND_BUCKETS).map(|_| new_hist()).collect();
            let mut errors = BTreeMap::new();
            let mut done = 0;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match job(clients[i % clients.len()].clone(), i).await {
                    Ok(()) => {
                        record(&mut trend[i * TREND_BUCKETS / total], t.elapsed());
                        done += 1;
                    }
                    Err(e) => count_error(&mut errors, status_text(&e)),
                }
            }
            (trend, errors, done)
        });
    }
    let progress = {
        let (next, label) = (next.clone(), label.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + PROGRESS_EVERY,
                PROGRESS_EVERY,
            );
            loop {
                tick.tick().await;
                let started = next.load(Ordering::Relaxed).min(total);
                eprintln!(
                    "{label}: {started} of {total} started after {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut pool = Pool {
        done: 0,
        elapsed: Duration::ZERO,
        trend: (0..TREND_BUCKETS).map(|_| new_hist()).collect(),
        errors: BTreeMap::new(),
        complete: false,
    };
    while let Some(r) = tasks.join_next().await {
        let (trend, errors, done) = r.expect("writer task");
        for (all, h) in pool.trend.iter_mut().zip(&trend) {
            all.add(h).expect("same bounds");
        }
        for (k, v) in errors {
            *pool.errors.entry(k).or_default() += v;
        }
        pool.done += done;
    }
    progress.abort();
    pool.elapsed = start.elapsed();
    pool.complete = next.load(Ordering::Relaxed) >= total;
    pool
}

/// The groups and APIs of a layout: group `g<k>` at `/g<k>`, API `a<n>` at `/items/{id}/x<n>`.
async fn load_apis(c: &Cluster, layout: Layout, cfg: &Config, backend: &Server) -> (Pool, Pool) {
    let clients = admins(c);
    let groups = run_pool(
        "groups",
        layout.groups,
        cfg.inflight,
        cfg.load_limit,
        &clients,
        |a, g| async move { create_group(&a, format!("g{g}"), format!("/g{g}")).await },
    )
    .await;
    let backend = Arc::new(format!("http://{}", backend.addr));
    let per_group = layout.per_group();
    let limit = cfg.load_limit.saturating_sub(groups.elapsed);
    let apis = run_pool(
        "APIs",
        layout.apis,
        cfg.inflight,
        limit,
        &clients,
        move |a, n| {
            let backend = backend.clone();
            async move {
                let group = format!("g{}", n / per_group);
                let path = format!("/items/{{id}}/x{n}");
                create_and_deploy(&a, &group, &format!("a{n}"), &path, &backend).await
            }
        },
    )
    .await;
    (groups, apis)
}

// ------------------------------------------------------------------------------------------
// Rows 1 to 3: APIs

/// What one of rows 1-3 measured.
struct ApiRow {
    /// 1, 2 or 3.
    row: u8,
    layout: Option<Layout>,
    groups: Option<Pool>,
    apis: Option<Pool>,
    /// After loading, until every node had applied the leader's index.
    applied_after_load: Option<Duration>,
    sampled: Sampled,
    rss_kb: BTreeMap<u64, u64>,
    raft_bytes: BTreeMap<u64, (u64, u64)>,
    /// Raft terms won during loading and sampling: each is an election, which a write pays for.
    elections: Option<u64>,
    restart: Option<Restart>,
}

impl ApiRow {
    fn apis_stored(&self) -> usize {
        self.apis.as_ref().map_or(0, |p| p.done)
    }
}

/// A SIGKILLed follower restarted on its data.
struct Restart {
    node: u64,
    /// Until its `/readyz` is 200 and the last-created API answers on its data plane.
    serving: Option<Duration>,
    /// Until it has applied the leader's index at the time of the kill.
    applied: Option<Duration>,
}

/// Row 1 (no layout) or rows 2-3: a fresh cluster, loaded, then probed.
async fn api_row(cfg: &Config, row: u8, layout: Option<Layout>, restart: bool) -> ApiRow {
    let backend = Server::start("ok").await;
    let (mut c, leader, via) = start_cluster(cfg).await;
    let first_term = term(&c, leader).await;
    let mut probe = Probe::create(&admin(&c, via), &backend).await;
    let (mut groups, mut apis, mut applied_after_load) = (None, None, None);
    if let Some(layout) = layout {
        let (g, a) = load_apis(&c, layout, cfg, &backend).await;
        println!(
            "- row {row}: loaded {} of {} APIs ({} groups) in {:.1} s; load average {}",
            a.done,
            layout.apis,
            g.done,
            g.elapsed.as_secs_f64() + a.elapsed.as_secs_f64(),
            loadavg()
        );
        // The samples must not measure a backlog that followers are still applying.
        applied_after_load = wait_applied_everywhere(&mut c, APPLIED_BOUND).await;
        (groups, apis) = (Some(g), Some(a));
    }
    let sampled = warm_and_sample(&c, via, &mut probe, cfg.samples).await;
    let rss_kb = rss_of_nodes(&c);
    let raft_bytes = c
        .nodes
        .iter()
        .map(|(id, n)| (*id, dir_size(&n.dir.join("raft"))))
        .collect();
    let now_leader = c.wait_leader(SETTLE).await;
    let last_term = term(&c, now_leader).await;
    let elections = first_term.zip(last_term).map(|(a, b)| b.saturating_sub(a));
    let restart = match (&sampled.last_path, restart) {
        (Some(path), true) => {
            let other = followers(&c, leader).into_iter().find(|f| *f != via);
            Some(restart_follower(&mut c, other.unwrap_or(via), path).await)
        }
        _ => None,
    };
    ApiRow {
        row,
        layout,
        groups,
        apis,
        applied_after_load,
        sampled,
        rss_kb,
        raft_bytes,
        elections,
        restart,
    }
}

/// SIGKILLs follower `id`, restarts it on its data and times how long it takes to serve the
/// whole configuration again.
async fn restart_follower(c: &mut Cluster, id: u64, last_path: &str) -> Restart {
    let leader = c.wait_leader(SETTLE).await;
    let target = applied_index(&admin(c, leader)).await;
    c.kill(id);
    c.spawn(id);
    let started = Instant::now();
    // One keep-alive connection to each port, reopened while the node is down.
    let conns = Arc::new(tokio::sync::Mutex::new((
        HttpConn::new(c.ops_addr(id)),
        HttpConn::new(c.http_addr(id)),
    )));
    let serving = wait_for(started, CATCHUP_BOUND, STATUS_POLL * 4, || {
        let conns = conns.clone();
        async move {
            let (ops, http) = &mut *conns.lock().await;
            ops.status("/readyz").await == Some(200)
                && http.status(last_path).await.is_some_and(|s| s != 404)
        }
    })
    .await;
    let node = admin(c, id);
    let applied = match target {
        Some(target) => {
            wait_for(started, CATCHUP_BOUND, STATUS_POLL * 4, || {
                let node = node.clone();
                async move { applied_index(&node).await.is_some_and(|i| i >= target) }
            })
            .await
        }
        None => None,
    };
    Restart {
        node: id,
        serving,
        applied,
    }
}

// ------------------------------------------------------------------------------------------
// Row 4: accounts and a year of daily cycles

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (proleptic Gregorian, as billing prints it).
fn date_of_day(day: u64) -> String {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Account `acct<k>`: created, recharged, and given a pay-as-you-go api.s1.small `ded<k>`.
async fn create_account(a: Admin, k: usize) -> Result<(), tonic::Status> {
    let name = format!("acct{k}");
    with_retries(|| {
        let mut a = a.clone();
        let r = req(CreateAccountRequest {
            name: name.clone(),
            ..Default::default()
        });
        async move { a.create_account(r).await.map(|_| ()) }
    })
    .await?;
    // Not retried: a recharge is not idempotent, and one whose reply was lost would count twice.
    let mut a2 = a.clone();
    a2.recharge(req(RechargeRequest {
        account: name.clone(),
        amount: RECHARGE_USD.into(),
        ..Default::default()
    }))
    .await?;
    with_retries(|| {
        let mut a = a.clone();
        let r = req(CreateInstanceRequest {
            name: format!("ded{k}"),
            spec: "api.s1.small".into(),
            region: "cn-hangzhou".into(),
            charge_type: ChargeType::Postpaid as i32,
            account: name.clone(),
            auto_renew: false,
        });
        async move { a.create_instance(r).await.map(|_| ()) }
    })
    .await
}

/// `n` recharges of 0.01 through `a`, one at a time, over the accounts in turn.
async fn sample_recharges(a: &Admin, accounts: usize, n: usize) -> (Histogram<u64>, usize) {
    let (mut h, mut errors) = (new_hist(), 0);
    for i in 0..n {
        let mut a = a.clone();
        let t = Instant::now();
        let r = a
            .recharge(req(RechargeRequest {
                account: format!("acct{}", i % accounts),
                amount: "0.01".into(),
                ..Default::default()
            }))
            .await;
        match r {
            Ok(_) => record(&mut h, t.elapsed()),
            Err(_) => errors += 1,
        }
    }
    (h, errors)
}

async fn last_cycle(a: &Admin, account: &str) -> Option<String> {
    let mut a = a.clone();
    let r = a
        .describe_accounts(req(DescribeAccountsRequest {
            name: account.into(),
        }))
        .await
        .ok()?;
    r.into_inner().accounts.into_iter().next()?.last_cycle
}

/// Whether `account` has a bill for `day` (YYYY-MM-DD) on the node `a` talks to. One day per
/// call: whole-history reads are paged in the new design and not in the old one, and a
/// one-day read means the same in both.
// The request is gaining paging fields; `..Default::default()` keeps this building on both.
#[allow(clippy::needless_update)]
async fn has_bill(a: &Admin, account: &str, day: &str) -> bool {
    let mut a = a.clone();
    let r = a
        .describe_bills(req(DescribeBillsRequest {
            account: account.into(),
            day: Some(day.into()),
            ..Default::default()
        }))
        .await;
    r.is_ok_and(|r| !r.into_inner().bills.is_empty())
}

/// How many of the first `days` days have a bill for `account`, asking `a` one day at a time.
async fn bills_present(a: &Admin, account: &str, days: u64) -> u64 {
    let mut n = 0;
    for d in 0..days {
        if has_bill(a, account, &date_of_day(JAN_1_MS / DAY_MS + d)).await {
            n += 1;
        }
    }
    n
}

/// What row 4 measured.
struct BillingRow {
    setup: Pool,
    day0_probe: Sampled,
    day0_recharge: Histogram<u64>,
    days_closed: u64,
    year: Duration,
    /// From each clock step to the days being closed, in the order of the steps.
    steps: Vec<Duration>,
    after_probe: Sampled,
    after_recharge: Histogram<u64>,
    recharge_errors: usize,
    raft_bytes: BTreeMap<u64, (u64, u64)>,
    snapshots: Vec<(PathBuf, u64)>,
    rss_kb: BTreeMap<u64, u64>,
    /// The leader's applied index when the learner was started.
    learner_target: Option<u64>,
    /// From the learner's start until it had applied `learner_target`.
    learner_applied: Option<Duration>,
    /// Until the learner answered DescribeBills for the last day closed.
    learner_bills: Option<Duration>,
    /// Of the days closed, how many the learner then had a bill for.
    learner_bill_days: u64,
    /// Raft terms won from the start until the learner was added.
    elections: Option<u64>,
}

/// Advances the clock `cfg.day_step` days at a time until `cfg.days` days are closed or
/// `cfg.year_limit` has passed; returns the days closed and the duration of each step.
async fn run_year(
    clock: &testkit::DevClock,
    a: &Admin,
    cfg: &Config,
    probe_account: &str,
) -> (u64, Vec<Duration>) {
    let first_day = JAN_1_MS / DAY_MS;
    let start = Instant::now();
    let (mut closed, mut steps) = (0u64, Vec::new());
    while closed < cfg.days && start.elapsed() < cfg.year_limit {
        let upto = (closed + cfg.day_step).min(cfg.days);
        // The step's last day is due once it has ended and the bill delay has passed.
        clock.set(JAN_1_MS + upto * DAY_MS + BILL_DELAY_SECS * 1000 + 1000);
        let want = date_of_day(first_day + upto - 1);
        let t = Instant::now();
        let bound = DAY_BOUND.min(cfg.year_limit.saturating_sub(start.elapsed()) + STATUS_POLL);
        let done = wait_for(t, bound, STATUS_POLL, || {
            let want = want.clone();
            async move { last_cycle(a, probe_account).await.as_deref() == Some(want.as_str()) }
        })
        .await;
        let Some(d) = done else {
            println!("- row 4: day {want} was not closed within {bound:?}; stopping the year");
            break;
        };
        steps.push(d);
        closed = upto;
        if closed % 30 == 0 {
            eprintln!(
                "year: {closed} days closed after {:.0} s, the last in {:.0} ms",
                start.elapsed().as_secs_f64(),
                d.as_secs_f64() * 1000.0
            );
        }
    }
    (closed, steps)
}

async fn billing_row(cfg: &Config) -> BillingRow {
    let backend = Server::start("ok").await;
    let mut c = Cluster::new(testkit::binaries!(), 3);
    let clock = testkit::DevClock(c.dir().join("clock"));
    // 01:00 on day 0: the first write starts the first daily cycle on day 0.
    clock.set(JAN_1_MS + HOUR_MS);
    c.extra_args = clock.node_args();
    c.extra_args
        .extend(["--bill-delay-seconds".into(), BILL_DELAY_SECS.to_string()]);
    c.extra_args.extend(cfg.node_args.iter().cloned());
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.wait_leader(SETTLE).await;
    let first_term = term(&c, leader).await;
    let via = followers(&c, leader)[0];
    let a = admin(&c, via);
    let clients = admins(&c);
    let setup = run_pool(
        "accounts",
        cfg.accounts,
        cfg.inflight,
        cfg.load_limit,
        &clients,
        create_account,
    )
    .await;
    println!(
        "- row 4: {} of {} accounts set up in {:.1} s",
        setup.done,
        cfg.accounts,
        setup.elapsed.as_secs_f64()
    );
    // The probe group belongs to the default account, whose calls (the routability polls) and
    // their outbound bytes are billed too: unfunded, it is suspended by its first bill and its
    // groups purged six months later, and the probe writes after the year would find no group.
    a.clone()
        .recharge(req(RechargeRequest {
            account: "default".into(),
            amount: RECHARGE_USD.into(),
            ..Default::default()
        }))
        .await
        .expect("recharge the default account");
    wait_applied_everywhere(&mut c, APPLIED_BOUND).await;
    let mut probe = Probe::create(&a, &backend).await;
    let day0_probe = warm_and_sample(&c, via, &mut probe, cfg.samples).await;
    let (day0_recharge, e0) = sample_recharges(&a, cfg.accounts, cfg.samples).await;

    // The last account is created last: when its cycle is closed, every account's is.
    let probe_account = format!("acct{}", cfg.accounts - 1);
    let t = Instant::now();
    let (days_closed, steps) = run_year(&clock, &a, cfg, &probe_account).await;
    let year = t.elapsed();
    println!(
        "- row 4: {days_closed} days closed in {:.1} s; load average {}",
        year.as_secs_f64(),
        loadavg()
    );
    wait_applied_everywhere(&mut c, APPLIED_BOUND).await;
    let after_probe = warm_and_sample(&c, via, &mut probe, cfg.samples).await;
    let (after_recharge, e1) = sample_recharges(&a, cfg.accounts, cfg.samples).await;
    let raft_bytes = c
        .nodes
        .iter()
        .map(|(id, n)| (*id, dir_size(&n.dir.join("raft"))))
        .collect();
    let snapshots = snapshot_paths(&c.nodes[&leader].dir)
        .into_iter()
        .map(|p| {
            let size = if p.is_dir() {
                dir_size(&p).0
            } else {
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            };
            (p, size)
        })
        .collect();
    let rss_kb = rss_of_nodes(&c);
    let now_leader = c.wait_leader(SETTLE).await;
    let last_term = term(&c, now_leader).await;
    let elections = first_term.zip(last_term).map(|(a, b)| b.saturating_sub(a));

    // A new learner: joins by itself (its id is not among the voters) and catches up.
    let leader = c.wait_leader(SETTLE).await;
    let learner_target = applied_index(&admin(&c, leader)).await;
    c.add_node(4);
    let joined = Instant::now();
    let learner = admin(&c, 4);
    let learner_applied = match learner_target {
        Some(target) => {
            wait_for(joined, CATCHUP_BOUND, STATUS_POLL * 4, || {
                let l = learner.clone();
                async move { applied_index(&l).await.is_some_and(|i| i >= target) }
            })
            .await
        }
        None => None,
    };
    // Days close in order: the last day's bill on the learner means it has the year.
    let last_day = date_of_day(JAN_1_MS / DAY_MS + days_closed.max(1) - 1);
    let learner_bills = wait_for(joined, CATCHUP_BOUND, STATUS_POLL * 4, || {
        let (l, account, day) = (learner.clone(), probe_account.clone(), last_day.clone());
        async move { has_bill(&l, &account, &day).await }
    })
    .await;
    // And a check, not timed, that every day's bill is there.
    let learner_bill_days = bills_present(&learner, &probe_account, days_closed).await;
    BillingRow {
        setup,
        day0_probe,
        day0_recharge,
        days_closed,
        year,
        steps,
        after_probe,
        after_recharge,
        recharge_errors: e0 + e1,
        raft_bytes,
        snapshots,
        rss_kb,
        learner_applied,
        learner_bills,
        learner_bill_days,
        learner_target,
        elections,
    }
}

// ------------------------------------------------------------------------------------------
// Reports

fn print_api_summary(rows: &[ApiRow]) {
    let base = &rows[0].sampled;
    let (b_write, b_route) = (q_ms(&base.write, 0.5), q_ms(&base.routable_all, 0.99));
    println!(
        "| row | APIs stored | load s | write p50 ms | write p99 ms | x empty (p50) | routable p50 ms (each node) | routable p99 ms (each node) | routable p99 ms (all nodes) | x empty (p99 all) | not routable | errors | elections |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in rows {
        let s = &r.sampled;
        let load = match (&r.groups, &r.apis) {
            (Some(g), Some(a)) => format!("{:.1}", (g.elapsed + a.elapsed).as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {load} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            if r.row == 1 {
                "1 (empty)".to_string()
            } else {
                r.row.to_string()
            },
            r.apis_stored(),
            cell(q_ms(&s.write, 0.5)),
            cell(q_ms(&s.write, 0.99)),
            cell(ratio(q_ms(&s.write, 0.5), b_write)),
            cell(q_ms(&s.routable_each, 0.5)),
            cell(q_ms(&s.routable_each, 0.99)),
            cell(q_ms(&s.routable_all, 0.99)),
            cell(ratio(q_ms(&s.routable_all, 0.99), b_route)),
            s.not_routable,
            errors_text(&s.errors),
            r.elections.map_or("?".into(), |e| e.to_string())
        );
    }
}

fn print_targets(rows: &[ApiRow]) {
    let base = q_ms(&rows[0].sampled.write, 0.5);
    for r in &rows[1..] {
        let max_ratio = if r.row == 2 { 2.0 } else { 3.0 };
        let x = ratio(q_ms(&r.sampled.write, 0.5), base);
        let p99 = q_ms(&r.sampled.routable_all, 0.99);
        let full = r.layout.is_some_and(|l| r.apis_stored() >= l.apis);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "- row {}: write p50 {} x empty (target <= {max_ratio}x: {}); deploy-to-routable p99 on every node {} ms (target < 100 ms: {}){}",
            r.row,
            cell(x),
            verdict(x.is_some_and(|x| x <= max_ratio)),
            cell(p99),
            verdict(p99.is_some_and(|p| p < 100.0)),
            if full {
                ""
            } else {
                " -- PARTIAL load, see below"
            }
        );
    }
}

fn print_load(r: &ApiRow) {
    let (Some(layout), Some(g), Some(a)) = (r.layout, &r.groups, &r.apis) else {
        return;
    };
    println!();
    println!(
        "Row {}: {} APIs in {} groups ({} per group), loaded with concurrent writes spread over the 3 nodes.",
        r.row,
        layout.apis,
        layout.groups,
        layout.per_group()
    );
    println!();
    println!(
        "- groups: {} created in {:.1} s, errors {}",
        g.done,
        g.elapsed.as_secs_f64(),
        errors_text(&g.errors)
    );
    println!(
        "- APIs: {} of {} created and deployed in {:.1} s ({:.0} APIs/s){}, errors {}",
        a.done,
        layout.apis,
        a.elapsed.as_secs_f64(),
        a.done as f64 / a.elapsed.as_secs_f64().max(1e-9),
        if a.complete {
            String::new()
        } else {
            " -- STOPPED at the time limit".to_string()
        },
        errors_text(&a.errors)
    );
    println!(
        "- after loading, every node had applied the leader's index after {} s",
        secs(r.applied_after_load)
    );
    println!(
        "- RSS per node (MB): {}; raft dir per node (MB apparent/allocated): {}",
        r.rss_kb
            .iter()
            .map(|(id, kb)| format!("{id}: {:.0}", *kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
        r.raft_bytes
            .iter()
            .map(|(id, (ap, al))| format!("{id}: {}/{}", mb(*ap), mb(*al)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("| APIs stored before the write | create+deploy p50 ms | p99 ms | max ms | n |");
    println!("|---|---:|---:|---:|---:|");
    for (b, h) in a.trend.iter().enumerate() {
        let (lo, hi) = (
            b * layout.apis / TREND_BUCKETS,
            (b + 1) * layout.apis / TREND_BUCKETS,
        );
        println!(
            "| {lo}-{hi} | {} | {} | {} | {} |",
            cell(q_ms(h, 0.5)),
            cell(q_ms(h, 0.99)),
            cell((!h.is_empty()).then(|| h.max() as f64 / 1000.0)),
            h.len()
        );
    }
}

fn print_rss(empty: &ApiRow, r: &ApiRow) {
    let stored = r.apis_stored().max(1) as f64;
    let empty_avg = empty.rss_kb.values().sum::<u64>() as f64 / empty.rss_kb.len().max(1) as f64;
    println!();
    println!(
        "RSS above an empty node (row 1, average {:.0} MB) per deployed API (goal <= 3 KB):",
        empty_avg / 1024.0
    );
    println!();
    println!("| node | RSS MB | above empty MB | KB per API |");
    println!("|---:|---:|---:|---:|");
    for (id, kb) in &r.rss_kb {
        let above = *kb as f64 - empty_avg;
        println!(
            "| {id} | {:.0} | {:.0} | {:.2} |",
            *kb as f64 / 1024.0,
            above / 1024.0,
            above / stored
        );
    }
}

fn rss_json(empty: &ApiRow, r: &ApiRow) -> Value {
    let stored = r.apis_stored().max(1) as f64;
    let empty_avg = empty.rss_kb.values().sum::<u64>() as f64 / empty.rss_kb.len().max(1) as f64;
    json!(
        r.rss_kb
            .iter()
            .map(|(id, kb)| (
                id.to_string(),
                json!({ "rss_kb": kb, "kb_per_api_above_empty": (*kb as f64 - empty_avg) / stored })
            ))
            .collect::<serde_json::Map<_, _>>()
    )
}

fn api_row_json(r: &ApiRow, empty: &ApiRow) -> Value {
    json!({
        "apis_target": r.layout.map(|l| l.apis),
        "groups_target": r.layout.map(|l| l.groups),
        "apis_stored": r.apis_stored(),
        "load_groups": r.groups.as_ref().map(Pool::json),
        "load_apis": r.apis.as_ref().map(Pool::json),
        "applied_everywhere_after_load_secs": r.applied_after_load.map(|d| d.as_secs_f64()),
        "probe": r.sampled.json(),
        "write_p50_ratio_to_empty": ratio(q_ms(&r.sampled.write, 0.5), q_ms(&empty.sampled.write, 0.5)),
        "rss": rss_json(empty, r),
        "elections": r.elections,
        "raft_dir_bytes": r.raft_bytes.iter().map(|(id, (ap, al))| (id.to_string(), json!({"apparent": ap, "allocated": al}))).collect::<serde_json::Map<_, _>>(),
        "restart": r.restart.as_ref().map(|x| json!({
            "node": x.node,
            "serving_secs": x.serving.map(|d| d.as_secs_f64()),
            "applied_secs": x.applied.map(|d| d.as_secs_f64()),
        })),
    })
}

fn steps_hist(steps: &[Duration]) -> Histogram<u64> {
    let mut h = new_hist();
    for d in steps {
        record(&mut h, *d);
    }
    h
}

fn print_billing(b: &BillingRow, cfg: &Config) {
    println!();
    println!(
        "A fresh 3-node cluster on a development clock. {} accounts, each with a recharge of {RECHARGE_USD} and a pay-as-you-go api.s1.small (cn-hangzhou), set up in {:.1} s ({} done, errors {}). The clock moves {} day(s) at a time; each step waits until the last account's last_cycle is the last day of the step (polled every {} ms through a follower).",
        cfg.accounts,
        b.setup.elapsed.as_secs_f64(),
        b.setup.done,
        errors_text(&b.setup.errors),
        cfg.day_step,
        STATUS_POLL.as_millis()
    );
    println!();
    let h = steps_hist(&b.steps);
    let n = b.steps.len();
    let first = steps_hist(&b.steps[..n.min(30)]);
    let last = steps_hist(&b.steps[n.saturating_sub(30)..]);
    println!(
        "- the year: {} of {} days closed in {:.1} s; per step p50 {} ms, p99 {} ms, max {} ms; median of the first 30 steps {} ms, of the last 30 {} ms",
        b.days_closed,
        cfg.days,
        b.year.as_secs_f64(),
        cell(q_ms(&h, 0.5)),
        cell(q_ms(&h, 0.99)),
        cell((!h.is_empty()).then(|| h.max() as f64 / 1000.0)),
        cell(q_ms(&first, 0.5)),
        cell(q_ms(&last, 0.5))
    );
    println!();
    println!(
        "| admin write through a follower | day 0 p50 ms | day 0 p99 ms | after the year p50 ms | after p99 ms | ratio p50 (target <= 2x) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, d0, d1) in [
        (
            "CreateApi + DeployApi",
            &b.day0_probe.write,
            &b.after_probe.write,
        ),
        ("Recharge 0.01", &b.day0_recharge, &b.after_recharge),
        (
            "deploy -> routable on all nodes",
            &b.day0_probe.routable_all,
            &b.after_probe.routable_all,
        ),
    ] {
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            cell(q_ms(d0, 0.5)),
            cell(q_ms(d0, 0.99)),
            cell(q_ms(d1, 0.5)),
            cell(q_ms(d1, 0.99)),
            cell(ratio(q_ms(d1, 0.5), q_ms(d0, 0.5)))
        );
    }
    println!(
        "\n- elections during the row (before the learner): {}",
        b.elections.map_or("?".into(), |e| e.to_string())
    );
    for (when, sampled) in [("day 0", &b.day0_probe), ("after the year", &b.after_probe)] {
        if !sampled.errors.is_empty() || sampled.not_routable > 0 {
            println!(
                "- probe writes {when}: errors {}, not routable {}",
                errors_text(&sampled.errors),
                sampled.not_routable
            );
        }
    }
    if b.recharge_errors > 0 {
        println!("\n- failed recharges: {}", b.recharge_errors);
    }
    println!();
    println!(
        "- raft dir per node (MB apparent/allocated): {}",
        b.raft_bytes
            .iter()
            .map(|(id, (ap, al))| format!("{id}: {}/{}", mb(*ap), mb(*al)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if b.snapshots.is_empty() {
        println!(
            "- snapshot: no file or directory named like a snapshot in the leader's data dir (it lives inside the store)"
        );
    } else {
        for (p, size) in &b.snapshots {
            println!("- snapshot: {} ({} MB)", p.display(), mb(*size));
        }
    }
    println!(
        "- RSS per node (MB): {}",
        b.rss_kb
            .iter()
            .map(|(id, kb)| format!("{id}: {:.0}", *kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "- a new learner (node 4) from start: applied the leader's index {} after {} s; answered DescribeBills for the last day closed after {} s; then had the bills of {} of the {} days",
        b.learner_target
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        secs(b.learner_applied),
        secs(b.learner_bills),
        b.learner_bill_days,
        b.days_closed
    );
}

fn billing_json(b: &BillingRow) -> Value {
    json!({
        "setup": b.setup.json(),
        "days_closed": b.days_closed,
        "year_secs": b.year.as_secs_f64(),
        "step": hist_json(&steps_hist(&b.steps)),
        "step_ms": b.steps.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        "day0_probe": b.day0_probe.json(),
        "after_probe": b.after_probe.json(),
        "day0_recharge": hist_json(&b.day0_recharge),
        "after_recharge": hist_json(&b.after_recharge),
        "probe_write_p50_ratio": ratio(q_ms(&b.after_probe.write, 0.5), q_ms(&b.day0_probe.write, 0.5)),
        "recharge_p50_ratio": ratio(q_ms(&b.after_recharge, 0.5), q_ms(&b.day0_recharge, 0.5)),
        "raft_dir_bytes": b.raft_bytes.iter().map(|(id, (ap, al))| (id.to_string(), json!({"apparent": ap, "allocated": al}))).collect::<serde_json::Map<_, _>>(),
        "snapshots": b.snapshots.iter().map(|(p, s)| json!({"path": p.display().to_string(), "bytes": s})).collect::<Vec<_>>(),
        "rss_kb": b.rss_kb.iter().map(|(id, kb)| (id.to_string(), json!(kb))).collect::<serde_json::Map<_, _>>(),
        "learner_target_index": b.learner_target,
        "learner_applied_secs": b.learner_applied.map(|d| d.as_secs_f64()),
        "learner_bills_secs": b.learner_bills.map(|d| d.as_secs_f64()),
        "learner_bill_days": b.learner_bill_days,
        "elections": b.elections,
    })
}

fn json_path() -> PathBuf {
    if let Ok(p) = std::env::var("BENCH_SCALE_JSON") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-scale.json")
}

async fn run() {
    let cfg = Config::from_env();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = git_commit();
    println!("# Scale benchmark: admin writes and deploy-to-routable against state size");
    println!();
    println!(
        "- machine: nproc {nproc}, CPU {}, load average at start {}",
        cpu_model(),
        loadavg()
    );
    println!("- code: {commit}");
    println!(
        "- mode: {}; rows {:?}; {} samples per row (after {WARMUP_WRITES} warm-up writes); {} writes in flight while loading; load bound {} s, year bound {} s",
        if cfg.quick {
            "QUICK (small sizes)"
        } else {
            "production sizes"
        },
        cfg.rows,
        cfg.samples,
        cfg.inflight,
        cfg.load_limit.as_secs(),
        cfg.year_limit.as_secs()
    );
    if !cfg.node_args.is_empty() {
        println!("- more flags for every node: {}", cfg.node_args.join(" "));
    }
    println!(
        "- nodes: 3 real gatewayd processes (release) on 127.0.0.1, a fresh cluster per row; client: tonic, 2 tokio worker threads in this process; backend: an HTTP server in this process answering 200"
    );
    println!(
        "- write = CreateApi then DeployApi (RELEASE) of a new API in the `probe` group, through a follower; routable = the gateway answers the API's path with anything but 404 (polled every {} ms on a keep-alive connection per node, from the DeployApi reply)",
        ROUTE_POLL.as_millis()
    );
    let mut out = json!({
        "commit": commit,
        "nproc": nproc,
        "cpu": cpu_model(),
        "loadavg_start": loadavg(),
        "quick": cfg.quick,
        "samples": cfg.samples,
        "inflight": cfg.inflight,
        "node_args": cfg.node_args,
    });

    let mut rows = vec![api_row(&cfg, 1, None, false).await];
    if cfg.rows.contains(&2) {
        rows.push(api_row(&cfg, 2, Some(cfg.row2), false).await);
    }
    if cfg.rows.contains(&3) {
        rows.push(api_row(&cfg, 3, Some(cfg.row3), true).await);
    }
    println!();
    println!("## Rows 1-3: one admin write and its deploy-to-routable, against the APIs stored");
    println!();
    print_api_summary(&rows);
    println!();
    print_targets(&rows);
    for r in &rows[1..] {
        print_load(r);
    }
    if let Some(r3) = rows.iter().find(|r| r.row == 3) {
        print_rss(&rows[0], r3);
        if let Some(x) = &r3.restart {
            println!();
            println!(
                "Restart: follower {} SIGKILLed and restarted on its data: /readyz 200 and the last-created API routable after {} s; applied the leader's index after {} s.",
                x.node,
                secs(x.serving),
                secs(x.applied)
            );
        }
    }
    for r in &rows {
        out[format!("row{}", r.row)] = api_row_json(r, &rows[0]);
    }

    if cfg.rows.contains(&4) {
        println!();
        println!(
            "## Row 4: {} accounts over {} daily cycles",
            cfg.accounts, cfg.days
        );
        let b = billing_row(&cfg).await;
        print_billing(&b, &cfg);
        out["row4"] = billing_json(&b);
    }
    println!();
    println!("- load average at the end: {}", loadavg());
    out["loadavg_end"] = json!(loadavg());
    let path = json_path();
    match std::fs::write(&path, serde_json::to_vec_pretty(&out).expect("json")) {
        Ok(()) => println!("- figures written to {}", path.display()),
        Err(e) => println!("- could not write {}: {e}", path.display()),
    }
}
