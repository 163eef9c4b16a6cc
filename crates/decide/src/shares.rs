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

/// How far the calls counted at a counter since the last sample must stray from what its
/// measured rate predicts before the rate counts as moved ([`DemandTracker::moved`]): more than
/// this many calls, and more than this fraction of the prediction. Chance (Poisson) alone
/// rarely strays that far: at 360 calls/s over 40 ms, 14.4 are expected, and 6 or fewer or 23
/// or more arrive about once in a hundred looks.
const MOVED_MIN_CALLS: f64 = 8.0;
const MOVED_FRACTION: f64 = 0.5;
/// The same, for a rise where calls were refused (the refusals are evidence of their own, so
/// fewer calls suffice: at 360 calls/s, 20 ms rather than 40), and at least this many standard
/// deviations of a Poisson count: at 200 calls/s over 10 ms, 2 are expected and 8 needed, which
/// chance gives about once in a thousand looks.
const ROSE_MIN_CALLS: f64 = 4.0;
const ROSE_DEVIATIONS: f64 = 4.0;

/// One demand counter as read at a moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reading<'a> {
    pub(crate) key: &'a str,
    /// Calls that reached it (its offered load).
    pub(crate) arrivals: u64,
    /// Calls it refused.
    pub(crate) refused: u64,
    /// The cluster-wide rate the nodes share by demand (an instance's ceiling, a per-second
    /// policy limit); `None` for counters whose demand sizes leases of window budgets.
    pub(crate) ceiling: Option<f64>,
}

/// A counter's totals at a sample: (arrivals, refused).
type Totals = HashMap<String, (u64, u64)>;

/// The rate of calls at each counter in `counts` since `old`, `elapsed` earlier (a counter new
/// since then counts from zero).
fn rates(counts: &Totals, old: &Totals, elapsed: Nanos) -> HashMap<String, f64> {
    let dt = elapsed as f64 / 1e9;
    counts
        .iter()
        .map(|(k, (v, _))| {
            let before = old.get(k).map_or(0, |o| o.0);
            (k.clone(), v.saturating_sub(before) as f64 / dt)
        })
        .collect()
}

fn totals<'a>(readings: impl Iterator<Item = Reading<'a>>) -> Totals {
    readings
        .map(|r| (r.key.to_string(), (r.arrivals, r.refused)))
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
    /// A fast estimate of each counter's rate, updated at every sample and every look for
    /// moved calls (see [`FAST_TAU`]), and when it was last updated.
    fast: HashMap<String, Fast>,
    fast_at: Nanos,
    window: Nanos,
    stale_after: Nanos,
    floor: f64,
}

/// The time constant of [`DemandTracker`]'s fast rate estimates: two looks for moved calls.
/// Where calls moved in the middle of a measuring window, the rate over the window is the old
/// and the new one mixed; the fast estimate is mostly the new one (after 40 ms, 86% of it).
const FAST_TAU: Nanos = 20_000_000;

/// A counter's total at the last look, and its fast rate estimate.
struct Fast {
    count: u64,
    rate: f64,
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
            fast: HashMap::new(),
            fast_at: 0,
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

    ///
    /// Returns whether the peer is back (it was down, or this is the first report of its
    /// restarted process): then calls are about to move back to it (see
    /// [`measure_afresh`](Self::measure_afresh)).
    pub(crate) fn record_peer(&mut self, node: u64, report: &DemandReport, now: Nanos) -> bool {
        // Reports from nodes that do not serve are ignored: they must not take a share.
        let Some(peer) = self.peers.iter_mut().find(|p| p.id == node) else {
            return false;
        };
        if node == self.self_id {
            return false;
        }
        peer.heard = peer.heard.max(now);
        let back = peer.down || (report.window_ms == 0 && self.reports.contains_key(&node));
        peer.down = false;
        if report.window_ms == 0 {
            // Not measured yet (its process just started): it counts as serving, at the even
            // share a peer without a report is assumed to take, as it assumes itself (see
            // `share_for`), rather than as idle, which would leave it its floor while the calls
            // a load balancer sends a node that just became ready arrive.
            self.reports.remove(&node);
            return back;
        }
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
        back
    }

