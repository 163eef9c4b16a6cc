//! The cost of a bound throttling policy on the hot path, in ns per decision: the same admitted
//! decision (route lookup, gate, instance limiter, counters, status counter) on an API with no
//! policy, with a per-second API limit (a GCRA share) and with a per-minute API limit (a lease
//! of the window's budget, which also reads the wall clock), all far above the offered rate.
//!
//! Also the cost of the demand loop with 10,000 per-second limits, 10 of them busy: the early
//! look for moved calls (every ~10 ms), which watches only the busy counters, against the
//! periodic report (every ~100 ms), which reads them all.
//!
//! Run: `cargo bench -p decide --bench throttle`.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use decide::{
    Dataplane, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, Stage, ThrottleConfig,
    ThrottleUnit,
};
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

fn api(name: &str) -> DeployedApi {
    DeployedApi {
        stage: Stage::Release,
        api: name.into(),
        method: Method::GET,
        path: format!("/{name}/{{id}}"),
        backend: "http://127.0.0.1:8081".into(),
        timeout: Duration::from_secs(5),
        app_auth: false,
        backend_billed: false,
    }
}

fn policy(name: &str, unit: ThrottleUnit) -> ThrottleConfig {
    ThrottleConfig {
        policy: name.into(),
        unit,
        api_limit: 1 << 50,
        user_limit: None,
        app_limit: None,
        special_apps: Default::default(),
        special_accounts: Default::default(),
    }
}

fn config() -> DataplaneConfig {
    let throttles = [
        (
            (Stage::Release, "second".to_string()),
            policy("ps", ThrottleUnit::Second),
        ),
        (
            (Stage::Release, "minute".to_string()),
            policy("pm", ThrottleUnit::Minute),
        ),
    ]
    .into();
    DataplaneConfig {
        instances: vec![InstanceConfig {
            name: "inst".into(),
            ceiling_rps: u32::MAX,
            region: "cn-hangzhou".into(),
        }],
        groups: vec![GroupConfig {
            name: "g".into(),
            account: "acct".into(),
            instance: "inst".into(),
            host: Some("g.example.com".into()),
            base_path: None,
            deployments: vec![api("free"), api("second"), api("minute")],
            acl: None,
            api_acls: Default::default(),
            grants: Default::default(),
            suspended: false,
            throttles,
        }],
        apps: vec![],
    }
}

fn throttle(c: &mut Criterion) {
    let dp: Dataplane = Dataplane::new(1);
    let report = dp.publish(&config());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let decide = |path: &str| {
        let v = dp.decide(Some("g.example.com"), Stage::Release, &Method::GET, path);
        let status = match v.rejection() {
            None => StatusCode::OK,
            Some(e) => e.status(),
        };
        v.record_status(&dp, status);
        v
    };
    // The minute policy admits only from a lease: a node alone coordinates its own, sized to
    // a second of its measured demand. Offer calls and run report rounds until it has one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !decide("/minute/1").is_admitted() {
        assert!(Instant::now() < deadline, "no lease for the minute policy");
        for _ in 0..1000 {
            decide("/minute/1");
        }
        dp.demand_report();
        std::thread::sleep(Duration::from_millis(20));
    }
    for path in ["/free/1", "/second/1"] {
        assert!(decide(path).is_admitted(), "{path}");
    }

    let mut g = c.benchmark_group("throttle");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    for (name, path) in [
        ("no_policy", "/free/1"),
        ("per_second_policy", "/second/1"),
        ("per_minute_policy", "/minute/1"),
    ] {
        let refused = std::cell::Cell::new(0u64);
        let measured = std::cell::Cell::new(0u64);
        g.bench_function(name, |b| {
            // Report rounds keep the lease topped up (and measure demand); their cost is left
            // out of the timing. A node runs them every 100 ms; here every 10 ms, because one
            // core deciding in a tight loop offers millions of calls a second, and criterion's
            // samples grow in steps that outrun a lease sized to the last round's demand.
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut last_round = Instant::now();
                let mut done = 0;
                while done < iters {
                    let batch = (iters - done).min(10_000);
                    let t = Instant::now();
                    for _ in 0..batch {
                        if !decide(black_box(path)).is_admitted() {
                            refused.set(refused.get() + 1);
                        }
                    }
                    spent += t.elapsed();
                    done += batch;
                    measured.set(measured.get() + batch);
                    if last_round.elapsed() >= Duration::from_millis(10) {
                        dp.demand_report();
                        last_round = Instant::now();
                    }
                }
                spent
            })
        });
        // A refusal is a different, cheaper path: the figure stands for admitted calls only
        // while nearly all were (the lease can run dry between rounds when criterion's
        // sample sizes jump).
        let share = refused.get() as f64 / measured.get().max(1) as f64;
        println!(
            "{name}: {} of {} calls refused ({:.2}%)",
            refused.get(),
            measured.get(),
            share * 100.0
        );
        assert!(
            share <= 0.02,
            "{name}: {:.2}% of the calls measured were refused",
            share * 100.0
        );
    }
    g.finish();
    black_box(dp.drain_usage());
}

/// 10,000 APIs on one instance, each with its own per-second API limit.
fn many_limits(n: usize) -> DataplaneConfig {
    let mut cfg = config();
    let group = &mut cfg.groups[0];
    group.deployments = (0..n).map(|i| api(&format!("a{i}"))).collect();
    group.throttles = (0..n)
        .map(|i| {
            let key = (Stage::Release, format!("a{i}"));
            (key, policy(&format!("p{i}"), ThrottleUnit::Second))
        })
        .collect();
    cfg
}

fn demand_loop(c: &mut Criterion) {
    const N: usize = 10_000;
    const BUSY: usize = 10;
    let dp: Dataplane = Dataplane::new(1);
    dp.set_serving_nodes(&[1, 2, 3], 1);
    let report = dp.publish(&many_limits(N));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // Two periodic samples 60 ms apart with calls to the busy APIs between them: those are
    // busy (a measured rate), the others idle.
    let call = |i: usize| {
        let path = format!("/a{i}/1");
        dp.decide(Some("g.example.com"), Stage::Release, &Method::GET, &path)
            .is_admitted()
    };
    dp.demand_report();
    std::thread::sleep(Duration::from_millis(150));
    dp.demand_report();
    for _ in 0..20 {
        for i in 0..BUSY {
            assert!(call(i), "a{i}");
        }
    }
    std::thread::sleep(Duration::from_millis(60));
    dp.demand_report();
    // (With 10,000 limits a node watches only its busy counters from its start: beyond a
    // thousand it does not watch them all.)

    let mut g = c.benchmark_group("demand_loop");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    g.bench_function("early_look_10000_limits_10_busy", |b| {
        b.iter(|| black_box(dp.demand_report_early()))
    });
    g.bench_function("periodic_report_10000_limits", |b| {
        b.iter(|| black_box(dp.demand_report()))
    });
    g.finish();
}

criterion_group!(benches, throttle, demand_loop);
criterion_main!(benches);
