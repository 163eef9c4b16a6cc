//! Cluster benchmark: admin writes through Raft on real `gatewayd` processes on loopback.
//!
//! Run with `cargo bench --bench cluster` (cargo builds gatewayd in release for benches).
//! It prints, for a 3-node cluster and, as the baseline without replication, a 1-node cluster
//! started the same way in the same run:
//!
//! 1. the latency of sequential `CreateInstance` writes (HDR histogram), sent round-robin to
//!    every node, split into writes sent to the leader and writes sent to a follower (which
//!    forwards them to the leader);
//! 2. how that latency grows with the number of instances already stored (sequential writes
//!    to the leader, continued on the same cluster);
//! 3. writes per second with 16 and 64 concurrent writers for a fixed time, each level on a
//!    fresh cluster so that every level starts from the same (empty) state;
//! 4. (3 nodes only, fresh cluster) the time from SIGKILL of the leader to the first successful
//!    write through a surviving node, over several rounds; the killed node is restarted on its
//!    data and caught up between rounds.
//!
//! Section 4 starts with a steady write load with no fault and counts the term changes it saw
//! (spurious elections). `BENCH_ONLY=failover` runs section 4 alone.
//!
//! Every wait is bounded. Environment variables change the sizes and settings:
//! `BENCH_SEQ_WRITES` (600), `BENCH_GROWTH_TO` (3000 instances), `BENCH_CONC_SECS` (3),
//! `BENCH_CONCURRENCY` (16,64), `BENCH_FAILOVER_ROUNDS` (5), `BENCH_STEADY_SECS` (30), and the Raft timing passed to
//! every node, `BENCH_HEARTBEAT_MS` (100) and `BENCH_ELECTION_TIMEOUT_MS` (300), which are
//! gatewayd's defaults.

use hdrhistogram::Histogram;
use proto::admin::admin_client::AdminClient;
use proto::admin::{CreateInstanceRequest, DescribeClusterRequest};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::{Cluster, eventually};
use tonic::transport::{Channel, Endpoint};

#[path = "support/machine.rs"]
mod machine;
use machine::{cpu_model, loadavg};

/// gatewayd's default Raft heartbeat; passed explicitly to every node unless overridden.
const HEARTBEAT_MS: u64 = 100;
/// gatewayd's default election timeout: elections wait a random time in [E, 2E).
const ELECTION_MS: u64 = 300;
const WARMUP_WRITES_PER_NODE: usize = 10;
/// The growth phase reports the latency per bucket of this many stored instances.
const GROWTH_BUCKET: usize = 500;
/// The client timeout of one write attempt while the leader is down.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest a failover round may take before it counts as failed.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);
/// The client timeout of an ordinary write: longer than the node's own 5 s write timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Admin = AdminClient<Channel>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What to run, from the environment.
#[derive(Debug, Clone)]
struct Config {
    seq_writes: usize,
    growth_to: usize,
    conc_secs: u64,
    concurrency: Vec<usize>,
    rounds: usize,
    heartbeat_ms: u64,
    election_ms: u64,
}

impl Config {
    fn from_env() -> Config {
        let concurrency = std::env::var("BENCH_CONCURRENCY")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|w| w.trim().parse().ok())
                    .filter(|w| *w > 0)
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![16, 64]);
        Config {
            seq_writes: env_or("BENCH_SEQ_WRITES", 600) as usize,
            growth_to: env_or("BENCH_GROWTH_TO", 3000) as usize,
            conc_secs: env_or("BENCH_CONC_SECS", 3),
            concurrency,
            rounds: env_or("BENCH_FAILOVER_ROUNDS", 5) as usize,
            heartbeat_ms: env_or("BENCH_HEARTBEAT_MS", HEARTBEAT_MS),
            election_ms: env_or("BENCH_ELECTION_TIMEOUT_MS", ELECTION_MS),
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

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 us to 120 s, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The file system (type and device) that holds `dir`, from /proc/mounts.
fn filesystem_of(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "?".into())
}

fn request(name: String) -> CreateInstanceRequest {
    CreateInstanceRequest {
        name,
        spec: "api.s1.small".into(),
        region: "cn-hongkong".into(),
        ..Default::default()
    }
}

