//! Replay protection: the nonces seen recently, per AppKey, in bounded memory.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::MAX_SKEW_MS;

/// What [`NonceCache::insert_until`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Not seen before (or seen so long ago that it expired): now remembered.
    Fresh,
    /// Seen before and still remembered: the request is a replay.
    Replayed,
    /// Not seen, but there is no room to remember it: the request must be refused, since
    /// accepting it would let it be replayed.
    Full,
}

/// The nonces seen recently, per AppKey.
///
/// Each entry is remembered until an expiry time and then forgotten. [`crate::Verifier`] sets
/// the expiry to the request's timestamp plus the allowed clock skew: after that instant the
/// timestamp check alone rejects a replay, so the nonce need not be kept any longer (a client
/// whose clock runs ahead is remembered longer, one whose clock lags for less).
///
/// # Bounded memory
///
/// The cache holds at most `capacity` entries, split over up to 16 shards (each its own mutex,
/// picked by a keyed hash of the AppKey and nonce, so callers cannot aim at one shard). When
/// the shard a new nonce falls into is full even after dropping expired entries, the nonce is
/// **refused** ([`NonceStatus::Full`]), never admitted by evicting a live entry: evicting would
/// reopen the replay window for the evicted nonce, and an attacker who can fill the cache
/// could then replay any captured request. The price is availability: a caller holding valid
/// credentials who sends more than `capacity` requests within the skew window makes every other
/// caller's requests fail until entries expire. Rate-limit per AppKey before verification, and
/// size the cache above the highest legitimate request rate times the window (30 minutes for a
/// client clock running 15 minutes ahead).
///
/// An entry costs roughly 100 bytes plus the lengths of its AppKey and nonce, so the default
/// capacity of 2^20 entries is about 150 MB when full of 36-byte UUID nonces.
#[derive(Debug)]
pub struct NonceCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    ttl_ms: u64,
}

