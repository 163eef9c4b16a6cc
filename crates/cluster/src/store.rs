//! openraft's log store and state machine, on sled.
//!
//! One sled database per node, three trees:
//! - `log`: entries keyed by their index (big-endian, so sled's order is the log's order);
//! - `meta`: the vote, the committed log id and the last purged log id;
//! - `sm`: the current snapshot: the serialized [`State`] with the log id and membership it
//!   includes.
//!
//! The state machine's durable form is its last snapshot plus the log after it: applying an
//! entry changes only memory, and after a restart openraft applies the committed entries that
//! follow the snapshot again. (Writing the whole state on every applied batch, as a first
//! version did, made each write cost time and disk in proportion to the state's size.) A
//! snapshot is flushed before openraft may purge the log it covers.
//!
//! Log appends, votes, truncation and purges are flushed to disk before they are acknowledged:
//! Raft's safety depends on it. Values are JSON: the state is configuration-sized, and a
//! readable store is worth more here than the bytes a binary codec would save.

// openraft's trait methods return its `StorageError` (over 200 bytes); our helpers return the
// same type rather than boxing it only to unbox it again at the trait boundary.
#![allow(clippy::result_large_err)]

use crate::types::{
    LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use catalog::Catalog;
use model::State;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Opens (or creates) the node's sled database and returns its two halves.
pub fn open(dir: &Path, catalog: Arc<Catalog>) -> Result<(LogStore, StateMachine), StorageError> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| StorageIOError::write(&e))?;
    let log = LogStore::new(&db)?;
    let sm = StateMachine::new(&db, catalog)?;
    Ok((log, sm))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft types always serialize")
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    serde_json::from_slice(bytes).map_err(|e| AnyError::new(&e))
}

fn read_json<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(|e| StorageIOError::read(&e))? {
        Some(bytes) => Ok(Some(from_json(&bytes).map_err(StorageIOError::read)?)),
        None => Ok(None),
    }
}

