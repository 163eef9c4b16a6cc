//! Cluster shares of instance ceilings, following demand.
//!
//! Every node measures the rate at which requests *arrive* at each instance's limiter (its
//! offered rate, throttled requests included: that is the demand, not what was admitted), sends
//! it to its peers every ~100 ms ([`DemandReport`]), and early when calls move to or away from
//! it ([`crate::moves`]), and sets its own share of each ceiling from the latest reports with
//! [`share`]. At overload every node's share is below its own demand, so nothing is wasted and
//! the cluster admits C; below the ceiling every node's share is above its demand, so nothing
//! is throttled. Only a node with (almost) no demand wastes capacity: its floor, kept small for
//! that reason.
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

use crate::moves::{Reading, Total, Watch};
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

/// For how long after its start a node looks at all its shared counters for calls arriving
/// (see [`crate::moves`]), rather than at the busy ones only: a restarted node's calls come back
/// when a load balancer sees it ready, not at once (the throttling benchmark lost 5% of a
/// per-second limit in a second where they came 100 ms after its first report). A look costs
/// about 1.3 us a counter, so this is the one second in which the looks cost more than the
/// periodic reports; beyond a thousand counters only the busy ones are watched (see
/// `moves::WATCH_ALL_AT_MOST`). After it, looks stop until a peer goes down or comes back.
const WATCH_ALL_AFTER_START: Nanos = 1_000_000_000;

/// A peer's latest report, stamped with when it arrived (on this node's clock).
struct PeerDemand {
    received: Nanos,
    rates: HashMap<String, f64>,
    /// Whether the peer had measured its rates (a process that just started has not).
    measured: bool,
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

/// The counters' totals at a sample.
type Totals = HashMap<String, Total>;

/// The rate of calls at each counter in `counts` since `old`, `elapsed` earlier (a counter new
/// since then counts from zero).
fn rates(counts: &Totals, old: &Totals, elapsed: Nanos) -> HashMap<String, f64> {
    let dt = elapsed as f64 / 1e9;
    counts
        .iter()
        .map(|(k, t)| {
            let before = old.get(k).map_or(0, |o| o.arrivals);
            (k.clone(), t.arrivals.saturating_sub(before) as f64 / dt)
        })
        .collect()
}

fn totals<'a>(readings: impl Iterator<Item = Reading<'a>>) -> Totals {
    readings
        .map(|r| (r.key.to_string(), Total::from(&r)))
        .collect()
}

