//! What the state machine writes down once and never changes: ledger entries, bills, events
//! and the usage of closed days.
//!
//! None of it is kept in [`crate::State`]. Applying a command returns the records it made
//! ([`crate::Applied::history`]) and the storage layer writes them to disk in the same batch
//! as the applied index; reads page through them there. Every record has a key that the state
//! determines (an account's ledger sequence, a day, the global event sequence), so applying the
//! same log again writes the same records under the same keys, and a snapshot taken while
//! records are being appended can be cut exactly at the state it was taken from (see
//! [`HistoryCut`]).

use crate::Millis;
use billing::{AccountState, Event};
use catalog::Usd;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Calls, outbound bytes and billed backend bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub calls: u64,
    pub bytes_out: u64,
    /// Read back from a backend outside the instance's region.
    #[serde(default)]
    pub backend_bytes: u64,
}

/// An account's usage on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    /// By `instance/api` (`unmatched` for requests no API matched).
    pub by_api: BTreeMap<String, Counts>,
    /// Calls to the shared instance: the billable ones.
    pub shared_calls: u64,
    /// Outbound bytes by the region of the instance that sent them.
    pub bytes_by_region: BTreeMap<String, u64>,
    /// Billed backend bytes by the region of the instance that read them.
    #[serde(default)]
    pub backend_bytes_by_region: BTreeMap<String, u64>,
}

/// One line of a bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub item: String,
    pub quantity: String,
    /// Whole cents (the sub-cent remainder of a monthly line is carried to the next day).
    pub amount: Usd,
    /// The instance the line is for: a dedicated instance's hours, or the shared instance's
    /// calls; `None` for traffic, which is billed by region.
    #[serde(default)]
    pub instance: Option<String>,
}

/// An account's bill for one daily cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// Days since 1970-01-01 (UTC).
    pub day: u64,
    pub lines: Vec<BillLine>,
    pub total: Usd,
    pub balance_after: Usd,
    pub state_after: AccountState,
    pub issued_at_ms: Millis,
}

/// A movement of an account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub at_ms: Millis,
    /// `recharge`, `bill DAY`, `subscription INSTANCE`, `upgrade INSTANCE`, `renewal INSTANCE
    /// (TERM)`, `adjustment: REASON`.
    pub what: String,
    /// Positive adds to the balance, negative takes from it.
    pub amount: Usd,
    pub balance_after: Usd,
}

/// Something an owner is told about, numbered in the order it happened (one sequence for the
/// whole cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: Millis,
    pub account: String,
    #[serde(with = "event_codec")]
    pub event: Event,
}

/// One record written by an applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRecord {
    /// The `seq`th movement of `account`'s balance (1-based).
    Ledger {
        account: String,
        seq: u64,
        entry: LedgerEntry,
    },
    /// `account`'s bill for `bill.day`.
    Bill {
        account: String,
        bill: Bill,
    },
    Event(EventRecord),
    /// What `account` used on `day`, written when the day's cycle is closed.
    Usage {
        account: String,
        day: u64,
        usage: DayUsage,
    },
}

/// Where the history stood when a state was taken: a snapshot of that state holds exactly the
/// records at or below these marks, whatever was appended while it was being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCut {
    /// Each account's ledger length.
    pub ledger: BTreeMap<String, u64>,
    /// The last event's sequence number.
    pub last_event: u64,
    /// The last day whose bills and usage were written.
    pub last_closed_day: Option<u64>,
}

impl HistoryCut {
    /// Whether `record` belongs to the history of the state this cut was taken from.
    pub fn includes(&self, record: &HistoryRecord) -> bool {
        match record {
            HistoryRecord::Ledger { account, seq, .. } => {
                self.ledger.get(account).is_some_and(|len| seq <= len)
            }
            HistoryRecord::Event(e) => e.seq <= self.last_event,
            HistoryRecord::Bill { bill, .. } => self.last_closed_day.is_some_and(|d| bill.day <= d),
            HistoryRecord::Usage { day, .. } => self.last_closed_day.is_some_and(|d| *day <= d),
        }
    }
}

/// Events keep the JSON shape owners and webhooks see (`{"event": "suspended", ...}`, an
/// internally tagged enum). Binary formats cannot decode such enums, so there they travel as
/// that JSON text.
mod event_codec {
    use billing::Event;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(event: &Event, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            event.serialize(s)
        } else {
            let text = serde_json::to_string(event).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        if d.is_human_readable() {
            Event::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}
