//! The account lifecycle: paying daily bills from the balance, overdue payment, suspension of
//! API calls, restoration by recharge, purge after six months, and the alerts.
//!
//! Every function takes the current state and explicit inputs (amounts, the cycle, the time) and
//! returns the next state and the [`Event`]s the caller turns into notifications. Nothing reads
//! a clock; the state is plain serializable data, so it can live in a replicated state machine.
//!
//! # States
//!
//! The balance is signed: a bill is always deducted in full, and what it could not cover is owed
//! (a negative balance). The state follows from the balance and the previous cycle's bill:
//!
//! | state | when | API calls |
//! |---|---|---|
//! | [`Active`](AccountState::Active) | balance >= the previous cycle's bill | served |
//! | [`Overdue`](AccountState::Overdue) | 0 <= balance < the previous cycle's bill: the next bill is unlikely to be covered, the document's "payment becomes overdue"; the owner is reminded to recharge | served |
//! | [`Suspended`](AccountState::Suspended) | balance < 0: an overdue bill exists | fail (management operations still work) |
//! | [`Purged`](AccountState::Purged) | still owing six months after the suspension (and at least seven days after the warning): the API configuration may be cleared | fail |
//!
//! A recharge that brings the balance back to zero or more restores service at once (from
//! Suspended, and from Purged too, though a purged configuration is gone). While suspended the
//! account's pay-as-you-go instances are stopped and accrue nothing (the model crate stops
//! them), so what is owed does not grow with them; a recharge that does not cover it all keeps
//! the account suspended and does not restart the six months. The purge releases the
//! account's instances with its configuration; [`Event::PurgeWarning`] names them.
//!
//! # Alerts
//!
//! * Overdue alert (the document's "Overdue Alert"): from the average of the last seven daily
//!   bills (fewer while the account is young), warns when the balance does not cover seven more
//!   days. Only for accounts that are served: a suspended account has had its notice.
//! * Balance alert: when the balance is below the threshold the owner set.
//!
//! Each alert is sent once when its condition starts to hold and re-armed when it stops, so a
//! daily check does not repeat it every day.

use crate::BillingError;
use crate::time::{Day, SECS_PER_DAY, Timestamp};
use catalog::Usd;
use serde::{Deserialize, Serialize};

/// Months of suspension without a recharge after which the configuration may be purged.
pub const PURGE_AFTER_MONTHS: u32 = 6;
/// How long before a purge its warning is sent, at the least.
pub const PURGE_WARNING_SECS: u64 = 7 * SECS_PER_DAY;
/// The overdue alert looks back over, and forward over, this many daily cycles.
pub const ALERT_WINDOW_DAYS: u32 = 7;

/// Where an account is in its billing lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Active,
    Overdue,
    Suspended,
    Purged,
}

impl AccountState {
    /// Whether the data plane serves the account's API calls. Management always works.
    pub fn serves_api_calls(self) -> bool {
        matches!(self, AccountState::Active | AccountState::Overdue)
    }
}

