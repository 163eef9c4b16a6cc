//! Usage metering: the data plane's per-node counters, flushed into the replicated state.
//!
//! Every flush interval the counters are drained into one `RecordUsage { node, seq, deltas }`
//! proposal. A flush that fails (no leader, no quorum) is retried with the same `seq` and the
//! same deltas until it succeeds, and nothing new is drained meanwhile (the counters keep
//! counting), so the state machine's `(node, seq)` check makes a retry count once. `seq` is at
//! least the wall clock in milliseconds and above the last one the state has from this node,
//! so it keeps rising across restarts.

use cluster::Node;
use dataplane::Dataplane;
use model::Command;
use model::UsageDelta;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A drained batch waiting to be recorded.
struct Pending {
    seq: u64,
    deltas: Vec<UsageDelta>,
}

pub struct Meter {
    node: Node,
    dp: Dataplane,
    pending: Option<Pending>,
    last_seq: u64,
}

impl Meter {
    pub fn new(node: Node, dp: Dataplane) -> Meter {
        Meter {
            node,
            dp,
            pending: None,
            last_seq: 0,
        }
    }

    /// Drains (unless a batch is still pending) and tries to record; returns whether nothing is
    /// left pending.
    pub async fn flush(&mut self) -> bool {
        if self.pending.is_none() {
            let deltas: Vec<UsageDelta> = self
                .dp
                .drain_usage()
                .into_iter()
                .filter(|d| d.calls > 0 || d.bytes_out > 0)
                .collect();
            if deltas.is_empty() {
                return true;
            }
            let recorded = self
                .node
                .state()
                .usage_seq
                .get(&self.node.id())
                .copied()
                .unwrap_or(0);
            let seq = (self.last_seq + 1)
                .max(recorded + 1)
                .max(self.node.now_ms());
            self.last_seq = seq;
            self.pending = Some(Pending { seq, deltas });
        }
        let p = self.pending.as_ref().expect("set above");
        let cmd = Command::RecordUsage {
            node: self.node.id(),
            seq: p.seq,
            deltas: p.deltas.clone(),
        };
        match self.node.write(cmd).await {
            Ok(_) => {
                self.pending = None;
                true
            }
            Err(e) => {
                tracing::warn!(seq = p.seq, "usage flush failed, will retry: {e}");
                false
            }
        }
    }
}

/// Flushes every `interval` until the task is aborted.
pub async fn run(meter: Arc<Mutex<Meter>>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        meter.lock().await.flush().await;
    }
}

/// The last flush at shutdown: keeps trying until everything counted is recorded or the
/// deadline passes.
pub async fn final_flush(meter: &Mutex<Meter>, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut m = meter.lock().await;
    loop {
        // Twice in a row clean: the pending batch is recorded and nothing new was drained.
        if m.flush().await && m.flush().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