/// The mutable side of shares: samples of this node's arrivals, peers' reports, who serves.
pub(crate) struct DemandTracker {
    self_id: u64,
    peers: Vec<Peer>,
    reports: HashMap<u64, PeerDemand>,
    /// (time, totals per counter), oldest first.
    samples: VecDeque<(Nanos, Totals)>,
    own: HashMap<String, f64>,
    own_window: Nanos,
    /// The counters looked at between reports, for calls that moved.
    watch: Watch,
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
            watch: Watch::default(),
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
    ///
    /// Returns whether it counted until now: then its calls are about to move to the others
    /// (see [`measure_afresh`](Self::measure_afresh)).
    pub(crate) fn mark_down(&mut self, node: u64) -> bool {
        let Some(p) = self.peers.iter_mut().find(|p| p.id == node) else {
            return false;
        };
        let was_up = !p.down;
        p.down = true;
        self.reports.remove(&node);
        was_up
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

    /// Records a peer's report, received at `now`. Returns whether the peer is back (it was
    /// down, or this is the first report of its restarted process): then calls are about to
    /// move back to it (see [`measure_afresh`](Self::measure_afresh)).
    pub(crate) fn record_peer(&mut self, node: u64, report: &DemandReport, now: Nanos) -> bool {
        // Reports from nodes that do not serve are ignored: they must not take a share.
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == node) else {
            return false;
        };
        if node == self.self_id {
            return false;
        }
        peer.heard = peer.heard.max(now);
        // A report that measured nothing comes from a process that just started: if the one
        // before did measure, the peer restarted, and calls are about to move back to it. (Until
        // it measures, it counts as idle, as it counts itself: it gets calls only once a load
        // balancer sees it ready, and its early reports follow them within milliseconds; taking
        // an even share before that left a third of a per-second limit unused for as long as
        // it took to get ready.)
        let measured = report.window_ms > 0;
        let restarted = !measured && self.reports.get(&node).is_some_and(|r| r.measured);
        let back = peer.down || restarted;
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
                measured,
            },
        );
        back
    }

    /// Starts measuring this node's rates afresh at `now`, keeping the rates measured so far
    /// until there is enough to measure again: a peer just went down or came back, so calls
    /// are about to move to or away from this node, and the early reports that follow them
    /// should measure only what came after (a rate measured across the move is the old and the
    /// new one mixed, which left the node that took a dead node's calls short of its share for
    /// a report period in the throttling benchmark).
    pub(crate) fn measure_afresh<'a>(
        &mut self,
        now: Nanos,
        counters: impl Iterator<Item = Reading<'a>>,
    ) {
        let counters = counters.map(|r| (r.key, Total::from(&r)));
        self.watch.afresh(now, counters, &self.own, self.window);
    }

    /// Records the arrival counters at `now` and measures this node's offered rates over the
    /// newest sample at least one window old (so windows are one to two report periods long).
    pub(crate) fn sample<'a>(
        &mut self,
        now: Nanos,
        counters: impl Iterator<Item = Reading<'a>>,
    ) -> DemandReport {
        let counts = totals(counters);
        if self.samples.is_empty() {
            // Just started: calls are about to arrive where there were none, once a load
            // balancer sees this node ready, which may take a while.
            let counters = counts.iter().map(|(k, t)| (k.as_str(), *t));
            self.watch
                .afresh(now, counters, &self.own, WATCH_ALL_AFTER_START);
        }
        // Drop samples made obsolete by a younger one that is still old enough.
        while self.samples.len() >= 2 && now.saturating_sub(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        // Over at least 40% of a window (a node that just started has less).
        let min_window = self.window * 2 / 5;
        if let Some((then, old)) = self.samples.front()
            && now.saturating_sub(*then) >= min_window
        {
            let mut measured = rates(&counts, old, now - then);
            // Counters measured afresh since (an early report, a peer down or back) are
            // measured from there, not across the move.
            self.watch
                .on_sample(now, &counts, &mut measured, &self.own, min_window);
            self.own = measured;
            self.own_window = now - then;
        }
        self.samples.push_back((now, counts));
        // Bounded even if called in a tight loop with a frozen clock.
        while self.samples.len() > 64 {
            self.samples.pop_front();
        }
        self.report()
    }

    /// An early report, if calls have moved at a watched counter since its rate was measured
    /// (see [`crate::moves`]; `None`: none has), with the moved counters' new rates.
    pub(crate) fn sample_early<'a>(
        &mut self,
        now: Nanos,
        read: impl Fn(&str) -> Option<Reading<'a>>,
    ) -> Option<DemandReport> {
        let measured_over = self.watch.look(now, &mut self.own, read)?;
        if self.own_window == 0 {
            // Measured now, if only over a few ms: no longer a node with no rate at all.
            self.own_window = measured_over.max(1);
        }
        Some(self.report())
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

    /// Counter `key`, shared under a ceiling of `C`, at `arrivals` calls of which `refused`
    /// were refused.
    fn counted(key: &str, arrivals: u64, refused: u64) -> std::iter::Once<Reading<'_>> {
        std::iter::once(Reading {
            key,
            arrivals,
            refused,
            ceiling: Some(C),
        })
    }

    fn at(key: &str, arrivals: u64) -> std::iter::Once<Reading<'_>> {
        counted(key, arrivals, 0)
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
        t.sample(0, at("i", 0));
        let r = t.sample(sec / 10, at("i", 100));
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

    /// An early look at `t` with counter `i` at `arrivals` calls of which `refused` were
    /// refused: the rate it reports early, if it does.
    fn look(t: &mut DemandTracker, now: Nanos, arrivals: u64, refused: u64) -> Option<f64> {
        let r = counted("i", arrivals, refused).next().unwrap();
        t.sample_early(now, |k| (k == "i").then_some(r))
            .map(|report| report.instances[0].offered_rps)
    }

    #[test]
    fn moved_calls_are_reported_early() {
        const MS: Nanos = 1_000_000;
        let mut t = DemandTracker::new(1, 100 * MS, 500 * MS, F);
        t.set_serving(&[1, 2], 1, 0);
        // 200/s, measured over 100 ms; counter j idle.
        t.sample(0, at("i", 0).chain(at("j", 0)));
        t.sample(100 * MS, at("i", 20).chain(at("j", 0)));
        assert!(close(t.own_demand("i"), 200.0));
        // For a second after its start a node watches all its counters, idle ones too.
        assert!(t.watch.is_watched("i") && t.watch.is_watched("j"));
        // 10 ms later at that rate (2 calls): no early report (what chance gives is in
        // `moves::tests`).
        assert_eq!(look(&mut t, 110 * MS, 22, 1), None);
        // 13 calls in 20 ms (650/s) with none refused: a burst the limiter took, not moved.
        assert_eq!(look(&mut t, 120 * MS, 33, 0), None);
        // With calls refused it has moved: the rate over those 20 ms.
        assert_eq!(look(&mut t, 120 * MS, 33, 1), Some(650.0));
        // The periodic sample measures it from the early report: 52 calls in 80 ms.
        t.sample(200 * MS, at("i", 85));
        assert!(close(t.own_demand("i"), 650.0), "{}", t.own_demand("i"));
        // A rise claims at most the ceiling: 30 calls in 10 ms read 3,000/s.
        assert_eq!(look(&mut t, 210 * MS, 115, 2), Some(C));
        // A rate that fell away is seen too, refusals or not: no calls in 30 ms where 30 were
        // expected.
        assert_eq!(look(&mut t, 240 * MS, 115, 2), Some(0.0));
        // Nothing moved since: no early report.
        assert_eq!(look(&mut t, 250 * MS, 115, 2), None);
        // A periodic sample too soon after an early report keeps the early rate.
        t.sample(260 * MS, at("i", 116));
        assert!(close(t.own_demand("i"), 0.0), "{}", t.own_demand("i"));
        t.sample(400 * MS, at("i", 140)); // 25 calls in 160 ms
        assert!(close(t.own_demand("i"), 156.25), "{}", t.own_demand("i"));
        // Measured afresh (a peer went down): the rate stands, and the next look measures from
        // there alone: 9 calls in 10 ms, refused, where 140 came before.
        t.measure_afresh(400 * MS, at("i", 140));
        assert!(close(t.own_demand("i"), 156.25));
        assert_eq!(look(&mut t, 410 * MS, 149, 3), Some(900.0));
        t.sample(420 * MS, at("i", 150));
        assert!(close(t.own_demand("i"), 900.0), "{}", t.own_demand("i"));
        // Later only the busy ones, but after a peer event all of them for a window.
        t.sample(1500 * MS, at("i", 150).chain(at("j", 0)));
        t.sample(1600 * MS, at("i", 200).chain(at("j", 0)));
        assert!(t.watch.is_watched("i") && !t.watch.is_watched("j"));
        t.measure_afresh(1600 * MS, at("i", 200).chain(at("j", 0)));
        assert!(t.watch.is_watched("j"));
        t.sample(1800 * MS, at("i", 300).chain(at("j", 0)));
        assert!(t.watch.is_watched("i") && !t.watch.is_watched("j"));
    }

    #[test]
    fn calls_that_left_mid_way_are_seen_without_what_came_before() {
        const MS: Nanos = 1_000_000;
        let mut t = DemandTracker::new(1, 100 * MS, 500 * MS, F);
        t.set_serving(&[1, 2], 1, 0);
        t.sample(0, at("i", 0));
        t.sample(100 * MS, at("i", 36)); // 360/s
        // Still 360/s for 40 ms, then none: seen 30 ms after they stopped, over the looks
        // since (over the 70 ms since the sample, the 14 calls of the first 40 ms hide it).
        let mut arrivals = 36;
        for (at_ms, calls) in [(110, 4), (120, 3), (130, 4), (140, 3), (150, 0), (160, 0)] {
            arrivals += calls;
            assert_eq!(look(&mut t, at_ms * MS, arrivals, 0), None, "at {at_ms} ms");
        }
        assert_eq!(look(&mut t, 170 * MS, arrivals, 0), Some(0.0));
        // Looks are made only for a second after an event that moves calls (here, the start):
        // later the same drop waits for the periodic report...
        t.sample(2000 * MS, at("i", 2036)); // 1,000/s since
        let mut arrivals = 2036;
        for at_ms in [2010, 2020, 2030, 2040, 2050] {
            arrivals += 10;
            assert_eq!(look(&mut t, at_ms * MS, arrivals, 0), None);
        }
        for at_ms in [2060, 2070, 2080, 2090] {
            assert_eq!(look(&mut t, at_ms * MS, arrivals, 0), None, "at {at_ms} ms");
        }
        // ...unless a peer went down or came back.
        t.measure_afresh(2090 * MS, at("i", arrivals));
        assert_eq!(look(&mut t, 2120 * MS, arrivals, 0), Some(0.0));
    }

    #[test]
    fn a_restarted_peer_is_back_at_its_first_report_and_counts_as_idle_until_it_measures() {
        const MS: Nanos = 1_000_000;
        let mut t = DemandTracker::new(2, 100 * MS, 500 * MS, F);
        let mut scratch = Vec::new();
        t.set_serving(&[1, 2, 3], 2, 0);
        t.sample(0, at("i", 0));
        t.sample(100 * MS, at("i", 90)); // 900/s
        t.record_peer(3, &report_of(100.0), 100 * MS);
        assert!(
            !t.record_peer(1, &report_of(500.0), 100 * MS),
            "first heard: not back"
        );
        // Node 1 restarts without being found down: its first report measured nothing.
        let mut fresh = DemandTracker::new(1, 100 * MS, 500 * MS, F);
        fresh.set_serving(&[1, 2, 3], 1, 0);
        let first = fresh.sample(150 * MS, at("i", 0));
        assert_eq!(first.window_ms, 0);
        assert!(
            t.record_peer(1, &first, 150 * MS),
            "back: calls are about to move"
        );
        assert!(!t.record_peer(1, &first, 160 * MS), "back once");
        // Idle until it measures, for it and for us alike: its floor, and we split the rest.
        fresh.record_peer(2, &report_of(900.0), 160 * MS);
        fresh.record_peer(3, &report_of(100.0), 160 * MS);
        assert!(close(fresh.share_for("i", C, 160 * MS, &mut scratch), F));
        let ours = t.share_for("i", C, 160 * MS, &mut scratch);
        assert!(close(ours, F + (1.0 - 3.0 * F) * 0.9), "{ours}");
    }

    #[test]
    fn a_peer_found_down_stops_counting_at_once_and_counts_again_when_heard() {
        let sec = 1_000_000_000;
        let mut t = DemandTracker::new(1, sec / 10, sec / 2, F);
        let mut scratch = Vec::new();
        t.set_serving(&[1, 2, 3], 1, 0);
        t.sample(0, at("i", 0));
        t.sample(sec / 10, at("i", 10)); // 100/s
        t.record_peer(2, &report_of(800.0), sec / 10);
        t.record_peer(3, &report_of(100.0), sec / 10);
        let before = t.share_for("i", C, sec / 10, &mut scratch);
        assert!(before < 0.2, "{before}");
        // Node 2 (80% of the demand) is found down 50 ms later: its share is ours and node 3's
        // at once, not after GONE_AFTER, and its last report no longer counts.
        assert!(
            t.mark_down(2),
            "it counted until now: its calls are about to move"
        );
        assert!(!t.mark_down(2), "already down");
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
        assert!(t.record_peer(2, &report_of(800.0), now), "back");
        assert!(!t.record_peer(2, &report_of(800.0), now), "not back twice");
        assert_eq!(t.n_nodes(now), 3);
        // Unknown nodes are ignored.
        assert!(!t.mark_down(9));
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
