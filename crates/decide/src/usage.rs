//! Per-node usage counters for billing: calls, outbound bytes (written to clients) and
//! backend bytes (read back from backends outside the instance's region) per
//! (account, instance, API, region).
//!
//! Each key has one [`UsageCell`] of atomics per thread (see [`crate::per_thread`]). The
//! compiled routes hold an `Arc` to their cell, so counting a call is one relaxed `fetch_add` on
//! memory no other key or thread writes, with no lookup.
//! Cells live in a registry keyed by [`UsageKey`] and are reused when the configuration is
//! recompiled, so counts survive any number of publishes. [`UsageRegistry::drain`] takes the
//! counts with `swap(0)`: an increment racing with a drain lands either before the swap (and is
//! in this drain) or after it (and is in the next one), never in neither.
//!
//! # Dating by arrival
//!
//! Counts are billed on the day (and hour) the call arrived, not the day they happen to be
//! drained. The cells count one hour at a time, the registry's `hour`: the first call that
//! reads a later hour on the clock rolls the registry ([`UsageRegistry::roll`]), which takes
//! every cell's counts as the old hour's and moves on. A drain therefore returns its counts by
//! hour ([`UsageDrain`]). The one inexactness is a call that read the clock just before the
//! hour turned and reached its counter just after the roll: it is dated the new hour, a
//! matter of nanoseconds. Outbound bytes are counted when they are written, and dated then.

use crate::per_thread::PerThread;
use model::UsageDelta;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The API name recorded for requests that reached a group but matched none of its APIs.
pub const UNMATCHED_API: &str = "unmatched";

/// Milliseconds in an hour: usage is dated by the hour, `unix_ms / HOUR_MS`.
pub const HOUR_MS: u64 = 3_600_000;

/// What [`crate::Dataplane::drain_usage_dated`] took: the counts by the hour (since the Unix
/// epoch) the calls arrived in, oldest first, and the hour now being counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDrain {
    /// Every call that arrived before this hour is in this drain or an earlier one.
    pub open_hour: u64,
    pub by_hour: Vec<(u64, Vec<UsageDelta>)>,
}

/// What a usage count is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct UsageKey {
    pub account: String,
    pub instance: String,
    pub api: String,
    pub region: String,
}

/// One thread's counts of one key.
#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    bytes_out: AtomicU64,
    backend_bytes: AtomicU64,
}

/// The counters of one key, a cache line per thread.
#[derive(Debug, Default)]
pub(crate) struct UsageCell(PerThread<Counts>);

impl UsageCell {
    fn new() -> Self {
        UsageCell::default()
    }

    #[inline]
    pub(crate) fn add_call(&self) {
        self.0.local().calls.fetch_add(1, Relaxed);
    }

    #[inline]
    pub(crate) fn add_bytes(&self, n: u64) {
        if n > 0 {
            self.0.local().bytes_out.fetch_add(n, Relaxed);
        }
    }

    #[inline]
    pub(crate) fn add_backend_bytes(&self, n: u64) {
        if n > 0 {
            self.0.local().backend_bytes.fetch_add(n, Relaxed);
        }
    }

    /// Takes the counts (calls, bytes out, backend bytes) and zeroes them.
    fn take(&self) -> (u64, u64, u64) {
        self.0.all().fold((0, 0, 0), |(calls, bytes, backend), c| {
            (
                calls.saturating_add(c.calls.swap(0, Relaxed)),
                bytes.saturating_add(c.bytes_out.swap(0, Relaxed)),
                backend.saturating_add(c.backend_bytes.swap(0, Relaxed)),
            )
        })
    }
}

/// All cells of this node.
#[derive(Default)]
pub(crate) struct UsageRegistry {
    cells: HashMap<UsageKey, Arc<UsageCell>>,
    /// The hour the cells are counting (see the module docs); 0 before the first roll.
    pub(crate) hour: u64,
    /// Counts of earlier hours, taken from the cells when the hour turned, not drained yet.
    rolled: BTreeMap<u64, Vec<UsageDelta>>,
}

impl UsageRegistry {
    /// The cell for `key`, created on first use and shared afterwards.
    pub(crate) fn cell(&mut self, key: UsageKey) -> Arc<UsageCell> {
        self.cells
            .entry(key)
            .or_insert_with(|| Arc::new(UsageCell::new()))
            .clone()
    }

    /// Moves the counting on to `hour`: what the cells hold is dated the hour they were
    /// counting. An earlier `hour` (a clock set back) changes nothing: counts are never dated
    /// back. Returns whether the hour moved.
    pub(crate) fn roll(&mut self, hour: u64) -> bool {
        if hour <= self.hour {
            return false;
        }
        let counted = self.take_cells();
        if !counted.is_empty() {
            self.rolled.insert(self.hour, counted);
        }
        self.hour = hour;
        true
    }

