//! The daily billing cycle: bills every account for a closed day, pays the bills from the
//! balances, moves account states, purges what has been suspended for six months (its
//! instances released with its configuration), and keeps subscription terms: warnings before
//! a term ends, automatic renewals, and the end of a term that was not renewed.
//!
//! A cycle costs O(accounts + instances) whatever the history holds: the month's earlier
//! usage, which the monthly price tiers need, is carried in each account's
//! [`super::MonthToDate`], and the day's bills and usage leave the state as history records.
//!
//! # The end of a subscription's term
//!
//! A term never turns into pay-as-you-go. The owner is warned 7 days and 1 day before the
//! term ends (`term_ending`). At the end, an instance set to auto-renew pays its next term
//! (the same length as it was bought for) from the balance (`term_renewed`); one that is not,
//! or whose balance does not cover the term, is stopped as of the term's end
//! (`instance_stopped`, reason `term_ended`): its APIs are refused and nothing is billed, but
//! it keeps its capacity and its API groups, and `gatewayctl instance renew` starts it again.
//! [`TERM_GRACE_DAYS`] after the term's end it is released with the API groups it hosts
//! (`instance_released`). The cycle runs once a day, an hour or so after midnight (UTC), so
//! each of these happens at the first cycle after its time; the stop is recorded as of the
//! term's end.

use super::{
    ChargeType, Effects, Instance, MonthToDate, ReleasedInstance, State, StopReason, Stopped,
    TERM_GRACE_DAYS, billing_err, groups, index_remove, instances, ts,
};
use crate::history::{Bill, BillLine, DayUsage, HistoryRecord};
use crate::{DomainError, Millis, Reply};
use billing::{Day, Event, PaygInstance, Term};
use catalog::{Catalog, Usd};

const DAY_MS: Millis = 86_400_000;

pub(super) fn close(
    s: &mut State,
    day: u64,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let expected = s.next_open_day().unwrap_or(day);
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
    let month_first = Day::from_index(day).month().start().day().index();
    let usage_today = s.usage.get(&day).cloned().unwrap_or_default();
    let empty = DayUsage::default();
    let names: Vec<String> = s.accounts.keys().cloned().collect();
    for name in names {
        let today = usage_today.get(&name).unwrap_or(&empty);
        let lines = bill_lines(s, &name, day, month_first, today, catalog)?;
        let total: Usd = lines.iter().map(|l| l.amount).sum();
        let settled = billing::settle_cycle(
            &s.account(&name)?.billing,
            Day::from_index(day),
            total,
            ts(now),
        )
        .map_err(billing_err)?;
        let what = format!("bill {}", Day::from_index(day));
        s.book(&name, now, what, -total, settled, fx)?;
        let (billing, mut purge_events) = billing::purge_due(&s.account(&name)?.billing, ts(now));
        let purged = purge_events.iter().any(|e| matches!(e, Event::Purged));
        for e in &mut purge_events {
            if let Event::PurgeWarning {
                releases_instances, ..
            } = e
            {
                *releases_instances = s
                    .instances_of_account(&name)
                    .map(|i| i.name.clone())
                    .collect();
            }
        }
        let instance_events = s.set_billing(&name, billing, now, fx)?;
        let acct = s.account_mut(&name)?;
        add_to_month(&mut acct.month_to_date, month_first, today);
        let bill = Bill {
            day,
            lines,
            total,
            balance_after: acct.billing.balance(),
            state_after: acct.billing.state(),
            issued_at_ms: now,
        };
        fx.history.push(HistoryRecord::Bill {
            account: name.clone(),
            bill,
        });
        if today != &empty {
            fx.history.push(HistoryRecord::Usage {
                account: name.clone(),
                day,
                usage: today.clone(),
            });
        }
        s.push_events(&name, now, purge_events, fx);
        s.push_events(&name, now, instance_events, fx);
        if purged {
            // Six months suspended: the account's API configuration is cleared, and its
            // instances are released with it.
            let doomed: Vec<String> = s.groups_of_account(&name).map(|g| g.name.clone()).collect();
            for g in doomed {
                groups::remove_group(s, &g);
                super::throttles::unbind_all(s, &g, None);
                fx.changes.groups.insert(g);
            }
            let policies: Vec<String> = s
                .throttles
                .values()
                .filter(|p| p.account == name)
                .map(|p| p.name.clone())
                .collect();
            for p in policies {
                s.throttles.remove(&p);
            }
            let instances: Vec<String> = s
                .instances_of_account(&name)
                .map(|i| i.name.clone())
                .collect();
            for i in instances {
                release(s, &i, "account_purged", now, fx);
            }
        }
        keep_terms(s, &name, now, catalog, fx)?;
        // Stops that ended by the end of this day touch no hour billed from now on.
        let day_end = (day + 1) * DAY_MS;
        let names: Vec<String> = s
            .instances_of_account(&name)
            .filter(|i| !i.stops.is_empty())
            .map(|i| i.name.clone())
            .collect();
        for i in names {
            if let Some(inst) = s.instances.get_mut(&i) {
                inst.stops
                    .retain(|st| st.until_ms.is_none_or(|u| u > day_end));
            }
        }
    }
    s.last_closed_day = Some(day);
    // The closed day's usage is history now.
    let open = s.usage.split(&day).1;
    s.usage = open;
    s.released.retain(|r| super::day_of(r.released_at_ms) > day);
    Ok(Reply::CycleClosed { day })
}

