//! openraft's log store and state machine, on sled.
//!
//! # Layout
//!
//! One sled database per node (`DATA_DIR/raft/sled`), and snapshot files beside it
//! (`DATA_DIR/raft/snapshots`):
//! - `log`: entries keyed by their index (big-endian, so sled's order is the log's order);
//! - `meta`: the vote, the committed log id and the last purged log id;
//! - `sm`: which snapshot file is current, and which history generation;
//! - `history.N`: what applied commands wrote once (see [`history`]);
//! - the snapshot files (see the `snapshot` module).
//!
//! The state machine's configuration ([`State`]) lives in memory in persistent maps: applying
//! an entry changes O(log n) of it, and publishing it to readers is an O(1) clone. Its durable
//! form is the last snapshot plus the log after it: after a restart openraft applies the
//! committed entries that follow the snapshot again. History is never in memory: each applied
//! batch writes its records and the applied log id in one sled batch, under keys that the state
//! determines, so replaying an entry writes the same records again.
//!
//! A snapshot is built from an O(1) copy of the state in a blocking task while entries go on
//! being applied; it is written to a file frame by frame, sent to a lagging node in chunks by
//! openraft, and installed from the file into a new history generation, frame by frame.
//!
//! Log appends, votes, truncation and purges are flushed to disk before they are acknowledged:
//! Raft's safety depends on it. Log values are JSON (small, and readable when debugging);
//! snapshots and history are postcard.

pub mod history;
mod snapshot;

use crate::types::{
    LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use catalog::Catalog;
use history::{History, HistoryTrees};
use model::{ChangeSet, State};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// sled's page cache. Its default (1 GiB) fills as history is written and read, and shows as
/// resident memory that grows with time; the log and history are read in order and by page,
/// so a small cache serves them.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Opens (or creates) the node's sled database in `dir/sled` and its snapshot files in
/// `dir/snapshots`, and returns the store's two halves.
pub fn open(dir: &Path, catalog: Arc<Catalog>) -> Result<(LogStore, StateMachine), StorageError> {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(SLED_CACHE_BYTES)
        .open()
        .map_err(|e| StorageIOError::write(&e))?;
    let log = LogStore::new(&db)?;
    let sm = StateMachine::new(&db, dir.join("snapshots"), catalog)?;
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

/// What the data plane must recompile since it last looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Only what these names say.
    Some(ChangeSet),
    /// Everything: the state was replaced (a snapshot was installed, or the node started).
    Everything,
}

impl Changes {
    fn merge(&mut self, more: Changes) {
        match (&mut *self, more) {
            (Changes::Everything, _) => {}
            (_, Changes::Everything) => *self = Changes::Everything,
            (Changes::Some(a), Changes::Some(b)) => a.merge(b),
        }
    }
}

/// The applied state as readers see it: the latest state, and the changes not yet taken by
/// the one consumer that compiles them (the data plane). Both are updated under one lock, so
/// that a consumer never takes changes newer than the state it reads with them.
pub struct Publication {
    latest: Mutex<(Arc<State>, Changes)>,
    notify: watch::Sender<Arc<State>>,
}

impl Publication {
    fn new(state: Arc<State>) -> Self {
        Publication {
            latest: Mutex::new((state.clone(), Changes::Everything)),
            notify: watch::channel(state).0,
        }
    }

    fn publish(&self, state: Arc<State>, changes: Changes) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.0 = state.clone();
        latest.1.merge(changes);
        self.notify.send_replace(state);
    }

    /// The latest state, and everything that changed since the previous call.
    pub fn take(&self) -> (Arc<State>, Changes) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let changes = std::mem::replace(&mut latest.1, Changes::Some(ChangeSet::default()));
        (latest.0.clone(), changes)
    }

    /// Sees every newly applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.notify.subscribe()
    }
}

/// Where the current snapshot is, as recorded in the `sm` tree.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotPointer {
    meta: SnapshotMeta,
    /// The file's name in the snapshot directory.
    file: String,
}

fn read_pointer(sm: &sled::Tree) -> Result<Option<SnapshotPointer>, StorageError> {
    read_json(sm, KEY_SNAPSHOT)
}

