//! Pay-as-you-go dedicated instances: billed by the started hour, at the price of the spec in
//! force, from creation to release, with daily bills that add up exactly to the whole life.
//!
//! # Hours and spec changes
//!
//! An instance's life is cut into hours counted from its creation: hour `k` is
//! `[created + k h, created + (k+1) h)`. Every hour that starts before the release is billed in
//! full, once; a life of 0 to 1 hour is billed one hour (the document's one-hour minimum), 9.5
//! hours are billed 10. A spec change does not start a new hour count (that would bill the
//! wall-clock hour around the change twice): the hour in which a change happens is billed once,
//! at the highest hourly price among the specs in force at any moment of it. Billing an hour at
//! its peak capacity, rather than at the spec of its first second, means an upgrade is paid from
//! the hour it happens in and a brief upgrade inside an hour cannot go unpaid; a downgrade
//! takes effect from the next hour.
//!
//! # Daily bills
//!
//! An hour belongs to the day (UTC) in which it starts; the day's amount is the sum of the prices
//! of its hours. Every hour belongs to exactly one day, so the days add up exactly to the life's
//! total, and no rounding is involved (hourly prices are whole micro-dollars). An hour that starts
//! before midnight ends after it, so a day's amount is final one hour after the day ends (the
//! document issues bills one to three hours after the cycle, which covers it).

use crate::BillingError;
use crate::time::{Day, SECS_PER_HOUR, Timestamp};
use catalog::{Catalog, Usd};
use serde::{Deserialize, Serialize};

/// A spec taking effect at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecChange {
    pub at: Timestamp,
    pub spec: String,
}

/// A stretch of time in which an instance was stopped (its account suspended): `[from, until)`,
/// `until` being `None` while it is still stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub from: Timestamp,
    pub until: Option<Timestamp>,
}

/// What a pay-as-you-go instance's bill depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaygInstance {
    pub region: String,
    pub created: Timestamp,
    /// `None` while the instance runs.
    pub released: Option<Timestamp>,
    /// The spec at creation (`at == created`), then every change, in time order.
    pub specs: Vec<SpecChange>,
    /// When it was stopped, in time order and not overlapping; only the last may be open.
    #[serde(default)]
    pub stops: Vec<Stop>,
}

/// One billed hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BilledHour {
    pub start: Timestamp,
    /// The spec the hour is priced at (the priciest one in force during it).
    pub spec: String,
    pub price: Usd,
}

impl PaygInstance {
    /// An instance of `spec` created at `created`, still running.
    pub fn new(region: &str, spec: &str, created: Timestamp) -> PaygInstance {
        PaygInstance {
            region: region.to_string(),
            created,
            released: None,
            specs: vec![SpecChange {
                at: created,
                spec: spec.to_string(),
            }],
            stops: Vec::new(),
        }
    }

    /// Records that the instance was stopped from `from` until `until` (`None`: still stopped).
    /// Stops must come in time order, after the creation, and not overlap.
    pub fn add_stop(
        &mut self,
        from: Timestamp,
        until: Option<Timestamp>,
    ) -> Result<(), BillingError> {
        let invalid = |m: String| Err(BillingError::InvalidSpecHistory(m));
        if until.is_some_and(|u| u < from) {
            return invalid(format!("a stop from {from} ends before it starts"));
        }
        match self.stops.last() {
            Some(Stop { until: None, .. }) => {
                return invalid("the instance is already stopped".into());
            }
            Some(Stop { until: Some(u), .. }) if from < *u => {
                return invalid(format!("a stop from {from} overlaps the previous one"));
            }
            _ => {}
        }
        self.stops.push(Stop { from, until });
        Ok(())
    }

