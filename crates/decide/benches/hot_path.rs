//! The decision half of the hot path, in ns per request: route lookup (host, base path, stage,
//! method, `matchit` pattern) + account gate + instance limiter (GCRA CAS) + usage and arrival
//! counters + status counter. Baselines in the same run: a bare `matchit` lookup of the same
//! pattern set, and one read of the monotonic clock (which the decision includes).
//!
//! Run: `cargo bench -p decide --bench hot_path`.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use decide::{Dataplane, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, Stage};
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

const GROUPS: usize = 40;
const APIS: usize = 25;

fn pattern(j: usize) -> String {
    format!("/items/{{id}}/part{j}")
}

/// 40 groups of 25 APIs: half bound to a host, half any-host under a base path; one tiny
/// instance for the throttled case.
fn config() -> DataplaneConfig {
    let mut groups = Vec::new();
    for i in 0..GROUPS {
        let host_bound = i % 2 == 0;
        groups.push(GroupConfig {
            name: format!("g{i}"),
            account: format!("acct{}", i % 7),
            instance: if i == 0 {
                "tiny".into()
            } else {
                format!("inst{}", i % 4)
            },
            host: host_bound.then(|| format!("g{i}.example.com")),
            base_path: (!host_bound).then(|| format!("/g{i}")),
            deployments: (0..APIS)
                .map(|j| DeployedApi {
                    stage: Stage::Release,
                    api: format!("api-{i}-{j}"),
                    method: if j % 2 == 0 {
                        Method::GET
                    } else {
                        Method::POST
                    },
                    path: pattern(j),
                    backend: "http://127.0.0.1:8081".into(),
                    timeout: Duration::from_secs(5),
                    app_auth: false,
                    backend_billed: false,
                })
                .collect(),
            acl: None,
            api_acls: Default::default(),
            grants: Default::default(),
            suspended: false,
            throttles: Default::default(),
        });
    }
    let mut instances: Vec<InstanceConfig> = (0..4)
        .map(|i| InstanceConfig {
            name: format!("inst{i}"),
            ceiling_rps: u32::MAX, // never throttles: measures the admitted path
            region: "cn-hangzhou".into(),
        })
        .collect();
    instances.push(InstanceConfig {
        name: "tiny".into(),
        ceiling_rps: 1,
        region: "cn-hangzhou".into(),
    });
    DataplaneConfig {
        instances,
        groups,
        apps: vec![],
    }
}

fn hot_path(c: &mut Criterion) {
    let dp: Dataplane = Dataplane::new(1);
    let report = dp.publish(&config());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.routes, GROUPS * APIS);

    let mut g = c.benchmark_group("hot_path");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);

    // Baselines.
    let mut bare = matchit::Router::new();
    for j in 0..APIS {
        bare.insert(pattern(j), j).unwrap();
    }
    g.bench_function("baseline_matchit_lookup", |b| {
        b.iter(|| black_box(bare.at(black_box("/items/123/part12")).map(|m| *m.value)))
    });
    g.bench_function("baseline_instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });

    // The decision: lookup + gate + limiter + counters, then the status counter.
    let decide = |host: Option<&str>, method: &Method, path: &str| {
        let v = dp.decide(host, Stage::Release, method, path);
        let status = match v.rejection() {
            None => StatusCode::OK,
            Some(e) => e.status(),
        };
        v.record_status(&dp, status);
        v
    };
    let admitted = decide(Some("g8.example.com"), &Method::GET, "/items/123/part12");
    assert!(admitted.is_admitted(), "{admitted:?}");
    g.bench_function("admitted_host_group", |b| {
        b.iter(|| {
            decide(
                black_box(Some("g8.example.com")),
                &Method::GET,
                black_box("/items/123/part12"),
            )
        })
    });
    assert!(decide(Some("any.example.com"), &Method::POST, "/g9/items/7/part13").is_admitted());
    g.bench_function("admitted_base_path_group", |b| {
        b.iter(|| {
            decide(
                black_box(Some("any.example.com")),
                &Method::POST,
                black_box("/g9/items/7/part13"),
            )
        })
    });
    decide(Some("g0.example.com"), &Method::GET, "/items/1/part0");
    assert!(!decide(Some("g0.example.com"), &Method::GET, "/items/1/part0").is_admitted());
    g.bench_function("throttled", |b| {
        b.iter(|| {
            decide(
                black_box(Some("g0.example.com")),
                &Method::GET,
                black_box("/items/1/part0"),
            )
        })
    });
    g.bench_function("not_found", |b| {
        b.iter(|| {
            decide(
                black_box(Some("nobody.example.com")),
                &Method::GET,
                black_box("/nothing/here"),
            )
        })
    });
    g.finish();
    // Keep the counters honest: drain so nothing is optimised away.
    black_box(dp.drain_usage());
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
