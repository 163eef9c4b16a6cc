//! What the leader does on a schedule: closing daily billing cycles, and delivering account
//! events to their webhooks.
//!
//! Both are idempotent in the replicated state, so a new leader after a failover simply picks
//! up where the old one stopped: a cycle is closed once (`CloseCycle` of a closed day is
//! refused), and events are delivered at least once (the webhook's position is acknowledged
//! through the log after each delivery).

use bytes::Bytes;
use cluster::Node;
use http_body_util::Full;
use model::Command;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DAY_MS: u64 = 86_400_000;
/// The most events one webhook POST carries; the rest go in the next ticks.
const EVENTS_PER_DELIVERY: usize = 100;

fn is_leader(node: &Node) -> bool {
    node.status().leader_id == Some(node.id())
}

/// When a day is billed.
#[derive(Clone, Copy, Debug)]
pub struct CloseTimes {
    /// After the day's end, when its bill is issued (`--bill-delay-seconds`).
    pub bill_delay: Duration,
    /// After that, how long the bill waits for a member whose usage of the day has not
    /// arrived (`--usage-grace-seconds`).
    pub usage_grace: Duration,
}

/// Closes each daily cycle once it has ended, `bill_delay` has passed, and every member of
/// the cluster has committed its usage of the day, or this leader has waited `usage_grace`
/// for the missing ones: a node that is down does not hold bills up for ever (its late usage
/// goes on the next open day). The wait is measured on this leader's monotonic clock from
/// when it found the day due and incomplete, not on the wall clock: a wall clock that jumps
/// (a development clock, a node that was off for a day) must not skip the wait. A new leader
/// starts the wait again, so a day is billed at most a grace or so later than due.
pub async fn close_cycles(node: Node, times: CloseTimes, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The day waited for, since when, and for whom (to log each change once).
    let mut waiting: Option<(u64, tokio::time::Instant, Vec<u64>)> = None;
    loop {
        tick.tick().await;
        if !is_leader(&node) {
            waiting = None;
            continue;
        }
        // Catch up over every due day, one command each, a bounded number per tick.
        for _ in 0..64 {
            let state = node.state();
            let Some(day) = state.next_open_day() else {
                break;
            };
            let due_at = (day + 1) * DAY_MS + times.bill_delay.as_millis() as u64;
            if node.now_ms() < due_at {
                break;
            }
            let missing: Vec<u64> = node
                .members()
                .into_keys()
                .filter(|n| !state.usage_complete(day, [*n]))
                .collect();
            if !missing.is_empty() {
                let since = match &mut waiting {
                    Some((d, since, who)) if *d == day => {
                        if *who != missing {
                            tracing::info!(
                                day,
                                ?missing,
                                "the day's bill waits for these nodes' usage"
                            );
                            *who = missing.clone();
                        }
                        *since
                    }
                    _ => {
                        tracing::info!(
                            day,
                            ?missing,
                            "the day's bill waits for these nodes' usage"
                        );
                        let now = tokio::time::Instant::now();
                        waiting = Some((day, now, missing.clone()));
                        now
                    }
                };
                if since.elapsed() < times.usage_grace {
                    break;
                }
                tracing::warn!(
                    day,
                    ?missing,
                    "billing the day without these nodes' usage (--usage-grace-seconds passed): theirs goes on the next day"
                );
            }
            match node.write(Command::CloseCycle { day }).await {
                Ok(_) => tracing::info!(day, "closed the daily billing cycle"),
                Err(e) => {
                    tracing::warn!(day, "closing the billing cycle failed, will retry: {e}");
                    break;
                }
            }
        }
    }
}

/// Webhook deliveries that failed (refused, unreachable, timed out, unusable URL, or a
/// special-purpose address), for `/metrics` (`gateway_webhook_failures_total`).
pub static WEBHOOK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The longest wait before retrying a failing webhook.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Error texts kept in a `webhook_failed` event.
const MAX_ERROR_CHARS: usize = 300;