/// Adds a closed day's usage to its month's running counts (starting them over in a new month).
fn add_to_month(mtd: &mut MonthToDate, month_first: u64, today: &DayUsage) {
    if mtd.month_first_day != month_first {
        *mtd = MonthToDate {
            month_first_day: month_first,
            ..MonthToDate::default()
        };
    }
    mtd.shared_calls = mtd.shared_calls.saturating_add(today.shared_calls);
    for (region, bytes) in &today.bytes_by_region {
        let b = mtd.bytes_by_region.entry(region.clone()).or_default();
        *b = b.saturating_add(*bytes);
    }
    for (region, bytes) in &today.backend_bytes_by_region {
        let b = mtd
            .backend_bytes_by_region
            .entry(region.clone())
            .or_default();
        *b = b.saturating_add(*bytes);
    }
}

/// The lines of `account`'s bill for `day`.
fn bill_lines(
    s: &State,
    account: &str,
    day: u64,
    month_first: u64,
    today: &DayUsage,
    catalog: &Catalog,
) -> Result<Vec<BillLine>, DomainError> {
    let acct = s.account(account)?;
    let cycle = Day::from_index(day);
    let month = cycle.month();
    let mtd = &acct.month_to_date;
    let this_month = mtd.month_first_day == month_first;
    let mut lines = Vec::new();
    if today.shared_calls > 0 {
        let free = billing::free_quota_applies(catalog.shared(), ts(acct.created_at_ms), month);
        let before = if this_month { mtd.shared_calls } else { 0 };
        let amount =
            billing::daily_call_charge_cents(catalog.shared(), before, today.shared_calls, free);
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
            instance: Some(catalog::SHARED_INSTANCE.to_string()),
        });
    }
    for (region, bytes) in &today.bytes_by_region {
        let Ok(r) = catalog.region(region) else {
            continue;
        };
        let before = match this_month {
            true => mtd.bytes_by_region.get(region).copied().unwrap_or(0),
            false => 0,
        };
        let amount = billing::daily_traffic_charge_cents(r.traffic_per_gb, before, *bytes);
        lines.push(BillLine {
            item: format!("Outbound traffic, {region}"),
            quantity: format!("{bytes} bytes"),
            amount,
            instance: None,
        });
    }
    // Rule d: traffic with backends outside the instance's region, priced like the region's
    // outbound traffic, on a line of its own with its own monthly count.
    for (region, bytes) in &today.backend_bytes_by_region {
        let Ok(r) = catalog.region(region) else {
            continue;
        };
        let before = match this_month {
            true => mtd
                .backend_bytes_by_region
                .get(region)
                .copied()
                .unwrap_or(0),
            false => 0,
        };
        let amount = billing::daily_traffic_charge_cents(r.traffic_per_gb, before, *bytes);
        lines.push(BillLine {
            item: format!("Backend traffic, {region}"),
            quantity: format!("{bytes} bytes"),
            amount,
            instance: None,
        });
    }
    let live = s.instances_of_account(account).map(|i| (i, None));
    let released = s
        .released
        .iter()
        .filter(|r| r.instance.account == account)
        .map(|r| (&r.instance, Some(r.released_at_ms)));
    for (inst, released_at) in live.chain(released) {
        let Some(payg) = payg_of(inst, released_at)? else {
            continue;
        };
        let hours = payg
            .billed_hours(catalog, cycle.start(), cycle.end())
            .map_err(billing_err)?;
        // Hourly prices are whole cents in the document; rounding keeps any catalog's so.
        let amount = hours.iter().map(|h| h.price).sum::<Usd>().round_cents();
        if amount > Usd::ZERO {
            lines.push(BillLine {
                item: format!(
                    "Instance {} ({}, {}), pay-as-you-go",
                    inst.name, inst.spec, inst.region
                ),
                quantity: format!("{} hours run this day", hours.len()),
                amount,
                instance: Some(inst.name.clone()),
            });
        }
    }
    Ok(lines)
}

/// The pay-as-you-go life of an instance, with the stops the bills still need; `None` for a
/// subscription, which is paid up front and never billed by the hour.
fn payg_of(
    inst: &Instance,
    released_at: Option<Millis>,
) -> Result<Option<PaygInstance>, DomainError> {
    if inst.charge_type != ChargeType::Postpaid {
        return Ok(None);
    }
    let since = inst.created_at_ms;
    let first = inst
        .spec_history
        .first()
        .map_or(inst.spec.as_str(), |c| c.spec.as_str());
    let mut p = PaygInstance::new(&inst.region, first, ts(since));
    for c in inst.spec_history.iter().skip(1) {
        p.change_spec(&c.spec, ts(c.at_ms)).map_err(billing_err)?;
    }
    for st in &inst.stops {
        p.add_stop(ts(st.from_ms.max(since)), st.until_ms.map(ts))
            .map_err(billing_err)?;
    }
    if let Some(r) = released_at {
        p.release(ts(r.max(since))).map_err(billing_err)?;
    }
    Ok(Some(p))
}