/// Something the owner should be told about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The balance will not cover the next seven days at the recent daily average.
    OverdueAlert { balance: Usd, next_7_days: Usd },
    /// The balance dropped below the owner's threshold.
    BalanceBelowThreshold { balance: Usd, threshold: Usd },
    /// The balance is below the previous cycle's bill: recharge to keep the service.
    PaymentOverdue { balance: Usd, last_bill: Usd },
    /// A bill was not covered: API calls now fail until `owed` is paid.
    Suspended { owed: Usd, purge_after: Timestamp },
    /// What was owed is paid: API calls are served again.
    Restored { balance: Usd },
    /// The API configuration will be purged at `purge_at` unless the account is recharged, and
    /// the dedicated instances named are released with it.
    PurgeWarning {
        purge_at: Timestamp,
        #[serde(default)]
        releases_instances: Vec<String>,
    },
    /// The API configuration may now be cleared.
    Purged,
    /// A subscription's paid term ends at `term_end` (sent 7 days and 1 day before). Without
    /// a renewal the instance is stopped then, and released `grace_days` later.
    TermEnding {
        instance: String,
        term_end: Timestamp,
        auto_renew: bool,
        grace_days: u32,
    },
    /// A subscription was renewed: paid `amount` from the balance, now runs to `term_end`.
    TermRenewed {
        instance: String,
        term_end: Timestamp,
        amount: Usd,
        automatic: bool,
    },
    /// An instance was stopped: its APIs are refused and it accrues nothing. `reason` is
    /// `account_suspended` (started again by the recharge that restores the account) or
    /// `term_ended` (released at `release_at` with the API groups it hosts unless renewed).
    InstanceStopped {
        instance: String,
        reason: String,
        release_at: Option<Timestamp>,
        #[serde(default)]
        hosted_groups: Vec<String>,
    },
    /// A stopped instance runs again (and pay-as-you-go billing resumes from this hour).
    InstanceStarted { instance: String },
    /// Delivering events to the account's webhook has failed `attempts` times in a row
    /// (noted at the 1st, 2nd, 4th, 8th... failure, not at each); the gateway keeps retrying,
    /// with growing delays, until the webhook answers 2xx, and then delivers this event too.
    WebhookFailed { attempts: u32, error: String },
    /// An instance was released by the system: `term_ended` (its grace period passed) or
    /// `account_purged`. The API groups it hosted were removed with it.
    InstanceReleased {
        instance: String,
        reason: String,
        #[serde(default)]
        removed_groups: Vec<String>,
    },
}

/// An account's billing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBilling {
    state: AccountState,
    balance: Usd,
    /// The last cycle settled, to refuse settling one twice.
    last_cycle: Option<Day>,
    /// The bills of the last cycles (at most seven), oldest first.
    recent_bills: Vec<Usd>,
    suspended_at: Option<Timestamp>,
    purge_warned_at: Option<Timestamp>,
    balance_alert_threshold: Option<Usd>,
    overdue_alert_sent: bool,
    balance_alert_sent: bool,
}

impl Default for AccountBilling {
    fn default() -> Self {
        AccountBilling::new()
    }
}

impl AccountBilling {
    /// A new account: active, nothing in the balance, no bills yet, no balance alert.
    pub fn new() -> AccountBilling {
        AccountBilling {
            state: AccountState::Active,
            balance: Usd::ZERO,
            last_cycle: None,
            recent_bills: Vec::new(),
            suspended_at: None,
            purge_warned_at: None,
            balance_alert_threshold: None,
            overdue_alert_sent: false,
            balance_alert_sent: false,
        }
    }

    pub fn state(&self) -> AccountState {
        self.state
    }

    /// Whether the data plane serves the account's API calls.
    pub fn serves_api_calls(&self) -> bool {
        self.state.serves_api_calls()
    }

    /// The balance; negative when bills are owed.
    pub fn balance(&self) -> Usd {
        self.balance
    }

    /// What the account owes (zero unless the balance is negative).
    pub fn owed(&self) -> Usd {
        (-self.balance).max(Usd::ZERO)
    }

    /// The previous cycle's bill (zero before the first).
    pub fn last_bill(&self) -> Usd {
        self.recent_bills.last().copied().unwrap_or(Usd::ZERO)
    }

    pub fn last_cycle(&self) -> Option<Day> {
        self.last_cycle
    }

    /// The last (up to seven) cycles' bills, oldest first.
    pub fn recent_bills(&self) -> &[Usd] {
        &self.recent_bills
    }

    pub fn suspended_at(&self) -> Option<Timestamp> {
        self.suspended_at
    }

    /// When the configuration can be purged, while suspended: six months after the suspension,
    /// and never less than seven days after the warning.
    pub fn purge_at(&self) -> Option<Timestamp> {
        let earliest = self.suspended_at?.plus_months(PURGE_AFTER_MONTHS);
        Some(match self.purge_warned_at {
            Some(w) => earliest.max(w.plus_secs(PURGE_WARNING_SECS)),
            None => earliest,
        })
    }

