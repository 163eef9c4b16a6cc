//! Accounts' money: usage records, the daily billing cycle, bills, the ledger and the events
//! owners are told about. The prices and the lifecycle rules are the `billing` crate's; this
//! module applies them to the replicated state.

use crate::state::{ChargeType, Instance, State};
use crate::{DomainError, Millis, Reply};
use billing::{AccountBilling, AccountState, Day, Event, PaygInstance, Timestamp, Usd};
use catalog::{Catalog, SHARED_INSTANCE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many events the state keeps (the oldest are dropped first).
pub const MAX_EVENTS: usize = 10_000;
/// Days of usage kept after their cycle is closed (a month's cumulative calls need 31).
pub const USAGE_RETENTION_DAYS: u64 = 62;
/// The most calls one usage delta may carry (a node flushes about every second; a trillion
/// calls a second is not traffic but corruption).
pub const MAX_CALLS_PER_FLUSH: u64 = 1_000_000_000_000;
/// The most outbound bytes one usage delta may carry (a petabyte).
pub const MAX_BYTES_PER_FLUSH: u64 = 1_000_000_000_000_000;

/// What one node counted for one (account, instance, API, region) since its last flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    pub account: String,
    pub instance: String,
    pub api: String,
    pub region: String,
    pub calls: u64,
    pub bytes_out: u64,
}

/// Calls and outbound bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub calls: u64,
    pub bytes_out: u64,
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
}

/// One line of a bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub item: String,
    pub quantity: String,
    pub amount: Usd,
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
    /// `recharge`, `bill DAY`, `subscription INSTANCE`, `upgrade INSTANCE`.
    pub what: String,
    /// Positive adds to the balance, negative takes from it.
    pub amount: Usd,
    pub balance_after: Usd,
}

/// Something an owner is told about, numbered in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: Millis,
    pub account: String,
    pub event: Event,
}

pub(crate) fn ts(ms: Millis) -> Timestamp {
    Timestamp::from_unix_secs(ms / 1000)
}

pub(crate) fn day_of(ms: Millis) -> u64 {
    ms / 1000 / billing::time::SECS_PER_DAY
}

fn billing_err(e: billing::BillingError) -> DomainError {
    DomainError::FailedPrecondition(e.to_string())
}

impl State {
    /// The first daily cycle not closed yet.
    pub fn next_open_day(&self) -> Option<u64> {
        match self.last_closed_day {
            Some(d) => Some(d + 1),
            None => self.genesis_ms.map(day_of),
        }
    }

