//! The shared instance's call pricing: graduated monthly tiers, the first-year free quota, and
//! daily bills that add up exactly to the month's price.
//!
//! Calls are counted within a calendar month (per account, all of its shared-instance calls:
//! every request the gateway received, throttled or failed ones included). The free quota
//! comes off the month's count first; the billable calls that remain are numbered from 1, and
//! billable call number `k` is priced by the tier whose range holds `k`, so a tier's price
//! applies only to the calls inside it.

use crate::time::{Month, Timestamp};
use catalog::{SharedPricing, Usd};
use serde::{Deserialize, Serialize};

const CALLS_PER_MILLION: i128 = 1_000_000;

/// One tier's share of a month's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCharge {
    /// 1 for the first tier.
    pub tier: usize,
    /// The tier covers call numbers `above + 1 ..= up_to`.
    pub above: u64,
    /// `None` for the open-ended last tier.
    pub up_to: Option<u64>,
    /// The billable (not free) calls that fell in this tier.
    pub calls: u64,
    pub per_million: Usd,
    /// `calls * per_million / 1,000,000`, rounded half up to the micro-dollar, once.
    pub amount: Usd,
}

/// A month's calls, split into the free quota and the tiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallBreakdown {
    pub calls: u64,
    /// How many of the calls were free.
    pub free_calls: u64,
    /// Every tier of the pricing, in order, including those with no calls.
    pub tiers: Vec<TierCharge>,
    /// The sum of the tiers' amounts.
    pub total: Usd,
}

/// Splits a month's `calls` into the free quota (if it applies) and the tiers.
///
/// The free quota comes off the month's count first and the tiers apply to what remains, as
/// the pricing document's example computes it (12 million calls in the first year: 11 million
/// billable, `10 x 0.9 + 1 x 0.6 = 9.6`). Each tier is one bill line, rounded once; the month's
/// price is the sum of the lines. Because each line only grows with `calls`, so does the total,
/// which makes daily differences non-negative.
pub fn call_breakdown(shared: &SharedPricing, calls: u64, free_quota: bool) -> CallBreakdown {
    let free = if free_quota {
        shared.free_calls_per_month
    } else {
        0
    };
    let free_calls = calls.min(free);
    let billable = calls - free_calls;
    let mut above = 0;
    let tiers: Vec<TierCharge> = shared
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let up_to = t.up_to_calls;
            // Billable calls numbered (above, min(up_to, billable)] fall in this tier.
            let high = up_to.map_or(billable, |u| u.min(billable));
            let in_tier = high.saturating_sub(above);
            let charge = TierCharge {
                tier: i + 1,
                above,
                up_to,
                calls: in_tier,
                per_million: t.per_million_calls,
                amount: t
                    .per_million_calls
                    .mul_ratio(i128::from(in_tier), CALLS_PER_MILLION),
            };
            above = up_to.unwrap_or(u64::MAX);
            charge
        })
        .collect();
    let total = tiers.iter().map(|t| t.amount).sum();
    CallBreakdown {
        calls,
        free_calls,
        tiers,
        total,
    }
}

/// The price of a calendar month with `calls` calls in total.
pub fn monthly_call_price(shared: &SharedPricing, calls: u64, free_quota: bool) -> Usd {
    call_breakdown(shared, calls, free_quota).total
}

/// A day's charge for `calls_today` calls, when the month had `calls_before` calls before it.
///
/// It is the growth of the month's price, `price(before + today) - price(before)`, so the days
/// of a month add up to exactly [`monthly_call_price`] of the month's total: the sum telescopes
/// and no rounding is ever applied to a difference. `free_quota` must be the same for every day
/// of a month (see [`free_quota_applies`], which depends on the month only).
pub fn daily_call_charge(
    shared: &SharedPricing,
    calls_before: u64,
    calls_today: u64,
    free_quota: bool,
) -> Usd {
    // Counts this large are not real traffic; saturating keeps the daily close from failing.
    let after = calls_before.saturating_add(calls_today);
    monthly_call_price(shared, after, free_quota)
        - monthly_call_price(shared, calls_before, free_quota)
}

/// A day's call charge in whole cents: the growth of the month's price rounded to cents,
/// `round(price(before + today)) - round(price(before))`. That is the day's exact amount plus
/// the sub-cent remainder carried from the days before it, rounded half up; the remainder left
/// over is carried to the next day, so a month's daily lines add up exactly to the month's
/// price in cents.
pub fn daily_call_charge_cents(
    shared: &SharedPricing,
    calls_before: u64,
    calls_today: u64,
    free_quota: bool,
) -> Usd {
    let after = calls_before.saturating_add(calls_today);
    monthly_call_price(shared, after, free_quota).round_cents()
        - monthly_call_price(shared, calls_before, free_quota).round_cents()
}

