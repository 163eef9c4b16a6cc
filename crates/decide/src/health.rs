//! Passive health of one backend, and the smooth weighted round-robin that spreads an API's
//! requests over its backends: pure state machines on a caller's clock, no atomics, no I/O.
//!
//! Passive: nothing probes a backend on its own; the requests it serves say how it is. A
//! backend that fails (cannot be connected to, breaks off, times out or answers 5xx)
//! `failures_to_eject` times in a row is taken out for a back-off period, doubled at each
//! ejection in a row from `backoff_min` up to `backoff_max`. When the period is over, the next
//! request is sent to it on probation: a success lets it back in (and resets the back-off), a
//! failure takes it out again for the next period.

use crate::Nanos;
use std::time::Duration;

/// When a backend is taken out and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failures in a row that take a backend out.
    pub failures_to_eject: u32,
    /// The first back-off period.
    pub backoff_min: Duration,
    /// The longest back-off period.
    pub backoff_max: Duration,
}

impl Default for HealthPolicy {
    /// Three failures in a row; out for 1 s, 2 s, 4 s, ... up to 30 s.
    fn default() -> Self {
        HealthPolicy {
            failures_to_eject: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl HealthPolicy {
    /// The back-off after `ejections` ejections in a row (the first is 1).
    pub fn backoff(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(31);
        self.backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// Where a backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Taking requests.
    In,
    /// Taken out until the given time.
    Out { until: Nanos },
    /// One request is deciding whether it comes back; if it never reports (its client went
    /// away), another may probe after `until`.
    Probing { until: Nanos },
}

/// What a backend may take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// It is in.
    In,
    /// Its back-off is over: one request may go to it on probation, and this caller is it.
    Probe,
    /// It is out (or being probed by another request).
    Out,
}

/// One backend's passive health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    standing: Standing,
    /// Failures in a row while in.
    failures: u32,
    /// Ejections in a row (reset by a successful probe): the back-off's exponent.
    ejections: u32,
    /// When it last failed: when every backend is out, the one that failed longest ago is
    /// tried.
    last_failure: Option<Nanos>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            standing: Standing::In,
            failures: 0,
            ejections: 0,
            last_failure: None,
        }
    }
}

impl Health {
    /// Whether it is in with no failure counted: nothing a success would change.
    pub fn is_clean(&self) -> bool {
        self.standing == Standing::In && self.failures == 0
    }

    /// Whether it is in (what the `available` gauge shows).
    pub fn is_in(&self) -> bool {
        self.standing == Standing::In
    }

    pub fn last_failure(&self) -> Option<Nanos> {
        self.last_failure
    }

    /// What it may take at `now`. A backend whose back-off is over answers
    /// [`Availability::Probe`] once: the caller must send it a request and report.
    pub fn poll(&mut self, now: Nanos, policy: &HealthPolicy) -> Availability {
        match self.standing {
            Standing::In => Availability::In,
            Standing::Out { until } | Standing::Probing { until } if now >= until => {
                self.standing = Standing::Probing {
                    until: now.saturating_add(nanos(policy.backoff_max)),
                };
                Availability::Probe
            }
            Standing::Out { .. } | Standing::Probing { .. } => Availability::Out,
        }
    }