    /// Rolls to `hour` and takes every count, by the hour of arrival.
    pub(crate) fn drain_dated(&mut self, hour: u64) -> UsageDrain {
        self.roll(hour);
        let current = self.take_cells();
        let mut by_hour = std::mem::take(&mut self.rolled);
        if !current.is_empty() {
            by_hour.insert(self.hour, current);
        }
        UsageDrain {
            open_hour: self.hour,
            by_hour: by_hour.into_iter().collect(),
        }
    }

    /// Takes and zeroes all counts, whatever their hour, one delta per key.
    pub(crate) fn drain(&mut self) -> Vec<UsageDelta> {
        let mut merged: BTreeMap<UsageKey, UsageDelta> = BTreeMap::new();
        let dated = self.drain_dated(self.hour);
        for d in dated.by_hour.into_iter().flat_map(|(_, deltas)| deltas) {
            let key = UsageKey {
                account: d.account.clone(),
                instance: d.instance.clone(),
                api: d.api.clone(),
                region: d.region.clone(),
            };
            let m = merged.entry(key).or_insert_with(|| UsageDelta {
                calls: 0,
                bytes_out: 0,
                backend_bytes: 0,
                ..d.clone()
            });
            m.calls = m.calls.saturating_add(d.calls);
            m.bytes_out = m.bytes_out.saturating_add(d.bytes_out);
            m.backend_bytes = m.backend_bytes.saturating_add(d.backend_bytes);
        }
        merged.into_values().collect()
    }

    /// Takes and zeroes the cells' counts; forgets cells no compiled route refers to any more.
    fn take_cells(&mut self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        self.cells.retain(|key, cell| {
            let (calls, bytes_out, backend_bytes) = cell.take();
            if calls > 0 || bytes_out > 0 || backend_bytes > 0 {
                out.push(UsageDelta {
                    account: key.account.clone(),
                    instance: key.instance.clone(),
                    api: key.api.clone(),
                    region: key.region.clone(),
                    calls,
                    bytes_out,
                    backend_bytes,
                });
            }
            // Only the registry holds it: no route can count into it again, and it was just
            // drained. (New references are only made under the registry's lock, which we hold.)
            Arc::strong_count(cell) > 1
        });
        out.sort_by(|a, b| {
            (&a.account, &a.instance, &a.api, &a.region).cmp(&(
                &b.account,
                &b.instance,
                &b.api,
                &b.region,
            ))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(api: &str) -> UsageKey {
        UsageKey {
            account: "acct".into(),
            instance: "shared".into(),
            api: api.into(),
            region: "cn-hangzhou".into(),
        }
    }

    #[test]
    fn cells_are_shared_and_drained() {
        let mut r = UsageRegistry::default();
        let a = r.cell(key("a"));
        let a2 = r.cell(key("a"));
        assert!(Arc::ptr_eq(&a, &a2));
        a.add_call();
        a2.add_call();
        a.add_bytes(10);
        a2.add_backend_bytes(7);
        let d = r.drain();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].calls, d[0].bytes_out, d[0].backend_bytes), (2, 10, 7));
        assert!(r.drain().is_empty());
    }

    #[test]
    fn counts_are_dated_by_the_hour_they_were_counted_in() {
        let mut r = UsageRegistry::default();
        let a = r.cell(key("a"));
        r.roll(10);
        a.add_call();
        // Two hours on at once (a clock that jumped), then back: never dated back.
        assert!(r.roll(12));
        a.add_call();
        a.add_call();
        assert!(!r.roll(11));
        a.add_bytes(5);
        let d = r.drain_dated(12);
        assert_eq!(d.open_hour, 12);
        let got: Vec<(u64, u64, u64)> = d
            .by_hour
            .iter()
            .map(|(h, ds)| (*h, ds[0].calls, ds[0].bytes_out))
            .collect();
        assert_eq!(got, vec![(10, 1, 0), (12, 2, 5)]);
        let next = r.drain_dated(13);
        assert_eq!((next.open_hour, next.by_hour.len()), (13, 0));
        // The undated drain merges the hours into one delta per key.
        a.add_call();
        r.roll(14);
        a.add_call();
        let merged = r.drain();
        assert_eq!((merged.len(), merged[0].calls), (1, 2));
    }

    #[test]
    fn unreferenced_cells_are_dropped_after_their_last_drain() {
        let mut r = UsageRegistry::default();
        let a = r.cell(key("a"));
        a.add_call();
        drop(a);
        assert_eq!(r.drain()[0].calls, 1);
        assert!(r.cells.is_empty());
    }

    #[test]
    fn concurrent_increments_during_drains_are_not_lost() {
        let reg = Arc::new(std::sync::Mutex::new(UsageRegistry::default()));
        let cell = reg.lock().unwrap().cell(key("a"));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        cell.add_call();
                    }
                })
            })
            .collect();
        let mut total = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            total += reg
                .lock()
                .unwrap()
                .drain()
                .iter()
                .map(|d| d.calls)
                .sum::<u64>();
        }
        for w in writers {
            w.join().unwrap();
        }
        total += reg
            .lock()
            .unwrap()
            .drain()
            .iter()
            .map(|d| d.calls)
            .sum::<u64>();
        assert_eq!(total, 400_000);
    }
}