    pub fn balance_alert_threshold(&self) -> Option<Usd> {
        self.balance_alert_threshold
    }
}

/// Pays the bill of `cycle` (`bill_total`, zero included: settle every cycle, it feeds the
/// overdue alert's average) from the balance at `now`, and moves the state.
///
/// A cycle can be settled once: settling it, or an earlier one, again is refused, so replaying
/// the command cannot charge twice.
pub fn settle_cycle(
    account: &AccountBilling,
    cycle: Day,
    bill_total: Usd,
    now: Timestamp,
) -> Result<(AccountBilling, Vec<Event>), BillingError> {
    if bill_total < Usd::ZERO {
        return Err(BillingError::InvalidAmount(bill_total));
    }
    if let Some(last) = account.last_cycle.filter(|last| *last >= cycle) {
        return Err(BillingError::CycleAlreadySettled { cycle, last });
    }
    let mut next = account.clone();
    next.balance -= bill_total;
    next.last_cycle = Some(cycle);
    next.recent_bills.push(bill_total);
    let excess = next
        .recent_bills
        .len()
        .saturating_sub(ALERT_WINDOW_DAYS as usize);
    next.recent_bills.drain(..excess);
    Ok(transition(account, next, now))
}

/// Adds `amount` to the balance at `now`. Restores service if it covers what is owed.
pub fn recharge(
    account: &AccountBilling,
    amount: Usd,
    now: Timestamp,
) -> Result<(AccountBilling, Vec<Event>), BillingError> {
    if amount <= Usd::ZERO {
        return Err(BillingError::InvalidAmount(amount));
    }
    let mut next = account.clone();
    next.balance = account
        .balance
        .checked_add(amount)
        .ok_or(BillingError::Overflow)?;
    Ok(transition(account, next, now))
}

/// Pays `amount` up front from the balance at `now` (a subscription or its upgrade). Refused,
/// changing nothing, when the balance does not cover it: a purchase is never made on credit.
pub fn pay_upfront(
    account: &AccountBilling,
    amount: Usd,
    now: Timestamp,
) -> Result<(AccountBilling, Vec<Event>), BillingError> {
    if amount < Usd::ZERO {
        return Err(BillingError::InvalidAmount(amount));
    }
    if account.balance < amount {
        return Err(BillingError::InsufficientBalance {
            balance: account.balance,
            amount,
        });
    }
    let mut next = account.clone();
    next.balance -= amount;
    Ok(transition(account, next, now))
}

/// Sets (or with `None` removes) the balance alert threshold; alerts at once if the balance is
/// already below a new threshold. Setting the threshold it already has changes nothing, so it
/// does not alert a second time.
pub fn set_balance_alert(
    account: &AccountBilling,
    threshold: Option<Usd>,
) -> (AccountBilling, Vec<Event>) {
    if account.balance_alert_threshold == threshold {
        return (account.clone(), Vec::new());
    }
    let mut next = account.clone();
    next.balance_alert_threshold = threshold;
    next.balance_alert_sent = false;
    check_alerts(&next)
}

/// An operator's correction of the balance at `now`: a credit (positive) or a debit
/// (negative, e.g. a charge billed too little). The state follows the balance as after any
/// movement: a credit that covers what is owed restores service, a debit can suspend it.
pub fn adjust(
    account: &AccountBilling,
    amount: Usd,
    now: Timestamp,
) -> Result<(AccountBilling, Vec<Event>), BillingError> {
    if amount == Usd::ZERO {
        return Err(BillingError::InvalidAmount(amount));
    }
    let mut next = account.clone();
    next.balance = account
        .balance
        .checked_add(amount)
        .ok_or(BillingError::Overflow)?;
    Ok(transition(account, next, now))
}

