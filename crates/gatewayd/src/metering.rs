//! Usage metering: the data plane's counters, journalled on this node's disk, then committed
//! into the replicated state.
//!
//! Two tasks, so that a slow commit (no leader, no quorum) never holds up the journal:
//!
//! - The **journal writer** ([`JournalWriter`]), every `--usage-journal-interval-ms` (100 ms by
//!   default), drains the counters by the hour the calls arrived in (the data plane's clock,
//!   which honours the development clock) and writes one [`UsageBatch`] per hour to a sled
//!   database in the data dir (`usage-journal`), fsynced before the next drain. A SIGKILL
//!   loses at most the calls counted since the last write: one interval's.
//! - The **committer** ([`Committer`]), every `--usage-flush-ms`, proposes the journalled
//!   batches, oldest first, as one `RecordUsageBatches`, and deletes them from the journal once
//!   it is committed. After a restart it finds the batches that were not yet deleted and
//!   proposes them again.
//!
//! Nothing is counted twice: each batch has a `seq` that rises across restarts (the last one
//! is kept in the journal, and it is at least the wall clock in milliseconds), and the state
//! machine counts a batch only if its `seq` is above the last one it counted from this node.
//! A commit that failed may still have been applied; the next proposal carries the same
//! batches (and maybe newer ones), and the applied ones are skipped.
//!
//! Each batch also says up to which hour the node's counts are complete (`open_hour`); the
//! leader closes a day once every member's are past it (see [`crate::jobs`]). A node writes a
//! batch without counts when the hour turns, so that an idle node does not hold the close up.

use anyhow::{Context, Result};
use cluster::Node;
use dataplane::Dataplane;
use model::{Command, UsageBatch};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Calls written to the journal since the node started, for `/metrics`
/// (`gateway_usage_journalled_calls_total`).
pub static JOURNALLED_CALLS: AtomicU64 = AtomicU64::new(0);
/// Calls of journal batches this node committed since it started, including batches left
/// from before a restart (`gateway_usage_committed_calls_total`).
pub static COMMITTED_CALLS: AtomicU64 = AtomicU64::new(0);

fn calls_in(batches: &[UsageBatch]) -> u64 {
    batches
        .iter()
        .flat_map(|b| &b.deltas)
        .map(|d| d.calls)
        .sum()
}

/// The prefix of batch keys (`b` and the seq, big-endian, so that keys sort by seq).
const BATCH_PREFIX: &[u8] = b"b";
/// The last seq written, kept when its batch is deleted.
const KEY_LAST_SEQ: &[u8] = b"m/last_seq";
/// The most batches one proposal carries: a minute's at the default interval, a few KB.
const BATCHES_PER_COMMIT: usize = 600;
/// The journal's page cache: it holds a few seconds of batches.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

fn batch_key(seq: u64) -> Vec<u8> {
    let mut k = BATCH_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The on-disk journal: batches by seq. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
}

impl Journal {
    /// Opens (or creates) the journal in `data_dir/usage-journal`.
    pub fn open(data_dir: &Path) -> Result<Journal> {
        let path = data_dir.join("usage-journal");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            // Durability is the writer's fsync each interval, not sled's own timer.
            .flush_every_ms(None)
            .open()
            .with_context(|| format!("cannot open the usage journal in {}", path.display()))?;
        Ok(Journal { db })
    }

    fn last_seq(&self) -> Result<u64> {
        let stored = self.db.get(KEY_LAST_SEQ)?;
        Ok(stored
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Writes `batches` and the last seq in one atomic batch, and fsyncs.
    async fn append(&self, batches: &[UsageBatch]) -> Result<()> {
        let mut write = sled::Batch::default();
        for b in batches {
            write.insert(batch_key(b.seq), serde_json::to_vec(b)?);
        }
        if let Some(last) = batches.last() {
            write.insert(KEY_LAST_SEQ, &last.seq.to_be_bytes());
        }
        self.db.apply_batch(write)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The oldest batches, at most `limit`.
    fn oldest(&self, limit: usize) -> Result<Vec<UsageBatch>> {
        self.db
            .scan_prefix(BATCH_PREFIX)
            .take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                Ok(serde_json::from_slice(&v)?)
            })
            .collect()
    }

    /// Deletes the batches up to `seq` (committed). Not fsynced: a deletion lost to a crash
    /// only means a replay the state machine skips.
    fn delete_through(&self, seq: u64) -> Result<()> {
        let mut write = sled::Batch::default();
        for kv in self.db.range(batch_key(0)..=batch_key(seq)) {
            write.remove(kv?.0);
        }
        self.db.apply_batch(write)?;
        Ok(())
    }

    /// How many batches wait to be committed.
    pub fn len(&self) -> usize {
        self.db.scan_prefix(BATCH_PREFIX).count()
    }
}

/// Drains the data plane's counters into the journal.
pub struct JournalWriter {
    dp: Dataplane,
    node: Node,
    journal: Journal,
    last_seq: u64,
    /// The `open_hour` of the last batch written.
    open_hour: u64,
}

impl JournalWriter {
    pub fn new(dp: Dataplane, node: Node, journal: Journal) -> Result<JournalWriter> {
        // Above anything written before, even if the journal was emptied and then lost.
        let recorded = node.state().usage_seq.get(&node.id()).copied().unwrap_or(0);
        let last_seq = journal.last_seq()?.max(recorded);
        Ok(JournalWriter {
            dp,
            node,
            journal,
            last_seq,
            open_hour: 0,
        })
    }

