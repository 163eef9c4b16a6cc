//! The history trees: what applied commands wrote once (ledger entries, bills, events, closed
//! days' usage), on disk in sled, read a page at a time.
//!
//! All of one generation's history lives in one sled tree, so that an applied batch's records
//! and the applied log id go to disk in one atomic sled batch. Keys start with a kind byte:
//!
//! | key | value |
//! |---|---|
//! | `L` account `\0` seq (u64 BE) | [`LedgerEntry`] |
//! | `B` account `\0` day (u64 BE) | [`Bill`] |
//! | `E` seq (u64 BE) | [`EventRecord`] (one sequence for the cluster) |
//! | `e` account `\0` seq (u64 BE) | empty: the account's events, in order |
//! | `U` account `\0` day (u64 BE) | [`DayUsage`] |
//! | `@applied` | the last applied log id whose records are here |
//!
//! Account names cannot hold `\0` (see `model::validate::name`), so one account's keys never
//! run into another's. Values are postcard. Big-endian numbers make sled's byte order the
//! numeric order, so a page is a range scan.
//!
//! A snapshot installed from the leader replaces the history: it is written into a new
//! generation's tree, which becomes current only once complete (a crash half-way leaves the
//! old one current), and the old tree is dropped later (see `HistoryTrees::drop_stale`).

use crate::types::LogId;
use model::history::{Bill, DayUsage, EventRecord, HistoryRecord, LedgerEntry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

const KEY_APPLIED: &[u8] = b"@applied";
/// `sm` tree key naming the current generation.
pub(crate) const KEY_GENERATION: &[u8] = b"history_generation";

/// Why history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("history record {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        source: postcard::Error,
    },
}

fn tree_name(generation: u64) -> String {
    format!("history.{generation}")
}

fn account_key(kind: u8, account: &str, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 10);
    k.push(kind);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn account_prefix(kind: u8, account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 2);
    k.push(kind);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k
}

fn event_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'E'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("history records always encode")
}

