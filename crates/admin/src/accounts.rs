//! The admin API's accounts, usage, bills and events: parsing and presentation.

use billing::{Day, Timestamp, Usd};
use model::ledger::{Bill, EventRecord};
use model::{Account, DomainError, State};
use proto::admin as pb;
use tonic::Status;

/// How many ledger entries an account shows.
const LEDGER_SHOWN: usize = 20;

pub fn parse_usd(field: &str, s: &str) -> Result<Usd, Status> {
    Usd::parse(s).map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))
}

/// Parses `YYYY-MM-DD` into a day index.
pub fn parse_day(s: &str) -> Result<u64, Status> {
    let bad =
        || Status::invalid_argument(format!("invalid day: '{s}' is not a date like 2026-01-31"));
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d) = (
        y.parse::<i32>().map_err(|_| bad())?,
        m.parse::<u8>().map_err(|_| bad())?,
        d.parse::<u8>().map_err(|_| bad())?,
    );
    let t = Timestamp::from_utc(y, m, d, 0, 0, 0).ok_or_else(bad)?;
    Ok(t.day().index())
}

pub fn day_name(day: u64) -> String {
    Day::from_index(day).to_string()
}

pub fn account_to_pb(a: &Account) -> pb::Account {
    let b = &a.billing;
    let state = serde_json::to_value(b.state())
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    pb::Account {
        name: a.name.clone(),
        created_at_ms: a.created_at_ms,
        state,
        balance: b.balance().to_string(),
        owed: b.owed().to_string(),
        balance_alert: b.balance_alert_threshold().map(|t| t.to_string()),
        webhook: a.webhook.clone(),
        last_cycle: b.last_cycle().map(|d| d.to_string()),
        suspended_at_ms: b.suspended_at().map(|t| t.unix_secs() * 1000),
        purge_at_ms: b.purge_at().map(|t| t.unix_secs() * 1000),
        ledger: a.ledger[a.ledger.len().saturating_sub(LEDGER_SHOWN)..]
            .iter()
            .map(|e| pb::LedgerEntry {
                at_ms: e.at_ms,
                what: e.what.clone(),
                amount: e.amount.to_string(),
                balance_after: e.balance_after.to_string(),
            })
            .collect(),
    }
}

pub fn find_account<'a>(state: &'a State, name: &str) -> Result<&'a Account, Status> {
    state
        .accounts
        .get(name)
        .ok_or_else(|| crate::domain_status(DomainError::not_found("account", name)))
}

pub fn usage_rows(state: &State, account: &str, day: Option<u64>) -> Vec<pb::UsageRow> {
    let mut rows = Vec::new();
    for (d, by_account) in &state.usage {
        if day.is_some_and(|want| want != *d) {
            continue;
        }
        for (acct, u) in by_account {
            if !account.is_empty() && acct != account {
                continue;
            }
            for (key, c) in &u.by_api {
                let (instance, api) = key.split_once('/').unwrap_or((key, ""));
                rows.push(pb::UsageRow {
                    day: day_name(*d),
                    account: acct.clone(),
                    instance: instance.to_string(),
                    api: api.to_string(),
                    calls: c.calls,
                    bytes_out: c.bytes_out,
                });
            }
        }
    }
    rows
}

pub fn bill_to_pb(account: &str, b: &Bill) -> pb::Bill {
    pb::Bill {
        account: account.to_string(),
        day: day_name(b.day),
        lines: b
            .lines
            .iter()
            .map(|l| pb::BillLine {
                item: l.item.clone(),
                quantity: l.quantity.clone(),
                amount: l.amount.to_string(),
            })
            .collect(),
        total: b.total.to_string(),
        balance_after: b.balance_after.to_string(),
        state_after: serde_json::to_value(b.state_after)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        issued_at_ms: b.issued_at_ms,
    }
}

pub fn event_to_pb(e: &EventRecord) -> pb::Event {
    let detail = serde_json::to_value(&e.event).unwrap_or_default();
    pb::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        account: e.account.clone(),
        kind: detail["event"].as_str().unwrap_or_default().to_string(),
        detail_json: detail.to_string(),
    }
}