#[derive(Debug, Default)]
struct Shard {
    capacity: usize,
    /// Entry key (see [`entry_key`]) to expiry time.
    expiry_of: HashMap<Arc<str>, u64>,
    /// The same entries, soonest expiry first. Expiry times need not arrive in order (they
    /// derive from client timestamps), hence a heap rather than a queue.
    by_expiry: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl Default for NonceCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl NonceCache {
    /// The default number of entries: 2^20.
    pub const DEFAULT_CAPACITY: usize = 1 << 20;
    const MAX_SHARDS: usize = 16;

    /// A cache that holds at most `capacity` entries (at least one), each remembered for 15
    /// minutes by [`NonceCache::check_and_insert`].
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shard_count = capacity.min(Self::MAX_SHARDS);
        let shards = (0..shard_count)
            .map(|index| {
                // Spread the capacity exactly: the first `capacity % shard_count` get one more.
                let extra = usize::from(index < capacity % shard_count);
                Mutex::new(Shard {
                    capacity: capacity / shard_count + extra,
                    ..Shard::default()
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            ttl_ms: MAX_SKEW_MS,
        }
    }

    /// Sets how long [`NonceCache::check_and_insert`] remembers a nonce.
    pub fn with_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    /// The most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).capacity).sum()
    }

    /// How many entries the cache holds, counting expired ones not yet dropped (expired entries
    /// are dropped by [`NonceCache::purge_expired`] and, shard by shard, by every insertion).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).expiry_of.len())
            .sum()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers `nonce` for `app_key` for the cache's TTL (15 minutes by default) from
    /// `now_ms`. True if the nonce was fresh; false if it is a replay or the cache is full.
    pub fn check_and_insert(&self, app_key: &str, nonce: &str, now_ms: u64) -> bool {
        let until = now_ms.saturating_add(self.ttl_ms);
        self.insert_until(app_key, nonce, now_ms, until) == NonceStatus::Fresh
    }

    /// Remembers `nonce` for `app_key` until `expires_at_ms` (inclusive), unless it is already
    /// remembered or there is no room. Entries that expired before `now_ms` are dropped first.
    pub fn insert_until(
        &self,
        app_key: &str,
        nonce: &str,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> NonceStatus {
        let key = entry_key(app_key, nonce);
        let shard_index = self.hasher.hash_one(&key) as usize % self.shards.len();
        let mut shard = lock(&self.shards[shard_index]);
        shard.purge(now_ms);
        if shard.expiry_of.contains_key(key.as_str()) {
            return NonceStatus::Replayed;
        }
        if shard.expiry_of.len() >= shard.capacity {
            return NonceStatus::Full;
        }
        let key: Arc<str> = Arc::from(key);
        shard.expiry_of.insert(Arc::clone(&key), expires_at_ms);
        shard.by_expiry.push(Reverse((expires_at_ms, key)));
        NonceStatus::Fresh
    }

    /// Drops every entry that expired before `now_ms`.
    pub fn purge_expired(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            lock(shard).purge(now_ms);
        }
    }
}

impl Shard {
    fn purge(&mut self, now_ms: u64) {
        while let Some(Reverse((expires_at, _))) = self.by_expiry.peek() {
            if *expires_at >= now_ms {
                break;
            }
            if let Some(Reverse((_, key))) = self.by_expiry.pop() {
                self.expiry_of.remove(&key);
            }
        }
    }
}

/// One string for an (AppKey, nonce) pair; the length prefix keeps distinct pairs distinct.
fn entry_key(app_key: &str, nonce: &str) -> String {
    format!("{}:{app_key}{nonce}", app_key.len())
}

/// Locks a shard, carrying on if a thread panicked while holding it (nothing panics while the
/// lock is held short of running out of memory, so the shard is consistent).
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_within_ttl_and_fresh_after() {
        let cache = NonceCache::new(10).with_ttl_ms(1_000);
        assert!(cache.check_and_insert("k", "n", 0));
        assert!(
            !cache.check_and_insert("k", "n", 1_000),
            "still remembered at the expiry"
        );
        assert!(
            cache.check_and_insert("k", "n", 1_001),
            "forgotten after it"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn nonces_are_per_app_key() {
        // Ample room: with one entry per shard, two keys could land in the same shard.
        let cache = NonceCache::new(1_000);
        assert!(cache.check_and_insert("k1", "n", 0));
        assert!(cache.check_and_insert("k2", "n", 0));
        // The length prefix keeps ("ab", "c") apart from ("a", "bc").
        assert!(cache.check_and_insert("ab", "c", 0));
        assert!(cache.check_and_insert("a", "bc", 0));
        assert!(!cache.check_and_insert("a", "bc", 0));
    }

    #[test]
    fn full_cache_refuses_until_entries_expire() {
        let cache = NonceCache::new(1);
        assert_eq!(cache.insert_until("k", "a", 0, 100), NonceStatus::Fresh);
        assert_eq!(cache.insert_until("k", "b", 50, 200), NonceStatus::Full);
        assert_eq!(cache.insert_until("k", "a", 50, 200), NonceStatus::Replayed);
        assert_eq!(cache.insert_until("k", "b", 101, 200), NonceStatus::Fresh);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn sharded_cache_never_exceeds_capacity() {
        let cache = NonceCache::new(64);
        let fresh = (0..1_000)
            .filter(|n| cache.insert_until("k", &n.to_string(), 0, 100) == NonceStatus::Fresh)
            .count();
        assert_eq!(
            fresh, 64,
            "every shard fills before the cache refuses for good"
        );
        assert_eq!(cache.len(), 64);
    }

    #[test]
    fn capacity_is_split_exactly() {
        for capacity in [1, 2, 15, 16, 17, 1000, 1 << 20] {
            assert_eq!(NonceCache::new(capacity).capacity(), capacity);
        }
        assert_eq!(NonceCache::new(0).capacity(), 1);
    }

    #[test]
    fn expiries_out_of_order_are_purged_correctly() {
        let cache = NonceCache::new(100);
        assert_eq!(cache.insert_until("k", "late", 0, 500), NonceStatus::Fresh);
        assert_eq!(cache.insert_until("k", "early", 0, 100), NonceStatus::Fresh);
        cache.purge_expired(200);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.insert_until("k", "late", 200, 900),
            NonceStatus::Replayed
        );
        assert_eq!(
            cache.insert_until("k", "early", 200, 900),
            NonceStatus::Fresh
        );
        cache.purge_expired(10_000);
        assert!(cache.is_empty());
    }

    #[test]
    fn concurrent_inserts_admit_each_nonce_once() {
        let cache = NonceCache::new(10_000);
        let fresh: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1_000)
                            .filter(|n| cache.check_and_insert("k", &n.to_string(), 0))
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(fresh, 1_000);
    }
}
