//! Cluster shares of instance ceilings, following demand.
//!
//! Every node measures the rate at which requests *arrive* at each instance's limiter (its
//! offered rate, throttled requests included: that is the demand, not what was admitted), sends
//! it to its peers every ~100 ms ([`DemandReport`]), and sets its own share of each ceiling from
//! the latest reports with [`share`]. At overload every node's share is below its own demand, so
//! nothing is wasted and the cluster admits C; below the ceiling every node's share is above its
//! demand, so nothing is throttled. Only a node with (almost) no demand wastes capacity: its
//! floor, kept small for that reason.
//!
//! Below the ceiling, the capacity nobody demands is spread evenly over the nodes (each node's
//! demand counts as its offered rate plus an equal part of the spare rate), not in proportion to
//! demand: a node that was idle while the others were busy then holds about `(C - D) / N`, so
//! traffic that starts arriving at it is admitted at once instead of being throttled down to the
//! floor until its next report reaches the peers. At and over the ceiling there is no spare
//! capacity and shares are proportional to demand.
//!
//! Peers whose report is missing or stale for a moment (a lost report, a slow node, a node that
//! just joined) are assumed to take the even share 1/N; the nodes that are heard from split the
//! rest by demand. A peer not heard from for [`GONE_AFTER`] (it is down, or cut off) stops
//! counting as serving until it reports again, so that the live nodes share the whole ceiling
//! rather than keep a dead node's part unused. The price of that choice: while the cluster is
//! partitioned, each side admits up to the ceiling.

use model::clock::Nanos;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// The default floor: each node keeps at least this fraction of a ceiling, so that an idle node
/// admits a little until its next report makes its demand known (~100 ms later).
pub const DEFAULT_SHARE_FLOOR: f64 = 0.005;

/// One node's offered rate per instance, sent to every peer every ~100 ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandReport {
    /// The length of the window the rates were measured over.
    pub window_ms: u32,
    pub instances: Vec<InstanceDemand>,
    /// The offered rates at this node's throttling-policy counters (those with any), by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttles: Vec<InstanceDemand>,
    /// This node's leases of window budgets (see [`crate::budget`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::budget::LeaseUse>,
    /// As the coordinator of the leases: what every node is granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<crate::budget::LeaseGrant>,
    /// When this node's process started (see [`crate::budget`]: the oldest live process
    /// coordinates the leases, and a restarted node's leases start afresh); 0: unknown.
    #[serde(default)]
    pub incarnation: u64,
}

/// The offered (arriving) rate at one instance's limiter on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDemand {
    pub instance: String,
    pub offered_rps: f64,
}

/// Negative, NaN and infinite demands count as none.
fn clean(demand: f64) -> f64 {
    if demand.is_finite() && demand > 0.0 {
        demand
    } else {
        0.0
    }
}

/// This node's share of a ceiling.
///
/// `own` is this node's offered rate; `peers` the offered rates of the serving peers that have
/// reported recently; `n_nodes` the number of serving nodes including this one (peers without a
/// fresh report are `n_nodes - 1 - peers.len()` and are assumed to take 1/N each). `floor` is the
/// least fraction of the ceiling a node is given (capped at 1/N). `ceiling_rps` is the
/// instance's cluster-wide ceiling, in the unit of the demands: below it, the spare capacity is
/// spread evenly (see the module docs).
///
/// The shares the nodes compute this way from the same reports sum to 1 (see [`shares`]).
pub fn share(own: f64, peers: &[f64], n_nodes: usize, floor: f64, ceiling_rps: f64) -> f64 {
    let known = 1 + peers.len();
    let n = n_nodes.max(known);
    let total: f64 = clean(own) + peers.iter().map(|d| clean(*d)).sum::<f64>();
    split(clean(own), total, known, n, floor, ceiling_rps)
}

