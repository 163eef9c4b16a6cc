//! Subscription (prepaid) dedicated instances: monthly and annual terms, paid up front, and what
//! a spec change does to a paid term.
//!
//! A monthly term costs `months x monthly price`. An annual term costs `years x annual price`,
//! where the annual price is the catalog's `annual_per_year`: a whole year's price (12 x monthly
//! x 0.85), even though the document's column header says "US$/month".
//!
//! A term runs from its start to the same day and time `n` months later (clamped to the month's
//! last day: a month from Jan 31 ends on Feb 28 or 29).
//!
//! # Spec changes
//!
//! An upgrade (a spec whose price for the term is higher) takes effect at once and charges the
//! difference between the two specs' term prices, prorated over the days left in the paid term:
//! `(new - old) x remaining days / term days`, where a started day counts as a remaining day and
//! the amount is rounded half up once. A downgrade (or a change to a spec of equal price) takes
//! effect at the renewal, at the end of the paid term, and nothing is refunded.

use crate::BillingError;
use crate::time::{SECS_PER_DAY, Timestamp};
use catalog::{Catalog, SpecPrice, Usd};
use serde::{Deserialize, Serialize};

/// The length of a subscription term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    Months(u32),
    Years(u32),
}

impl Term {
    /// The term's length in calendar months.
    pub fn months(self) -> u32 {
        match self {
            Term::Months(m) => m,
            Term::Years(y) => y.saturating_mul(12),
        }
    }

    /// When a term started at `start` ends.
    pub fn end(self, start: Timestamp) -> Timestamp {
        start.plus_months(self.months())
    }
}

/// The up-front price of a term: months x monthly, or years x the annual (whole-year) price.
pub fn subscription_price(price: &SpecPrice, term: Term) -> Result<Usd, BillingError> {
    let (unit, count) = match term {
        Term::Months(m) => (price.monthly, m),
        Term::Years(y) => (price.annual_per_year, y),
    };
    if count == 0 {
        return Err(BillingError::ZeroDuration);
    }
    unit.checked_mul(i64::from(count))
        .ok_or(BillingError::Overflow)
}

/// A paid subscription term of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub region: String,
    pub spec: String,
    pub term: Term,
    /// When the paid term started.
    pub start: Timestamp,
}

/// What a spec change does to a paid term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubscriptionChange {
    /// The new spec applies at once; `charge` is due now.
    Upgrade {
        charge: Usd,
        remaining_days: u64,
        term_days: u64,
    },
    /// The new spec applies from the renewal at `effective_at`; nothing is refunded.
    AtRenewal { effective_at: Timestamp },
}

impl Subscription {
    /// The end of the paid term.
    pub fn end(&self) -> Timestamp {
        self.term.end(self.start)
    }

    /// What the term costs, paid up front.
    pub fn price(&self, catalog: &Catalog) -> Result<Usd, BillingError> {
        subscription_price(&catalog.spec_price(&self.region, &self.spec)?, self.term)
    }