    /// Notes events for `account`, keeping at most [`MAX_EVENTS`].
    pub(crate) fn push_events(&mut self, account: &str, at_ms: Millis, events: Vec<Event>) {
        for event in events {
            self.next_event_seq += 1;
            self.events.push(EventRecord {
                seq: self.next_event_seq,
                at_ms,
                account: account.to_string(),
                event,
            });
        }
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// Moves money and records it in the ledger, with the events the move causes.
    pub(crate) fn book(
        &mut self,
        account: &str,
        at_ms: Millis,
        what: String,
        amount: Usd,
        outcome: (AccountBilling, Vec<Event>),
    ) {
        let (billing, events) = outcome;
        let acct = self
            .accounts
            .get_mut(account)
            .expect("checked by the caller");
        acct.billing = billing;
        acct.ledger.push(LedgerEntry {
            at_ms,
            what,
            amount,
            balance_after: acct.billing.balance(),
        });
        self.push_events(account, at_ms, events);
    }

    pub(crate) fn record_usage(
        &mut self,
        node: u64,
        seq: u64,
        deltas: &[UsageDelta],
        now: Millis,
    ) -> Result<Reply, DomainError> {
        if self.usage_seq.get(&node).is_some_and(|last| seq <= *last) {
            // A retried flush: counted already.
            return Ok(Reply::UsageRecorded { duplicate: true });
        }
        // A node flushes about every second: counts beyond these are corrupt, not traffic.
        if let Some(d) = deltas
            .iter()
            .find(|d| d.calls > MAX_CALLS_PER_FLUSH || d.bytes_out > MAX_BYTES_PER_FLUSH)
        {
            return Err(DomainError::invalid(
                "deltas",
                format!(
                    "{} calls and {} bytes for {}/{} in one flush: at most {MAX_CALLS_PER_FLUSH} calls and {MAX_BYTES_PER_FLUSH} bytes",
                    d.calls, d.bytes_out, d.instance, d.api
                ),
            ));
        }
        // Usage that arrives after its day was billed goes to the first open day: late, never lost.
        let day = day_of(now).max(self.next_open_day().unwrap_or(0));
        for d in deltas {
            let u = self
                .usage
                .entry(day)
                .or_default()
                .entry(d.account.clone())
                .or_default();
            let c = u
                .by_api
                .entry(format!("{}/{}", d.instance, d.api))
                .or_default();
            // Saturating: a counter at its limit is wrong, a panic here would stop every node.
            c.calls = c.calls.saturating_add(d.calls);
            c.bytes_out = c.bytes_out.saturating_add(d.bytes_out);
            if d.instance == SHARED_INSTANCE {
                u.shared_calls = u.shared_calls.saturating_add(d.calls);
            }
            if d.bytes_out > 0 {
                let bytes = u.bytes_by_region.entry(d.region.clone()).or_default();
                *bytes = bytes.saturating_add(d.bytes_out);
            }
        }
        self.usage_seq.insert(node, seq);
        Ok(Reply::UsageRecorded { duplicate: false })
    }

    /// Bills every account for `day`, pays the bills from the balances, moves account states,
    /// and purges what has been suspended for six months.
    pub(crate) fn close_cycle(
        &mut self,
        day: u64,
        now: Millis,
        catalog: &Catalog,
    ) -> Result<Reply, DomainError> {
        let expected = self.next_open_day().unwrap_or(day);
        if day != expected {
            return Err(DomainError::FailedPrecondition(if day < expected {
                format!("the cycle of day {day} is already closed")
            } else {
                format!("close the cycle of day {expected} before day {day}")
            }));
        }
        if now < Day::from_index(day).end().unix_secs() * 1000 {
            return Err(DomainError::FailedPrecondition(format!(
                "the cycle of day {day} has not ended yet"
            )));
        }
        // Compute every bill before changing anything, so a failure leaves the state as it was.
        let names: Vec<String> = self.accounts.keys().cloned().collect();
        let mut bills = Vec::new();
        for name in &names {
            bills.push((name.clone(), self.bill_lines(name, day, catalog)?));
        }
        for (name, lines) in bills {
            let total: Usd = lines.iter().map(|l| l.amount).sum();
            let acct = &self.accounts[&name];
            let settled =
                billing::settle_cycle(&acct.billing, Day::from_index(day), total, ts(now))
                    .map_err(billing_err)?;
            self.book(
                &name,
                now,
                format!("bill {}", Day::from_index(day)),
                -total,
                settled,
            );
            let (billing, purge_events) =
                billing::purge_due(&self.accounts[&name].billing, ts(now));
            let purged = purge_events.iter().any(|e| matches!(e, Event::Purged));
            let acct = self.accounts.get_mut(&name).expect("exists");
            acct.billing = billing;
            let bill = Bill {
                day,
                lines,
                total,
                balance_after: acct.billing.balance(),
                state_after: acct.billing.state(),
                issued_at_ms: now,
            };
            self.bills.entry(name.clone()).or_default().push(bill);
            self.push_events(&name, now, purge_events);
            if purged {
                // Six months suspended: the account's API configuration is cleared.
                self.groups.retain(|_, g| g.account != name);
            }
        }
        self.last_closed_day = Some(day);
        self.usage.retain(|d, _| d + USAGE_RETENTION_DAYS > day);
        self.released.retain(|r| day_of(r.released_at_ms) > day);
        Ok(Reply::CycleClosed { day })
    }

    /// The lines of `account`'s bill for `day`.
    fn bill_lines(
        &self,
        account: &str,
        day: u64,
        catalog: &Catalog,
    ) -> Result<Vec<BillLine>, DomainError> {
        let acct = &self.accounts[account];
        let cycle = Day::from_index(day);
        let month = cycle.month();
        let month_first = month.start().day().index();
        let empty = DayUsage::default();
        let today = self
            .usage
            .get(&day)
            .and_then(|m| m.get(account))
            .unwrap_or(&empty);
        let earlier = |f: &dyn Fn(&DayUsage) -> u64| -> u64 {
            (month_first..day)
                .filter_map(|d| self.usage.get(&d).and_then(|m| m.get(account)))
                .map(f)
                .fold(0u64, u64::saturating_add)
        };
        let mut lines = Vec::new();
        if today.shared_calls > 0 {
            let free = billing::free_quota_applies(catalog.shared(), ts(acct.created_at_ms), month);
            let before = earlier(&|u| u.shared_calls);
            let amount =
                billing::daily_call_charge(catalog.shared(), before, today.shared_calls, free);
            lines.push(BillLine {
                item: format!(
                    "API calls on the shared instance{}",
                    if free {
                        " (first-year free quota applies)"
                    } else {
                        ""
                    }
                ),
                quantity: format!(
                    "{} calls ({} earlier this month)",
                    today.shared_calls, before
                ),
                amount,
            });
        }
        for (region, bytes) in &today.bytes_by_region {
            let Ok(r) = catalog.region(region) else {
                continue;
            };
            let before = earlier(&|u| u.bytes_by_region.get(region).copied().unwrap_or(0));
            let amount = billing::daily_traffic_charge(r.traffic_per_gb, before, *bytes);
            lines.push(BillLine {
                item: format!("Outbound traffic, {region}"),
                quantity: format!("{bytes} bytes"),
                amount,
            });
        }
        let live = self.instances.values().map(|i| (i, None));
        let released = self
            .released
            .iter()
            .map(|r| (&r.instance, Some(r.released_at_ms)));
        for (inst, released_at) in live.chain(released).filter(|(i, _)| i.account == account) {
            let Some(payg) = payg_of(inst, released_at)? else {
                continue;
            };
            let amount = payg.day_amount(catalog, cycle).map_err(billing_err)?;
            if amount > Usd::ZERO {
                lines.push(BillLine {
                    item: format!(
                        "Instance {} ({}, {}), pay-as-you-go",
                        inst.name, inst.spec, inst.region
                    ),
                    quantity: "hours started this day".into(),
                    amount,
                });
            }
        }
        Ok(lines)
    }
}

/// The pay-as-you-go part of an instance's life, if it has one: all of it for a postpaid
/// instance, and what follows the end of its term for a subscription.
fn payg_of(
    inst: &Instance,
    released_at: Option<Millis>,
) -> Result<Option<PaygInstance>, DomainError> {
    let since = match inst.charge_type {
        ChargeType::Postpaid => inst.created_at_ms,
        ChargeType::Month | ChargeType::Year => match inst.subscription_end_ms {
            Some(end) if released_at.is_none_or(|r| r > end) => end,
            _ => return Ok(None),
        },
    };
    let spec_at_since = inst
        .spec_history
        .iter()
        .rev()
        .find(|c| c.at_ms <= since)
        .map(|c| c.spec.clone())
        .unwrap_or_else(|| inst.spec.clone());
    let mut p = PaygInstance::new(&inst.region, &spec_at_since, ts(since));
    for c in inst.spec_history.iter().filter(|c| c.at_ms > since) {
        p.change_spec(&c.spec, ts(c.at_ms)).map_err(billing_err)?;
    }
    if let Some(r) = released_at {
        p.release(ts(r.max(since))).map_err(billing_err)?;
    }
    Ok(Some(p))
}

/// An instance released while billed by the hour, kept until its last day is billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedInstance {
    pub instance: Instance,
    pub released_at_ms: Millis,
}

