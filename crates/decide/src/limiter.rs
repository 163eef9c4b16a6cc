//! A lock-free GCRA (generic cell rate algorithm) limiter whose rate can be changed in place.
//!
//! # Why not `governor`
//!
//! `governor` is a fine GCRA implementation, but its `Quota` is fixed when a `RateLimiter` is
//! built. This node's quota for an instance (`ceiling * share`) changes every ~100 ms as shares
//! follow demand, and whenever an instance's spec changes. Replacing the governor limiter on each
//! change would forget its state: a fresh limiter grants a full burst (a leak of up to a burst
//! per change, ten times a second), while carrying the state over is not possible through its API.
//! So this limiter keeps GCRA's single word of state, the theoretical arrival time (TAT), in an
//! `AtomicU64`, and keeps the emission interval and the burst tolerance in atomics of their own
//! that can be changed at any time.
//!
//! # Why a rate change neither resets nor leaks
//!
//! The TAT is a point in time, and the burst tolerance is a duration (not a count), so the state
//! means "the limiter is booked until TAT" whatever the rate: a limiter exhausted at 100/s
//! (TAT = now + tolerance) raised to 200/s admits the next request only when the clock reaches
//! TAT - tolerance, then one every 5 ms: ~200 in the next second, not 200 + a burst. Lowered to
//! 50/s, the same booking holds and the next ones are 20 ms apart: no extra admissions.
//!
//! One exception: a booking further ahead than the current rate could ever make (tolerance
//! plus one interval) was made at a slower rate, and is cut back to that, as if the limiter
//! were exhausted at the current rate. Otherwise a node whose share was at its floor (a limit
//! of 200/s at a 0.5% floor is 1/s: one call books a whole second) would refuse everything for
//! that long after its share went up, which is what a restarted node did in the throttling
//! benchmark (benches/RESULTS.md, issue 17). Cutting back admits nothing a limiter exhausted at
//! the new rate would not.
//! The burst tolerance is small (50 ms of quota by default) so that 1 s windows stay accurate.

use model::clock::{NANOS_PER_SEC, Nanos};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Emission interval meaning "admit nothing" (a rate of zero).
const CLOSED: u64 = u64::MAX;

/// The default burst tolerance: 1/20 s of quota.
pub const DEFAULT_BURST: Duration = Duration::from_millis(50);

/// How long a rejected caller is told to wait when the rate is zero.
const CLOSED_RETRY: Nanos = NANOS_PER_SEC;

/// A GCRA limiter; all methods take `&self` and never block.
#[derive(Debug)]
#[repr(align(64))] // own cache line: the TAT is the hottest shared word of the data plane
pub struct GcraLimiter {
    /// Theoretical arrival time of the next conforming request.
    tat: AtomicU64,
    /// Nanoseconds per request, or [`CLOSED`].
    interval: AtomicU64,
    /// How far ahead of the clock the TAT may run and still admit (the burst tolerance).
    tolerance: AtomicU64,
    /// The rate as given, for reporting (f64 bits).
    rate: AtomicU64,
}

impl GcraLimiter {
    /// A limiter admitting `rate_per_sec` on average with bursts of `burst` worth of quota.
    pub fn new(rate_per_sec: f64, burst: Duration) -> Self {
        let limiter = GcraLimiter {
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(CLOSED),
            tolerance: AtomicU64::new(burst.as_nanos() as u64),
            rate: AtomicU64::new(0f64.to_bits()),
        };
        limiter.set_rate(rate_per_sec);
        limiter
    }