/// An admin client for node `id` on a connected channel.
async fn client(c: &Cluster, id: u64) -> Admin {
    let ch = Endpoint::from_shared(c.admin_endpoint(id))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(WRITE_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to node {id}: {e}"));
    AdminClient::new(ch)
}

/// One write, with the latency; `Err` carries the gRPC code.
async fn write(client: &mut Admin, name: String, timeout: Duration) -> Result<Duration, String> {
    let mut r = tonic::Request::new(request(name));
    // The server drops the call at this deadline too, not only the client.
    r.set_timeout(timeout);
    let t = Instant::now();
    match tokio::time::timeout(timeout, client.create_instance(r)).await {
        Ok(Ok(_)) => Ok(t.elapsed()),
        Ok(Err(status)) => Err(format!("{:?}", status.code())),
        Err(_) => Err("client timeout".into()),
    }
}

/// Starts `n` voters with the Raft timing given explicitly and waits for a leader.
async fn start(cfg: &Config, n: u64) -> (Cluster, u64) {
    let mut c = Cluster::new(testkit::binaries!(), n);
    c.extra_args = vec![
        "--heartbeat-ms".into(),
        cfg.heartbeat_ms.to_string(),
        "--election-timeout-ms".into(),
        cfg.election_ms.to_string(),
    ];
    for id in 1..=n {
        c.spawn(id);
    }
    let leader = c.wait_leader(SETTLE).await;
    (c, leader)
}

/// Sequential writes, round-robin over `clients`; one histogram per node written to.
async fn sequential(
    clients: &mut [(u64, Admin)],
    count: usize,
    prefix: &str,
    errors: &mut BTreeMap<String, usize>,
) -> BTreeMap<u64, Histogram<u64>> {
    let mut by_node: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let n = clients.len();
    for i in 0..count {
        let (id, cl) = &mut clients[i % n];
        match write(cl, format!("{prefix}-{i}"), WRITE_TIMEOUT).await {
            Ok(d) => record(by_node.entry(*id).or_insert_with(new_hist), d),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    by_node
}

struct Throughput {
    ok: u64,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
    hist: Histogram<u64>,
}

/// `writers` concurrent closed-loop writers for `dur`; writer `w` writes through
/// `targets[w % targets.len()]`.
async fn concurrent(targets: &[Admin], writers: usize, dur: Duration, prefix: &str) -> Throughput {
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut cl = targets[w % targets.len()].clone();
        let prefix = format!("{prefix}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut i = 0u64;
            while Instant::now() < end {
                match write(&mut cl, format!("{prefix}-{i}"), WRITE_TIMEOUT).await {
                    Ok(d) => record(&mut hist, d),
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
                i += 1;
            }
            (hist, errors)
        }));
    }
    let mut out = Throughput {
        ok: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        hist: new_hist(),
    };
    for t in tasks {
        let (h, e) = t.await.expect("writer task");
        out.hist.add(&h).expect("same histogram bounds");
        for (k, v) in e {
            *out.errors.entry(k).or_default() += v;
        }
    }
    out.elapsed = start.elapsed();
    out.ok = out.hist.len();
    out
}

fn latency_header(first: &str) {
    println!("| {first} | n | p50 ms | p90 ms | p99 ms | max ms | mean ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
}

fn latency_row(label: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        println!("| {label} | 0 | - | - | - | - | - |");
        return;
    }
    println!(
        "| {label} | {} | {} | {} | {} | {} | {:.2} |",
        h.len(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.mean() / 1000.0
    );
}

fn errors_text(e: &BTreeMap<String, usize>) -> String {
    if e.is_empty() {
        "0".to_string()
    } else {
        format!("{e:?}")
    }
}

/// The total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Connected admin clients for nodes 1..=n.
async fn clients(c: &Cluster, n: u64) -> Vec<(u64, Admin)> {
    let mut out = Vec::new();
    for id in 1..=n {
        out.push((id, client(c, id).await));
    }
    out
}

/// What the sequential phases measured on one cluster.
struct Sequential {
    leader: u64,
    /// "all", "leader" and "follower".
    seq: BTreeMap<&'static str, Histogram<u64>>,
    seq_errors: BTreeMap<String, usize>,
    /// Latency by the number of instances stored before the write, in GROWTH_BUCKET buckets.
    growth: BTreeMap<usize, Histogram<u64>>,
    growth_errors: BTreeMap<String, usize>,
    growth_secs: f64,
    stored: usize,
    leader_dir_bytes: u64,
}

/// On a fresh cluster of `n` nodes: warm-up, sequential writes round-robin over the nodes,
/// then sequential writes to the leader until `cfg.growth_to` instances are stored.
async fn sequential_phases(cfg: &Config, n: u64) -> Sequential {
    let (mut c, leader) = start(cfg, n).await;
    let mut clients = clients(&c, n).await;
    let mut seq_errors = BTreeMap::new();
    // Warm-up: connections, sled trees, first publication.
    let warm = WARMUP_WRITES_PER_NODE * n as usize;
    sequential(&mut clients, warm, "warm", &mut seq_errors).await;
    let mut stored = warm - seq_errors.values().sum::<usize>();
    seq_errors.clear();

    let by_node = sequential(&mut clients, cfg.seq_writes, "seq", &mut seq_errors).await;
    let after = c.wait_leader(SETTLE).await;
    if after != leader {
        println!(
            "WARNING: the leader changed from {leader} to {after} during the sequential writes"
        );
    }
    let mut seq = BTreeMap::new();
    let (mut all, mut to_leader, mut to_follower) = (new_hist(), new_hist(), new_hist());
    for (id, h) in &by_node {
        all.add(h).expect("same bounds");
        stored += h.len() as usize;
        if *id == leader {
            to_leader.add(h).expect("same bounds");
        } else {
            to_follower.add(h).expect("same bounds");
        }
    }
    seq.insert("all", all);
    seq.insert("leader", to_leader);
    seq.insert("follower", to_follower);

    // Growth: the same cluster, writes to the leader only.
    let mut growth: BTreeMap<usize, Histogram<u64>> = BTreeMap::new();
    let mut growth_errors: BTreeMap<String, usize> = BTreeMap::new();
    let leader_client = &mut clients
        .iter_mut()
        .find(|(id, _)| *id == leader)
        .expect("leader client")
        .1;
    let t = Instant::now();
    let mut i = 0usize;
    // Bounded: at most twice as many attempts as instances to add.
    let budget = 2 * cfg.growth_to.saturating_sub(stored);
    while stored < cfg.growth_to && i < budget {
        let bucket = stored / GROWTH_BUCKET * GROWTH_BUCKET;
        match write(leader_client, format!("grow-{i}"), WRITE_TIMEOUT).await {
            Ok(d) => {
                record(growth.entry(bucket).or_insert_with(new_hist), d);
                stored += 1;
            }
            Err(e) => *growth_errors.entry(e).or_default() += 1,
        }
        i += 1;
    }
    let growth_secs = t.elapsed().as_secs_f64();
    let leader_dir_bytes = dir_bytes(&c.nodes[&leader].dir);
    c.wait_leader(SETTLE).await;
    Sequential {
        leader,
        seq,
        seq_errors,
        growth,
        growth_errors,
        growth_secs,
        stored,
        leader_dir_bytes,
    }
}

/// On a fresh cluster of `n` nodes: warm-up, then `writers` concurrent writers for
/// `cfg.conc_secs`, to the leader or spread over every node.
async fn throughput_phase(cfg: &Config, n: u64, writers: usize, to_all: bool) -> Throughput {
    let (c, leader) = start(cfg, n).await;
    let mut clients = clients(&c, n).await;
    let mut warm_errors = BTreeMap::new();
    sequential(
        &mut clients,
        WARMUP_WRITES_PER_NODE * n as usize,
        "warm",
        &mut warm_errors,
    )
    .await;
    let targets: Vec<Admin> = clients
        .iter()
        .filter(|(id, _)| to_all || *id == leader)
        .map(|(_, c)| c.clone())
        .collect();
    let dur = Duration::from_secs(cfg.conc_secs);
    let t = concurrent(&targets, writers, dur, "conc").await;
    drop(c);
    t
}

struct Round {
    killed: u64,
    new_leader: Option<u64>,
    leader_known: Option<Duration>,
    first_write: Option<Duration>,
    via: Option<u64>,
    attempts: usize,
    errors: BTreeMap<String, usize>,
}

/// Kills the leader, then polls writes through the survivors (alternating) until one succeeds;
/// meanwhile watches the survivors' view of the leader.
async fn failover_round(c: &mut Cluster, round: usize, leader: u64) -> Round {
    let survivors: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    let mut clients = Vec::new();
    for id in &survivors {
        let mut cl = client(c, *id).await;
        // Make sure the path through this node works before the kill.
        write(&mut cl, format!("pre-{round}-{id}"), WRITE_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("write through node {id} before the kill: {e}"));
        clients.push((*id, cl));
    }
    let mut watchers = clients.clone();

    c.kill(leader);
    let killed_at = Instant::now();
    let deadline = killed_at + FAILOVER_BOUND;

    let writes = async {
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let (id, cl) = &mut clients[attempt % survivors.len()];
            let t = Instant::now();
            let r = write(cl, format!("fo-{round}-{attempt}"), ATTEMPT_TIMEOUT).await;
            attempt += 1;
            match r {
                Ok(_) => return (Some(killed_at.elapsed()), Some(*id), attempt, errors),
                Err(e) => {
                    *errors.entry(e).or_default() += 1;
                    // Do not spin on errors that come back at once.
                    if t.elapsed() < Duration::from_millis(5) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        (None, None, attempt, errors)
    };
    let watch = async {
        while Instant::now() < deadline {
            for (_, cl) in watchers.iter_mut() {
                let mut r = tonic::Request::new(DescribeClusterRequest {});
                r.set_timeout(Duration::from_millis(100));
                let s =
                    tokio::time::timeout(Duration::from_millis(100), cl.describe_cluster(r)).await;
                if let Ok(Ok(s)) = s {
                    let s = s.into_inner();
                    if let Some(l) = s.leader_id.filter(|l| *l != leader) {
                        return (Some(killed_at.elapsed()), Some(l));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (None, None)
    };
    let ((first_write, via, attempts, errors), (leader_known, new_leader)) =
        tokio::join!(writes, watch);
    Round {
        killed: leader,
        new_leader,
        leader_known,
        first_write,
        via,
        attempts,
        errors,
    }
}

/// Restarts `id` on its data and waits until it has applied what the leader has, and every
/// node agrees on the leader.
async fn rejoin(c: &mut Cluster, id: u64) -> u64 {
    let leader = c.wait_leader(SETTLE).await;
    let target = c
        .status(leader)
        .await
        .and_then(|s| s.applied_index)
        .expect("the leader reports its applied index");
    c.spawn(id);
    let this = &*c;
    eventually(
        &format!("node {id} to apply index {target}"),
        SETTLE,
        || async move {
            this.status(id)
                .await
                .and_then(|s| s.applied_index)
                .filter(|a| *a >= target)
        },
    )
    .await;
    c.wait_leader(SETTLE).await
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2
    })
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "FAILED".into())
}

async fn run() {
    let cfg = Config::from_env();
    let (hb, el) = (cfg.heartbeat_ms, cfg.election_ms);
    let defaults = if (hb, el) == (HEARTBEAT_MS, ELECTION_MS) {
        "gatewayd's defaults"
    } else {
        "NOT gatewayd's defaults"
    };
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);

    println!("# Cluster benchmark: admin writes through Raft");
    println!();
    println!(
        "- environment: nproc {nproc}, CPU {}, load average at start {}",
        cpu_model(),
        loadavg()
    );
    println!(
        "- Raft (openraft 0.9): --heartbeat-ms {hb} --election-timeout-ms {el} ({defaults}, passed explicitly): heartbeat {hb} ms, election timeout {el}-{} ms; every log append and vote is flushed to disk (sled) before it is acknowledged",
        2 * el
    );
    println!(
        "- nodes: real gatewayd processes (release build) on 127.0.0.1, each cluster fresh (empty data dirs); client: one tonic channel per node, tokio with 2 worker threads in this process"
    );
    println!(
        "- write: CreateInstance {{spec api.s1.small, region cn-hongkong}}, each with a new name; it returns once committed and applied on the node that answered"
    );
    println!(
        "- sizes: {} sequential writes after {WARMUP_WRITES_PER_NODE} warm-up writes per node, growth to {} instances, {} s per concurrency level {:?}, {} failover rounds",
        cfg.seq_writes, cfg.growth_to, cfg.conc_secs, cfg.concurrency, cfg.rounds
    );
    let tmp = std::env::temp_dir();
    println!(
        "- data dirs under {} ({})",
        tmp.display(),
        filesystem_of(&tmp)
    );

    if std::env::var("BENCH_ONLY").as_deref() != Ok("failover") {
        write_phases(&cfg).await;
    }
    failover_phase(&cfg).await;
}

/// Sections 1 to 3: sequential latency, latency against size, concurrent throughput.
async fn write_phases(cfg: &Config) {
    // 1 and 2: sequential writes, 1 node (baseline, no replication) then 3 nodes.
    let base = sequential_phases(cfg, 1).await;
    let three = sequential_phases(cfg, 3).await;
    println!("- load average after the sequential phases: {}", loadavg());

    println!();
    println!("## 1. Sequential writes, one at a time (latency)");
    println!();
    println!(
        "{} writes after the warm-up; 3-node cluster: leader node {}, writes round-robin to nodes 1, 2, 3.",
        cfg.seq_writes, three.leader
    );
    println!();
    latency_header("writes");
    latency_row("1 node (baseline, no replication)", &base.seq["all"]);
    latency_row("3 nodes, sent to the leader", &three.seq["leader"]);
    latency_row(
        "3 nodes, sent to a follower (forwarded)",
        &three.seq["follower"],
    );
    latency_row("3 nodes, all", &three.seq["all"]);
    for (label, e) in [("1 node", &base.seq_errors), ("3 nodes", &three.seq_errors)] {
        if !e.is_empty() {
            println!("\nerrors in sequential writes ({label}): {e:?}");
        }
    }
    let p50 = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1000.0;
    let (b50, l50, f50) = (
        p50(&base.seq["all"]),
        p50(&three.seq["leader"]),
        p50(&three.seq["follower"]),
    );
    println!();
    println!(
        "p50 cost of replication (3 nodes via the leader - 1 node): {:.2} ms; of forwarding (via a follower - via the leader): {:.2} ms",
        l50 - b50,
        f50 - l50
    );

    println!();
    println!("## 2. Latency against the number of instances stored");
    println!();
    println!(
        "Sequential writes to the leader, continuing on the same clusters up to {} instances; a bucket holds the writes made while the state held that many instances.",
        cfg.growth_to
    );
    println!();
    println!(
        "| instances stored | 1 node p50 ms | 1 node p99 ms | 3 nodes p50 ms | 3 nodes p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    let buckets: std::collections::BTreeSet<usize> = base
        .growth
        .keys()
        .chain(three.growth.keys())
        .copied()
        .collect();
    let cell = |h: Option<&Histogram<u64>>, q: f64| {
        h.map(|h| ms(h.value_at_quantile(q)))
            .unwrap_or_else(|| "-".into())
    };
    for b in buckets {
        let (x, y) = (base.growth.get(&b), three.growth.get(&b));
        println!(
            "| {b}-{} | {} | {} | {} | {} |",
            b + GROWTH_BUCKET - 1,
            cell(x, 0.5),
            cell(x, 0.99),
            cell(y, 0.5),
            cell(y, 0.99)
        );
    }
    for (label, s) in [("1 node", &base), ("3 nodes", &three)] {
        println!(
            "\n{label}: {} instances stored at the end; growth writes took {:.1} s; the leader's data dir holds {:.1} MB; errors {}",
            s.stored,
            s.growth_secs,
            s.leader_dir_bytes as f64 / 1e6,
            errors_text(&s.growth_errors)
        );
    }

    println!();
    println!(
        "## 3. Concurrent writers (throughput, {} s each, closed loop, each on a fresh cluster)",
        cfg.conc_secs
    );
    println!();
    println!(
        "| cluster | writers | sent to | ok writes | secs | writes/s | p50 ms | p99 ms | max ms | errors |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for &w in &cfg.concurrency {
        for (n, to_all) in [(1, false), (3, false), (3, true)] {
            let t = throughput_phase(cfg, n, w, to_all).await;
            let secs = t.elapsed.as_secs_f64();
            println!(
                "| {n} node{} | {w} | {} | {} | {secs:.2} | {:.0} | {} | {} | {} | {} |",
                if n == 1 { "" } else { "s" },
                if to_all { "all nodes" } else { "leader" },
                t.ok,
                t.ok as f64 / secs,
                ms(t.hist.value_at_quantile(0.50)),
                ms(t.hist.value_at_quantile(0.99)),
                ms(t.hist.max()),
                errors_text(&t.errors)
            );
        }
    }
    let rate = |h: &Histogram<u64>| 1e6 / h.mean();
    println!();
    println!(
        "for comparison, one sequential writer (section 1): 1 node {:.0} writes/s, 3 nodes via the leader {:.0} writes/s",
        rate(&base.seq["all"]),
        rate(&three.seq["leader"])
    );
    println!("- load average after the throughput phases: {}", loadavg());
}

/// Every node's Raft term, as it reports it.
async fn terms(c: &Cluster) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for id in 1..=3 {
        out.push(c.status(id).await.map(|s| s.term));
    }
    out
}

/// What the timing costs in stability: `BENCH_STEADY_SECS` (30) of concurrent writes to every
/// node with no fault, and the term changes it caused (each one an election nobody needed).
async fn steady_elections(c: &Cluster) {
    let secs = env_or("BENCH_STEADY_SECS", 30);
    let targets: Vec<Admin> = clients(c, 3).await.into_iter().map(|(_, a)| a).collect();
    let before = terms(c).await;
    let t = concurrent(&targets, 16, Duration::from_secs(secs), "steady").await;
    let after = terms(c).await;
    let changes: Vec<String> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) => (a - b).to_string(),
            _ => "?".into(),
        })
        .collect();
    println!();
    println!(
        "Steady load before the kills: 16 writers to all nodes for {secs} s, {:.0} writes/s, errors {}; term changes per node (spurious elections) {} (terms {before:?} -> {after:?}); load average {}",
        t.ok as f64 / t.elapsed.as_secs_f64().max(0.001),
        errors_text(&t.errors),
        changes.join("/"),
        loadavg()
    );
}

/// Section 4: a steady write load that counts spurious elections, then leader kills.
async fn failover_phase(cfg: &Config) {
    let (hb, el) = (cfg.heartbeat_ms, cfg.election_ms);
    let (mut c, mut leader) = start(cfg, 3).await;
    println!();
    println!("## 4. SIGKILL of the leader -> first successful write through a survivor");
    steady_elections(&c).await;
    println!();
    println!(
        "A fresh 3-node cluster. Writes alternate between the two survivors, each attempt with a {} ms timeout (client and grpc-timeout); the killed node is restarted on its data and caught up between rounds. 'leader known' is when a survivor first reports a new leader (polled every ~10 ms).",
        ATTEMPT_TIMEOUT.as_millis()
    );
    println!();
    println!(
        "Expected from the settings: in openraft 0.9 a follower that knows a leader starts an election only after the leader lease (= election timeout max, {} ms) plus its own random election timeout ({el}-{} ms, drawn once per process) have passed since it last heard from the leader: {}-{} ms after the last heartbeat, which is at most {hb} ms before the kill.",
        2 * el,
        2 * el,
        3 * el,
        4 * el
    );
    println!();
    println!(
        "| round | killed | new leader | leader known ms | first write ok ms | via node | attempts | failed attempts |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut firsts = Vec::new();
    let mut knowns = Vec::new();
    for round in 1..=cfg.rounds {
        let r = failover_round(&mut c, round, leader).await;
        println!(
            "| {round} | {} | {} | {} | {} | {} | {} | {} |",
            r.killed,
            r.new_leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            opt_ms(r.leader_known),
            opt_ms(r.first_write),
            r.via.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            r.attempts,
            errors_text(&r.errors)
        );
        firsts.extend(r.first_write);
        knowns.extend(r.leader_known);
        leader = rejoin(&mut c, r.killed).await;
    }
    println!();
    println!(
        "median over {} rounds: leader known {} ms, first write ok {} ms ({} of {} rounds succeeded within {} s)",
        cfg.rounds,
        opt_ms(median(knowns)),
        opt_ms(median(firsts.clone())),
        firsts.len(),
        cfg.rounds,
        FAILOVER_BOUND.as_secs()
    );
    println!();
    println!("- load average at the end: {}", loadavg());
}