/// The shares of all nodes, given each node's offered rate (`None`: not heard from recently)
/// and the ceiling. They sum to 1.
pub fn shares(demands: &[Option<f64>], floor: f64, ceiling_rps: f64) -> Vec<f64> {
    let n = demands.len();
    let known = demands.iter().filter(|d| d.is_some()).count();
    let total: f64 = demands.iter().flatten().map(|d| clean(*d)).sum();
    demands
        .iter()
        .map(|d| match d {
            Some(d) => split(clean(*d), total, known, n, floor, ceiling_rps),
            None => 1.0 / n as f64,
        })
        .collect()
}

/// A known node's part of the budget `known / n` the known nodes share: a floor each, the rest
/// in proportion to demand, where the rate the known nodes' demands leave unused of their part
/// of the ceiling is added evenly to each node's demand (so with no demand at all, evenly).
fn split(own: f64, total: f64, known: usize, n: usize, floor: f64, ceiling_rps: f64) -> f64 {
    let even = 1.0 / n as f64;
    let budget_rps = clean(ceiling_rps) * known as f64 * even;
    let spare_each = (budget_rps - total).max(0.0) / known as f64;
    let own = own + spare_each;
    let total = total + spare_each * known as f64;
    if total <= 0.0 {
        return even;
    }
    let floor = if floor.is_finite() {
        floor.clamp(0.0, even)
    } else {
        0.0
    };
    let budget = known as f64 * even;
    floor + (budget - known as f64 * floor) * (own / total)
}

/// A peer's latest report, stamped with when it arrived (on this node's clock).
struct PeerDemand {
    received: Nanos,
    rates: HashMap<String, f64>,
}

/// A serving peer not heard from for this long no longer counts as serving: its share goes to
/// the others. Ten report periods: long enough that a few lost or late reports do not drop a
/// live node, short because until then the dead node's share is not used (with per-second
/// policy limits and 80/10/10 skew, a dead 80% node cost its survivors 80% of three whole
/// seconds' limit at 3 s; see benches/RESULTS.md, issue 17).
pub const GONE_AFTER: Nanos = 1_000_000_000;

/// A serving node other than this one.
struct Peer {
    id: u64,
    /// When it was last heard from (or, before its first report, when it joined the serving
    /// set).
    heard: Nanos,
    /// Its process is known to be gone (a report to it was refused: nothing listens on its
    /// peer port), until it is heard from again.
    down: bool,
}

/// The rate of each counter in `counts` since `old`, `elapsed` earlier (a counter new since
/// then counts from zero).
fn rates(
    counts: &HashMap<String, u64>,
    old: &HashMap<String, u64>,
    elapsed: Nanos,
) -> HashMap<String, f64> {
    let dt = elapsed as f64 / 1e9;
    counts
        .iter()
        .map(|(k, v)| {
            let before = old.get(k).copied().unwrap_or(0);
            (k.clone(), v.saturating_sub(before) as f64 / dt)
        })
        .collect()
}

/// The mutable side of shares: samples of this node's arrivals, peers' reports, who serves.
pub(crate) struct DemandTracker {
    self_id: u64,
    peers: Vec<Peer>,
    reports: HashMap<u64, PeerDemand>,
    /// (time, arrivals counter per instance), oldest first.
    samples: VecDeque<(Nanos, HashMap<String, u64>)>,
    own: HashMap<String, f64>,
    own_window: Nanos,
    window: Nanos,
    stale_after: Nanos,
    floor: f64,
}

impl DemandTracker {
    pub(crate) fn new(self_id: u64, window: Nanos, stale_after: Nanos, floor: f64) -> Self {
        DemandTracker {
            self_id,
            peers: Vec::new(),
            reports: HashMap::new(),
            samples: VecDeque::new(),
            own: HashMap::new(),
            own_window: 0,
            window,
            stale_after,
            floor,
        }
    }

