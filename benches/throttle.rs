//! Throttling-policy accuracy on 3 real `gatewayd` processes on loopback (issue 17).
//!
//! Run with `cargo bench --bench throttle` (release nodes; `--profile dev` runs the debug
//! build). Three policies, each bound to its own API:
//!
//! - **second**: a per-second API limit (unsigned calls), enforced by the demand-following
//!   shares (`crates/decide/src/shares.rs`);
//! - **minute**: a per-minute app limit (signed calls of one app), enforced by leases of the
//!   window's budget (`crates/decide/src/budget.rs`);
//! - **hour**: a per-hour user limit (signed calls), on the development clock running
//!   `BENCH_HOUR_SPEED` (120) times faster than real time, so an hour lasts 30 s.
//!
//! Each is offered 2x its limit, skewed 80/10/10 over nodes 1/2/3, open loop, for several
//! windows; then again with one node SIGKILLed at 40% of a window and restarted later (its
//! traffic goes to the next live node, as a load balancer's would). Printed: the calls admitted
//! in every window (by the development clock at the response) against the limit. Target:
//! within 2% of the limit in every window.
//!
//! Every window starts on the development clock, which the bench drives: each phase jumps it
//! forward to 3 s (real) before a window's start, so that demand is known and leases are
//! granted when the first measured window opens. Every loop is bounded in time.
//!
//! Knobs: `BENCH_SECOND_LIMIT` (200/s), `BENCH_MINUTE_LIMIT` (6000/min),
//! `BENCH_HOUR_LIMIT` (3000/h), `BENCH_WINDOWS` (second 8, minute 2, hour 3; comma list),
//! `BENCH_KILL_NODE` (1: the 80% node, which coordinates the leases), `BENCH_RESTART`
//! (`next`: restart at 40% of the next window; `same`: 2 s after the kill, in the same window),
//! `BENCH_ONLY` (second, minute or hour).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Cluster, DevClock};

#[path = "support/machine.rs"]
mod machine;
use machine::{cpu_model, loadavg};

/// Skew of the offered load over nodes 1, 2, 3.
const SKEW: [f64; 3] = [0.8, 0.1, 0.1];
/// Real time between a phase's start and its first measured window.
const LEAD: Duration = Duration::from_secs(3);
/// Where the kill (and a restart in the next window) falls in its window.
const KILL_AT: f64 = 0.4;
/// Keep-alive connections the generator opens per node.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The development clock as the bench drives it: `dev = anchor_dev + speed * (real - anchor)`,
/// written to the clock file every 5 ms by a thread.
struct Clock {
    file: DevClock,
    state: Mutex<(Instant, u64, f64)>,
    stop: AtomicBool,
}

impl Clock {
    fn now(&self) -> u64 {
        let (at, dev, speed) = *self.state.lock().unwrap();
        dev + (at.elapsed().as_secs_f64() * 1000.0 * speed) as u64
    }

    /// Jumps forward to `dev_ms` (never back) and runs at `speed` from there.
    fn set(&self, dev_ms: u64, speed: f64) {
        let now = self.now();
        // The writer thread puts it in the file within 5 ms (it alone writes the file).
        *self.state.lock().unwrap() = (Instant::now(), dev_ms.max(now), speed);
    }

