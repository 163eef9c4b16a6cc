//! An instance as this node sees it: its ceiling, this node's share, the limiter enforcing
//! `ceiling * share`, and its counters. One per instance name, kept across publishes so that
//! neither the limiter's booking nor the counters are lost when the configuration changes.

use crate::limiter::GcraLimiter;
use crate::metrics::InstanceStats;
use crate::moves::Reading;
use crate::per_thread::Counter;
use model::clock::Nanos;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) struct InstanceState {
    pub(crate) name: Arc<str>,
    /// (ceiling, share): changed together under this lock (publish and share updates race),
    /// read only off the hot path. The limiter holds their product.
    quota: Mutex<(u32, f64)>,
    /// The ceiling as last set, for the demand checks every few ms that only read it.
    ceiling: AtomicU32,
    pub(crate) limiter: GcraLimiter,
    /// Requests that reached the limiter: this node's offered load, for the demand reports.
    arrivals: Counter,
    pub(crate) stats: InstanceStats,
}

impl InstanceState {
    pub(crate) fn new(name: &str, ceiling_rps: u32, share: f64, burst: Duration) -> Self {
        InstanceState {
            name: name.into(),
            quota: Mutex::new((ceiling_rps, share)),
            ceiling: AtomicU32::new(ceiling_rps),
            limiter: GcraLimiter::new(f64::from(ceiling_rps) * share, burst),
            arrivals: Counter::default(),
            stats: InstanceStats::default(),
        }
    }

    fn update(&self, now: Nanos, f: impl FnOnce(&mut (u32, f64))) {
        let mut quota = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut quota);
        self.ceiling.store(quota.0, Relaxed);
        self.limiter.set_rate_at(f64::from(quota.0) * quota.1, now);
    }

    /// In place at `now`: the limiter keeps its booking.
    pub(crate) fn set_ceiling(&self, ceiling_rps: u32, now: Nanos) {
        self.update(now, |q| q.0 = ceiling_rps);
    }

    /// In place at `now`: the limiter keeps its booking.
    pub(crate) fn set_share(&self, share: f64, now: Nanos) {
        self.update(now, |q| q.1 = share);
    }

    pub(crate) fn ceiling_and_share(&self) -> (u32, f64) {
        *self.quota.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its demand counters now: the nodes share its ceiling by demand.
    pub(crate) fn reading(&self) -> Reading<'_> {
        Reading {
            key: &self.name,
            arrivals: self.arrivals.get(),
            refused: self.stats.throttled.get(),
            ceiling: Some(f64::from(self.ceiling.load(Relaxed))),
        }
    }

    /// Counts an arrival and asks the limiter; `Err` holds the nanoseconds until a retry could
    /// be admitted.
    #[inline]
    pub(crate) fn admit(&self, now: Nanos) -> Result<(), Nanos> {
        self.arrivals.add(1);
        let verdict = self.limiter.check(now);
        if verdict.is_err() {
            self.stats.throttled.add(1);
        }
        verdict
    }
}