    /// Whether the instance ran at some moment of `[start, end)`, that is, was not stopped
    /// all of it.
    fn ran_during(&self, start: Timestamp, end: Timestamp) -> bool {
        let (start, end) = (start.unix_secs(), end.unix_secs());
        let stopped: u64 = self
            .stops
            .iter()
            .map(|s| {
                let from = s.from.unix_secs().max(start);
                let until = s.until.map_or(end, |u| u.unix_secs().min(end));
                until.saturating_sub(from)
            })
            .sum();
        stopped < end - start
    }

    /// Records a spec change at `at`.
    pub fn change_spec(&mut self, spec: &str, at: Timestamp) -> Result<(), BillingError> {
        if self.released.is_some() {
            return Err(BillingError::InvalidSpecHistory(
                "the instance is already released".into(),
            ));
        }
        if self.specs.last().is_some_and(|c| at < c.at) {
            return Err(BillingError::InvalidSpecHistory(format!(
                "a spec change at {at} is earlier than the previous one"
            )));
        }
        self.specs.push(SpecChange {
            at,
            spec: spec.to_string(),
        });
        Ok(())
    }

    /// Records the release at `at`.
    pub fn release(&mut self, at: Timestamp) -> Result<(), BillingError> {
        if self.released.is_some() || at < self.created {
            return Err(BillingError::InvalidSpecHistory(format!(
                "cannot release at {at}: already released, or before the creation"
            )));
        }
        self.released = Some(at);
        Ok(())
    }

    /// How many hours the whole life is billed (`None` while running): at least one, and every
    /// started hour.
    pub fn billed_hour_count(&self) -> Option<u64> {
        let life = self.released?.unix_secs() - self.created.unix_secs();
        Some(life.div_ceil(SECS_PER_HOUR).max(1))
    }

    /// The billed hours that start in `[from, to)`: those in which the instance ran at some
    /// moment. For a running instance the window must be bounded (e.g. a day): its hours have no
    /// end.
    pub fn billed_hours(
        &self,
        catalog: &Catalog,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<BilledHour>, BillingError> {
        let segments = self.priced_segments(catalog)?;
        let count = self.billed_hour_count();
        let created = self.created.unix_secs();
        let first = from
            .unix_secs()
            .saturating_sub(created)
            .div_ceil(SECS_PER_HOUR);
        let mut hours = Vec::new();
        for k in first.. {
            let start = Timestamp::from_unix_secs(created + k * SECS_PER_HOUR);
            if start >= to || count.is_some_and(|n| k >= n) {
                break;
            }
            let end = start.plus_secs(SECS_PER_HOUR);
            // The part of the hour the instance existed; empty only for a zero-length life,
            // which is still billed its first hour at the creation spec.
            let end = self
                .released
                .map_or(end, |r| r.min(end))
                .max(start.plus_secs(1));
            if !self.ran_during(start, end) {
                continue;
            }
            let (spec, price) = segments
                .iter()
                .filter(|s| s.overlaps(start, end))
                .fold(None, |best: Option<&Segment>, s| match best {
                    Some(b) if b.price >= s.price => Some(b),
                    _ => Some(s),
                })
                .map(|s| (s.spec.clone(), s.price))
                .expect("the segments cover the whole life");
            hours.push(BilledHour { start, spec, price });
        }
        Ok(hours)
    }

    /// The amount of the billed hours that start in `[from, to)`.
    pub fn amount_between(
        &self,
        catalog: &Catalog,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Usd, BillingError> {
        Ok(self
            .billed_hours(catalog, from, to)?
            .iter()
            .map(|h| h.price)
            .sum())
    }

    /// The amount billed for `day`: the hours that start in it.
    pub fn day_amount(&self, catalog: &Catalog, day: Day) -> Result<Usd, BillingError> {
        self.amount_between(catalog, day.start(), day.end())
    }

    /// The whole life's amount; the instance must be released.
    pub fn total(&self, catalog: &Catalog) -> Result<Usd, BillingError> {
        let released = self.released.ok_or(BillingError::NotReleased)?;
        self.amount_between(
            catalog,
            self.created,
            released.max(self.created.plus_secs(1)),
        )
    }

    /// The spec history as `[from, until)` segments with their hourly prices, checked.
    fn priced_segments(&self, catalog: &Catalog) -> Result<Vec<Segment>, BillingError> {
        let invalid = |m: String| Err(BillingError::InvalidSpecHistory(m));
        match self.specs.first() {
            None => return invalid("no spec at creation".into()),
            Some(c) if c.at != self.created => {
                return invalid(format!(
                    "the first spec starts at {}, not at the creation {}",
                    c.at, self.created
                ));
            }
            _ => {}
        }
        if self.specs.windows(2).any(|w| w[1].at < w[0].at) {
            return invalid("spec changes are not in time order".into());
        }
        if self.released.is_some_and(|r| r < self.created) {
            return invalid("released before created".into());
        }
        self.specs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Segment {
                    from: c.at,
                    until: self.specs.get(i + 1).map(|n| n.at),
                    spec: c.spec.clone(),
                    price: catalog.spec_price(&self.region, &c.spec)?.payg_per_hour,
                })
            })
            .collect()
    }
}