    /// Updates the fast rate estimates from the counters' totals at `now`.
    fn observe_fast<'a>(&mut self, now: Nanos, counts: impl Iterator<Item = (&'a str, u64)>) {
        let dt = now.saturating_sub(self.fast_at);
        self.fast_at = now;
        let alpha = 1.0 - (-(dt as f64) / FAST_TAU as f64).exp();
        let seconds = dt as f64 / 1e9;
        for (key, count) in counts {
            match self.fast.get_mut(key) {
                Some(f) if dt > 0 => {
                    let rate = count.saturating_sub(f.count) as f64 / seconds;
                    f.rate += alpha * (rate - f.rate);
                    f.count = count;
                }
                Some(_) => {}
                None => {
                    let rate = self.own_demand(key);
                    self.fast.insert(key.to_string(), Fast { count, rate });
                }
            }
        }
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
        self.samples.clear();
        self.samples.push_back((now, totals(counters)));
    }

    /// Records the arrival counters at `now` and measures this node's offered rates over the
    /// newest sample at least one window old (so windows are one to two report periods long).
    pub(crate) fn sample<'a>(
        &mut self,
        now: Nanos,
        counters: impl Iterator<Item = Reading<'a>>,
    ) -> DemandReport {
        let counts = totals(counters);
        self.observe_fast(now, counts.iter().map(|(k, (n, _))| (k.as_str(), *n)));
        // Counters gone since (swept policies) are forgotten here too.
        self.fast.retain(|k, _| counts.contains_key(k));
        // Drop samples made obsolete by a younger one that is still old enough.
        while self.samples.len() >= 2 && now.saturating_sub(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        // Over at least 40% of a window: right after an early sample (which starts the
        // measuring afresh) the rates it measured stand until there is enough to measure.
        if let Some((then, old)) = self.samples.front()
            && now.saturating_sub(*then) >= self.window * 2 / 5
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

    /// Whether calls at shared counter `r` have moved to or away from this node (a peer died
    /// and its calls came here, or they went back to it after its restart) in the `dt` seconds
    /// since the sample `old`, by more than chance explains. Then an early report
    /// ([`sample_early`](Self::sample_early)) lets the shares follow within tens of ms rather
    /// than one to two report periods, which is what per-second limits lose in the second a
    /// node dies or returns.
    ///
    /// A rise counts only where the counter has refused calls since then: a burst that the
    /// limiter's tolerance absorbed is no reason to take capacity from the other nodes (an
    /// earlier version without this check read a burst of 30 calls far below the ceiling as a
    /// rate above it, and another node throttled calls under its share; issue 17). A fall
    /// counts anywhere: it only gives capacity back.
    fn moved_at(&self, r: &Reading<'_>, old: &Totals, dt: f64) -> bool {
        if dt <= 0.0 {
            return false;
        }
        let Some(ceiling) = r.ceiling else {
            return false;
        };
        let (arrived, refused) = old.get(r.key).copied().unwrap_or((0, 0));
        let got = r.arrivals.saturating_sub(arrived) as f64;
        let rate = self.own_demand(r.key);
        let expected = rate * dt;
        let refusing = r.refused > refused;
        // A rise that is not there costs capacity (the node holds a share it does not use)
        // while a fall that is not there costs next to nothing (the node's share goes to nodes
        // that use it, and below the ceiling the spare is spread anyway), so a rise must stand
        // out further: four standard deviations of a Poisson count as well.
        let rose = ROSE_MIN_CALLS
            .max(ROSE_DEVIATIONS * expected.sqrt())
            .max(MOVED_FRACTION * expected);
        let fell = MOVED_MIN_CALLS.max(MOVED_FRACTION * expected);
        // A rate already at the ceiling cannot claim more early (see `sample_early`).
        (refusing && rate < ceiling && got > expected + rose) || got < expected - fell
    }

    /// An early sample, if a rate has [`moved`](Self::moved_at) (`None`: none has): each shared
    /// counter whose rate moved gets
    /// the rate measured since the last sample only (older samples would pull it back toward
    /// the old one), and later samples measure from now.
    ///
    /// A risen rate claims at most the ceiling (or its last measured rate, if more): a burst
    /// read as a rate over a few ms can then at worst halve the other nodes' shares of a
    /// ceiling their demand fits in, until the next periodic report (measured over a whole
    /// window) corrects it.
    pub(crate) fn sample_early<'a>(
        &mut self,
        now: Nanos,
        counters: impl Iterator<Item = Reading<'a>>,
    ) -> Option<DemandReport> {
        let readings: Vec<Reading<'_>> = counters.collect();
        self.observe_fast(now, readings.iter().map(|r| (r.key, r.arrivals)));
        let (then, old) = self.samples.back()?;
        let dt = now.saturating_sub(*then);
        let moved: Vec<&Reading<'_>> = readings
            .iter()
            .filter(|r| self.moved_at(r, old, dt as f64 / 1e9))
            .collect();
        if moved.is_empty() {
            return None;
        }
        let short = rates(&totals(readings.iter().copied()), old, dt);
        for r in moved {
            let Some(ceiling) = r.ceiling else { continue };
            let measured = self.own_demand(r.key);
            let rate = short.get(r.key).copied().unwrap_or(0.0);
            // The fast estimate says more of the new rate where calls moved within the time
            // measured; a rise takes the higher of the two, a fall the lower.
            let fast = self.fast.get(r.key).map_or(rate, |f| f.rate);
            let rate = if rate > measured {
                rate.max(fast).min(measured.max(ceiling))
            } else {
                rate.min(fast)
            };
            self.own.insert(r.key.to_string(), rate);
        }
        self.own_window = dt;
        self.samples.clear();
        self.samples.push_back((now, totals(readings.into_iter())));
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

    /// The demands at `key` of the live peers whose report is fresh.
    fn fresh_peer_demands<'a>(
        &'a self,
        key: &'a str,
        now: Nanos,
    ) -> impl Iterator<Item = f64> + 'a {
        self.live_peers(now).filter_map(move |id| {
            let r = self.reports.get(&id)?;
            (now.saturating_sub(r.received) <= self.stale_after)
                .then(|| r.rates.get(key).copied().unwrap_or(0.0))
        })
    }

    /// This node's share of `instance`'s ceiling at `now`.
    pub(crate) fn share_for(
        &self,
        instance: &str,
        ceiling_rps: f64,
        now: Nanos,
        scratch: &mut Vec<f64>,
    ) -> f64 {
        if self.own_window == 0 {
            // Nothing measured yet: the even share its peers assume for it (see `record_peer`).
            return 1.0 / self.n_nodes(now) as f64;
        }
        scratch.clear();
        scratch.extend(self.fresh_peer_demands(instance, now));
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

    /// Whether any of `counters` moved since `t`'s last sample.
    fn moved<'a>(
        t: &DemandTracker,
        now: Nanos,
        mut counters: impl Iterator<Item = Reading<'a>>,
    ) -> bool {
        let (then, old) = t.samples.back().expect("a sample");
        let dt = (now - then) as f64 / 1e9;
        counters.any(|r| t.moved_at(&r, old, dt))
    }

    #[test]
    fn moved_calls_are_reported_early() {
        const MS: Nanos = 1_000_000;
        let mut t = DemandTracker::new(1, 100 * MS, 500 * MS, F);
        t.set_serving(&[1, 2], 1, 0);
        // 200/s, measured over 100 ms.
        t.sample(0, at("i", 0));
        t.sample(100 * MS, at("i", 20));
        assert!(close(t.own_demand("i"), 200.0));
        // 20 ms later at the same rate (4 calls), or what chance gives (0 or 8), calls refused
        // or not: not moved.
        for calls in [24, 20, 28] {
            assert!(!moved(&t, 120 * MS, counted("i", calls, 1)), "{calls}");
        }
        // 13 calls in 20 ms (650/s) with none refused: a burst the limiter took, not moved.
        assert!(!moved(&t, 120 * MS, counted("i", 33, 0)));
        // With calls refused it has moved, and so has a counter new since then.
        assert!(moved(&t, 120 * MS, counted("i", 33, 1)));
        let new = counted("i", 24, 0).chain(counted("j", 9, 2));
        assert!(moved(&t, 120 * MS, new));
        // Counters without a ceiling (window budgets) never move early.
        let windowed = std::iter::once(Reading {
            ceiling: None,
            ..counted("w", 50, 50).next().unwrap()
        });
        assert!(!moved(&t, 120 * MS, at("i", 24).chain(windowed)));
        // The early report is the rate measured over those 20 ms alone.
        let r = t.sample_early(120 * MS, counted("i", 33, 1)).unwrap();
        assert!(close(r.instances[0].offered_rps, 650.0), "{r:?}");
        // Later samples measure from the early one: 52 calls in 80 ms.
        t.sample(200 * MS, at("i", 85));
        assert!(close(t.own_demand("i"), 650.0), "{}", t.own_demand("i"));
        // A rise claims at most the ceiling: 30 calls in 10 ms read 3,000/s.
        let r = t.sample_early(210 * MS, counted("i", 115, 2)).unwrap();
        assert!(close(r.instances[0].offered_rps, C), "{r:?}");
        // A rate that fell away is seen too, refusals or not: 0 calls in 30 ms where 30 were
        // expected; its early report is the rate measured since the last sample.
        assert!(moved(&t, 240 * MS, at("i", 115)));
        let r = t.sample_early(240 * MS, at("i", 115)).unwrap();
        assert!(close(r.instances[0].offered_rps, 0.0), "{r:?}");
        // Nothing moved: no early report.
        assert!(t.sample_early(250 * MS, at("i", 115)).is_none());
        // Measured afresh (a peer went down): the rate stands, and what follows is measured
        // from there alone: 9 calls in the 10 ms after it, refused, where 115 came before.
        t.sample(300 * MS, at("i", 130)); // 15 calls in 60 ms: 250/s
        assert!(close(t.own_demand("i"), 250.0), "{}", t.own_demand("i"));
        t.measure_afresh(300 * MS, at("i", 130));
        assert!(close(t.own_demand("i"), 250.0));
        let r = t.sample_early(310 * MS, counted("i", 139, 3)).unwrap();
        assert!(close(r.instances[0].offered_rps, 900.0), "{r:?}");
        // A periodic sample with too little since the last one keeps the rate it has.
        t.sample(320 * MS, at("i", 140));
        assert!(close(t.own_demand("i"), 900.0), "{}", t.own_demand("i"));
    }

    #[test]
    fn a_node_not_yet_measured_takes_the_even_share_and_is_given_it() {
        const MS: Nanos = 1_000_000;
        // Node 1 just started: it has sampled once, so it has no rate yet.
        let mut fresh = DemandTracker::new(1, 100 * MS, 500 * MS, F);
        let mut scratch = Vec::new();
        fresh.set_serving(&[1, 2, 3], 1, 0);
        let first = fresh.sample(0, at("i", 0));
        assert_eq!(first.window_ms, 0);
        // Its peers' reports (heavy demand at node 2) do not push it to its floor: it counts
        // on 1/3 until it has measured its own rate...
        fresh.record_peer(2, &report_of(900.0), MS);
        fresh.record_peer(3, &report_of(100.0), MS);
        assert!(close(fresh.share_for("i", C, MS, &mut scratch), 1.0 / 3.0));
        // ...and a peer that hears its first report leaves it that third, not its floor.
        let mut peer = DemandTracker::new(2, 100 * MS, 500 * MS, F);
        peer.set_serving(&[1, 2, 3], 2, 0);
        peer.sample(0, at("i", 0));
        peer.sample(100 * MS, at("i", 90)); // 900/s
        peer.mark_down(1);
        peer.record_peer(3, &report_of(100.0), 100 * MS);
        peer.record_peer(1, &first, 100 * MS);
        assert_eq!(peer.n_nodes(100 * MS), 3);
        let node_2 = peer.share_for("i", C, 100 * MS, &mut scratch);
        assert!(close(node_2, F + (2.0 / 3.0 - 2.0 * F) * 0.9), "{node_2}");
        // Once measured, it is a peer like the others.
        let r = fresh.sample(100 * MS, at("i", 30)); // 300/s
        let node_1 = fresh.share_for("i", C, 100 * MS, &mut scratch);
        assert!(
            close(node_1, F + (1.0 - 3.0 * F) * 300.0 / 1300.0),
            "{node_1}"
        );
        peer.record_peer(1, &r, 110 * MS);
        let node_2 = peer.share_for("i", C, 110 * MS, &mut scratch);
        assert!(
            close(node_2, F + (1.0 - 3.0 * F) * 900.0 / 1300.0),
            "{node_2}"
        );
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
