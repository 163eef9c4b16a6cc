//! What a configuration change costs at production size, and what the size costs a request.
//!
//! 100,000 deployed APIs in 5,000 groups (20 APIs each, paths with parameters and catch-alls,
//! 18 on RELEASE and 2 on TEST), one group in five bound to a host and the others any-host
//! under a base path of their own, 10 instances, 500 accounts; every group has an IP ACL
//! (5,000), one group in five an ACL on one API (1,000), one in four an APP-auth API granted to
//! two of 1,000 apps. Figures, in microseconds:
//!
//! - a full `publish` into an empty data plane (what every change cost before changes were
//!   incremental), and of the same config again (a diff that finds nothing);
//! - `update` after deploying one new API in one group, and the same change as a full
//!   `publish` (diffed: a comparison per group);
//! - `update` after an app's secret changes, and after an account (10 groups) is suspended;
//! - `decide` (lookup, counters, limiter) at this size and with one group.
//!
//! Run: `cargo bench -p decide --bench publish`.

use decide::{
    AppCredential, ConfigUpdate, Dataplane, DataplaneConfig, DeployedApi, GroupConfig,
    InstanceConfig, IpRules, Stage,
};
use http::Method;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GROUPS: usize = 5_000;
const APIS: usize = 20;
const APPS: usize = 1_000;
const WORDS: [&str; 8] = [
    "items", "users", "orders", "files", "carts", "pay", "search", "tags",
];

/// xorshift64*: deterministic "random" paths without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn word(&mut self) -> &'static str {
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }
}

/// A path pattern for the `j`th API of a group: its first segment is unique in the group.
fn pattern(rng: &mut Rng, j: usize) -> String {
    let w = rng.word();
    match rng.next() % 4 {
        0 => format!("/{w}{j}/{{id}}"),
        1 => format!("/{w}{j}/{{id}}/{}/{{sub}}", rng.word()),
        2 => format!("/{w}{j}/list"),
        _ => format!("/{w}{j}/{{id}}/files/{{*rest}}"),
    }
}

fn api(name: String, method: Method, path: String, backend: String) -> DeployedApi {
    DeployedApi {
        stage: Stage::Release,
        api: name,
        method,
        path,
        backend,
        timeout: Duration::from_secs(5),
        app_auth: false,
        backend_billed: false,
    }
}

fn group(i: usize, rng: &mut Rng) -> GroupConfig {
    let host_bound = i.is_multiple_of(5);
    let mut g = GroupConfig::new(
        format!("g{i}"),
        format!("acct{}", i % 500),
        format!("inst{}", i % 10),
    );
    g.host = host_bound.then(|| format!("g{i}.example.com"));
    g.base_path = (!host_bound).then(|| format!("/g{i}/v1"));
    g.deployments = (0..APIS)
        .map(|j| {
            let mut d = api(
                format!("api-{i}-{j}"),
                if j % 2 == 0 {
                    Method::GET
                } else {
                    Method::POST
                },
                pattern(rng, j),
                format!("http://10.1.{}.{}:8080", i % 200, j),
            );
            if j >= 18 {
                d.stage = Stage::Test;
            }
            d.app_auth = i.is_multiple_of(4) && j == 0;
            d
        })
        .collect();
    g.acl = Some(IpRules {
        allow: vec!["10.0.0.0/8".into(), format!("192.168.{}.0/24", i % 256)],
        deny: vec![format!("10.0.{}.1", i % 256)],
    });
    if i % 5 == 1 {
        g.api_acls.insert(
            format!("api-{i}-3"),
            IpRules {
                allow: vec![],
                deny: vec!["10.9.0.0/16".into()],
            },
        );
    }
    if i.is_multiple_of(4) {
        g.grants.insert(
            format!("api-{i}-0"),
            vec![format!("app{}", i % APPS), format!("app{}", (i + 1) % APPS)],
        );
    }
    g
}

fn config(groups: usize) -> DataplaneConfig {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    DataplaneConfig {
        instances: (0..10)
            .map(|i| InstanceConfig {
                name: format!("inst{i}"),
                ceiling_rps: u32::MAX, // never throttles: measures the admitted path
                region: "cn-hangzhou".into(),
            })
            .collect(),
        groups: (0..groups).map(|i| group(i, &mut rng)).collect(),
        apps: (0..APPS)
            .map(|i| AppCredential {
                name: format!("app{i}"),
                key: format!("key{i}"),
                secret: format!("secret{i}"),
            })
            .collect(),
    }
}

/// Mean and fastest microseconds of `n` runs of `f`.
fn time<R>(n: usize, mut f: impl FnMut(usize) -> R) -> (f64, f64) {
    let mut total = Duration::ZERO;
    let mut best = Duration::MAX;
    for i in 0..n {
        let t = Instant::now();
        black_box(f(i));
        let e = t.elapsed();
        total += e;
        best = best.min(e);
    }
    (
        total.as_secs_f64() * 1e6 / n as f64,
        best.as_secs_f64() * 1e6,
    )
}