/// Evaluates the overdue and balance alerts (see the module docs). [`settle_cycle`],
/// [`recharge`] and [`set_balance_alert`] already call it.
pub fn check_alerts(account: &AccountBilling) -> (AccountBilling, Vec<Event>) {
    let mut next = account.clone();
    let mut events = Vec::new();

    let days = next.recent_bills.len() as i128;
    let recent: Usd = next.recent_bills.iter().copied().sum();
    // balance < 7 x (recent / days), compared without dividing.
    let short = next.state.serves_api_calls()
        && days > 0
        && i128::from(next.balance.micros()) * days
            < i128::from(recent.micros()) * i128::from(ALERT_WINDOW_DAYS);
    if short && !next.overdue_alert_sent {
        events.push(Event::OverdueAlert {
            balance: next.balance,
            // A forecast people read: whole cents, like every amount they see.
            next_7_days: recent
                .mul_ratio(i128::from(ALERT_WINDOW_DAYS), days)
                .round_cents(),
        });
    }
    next.overdue_alert_sent = short;

    let below = next.balance_alert_threshold.filter(|t| next.balance < *t);
    if let Some(threshold) = below
        && !next.balance_alert_sent
    {
        events.push(Event::BalanceBelowThreshold {
            balance: next.balance,
            threshold,
        });
    }
    next.balance_alert_sent = below.is_some();

    (next, events)
}

/// Warns of, then carries out, the purge of an account suspended for six months at `now`.
/// Call it at least daily; the purge comes no sooner than seven days after the warning.
pub fn purge_due(account: &AccountBilling, now: Timestamp) -> (AccountBilling, Vec<Event>) {
    let mut next = account.clone();
    let mut events = Vec::new();
    if next.state != AccountState::Suspended {
        return (next, events);
    }
    let purge_at = next
        .purge_at()
        .expect("a suspended account has a suspension time");
    match next.purge_warned_at {
        None if now >= purge_at.minus_secs(PURGE_WARNING_SECS) => {
            next.purge_warned_at = Some(now);
            events.push(Event::PurgeWarning {
                purge_at: next.purge_at().expect("suspended"),
                releases_instances: Vec::new(),
            });
        }
        Some(_) if now >= purge_at => {
            next.state = AccountState::Purged;
            events.push(Event::Purged);
        }
        _ => {}
    }
    (next, events)
}

/// The state the balance calls for; a purged account stays purged while it owes.
fn classify(balance: Usd, last_bill: Usd, purged: bool) -> AccountState {
    if balance < Usd::ZERO {
        if purged {
            AccountState::Purged
        } else {
            AccountState::Suspended
        }
    } else if balance < last_bill {
        AccountState::Overdue
    } else {
        AccountState::Active
    }
}