    /// A request to it succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        if matches!(self.standing, Standing::Probing { .. }) {
            self.standing = Standing::In;
            self.ejections = 0;
        }
    }

    /// A request to it failed at `now`; true when this takes it out.
    pub fn failed(&mut self, now: Nanos, policy: &HealthPolicy) -> bool {
        self.last_failure = Some(now);
        let eject = match self.standing {
            Standing::In => {
                self.failures += 1;
                self.failures >= policy.failures_to_eject.max(1)
            }
            Standing::Probing { .. } => true,
            // A request that was sent before it was taken out: already counted.
            Standing::Out { .. } => false,
        };
        if eject {
            self.failures = 0;
            self.ejections = self.ejections.saturating_add(1);
            self.standing = Standing::Out {
                until: now.saturating_add(nanos(policy.backoff(self.ejections))),
            };
        }
        eject
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Smooth weighted round-robin (nginx's): each pick adds every candidate's weight to its
/// current value, takes the highest and subtracts the candidates' total from it. Over any
/// `sum(weights)` picks each backend gets exactly its weight's share, interleaved (weights
/// 5:1:1 give `a a b a c a a`, not `a a a a a b c`).
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// The next backend among those `candidates` (a bit per index) lets in; `None` if it lets
    /// none in.
    pub fn pick(&mut self, weights: &[u32], candidates: u64) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if candidates & (1 << i) == 0 {
                continue;
            }
            let w = i64::from(w);
            total += w;
            self.current[i] += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn three_failures_in_a_row_take_a_backend_out_and_a_probe_brings_it_back() {
        let p = HealthPolicy::default();
        let mut h = Health::default();
        assert!(!h.failed(0, &p));
        h.succeeded();
        // A success in between starts the count again.
        assert!(!h.failed(1, &p));
        assert!(!h.failed(2, &p));
        assert!(h.failed(3, &p));
        assert!(!h.is_in());
        assert_eq!(h.poll(3 + S - 1, &p), Availability::Out);
        assert_eq!(h.poll(3 + S, &p), Availability::Probe);
        // One request decides: no second probe meanwhile.
        assert_eq!(h.poll(3 + S, &p), Availability::Out);
        h.succeeded();
        assert!(h.is_clean());
        assert_eq!(h.poll(3 + S, &p), Availability::In);
    }

    #[test]
    fn back_off_doubles_up_to_the_maximum_and_resets_after_a_good_probe() {
        let p = HealthPolicy::default();
        let mut h = Health::default();
        let mut now = 0;
        for _ in 0..3 {
            h.failed(now, &p);
        }
        let mut periods = Vec::new();
        for _ in 0..7 {
            let start = now;
            while h.poll(now, &p) != Availability::Probe {
                now += S / 10;
            }
            periods.push((now - start).div_ceil(S));
            assert!(h.failed(now, &p), "a failed probe takes it out again");
        }
        assert_eq!(periods, [1, 2, 4, 8, 16, 30, 30]);
        while h.poll(now, &p) != Availability::Probe {
            now += S / 10;
        }
        h.succeeded();
        for _ in 0..3 {
            h.failed(now, &p);
        }
        let start = now;
        while h.poll(now, &p) != Availability::Probe {
            now += S / 10;
        }
        assert_eq!((now - start).div_ceil(S), 1);
    }

    #[test]
    fn a_probe_that_never_reports_lets_another_probe_after_the_longest_back_off() {
        let p = HealthPolicy::default();
        let mut h = Health::default();
        for _ in 0..3 {
            h.failed(0, &p);
        }
        assert_eq!(h.poll(S, &p), Availability::Probe);
        assert_eq!(h.poll(S + 29 * S, &p), Availability::Out);
        assert_eq!(h.poll(S + 30 * S, &p), Availability::Probe);
    }

    #[test]
    fn smooth_wrr_interleaves() {
        let mut w = SmoothWrr::default();
        let picks: Vec<usize> = (0..7).map(|_| w.pick(&[5, 1, 1], 0b111).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(w.pick(&[5, 1, 1], 0), None);
        // Only the candidates: the second is out.
        let mut w = SmoothWrr::default();
        assert!((0..10).all(|_| w.pick(&[1, 1, 1], 0b101) != Some(1)));
    }

    proptest! {
        /// Over whole rounds every candidate gets exactly its weight's share, and no backend
        /// is picked more than its share of any prefix plus one.
        #[test]
        fn wrr_gives_each_its_weight(
            weights in proptest::collection::vec(1u32..=1000, 1..8),
            mask in 1u64..256,
            rounds in 1u64..3,
        ) {
            let n = weights.len();
            let mask = mask & ((1 << n) - 1);
            prop_assume!(mask != 0);
            let total: u64 = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| u64::from(weights[i])).sum();
            let mut w = SmoothWrr::default();
            let mut counts = vec![0u64; n];
            for k in 1..=total * rounds {
                let i = w.pick(&weights, mask).unwrap();
                prop_assert!(mask & (1 << i) != 0);
                counts[i] += 1;
                let share = u64::from(weights[i]) * k;
                prop_assert!(counts[i] * total <= share + total, "{counts:?} at {k}");
            }
            for i in 0..n {
                let expected = if mask & (1 << i) != 0 { u64::from(weights[i]) * rounds } else { 0 };
                prop_assert_eq!(counts[i], expected);
            }
        }

        /// Whatever happens, a backend is out only after `failures_to_eject` failures in a row
        /// (or a failed probe), and one that is out comes back on probation within the
        /// longest back-off.
        #[test]
        fn health_never_keeps_a_backend_out_for_longer_than_the_longest_back_off(
            events in proptest::collection::vec((any::<bool>(), 0u64..5_000_000_000), 1..200),
        ) {
            let p = HealthPolicy::default();
            let mut h = Health::default();
            let mut now = 0;
            let mut in_a_row = 0;
            for (ok, dt) in events {
                now += dt;
                let was_probing = h.poll(now, &p) == Availability::Probe;
                if ok {
                    h.succeeded();
                    in_a_row = 0;
                    if was_probing { prop_assert!(h.is_in()); }
                } else {
                    let was_in = h.is_in();
                    let ejected = h.failed(now, &p);
                    in_a_row += 1;
                    if ejected && !was_probing {
                        prop_assert!(was_in && in_a_row >= 3);
                    }
                    if ejected { in_a_row = 0; }
                }
                if !h.is_in() {
                    let later = now + nanos(p.backoff_max) + 1;
                    let mut probe = h.clone();
                    prop_assert_eq!(probe.poll(later, &p), Availability::Probe);
                }
            }
        }
    }
}
