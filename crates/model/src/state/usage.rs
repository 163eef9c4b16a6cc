//! Usage flushes from the nodes: counted into the open day they arrive in, each `(node, seq)`
//! once.

use super::{State, day_of};
use crate::command::UsageDelta;
use crate::{DomainError, Millis, Reply};
use catalog::SHARED_INSTANCE;

/// The most calls one usage delta may carry (a node flushes about every second; a trillion
/// calls a second is not traffic but corruption).
pub const MAX_CALLS_PER_FLUSH: u64 = 1_000_000_000_000;
/// The most outbound bytes one usage delta may carry (a petabyte).
pub const MAX_BYTES_PER_FLUSH: u64 = 1_000_000_000_000_000;

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
    if let Some(d) = deltas.iter().find(|d| {
        d.calls > MAX_CALLS_PER_FLUSH
            || d.bytes_out > MAX_BYTES_PER_FLUSH
            || d.backend_bytes > MAX_BYTES_PER_FLUSH
    }) {
        return Err(DomainError::invalid(
            "deltas",
            format!(
                "{} calls, {} bytes out and {} backend bytes for {}/{} in one flush: at most {MAX_CALLS_PER_FLUSH} calls and {MAX_BYTES_PER_FLUSH} bytes of each",
                d.calls, d.bytes_out, d.backend_bytes, d.instance, d.api
            ),
        ));
    }
    // Usage that arrives after its day was billed goes to the first open day: late, never lost.
    let day = day_of(now).max(s.next_open_day().unwrap_or(0));
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
    s.usage_seq.insert(node, seq);
    Ok(Reply::UsageRecorded { duplicate: false })
}