/// The applied state, and the snapshots made of it.
pub struct StateMachine {
    sm: sled::Tree,
    /// Where snapshot files are written.
    snapshot_dir: PathBuf,
    catalog: Arc<Catalog>,
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    history: HistoryTrees,
    /// Every applied batch publishes the new state and its changes here.
    publication: Arc<Publication>,
    snapshot_seq: u64,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    fn new(
        db: &sled::Db,
        snapshot_dir: PathBuf,
        catalog: Arc<Catalog>,
    ) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(sm_write_err)?;
        std::fs::create_dir_all(&snapshot_dir).map_err(sm_write_err)?;
        let generation: u64 = read_json(&sm, history::KEY_GENERATION)?.unwrap_or(0);
        let history = HistoryTrees::open(db, generation).map_err(sm_read_err)?;
        let (state, last_applied, membership) = match read_pointer(&sm)? {
            Some(p) => {
                let path = snapshot_dir.join(&p.file);
                let (meta, state) = snapshot::read_state(&path)
                    .map_err(|e| StorageIOError::read_snapshot(Some(p.meta.signature()), &e))?;
                (state, meta.last_log_id, meta.last_membership)
            }
            None => (State::default(), None, StoredMembership::default()),
        };
        state
            .check_catalog(&catalog)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let publication = Arc::new(Publication::new(Arc::new(state.clone())));
        Ok(StateMachine {
            sm,
            snapshot_dir,
            catalog,
            state,
            last_applied,
            membership,
            history,
            publication,
            snapshot_seq: 0,
            receiving: None,
        })
    }

    /// Where readers find the applied state and its changes.
    pub fn publication(&self) -> Arc<Publication> {
        self.publication.clone()
    }

    /// A reader of this node's history.
    pub fn history(&self) -> History {
        self.history.reader()
    }

    fn publish(&self, changes: Changes) {
        self.publication
            .publish(Arc::new(self.state.clone()), changes);
    }

    fn set_current_snapshot(&self, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
        PointerWriter {
            sm: &self.sm,
            dir: &self.snapshot_dir,
        }
        .set_current(meta, file)
    }
}

fn snapshot_write_err(meta: &SnapshotMeta, e: &dyn std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e.to_string())).into()
}

/// Deletes snapshot files other than `keep`. A file still being sent to a follower stays
/// readable through its open handle.
fn remove_other_snapshots(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".snap") && name != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Builds a snapshot from the O(1) copy of the state taken when openraft asked for the
/// builder, while the state machine goes on applying.
pub struct SnapshotBuilder {
    sm: sled::Tree,
    snapshot_dir: PathBuf,
    meta: SnapshotMeta,
    state: Arc<State>,
    history: HistoryTrees,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let file = format!("{}.snap", self.meta.snapshot_id);
        let path = self.snapshot_dir.join(&file);
        let tmp = self.snapshot_dir.join(format!("{file}.tmp"));
        let (meta, state, tree) = (
            self.meta.clone(),
            self.state.clone(),
            self.history.current(),
        );
        let fail = |e: &dyn std::fmt::Display| snapshot_write_err(&self.meta, e);
        let written = {
            let (tmp, path) = (tmp.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                let size = snapshot::write(&tmp, &meta, &state, &tree)?;
                std::fs::rename(&tmp, &path)?;
                Ok::<_, snapshot::SnapshotError>(size)
            })
            .await
        };
        let size = match written {
            Ok(Ok(size)) => size,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(e) => return Err(fail(&e)),
        };
        PointerWriter {
            sm: &self.sm,
            dir: &self.snapshot_dir,
        }
        .set_current(&self.meta, &file)?;
        // Generations replaced by an installed snapshot are no longer read by anyone.
        if let Err(e) = self.history.drop_stale() {
            tracing::warn!("dropping old history trees: {e}");
        }
        tracing::info!(
            snapshot = %self.meta.snapshot_id,
            bytes = size,
            "built a snapshot"
        );
        let f = tokio::fs::File::open(&path).await.map_err(|e| fail(&e))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(f),
        })
    }
}

/// Records which snapshot file is current, and removes the files of earlier ones.
struct PointerWriter<'a> {
    sm: &'a sled::Tree,
    dir: &'a Path,
}

