//! Time as the limiters and the demand tracker see it: nanoseconds on a monotonic clock.
//!
//! A trait so that tests can drive time by hand ([`FakeClock`]) and check limiter behaviour to
//! the request, without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds since the clock's own origin.
pub type Nanos = u64;

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Nanos;
}

/// The real clock: [`Instant`] since construction.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        // u64 nanoseconds last 584 years of uptime.
        self.origin.elapsed().as_nanos() as u64
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: AtomicU64,
}

impl FakeClock {
    pub fn new(start: Nanos) -> Self {
        FakeClock {
            now: AtomicU64::new(start),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Nanos) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

pub(crate) const NANOS_PER_SEC: u64 = 1_000_000_000;