/// Releases instance `name` without its owner asking (`reason`: `term_ended`,
/// `account_purged`), with the API groups it hosts.
fn release(s: &mut State, name: &str, reason: &str, now: Millis, fx: &mut Effects) {
    let hosted: Vec<String> = s
        .index
        .groups_by_instance
        .get(name)
        .map(|set| set.iter().cloned().collect())
        .unwrap_or_default();
    for g in &hosted {
        groups::remove_group(s, g);
        super::throttles::unbind_all(s, g, None);
        fx.changes.groups.insert(g.clone());
    }
    let Some(inst) = s.instances.remove(name) else {
        return;
    };
    index_remove(
        &mut s.index.instances_by_account,
        &inst.account,
        &name.to_string(),
    );
    let account = inst.account.clone();
    if inst.charge_type == ChargeType::Postpaid {
        // Kept until its last hours are billed, like one its owner deletes.
        s.released.push_back(ReleasedInstance {
            instance: inst,
            released_at_ms: now,
        });
    }
    fx.changes.instances.insert(name.to_string());
    let event = Event::InstanceReleased {
        instance: name.to_string(),
        reason: reason.to_string(),
        removed_groups: hosted,
    };
    s.push_events(&account, now, vec![event], fx);
}

/// Warns of, renews, stops and releases `account`'s subscriptions as their terms require (see
/// the module docs).
fn keep_terms(
    s: &mut State,
    account: &str,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<(), DomainError> {
    let grace_ms = Millis::from(TERM_GRACE_DAYS) * DAY_MS;
    let subs: Vec<String> = s
        .instances_of_account(account)
        .filter(|i| i.charge_type != ChargeType::Postpaid && i.subscription_end_ms.is_some())
        .map(|i| i.name.clone())
        .collect();
    for name in subs {
        let inst = s.instances.get(&name).expect("listed above").clone();
        let end = inst.subscription_end_ms.expect("filtered above");
        if let Some(Stopped {
            reason: StopReason::TermEnded,
            since_ms,
        }) = inst.stopped
        {
            if now >= since_ms.saturating_add(grace_ms) {
                release(s, &name, "term_ended", now, fx);
            }
            continue;
        }
        if now >= end {
            if inst.auto_renew && renew_automatically(s, &name, now, catalog, fx) {
                continue;
            }
            let inst = s.instances.get_mut(&name).expect("listed above");
            let end = inst.subscription_end_ms.expect("filtered above");
            inst.stop(end, StopReason::TermEnded);
            fx.changes.instances.insert(name.clone());
            let hosted: Vec<String> = s
                .index
                .groups_by_instance
                .get(&name)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default();
            fx.changes.groups.extend(hosted.iter().cloned());
            let event = Event::InstanceStopped {
                instance: name.clone(),
                reason: StopReason::TermEnded.as_str().into(),
                release_at: Some(ts(end.saturating_add(grace_ms))),
                hosted_groups: hosted,
            };
            s.push_events(account, now, vec![event], fx);
            continue;
        }
        let left = end - now;
        let due = if left <= DAY_MS {
            2
        } else if left <= 7 * DAY_MS {
            1
        } else {
            0
        };
        if due > inst.term_warnings {
            s.instances
                .get_mut(&name)
                .expect("listed above")
                .term_warnings = due;
            let event = Event::TermEnding {
                instance: name.clone(),
                term_end: ts(end),
                auto_renew: inst.auto_renew,
                grace_days: TERM_GRACE_DAYS,
            };
            s.push_events(account, now, vec![event], fx);
        }
    }
    Ok(())
}

/// Renews an auto-renewing instance whose term has ended, term after term until it runs past
/// `now` (a bounded catch-up); false if the balance did not cover the first.
fn renew_automatically(
    s: &mut State,
    name: &str,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> bool {
    let mut renewed = false;
    for _ in 0..24 {
        let Some(inst) = s.instances.get(name) else {
            break;
        };
        if inst.subscription_end_ms.is_none_or(|end| end > now) {
            break;
        }
        let term = match inst.charge_type {
            ChargeType::Year => Term::Years(1),
            _ => Term::Months(1),
        };
        // A refusal (the balance does not cover the term) changes nothing.
        if instances::renew_at(s, name, term, now, true, catalog, fx).is_err() {
            break;
        }
        renewed = true;
    }
    renewed
        && s.instances
            .get(name)
            .is_some_and(|i| i.subscription_end_ms.is_some_and(|end| end > now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::UsageDelta;
    use crate::history::EventRecord;
    use crate::state::usage::MAX_CALLS_PER_FLUSH;
    use crate::state::{ChargeType, day_of};
    use crate::state::{StopReason, Stopped};
    use crate::{Command, DEFAULT_ACCOUNT, Proposal};
    use billing::{AccountState, Term};
    use catalog::SHARED_INSTANCE;

    thread_local! {
        /// The history every command of a test (a thread) wrote, as storage would keep it.
        static HISTORY: std::cell::RefCell<Vec<HistoryRecord>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    const DAY_MS: u64 = 86_400_000;
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn run(s: &mut State, at_ms: u64, command: Command) -> Result<Reply, DomainError> {
        let before = s.clone();
        let applied = s
            .apply(
                &Proposal {
                    at_ms,
                    catalog: Catalog::builtin().fingerprint().into(),
                    request_id: None,
                    command,
                },
                Catalog::builtin(),
            )
            .unwrap();
        if applied.reply.is_err() {
            assert_eq!(*s, before, "a refused command changed the state");
        }
        HISTORY.with(|h| h.borrow_mut().extend(applied.history));
        applied.reply
    }

    fn bills(account: &str) -> Vec<Bill> {
        HISTORY.with(|h| {
            h.borrow()
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Bill { account: a, bill } if a == account => Some(bill.clone()),
                    _ => None,
                })
                .collect()
        })
    }

    fn events(account: &str) -> Vec<EventRecord> {
        HISTORY.with(|h| {
            h.borrow()
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Event(e) if e.account == account => Some(e.clone()),
                    _ => None,
                })
                .collect()
        })
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
                backend_bytes: 0,
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
    fn backend_traffic_is_a_line_of_its_own_at_the_regions_price() {
        let mut s = setup();
        let gb = billing::BYTES_PER_GB;
        let usage = |seq: u64, bytes_out: u64, backend_bytes: u64| Command::RecordUsage {
            node: 1,
            seq,
            deltas: vec![UsageDelta {
                account: "acme".into(),
                instance: SHARED_INSTANCE.into(),
                api: "items".into(),
                region: "cn-hongkong".into(),
                calls: 0,
                bytes_out,
                backend_bytes,
            }],
        };
        // Day one: 10 GB out, 4 GB from a billed backend; day two: 2.5 GB more from it.
        run(&mut s, T0 + 1, usage(1, 10 * gb, 4 * gb)).unwrap();
        let d0 = day_of(T0);
        run(&mut s, T0 + DAY_MS + 1, Command::CloseCycle { day: d0 }).unwrap();
        run(&mut s, T0 + DAY_MS + 2, usage(2, 0, 5 * gb / 2)).unwrap();
        run(
            &mut s,
            T0 + 2 * DAY_MS + 1,
            Command::CloseCycle { day: d0 + 1 },
        )
        .unwrap();
        let b = bills("acme");
        let line =
            |bill: &Bill, item: &str| bill.lines.iter().find(|l| l.item == item).map(|l| l.amount);
        // cn-hongkong: 0.156 per GB, for both kinds of traffic.
        assert_eq!(
            line(&b[0], "Outbound traffic, cn-hongkong"),
            Some(usd("1.56"))
        );
        assert_eq!(
            line(&b[0], "Backend traffic, cn-hongkong"),
            Some(usd("0.62"))
        );
        assert_eq!(b[0].total, usd("2.18"));
        // The month's backend count goes on: 6.5 GB is 1.014, less the 0.62 billed = 0.39
        // (the cents carried), and no outbound line on a day without outbound traffic.
        assert_eq!(
            line(&b[1], "Backend traffic, cn-hongkong"),
            Some(usd("0.39"))
        );
        assert_eq!(line(&b[1], "Outbound traffic, cn-hongkong"), None);
        assert_eq!(
            s.account("acme")
                .unwrap()
                .month_to_date
                .backend_bytes_by_region["cn-hongkong"],
            13 * gb / 2
        );
    }

    #[test]
    fn retried_usage_flushes_count_once() {
        let mut s = setup();
        run(&mut s, T0 + 1, calls(1, 10, 5)).unwrap();
        let r = run(&mut s, T0 + 2, calls(1, 10, 5)).unwrap();
        assert_eq!(r, Reply::UsageRecorded { duplicate: true });
        run(&mut s, T0 + 3, calls(2, 10, 7)).unwrap();
        assert_eq!(s.usage[&day_of(T0)]["acme"].shared_calls, 12);
        run(&mut s, T0 + DAY_MS, Command::CloseCycle { day: day_of(T0) }).unwrap();
        assert!(s.usage.is_empty(), "a closed day's usage is history");
    }

    fn batch(seq: u64, at_ms: u64, open_ms: u64, n: u64) -> crate::UsageBatch {
        crate::UsageBatch {
            seq,
            hour: at_ms / 3_600_000,
            open_hour: open_ms / 3_600_000,
            deltas: match calls(0, 0, n) {
                Command::RecordUsage { deltas, .. } => deltas,
                _ => unreachable!(),
            },
        }
    }

    #[test]
    fn journal_batches_are_dated_by_arrival_and_each_counted_once() {
        let mut s = setup();
        let d0 = day_of(T0);
        let last_tenth = T0 + DAY_MS - 100;
        // Node 1's batch of 23:59:59.9 arrives after midnight, with one of the new day.
        let batches = vec![
            batch(100, last_tenth, T0 + DAY_MS, 3),
            batch(101, T0 + DAY_MS, T0 + DAY_MS, 4),
        ];
        let record =
            |batches: Vec<crate::UsageBatch>| Command::RecordUsageBatches { node: 1, batches };
        run(&mut s, T0 + DAY_MS + 500, record(batches.clone())).unwrap();
        assert_eq!(s.usage[&d0]["acme"].shared_calls, 3);
        assert_eq!(s.usage[&(d0 + 1)]["acme"].shared_calls, 4);
        assert!(!s.usage_complete(d0, [1, 2]), "node 2 has sent nothing");
        assert!(s.usage_complete(d0, [1]));
        // Replayed after a restart together with a new batch: only the new one counts.
        let mut replay = batches.clone();
        replay.push(batch(102, T0 + DAY_MS + 1, T0 + DAY_MS + 1, 5));
        run(&mut s, T0 + DAY_MS + 600, record(replay)).unwrap();
        assert_eq!(s.usage[&d0]["acme"].shared_calls, 3);
        assert_eq!(s.usage[&(d0 + 1)]["acme"].shared_calls, 9);
        let r = run(&mut s, T0 + DAY_MS + 700, record(batches)).unwrap();
        assert_eq!(r, Reply::UsageRecorded { duplicate: true });
        // Bad batches are refused whole.
        let e = run(
            &mut s,
            T0 + DAY_MS + 800,
            record(vec![
                batch(200, T0 + DAY_MS, T0 + DAY_MS, 1),
                batch(199, T0 + DAY_MS, T0 + DAY_MS, 1),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("seqs must rise"), "{e}");
        let e = run(
            &mut s,
            T0 + DAY_MS + 800,
            record(vec![batch(200, T0 + DAY_MS, T0, 1)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("open_hour"), "{e}");
        // Once day 0 is billed, a late batch of it goes to the first open day.
        run(&mut s, T0 + DAY_MS + 900, Command::CloseCycle { day: d0 }).unwrap();
        assert_eq!(bills("acme")[0].day, d0);
        run(
            &mut s,
            T0 + DAY_MS + 1000,
            Command::RecordUsageBatches {
                node: 2,
                batches: vec![batch(1, last_tenth, T0 + DAY_MS, 6)],
            },
        )
        .unwrap();
        assert_eq!(s.usage[&(d0 + 1)]["acme"].shared_calls, 15);
        assert!(s.usage_complete(d0, [1, 2]));
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
        let bill = &bills("acme")[0];
        assert_eq!(bill.lines[0].amount, usd("0.9"));
        // Traffic: 2e9 bytes at 0.156/GiB = 0.290573..., in whole cents; the remainder is
        // carried to the next day.
        assert_eq!(
            bill.lines[1].amount,
            billing::traffic_amount(usd("0.156"), 2_000_000_000).round_cents()
        );
        assert_eq!(bill.lines[1].amount, usd("0.29"));
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
            events("acme")
                .iter()
                .any(|e| matches!(e.event, Event::Suspended { .. }))
        );
        // Management still works while suspended.
        run(
            &mut s,
            T0 + DAY_MS + 1,
            Command::SetAccountAlert {
                account: "acme".into(),
                threshold: crate::Update::Set(usd("5")),
                webhook: crate::Update::Keep,
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
            events("acme")
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
        let events = events("acme");
        let warned = events
            .iter()
            .position(|e| matches!(e.event, Event::PurgeWarning { .. }));
        let purged = events.iter().position(|e| matches!(e.event, Event::Purged));
        assert!(warned.unwrap() < purged.unwrap(), "the warning comes first");
        assert!(s.groups.is_empty(), "the API configuration is purged");
        assert!(s.usage.len() <= 1, "only open days' usage is kept");
        assert!(s.indexes_consistent());
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
        let bills = bills("acme");
        let line = bills[0]
            .lines
            .iter()
            .find(|l| l.item.starts_with("Instance p"))
            .unwrap();
        assert_eq!(line.amount, usd("9.3"));
        assert!(s.released.is_empty(), "fully billed, so no longer kept");
    }

    fn ledger(account: &str) -> Vec<crate::history::LedgerEntry> {
        HISTORY.with(|h| {
            h.borrow()
                .iter()
                .filter_map(|r| match r {
                    HistoryRecord::Ledger {
                        account: a, entry, ..
                    } if a == account => Some(entry.clone()),
                    _ => None,
                })
                .collect()
        })
    }

    fn recharge(amount: &str) -> Command {
        Command::Recharge {
            account: "acme".into(),
            amount: usd(amount),
        }
    }

    fn instance_line(bill: &Bill, name: &str) -> Option<Usd> {
        bill.lines
            .iter()
            .find(|l| l.instance.as_deref() == Some(name))
            .map(|l| l.amount)
    }

    /// Closes every day from the next open one up to (not including) `until_day`, each at
    /// 01:00 the day after.
    fn close_until(s: &mut State, until_day: u64) {
        while let Some(day) = s.next_open_day().filter(|d| *d < until_day) {
            run(
                s,
                (day + 1) * DAY_MS + 3_600_000,
                Command::CloseCycle { day },
            )
            .unwrap();
        }
    }

    #[test]
    fn a_suspended_accounts_payg_instances_stop_and_restart_with_the_recharge() {
        let mut s = setup();
        run(&mut s, T0, recharge("30")).unwrap();
        let create = Command::CreateInstance {
            name: "p".into(),
            spec: "api.s1.small".into(),
            region: "cn-hangzhou".into(), // 0.87 an hour, 20.88 a day
            charge_type: ChargeType::Postpaid,
            account: "acme".into(),
        };
        run(&mut s, T0, create).unwrap();
        let d0 = day_of(T0);
        // Day 0: 20.88 of 30; day 1 leaves it owing: suspended at 01:00 on day 2.
        close_until(&mut s, d0 + 2);
        assert_eq!(s.accounts["acme"].billing.state(), AccountState::Suspended);
        let inst = &s.instances["p"];
        let suspended_at = (d0 + 2) * DAY_MS + 3_600_000;
        assert_eq!(
            inst.stopped,
            Some(Stopped {
                since_ms: suspended_at,
                reason: StopReason::AccountSuspended
            })
        );
        // Day 2: the hour 00:00-01:00 ran, then nothing. Days 3 and 4: nothing at all.
        close_until(&mut s, d0 + 5);
        let b = bills("acme");
        assert_eq!(instance_line(&b[2], "p"), Some(usd("0.87")));
        assert_eq!(instance_line(&b[3], "p"), None);
        assert_eq!(instance_line(&b[4], "p"), None);
        // One created while suspended starts stopped.
        let create = Command::CreateInstance {
            name: "q".into(),
            spec: "api.s1.small".into(),
            region: "cn-hangzhou".into(),
            charge_type: ChargeType::Postpaid,
            account: "acme".into(),
        };
        let at = s.clock_ms;
        run(&mut s, at, create).unwrap();
        assert!(s.instances["q"].stopped.is_some());
        assert!(
            events("acme").iter().any(|e| matches!(
                &e.event,
                Event::InstanceStopped { instance, reason, .. } if instance == "p" && reason == "account_suspended"
            ))
        );
        // A recharge at 10:20 on day 5 restores the account and starts the instance: billing
        // resumes with the hour 10:00-11:00 (hours count from the creation at 00:00).
        let owed = s.accounts["acme"].billing.owed();
        let restored_at = (d0 + 5) * DAY_MS + 10 * 3_600_000 + 20 * 60_000;
        run(
            &mut s,
            restored_at,
            Command::Recharge {
                account: "acme".into(),
                amount: owed + usd("100"),
            },
        )
        .unwrap();
        assert_eq!(s.instances["p"].stopped, None);
        assert!(
            events("acme").iter().any(
                |e| matches!(&e.event, Event::InstanceStarted { instance } if instance == "p")
            )
        );
        close_until(&mut s, d0 + 7);
        let b = bills("acme");
        assert_eq!(instance_line(&b[5], "p"), Some(usd("12.18"))); // 14 hours: 10:00 to 23:00
        assert_eq!(instance_line(&b[6], "p"), Some(usd("20.88")));
        assert_eq!(
            s.instances["q"].stopped, None,
            "started by the recharge too"
        );
        // Stops that no open day needs are dropped.
        assert!(s.instances["p"].stops.is_empty());
        assert!(s.indexes_consistent());
    }

    #[test]
    fn the_purge_releases_the_accounts_instances_and_its_warning_says_so() {
        let mut s = setup();
        run(&mut s, T0, recharge("1")).unwrap();
        let create = Command::CreateInstance {
            name: "p".into(),
            spec: "api.s1.small".into(),
            region: "cn-hangzhou".into(),
            charge_type: ChargeType::Postpaid,
            account: "acme".into(),
        };
        run(&mut s, T0, create).unwrap();
        let group = Command::CreateApiGroup {
            name: "g".into(),
            account: "acme".into(),
            instance: "p".into(),
            host: None,
            base_path: None,
        };
        run(&mut s, T0, group).unwrap();
        let d0 = day_of(T0);
        close_until(&mut s, d0 + 200);
        assert_eq!(s.accounts["acme"].billing.state(), AccountState::Purged);
        assert!(s.instances.is_empty() && s.groups.is_empty());
        assert!(s.released.is_empty(), "billed to the end, then forgotten");
        let ev = events("acme");
        let warning = ev
            .iter()
            .find_map(|e| match &e.event {
                Event::PurgeWarning {
                    releases_instances, ..
                } => Some(releases_instances.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(warning, ["p"]);
        assert!(ev.iter().any(|e| matches!(
            &e.event,
            Event::InstanceReleased { instance, reason, .. } if instance == "p" && reason == "account_purged"
        )));
        // Suspended by the first bill (20.88 of 1): the next day bills the hour in which that
        // happened, and nothing accrues after it, through the six months and the purge.
        let b = bills("acme");
        assert_eq!(b[0].total, usd("20.88"));
        assert_eq!(b[1].total, usd("0.87"));
        assert!(b.iter().skip(2).all(|b| b.total == Usd::ZERO));
        assert_eq!(s.accounts["acme"].billing.owed(), usd("20.75"));
        assert!(s.indexes_consistent());
    }

    fn subscription(name: &str, auto_renew: bool) -> Command {
        Command::CreateInstanceWith {
            name: name.into(),
            spec: "api.s1.small".into(),
            region: "ap-southeast-1".into(), // 560 a month
            charge_type: ChargeType::Month,
            account: "acme".into(),
            options: crate::InstanceOptions { auto_renew },
        }
    }

    fn term_events(account: &str) -> Vec<Event> {
        events(account)
            .into_iter()
            .map(|e| e.event)
            .filter(|e| {
                matches!(
                    e,
                    Event::TermEnding { .. }
                        | Event::TermRenewed { .. }
                        | Event::InstanceStopped { .. }
                        | Event::InstanceStarted { .. }
                        | Event::InstanceReleased { .. }
                )
            })
            .collect()
    }

    #[test]
    fn an_unrenewed_term_warns_stops_at_its_end_and_is_released_after_the_grace() {
        let mut s = setup();
        run(&mut s, T0, recharge("600")).unwrap();
        run(&mut s, T0, subscription("sub", false)).unwrap();
        let group = Command::CreateApiGroup {
            name: "g".into(),
            account: "acme".into(),
            instance: "sub".into(),
            host: None,
            base_path: None,
        };
        run(&mut s, T0, group).unwrap();
        let end = s.instances["sub"].subscription_end_ms.unwrap();
        assert_eq!(end, T0 + 31 * DAY_MS); // 2026-02-01
        let d0 = day_of(T0);
        close_until(&mut s, d0 + 23);
        assert_eq!(term_events("acme"), [], "nothing until 7 days before");
        close_until(&mut s, d0 + 25);
        let ending = |e: &Event| matches!(e, Event::TermEnding { term_end, .. } if term_end.unix_secs() * 1000 == end);
        assert_eq!(term_events("acme").iter().filter(|e| ending(e)).count(), 1);
        close_until(&mut s, d0 + 29);
        assert_eq!(term_events("acme").iter().filter(|e| ending(e)).count(), 1);
        close_until(&mut s, d0 + 30);
        assert_eq!(
            term_events("acme").iter().filter(|e| ending(e)).count(),
            2,
            "and 1 day before"
        );
        assert!(s.instances["sub"].stopped.is_none());
        // The cycle after the end stops it, as of the end; it is never billed by the hour.
        close_until(&mut s, d0 + 31);
        let inst = &s.instances["sub"];
        assert_eq!(
            inst.stopped,
            Some(Stopped {
                since_ms: end,
                reason: StopReason::TermEnded
            })
        );
        assert!(!s.serves_group(&s.groups["g"]));
        assert!(matches!(
            term_events("acme").last().unwrap(),
            Event::InstanceStopped { reason, hosted_groups, .. } if reason == "term_ended" && hosted_groups == &["g".to_string()]
        ));
        close_until(&mut s, d0 + 37);
        assert!(s.instances.contains_key("sub"), "kept through the grace");
        close_until(&mut s, d0 + 38);
        assert!(!s.instances.contains_key("sub"), "released after 7 days");
        assert!(!s.groups.contains_key("g"));
        assert!(matches!(
            term_events("acme").last().unwrap(),
            Event::InstanceReleased { reason, removed_groups, .. } if reason == "term_ended" && removed_groups == &["g".to_string()]
        ));
        // No bill ever had a line for it.
        assert!(
            bills("acme")
                .iter()
                .all(|b| instance_line(b, "sub").is_none())
        );
        assert_eq!(s.accounts["acme"].billing.balance(), usd("40"));
        assert!(s.indexes_consistent());
    }

    #[test]
    fn renewals_pay_from_the_balance_and_restart_a_stopped_instance() {
        let mut s = setup();
        run(&mut s, T0, recharge("600")).unwrap();
        run(&mut s, T0, subscription("sub", false)).unwrap();
        let renew = |term| Command::RenewInstance {
            name: "sub".into(),
            term,
        };
        let e = run(&mut s, T0 + 1, renew(Term::Months(1))).unwrap_err();
        assert!(
            e.to_string()
                .contains("renewing instance 'sub' for 1 month costs 560.00"),
            "{e}"
        );
        let payg = Command::CreateInstance {
            name: "p".into(),
            spec: "api.s1.small".into(),
            region: "ap-southeast-1".into(),
            charge_type: ChargeType::Postpaid,
            account: "acme".into(),
        };
        run(&mut s, T0, payg).unwrap();
        let e = run(
            &mut s,
            T0 + 1,
            Command::RenewInstance {
                name: "p".into(),
                term: Term::Months(1),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("is pay-as-you-go"), "{e}");
        run(&mut s, T0, Command::DeleteInstance { name: "p".into() }).unwrap();
        // Renewed before its end: the term runs on from the end.
        run(&mut s, T0 + 2, recharge("2000")).unwrap();
        let end = s.instances["sub"].subscription_end_ms.unwrap();
        run(&mut s, T0 + 3, renew(Term::Months(2))).unwrap();
        let inst = &s.instances["sub"];
        assert_eq!(
            inst.subscription_end_ms,
            Some(ts_ms(ts(end).plus_months(2)))
        );
        assert_eq!(
            ledger("acme").last().unwrap().what,
            "renewal sub (2 months)"
        );
        assert_eq!(ledger("acme").last().unwrap().amount, usd("-1120"));
        // Let it end unrenewed, then renew in the grace: it starts again from now.
        let end = inst.subscription_end_ms.unwrap();
        close_until(&mut s, day_of(end) + 2);
        assert!(s.instances["sub"].stopped.is_some());
        let at = s.clock_ms;
        run(&mut s, at, recharge("6000")).unwrap();
        run(&mut s, at, renew(Term::Years(1))).unwrap();
        let inst = &s.instances["sub"];
        assert_eq!(inst.stopped, None);
        assert_eq!(inst.charge_type, ChargeType::Year);
        assert_eq!(
            inst.subscription_end_ms,
            Some(ts_ms(ts(at).plus_months(12)))
        );
        assert!(matches!(
            term_events("acme").last().unwrap(),
            Event::InstanceStarted { .. }
        ));
    }

    fn ts_ms(t: billing::Timestamp) -> u64 {
        t.unix_secs() * 1000
    }

    #[test]
    fn auto_renew_pays_the_next_term_or_stops_when_the_balance_is_short() {
        let mut s = setup();
        run(&mut s, T0, recharge("1200")).unwrap();
        run(&mut s, T0, subscription("sub", true)).unwrap();
        let first_end = s.instances["sub"].subscription_end_ms.unwrap();
        close_until(&mut s, day_of(first_end) + 1);
        let inst = &s.instances["sub"];
        assert_eq!(inst.stopped, None);
        let second_end = ts_ms(ts(first_end).plus_months(1));
        assert_eq!(
            inst.subscription_end_ms,
            Some(second_end),
            "renewed from the end, no gap"
        );
        assert!(term_events("acme").iter().any(|e| matches!(
            e,
            Event::TermRenewed {
                automatic: true,
                ..
            }
        )));
        assert_eq!(s.accounts["acme"].billing.balance(), usd("80"));
        // 80 does not pay the next 560: stopped at the end instead.
        close_until(&mut s, day_of(second_end) + 1);
        assert_eq!(
            s.instances["sub"].stopped.map(|st| st.since_ms),
            Some(second_end)
        );
        // Auto-renew is a subscription's setting only.
        run(
            &mut s,
            second_end + DAY_MS,
            Command::SetInstanceAutoRenew {
                name: "sub".into(),
                auto_renew: false,
            },
        )
        .unwrap();
        assert!(!s.instances["sub"].auto_renew);
    }

    #[test]
    fn adjustments_are_whole_cents_with_a_reason_in_the_ledger() {
        let mut s = setup();
        let adjust = |amount: &str, reason: &str| Command::AdjustBalance {
            account: "acme".into(),
            amount: usd(amount),
            reason: reason.into(),
        };
        run(&mut s, T0, adjust("12.50", "refund of the outage of 1 Jan")).unwrap();
        run(&mut s, T0 + 1, adjust("-2.25", "charge missed on 2 Jan")).unwrap();
        assert_eq!(s.accounts["acme"].billing.balance(), usd("10.25"));
        let l = ledger("acme");
        assert_eq!(l[0].what, "adjustment: refund of the outage of 1 Jan");
        assert_eq!(
            (l[1].amount, l[1].balance_after),
            (usd("-2.25"), usd("10.25"))
        );
        for (amount, reason, field) in [
            ("0", "x", "amount"),
            ("0.001", "x", "amount"),
            ("1", "", "reason"),
            ("1", "a\nb", "reason"),
        ] {
            let e = run(&mut s, T0 + 2, adjust(amount, reason)).unwrap_err();
            assert!(e.to_string().contains(&format!("invalid {field}")), "{e}");
        }
        let e = run(&mut s, T0 + 2, recharge("1.005")).unwrap_err();
        assert!(e.to_string().contains("fractions of a cent"), "{e}");
    }

    #[test]
    fn alert_updates_keep_what_they_do_not_name_and_survive_json() {
        use crate::Update;
        let mut s = setup();
        let set = |threshold: Update<Usd>, webhook: Update<String>| Command::SetAccountAlert {
            account: "acme".into(),
            threshold,
            webhook,
        };
        let through_json = |c: Command| -> Command {
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap()
        };
        run(
            &mut s,
            T0,
            through_json(set(Update::Set(usd("5")), Update::Keep)),
        )
        .unwrap();
        run(
            &mut s,
            T0,
            through_json(set(
                Update::Keep,
                Update::Set("http://127.0.0.1:9/h".into()),
            )),
        )
        .unwrap();
        let a = &s.accounts["acme"];
        assert_eq!(a.billing.balance_alert_threshold(), Some(usd("5")), "kept");
        assert_eq!(a.webhook.as_deref(), Some("http://127.0.0.1:9/h"));
        run(&mut s, T0, through_json(set(Update::Keep, Update::Clear))).unwrap();
        assert_eq!(s.accounts["acme"].webhook, None, "removed");
        assert_eq!(
            s.accounts["acme"].billing.balance_alert_threshold(),
            Some(usd("5"))
        );
        // The balance (0) is below 5: alerted once, not again when the same threshold is set.
        let alerts = || {
            events("acme")
                .iter()
                .filter(|e| matches!(e.event, Event::BalanceBelowThreshold { .. }))
                .count()
        };
        assert_eq!(alerts(), 1);
        run(&mut s, T0, set(Update::Set(usd("5")), Update::Keep)).unwrap();
        assert_eq!(alerts(), 1);
        run(&mut s, T0, set(Update::Clear, Update::Keep)).unwrap();
        assert_eq!(s.accounts["acme"].billing.balance_alert_threshold(), None);
    }
}
