//! Time as a node reads it, through one trait so that tests can drive it by hand.
//!
//! Two readings, for two uses: [`Clock::now`] is monotonic nanoseconds since the clock's own
//! origin, what the data plane measures rates, limits and timeouts with; [`Clock::now_ms`] is
//! wall-clock milliseconds since the Unix epoch, what a leader stamps on its proposals (the
//! state machine itself never reads a clock).

use crate::Millis;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since a clock's own origin.
pub type Nanos = u64;

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A node's time source.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since the clock's origin.
    fn now(&self) -> Nanos;

    /// Wall-clock time: the operating system's, unless the clock says otherwise.
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The real clock: [`Instant`] since construction, and the operating system's wall clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        // u64 nanoseconds last 584 years of uptime.
        self.origin.elapsed().as_nanos() as u64
    }
}

/// A clock that only moves when told to. Its wall clock reads the same time, in milliseconds
/// since the epoch: `FakeClock::new(ms * 1_000_000)` starts it at Unix time `ms`.
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

    fn now_ms(&self) -> Millis {
        self.now() / 1_000_000
    }
}