pub(crate) fn new_billing() -> AccountBilling {
    AccountBilling::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, DEFAULT_ACCOUNT, Proposal};

    const DAY_MS: u64 = 86_400_000;
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn run(s: &mut State, at_ms: u64, command: Command) -> Result<Reply, DomainError> {
        let before = s.clone();
        let r = s.apply(&Proposal { at_ms, command }, Catalog::builtin());
        if r.is_err() {
            assert_eq!(*s, before, "a refused command changed the state");
        }
        r
    }

    fn calls(node: u64, seq: u64, n: u64) -> Command {
        Command::RecordUsage {
            node,
            seq,
            deltas: vec![UsageDelta {
                account: "acme".into(),
                instance: SHARED_INSTANCE.into(),
                api: "items".into(),
                region: "cn-hongkong".into(),
                calls: n,
                bytes_out: n * 1000,
            }],
        }
    }

    fn setup() -> State {
        let mut s = State::default();
        let create = Command::CreateAccount {
            name: "acme".into(),
            webhook: None,
            balance_alert: None,
        };
        run(&mut s, T0, create).unwrap();
        s
    }

    #[test]
    fn absurd_usage_and_recharges_are_refused_not_panics() {
        let mut s = setup();
        let before = s.clone();
        let e = run(&mut s, T0 + 1, calls(1, 1, MAX_CALLS_PER_FLUSH + 1)).unwrap_err();
        assert!(e.to_string().contains("in one flush"), "{e}");
        assert_eq!(s, before);
        // The largest allowed flushes, many times over: the day's counters saturate and the
        // day still closes.
        for seq in 1..=40 {
            run(&mut s, T0 + 1 + seq, calls(1, seq, MAX_CALLS_PER_FLUSH)).unwrap();
        }
        run(
            &mut s,
            T0 + DAY_MS + 1,
            Command::CloseCycle { day: day_of(T0) },
        )
        .unwrap();
        let recharge = |amount: &str| Command::Recharge {
            account: "acme".into(),
            amount: usd(amount),
        };
        run(&mut s, T0 + DAY_MS + 2, recharge("9223372036854")).unwrap();
        let before = s.clone();
        let e = run(&mut s, T0 + DAY_MS + 3, recharge("9223372036854")).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert_eq!(s, before);
    }

    #[test]
    fn retried_usage_flushes_count_once() {
        let mut s = setup();
        run(&mut s, T0 + 1, calls(1, 10, 5)).unwrap();
        let r = run(&mut s, T0 + 2, calls(1, 10, 5)).unwrap();
        assert_eq!(r, Reply::UsageRecorded { duplicate: true });
        run(&mut s, T0 + 3, calls(2, 10, 7)).unwrap();
        assert_eq!(s.usage[&day_of(T0)]["acme"].shared_calls, 12);
    }

    #[test]
    fn a_cycle_bills_once_and_in_order() {
        let mut s = setup();
        run(
            &mut s,
            T0 + 1,
            Command::Recharge {
                account: "acme".into(),
                amount: usd("100"),
            },
        )
        .unwrap();
        // 2,000,000 calls on day one: the first million are free (first year), the second at 0.9.
        run(&mut s, T0 + 2, calls(1, 1, 2_000_000)).unwrap();
        let d0 = day_of(T0);
        let e = run(&mut s, T0 + 3, Command::CloseCycle { day: d0 }).unwrap_err();
        assert!(e.to_string().contains("has not ended"), "{e}");
        run(&mut s, T0 + DAY_MS + 1, Command::CloseCycle { day: d0 }).unwrap();
        let bill = &s.bills["acme"][0];
        assert_eq!(bill.lines[0].amount, usd("0.9"));
        // Traffic: 2e9 bytes at 0.156/GiB.
        assert_eq!(
            bill.lines[1].amount,
            billing::traffic_amount(usd("0.156"), 2_000_000_000)
        );
        assert_eq!(
            s.accounts["acme"].billing.balance(),
            usd("100") - bill.total
        );
        // Closing it again, or skipping a day, is refused and changes nothing.
        let e = run(&mut s, T0 + DAY_MS + 2, Command::CloseCycle { day: d0 }).unwrap_err();
        assert!(e.to_string().contains("already closed"), "{e}");
        let e = run(&mut s, T0 + 9 * DAY_MS, Command::CloseCycle { day: d0 + 2 }).unwrap_err();
        assert!(e.to_string().contains("before day"), "{e}");
        // Usage that arrives late for a closed day is billed with the next one.
        run(&mut s, T0 + DAY_MS + 3, calls(1, 2, 10)).unwrap();
        assert_eq!(s.usage[&(d0 + 1)]["acme"].shared_calls, 10);
    }

    #[test]
    fn unpaid_bills_suspend_recharges_restore_and_six_months_purge() {
        let mut s = setup();
        let group = Command::CreateApiGroup {
            name: "g".into(),
            account: "acme".into(),
            instance: SHARED_INSTANCE.into(),
            host: None,
            base_path: None,
        };
        run(&mut s, T0, group).unwrap();
        run(&mut s, T0 + 1, calls(1, 1, 3_000_000)).unwrap();
        let d0 = day_of(T0);
        run(&mut s, T0 + DAY_MS, Command::CloseCycle { day: d0 }).unwrap();
        assert_eq!(s.accounts["acme"].billing.state(), AccountState::Suspended);
        assert!(
            s.events
                .iter()
                .any(|e| matches!(e.event, Event::Suspended { .. }))
        );
        // Management still works while suspended.
        run(
            &mut s,
            T0 + DAY_MS + 1,
            Command::SetAccountAlert {
                account: "acme".into(),
                threshold: Some(usd("5")),
                webhook: None,
            },
        )
        .unwrap();
        let owed = s.accounts["acme"].billing.owed();
        run(
            &mut s,
            T0 + DAY_MS + 2,
            Command::Recharge {
                account: "acme".into(),
                amount: owed,
            },
        )
        .unwrap();
        assert!(s.accounts["acme"].billing.serves_api_calls());
        assert!(
            s.events
                .iter()
                .any(|e| matches!(e.event, Event::Restored { .. }))
        );
        // Suspend again, then let six months of cycles pass.
        run(&mut s, T0 + DAY_MS + 3, calls(1, 2, 1_000_000)).unwrap();
        let mut day = d0 + 1;
        while day < d0 + 200 {
            run(&mut s, (day + 1) * DAY_MS, Command::CloseCycle { day }).unwrap();
            day += 1;
        }
        assert_eq!(s.accounts["acme"].billing.state(), AccountState::Purged);
        let warned = s
            .events
            .iter()
            .position(|e| matches!(e.event, Event::PurgeWarning { .. }));
        let purged = s
            .events
            .iter()
            .position(|e| matches!(e.event, Event::Purged));
        assert!(warned.unwrap() < purged.unwrap(), "the warning comes first");
        assert!(s.groups.is_empty(), "the API configuration is purged");
        assert!(s.usage.len() as u64 <= USAGE_RETENTION_DAYS);
    }

    #[test]
    fn subscriptions_are_paid_up_front() {
        let mut s = setup();
        let create = |charge_type| Command::CreateInstance {
            name: "sub".into(),
            spec: "api.s1.small".into(),
            region: "ap-southeast-1".into(),
            charge_type,
            account: "acme".into(),
        };
        let e = run(&mut s, T0, create(ChargeType::Month)).unwrap_err();
        assert!(e.to_string().contains("recharge first"), "{e}");
        run(
            &mut s,
            T0,
            Command::Recharge {
                account: "acme".into(),
                amount: usd("2000"),
            },
        )
        .unwrap();
        run(&mut s, T0 + 1, create(ChargeType::Month)).unwrap();
        assert_eq!(s.accounts["acme"].billing.balance(), usd("1440"));
        // An upgrade mid-term pays the prorated difference; a downgrade costs nothing.
        let modify = |spec: &str| Command::ModifyInstanceSpec {
            name: "sub".into(),
            spec: spec.into(),
        };
        let e = run(&mut s, T0 + 2, modify("api.s2.large")).unwrap_err();
        assert!(
            e.to_string().contains("upgrading the subscription costs"),
            "{e}"
        );
        run(&mut s, T0 + 2, modify("api.s1.medium")).unwrap();
        // At the start of the term the whole difference is due: 1560 - 560.
        assert_eq!(s.accounts["acme"].billing.balance(), usd("440"));
        let balance = s.accounts["acme"].billing.balance();
        run(&mut s, T0 + 3, modify("api.s1.small")).unwrap();
        assert_eq!(s.accounts["acme"].billing.balance(), balance);
        // The default account is untouched by all this.
        assert_eq!(s.accounts[DEFAULT_ACCOUNT].billing.balance(), Usd::ZERO);
    }

    #[test]
    fn payg_instances_bill_started_hours_at_the_spec_in_force() {
        let mut s = setup();
        run(
            &mut s,
            T0,
            Command::Recharge {
                account: "acme".into(),
                amount: usd("100"),
            },
        )
        .unwrap();
        let create = Command::CreateInstance {
            name: "p".into(),
            spec: "api.s1.small".into(),
            region: "ap-southeast-1".into(),
            charge_type: ChargeType::Postpaid,
            account: "acme".into(),
        };
        run(&mut s, T0, create).unwrap();
        // 9.5 hours, then released: 10 started hours at 0.93.
        run(
            &mut s,
            T0 + 9 * 3_600_000 + 1_800_000,
            Command::DeleteInstance { name: "p".into() },
        )
        .unwrap();
        run(&mut s, T0 + DAY_MS, Command::CloseCycle { day: day_of(T0) }).unwrap();
        let line = s.bills["acme"][0]
            .lines
            .iter()
            .find(|l| l.item.starts_with("Instance p"))
            .unwrap();
        assert_eq!(line.amount, usd("9.3"));
        assert!(s.released.is_empty(), "fully billed, so no longer kept");
    }
}