/// The Raft log and the vote.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn new(db: &sled::Db) -> Result<Self, StorageError> {
        let open = |name: &str| db.open_tree(name).map_err(|e| StorageIOError::write(&e));
        Ok(LogStore {
            db: db.clone(),
            log: open("log")?,
            meta: open("meta")?,
        })
    }

    /// True when this node has never voted nor stored a log entry: a node that has never
    /// been part of a cluster.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let voted = self
            .meta
            .contains_key(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(!voted
            && self.log.is_empty()
            && !self.meta.contains_key(KEY_LAST_PURGED).unwrap_or(false))
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), sled::Error> {
        self.meta.insert(key, to_json(v)).map(|_| ())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(|e| StorageIOError::read_logs(&e))?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().expect("8-byte keys"));
            if !range.contains(&idx) {
                break;
            }
            out.push(from_json(&v).map_err(StorageIOError::read_logs)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = read_json(&self.meta, KEY_LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = from_json(&v).map_err(StorageIOError::read_logs)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_json(&self.meta, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only means re-applying committed entries after a restart.
        self.put_meta(KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_json::<Option<LogId>>(&self.meta, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), to_json(&e));
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Acknowledge only once the entries are on disk.
        let flushed = self.flush().await.map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Remove every entry from log_id.index on.
        self.remove_entries(log_id.index..).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(KEY_LAST_PURGED, &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_entries(..=log_id.index).await
    }
}

impl LogStore {
    /// Removes the entries whose index is in `range`, and flushes.
    async fn remove_entries(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError> {
        use std::ops::Bound;
        let key = |b: Bound<&u64>| match b {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let keys = (key(range.start_bound()), key(range.end_bound()));
        let mut batch = sled::Batch::default();
        for k in self.log.range(keys).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// A snapshot as stored: its metadata and the serialized state.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Stores the snapshot and flushes it: it is the durable state machine, and once it is
/// written openraft may purge the log entries it covers.
async fn save_snapshot(sm: &sled::Tree, stored: &StoredSnapshot) -> Result<(), StorageError> {
    let fail = |e: &sled::Error| StorageIOError::write_snapshot(Some(stored.meta.signature()), e);
    sm.insert(KEY_SNAPSHOT, to_json(stored))
        .map_err(|e| fail(&e))?;
    sm.flush_async().await.map_err(|e| fail(&e))?;
    Ok(())
}

/// The applied state, and the snapshots made of it.
pub struct StateMachine {
    sm: sled::Tree,
    catalog: Arc<Catalog>,
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Every applied batch publishes the new state here, for the admin API and the data plane.
    published: watch::Sender<Arc<State>>,
    snapshot_seq: u64,
}

impl StateMachine {
    fn new(db: &sled::Db, catalog: Arc<Catalog>) -> Result<Self, StorageError> {
        let sm = db
            .open_tree("sm")
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let (state, last_applied, membership) =
            match read_json::<StoredSnapshot>(&sm, KEY_SNAPSHOT)? {
                Some(snap) => {
                    let state: State = from_json(&snap.data).map_err(|e| {
                        StorageIOError::read_snapshot(Some(snap.meta.signature()), e)
                    })?;
                    (state, snap.meta.last_log_id, snap.meta.last_membership)
                }
                None => (State::default(), None, StoredMembership::default()),
            };
        let (published, _) = watch::channel(Arc::new(state.clone()));
        Ok(StateMachine {
            sm,
            catalog,
            state,
            last_applied,
            membership,
            published,
            snapshot_seq: 0,
        })
    }

    /// A receiver that sees every newly applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.published.subscribe()
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.state.clone()));
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for the builder.
pub struct SnapshotBuilder {
    sm: sled::Tree,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: self.data.clone(),
        };
        save_snapshot(&self.sm, &stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Response(Ok(model::Reply::Deleted {
                    kind: "nothing".into(),
                    name: String::new(),
                })),
                EntryPayload::Normal(p) => Response(self.state.apply(&p, &self.catalog)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response(Ok(model::Reply::Deleted {
                        kind: "nothing".into(),
                        name: String::new(),
                    }))
                }
            };
            replies.push(reply);
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_seq),
            None => format!("none-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            sm: self.sm.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data: to_json(&self.state),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: State = from_json(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        save_snapshot(&self.sm, &stored).await?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = read_json(&self.sm, KEY_SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path(), Arc::new(Catalog::builtin().clone()))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage test suite, against the sled store.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(SledBuilder)
    }

    #[tokio::test]
    async fn the_state_survives_a_reopen_through_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::builtin().clone());
        let entry = |index: u64, command: model::Command| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(model::Proposal { at_ms: 5, command }),
        };
        let create = |name: &str| model::Command::CreateInstance {
            name: name.into(),
            spec: "api.s1.small".into(),
            region: "cn-hongkong".into(),
            charge_type: model::ChargeType::Postpaid,
            account: model::DEFAULT_ACCOUNT.into(),
        };
        {
            let (_log, mut sm) = open(dir.path(), cat.clone()).unwrap();
            let r = sm.apply([entry(1, create("a"))]).await.unwrap();
            assert!(r[0].0.is_ok());
            let r = sm
                .apply([entry(
                    2,
                    model::Command::DeleteInstance { name: "zz".into() },
                )])
                .await
                .unwrap();
            assert!(
                r[0].0.is_err(),
                "a refused command is a reply, not a storage error"
            );
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            // Applied after the snapshot: only in memory, replayed from the log after a restart.
            sm.apply([entry(3, create("b"))]).await.unwrap();
        }
        let (_log, mut sm) = open(dir.path(), cat).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        let state = sm.subscribe().borrow().clone();
        assert!(state.instances.contains_key("a"));
        assert!(!state.instances.contains_key("b"));
    }
}
