//! Usage from the nodes, each `(node, seq)` counted once.
//!
//! Two commands carry it. `RecordUsageBatches` (what nodes send now) carries journal batches
//! dated by the hour their calls arrived, and counts each into that day. `RecordUsage` (the
//! older form, still applied from existing logs) counts into the day it is applied in. Either
//! way, usage for a day that is billed already goes to the first open day: late, never lost.

use super::{State, day_of};
use crate::command::{UsageBatch, UsageDelta};
use crate::{DomainError, Millis, Reply};
use catalog::SHARED_INSTANCE;

/// The most calls one usage delta may carry (a node flushes about every second; a trillion
/// calls a second is not traffic but corruption).
pub const MAX_CALLS_PER_FLUSH: u64 = 1_000_000_000_000;
/// The most outbound bytes one usage delta may carry (a petabyte).
pub const MAX_BYTES_PER_FLUSH: u64 = 1_000_000_000_000_000;
/// The most batches one `RecordUsageBatches` may carry (a node journals ten a second, and
/// sends what it has in a few commands after an outage).
pub const MAX_BATCHES_PER_COMMAND: usize = 10_000;

const HOURS_PER_DAY: u64 = 24;

pub(super) fn record(
    s: &mut State,
    node: u64,
    seq: u64,
    deltas: &[UsageDelta],
    now: Millis,
) -> Result<Reply, DomainError> {
    if s.usage_seq.get(&node).is_some_and(|last| seq <= *last) {
        // A retried flush: counted already.
        return Ok(Reply::UsageRecorded { duplicate: true });
    }
    check_deltas(deltas)?;
    let day = day_of(now).max(s.next_open_day().unwrap_or(0));
    add(s, day, deltas);
    s.usage_seq.insert(node, seq);
    Ok(Reply::UsageRecorded { duplicate: false })
}

pub(super) fn record_batches(
    s: &mut State,
    node: u64,
    batches: &[UsageBatch],
    now: Millis,
) -> Result<Reply, DomainError> {
    if batches.len() > MAX_BATCHES_PER_COMMAND {
        return Err(DomainError::invalid(
            "batches",
            format!(
                "{} batches in one command: at most {MAX_BATCHES_PER_COMMAND}",
                batches.len()
            ),
        ));
    }
    // Everything is checked before anything is counted: nothing half-applied.
    for (i, pair) in batches.windows(2).enumerate() {
        if pair[1].seq <= pair[0].seq {
            return Err(DomainError::invalid(
                "batches",
                format!(
                    "batch {} has seq {} after seq {}: seqs must rise",
                    i + 1,
                    pair[1].seq,
                    pair[0].seq
                ),
            ));
        }
    }
    for b in batches {
        if b.hour > b.open_hour {
            return Err(DomainError::invalid(
                "batches",
                format!(
                    "batch {} is dated hour {} after its open_hour {}: a batch's calls arrived before the hour the node counts",
                    b.seq, b.hour, b.open_hour
                ),
            ));
        }
        check_deltas(&b.deltas)?;
    }
    let last = s.usage_seq.get(&node).copied();
    let fresh: Vec<&UsageBatch> = batches
        .iter()
        .filter(|b| last.is_none_or(|l| b.seq > l))
        .collect();
    let Some(newest) = fresh.last() else {
        // A replay or a retried proposal: counted already.
        return Ok(Reply::UsageRecorded { duplicate: true });
    };
    let (newest_seq, newest_open) = (newest.seq, newest.open_hour);
    let first_open = s.next_open_day().unwrap_or(0);
    // A node whose clock runs ahead cannot park usage in a far future day.
    let latest = day_of(now) + 1;
    for b in fresh {
        let day = (b.hour / HOURS_PER_DAY).min(latest).max(first_open);
        add(s, day, &b.deltas);
    }
    s.usage_seq.insert(node, newest_seq);
    let open = s.usage_open_hour.entry(node).or_default();
    *open = (*open).max(newest_open);
    Ok(Reply::UsageRecorded { duplicate: false })
}

impl State {
    /// Whether every node of `nodes` has sent all its usage of `day` (its journal has moved
    /// past the day's last hour, and the batches before that are applied).
    pub fn usage_complete(&self, day: u64, nodes: impl IntoIterator<Item = u64>) -> bool {
        let day_end_hour = (day + 1) * HOURS_PER_DAY;
        nodes.into_iter().all(|n| {
            self.usage_open_hour
                .get(&n)
                .is_some_and(|h| *h >= day_end_hour)
        })
    }
}

fn check_deltas(deltas: &[UsageDelta]) -> Result<(), DomainError> {
    match deltas.iter().find(|d| {
        d.calls > MAX_CALLS_PER_FLUSH
            || d.bytes_out > MAX_BYTES_PER_FLUSH
            || d.backend_bytes > MAX_BYTES_PER_FLUSH
    }) {
        Some(d) => Err(DomainError::invalid(
            "deltas",
            format!(
                "{} calls, {} bytes out and {} backend bytes for {}/{} in one flush: at most {MAX_CALLS_PER_FLUSH} calls and {MAX_BYTES_PER_FLUSH} bytes of each",
                d.calls, d.bytes_out, d.backend_bytes, d.instance, d.api
            ),
        )),
        None => Ok(()),
    }
}

/// Counts `deltas` into `day`.
fn add(s: &mut State, day: u64, deltas: &[UsageDelta]) {
    let by_account = s.usage.entry(day).or_default();
    for d in deltas {
        let u = by_account.entry(d.account.clone()).or_default();
        let c = u
            .by_api
            .entry(format!("{}/{}", d.instance, d.api))
            .or_default();
        // Saturating: a counter at its limit is wrong, a panic here would stop every node.
        c.calls = c.calls.saturating_add(d.calls);
        c.bytes_out = c.bytes_out.saturating_add(d.bytes_out);
        c.backend_bytes = c.backend_bytes.saturating_add(d.backend_bytes);
        if d.instance == SHARED_INSTANCE {
            u.shared_calls = u.shared_calls.saturating_add(d.calls);
        }
        if d.bytes_out > 0 {
            let bytes = u.bytes_by_region.entry(d.region.clone()).or_default();
            *bytes = bytes.saturating_add(d.bytes_out);
        }
        if d.backend_bytes > 0 {
            let bytes = u
                .backend_bytes_by_region
                .entry(d.region.clone())
                .or_default();
            *bytes = bytes.saturating_add(d.backend_bytes);
        }
    }
}
