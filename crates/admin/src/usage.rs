//! `DescribeUsage`: metered usage as rows, a page at a time.
//!
//! An account's usage of a day is in one of two places: in history once the day's cycle is
//! closed, in the state ([`State::usage`]) until then. A page goes by account, then day: each
//! account's closed days (read from history a bounded number at a time), then its open days.
//! A page never splits one account's day, so its cursor is that account-day
//! ([`UsageCursor`]).
//!
//! What one page costs does not grow with history: it reads at most `limit + 1` account-days
//! plus one empty range read per account without usage that it passes over.

use crate::accounts::day_name;
use crate::paging::UsageCursor;
use cluster::{History, HistoryError};
use model::State;
use model::history::DayUsage;
use proto::admin as pb;
use std::ops::Bound;

/// What usage to list.
#[derive(Debug)]
pub struct Query<'a> {
    /// Empty: every account.
    pub account: &'a str,
    /// Only this day (days since 1970-01-01).
    pub day: Option<u64>,
    /// Start after this account-day.
    pub after: Option<&'a UsageCursor>,
    /// The most rows (a single account-day with more rows than this is still one page).
    pub limit: usize,
}

#[derive(Debug, Default)]
pub struct UsagePage {
    pub rows: Vec<pb::UsageRow>,
    /// The last account-day in the page, when more follow.
    pub next: Option<UsageCursor>,
}

/// One page of usage rows.
pub fn page(state: &State, history: &History, q: &Query<'_>) -> Result<UsagePage, HistoryError> {
    let accounts: Box<dyn Iterator<Item = &str>> = if !q.account.is_empty() {
        Box::new(std::iter::once(q.account))
    } else {
        let from = match q.after {
            Some(c) => Bound::Included(c.account.as_str()),
            None => Bound::Unbounded,
        };
        Box::new(
            state
                .accounts
                .range::<_, str>((from, Bound::Unbounded))
                .map(|(name, _)| name.as_str()),
        )
    };
    let mut out = UsagePage::default();
    let mut last: Option<UsageCursor> = None;
    for account in accounts {
        let mut after_day = q.after.filter(|c| c.account == account).map(|c| c.day);
        loop {
            // One more than the page has room for, to tell whether another page follows.
            let want = q.limit.saturating_sub(out.rows.len()) + 1;
            let (days, more) = account_days(state, history, account, q.day, after_day, want)?;
            for (day, usage) in days {
                after_day = Some(day);
                let rows = rows_of(account, day, &usage);
                if rows.is_empty() {
                    continue;
                }
                if !out.rows.is_empty() && out.rows.len() + rows.len() > q.limit {
                    out.next = last;
                    return Ok(out);
                }
                out.rows.extend(rows);
                last = Some(UsageCursor {
                    account: account.to_string(),
                    day,
                });
            }
            if !more {
                break;
            }
        }
    }
    Ok(out)
}

/// Up to `n` of `account`'s days of usage after `after_day`, in day order (closed days, then
/// open ones), and whether more follow.
fn account_days(
    state: &State,
    history: &History,
    account: &str,
    only: Option<u64>,
    after_day: Option<u64>,
    n: usize,
) -> Result<(Vec<(u64, DayUsage)>, bool), HistoryError> {
    let closed = |day: u64| state.last_closed_day.is_some_and(|c| day <= c);
    if let Some(day) = only {
        if after_day.is_some_and(|a| a >= day) {
            return Ok((Vec::new(), false));
        }
        let usage = if closed(day) {
            history.usage(account, day, day)?.pop().map(|(_, u)| u)
        } else {
            open_usage(state, day, account)
        };
        return Ok((usage.map(|u| (day, u)).into_iter().collect(), false));
    }
    let mut days = Vec::new();
    if state
        .last_closed_day
        .is_some_and(|last| after_day.is_none_or(|a| a < last))
    {
        let page = history.usage_page(account, after_day, n)?;
        if page.next.is_some() {
            return Ok((page.items, true));
        }
        days = page.items;
    }
    // The state holds only the days not closed yet: one or two.
    for (day, by_account) in state.usage.iter() {
        if after_day.is_some_and(|a| *day <= a) {
            continue;
        }
        if let Some(u) = by_account.get(account) {
            if days.len() == n {
                return Ok((days, true));
            }
            days.push((*day, u.clone()));
        }
    }
    Ok((days, false))
}

fn open_usage(state: &State, day: u64, account: &str) -> Option<DayUsage> {
    state.usage.get(&day)?.get(account).cloned()
}

/// One row per instance and API (`unmatched` for requests no API matched).
fn rows_of(account: &str, day: u64, u: &DayUsage) -> Vec<pb::UsageRow> {
    u.by_api
        .iter()
        .map(|(key, c)| {
            let (instance, api) = key.split_once('/').unwrap_or((key, ""));
            pb::UsageRow {
                day: day_name(day),
                account: account.to_string(),
                instance: instance.to_string(),
                api: api.to_string(),
                calls: c.calls,
                bytes_out: c.bytes_out,
                backend_bytes: c.backend_bytes,
            }
        })
        .collect()
}
