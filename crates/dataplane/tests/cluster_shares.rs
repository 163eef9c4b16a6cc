//! Simulated cluster: three data planes on a fake clock exchanging demand reports every 100 ms,
//! offered twice the instance ceiling, evenly and skewed 80/10/10, with evenly spaced and with
//! Poisson arrivals. The cluster must admit the ceiling within 2% in every 1 s window.

use dataplane::{
    Dataplane, DataplaneConfig, DataplaneOptions, DeployedApi, FakeClock, GroupConfig,
    InstanceConfig, Stage,
};
use http::Method;
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const CEILING: u32 = 1000;

fn config(ceiling: u32) -> DataplaneConfig {
    DataplaneConfig {
        instances: vec![InstanceConfig {
            name: "dedicated".into(),
            ceiling_rps: ceiling,
            region: "cn-hangzhou".into(),
        }],
        groups: vec![GroupConfig {
            name: "g".into(),
            account: "acct".into(),
            instance: "dedicated".into(),
            host: None,
            base_path: None,
            deployments: vec![DeployedApi {
                stage: Stage::Release,
                api: "x".into(),
                method: Method::GET,
                path: "/x".into(),
                backend: "http://127.0.0.1:9".into(),
                timeout: Duration::from_secs(1),
            }],
        }],
        suspended_accounts: vec![],
    }
}

/// xorshift64*: deterministic arrivals without a dependency.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, rate: f64) -> u64 {
        (-(1.0 - self.next_f64()).ln() / rate * 1e9) as u64
    }
}

struct Node {
    dp: Dataplane,
    rate: f64,
    next_arrival: u64,
    report_phase: u64,
}

/// Runs the cluster for `secs` seconds and returns the admitted count of each 1 s window.
fn simulate(rates: &[f64], poisson: bool, secs: u64, changes: &[(u64, u32)]) -> Vec<u64> {
    let clock = Arc::new(FakeClock::new(SEC));
    let ids: Vec<u64> = (1..=rates.len() as u64).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut nodes: Vec<Node> = rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let dp = Dataplane::with_options(DataplaneOptions {
                node_id: ids[i],
                clock: clock.clone(),
                ..Default::default()
            });
            dp.publish(&config(CEILING));
            dp.set_serving_nodes(&ids, ids[i]);
            Node {
                dp,
                rate,
                next_arrival: SEC + (i as u64 * 137_000) % (1e9 / rate) as u64,
                // Nodes report out of step with each other, as real ones do.
                report_phase: i as u64 * 37 * MS,
            }
        })
        .collect();
    let start = SEC;
    let end = start + secs * SEC;
    let step = 50_000; // 50 µs
    let mut windows = vec![0u64; secs as usize];
    let mut next_report: Vec<u64> = nodes.iter().map(|n| start + n.report_phase).collect();
    let mut pending_changes = changes.to_vec();
    let mut t = start;
    while t < end {
        clock.set(t);
        if let Some(&(at, ceiling)) = pending_changes.first()
            && t >= start + at
        {
            for n in &nodes {
                n.dp.publish(&config(ceiling));
            }
            pending_changes.remove(0);
        }
        for i in 0..nodes.len() {
            if t >= next_report[i] {
                let report = nodes[i].dp.demand_report();
                for (j, peer) in nodes.iter().enumerate() {
                    if j != i {
                        peer.dp.apply_peer_demand(ids[i], &report, t);
                    }
                }
                next_report[i] += 100 * MS;
            }
        }
        for n in nodes.iter_mut() {
            while n.next_arrival <= t {
                let v = n.dp.decide_at(None, Stage::Release, &Method::GET, "/x", t);
                if v.is_admitted() {
                    windows[((t - start) / SEC) as usize] += 1;
                }
                n.next_arrival += if poisson {
                    rng.exp(n.rate)
                } else {
                    (1e9 / n.rate) as u64
                };
            }
        }
        t += step;
    }
    windows
}

fn assert_within(windows: &[u64], skip: usize, expected: f64, tolerance: f64, what: &str) {
    eprintln!("{what}: {windows:?}");
    for (i, w) in windows.iter().enumerate().skip(skip) {
        let err = (*w as f64 - expected).abs() / expected;
        assert!(
            err <= tolerance,
            "{what}: window {i} admitted {w}, expected {expected} (all: {windows:?})"
        );
    }
}

#[test]
fn even_load_at_twice_the_ceiling() {
    let c = f64::from(CEILING);
    let w = simulate(&[2.0 * c / 3.0; 3], false, 10, &[]);
    assert_within(&w, 1, c, 0.02, "even");
}

#[test]
fn skewed_load_at_twice_the_ceiling() {
    let c = f64::from(CEILING);
    let w = simulate(&[1.6 * c, 0.2 * c, 0.2 * c], false, 10, &[]);
    assert_within(&w, 1, c, 0.02, "80/10/10");
}

#[test]
fn poisson_arrivals_even_and_skewed() {
    let c = f64::from(CEILING);
    let w = simulate(&[2.0 * c / 3.0; 3], true, 10, &[]);
    assert_within(&w, 1, c, 0.02, "even, Poisson");
    let w = simulate(&[1.6 * c, 0.2 * c, 0.2 * c], true, 10, &[]);
    assert_within(&w, 1, c, 0.02, "80/10/10, Poisson");
}

#[test]
fn below_the_ceiling_nothing_is_throttled() {
    let c = f64::from(CEILING);
    // 90% of the ceiling, skewed: every node's share covers its demand.
    let rates = [0.72 * c, 0.09 * c, 0.09 * c];
    let w = simulate(&rates, false, 5, &[]);
    assert_within(&w, 1, 0.9 * c, 0.01, "under the ceiling");
}

#[test]
fn ceiling_change_takes_effect_in_place() {
    let c = f64::from(CEILING);
    // Offered 4000/s; the ceiling goes 1000 -> 2000 at 4 s, 2000 -> 500 at 8 s (on window
    // edges): each window admits the ceiling in force, without a burst.
    let w = simulate(
        &[3200.0, 400.0, 400.0],
        false,
        12,
        &[(4 * SEC, 2000), (8 * SEC, 500)],
    );
    assert_within(&w[..4], 1, c, 0.02, "before");
    assert_within(&w[4..8], 0, 2.0 * c, 0.02, "raised");
    assert_within(&w[8..], 0, 0.5 * c, 0.02, "lowered");
}