/// Whether the free quota applies to `month` for an account created at `account_created`.
///
/// The document grants the quota "each calendar month for the first year", the first year being
/// `free_quota_months` (12) months from the account's creation. A calendar month gets the full
/// quota when any part of it lies in the first year: it ends after the creation and starts
/// before the first anniversary. So the month of creation gets it in full, and so does the month
/// that straddles the anniversary (the quota comes off the month's count, and part of the
/// month lies in the first year). An account created at 00:00 on the 1st of a month
/// gets exactly 12 months; otherwise 13 calendar months, the first and last of them partial.
/// The answer depends on the month alone, never on the day, so daily bills stay consistent.
pub fn free_quota_applies(
    shared: &SharedPricing,
    account_created: Timestamp,
    month: Month,
) -> bool {
    let first_anniversary = account_created.plus_months(shared.free_quota_months);
    month.end() > account_created && month.start() < first_anniversary
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::Catalog;
    use proptest::prelude::*;

    const M: u64 = 1_000_000;

    fn shared() -> &'static SharedPricing {
        Catalog::builtin().shared()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn price(calls: u64, free: bool) -> Usd {
        monthly_call_price(shared(), calls, free)
    }

    #[test]
    fn tier_one_runs_up_to_and_including_ten_million() {
        assert_eq!(price(0, false), Usd::ZERO);
        assert_eq!(price(1, false), usd("0.000001")); // 0.9 micro-dollars, rounded half up
        assert_eq!(price(10 * M - 1, false), usd("8.999999")); // 8.9999991
        assert_eq!(price(10 * M, false), usd("9"));
        // Call number 10,000,001 is the first at 0.6 per million.
        assert_eq!(price(10 * M + 1, false), usd("9.000001")); // 9 + 0.0000006
        let b = call_breakdown(shared(), 10 * M + 1, false);
        assert_eq!(
            (b.tiers[0].calls, b.tiers[1].calls, b.tiers[2].calls),
            (10 * M, 1, 0)
        );
    }

    #[test]
    fn tier_two_runs_up_to_and_including_one_hundred_million() {
        // 10 M x 0.9 + 90 M x 0.6 = 9 + 54 = 63.
        assert_eq!(price(100 * M, false), usd("63"));
        assert_eq!(price(100 * M - 1, false), usd("62.999999")); // 62.9999994
        assert_eq!(price(100 * M + 1, false), usd("63")); // 63.00000045 rounds to 63.000000
        assert_eq!(price(100 * M + 2, false), usd("63.000001")); // 63.0000009
        let b = call_breakdown(shared(), 100 * M + 1, false);
        assert_eq!((b.tiers[1].calls, b.tiers[2].calls), (90 * M, 1));
        // 200 M: 63 + 100 x 0.45 = 108.
        assert_eq!(price(200 * M, false), usd("108"));
    }

    #[test]
    fn tiers_are_graduated_not_volume_priced() {
        // 12 M calls: 10 M at 0.9 and 2 M at 0.6, never 12 M at 0.6.
        assert_eq!(price(12 * M, false), usd("10.2"));
        let b = call_breakdown(shared(), 12 * M, false);
        assert_eq!(b.tiers[0].amount, usd("9"));
        assert_eq!(b.tiers[1].amount, usd("1.2"));
    }

    #[test]
    fn the_free_quota_comes_off_the_months_count_first() {
        assert_eq!(price(M, true), Usd::ZERO);
        assert_eq!(price(M - 1, true), Usd::ZERO);
        assert_eq!(price(M + 1, true), usd("0.000001"));
        // The document's example: 12 M calls, 11 M billable: 10 M x 0.9 + 1 M x 0.6 = 9.6.
        assert_eq!(price(12 * M, true), usd("9.6"));
        let b = call_breakdown(shared(), 12 * M, true);
        assert_eq!(b.free_calls, M);
        assert_eq!((b.tiers[0].calls, b.tiers[1].calls), (10 * M, M));
        // Tier 2 starts at the 10,000,001st billable call: the 11,000,001st call of the month.
        assert_eq!(price(11 * M, true), usd("9"));
        assert_eq!(price(11 * M + 1, true), usd("9.000001"));
        // What the quota saves is the price of the month's last million calls.
        assert_eq!(price(500 * M, false) - price(500 * M, true), usd("0.45"));
    }

    fn ts(y: i32, mo: u8, d: u8, h: u8) -> Timestamp {
        Timestamp::from_utc(y, mo, d, h, 0, 0).unwrap()
    }

    fn month(y: i32, m: u8) -> Month {
        Month::new(y, m).unwrap()
    }

    #[test]
    fn the_free_quota_lasts_the_first_year() {
        let created = ts(2024, 3, 15, 10);
        let applies = |y, m| free_quota_applies(shared(), created, month(y, m));
        assert!(!applies(2024, 2), "before the account existed");
        assert!(applies(2024, 3), "the month of creation, in full");
        assert!(applies(2024, 12));
        assert!(applies(2025, 2));
        assert!(
            applies(2025, 3),
            "the month straddling the anniversary, in full"
        );
        assert!(!applies(2025, 4), "after the first year");
        assert!(!applies(2026, 3));
    }

    #[test]
    fn an_account_created_on_the_first_gets_exactly_twelve_months() {
        let created = ts(2024, 1, 1, 0);
        let mut m = month(2023, 6);
        let mut months = Vec::new();
        while m < month(2026, 1) {
            if free_quota_applies(shared(), created, m) {
                months.push(m);
            }
            m = m.next();
        }
        assert_eq!(months.len(), 12);
        assert_eq!(months[0], month(2024, 1));
        assert_eq!(months[11], month(2024, 12));
        // One second later, January 2025 straddles the anniversary and gets it too.
        let created = created.plus_secs(1);
        assert!(free_quota_applies(shared(), created, month(2025, 1)));
        assert!(!free_quota_applies(shared(), created, month(2025, 2)));
    }

    #[test]
    fn leap_day_accounts() {
        // The first anniversary of Feb 29 is Feb 28: February 2025 straddles it.
        let created = ts(2024, 2, 29, 12);
        assert!(free_quota_applies(shared(), created, month(2025, 2)));
        assert!(!free_quota_applies(shared(), created, month(2025, 3)));
    }

    #[test]
    fn daily_charges_on_a_tier_boundary() {
        // The day that crosses 10 M pays both prices, each for its own calls.
        let day = daily_call_charge(shared(), 9 * M, 2 * M, false);
        assert_eq!(day, usd("1.5")); // 1 M x 0.9 + 1 M x 0.6
        // A day entirely inside the free quota costs nothing.
        assert_eq!(daily_call_charge(shared(), 0, M, true), Usd::ZERO);
        assert_eq!(daily_call_charge(shared(), M, 0, true), Usd::ZERO);
    }

    #[test]
    fn daily_rounding_does_not_drift() {
        // One call a day for 31 days: 31 x 0.9 micro = 27.9 micro-dollars, rounded once to 28.
        // Rounding each day's 0.9 would give 31.
        let days: Usd = (0..31)
            .map(|d| daily_call_charge(shared(), d, 1, false))
            .sum();
        assert_eq!(days, price(31, false));
        assert_eq!(days, Usd::from_micros(28));
    }

    proptest! {
        #[test]
        fn daily_charges_add_up_to_the_monthly_price(
            days in proptest::collection::vec(
                prop_oneof![0u64..1_000, 0u64..5_000_000, 0u64..40_000_000], 1..=31),
            free in any::<bool>(),
        ) {
            let mut before = 0;
            let mut sum = Usd::ZERO;
            for calls in &days {
                let charge = daily_call_charge(shared(), before, *calls, free);
                prop_assert!(charge >= Usd::ZERO);
                sum += charge;
                before += calls;
            }
            prop_assert_eq!(sum, price(before, free));
        }

        #[test]
        fn the_price_grows_with_calls_and_stays_between_tier_prices(a in 0u64..1_000_000_000, b in 0u64..1_000_000_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(price(lo, false) <= price(hi, false));
            prop_assert!(price(lo, true) <= price(hi, true));
            // At most 0.9 and at least 0.45 per million, give or take the rounding of 3 lines.
            let p = price(hi, false).micros() as i128;
            let h = i128::from(hi);
            prop_assert!(p * 1_000_000 <= h * 900_000 + 3 * 500_000);
            prop_assert!(p * 1_000_000 + 3 * 500_000 >= h * 450_000);
        }

        #[test]
        fn the_free_quota_prices_the_month_a_million_calls_shorter(calls in 0u64..1_000_000_000) {
            // The tiers apply to what remains after the free million.
            prop_assert_eq!(price(calls, true), price(calls.saturating_sub(M), false));
            let saving = price(calls, false) - price(calls, true);
            prop_assert!(saving >= Usd::ZERO);
            prop_assert!(saving <= usd("0.9"));
            prop_assert_eq!(call_breakdown(shared(), calls, true).free_calls, calls.min(M));
        }

        #[test]
        fn daily_cent_lines_add_up_to_the_monthly_price_in_cents(
            days in proptest::collection::vec(
                prop_oneof![0u64..1_000, 0u64..50_000, 0u64..5_000_000, 0u64..40_000_000], 1..=31),
            free in any::<bool>(),
        ) {
            let mut before = 0;
            let mut sum = Usd::ZERO;
            for calls in &days {
                let exact = daily_call_charge(shared(), before, *calls, free);
                let cents = daily_call_charge_cents(shared(), before, *calls, free);
                prop_assert!(cents.is_whole_cents());
                prop_assert!(cents >= Usd::ZERO);
                // The carried remainder never moves a day's line by a cent or more.
                prop_assert!((cents - exact).micros().abs() < 10_000);
                sum += cents;
                before += calls;
            }
            prop_assert_eq!(sum, price(before, free).round_cents());
        }
    }
}
