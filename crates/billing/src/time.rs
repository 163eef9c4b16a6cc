//! Explicit time: unix seconds, UTC days and UTC calendar months.
//!
//! Nothing here reads a clock. Days and months are UTC: a bill's day is `[00:00, 24:00)` UTC and
//! a month runs from its first day's 00:00 UTC to the next month's.

use serde::{Deserialize, Serialize};
use std::fmt;

pub const SECS_PER_HOUR: u64 = 3_600;
pub const SECS_PER_DAY: u64 = 86_400;

/// A moment in time, in whole seconds since 1970-01-01T00:00:00Z.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_unix_secs(secs: u64) -> Timestamp {
        Timestamp(secs)
    }

    pub const fn unix_secs(self) -> u64 {
        self.0
    }

    /// The moment at `year-month-day hour:minute:second` UTC; `None` for an invalid date or a
    /// date before 1970.
    pub fn from_utc(
        year: i32,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Option<Timestamp> {
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
        let secs = u64::from(hour) * SECS_PER_HOUR + u64::from(minute) * 60 + u64::from(second);
        Some(Timestamp(days * SECS_PER_DAY + secs))
    }

    /// `self + secs`, saturating at the end of time.
    pub const fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }

    /// `self - secs`, saturating at the epoch.
    pub const fn minus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_sub(secs))
    }

    /// The UTC day this moment falls in.
    pub const fn day(self) -> Day {
        Day(self.0 / SECS_PER_DAY)
    }

    /// The UTC calendar month this moment falls in.
    pub fn month(self) -> Month {
        self.day().month()
    }

    /// The same day of the month and time of day, `months` calendar months later. A day that the
    /// target month lacks is clamped to its last day: Jan 31 + 1 month = Feb 28 (or 29), and a
    /// first anniversary of Feb 29 is Feb 28.
    pub fn plus_months(self, months: u32) -> Timestamp {
        let (y, m, d) = civil_from_days(self.day().0 as i64);
        let index = i64::from(y) * 12 + i64::from(m - 1) + i64::from(months);
        let year = i32::try_from(index.div_euclid(12)).expect("year out of range");
        let month = (index.rem_euclid(12) + 1) as u8;
        let day = d.min(days_in_month(year, month));
        let days = days_from_civil(year, month, day) as u64;
        Timestamp(days * SECS_PER_DAY + self.0 % SECS_PER_DAY)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC: `2024-01-31T12:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.day().0 as i64);
        let s = self.0 % SECS_PER_DAY;
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

/// A UTC day, counted from 1970-01-01 (day 0). The daily billing cycle.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Day(u64);

impl Day {
    pub const fn from_index(days_since_epoch: u64) -> Day {
        Day(days_since_epoch)
    }

    pub const fn index(self) -> u64 {
        self.0
    }

    /// The day's first second.
    pub const fn start(self) -> Timestamp {
        Timestamp(self.0 * SECS_PER_DAY)
    }

    /// The next day's first second (the day is `[start, end)`).
    pub const fn end(self) -> Timestamp {
        Timestamp((self.0 + 1) * SECS_PER_DAY)
    }

    pub const fn next(self) -> Day {
        Day(self.0 + 1)
    }

    pub fn month(self) -> Month {
        let (year, month, _) = civil_from_days(self.0 as i64);
        Month { year, month }
    }
}

impl fmt::Display for Day {
    /// The date: `2024-01-31`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0 as i64);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// A UTC calendar month, the period of the shared instance's call tiers and free quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Month {
    year: i32,
    month: u8,
}

impl Month {
    /// `None` unless `1 <= month <= 12` and the year is 1970 or later.
    pub fn new(year: i32, month: u8) -> Option<Month> {
        ((1..=12).contains(&month) && year >= 1970).then_some(Month { year, month })
    }

    pub const fn year(self) -> i32 {
        self.year
    }

    pub const fn month(self) -> u8 {
        self.month
    }

    /// The month's first second.
    pub fn start(self) -> Timestamp {
        Timestamp(days_from_civil(self.year, self.month, 1) as u64 * SECS_PER_DAY)
    }

    /// The next month's first second (the month is `[start, end)`).
    pub fn end(self) -> Timestamp {
        self.next().start()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month's days, first to last.
    pub fn days(self) -> impl Iterator<Item = Day> {
        (self.start().day().0..self.end().day().0).map(Day)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (i32::try_from(year).expect("year out of range"), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> Timestamp {
        Timestamp::from_utc(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn known_dates() {
        assert_eq!(ts(1970, 1, 1, 0, 0, 0).unix_secs(), 0);
        assert_eq!(ts(2000, 3, 1, 0, 0, 0).unix_secs(), 951_868_800);
        assert_eq!(
            ts(2024, 2, 29, 12, 30, 5).to_string(),
            "2024-02-29T12:30:05Z"
        );
        assert_eq!(Timestamp::from_utc(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(Timestamp::from_utc(2024, 13, 1, 0, 0, 0), None);
        assert_eq!(Timestamp::from_utc(1969, 12, 31, 0, 0, 0), None);
    }

    #[test]
    fn plus_months_clamps_to_the_month_end() {
        assert_eq!(
            ts(2024, 1, 31, 8, 0, 0).plus_months(1),
            ts(2024, 2, 29, 8, 0, 0)
        );
        assert_eq!(
            ts(2023, 1, 31, 8, 0, 0).plus_months(1),
            ts(2023, 2, 28, 8, 0, 0)
        );
        assert_eq!(
            ts(2024, 2, 29, 0, 0, 0).plus_months(12),
            ts(2025, 2, 28, 0, 0, 0)
        );
        assert_eq!(
            ts(2024, 11, 15, 1, 2, 3).plus_months(2),
            ts(2025, 1, 15, 1, 2, 3)
        );
        assert_eq!(
            ts(2024, 3, 10, 0, 0, 0).plus_months(0),
            ts(2024, 3, 10, 0, 0, 0)
        );
    }

    #[test]
    fn months_and_days() {
        let feb = Month::new(2024, 2).unwrap();
        assert_eq!(feb.start(), ts(2024, 2, 1, 0, 0, 0));
        assert_eq!(feb.end(), ts(2024, 3, 1, 0, 0, 0));
        assert_eq!(feb.days().count(), 29);
        assert_eq!(
            Month::new(2024, 12).unwrap().next(),
            Month::new(2025, 1).unwrap()
        );
        assert_eq!(ts(2024, 2, 29, 23, 59, 59).month(), feb);
        assert_eq!(feb.to_string(), "2024-02");
        let day = ts(2024, 2, 10, 13, 0, 0).day();
        assert_eq!(day.start(), ts(2024, 2, 10, 0, 0, 0));
        assert_eq!(day.end(), ts(2024, 2, 11, 0, 0, 0));
        assert_eq!(day.to_string(), "2024-02-10");
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in 0i64..200_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn a_moment_lies_in_its_day_and_month(secs in 0u64..10_000_000_000) {
            let t = Timestamp::from_unix_secs(secs);
            prop_assert!(t.day().start() <= t && t < t.day().end());
            prop_assert!(t.month().start() <= t && t < t.month().end());
        }
    }
}