    fn run(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let c = self.clone();
        std::thread::spawn(move || {
            while !c.stop.load(Relaxed) {
                c.file.set(c.now());
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Second,
    Minute,
    Hour,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Second => "second",
            Kind::Minute => "minute",
            Kind::Hour => "hour",
        }
    }

    fn unit_ms(self) -> u64 {
        match self {
            Kind::Second => 1_000,
            Kind::Minute => 60_000,
            Kind::Hour => 3_600_000,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Second => "API limit, unsigned calls",
            Kind::Minute => "app limit, one app's signed calls",
            Kind::Hour => "user limit, signed calls",
        }
    }
}

/// One phase's setting.
struct Phase {
    kind: Kind,
    limit: u64,
    windows: u64,
    speed: f64,
    kill: Option<u64>,
    restart_same_window: bool,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    admitted: u64,
    /// Admitted by node 1, 2, 3.
    by_node: [u64; 3],
    refused: u64,
    failed: u64,
}

/// What a phase saw: counts per window (dev-clock window number), and when (dev ms) the node
/// was killed and restarted.
struct Outcome {
    by_window: BTreeMap<u64, Counts>,
    first: u64,
    killed_at: Option<u64>,
    restarted_at: Option<u64>,
}

struct App {
    key: String,
    secret: String,
}

struct Bench {
    cluster: Mutex<Cluster>,
    clock: Arc<Clock>,
    app: App,
    client: Client<HttpConnector, Empty<Bytes>>,
    addrs: Vec<String>,
    alive: [AtomicBool; 3],
    nonce: AtomicU64,
    /// Whether an unexpected answer was printed (once is enough).
    told: AtomicBool,
}

impl Bench {
    /// A request's head; signed calls carry the real wall-clock time, as the data plane
    /// checks signature timestamps against the system clock, not the development one.
    fn head(&self, kind: Kind) -> http::request::Builder {
        let path = format!("/{}", kind.name());
        if kind == Kind::Second {
            return http::Request::get(path);
        }
        let mut req = signer::RequestParts::from_uri("GET", &path);
        let nonce = format!("n{}", self.nonce.fetch_add(1, Relaxed));
        let real_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis() as u64;
        signer::Signer::new(&self.app.key, &self.app.secret).sign(&mut req, real_ms, &nonce);
        let mut b = http::Request::get(req.path_and_query());
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b
    }

    /// One call, first to `node` (0-based), then to the next live ones on a transport error.
    /// Returns the status (0: no node answered) and the dev-clock time of the answer.
    async fn call(&self, kind: Kind, node: usize) -> (u16, u64, usize) {
        for i in 0..3 {
            let n = (node + i) % 3;
            if !self.alive[n].load(Relaxed) {
                continue;
            }
            let req = self
                .head(kind)
                .uri(format!("http://{}/{}", self.addrs[n], kind.name()))
                .header("host", "x")
                .body(Empty::new())
                .expect("a request");
            let r = tokio::time::timeout(CLIENT_TIMEOUT, async {
                let resp = self.client.request(req).await?;
                let status = resp.status().as_u16();
                let message = resp
                    .headers()
                    .get("x-ca-error-message")
                    .map(|v| v.to_str().unwrap_or("?").to_string());
                let _ = resp.into_body().collect().await;
                if status != 200 && status != 429 && !self.told.swap(true, Relaxed) {
                    eprintln!(
                        "unexpected status {status} ({message:?}) from node {}",
                        n + 1
                    );
                }
                Ok::<u16, hyper_util::client::legacy::Error>(status)
            })
            .await;
            if let Ok(Ok(status)) = r {
                return (status, self.clock.now(), n);
            }
        }
        (0, self.clock.now(), node)
    }
}

async fn run_phase(b: &Arc<Bench>, p: &Phase) -> Outcome {
    let unit = p.kind.unit_ms();
    // Jump to LEAD (real) before a window's start.
    let lead_dev = (LEAD.as_secs_f64() * 1000.0 * p.speed) as u64;
    let first = (b.clock.now() + lead_dev) / unit + 1;
    b.clock.set(first * unit - lead_dev, p.speed);
    let window_real = Duration::from_secs_f64(unit as f64 / p.speed / 1000.0);
    // A little past the last window's end, so that it is offered load to its end.
    let total = LEAD + window_real * p.windows as u32 + Duration::from_millis(300);
    let offered_per_s = 2.0 * p.limit as f64 / window_real.as_secs_f64();
    let counts: Arc<Mutex<BTreeMap<u64, Counts>>> = Default::default();
    let start = Instant::now();
    let mut gens = Vec::new();
    for (node, part) in SKEW.iter().enumerate() {
        let (b, counts) = (b.clone(), counts.clone());
        let period = Duration::from_secs_f64(1.0 / (offered_per_s * part));
        let kind = p.kind;
        gens.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut inflight = tokio::task::JoinSet::new();
            while start.elapsed() < total {
                tick.tick().await;
                let (b, counts) = (b.clone(), counts.clone());
                inflight.spawn(async move {
                    let (status, at, by) = b.call(kind, node).await;
                    let mut c = counts.lock().unwrap();
                    let w = c.entry(at / unit).or_default();
                    match status {
                        200 => {
                            w.admitted += 1;
                            w.by_node[by] += 1;
                        }
                        429 => w.refused += 1,
                        _ => w.failed += 1,
                    }
                });
                // Reap as we go so the set stays small.
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        }));
    }
    let (mut killed_at, mut restarted_at) = (None, None);
    if let Some(k) = p.kill {
        // Window index 1 (the second measured one), at KILL_AT of it.
        let kill_dev = (first + 1) * unit + (unit as f64 * KILL_AT) as u64;
        wait_dev(b, kill_dev, total).await;
        b.alive[k as usize - 1].store(false, Relaxed);
        b.cluster.lock().unwrap().kill(k);
        killed_at = Some(b.clock.now());
        let restart_dev = if p.restart_same_window {
            b.clock.now() + (2000.0 * p.speed) as u64
        } else {
            kill_dev + unit
        };
        wait_dev(b, restart_dev, total).await;
        b.cluster.lock().unwrap().spawn(k);
        restarted_at = Some(b.clock.now());
        // The node takes traffic again once it says it is ready, as a load balancer would see.
        let ops = b.cluster.lock().unwrap().ops_addr(k);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && start.elapsed() < total {
            let ready = testkit::http::get(&ops, "/readyz").await;
            if ready.is_some_and(|r| r.status == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.alive[k as usize - 1].store(true, Relaxed);
    }
    for g in gens {
        g.await.expect("generator");
    }
    let by_window = counts.lock().unwrap().clone();
    Outcome {
        by_window,
        first,
        killed_at,
        restarted_at,
    }
}

/// Sleeps until the dev clock reaches `dev_ms`, or the phase's time is up.
async fn wait_dev(b: &Bench, dev_ms: u64, bound: Duration) {
    let deadline = Instant::now() + bound;
    while b.clock.now() < dev_ms && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn report(p: &Phase, o: &Outcome) -> (f64, bool) {
    let unit = p.kind.unit_ms();
    let case = if p.kill.is_some() { "kill" } else { "steady" };
    let mut worst: f64 = 0.0;
    for i in 0..p.windows {
        let w = o.first + i;
        let c = o.by_window.get(&w).copied().unwrap_or_default();
        let err = (c.admitted as f64 - p.limit as f64) / p.limit as f64 * 100.0;
        worst = worst.max(err.abs());
        let range = (w * unit, (w + 1) * unit);
        let inside = |t: Option<u64>| t.is_some_and(|t| t >= range.0 && t < range.1);
        let mut note = Vec::new();
        if inside(o.killed_at) {
            note.push(format!("node {} SIGKILLed", p.kill.unwrap_or(0)));
        }
        if inside(o.restarted_at) {
            note.push(format!("node {} restarted", p.kill.unwrap_or(0)));
        }
        println!(
            "| {:<6} | {:<6} | {:>6} | {:>6} | {:>8} | {:>+7.2}% | {:>14} | {:>7} | {:>6} | {} |",
            p.kind.name(),
            case,
            i + 1,
            p.limit,
            c.admitted,
            err,
            format!("{:?}", c.by_node),
            c.refused,
            c.failed,
            note.join(", ")
        );
    }
    (worst, worst <= 2.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let windows: Vec<u64> = std::env::var("BENCH_WINDOWS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| v.len() == 3)
        .unwrap_or_else(|| vec![8, 2, 3]);
    let limits = [
        env_or("BENCH_SECOND_LIMIT", 200),
        env_or("BENCH_MINUTE_LIMIT", 6000),
        env_or("BENCH_HOUR_LIMIT", 3000),
    ];
    let hour_speed = env_or("BENCH_HOUR_SPEED", 120) as f64;
    let kill_node = env_or("BENCH_KILL_NODE", 1).clamp(1, 3);
    let restart_same = std::env::var("BENCH_RESTART").is_ok_and(|v| v == "same");
    let only = std::env::var("BENCH_ONLY").ok();

    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let (c, file) = Cluster::start_with_clock(testkit::binaries!(), 3, start_ms, &[]).await;
    let clock = Arc::new(Clock {
        file,
        state: Mutex::new((Instant::now(), start_ms, 1.0)),
        stop: AtomicBool::new(false),
    });
    let ticker = clock.run();
    let backend = testkit::http::Server::start("ok").await;
    let url = format!("http://{}", backend.addr);
    c.deploy_get_api("g", "second", &url, &[]);
    c.deploy_get_api("g", "minute", &url, &["--auth-type", "APP"]);
    c.deploy_get_api("g", "hour", &url, &["--auth-type", "APP"]);
    let app = c.ctl_json(1, &["app", "create", "--name", "bench"]);
    let app = App {
        key: app["app_key"].as_str().expect("app key").into(),
        secret: app["app_secret"].as_str().expect("app secret").into(),
    };
    for api in ["minute", "hour"] {
        let args = [
            "api",
            "authorize",
            "--group",
            "g",
            "--name",
            api,
            "--app",
            "bench",
        ];
        c.ctl_json(1, &args);
    }
    let big = "100000000".to_string();
    let [ls, lm, lh] = limits.map(|l| l.to_string());
    let policies: [(&str, &str, Vec<&str>); 3] = [
        ("second", "second", vec!["--api-limit", &ls]),
        (
            "minute",
            "minute",
            vec!["--api-limit", &big, "--app-limit", &lm],
        ),
        (
            "hour",
            "hour",
            vec!["--api-limit", &big, "--user-limit", &lh],
        ),
    ];
    for (name, unit, limits) in &policies {
        let mut a = vec!["throttle", "create", "--name", name, "--unit", unit];
        a.extend(limits.iter());
        c.ctl_json(1, &a);
        let bind = [
            "throttle", "bind", "--name", name, "--group", "g", "--api", name,
        ];
        assert!(c.ctl(1, &bind).success, "bind {name}");
    }
    c.wait_caught_up(1, &[2, 3]).await;
    let addrs = (1..=3).map(|id| c.http_addr(id)).collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let b = Arc::new(Bench {
        cluster: Mutex::new(c),
        clock: clock.clone(),
        app,
        client,
        addrs,
        alive: [(); 3].map(|_| AtomicBool::new(true)),
        nonce: AtomicU64::new(0),
        told: AtomicBool::new(false),
    });

    println!(
        "throttling policies on 3 gatewayd nodes, 2x overload skewed 80/10/10, open loop; \
         kill case: node {kill_node} SIGKILLed at {:.0}% of window 2, restarted {}",
        KILL_AT * 100.0,
        if restart_same {
            "2 s (real) later, in the same window".to_string()
        } else {
            format!("at {:.0}% of window 3", KILL_AT * 100.0)
        }
    );
    println!("cpu: {}, load average at start: {}", cpu_model(), loadavg());
    let kinds = [Kind::Second, Kind::Minute, Kind::Hour];
    let mut summary = Vec::new();
    println!(
        "\n| unit   | case   | window |  limit | admitted |   error | by node 1/2/3  | refused | failed | note |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, kind) in kinds.into_iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != kind.name()) {
            continue;
        }
        let speed = if kind == Kind::Hour { hour_speed } else { 1.0 };
        for kill in [None, Some(kill_node)] {
            let p = Phase {
                kind,
                limit: limits[i],
                // The kill case needs a window before, the kill's, and the restart's.
                windows: if kill.is_some() {
                    windows[i].max(3)
                } else {
                    windows[i]
                },
                speed,
                kill,
                restart_same_window: restart_same,
            };
            let o = run_phase(&b, &p).await;
            let (worst, ok) = report(&p, &o);
            summary.push((kind, kill.is_some(), worst, ok));
        }
    }
    println!();
    for (kind, kill, worst, ok) in summary {
        println!(
            "{} ({}), {}: worst window {:.2}% from the limit -> {} 2%",
            kind.name(),
            kind.what(),
            if kill { "kill" } else { "steady" },
            worst,
            if ok { "within" } else { "OUTSIDE" }
        );
    }
    println!("load average at end: {}", loadavg());
    clock.stop.store(true, Relaxed);
    let _ = ticker.join();
}