/// Mean nanoseconds of a `decide` (lookup, counters, limiter) for a request that must match.
fn decide_ns(dp: &Dataplane, host: Option<&str>, path: &str) -> f64 {
    let v = dp.decide(host, Stage::Release, &Method::GET, path);
    assert!(v.api().is_some(), "{path}: {v:?}");
    let n = 2_000_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(dp.decide(
            black_box(host),
            Stage::Release,
            &Method::GET,
            black_box(path),
        ));
    }
    t.elapsed().as_secs_f64() * 1e9 / n as f64
}

/// A request path for the first RELEASE GET API of `g` without APP auth.
fn request_path(g: &GroupConfig) -> String {
    let d = g
        .deployments
        .iter()
        .find(|d| d.method == Method::GET && d.stage == Stage::Release && !d.app_auth)
        .unwrap();
    let path = d
        .path
        .replace("{id}", "42")
        .replace("{sub}", "7")
        .replace("{*rest}", "a/b");
    format!("{}{path}", g.base_path.as_deref().unwrap_or(""))
}

fn row(what: &str, (mean, best): (f64, f64)) {
    println!("{what:<58} {mean:>12.1} {best:>12.1}");
}

fn main() {
    let cfg = config(GROUPS);
    let routes = GROUPS * APIS;
    println!("{GROUPS} groups, {routes} deployed APIs, {APPS} apps; microseconds");
    println!("{:<58} {:>12} {:>12}", "", "mean", "fastest");

    row(
        "(a) publish everything into an empty data plane",
        time(3, |_| {
            let dp: Dataplane = Dataplane::new(1);
            let report = dp.publish(&cfg);
            assert_eq!(report.routes, routes, "{:?}", report.warnings.first());
            // Dropped within the timing, as the measurement before incremental updates was.
            dp
        }),
    );
    let dp: Dataplane = Dataplane::new(1);
    dp.publish(&cfg);
    row(
        "(a) publish the same config again (diff finds nothing)",
        time(5, |_| dp.publish(&cfg)),
    );

    // One new API in one group, and back: alternating keeps every run a real change.
    let before = cfg.groups[1234].clone();
    let mut after = before.clone();
    after.deployments.push(api(
        "new".into(),
        Method::GET,
        "/brand/new/{id}".into(),
        "http://10.9.9.9:80".into(),
    ));
    let versions = [after, before];
    row(
        "(b) update: one API deployed in one group",
        time(1_000, |i| {
            let report = dp.update(&ConfigUpdate {
                groups: vec![versions[i % 2].clone()],
                ..Default::default()
            });
            assert_eq!(report.groups_compiled, 1);
            report
        }),
    );
    let mut full = cfg.clone();
    row(
        "(b) the same change as a full publish (diffed)",
        time(10, |i| {
            full.groups[1234] = versions[i % 2].clone();
            dp.publish(&full)
        }),
    );

    let secrets = ["changed".to_string(), "secret5".to_string()];
    row(
        "(c) update: one app's secret changed",
        time(1_000, |i| {
            let report = dp.update(&ConfigUpdate {
                apps: vec![AppCredential {
                    name: "app5".into(),
                    key: "key5".into(),
                    secret: secrets[i % 2].clone(),
                }],
                ..Default::default()
            });
            assert_eq!(report.groups_compiled, 0);
            report
        }),
    );
    // Account acct7's 10 groups, suspended and restored.
    let account: Vec<GroupConfig> = cfg
        .groups
        .iter()
        .filter(|g| g.account == "acct7")
        .cloned()
        .collect();
    let suspended: Vec<GroupConfig> = account
        .iter()
        .cloned()
        .map(|mut g| {
            g.suspended = true;
            g
        })
        .collect();
    let states = [suspended, account];
    row(
        "(c) update: one account (10 groups) suspended",
        time(1_000, |i| {
            dp.update(&ConfigUpdate {
                groups: states[i % 2].clone(),
                ..Default::default()
            })
        }),
    );

    let small: Dataplane = Dataplane::new(1);
    let mut one = config(2);
    one.groups.remove(0);
    small.publish(&one);
    println!();
    println!("{:<58} {:>12}", "(d) decide, nanoseconds", "");
    let any = request_path(&cfg.groups[1]);
    let host = request_path(&cfg.groups[0]);
    println!(
        "{:<58} {:>12.1}",
        format!("any-host group under its base path ({GROUPS} groups)"),
        decide_ns(&dp, Some("x.example.com"), &any)
    );
    println!(
        "{:<58} {:>12.1}",
        "any-host group under its base path (1 group)",
        decide_ns(&small, Some("x.example.com"), &any)
    );
    println!(
        "{:<58} {:>12.1}",
        format!("host-bound group ({GROUPS} groups)"),
        decide_ns(&dp, Some("g0.example.com"), &host)
    );
    black_box(dp.drain_usage());
}