fn from_bytes<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, HistoryError> {
    postcard::from_bytes(v).map_err(|source| HistoryError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Adds one record's keys to a batch.
pub(crate) fn put(batch: &mut sled::Batch, record: &HistoryRecord) {
    match record {
        HistoryRecord::Ledger {
            account,
            seq,
            entry,
        } => batch.insert(account_key(b'L', account, *seq), to_bytes(entry)),
        HistoryRecord::Bill { account, bill } => {
            batch.insert(account_key(b'B', account, bill.day), to_bytes(bill))
        }
        HistoryRecord::Event(e) => {
            batch.insert(event_key(e.seq), to_bytes(e));
            batch.insert(account_key(b'e', &e.account, e.seq), Vec::new());
        }
        HistoryRecord::Usage {
            account,
            day,
            usage,
        } => batch.insert(account_key(b'U', account, *day), to_bytes(usage)),
    }
}

/// Notes in a batch which applied log id its records reach.
pub(crate) fn put_applied(batch: &mut sled::Batch, applied: &LogId) {
    batch.insert(
        KEY_APPLIED,
        serde_json::to_vec(applied).expect("log ids encode"),
    );
}

/// Every record of a tree, in key order, for a snapshot; records beyond `cut` (appended after
/// the state the snapshot is of) are left out.
pub(crate) fn records(
    tree: &sled::Tree,
    cut: &model::history::HistoryCut,
) -> impl Iterator<Item = Result<HistoryRecord, HistoryError>> {
    tree.iter().filter_map(move |kv| {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let record = decode_record(&k, &v).transpose()?;
        match record {
            Ok(r) if !cut.includes(&r) => None,
            other => Some(other),
        }
    })
}

/// The record a key holds; `None` for index and bookkeeping keys.
fn decode_record(k: &[u8], v: &[u8]) -> Result<Option<HistoryRecord>, HistoryError> {
    let split = |k: &[u8]| -> Option<(String, u64)> {
        let body = &k[1..];
        let zero = body.iter().position(|b| *b == 0)?;
        let n = u64::from_be_bytes(body[zero + 1..].try_into().ok()?);
        Some((String::from_utf8_lossy(&body[..zero]).into_owned(), n))
    };
    match k.first() {
        Some(b'L') => split(k).map(|(account, seq)| -> Result<_, HistoryError> {
            Ok(HistoryRecord::Ledger {
                account,
                seq,
                entry: from_bytes(k, v)?,
            })
        }),
        Some(b'B') => split(k).map(|(account, _)| -> Result<_, HistoryError> {
            Ok(HistoryRecord::Bill {
                account,
                bill: from_bytes(k, v)?,
            })
        }),
        Some(b'E') => Some(from_bytes(k, v).map(HistoryRecord::Event)),
        Some(b'U') => split(k).map(|(account, day)| -> Result<_, HistoryError> {
            Ok(HistoryRecord::Usage {
                account,
                day,
                usage: from_bytes(k, v)?,
            })
        }),
        _ => None,
    }
    .transpose()
}

/// The trees of every generation, and which one is current.
#[derive(Clone)]
pub(crate) struct HistoryTrees {
    db: sled::Db,
    current: Arc<arc_swap::ArcSwap<(u64, sled::Tree)>>,
}

impl HistoryTrees {
    pub(crate) fn open(db: &sled::Db, generation: u64) -> Result<Self, sled::Error> {
        let tree = db.open_tree(tree_name(generation))?;
        Ok(HistoryTrees {
            db: db.clone(),
            current: Arc::new(arc_swap::ArcSwap::from_pointee((generation, tree))),
        })
    }

    pub(crate) fn current(&self) -> sled::Tree {
        self.current.load().1.clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.current.load().0
    }

    /// A new, empty generation's tree (not current yet).
    pub(crate) fn create(&self, generation: u64) -> Result<sled::Tree, sled::Error> {
        let name = tree_name(generation);
        self.db.drop_tree(&name)?;
        self.db.open_tree(name)
    }

    pub(crate) fn make_current(&self, generation: u64, tree: sled::Tree) {
        self.current.store(Arc::new((generation, tree)));
    }

    /// Drops every generation's tree but the current one.
    pub(crate) fn drop_stale(&self) -> Result<(), sled::Error> {
        let keep = tree_name(self.generation());
        for name in self.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with("history.") && name != keep {
                self.db.drop_tree(name.as_bytes())?;
            }
        }
        Ok(())
    }

    /// A reader of the current history.
    pub(crate) fn reader(&self) -> History {
        History {
            trees: self.clone(),
        }
    }
}

/// Reads this node's copy of the history, a page at a time. Cheap to clone.
///
/// Reads are local: a node that lags the leader shows the history it has applied.
#[derive(Clone)]
pub struct History {
    trees: HistoryTrees,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

/// A page of records and where the next page starts, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to read the next page; `None` when this page is the last.
    pub next: Option<u64>,
}

impl History {
    /// `account`'s ledger entries with sequence numbers above `after`, oldest first, as
    /// `(seq, entry)`.
    pub fn ledger(
        &self,
        account: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page<(u64, LedgerEntry)>, HistoryError> {
        self.page(b'L', account, after, limit)
    }

    /// `account`'s last `n` ledger entries, oldest first, given its ledger length.
    pub fn ledger_tail(
        &self,
        account: &str,
        len: u64,
        n: usize,
    ) -> Result<Vec<(u64, LedgerEntry)>, HistoryError> {
        let after = len.saturating_sub(n as u64);
        Ok(self.ledger(account, after, n)?.items)
    }

    /// `account`'s bills of the days after `after_day` (`None`: from the first), oldest first.
    pub fn bills(
        &self,
        account: &str,
        after_day: Option<u64>,
        limit: usize,
    ) -> Result<Page<Bill>, HistoryError> {
        let after = after_day.map_or(0, |d| d + 1);
        let page = self.page_from::<Bill>(b'B', account, after, limit)?;
        Ok(Page {
            items: page.items.into_iter().map(|(_, b)| b).collect(),
            next: page.next,
        })
    }

    /// `account`'s bill for `day`.
    pub fn bill(&self, account: &str, day: u64) -> Result<Option<Bill>, HistoryError> {
        let key = account_key(b'B', account, day);
        match self.trees.current().get(&key)? {
            Some(v) => Ok(Some(from_bytes(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// `account`'s usage of the closed days from `first_day` to `last_day`, as `(day, usage)`.
    pub fn usage(
        &self,
        account: &str,
        first_day: u64,
        last_day: u64,
    ) -> Result<Vec<(u64, DayUsage)>, HistoryError> {
        let tree = self.trees.current();
        let from = account_key(b'U', account, first_day);
        let to = account_key(b'U', account, last_day);
        tree.range(from..=to)
            .map(|kv| {
                let (k, v) = kv?;
                let day = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
                Ok((day, from_bytes(&k, &v)?))
            })
            .collect()
    }

    /// `account`'s usage of the closed days after `after_day` (`None`: from the first), oldest
    /// first, as `(day, usage)`: [`History::usage`] a page at a time, for reads that must not
    /// depend on how many days the account has been around.
    pub fn usage_page(
        &self,
        account: &str,
        after_day: Option<u64>,
        limit: usize,
    ) -> Result<Page<(u64, DayUsage)>, HistoryError> {
        match after_day {
            Some(d) => self.page(b'U', account, d, limit),
            None => self.page_from(b'U', account, 0, limit),
        }
    }

    /// Events with sequence numbers above `after`, of one account or (`None`) of all, oldest
    /// first.
    pub fn events(
        &self,
        account: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Page<EventRecord>, HistoryError> {
        let tree = self.trees.current();
        let mut items = Vec::new();
        let mut next = None;
        let seqs: Box<dyn Iterator<Item = Result<u64, HistoryError>>> = match account {
            Some(a) => {
                let prefix = account_prefix(b'e', a);
                let from = account_key(b'e', a, after.saturating_add(1));
                Box::new(
                    tree.range(from..)
                        .take_while(move |kv| {
                            kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                        })
                        .map(|kv| {
                            let (k, _) = kv?;
                            Ok(u64::from_be_bytes(
                                k[k.len() - 8..].try_into().expect("8 bytes"),
                            ))
                        }),
                )
            }
            None => Box::new(
                tree.range(event_key(after.saturating_add(1))..event_key(u64::MAX))
                    .map(|kv| {
                        let (k, _) = kv?;
                        Ok(u64::from_be_bytes(k[1..9].try_into().expect("8 bytes")))
                    }),
            ),
        };
        for seq in seqs {
            let seq = seq?;
            if items.len() == limit {
                next = Some(items.last().map_or(after, |e: &EventRecord| e.seq));
                break;
            }
            let key = event_key(seq);
            if let Some(v) = tree.get(&key)? {
                items.push(from_bytes(&key, &v)?);
            }
        }
        Ok(Page { items, next })
    }

    fn page<T: DeserializeOwned>(
        &self,
        kind: u8,
        account: &str,
        after: u64,
        limit: usize,
    ) -> Result<Page<(u64, T)>, HistoryError> {
        self.page_from(kind, account, after.saturating_add(1), limit)
    }

    /// Records of `kind` for `account` numbered `from` on.
    fn page_from<T: DeserializeOwned>(
        &self,
        kind: u8,
        account: &str,
        from: u64,
        limit: usize,
    ) -> Result<Page<(u64, T)>, HistoryError> {
        let tree = self.trees.current();
        let prefix = account_prefix(kind, account);
        let mut items = Vec::new();
        let mut next = None;
        for kv in tree.range(account_key(kind, account, from)..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let n = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            if items.len() == limit {
                next = items.last().map(|(n, _)| *n);
                break;
            }
            items.push((n, from_bytes(&k, &v)?));
        }
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_pages_cover_each_account_day_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let trees = HistoryTrees::open(&db, 0).unwrap();
        let mut batch = sled::Batch::default();
        // Two accounts whose names share a prefix, so a page must stop at its account's end.
        for (account, days) in [("acme", [3, 4, 9, 40, 41]), ("acme2", [1, 2, 3, 4, 5])] {
            for day in days {
                let usage = DayUsage {
                    shared_calls: day,
                    ..DayUsage::default()
                };
                let record = HistoryRecord::Usage {
                    account: account.into(),
                    day,
                    usage,
                };
                put(&mut batch, &record);
            }
        }
        trees.current().apply_batch(batch).unwrap();
        let h = trees.reader();
        let mut days = Vec::new();
        let mut after = None;
        loop {
            let page = h.usage_page("acme", after, 2).unwrap();
            assert!(page.items.len() <= 2);
            days.extend(page.items.iter().map(|(d, u)| {
                assert_eq!(*d, u.shared_calls);
                *d
            }));
            match page.next {
                Some(d) => after = Some(d),
                None => break,
            }
        }
        assert_eq!(days, [3, 4, 9, 40, 41]);
        let from_nine = h.usage_page("acme", Some(9), 10).unwrap();
        assert_eq!(from_nine.items.len(), 2);
        assert_eq!(from_nine.next, None);
        let past_the_end = h.usage_page("acme", Some(u64::MAX), 10).unwrap();
        assert!(past_the_end.items.is_empty());
    }
}