    /// Number of serving nodes at `now`, this one included (gone peers do not count).
    pub(crate) fn n_nodes(&self, now: Nanos) -> usize {
        1 + self.live_peers(now).count()
    }

    fn live_peers(&self, now: Nanos) -> impl Iterator<Item = u64> + '_ {
        self.peers
            .iter()
            .filter(move |p| !p.down && now.saturating_sub(p.heard) <= GONE_AFTER)
            .map(|p| p.id)
    }

    /// A peer whose process is known to be gone (a report to it was refused) stops counting
    /// as serving at once, rather than after [`GONE_AFTER`] of silence: a killed node's share
    /// goes to the others within a report period. It counts again when it reports.
    pub(crate) fn mark_down(&mut self, node: u64) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.id == node) {
            p.down = true;
            self.reports.remove(&node);
        }
    }

    pub(crate) fn set_serving(&mut self, ids: &[u64], self_id: u64, now: Nanos) {
        self.self_id = self_id;
        let mut ids: Vec<u64> = ids.iter().copied().filter(|id| *id != self_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let old = std::mem::take(&mut self.peers);
        self.peers = ids
            .into_iter()
            .map(|id| match old.iter().find(|o| o.id == id) {
                Some(o) => Peer { id, ..*o },
                None => Peer {
                    id,
                    heard: now,
                    down: false,
                },
            })
            .collect();
        let peers = &self.peers;
        self.reports
            .retain(|id, _| peers.iter().any(|p| p.id == *id));
    }

    pub(crate) fn record_peer(&mut self, node: u64, report: &DemandReport, now: Nanos) {
        // Reports from nodes that do not serve are ignored: they must not take a share.
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == node) else {
            return;
        };
        if node == self.self_id {
            return;
        }
        peer.heard = peer.heard.max(now);
        peer.down = false;
        let rates = report
            .instances
            .iter()
            .chain(&report.throttles)
            .map(|d| (d.instance.clone(), clean(d.offered_rps)))
            .collect();
        self.reports.insert(
            node,
            PeerDemand {
                received: now,
                rates,
            },
        );
    }

    /// Records the arrival counters at `now` and measures this node's offered rates over the
    /// newest sample at least one window old (so windows are one to two report periods long).
    pub(crate) fn sample<'a>(
        &mut self,
        now: Nanos,
        counters: impl Iterator<Item = (&'a str, u64)>,
    ) -> DemandReport {
        let counts: HashMap<String, u64> = counters.map(|(k, v)| (k.to_string(), v)).collect();
        // Drop samples made obsolete by a younger one that is still old enough.
        while self.samples.len() >= 2 && now.saturating_sub(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        if let Some((then, old)) = self.samples.front()
            && now > *then
        {
            self.own = rates(&counts, old, now - then);
            self.own_window = now - then;
        }
        self.samples.push_back((now, counts));
        // Bounded even if called in a tight loop with a frozen clock.
        while self.samples.len() > 64 {
            self.samples.pop_front();
        }
        self.report()
    }

    pub(crate) fn report(&self) -> DemandReport {
        let mut instances = Vec::new();
        let mut throttles = Vec::new();
        for (k, v) in &self.own {
            let d = InstanceDemand {
                instance: k.clone(),
                offered_rps: *v,
            };
            if !k.starts_with(crate::throttle::KEY_PREFIX) {
                instances.push(d);
            } else if *v > 0.0 {
                // Peers take a counter missing from a report as idle here.
                throttles.push(d);
            }
        }
        instances.sort_by(|a, b| a.instance.cmp(&b.instance));
        throttles.sort_by(|a, b| a.instance.cmp(&b.instance));
        DemandReport {
            window_ms: (self.own_window / 1_000_000).min(u32::MAX as u64) as u32,
            instances,
            throttles,
            ..Default::default()
        }
    }

    pub(crate) fn self_id(&self) -> u64 {
        self.self_id
    }

    /// The serving nodes heard from recently, this one included.
    pub(crate) fn live_nodes(&self, now: Nanos) -> Vec<u64> {
        let mut ids: Vec<u64> = std::iter::once(self.self_id)
            .chain(self.live_peers(now))
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn own_demand(&self, instance: &str) -> f64 {
        self.own.get(instance).copied().unwrap_or(0.0)
    }

    /// This node's share of `instance`'s ceiling at `now`.
    pub(crate) fn share_for(
        &self,
        instance: &str,
        ceiling_rps: f64,
        now: Nanos,
        scratch: &mut Vec<f64>,
    ) -> f64 {
        scratch.clear();
        for id in self.live_peers(now) {
            if let Some(r) = self.reports.get(&id)
                && now.saturating_sub(r.received) <= self.stale_after
            {
                scratch.push(r.rates.get(instance).copied().unwrap_or(0.0));
            }
        }
        share(
            self.own_demand(instance),
            scratch,
            self.n_nodes(now),
            self.floor,
            ceiling_rps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: f64 = DEFAULT_SHARE_FLOOR;
    /// A ceiling at or below the total demand of the tests that are about overload.
    const C: f64 = 1000.0;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn no_demand_or_no_reports_means_even_shares() {
        assert!(close(share(0.0, &[0.0, 0.0], 3, F, C), 1.0 / 3.0));
        assert!(close(share(500.0, &[], 3, F, C), 1.0 / 3.0));
        assert!(close(share(0.0, &[], 1, F, C), 1.0));
        assert!(close(share(123.0, &[], 1, F, C), 1.0));
    }

    #[test]
    fn even_demand_gives_even_shares() {
        let s = shares(&[Some(700.0), Some(700.0), Some(700.0)], F, C);
        for w in s {
            assert!(close(w, 1.0 / 3.0));
        }
    }

    #[test]
    fn skewed_demand_gives_proportional_shares() {
        let s = shares(&[Some(1600.0), Some(200.0), Some(200.0)], 0.0, C);
        assert!(
            close(s[0], 0.8) && close(s[1], 0.1) && close(s[2], 0.1),
            "{s:?}"
        );
        let s = shares(&[Some(1600.0), Some(200.0), Some(200.0)], F, C);
        assert!(close(s[0], F + (1.0 - 3.0 * F) * 0.8), "{s:?}");
        assert!(close(share(200.0, &[1600.0, 200.0], 3, F, C), s[1]));
    }

    #[test]
    fn an_idle_node_keeps_its_floor() {
        let s = shares(&[Some(0.0), Some(1000.0), Some(1000.0)], F, C);
        assert!(close(s[0], F));
        assert!(close(s[1], (1.0 - F) / 2.0));
    }

    #[test]
    fn below_the_ceiling_spare_capacity_is_spread_evenly() {
        // 10% of the ceiling offered, all at node 1: the 900/s nobody uses is split evenly, so
        // the idle nodes can take traffic at once, and node 1 keeps more than its demand.
        let s = shares(&[Some(0.0), Some(100.0), Some(0.0)], F, C);
        let k = 1.0 - 3.0 * F;
        assert!(close(s[0], F + k * 0.3), "{s:?}");
        assert!(close(s[1], F + k * 0.4), "{s:?}");
        assert!(close(s[2], s[0]), "{s:?}");
        assert!(close(share(0.0, &[100.0, 0.0], 3, F, C), s[0]));
        // At the ceiling there is nothing to spread: shares follow demand.
        let s = shares(&[Some(500.0), Some(250.0), Some(250.0)], 0.0, C);
        assert!(close(s[0], 0.5) && close(s[1], 0.25), "{s:?}");
        // No demand anywhere: even, whatever the ceiling (a closed instance too).
        for c in [0.0, 1.0, C] {
            let s = shares(&[Some(0.0), Some(0.0)], F, c);
            assert!(close(s[0], 0.5) && close(s[1], 0.5), "{s:?}");
        }
        // Silent peers keep 1/N: the spare part of the known nodes' budget is what is spread.
        let s = shares(&[Some(0.0), None, Some(100.0)], F, 900.0);
        assert!(close(s[1], 1.0 / 3.0), "{s:?}");
        // Known budget 600/s, 500/s spare: 250 each on top of demand.
        let k2 = 2.0 / 3.0 - 2.0 * F;
        assert!(close(s[0], F + k2 * 250.0 / 600.0), "{s:?}");
    }

    #[test]
    fn silent_peers_are_assumed_to_take_an_even_share() {
        let s = shares(&[Some(1000.0), None, Some(0.0)], F, C);
        assert!(close(s[1], 1.0 / 3.0));
        assert!(close(s[0] + s[2], 2.0 / 3.0));
        assert!(close(s[2], F));
    }

    /// A peer's report of `rps` offered at instance `i`.
    fn report_of(rps: f64) -> DemandReport {
        DemandReport {
            window_ms: 100,
            instances: vec![InstanceDemand {
                instance: "i".into(),
                offered_rps: rps,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn tracker_ignores_unknown_and_stale_peers() {
        let sec = 1_000_000_000;
        // Reports go stale after half a second, before the peer is gone (GONE_AFTER).
        let mut t = DemandTracker::new(1, sec / 10, sec / 2, F);
        let mut scratch = Vec::new();
        t.set_serving(&[1, 2, 3], 1, 0);
        t.sample(0, [("i", 0)].into_iter());
        let r = t.sample(sec / 10, [("i", 100)].into_iter());
        assert_eq!(r.instances[0].offered_rps, 1000.0);
        assert_eq!(r.window_ms, 100);
        // Node 9 does not serve: ignored. Nodes 2, 3 not heard from: 1/3 for us.
        t.record_peer(9, &report_of(1e9), sec);
        assert!(close(t.share_for("i", C, sec, &mut scratch), 1.0 / 3.0));
        t.record_peer(2, &report_of(1000.0), sec);
        t.record_peer(3, &report_of(2000.0), sec);
        let expect = F + (1.0 - 3.0 * F) * 0.25;
        assert!(close(t.share_for("i", C, sec, &mut scratch), expect));
        // 0.6 s later both reports are stale, the peers not yet gone: back to 1/3.
        let later = sec + sec * 6 / 10;
        assert!(close(t.share_for("i", C, later, &mut scratch), 1.0 / 3.0));
        // Node 3 leaves: we split with node 2 only.
        t.set_serving(&[1, 2], 1, sec);
        let expect = F + (1.0 - 2.0 * F) * 0.5;
        assert!(close(t.share_for("i", C, sec, &mut scratch), expect));
        // Node 2 goes silent for longer than GONE_AFTER: it no longer counts, we take it all.
        assert!(close(
            t.share_for("i", C, sec + GONE_AFTER + 1, &mut scratch),
            1.0
        ));
        assert_eq!(t.n_nodes(sec + GONE_AFTER + 1), 1);
        // It reports again: it counts again.
        t.record_peer(2, &report_of(1000.0), 5 * sec);
        assert_eq!(t.n_nodes(5 * sec), 2);
        // A peer that joins and has not reported yet counts (1/N) until GONE_AFTER passes.
        t.set_serving(&[1, 2, 4], 1, 5 * sec);
        assert_eq!(t.n_nodes(5 * sec), 3);
        assert_eq!(t.n_nodes(5 * sec + GONE_AFTER + 1), 1);
    }

    #[test]
    fn a_peer_found_down_stops_counting_at_once_and_counts_again_when_heard() {
        let sec = 1_000_000_000;
        let mut t = DemandTracker::new(1, sec / 10, sec / 2, F);
        let mut scratch = Vec::new();
        t.set_serving(&[1, 2, 3], 1, 0);
        t.sample(0, [("i", 0)].into_iter());
        t.sample(sec / 10, [("i", 10)].into_iter()); // 100/s
        t.record_peer(2, &report_of(800.0), sec / 10);
        t.record_peer(3, &report_of(100.0), sec / 10);
        let before = t.share_for("i", C, sec / 10, &mut scratch);
        assert!(before < 0.2, "{before}");
        // Node 2 (80% of the demand) is found down 50 ms later: its share is ours and node 3's
        // at once, not after GONE_AFTER, and its last report no longer counts.
        t.mark_down(2);
        let now = sec / 10 + sec / 20;
        assert_eq!(t.n_nodes(now), 2);
        assert_eq!(t.live_nodes(now), vec![1, 3]);
        assert!(
            close(t.share_for("i", C, now, &mut scratch), 0.5),
            "{}",
            t.share_for("i", C, now, &mut scratch)
        );
        // A membership refresh does not bring it back; a report from it does.
        t.set_serving(&[1, 2, 3], 1, now);
        assert_eq!(t.n_nodes(now), 2);
        t.record_peer(2, &report_of(800.0), now);
        assert_eq!(t.n_nodes(now), 3);
        // Unknown nodes are ignored.
        t.mark_down(9);
        assert_eq!(t.n_nodes(now), 3);
    }

    proptest! {
        #[test]
        fn shares_sum_to_one(
            demands in proptest::collection::vec(proptest::option::weighted(0.8, 0.0f64..1e6), 1..12),
            floor in 0.0f64..0.5,
            ceiling in 0.0f64..2e6,
        ) {
            let s = shares(&demands, floor, ceiling);
            let sum: f64 = s.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "sum {sum} of {s:?}");
            for (w, d) in s.iter().zip(&demands) {
                prop_assert!(*w >= 0.0 && *w <= 1.0);
                if d.is_some() {
                    prop_assert!(*w + 1e-12 >= floor.min(1.0 / demands.len() as f64));
                }
            }
        }

        #[test]
        fn share_agrees_with_shares(
            own in 0.0f64..1e6,
            peers in proptest::collection::vec(0.0f64..1e6, 0..6),
            silent in 0usize..3,
            ceiling in 0.0f64..2e6,
        ) {
            let mut all = vec![Some(own)];
            all.extend(peers.iter().map(|p| Some(*p)));
            all.extend(std::iter::repeat_n(None, silent));
            let n = all.len();
            prop_assert!(
                (share(own, &peers, n, F, ceiling) - shares(&all, F, ceiling)[0]).abs() < 1e-12
            );
        }

        #[test]
        fn more_demand_never_means_a_smaller_share(
            own in 0.0f64..1e6, more in 0.0f64..1e6,
            peers in proptest::collection::vec(0.0f64..1e6, 0..6),
            ceiling in 0.0f64..2e6,
        ) {
            let n = peers.len() + 1;
            prop_assert!(
                share(own + more, &peers, n, F, ceiling) + 1e-12 >= share(own, &peers, n, F, ceiling)
            );
        }

        #[test]
        fn below_the_ceiling_every_node_is_given_its_demand(
            weights in proptest::collection::vec(0.0f64..1.0, 1..8),
            load in 0.0f64..1.0,
            ceiling in 1.0f64..1e6,
        ) {
            // Demands summing to `load` of the ceiling: each node's limit covers its demand,
            // short of at most the floors of the other nodes.
            let sum: f64 = weights.iter().sum::<f64>().max(1e-9);
            let demands: Vec<Option<f64>> =
                weights.iter().map(|w| Some(w / sum * load * ceiling)).collect();
            let n = demands.len() as f64;
            for (w, d) in shares(&demands, F, ceiling).iter().zip(&demands) {
                let d = d.unwrap();
                prop_assert!(w * ceiling + (n - 1.0) * F * ceiling + 1e-6 >= d, "{w} {d}");
            }
        }
    }
}