/// Moves `next` to the state its balance calls for, with the events of the move, then checks
/// the alerts.
fn transition(
    old: &AccountBilling,
    mut next: AccountBilling,
    now: Timestamp,
) -> (AccountBilling, Vec<Event>) {
    use AccountState::*;
    let mut events = Vec::new();
    next.state = classify(next.balance, next.last_bill(), old.state == Purged);
    let was_served = old.state.serves_api_calls();
    if was_served && next.state == Suspended {
        next.suspended_at = Some(now);
        next.purge_warned_at = None;
        events.push(Event::Suspended {
            owed: next.owed(),
            purge_after: next.purge_at().expect("just suspended"),
        });
    }
    if !was_served && next.state.serves_api_calls() {
        next.suspended_at = None;
        next.purge_warned_at = None;
        events.push(Event::Restored {
            balance: next.balance,
        });
    }
    if next.state == Overdue && old.state != Overdue {
        events.push(Event::PaymentOverdue {
            balance: next.balance,
            last_bill: next.last_bill(),
        });
    }
    let (next, alerts) = check_alerts(&next);
    events.extend(alerts);
    (next, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paying_up_front_needs_the_balance() {
        let t = Timestamp::from_unix_secs(1_000);
        let (a, _) = recharge(&AccountBilling::new(), usd("600"), t).unwrap();
        let (b, _) = pay_upfront(&a, usd("560"), t).unwrap();
        assert_eq!(b.balance(), usd("40"));
        assert_eq!(b.state(), AccountState::Active);
        let e = pay_upfront(&b, usd("560"), t).unwrap_err();
        assert!(matches!(e, BillingError::InsufficientBalance { .. }), "{e}");
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn t0() -> Timestamp {
        Timestamp::from_utc(2024, 1, 10, 2, 0, 0).unwrap()
    }

    /// Day `n` after `t0`'s day, settled two hours after it ends.
    fn settle(a: &AccountBilling, n: u64, bill: &str) -> (AccountBilling, Vec<Event>) {
        let day = Day::from_index(t0().day().index() + n);
        settle_cycle(a, day, usd(bill), day.end().plus_secs(7200)).unwrap()
    }

    fn funded(amount: &str) -> AccountBilling {
        recharge(&AccountBilling::new(), usd(amount), t0())
            .unwrap()
            .0
    }

    #[test]
    fn a_new_account_is_active() {
        let a = AccountBilling::new();
        assert_eq!(a.state(), AccountState::Active);
        assert!(a.serves_api_calls());
        assert_eq!(
            (a.balance(), a.owed(), a.last_bill()),
            (Usd::ZERO, Usd::ZERO, Usd::ZERO)
        );
    }

    #[test]
    fn bills_are_paid_from_the_balance() {
        let (a, events) = settle(&funded("100"), 0, "10");
        assert_eq!(a.balance(), usd("90"));
        assert_eq!(a.state(), AccountState::Active);
        assert_eq!(events, []);
    }

    #[test]
    fn a_balance_below_the_last_bill_makes_the_payment_overdue() {
        let (a, events) = settle(&funded("100"), 0, "60");
        assert_eq!(a.state(), AccountState::Overdue);
        assert!(a.serves_api_calls());
        assert!(events.contains(&Event::PaymentOverdue {
            balance: usd("40"),
            last_bill: usd("60")
        }));
        // Exactly the last bill left is not overdue.
        let (a, _) = settle(&funded("100"), 0, "50");
        assert_eq!(a.state(), AccountState::Active);
    }

    #[test]
    fn an_uncovered_bill_suspends_api_calls() {
        let (a, events) = settle(&funded("100"), 0, "60");
        let (a, events2) = settle(&a, 1, "60");
        assert_eq!(a.state(), AccountState::Suspended);
        assert!(!a.serves_api_calls());
        assert_eq!(a.owed(), usd("20"));
        let at = Day::from_index(t0().day().index() + 1)
            .end()
            .plus_secs(7200);
        assert_eq!(a.suspended_at(), Some(at));
        assert!(events2.contains(&Event::Suspended {
            owed: usd("20"),
            purge_after: at.plus_months(6)
        }));
        // No forecast alert for a suspended account: it got its notice.
        assert!(
            !events2
                .iter()
                .any(|e| matches!(e, Event::OverdueAlert { .. }))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::OverdueAlert { .. }))
        );
        // Straight from active too.
        let (a, _) = settle(&funded("10"), 0, "10.000001");
        assert_eq!(a.state(), AccountState::Suspended);
    }

    #[test]
    fn bills_keep_coming_while_suspended() {
        let (a, _) = settle(&AccountBilling::new(), 0, "5");
        let (a, events) = settle(&a, 1, "5");
        assert_eq!(a.owed(), usd("10"));
        assert_eq!(a.state(), AccountState::Suspended);
        assert_eq!(events, [], "no second suspension notice");
    }

    #[test]
    fn a_recharge_that_covers_the_debt_restores_service() {
        let (a, _) = settle(&funded("10"), 0, "30"); // owes 20
        let later = t0().plus_secs(10 * SECS_PER_DAY);
        let (b, events) = recharge(&a, usd("15"), later).unwrap();
        assert_eq!(b.state(), AccountState::Suspended, "5 still owed");
        assert_eq!(
            b.suspended_at(),
            a.suspended_at(),
            "the six months keep running"
        );
        assert_eq!(events, []);
        let (c, events) = recharge(&b, usd("5"), later).unwrap();
        assert_eq!(c.balance(), Usd::ZERO);
        assert!(c.serves_api_calls());
        // Restored, but a zero balance is below the last bill: still overdue.
        assert_eq!(c.state(), AccountState::Overdue);
        assert_eq!(c.suspended_at(), None);
        assert_eq!(events[0], Event::Restored { balance: Usd::ZERO });
        assert!(events.contains(&Event::PaymentOverdue {
            balance: Usd::ZERO,
            last_bill: usd("30")
        }));
        let (d, events) = recharge(&c, usd("500"), later).unwrap();
        assert_eq!(d.state(), AccountState::Active);
        assert_eq!(events, []);
    }

    #[test]
    fn settling_a_cycle_twice_is_refused() {
        let (a, _) = settle(&funded("100"), 3, "10");
        let day = Day::from_index(t0().day().index() + 3);
        assert!(matches!(
            settle_cycle(&a, day, usd("10"), t0()),
            Err(BillingError::CycleAlreadySettled { .. })
        ));
        let earlier = Day::from_index(day.index() - 1);
        assert!(settle_cycle(&a, earlier, usd("10"), t0()).is_err());
        assert!(settle_cycle(&a, day.next(), usd("-1"), t0()).is_err());
        assert!(recharge(&a, Usd::ZERO, t0()).is_err());
    }

    #[test]
    fn purge_after_six_months_with_a_warning_a_week_before() {
        let (a, _) = settle(&AccountBilling::new(), 0, "1");
        let suspended = a.suspended_at().unwrap();
        let purge_at = suspended.plus_months(6);
        assert_eq!(a.purge_at(), Some(purge_at));
        // Nothing until a week before.
        let (b, events) = purge_due(&a, purge_at.minus_secs(PURGE_WARNING_SECS + 1));
        assert_eq!((b.clone(), events), (a.clone(), vec![]));
        let warn = purge_at.minus_secs(PURGE_WARNING_SECS);
        let (b, events) = purge_due(&a, warn);
        assert_eq!(
            events,
            [Event::PurgeWarning {
                purge_at,
                releases_instances: vec![]
            }]
        );
        let (b, events) = purge_due(&b, purge_at.minus_secs(1));
        assert_eq!(events, [], "the warning is sent once");
        let (c, events) = purge_due(&b, purge_at);
        assert_eq!(c.state(), AccountState::Purged);
        assert!(!c.serves_api_calls());
        assert_eq!(events, [Event::Purged]);
        let (_, events) = purge_due(&c, purge_at.plus_secs(SECS_PER_DAY));
        assert_eq!(events, [], "purged once");
    }

    #[test]
    fn a_late_check_still_warns_a_week_ahead() {
        let (a, _) = settle(&AccountBilling::new(), 0, "1");
        let purge_at = a.purge_at().unwrap();
        // The first check after the six months: warn now, purge in seven days.
        let late = purge_at.plus_secs(3 * SECS_PER_DAY);
        let (b, events) = purge_due(&a, late);
        let new_purge_at = late.plus_secs(PURGE_WARNING_SECS);
        assert_eq!(
            events,
            [Event::PurgeWarning {
                purge_at: new_purge_at,
                releases_instances: vec![]
            }]
        );
        assert_eq!(purge_due(&b, new_purge_at.minus_secs(1)).1, []);
        assert_eq!(purge_due(&b, new_purge_at).1, [Event::Purged]);
    }

    #[test]
    fn a_recharge_within_six_months_prevents_the_purge() {
        let (a, _) = settle(&AccountBilling::new(), 0, "1");
        let purge_at = a.purge_at().unwrap();
        let (a, _) = purge_due(&a, purge_at.minus_secs(PURGE_WARNING_SECS));
        let (a, events) = recharge(&a, usd("2"), purge_at.minus_secs(60)).unwrap();
        assert!(events.contains(&Event::Restored { balance: usd("1") }));
        assert_eq!(a.purge_at(), None);
        assert_eq!(purge_due(&a, purge_at).1, []);
        assert!(a.serves_api_calls());
    }

    #[test]
    fn a_purged_account_can_still_pay_and_be_served() {
        let (a, _) = settle(&AccountBilling::new(), 0, "1");
        let purge_at = a.purge_at().unwrap();
        let (a, _) = purge_due(&a, purge_at.minus_secs(PURGE_WARNING_SECS));
        let (a, _) = purge_due(&a, purge_at);
        let (b, _) = settle(&a, 200, "1");
        assert_eq!(b.state(), AccountState::Purged, "bills do not unpurge");
        let (c, events) = recharge(&b, usd("10"), purge_at.plus_secs(SECS_PER_DAY)).unwrap();
        assert_eq!(c.state(), AccountState::Active);
        assert!(events.contains(&Event::Restored { balance: usd("8") }));
    }

    #[test]
    fn the_overdue_alert_forecasts_seven_days_from_the_last_seven() {
        // 100 in the balance, 10 a day: the alert comes when the balance drops below 70.
        let mut a = funded("100");
        let mut alerts = Vec::new();
        for n in 0..5 {
            let (next, events) = settle(&a, n, "10");
            a = next;
            for e in events {
                if let Event::OverdueAlert {
                    balance,
                    next_7_days,
                } = e
                {
                    alerts.push((n, balance, next_7_days));
                }
            }
        }
        assert_eq!(
            alerts,
            [(3, usd("60"), usd("70"))],
            "once, when it first holds"
        );
        // A recharge clears it; the next shortfall alerts again.
        let (a, events) = recharge(&a, usd("100"), t0()).unwrap();
        assert_eq!(events, []);
        let (_, events) = settle(&a, 5, "100");
        // Average of 10,10,10,10,10,100 = 25, x 7 = 175 > 50 left.
        assert!(events.contains(&Event::OverdueAlert {
            balance: usd("50"),
            next_7_days: usd("175")
        }));
    }

    #[test]
    fn the_overdue_alert_averages_only_the_last_seven_cycles() {
        let mut a = funded("1000");
        for n in 0..7 {
            a = settle(&a, n, "100").0; // balance 300 after seven days
        }
        for n in 7..14 {
            a = settle(&a, n, "0").0; // the old bills age out
        }
        assert_eq!(a.recent_bills(), [Usd::ZERO; 7]);
        let (a, events) = settle(&a, 14, "7");
        // Average 1/day: 7 needed, 293 left: no alert, and the earlier alert is re-armed.
        assert_eq!(a.balance(), usd("293"));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::OverdueAlert { .. }))
        );
    }

    fn below(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::BalanceBelowThreshold { .. }))
            .count()
    }

    #[test]
    fn the_balance_alert_fires_once_below_the_threshold() {
        let (a, events) = set_balance_alert(&funded("100"), Some(usd("50")));
        assert_eq!(events, []);
        assert_eq!(a.balance_alert_threshold(), Some(usd("50")));
        let (a, events) = settle(&a, 0, "50");
        assert_eq!(below(&events), 0, "50 is not below 50");
        let (a, events) = settle(&a, 1, "0.01");
        assert!(events.contains(&Event::BalanceBelowThreshold {
            balance: usd("49.99"),
            threshold: usd("50")
        }));
        let (a, events) = settle(&a, 2, "0.01");
        assert_eq!(below(&events), 0, "once");
        // Set while already below: at once. Removed: never.
        let (a, events) = set_balance_alert(&a, Some(usd("60")));
        assert!(matches!(events[..], [Event::BalanceBelowThreshold { .. }]));
        let (a, events) = set_balance_alert(&a, Some(usd("60")));
        assert_eq!(events, [], "the same threshold again does not alert twice");
        let (a, events) = set_balance_alert(&a, None);
        assert_eq!(events, []);
        assert_eq!(below(&settle(&a, 3, "40").1), 0);
    }

    #[test]
    fn adjustments_credit_and_debit_and_move_the_state() {
        let t = t0();
        let (a, _) = settle(&funded("10"), 0, "15"); // owes 5
        assert_eq!(a.state(), AccountState::Suspended);
        let (b, events) = adjust(&a, usd("5"), t).unwrap();
        assert!(b.serves_api_calls());
        assert!(events.contains(&Event::Restored { balance: Usd::ZERO }));
        let (c, events) = adjust(&b, usd("-1"), t).unwrap();
        assert_eq!(c.state(), AccountState::Suspended);
        assert!(matches!(events[0], Event::Suspended { .. }));
        assert!(adjust(&c, Usd::ZERO, t).is_err());
    }

    #[test]
    fn state_and_events_serialize() {
        let (a, events) = settle(&funded("100"), 0, "60");
        let json = serde_json::to_string(&a).unwrap();
        let back: AccountBilling = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let json = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(json["event"], "payment_overdue");
        assert_eq!(json["balance"], "40.00");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Settle(i64),
        Recharge(i64),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..50_000_000).prop_map(Op::Settle),
            1 => (1i64..300_000_000).prop_map(Op::Recharge),
            1 => (1u64..60 * SECS_PER_DAY).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #[test]
        fn lifecycle_invariants(ops in prop::collection::vec(op(), 1..80)) {
            let mut a = AccountBilling::new();
            let mut now = t0();
            let mut day = t0().day();
            let mut paid_in = Usd::ZERO;
            let mut billed = Usd::ZERO;
            let mut warned_at: Option<Timestamp> = None;
            for op in ops {
                let before = a.clone();
                let (next, events) = match op {
                    Op::Settle(m) => {
                        day = day.next();
                        now = now.max(day.start());
                        billed += Usd::from_micros(m);
                        settle_cycle(&a, day, Usd::from_micros(m), now).unwrap()
                    }
                    Op::Recharge(m) => {
                        paid_in += Usd::from_micros(m);
                        recharge(&a, Usd::from_micros(m), now).unwrap()
                    }
                    Op::Wait(s) => {
                        now = now.plus_secs(s);
                        purge_due(&a, now)
                    }
                };
                a = next;
                // The balance is what came in minus what was billed.
                prop_assert_eq!(a.balance(), paid_in - billed);
                // The state follows from the balance.
                use AccountState::*;
                match a.state() {
                    Active => prop_assert!(a.balance() >= a.last_bill()),
                    Overdue => prop_assert!(a.balance() >= Usd::ZERO && a.balance() < a.last_bill()),
                    Suspended | Purged => prop_assert!(a.balance() < Usd::ZERO),
                }
                prop_assert_eq!(a.suspended_at().is_some(), !a.serves_api_calls());
                // Suspension and restoration are announced exactly when they happen.
                let has = |f: fn(&Event) -> bool| events.iter().any(f);
                prop_assert_eq!(
                    has(|e| matches!(e, Event::Suspended { .. })),
                    before.serves_api_calls() && !a.serves_api_calls()
                );
                prop_assert_eq!(
                    has(|e| matches!(e, Event::Restored { .. })),
                    !before.serves_api_calls() && a.serves_api_calls()
                );
                if has(|e| matches!(e, Event::PurgeWarning { .. })) {
                    warned_at = Some(now);
                }
                if !a.serves_api_calls() && before.serves_api_calls() {
                    warned_at = None;
                }
                // A purge comes six months after the suspension and a week after the warning.
                if has(|e| matches!(e, Event::Purged)) {
                    prop_assert_eq!(a.state(), Purged);
                    let w = warned_at.expect("warned before the purge");
                    prop_assert!(now >= w.plus_secs(PURGE_WARNING_SECS));
                    prop_assert!(now >= a.suspended_at().unwrap().plus_months(PURGE_AFTER_MONTHS));
                }
                // The state survives a serialization round trip.
                let json = serde_json::to_string(&a).unwrap();
                prop_assert_eq!(&serde_json::from_str::<AccountBilling>(&json).unwrap(), &a);
            }
        }
    }
}