struct Segment {
    from: Timestamp,
    until: Option<Timestamp>,
    spec: String,
    price: Usd,
}

impl Segment {
    /// Whether the spec was in force at some moment of `[start, end)`. A spec replaced at the
    /// very moment it took effect never was.
    fn overlaps(&self, start: Timestamp, end: Timestamp) -> bool {
        let until = self.until.unwrap_or(Timestamp::from_unix_secs(u64::MAX));
        self.from < until && self.from < end && until > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECS_PER_DAY;
    use proptest::prelude::*;

    const SG: &str = "ap-southeast-1";
    const SMALL: &str = "api.s1.small"; // 0.93 / hour in Singapore
    const MEDIUM: &str = "api.s1.medium"; // 2.6
    const LARGE: &str = "api.s2.large"; // 7.43
    const H: u64 = SECS_PER_HOUR;

    fn cat() -> &'static Catalog {
        Catalog::builtin()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn t(secs: u64) -> Timestamp {
        // Mid-morning of 2024-05-01 UTC, so that short lives stay inside one day.
        Timestamp::from_utc(2024, 5, 1, 9, 0, 0)
            .unwrap()
            .plus_secs(secs)
    }

    fn life(secs: u64) -> PaygInstance {
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.release(t(secs)).unwrap();
        i
    }

    #[test]
    fn nine_and_a_half_hours_are_billed_ten() {
        let i = life(9 * H + H / 2);
        assert_eq!(i.billed_hour_count(), Some(10));
        assert_eq!(i.total(cat()).unwrap(), usd("9.3"));
    }

    #[test]
    fn one_hour_minimum_and_started_hours() {
        assert_eq!(life(0).total(cat()).unwrap(), usd("0.93"));
        assert_eq!(life(1).total(cat()).unwrap(), usd("0.93"));
        assert_eq!(life(H).total(cat()).unwrap(), usd("0.93"));
        assert_eq!(life(H + 1).total(cat()).unwrap(), usd("1.86"));
        assert_eq!(life(24 * H).total(cat()).unwrap(), usd("22.32"));
    }

    #[test]
    fn a_running_instance_has_no_total_but_has_days() {
        let i = PaygInstance::new(SG, SMALL, t(0));
        assert!(matches!(i.total(cat()), Err(BillingError::NotReleased)));
        // Created at 09:00: hours start at 09:00 .. 23:00, 15 of them on the first day.
        assert_eq!(i.day_amount(cat(), t(0).day()).unwrap(), usd("13.95"));
        assert_eq!(
            i.day_amount(cat(), t(0).day().next()).unwrap(),
            usd("22.32")
        );
    }

    #[test]
    fn a_spec_change_on_an_hour_boundary_splits_cleanly() {
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.change_spec(LARGE, t(2 * H)).unwrap();
        i.release(t(3 * H)).unwrap();
        // 2 h small + 1 h large.
        assert_eq!(i.total(cat()).unwrap(), usd("9.29")); // 1.86 + 7.43
    }

    #[test]
    fn an_hour_with_a_spec_change_is_billed_once_at_its_peak() {
        // Upgrade at 1:30, release at 2:45: hours 0 (small), 1 (small then large: large),
        // 2 (large). Three hours for 2 h 45 min of life, never four.
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.change_spec(LARGE, t(H + H / 2)).unwrap();
        i.release(t(2 * H + 3 * H / 4)).unwrap();
        let hours = i.billed_hours(cat(), t(0), t(10 * H)).unwrap();
        let specs: Vec<_> = hours.iter().map(|h| h.spec.as_str()).collect();
        assert_eq!(specs, [SMALL, LARGE, LARGE]);
        assert_eq!(i.total(cat()).unwrap(), usd("15.79")); // 0.93 + 7.43 + 7.43

        // A downgrade at 1:30 takes effect from the next hour.
        let mut i = PaygInstance::new(SG, LARGE, t(0));
        i.change_spec(SMALL, t(H + H / 2)).unwrap();
        i.release(t(3 * H)).unwrap();
        assert_eq!(i.total(cat()).unwrap(), usd("15.79")); // 7.43 + 7.43 + 0.93

        // Several changes in one hour: the priciest spec of the hour.
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.change_spec(LARGE, t(600)).unwrap();
        i.change_spec(MEDIUM, t(1200)).unwrap();
        i.release(t(2 * H)).unwrap();
        assert_eq!(i.total(cat()).unwrap(), usd("10.03")); // 7.43 + 2.6
    }

    #[test]
    fn a_spec_replaced_at_the_moment_it_took_effect_is_never_billed() {
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.change_spec(LARGE, t(600)).unwrap();
        i.change_spec(SMALL, t(600)).unwrap();
        i.release(t(H)).unwrap();
        assert_eq!(i.total(cat()).unwrap(), usd("0.93"));
    }

    #[test]
    fn a_change_at_the_release_moment_costs_nothing() {
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.change_spec(LARGE, t(H)).unwrap();
        i.release(t(H)).unwrap();
        assert_eq!(i.total(cat()).unwrap(), usd("0.93"));
    }

    #[test]
    fn the_hour_over_midnight_belongs_to_the_day_it_starts() {
        let created = Timestamp::from_utc(2024, 5, 1, 23, 30, 0).unwrap();
        let mut i = PaygInstance::new(SG, SMALL, created);
        i.release(created.plus_secs(2 * H)).unwrap();
        assert_eq!(i.day_amount(cat(), created.day()).unwrap(), usd("0.93"));
        assert_eq!(
            i.day_amount(cat(), created.day().next()).unwrap(),
            usd("0.93")
        );
    }

    #[test]
    fn a_stopped_instance_runs_no_hours_and_resumes_with_the_hour_it_starts_in() {
        // Created at 09:00, stopped at 11:30, started again at 15:10, released at 17:00.
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.add_stop(t(2 * H + H / 2), Some(t(6 * H + H / 6)))
            .unwrap();
        i.release(t(8 * H)).unwrap();
        let hours = i.billed_hours(cat(), t(0), t(24 * H)).unwrap();
        let starts: Vec<u64> = hours
            .iter()
            .map(|h| (h.start.unix_secs() - t(0).unix_secs()) / H)
            .collect();
        // Hour 2 ran until 11:30; hours 3, 4 and 5 were stopped throughout; hour 6 (15:00)
        // holds the restart.
        assert_eq!(starts, [0, 1, 2, 6, 7]);
        assert_eq!(i.total(cat()).unwrap(), usd("4.65"));
        // Still stopped: nothing from the stop on but the hour it happened in.
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.add_stop(t(H + 1), None).unwrap();
        assert_eq!(i.day_amount(cat(), t(0).day()).unwrap(), usd("1.86"));
        assert_eq!(i.day_amount(cat(), t(0).day().next()).unwrap(), Usd::ZERO);
        // Overlapping or out-of-order stops are refused.
        assert!(i.add_stop(t(2 * H), None).is_err());
        let mut i = PaygInstance::new(SG, SMALL, t(0));
        i.add_stop(t(H), Some(t(3 * H))).unwrap();
        assert!(i.add_stop(t(2 * H), Some(t(4 * H))).is_err());
        assert!(i.add_stop(t(5 * H), Some(t(4 * H))).is_err());
    }

    #[test]
    fn bad_histories_are_refused() {
        let mut i = PaygInstance::new(SG, SMALL, t(H));
        assert!(i.change_spec(LARGE, t(0)).is_err());
        assert!(i.release(t(0)).is_err());
        i.specs[0].at = t(0);
        assert!(i.total(cat()).is_err());
        let mut i = PaygInstance::new(SG, "api.s9.huge", t(0));
        i.release(t(H)).unwrap();
        let e = i.total(cat()).unwrap_err().to_string();
        assert!(e.contains("api.s1.small"), "{e}");
        let mut i = PaygInstance::new("mars-1", SMALL, t(0));
        i.release(t(H)).unwrap();
        assert!(
            i.total(cat())
                .unwrap_err()
                .to_string()
                .contains("cn-hongkong")
        );
    }

    fn any_instance() -> impl Strategy<Value = PaygInstance> {
        let specs = prop::sample::select(vec![SMALL, MEDIUM, LARGE, "api.s2.large.x6"]);
        (
            0u64..SECS_PER_DAY,
            0u64..12 * SECS_PER_DAY,
            specs.clone(),
            prop::collection::vec((0u64..12 * SECS_PER_DAY, specs), 0..8),
        )
            .prop_map(|(start, life, first, mut changes)| {
                let created = t(start);
                let mut i = PaygInstance::new(SG, first, created);
                changes.sort();
                for (at, spec) in changes {
                    i.change_spec(spec, created.plus_secs(at.min(life)))
                        .unwrap();
                }
                i.release(created.plus_secs(life)).unwrap();
                i
            })
    }

    proptest! {
        #[test]
        fn daily_amounts_add_up_to_the_whole_life(i in any_instance()) {
            let total = i.total(cat()).unwrap();
            let first = i.created.day();
            let last = i.released.unwrap().day();
            let mut sum = Usd::ZERO;
            let mut day = first;
            while day <= last {
                sum += i.day_amount(cat(), day).unwrap();
                day = day.next();
            }
            prop_assert_eq!(sum, total);
        }

        #[test]
        fn each_started_hour_is_billed_once_within_the_prices_in_force(i in any_instance()) {
            let hours = i.billed_hours(cat(), i.created, Timestamp::from_unix_secs(u64::MAX)).unwrap();
            let life = i.released.unwrap().unix_secs() - i.created.unix_secs();
            prop_assert_eq!(hours.len() as u64, life.div_ceil(H).max(1));
            let price = |s: &str| cat().spec_price(SG, s).unwrap().payg_per_hour;
            let min = i.specs.iter().map(|c| price(&c.spec)).min().unwrap();
            let max = i.specs.iter().map(|c| price(&c.spec)).max().unwrap();
            for (k, h) in hours.iter().enumerate() {
                prop_assert_eq!(h.start, i.created.plus_secs(k as u64 * H));
                prop_assert!(min <= h.price && h.price <= max);
                // Never cheaper than the spec in force at the hour's start.
                let at_start = i.specs.iter().rev().find(|c| c.at <= h.start).unwrap();
                prop_assert!(h.price >= price(&at_start.spec));
            }
        }

        #[test]
        fn without_changes_it_is_hours_times_price(life in 0u64..100 * H) {
            let i = super::tests::life(life);
            let hours = life.div_ceil(H).max(1) as i64;
            prop_assert_eq!(i.total(cat()).unwrap(), usd("0.93").checked_mul(hours).unwrap());
        }
    }
}