/// An account whose webhook is failing: how often in a row, and when to try again.
struct Failing {
    attempts: u32,
    retry_at: tokio::time::Instant,
}

/// The wait after `attempts` failures in a row: `every`, doubled each time, at most
/// [`MAX_BACKOFF`].
fn backoff(every: Duration, attempts: u32) -> Duration {
    every
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF)
}

/// POSTs each account's new events to its webhook, retrying with exponential backoff until it
/// answers 2xx. Unless `allow_private` (`--allow-private-webhooks`), the webhook's host is
/// resolved at each delivery and the call refused if any address is a special-purpose one
/// ([`model::validate::private_range`]); the connection goes to a checked address.
/// Failures are counted, and noted as `webhook_failed` events of the account at the 1st,
/// 2nd, 4th, 8th... failure in a row (delivered with the rest once the webhook answers).
pub async fn deliver_events(node: Node, every: Duration, allow_private: bool) {
    let check: Option<upstream::client::AddressCheck> =
        (!allow_private).then_some(model::validate::private_range);
    let mut failing: HashMap<String, Failing> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !is_leader(&node) {
            // A new leader starts its own count.
            failing.clear();
            continue;
        }
        let state = node.state();
        failing.retain(|name, _| {
            state
                .accounts
                .get(name)
                .is_some_and(|a| a.webhook.is_some())
        });
        for acct in state.accounts.values() {
            let Some(url) = &acct.webhook else { continue };
            // Nothing new since the last delivery: no read of the history at all.
            if acct.last_event_seq <= acct.events_acked {
                continue;
            }
            if failing
                .get(&acct.name)
                .is_some_and(|f| tokio::time::Instant::now() < f.retry_at)
            {
                continue;
            }
            let events = match node.history().events(
                Some(&acct.name),
                acct.events_acked,
                EVENTS_PER_DELIVERY,
            ) {
                Ok(page) => page.items,
                Err(e) => {
                    tracing::warn!(account = %acct.name, "reading events failed, will retry: {e}");
                    continue;
                }
            };
            let Some(last) = events.last().map(|e| e.seq) else {
                continue;
            };
            let body = serde_json::json!({ "account": acct.name, "events": events });
            let sent = match http::Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
            {
                Ok(req) => upstream::client::send_checked(req, Duration::from_secs(3), check)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|answer| {
                        if answer.status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("the webhook answered {}", answer.status))
                        }
                    }),
                Err(_) => Err(format!("webhook URL {url} is unusable")),
            };
            match sent {
                Ok(()) => {
                    failing.remove(&acct.name);
                    let ack = Command::AckEvents {
                        account: acct.name.clone(),
                        seq: last,
                    };
                    if let Err(e) = node.write(ack).await {
                        tracing::warn!(account = %acct.name, "acknowledging events failed: {e}");
                    }
                }
                Err(error) => {
                    WEBHOOK_FAILURES.fetch_add(1, Ordering::Relaxed);
                    let f = failing.entry(acct.name.clone()).or_insert(Failing {
                        attempts: 0,
                        retry_at: tokio::time::Instant::now(),
                    });
                    f.attempts += 1;
                    let wait = backoff(every, f.attempts);
                    f.retry_at = tokio::time::Instant::now() + wait;
                    tracing::warn!(account = %acct.name, attempts = f.attempts, "webhook delivery failed, retrying in {wait:?}: {error}");
                    if f.attempts.is_power_of_two() {
                        let note = Command::RecordWebhookFailure {
                            account: acct.name.clone(),
                            attempts: f.attempts,
                            error: error.chars().take(MAX_ERROR_CHARS).collect(),
                        };
                        if let Err(e) = node.write(note).await {
                            tracing::warn!(account = %acct.name, "recording the webhook failure failed: {e}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=12).map(|n| backoff(s, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(s, u32::MAX), MAX_BACKOFF);
    }
}
