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

use crate::per_thread::PerThread;
use model::UsageDelta;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The API name recorded for requests that reached a group but matched none of its APIs.
pub const UNMATCHED_API: &str = "unmatched";

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
}

impl UsageRegistry {
    /// The cell for `key`, created on first use and shared afterwards.
    pub(crate) fn cell(&mut self, key: UsageKey) -> Arc<UsageCell> {
        self.cells
            .entry(key)
            .or_insert_with(|| Arc::new(UsageCell::new()))
            .clone()
    }

    /// Takes and zeroes all counts; forgets cells no compiled route refers to any more.
    pub(crate) fn drain(&mut self) -> Vec<UsageDelta> {
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
