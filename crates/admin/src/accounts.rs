//! The admin API's accounts, ledgers, bills and events: parsing and presentation.

use billing::{Day, Timestamp, Usd};
use cluster::{History, HistoryError};
use model::history::{Bill, EventRecord, LedgerEntry};
use model::{Account, DomainError, State};
use proto::admin as pb;
use tonic::Status;

/// How many ledger entries an account shows (`DescribeLedger` pages through the rest).
const LEDGER_SHOWN: usize = 20;

pub fn parse_usd(field: &str, s: &str) -> Result<Usd, Status> {
    Usd::parse(s).map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))
}

/// Parses `YYYY-MM-DD` into a day index, as `field`.
pub fn parse_day(field: &str, s: &str) -> Result<u64, Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "invalid {field}: '{s}' is not a date like 2026-01-31"
        ))
    };
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

/// Parses an optional `YYYY-MM-DD` (empty: none), as `field`.
pub fn parse_opt_day(field: &str, s: &str) -> Result<Option<u64>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_day(field, s).map(Some)
    }
}

pub fn day_name(day: u64) -> String {
    Day::from_index(day).to_string()
}

/// An account with its last [`LEDGER_SHOWN`] ledger entries, read from `history`.
pub fn account_to_pb(a: &Account, history: &History) -> Result<pb::Account, HistoryError> {
    let tail = history.ledger_tail(&a.name, a.ledger_len, LEDGER_SHOWN)?;
    let b = &a.billing;
    let state = serde_json::to_value(b.state())
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    Ok(pb::Account {
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
        ledger: tail
            .iter()
            .map(|(seq, e)| ledger_entry_to_pb(*seq, e))
            .collect(),
        ledger_len: a.ledger_len,
    })
}

pub fn ledger_entry_to_pb(seq: u64, e: &LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        seq,
        at_ms: e.at_ms,
        what: e.what.clone(),
        amount: e.amount.to_string(),
        balance_after: e.balance_after.to_string(),
    }
}

pub fn find_account<'a>(state: &'a State, name: &str) -> Result<&'a Account, Status> {
    state
        .accounts
        .get(name)
        .ok_or_else(|| crate::domain_status(DomainError::not_found("account", name)))
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
                instance: l.instance.clone().unwrap_or_default(),
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