    /// Changes the rate in place, keeping the booking (see the module docs).
    /// Non-finite, zero or negative rates close the limiter.
    pub fn set_rate(&self, rate_per_sec: f64) {
        let interval = if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
            // At least 1 ns; rounding keeps the error under 0.05% up to 1M requests/s.
            ((NANOS_PER_SEC as f64 / rate_per_sec).round() as u64).clamp(1, CLOSED - 1)
        } else {
            CLOSED
        };
        let rate = if interval == CLOSED {
            0.0
        } else {
            rate_per_sec
        };
        self.rate.store(rate.to_bits(), Relaxed);
        self.interval.store(interval, Relaxed);
    }

    /// Changes the rate in place at `now`, keeping the booking but rescaling the wait for the
    /// next slot: an exhausted limiter (booked past its tolerance) had waited part of an
    /// interval at the old rate, and waits the same part of an interval at the new one. Without
    /// that, raising 20/s to 100/s could leave up to 50 ms of the old interval to wait where
    /// 10 ms is the most the new rate books: a node that takes a dead peer's calls goes
    /// through several raises within a tenth of a second, and lost about a call on each in the
    /// throttling benchmark. A limiter with burst left is unchanged.
    pub fn set_rate_at(&self, rate_per_sec: f64, now: Nanos) {
        let old = self.interval.load(Relaxed);
        self.set_rate(rate_per_sec);
        let new = self.interval.load(Relaxed);
        if old == CLOSED || new == CLOSED || old == new {
            return;
        }
        let full = now.saturating_add(self.tolerance.load(Relaxed));
        let _ = self.tat.fetch_update(Relaxed, Relaxed, |tat| {
            if tat <= full {
                return None;
            }
            // At most one old interval: a booking further ahead is cut back in `check`.
            let wait = (tat - full).min(old);
            Some(full + (u128::from(wait) * u128::from(new) / u128::from(old)) as u64)
        });
    }

    /// Changes the burst tolerance in place.
    pub fn set_burst(&self, burst: Duration) {
        self.tolerance.store(burst.as_nanos() as u64, Relaxed);
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Relaxed))
    }

    /// Gives back the slot of a request [`check`](Self::check) admitted (it was refused by
    /// another limit after this one).
    pub fn untake(&self) {
        let interval = self.interval.load(Relaxed);
        if interval != CLOSED {
            let _ = self
                .tat
                .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(interval)));
        }
    }

    /// Admits one request at `now`, or says how long until one would be admitted.
    ///
    /// Relaxed ordering suffices: the TAT is the only state and the CAS orders updates to it;
    /// a check racing with [`set_rate`](Self::set_rate) uses either the old or the new rate.
    #[inline]
    pub fn check(&self, now: Nanos) -> Result<(), Nanos> {
        let interval = self.interval.load(Relaxed);
        if interval == CLOSED {
            return Err(CLOSED_RETRY);
        }
        let tolerance = self.tolerance.load(Relaxed);
        // The furthest ahead a booking made at this rate can reach.
        let furthest = now.saturating_add(tolerance).saturating_add(interval);
        let mut tat = self.tat.load(Relaxed);
        loop {
            if tat > furthest {
                // Booked at a slower rate than this one: re-booked as exhausted at this rate
                // (see the module docs).
                match self
                    .tat
                    .compare_exchange_weak(tat, furthest, Relaxed, Relaxed)
                {
                    Ok(_) => tat = furthest,
                    Err(current) => tat = current,
                }
                continue;
            }
            let booked = tat.max(now);
            let ahead = booked - now;
            if ahead > tolerance {
                return Err(ahead - tolerance);
            }
            match self.tat.compare_exchange_weak(
                tat,
                booked.saturating_add(interval),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const SEC: Nanos = NANOS_PER_SEC;

    /// Offers one request every `step` from `from` (inclusive) to `to` (exclusive).
    fn offer(l: &GcraLimiter, from: Nanos, to: Nanos, step: Nanos) -> u64 {
        let mut admitted = 0;
        let mut t = from;
        while t < to {
            if l.check(t).is_ok() {
                admitted += 1;
            }
            t += step;
        }
        admitted
    }

    /// Exhausts the limiter at `at` by asking until it says no.
    fn exhaust(l: &GcraLimiter, at: Nanos) -> u64 {
        let mut n = 0;
        while l.check(at).is_ok() {
            n += 1;
            assert!(n < 1_000_000, "limiter never says no");
        }
        n
    }

    #[test]
    fn fresh_limiter_admits_quota_plus_burst_in_first_second() {
        let l = GcraLimiter::new(100.0, DEFAULT_BURST);
        let start = 10 * SEC;
        // Burst at t=start: tolerance/interval + 1 = 50ms/10ms + 1 = 6.
        assert_eq!(exhaust(&l, start), 6);
        // Then the quota per second (to the request: window edges cut one slot at most),
        // under heavy overload (an offer every 100 µs).
        let first = offer(&l, start + 1, start + SEC + 1, MS / 10);
        assert!((99..=100).contains(&first), "admitted {first}");
        assert_eq!(
            offer(&l, start + SEC + 1, start + 2 * SEC + 1, MS / 10),
            100
        );
    }

    #[test]
    fn admits_exactly_the_quota_over_windows() {
        for rate in [1.0, 7.0, 100.0, 1000.0, 33_333.0] {
            let l = GcraLimiter::new(rate, DEFAULT_BURST);
            exhaust(&l, SEC);
            let step = (SEC as f64 / rate / 10.0).max(1.0) as Nanos; // 10x overload
            for w in 1..4 {
                let got = offer(&l, w * SEC, (w + 1) * SEC, step) as f64;
                assert!(
                    (got - rate).abs() <= 1.0,
                    "rate {rate}: window {w} admitted {got}"
                );
            }
        }
    }

    #[test]
    fn raising_the_rate_in_place_leaks_no_burst() {
        let l = GcraLimiter::new(100.0, DEFAULT_BURST);
        exhaust(&l, SEC);
        // The window after the burst: the quota, give or take the slot on the window's edge.
        assert!((99..=100).contains(&offer(&l, SEC, 2 * SEC, MS / 10)));
        l.set_rate(200.0);
        let got = offer(&l, 2 * SEC, 3 * SEC, MS / 10);
        // ~200, not 200 + 11 (a fresh 200/s limiter's burst).
        assert!((199..=201).contains(&got), "admitted {got}");
        assert_eq!(offer(&l, 3 * SEC, 4 * SEC, MS / 10), 200);
    }

    #[test]
    fn raising_a_slow_rate_does_not_keep_its_long_booking() {
        // At 1/s one call books a whole second; at 160/s the next second admits ~160.
        let l = GcraLimiter::new(1.0, DEFAULT_BURST);
        assert!(l.check(SEC).is_ok());
        assert!(l.check(SEC + MS).is_err());
        l.set_rate(160.0);
        let got = offer(&l, SEC + 100 * MS, 2 * SEC + 100 * MS, MS / 10);
        assert!((159..=161).contains(&got), "admitted {got}");
        // And a refusal after the raise says to wait one interval at most, not the old booking.
        let l = GcraLimiter::new(1.0, DEFAULT_BURST);
        assert!(l.check(SEC).is_ok());
        l.set_rate(100.0);
        let wait = l.check(SEC + MS).err().unwrap_or(0);
        assert!(wait <= 10 * MS, "told to wait {wait} ns");
    }

    #[test]
    fn a_rate_change_at_a_time_rescales_the_wait_for_the_next_slot() {
        // Exhausted at 20/s (one slot per 50 ms), 30 ms before its next slot.
        let l = GcraLimiter::new(20.0, DEFAULT_BURST);
        exhaust(&l, SEC);
        let wait = l.check(SEC + 20 * MS).unwrap_err();
        assert_eq!(wait, 30 * MS);
        // Raised to 100/s: 6 ms of the new 10 ms interval to wait, not the old 30 (nor 10).
        l.set_rate_at(100.0, SEC + 20 * MS);
        assert_eq!(l.check(SEC + 20 * MS).unwrap_err(), 6 * MS);
        // And then the new rate, with no burst: 100 in the next second.
        assert!(l.check(SEC + 26 * MS).is_ok());
        let got = offer(&l, SEC + 26 * MS + 1, 2 * SEC + 26 * MS + 1, MS / 10);
        assert!((99..=100).contains(&got), "admitted {got}");
        // Lowered the same way: the wait stretches with the interval.
        let l = GcraLimiter::new(100.0, DEFAULT_BURST);
        exhaust(&l, SEC);
        assert_eq!(l.check(SEC + 5 * MS).unwrap_err(), 5 * MS);
        l.set_rate_at(20.0, SEC + 5 * MS);
        assert_eq!(l.check(SEC + 5 * MS).unwrap_err(), 25 * MS);
        // A limiter with burst left keeps it.
        let l = GcraLimiter::new(100.0, DEFAULT_BURST);
        assert!(l.check(SEC).is_ok());
        l.set_rate_at(20.0, SEC);
        assert!(l.check(SEC).is_ok());
    }

    #[test]
    fn lowering_the_rate_in_place_admits_no_extra() {
        let l = GcraLimiter::new(200.0, DEFAULT_BURST);
        exhaust(&l, SEC);
        assert!((199..=200).contains(&offer(&l, SEC, 2 * SEC, MS / 10)));
        l.set_rate(50.0);
        let got = offer(&l, 2 * SEC, 3 * SEC, MS / 10);
        assert!((49..=51).contains(&got), "admitted {got}");
        assert_eq!(offer(&l, 3 * SEC, 4 * SEC, MS / 10), 50);
    }

    #[test]
    fn many_small_changes_keep_the_average() {
        // Shares move every 100 ms; the admitted count must follow the integral of the rate.
        let l = GcraLimiter::new(100.0, DEFAULT_BURST);
        exhaust(&l, SEC);
        let mut admitted = 0;
        let mut expected = 0.0;
        for i in 0..50u64 {
            let rate = if i % 2 == 0 { 300.0 } else { 500.0 };
            l.set_rate(rate);
            let from = SEC + i * 100 * MS;
            admitted += offer(&l, from, from + 100 * MS, MS / 20);
            expected += rate / 10.0;
        }
        let err = (admitted as f64 - expected).abs() / expected;
        assert!(err < 0.005, "admitted {admitted}, expected {expected}");
    }

    #[test]
    fn zero_rate_closes_and_reopening_grants_only_the_burst() {
        let l = GcraLimiter::new(0.0, DEFAULT_BURST);
        assert_eq!(l.check(SEC), Err(CLOSED_RETRY));
        assert_eq!(l.rate(), 0.0);
        l.set_rate(f64::NAN);
        assert!(l.check(SEC).is_err());
        l.set_rate(100.0);
        assert_eq!(exhaust(&l, 2 * SEC), 6);
    }

    #[test]
    fn rejection_says_when_to_retry() {
        let l = GcraLimiter::new(10.0, DEFAULT_BURST);
        assert!(l.check(SEC).is_ok());
        let wait = l.check(SEC).unwrap_err();
        // Next slot at SEC + 100ms, admissible from SEC + 100ms - 50ms.
        assert_eq!(wait, 50 * MS);
        assert!(l.check(SEC + wait).is_ok());
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_budget() {
        // Frozen clock: exactly burst/interval + 1 admissions, however many threads race.
        let l = std::sync::Arc::new(GcraLimiter::new(1000.0, Duration::from_millis(100)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| l.check(SEC).is_ok()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 101);
    }
}