impl PointerWriter<'_> {
    fn set_current(&self, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
        let pointer = SnapshotPointer {
            meta: meta.clone(),
            file: file.to_string(),
        };
        let fail = |e: &dyn std::fmt::Display| snapshot_write_err(meta, e);
        self.sm
            .insert(KEY_SNAPSHOT, to_json(&pointer))
            .map_err(|e| fail(&e))?;
        self.sm.flush().map_err(|e| fail(&e))?;
        remove_other_snapshots(self.dir, file);
        Ok(())
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
        let mut batch = sled::Batch::default();
        let mut changes = ChangeSet::default();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(model::Reply::Done),
                EntryPayload::Normal(p) => {
                    let applied = self.state.apply(&p, &self.catalog).map_err(|e| {
                        // Applying with another catalog than the cluster's would bill
                        // differently from the other nodes: stop rather than diverge.
                        tracing::error!("{e}");
                        StorageIOError::apply(entry.log_id, &e)
                    })?;
                    for record in &applied.history {
                        history::put(&mut batch, record);
                    }
                    changes.merge(applied.changes);
                    applied.reply
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(model::Reply::Done)
                }
            };
            replies.push(Response(reply));
        }
        if let Some(applied) = &self.last_applied {
            history::put_applied(&mut batch, applied);
        }
        self.history
            .current()
            .apply_batch(batch)
            .map_err(sm_write_err)?;
        self.publish(Changes::Some(changes));
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
            snapshot_dir: self.snapshot_dir.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            state: Arc::new(self.state.clone()),
            history: self.history.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        self.snapshot_seq += 1;
        let path = self
            .snapshot_dir
            .join(format!("incoming-{}.part", self.snapshot_seq));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(sm_write_err)?;
        self.receiving = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let fail = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(e.to_string()),
            ))
        };
        let mut file = *snapshot;
        file.flush().await.map_err(|e| fail(&e))?;
        let mut file = file.into_std().await;
        if let Some(incoming) = self.receiving.take() {
            // Read from the handle given (which openraft may have replaced); the part file
            // is not needed once it is.
            let _ = std::fs::remove_file(incoming);
        }
        // The history goes into a new generation, current only once it is complete.
        let generation = self.history.generation() + 1;
        let tree = self.history.create(generation).map_err(|e| fail(&e))?;
        let name = format!("{}.snap", meta.snapshot_id);
        let keep = self.snapshot_dir.join(&name);
        let installed = {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || {
                use std::io::Seek;
                file.rewind()?;
                snapshot::install(file, &tree, &keep)
            })
            .await
        };
        let (file_meta, state) = match installed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(e) => return Err(fail(&e)),
        };
        if file_meta.last_log_id != meta.last_log_id {
            return Err(fail(&std::io::Error::other(format!(
                "the snapshot file is of {:?}, not {:?}",
                file_meta.last_log_id, meta.last_log_id
            ))));
        }
        if let Err(e) = state.check_catalog(&self.catalog) {
            tracing::error!("refusing the leader's snapshot: {e}");
            return Err(fail(&e));
        }
        self.sm
            .insert(history::KEY_GENERATION, to_json(&generation))
            .map_err(|e| fail(&e))?;
        self.set_current_snapshot(meta, &name)?;
        self.history.make_current(generation, tree);
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish(Changes::Everything);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(p) = read_pointer(&self.sm)? else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(self.snapshot_dir.join(&p.file))
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(p.meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta: p.meta,
            snapshot: Box::new(f),
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

    /// Opens the store in `dir` again after every handle to it was dropped. sled gives its
    /// lock file up when its background threads let go of the database, a moment after the
    /// last handle is dropped (later on a busy machine), and offers nothing to wait on: so
    /// poll, with a deadline, while the lock is still held; any other error fails at once.
    async fn reopen(dir: &Path, cat: Arc<Catalog>) -> (LogStore, StateMachine) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open(dir, cat.clone()) {
                Ok(store) => return store,
                Err(e)
                    if format!("{e:?}").contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopening the store: {e:?}"),
            }
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
            payload: EntryPayload::Normal(model::Proposal {
                at_ms: 5,
                catalog: Catalog::builtin().fingerprint().into(),
                request_id: None,
                command,
            }),
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
        let (_log, mut sm) = reopen(dir.path(), cat).await;
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        let state = sm.publication().subscribe().borrow().clone();
        assert!(state.instances.contains_key("a"));
        assert!(!state.instances.contains_key("b"));
    }

    fn entry(index: u64, at_ms: u64, command: model::Command) -> Entry<TypeConfig> {
        Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(model::Proposal {
                at_ms,
                catalog: Catalog::builtin().fingerprint().into(),
                request_id: None,
                command,
            }),
        }
    }

    /// Commands that write history: accounts, recharges (ledger), alerts (events).
    fn busy_log(from: u64, n: u64) -> Vec<Entry<TypeConfig>> {
        (from..from + n)
            .map(|i| {
                let account = format!("acct-{}", i % 7);
                let command = match i % 3 {
                    0 => model::Command::CreateAccount {
                        name: account,
                        webhook: None,
                        balance_alert: None,
                    },
                    1 => model::Command::Recharge {
                        account,
                        amount: catalog::Usd::parse("1.25").unwrap(),
                    },
                    // A new threshold each time: setting the same one again does not alert.
                    _ => model::Command::SetAccountAlert {
                        account,
                        threshold: model::Update::Set(
                            catalog::Usd::parse(&format!("{}", 100 + i)).unwrap(),
                        ),
                        webhook: model::Update::Keep,
                    },
                };
                entry(i, 1_767_225_600_000 + i, command)
            })
            .collect()
    }

    /// Every ledger entry and event of a store, read through its pages.
    fn all_history(
        sm: &StateMachine,
    ) -> (
        Vec<(String, u64, model::history::LedgerEntry)>,
        Vec<model::history::EventRecord>,
    ) {
        let h = sm.history();
        let state = sm.publication().subscribe().borrow().clone();
        let mut ledger = Vec::new();
        for a in state.accounts.keys() {
            let mut after = 0;
            loop {
                let page = h.ledger(a, after, 3).unwrap();
                ledger.extend(page.items.into_iter().map(|(n, e)| (a.clone(), n, e)));
                match page.next {
                    Some(n) => after = n,
                    None => break,
                }
            }
        }
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = h.events(None, after, 4).unwrap();
            events.extend(page.items);
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        (ledger, events)
    }

    /// A snapshot built while entries go on being applied holds exactly the state it was taken
    /// from and that state's history; installed on another node, replaying the later entries
    /// gives the same state and history pages; and both survive a reopen.
    #[tokio::test]
    async fn a_snapshot_taken_under_writes_installs_exactly_and_survives_a_reopen() {
        let cat = Arc::new(Catalog::builtin().clone());
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_log_a, mut a) = open(dir_a.path(), cat.clone()).unwrap();
        a.apply(busy_log(1, 60)).await.unwrap();
        let at_snapshot = a.publication().subscribe().borrow().clone();
        let history_at_snapshot = all_history(&a);
        let mut builder = a.get_snapshot_builder().await;
        // Applied after the builder was taken: not in the snapshot.
        let later = busy_log(61, 40);
        a.apply(later.clone()).await.unwrap();
        let snap = builder.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(60));

        let (log_b, mut b) = open(dir_b.path(), cat.clone()).unwrap();
        let mut incoming = b.begin_receiving_snapshot().await.unwrap();
        let mut from = snap.snapshot;
        tokio::io::copy(&mut from, &mut *incoming).await.unwrap();
        b.install_snapshot(&snap.meta, incoming).await.unwrap();
        assert_eq!(*b.publication().subscribe().borrow().clone(), *at_snapshot);
        assert_eq!(all_history(&b), history_at_snapshot);
        assert_eq!(b.publication().take().1, Changes::Everything);

        b.apply(later).await.unwrap();
        let state_a = a.publication().subscribe().borrow().clone();
        assert_eq!(*b.publication().subscribe().borrow().clone(), *state_a);
        assert_eq!(all_history(&b), all_history(&a));
        let (ledger, events) = all_history(&a);
        assert!(
            ledger.len() > 20 && events.len() > 10,
            "{} {}",
            ledger.len(),
            events.len()
        );

        // B restarts: the state comes from its snapshot (the log replays the rest), the
        // history from sled.
        let full = all_history(&b);
        drop((log_b, b));
        let (_log_b, b) = reopen(dir_b.path(), cat).await;
        assert_eq!(*b.publication().subscribe().borrow().clone(), *at_snapshot);
        assert_eq!(all_history(&b).1, full.1);
    }
}