    fn next_seq(&mut self) -> u64 {
        self.last_seq = (self.last_seq + 1).max(self.node.now_ms());
        self.last_seq
    }

    /// Drains the counters and journals them; returns how many batches were written. The
    /// counts are lost only if the write fails (the disk is gone), which is logged.
    pub async fn write(&mut self) -> usize {
        let drained = self.dp.drain_usage_dated();
        let mut dated: Vec<(u64, Vec<model::UsageDelta>)> = drained
            .by_hour
            .into_iter()
            .map(|(hour, mut deltas)| {
                deltas.retain(|d| d.calls > 0 || d.bytes_out > 0);
                (hour, deltas)
            })
            .filter(|(_, deltas)| !deltas.is_empty())
            .collect();
        if dated.is_empty() {
            if drained.open_hour <= self.open_hour {
                return 0;
            }
            // The hour turned: say so, so that the day can close without waiting for us.
            dated.push((drained.open_hour, Vec::new()));
        }
        // Each batch is complete up to the next one's hour; the last up to the open hour.
        let hours: Vec<u64> = dated.iter().map(|(h, _)| *h).collect();
        let mut batches = Vec::with_capacity(dated.len());
        for (i, (hour, deltas)) in dated.into_iter().enumerate() {
            let open_hour = hours.get(i + 1).copied().unwrap_or(drained.open_hour);
            batches.push(UsageBatch {
                seq: self.next_seq(),
                hour,
                open_hour: open_hour.max(hour),
                deltas,
            });
        }
        match self.journal.append(&batches).await {
            Ok(()) => {
                self.open_hour = drained.open_hour;
                JOURNALLED_CALLS.fetch_add(calls_in(&batches), Ordering::Relaxed);
                batches.len()
            }
            Err(e) => {
                let calls = calls_in(&batches);
                tracing::error!(
                    calls,
                    "writing the usage journal failed; these calls are not billed: {e:#}"
                );
                0
            }
        }
    }
}

/// Commits the journal into the replicated state.
#[derive(Clone)]
pub struct Committer {
    node: Node,
    journal: Journal,
}

impl Committer {
    pub fn new(node: Node, journal: Journal) -> Committer {
        Committer { node, journal }
    }

    /// Proposes the oldest journalled batches; returns whether the journal is now empty.
    pub async fn commit(&mut self) -> bool {
        let recorded = self
            .node
            .state()
            .usage_seq
            .get(&self.node.id())
            .copied()
            .unwrap_or(0);
        let batches = match self.journal.oldest(BATCHES_PER_COMMIT) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("reading the usage journal failed: {e:#}");
                return false;
            }
        };
        // Committed already (a crash before the deletion): only delete them.
        let (done, batches): (Vec<_>, Vec<_>) =
            batches.into_iter().partition(|b| b.seq <= recorded);
        if let Some(last) = done.last()
            && let Err(e) = self.journal.delete_through(last.seq)
        {
            tracing::warn!("deleting committed usage batches failed: {e:#}");
        }
        let Some(last) = batches.last().map(|b| b.seq) else {
            return true;
        };
        let full = batches.len() == BATCHES_PER_COMMIT;
        let calls = calls_in(&batches);
        let cmd = Command::RecordUsageBatches {
            node: self.node.id(),
            batches,
        };
        match self.node.write(cmd).await {
            Ok(_) => {
                COMMITTED_CALLS.fetch_add(calls, Ordering::Relaxed);
                if let Err(e) = self.journal.delete_through(last) {
                    tracing::warn!("deleting committed usage batches failed: {e:#}");
                }
                !full
            }
            Err(e) => {
                tracing::warn!(seq = last, "committing usage failed, will retry: {e}");
                false
            }
        }
    }
}

/// Journals the counters every `interval` until the task is aborted (between drains, or
/// during an fsync: a drain and its write are one step, with no await between them).
pub async fn run_writer(writer: Arc<Mutex<JournalWriter>>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        writer.lock().await.write().await;
    }
}

/// Commits the journal every `interval` until the task is aborted.
pub async fn run_committer(mut committer: Committer, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Catch up after an outage: commits back to back while there is a full one's worth.
        for _ in 0..16 {
            if committer.commit().await {
                break;
            }
        }
    }
}

/// The last commit at shutdown: keeps trying until the journal is empty or the deadline
/// passes. What is left stays in the journal for the next start.
pub async fn final_commit(committer: &mut Committer, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if committer.commit().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