    /// What changing to `new_spec` at `at` does (see the module docs). The caller records the
    /// new spec (at once for an upgrade, at `effective_at` otherwise); the term is unchanged.
    pub fn change_spec(
        &self,
        catalog: &Catalog,
        new_spec: &str,
        at: Timestamp,
    ) -> Result<SubscriptionChange, BillingError> {
        if new_spec == self.spec {
            return Err(BillingError::SameSpec(new_spec.to_string()));
        }
        let (start, end) = (self.start, self.end());
        if at < start || at >= end {
            return Err(BillingError::OutsideTerm { at, start, end });
        }
        let old = self.price(catalog)?;
        let new = subscription_price(&catalog.spec_price(&self.region, new_spec)?, self.term)?;
        if new <= old {
            return Ok(SubscriptionChange::AtRenewal { effective_at: end });
        }
        let remaining_days = (end.unix_secs() - at.unix_secs()).div_ceil(SECS_PER_DAY);
        let term_days = (end.unix_secs() - start.unix_secs()) / SECS_PER_DAY;
        let charge = (new - old).mul_ratio(i128::from(remaining_days), i128::from(term_days));
        Ok(SubscriptionChange::Upgrade {
            charge,
            remaining_days,
            term_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SG: &str = "ap-southeast-1";

    fn cat() -> &'static Catalog {
        Catalog::builtin()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn ts(y: i32, m: u8, d: u8) -> Timestamp {
        Timestamp::from_utc(y, m, d, 0, 0, 0).unwrap()
    }

    fn sub(spec: &str, term: Term, start: Timestamp) -> Subscription {
        Subscription {
            region: SG.into(),
            spec: spec.into(),
            term,
            start,
        }
    }

    #[test]
    fn monthly_and_annual_prices() {
        let small = cat().spec_price(SG, "api.s1.small").unwrap();
        assert_eq!(
            subscription_price(&small, Term::Months(1)).unwrap(),
            usd("560")
        );
        assert_eq!(
            subscription_price(&small, Term::Months(3)).unwrap(),
            usd("1680")
        );
        // The "annual (US$/month)" column is a year's price: 12 x 560 x 0.85 = 5712.
        assert_eq!(
            subscription_price(&small, Term::Years(1)).unwrap(),
            usd("5712")
        );
        assert_eq!(
            subscription_price(&small, Term::Years(2)).unwrap(),
            usd("11424")
        );
        assert!(matches!(
            subscription_price(&small, Term::Months(0)),
            Err(BillingError::ZeroDuration)
        ));
        let hz = cat().spec_price("cn-hangzhou", "api.s2.large.x6").unwrap();
        assert_eq!(
            subscription_price(&hz, Term::Years(1)).unwrap(),
            usd("257407.2")
        );
    }

    #[test]
    fn terms_end_on_the_same_day_of_the_month() {
        assert_eq!(Term::Months(1).end(ts(2024, 1, 31)), ts(2024, 2, 29));
        assert_eq!(Term::Years(1).end(ts(2024, 3, 5)), ts(2025, 3, 5));
        assert_eq!(Term::Months(14).end(ts(2024, 3, 5)), ts(2025, 5, 5));
    }

    #[test]
    fn an_upgrade_charges_the_prorated_difference() {
        // April has 30 days; upgrading small (560) to medium (1560) with 10 days left:
        // 1000 x 10 / 30 = 333.333333.
        let s = sub("api.s1.small", Term::Months(1), ts(2024, 4, 1));
        let c = s
            .change_spec(cat(), "api.s1.medium", ts(2024, 4, 21))
            .unwrap();
        assert_eq!(
            c,
            SubscriptionChange::Upgrade {
                charge: usd("333.333333"),
                remaining_days: 10,
                term_days: 30
            }
        );
        // A started day counts: one second into April 21 still leaves 10 days.
        let c = s
            .change_spec(cat(), "api.s1.medium", ts(2024, 4, 21).plus_secs(1))
            .unwrap();
        assert!(matches!(
            c,
            SubscriptionChange::Upgrade {
                remaining_days: 10,
                ..
            }
        ));
        // On the first day, the whole difference.
        let c = s
            .change_spec(cat(), "api.s1.medium", ts(2024, 4, 1))
            .unwrap();
        assert!(matches!(c, SubscriptionChange::Upgrade { charge, .. } if charge == usd("1000")));
    }

    #[test]
    fn an_annual_upgrade_uses_annual_prices() {
        // 2024 is a leap year: 366 days. (15912 - 5712) x 183 / 366 = 5100.
        let s = sub("api.s1.small", Term::Years(1), ts(2024, 1, 1));
        let c = s
            .change_spec(cat(), "api.s1.medium", ts(2024, 7, 2))
            .unwrap();
        assert!(
            matches!(c, SubscriptionChange::Upgrade { charge, remaining_days: 183, term_days: 366 } if charge == usd("5100"))
        );
    }

    #[test]
    fn a_downgrade_waits_for_the_renewal_without_refund() {
        let s = sub("api.s2.large", Term::Months(2), ts(2024, 4, 1));
        let c = s
            .change_spec(cat(), "api.s1.small", ts(2024, 4, 10))
            .unwrap();
        assert_eq!(
            c,
            SubscriptionChange::AtRenewal {
                effective_at: ts(2024, 6, 1)
            }
        );
    }

    #[test]
    fn changes_outside_the_term_or_to_the_same_spec_are_refused() {
        let s = sub("api.s1.small", Term::Months(1), ts(2024, 4, 1));
        assert!(matches!(
            s.change_spec(cat(), "api.s1.medium", ts(2024, 5, 1)),
            Err(BillingError::OutsideTerm { .. })
        ));
        assert!(matches!(
            s.change_spec(cat(), "api.s1.small", ts(2024, 4, 5)),
            Err(BillingError::SameSpec(_))
        ));
        assert!(s.change_spec(cat(), "nope", ts(2024, 4, 5)).is_err());
    }

    proptest! {
        #[test]
        fn an_upgrade_never_costs_more_than_the_full_difference(
            months in 1u32..=12, offset in 0u64..400 * SECS_PER_DAY,
        ) {
            let s = sub("api.s1.small", Term::Months(months), ts(2024, 1, 31));
            let at = s.start.plus_secs(offset);
            prop_assume!(at < s.end());
            let full = sub("api.s2.large", s.term, s.start).price(cat()).unwrap() - s.price(cat()).unwrap();
            match s.change_spec(cat(), "api.s2.large", at).unwrap() {
                SubscriptionChange::Upgrade { charge, remaining_days, term_days } => {
                    prop_assert!(charge > Usd::ZERO && charge <= full);
                    prop_assert!(remaining_days >= 1 && remaining_days <= term_days);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
