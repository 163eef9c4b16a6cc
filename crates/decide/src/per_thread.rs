//! Values kept once per data-plane thread, each on cache lines of its own, so that threads
//! counting the same thing never write the same line.
//!
//! A relaxed `fetch_add` is cheap only while the line it writes stays in one core's cache. When
//! two server threads count into one counter (a route's calls, an instance's arrivals), the line
//! moves between cores on every request; profiled, those transfers were a good part of the
//! proxy's user time. Here each thread writes its own slot, and readers (a scrape, a usage
//! drain, a demand report), which are rare, sum the slots.
//!
//! A thread's slot is set by [`set_slot`] (the server threads do, see the `dataplane` crate);
//! other threads use slot 0. Threads sharing a slot stay correct (the slots are atomics), only
//! slower.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Slots per value: one per data-plane thread, as many as the CPUs (at most 16; more threads
/// share slots).
pub fn slot_count() -> usize {
    // Read once: `available_parallelism` reads the cgroup's CPU quota files on every call
    // (~30 us), and every counter of every compiled route asks.
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 16)))
}

/// Makes this thread use slot `index` (modulo [`slot_count`]).
pub fn set_slot(index: usize) {
    SLOT.with(|s| s.set(index));
}

/// This thread's slot, below `len`.
#[inline]
pub fn slot(len: usize) -> usize {
    SLOT.with(|s| s.get()) % len
}

/// A value aligned to two cache lines: x86's adjacent-line prefetcher pulls lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// One `T` per thread slot.
#[derive(Debug)]
pub struct PerThread<T> {
    slots: Box<[Padded<T>]>,
}

impl<T: Default> Default for PerThread<T> {
    fn default() -> Self {
        PerThread {
            slots: (0..slot_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> PerThread<T> {
    /// This thread's value.
    #[inline]
    pub fn local(&self) -> &T {
        &self.slots[slot(self.slots.len())].0
    }

    /// This thread's slot number and value.
    #[inline]
    pub fn local_indexed(&self) -> (usize, &T) {
        let i = slot(self.slots.len());
        (i, &self.slots[i].0)
    }

    /// Every thread's value.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

/// A counter summed over threads.
#[derive(Debug, Default)]
pub struct Counter(PerThread<AtomicU64>);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.local().fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0
            .all()
            .map(|c| c.load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_count_apart_and_readers_see_the_sum() {
        let counter = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    set_slot(i);
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.get(), 4000);
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
    }
}
