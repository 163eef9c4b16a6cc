//! Outbound traffic: to the internet, and between the gateway and a backend outside its region.
//!
//! A GB is 2^30 = 1,073,741,824 bytes, as the cloud bills it. Amounts are computed from bytes
//! exactly, `bytes x price per GB / 2^30`, and rounded half up to the micro-dollar once per
//! bill line (one line per account, region and kind of traffic, per calendar month). A day's
//! amount is the growth of the month's line, so the days of a month add up to exactly the
//! month's amount.

use catalog::Usd;
use serde::{Deserialize, Serialize};

/// Bytes in a billed GB.
pub const BYTES_PER_GB: u64 = 1 << 30;

/// What a byte of traffic crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficKind {
    /// From the gateway to the internet (responses to clients).
    Internet,
    /// Between the gateway and a backend in another region or outside the cloud.
    Backend,
}

/// Where an API's backend is, as its owner declared it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendLocation {
    /// In the gateway's region (the default: a backend whose owner said nothing is assumed to
    /// be there). Not billed.
    #[default]
    Local,
    /// In a cloud region (an id such as `cn-hangzhou`).
    Region(String),
    /// Outside the cloud.
    OffCloud,
}

impl BackendLocation {
    /// Reads the text form: `local` (or empty), `external`, or a region id.
    pub fn parse(text: &str) -> Result<BackendLocation, String> {
        let text = text.trim();
        match text {
            "" | "local" => Ok(BackendLocation::Local),
            "external" => Ok(BackendLocation::OffCloud),
            id if !id.is_empty()
                && id.len() <= 64
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                Ok(BackendLocation::Region(id.to_string()))
            }
            other => Err(format!(
                "'{other}' is not local, external or a region id (such as cn-hangzhou)"
            )),
        }
    }

    /// The text form [`parse`](Self::parse) reads.
    pub fn as_text(&self) -> &str {
        match self {
            BackendLocation::Local => "local",
            BackendLocation::Region(id) => id,
            BackendLocation::OffCloud => "external",
        }
    }

    pub fn is_local(&self) -> bool {
        *self == BackendLocation::Local
    }
}

/// Whether gateway-to-backend traffic is billed: the document bills it when the backend is not
/// in the gateway's region or not on the cloud. A backend declared nowhere is local: not
/// billed. It is billed at the price of the gateway's region, like internet traffic from
/// there.
pub fn backend_traffic_billable(gateway_region: &str, backend: &BackendLocation) -> bool {
    match backend {
        BackendLocation::Local => false,
        BackendLocation::Region(r) => r != gateway_region,
        BackendLocation::OffCloud => true,
    }
}

/// The amount for `bytes` at `per_gb`, rounded half up to the micro-dollar.
pub fn traffic_amount(per_gb: Usd, bytes: u64) -> Usd {
    per_gb.mul_ratio(i128::from(bytes), i128::from(BYTES_PER_GB))
}

/// A day's amount for `bytes_today`, when the month's line had `bytes_before` before it:
/// `amount(before + today) - amount(before)`, so a month's days add up exactly.
pub fn daily_traffic_charge(per_gb: Usd, bytes_before: u64, bytes_today: u64) -> Usd {
    let after = bytes_before
        .checked_add(bytes_today)
        .expect("monthly byte count overflows u64");
    traffic_amount(per_gb, after) - traffic_amount(per_gb, bytes_before)
}

/// A day's traffic charge in whole cents: `round(amount(before + today)) -
/// round(amount(before))`, the day's exact amount plus the sub-cent remainder carried from the
/// month's earlier days, so a month's daily lines add up exactly to its amount in cents.
pub fn daily_traffic_charge_cents(per_gb: Usd, bytes_before: u64, bytes_today: u64) -> Usd {
    let after = bytes_before.saturating_add(bytes_today);
    traffic_amount(per_gb, after).round_cents() - traffic_amount(per_gb, bytes_before).round_cents()
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::Catalog;
    use proptest::prelude::*;

    fn per_gb(region: &str) -> Usd {
        Catalog::builtin().region(region).unwrap().traffic_per_gb
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    #[test]
    fn whole_gigabytes() {
        assert_eq!(
            traffic_amount(per_gb("cn-hongkong"), 100 * BYTES_PER_GB),
            usd("15.6")
        );
        assert_eq!(
            traffic_amount(per_gb("ap-southeast-1"), 10 * BYTES_PER_GB),
            usd("1.17")
        );
        assert_eq!(
            traffic_amount(per_gb("me-east-1"), BYTES_PER_GB),
            usd("0.447")
        );
    }

    #[test]
    fn a_gb_is_two_to_the_thirty_bytes() {
        // 10^9 bytes are 0.931 GB: 0.117 x 10^9 / 2^30 = 0.108964...
        assert_eq!(
            traffic_amount(per_gb("ap-southeast-1"), 1_000_000_000),
            usd("0.108965")
        );
        // Half a micro-dollar rounds up: 0.117 per GB is 0.000001 per 9177.28 bytes.
        assert_eq!(traffic_amount(usd("0.117"), 0), Usd::ZERO);
        assert_eq!(
            traffic_amount(usd("1"), BYTES_PER_GB / 2_000_000),
            Usd::ZERO
        ); // 0.4999 micro
        assert_eq!(
            traffic_amount(usd("1"), BYTES_PER_GB / 2_000_000 + 1),
            Usd::from_micros(1)
        );
    }

    #[test]
    fn daily_rounding_does_not_drift() {
        // 1 KiB a day at 0.117/GB is 0.000109 micro-dollars a day; 30 days round to 0 in total.
        let days: Usd = (0..30)
            .map(|d| daily_traffic_charge(usd("0.117"), d * 1024, 1024))
            .sum();
        assert_eq!(days, traffic_amount(usd("0.117"), 30 * 1024));
    }

    #[test]
    fn backend_traffic_is_billed_across_regions_and_off_cloud() {
        let r = |s: &str| BackendLocation::Region(s.into());
        assert!(!backend_traffic_billable("cn-hangzhou", &r("cn-hangzhou")));
        assert!(backend_traffic_billable("cn-hangzhou", &r("cn-shanghai")));
        assert!(backend_traffic_billable(
            "cn-hangzhou",
            &BackendLocation::OffCloud
        ));
        assert!(!backend_traffic_billable(
            "cn-hangzhou",
            &BackendLocation::Local
        ));
    }

    #[test]
    fn backend_locations_read_and_write_as_text() {
        for (text, loc) in [
            ("", BackendLocation::Local),
            ("local", BackendLocation::Local),
            ("external", BackendLocation::OffCloud),
            ("cn-shanghai", BackendLocation::Region("cn-shanghai".into())),
        ] {
            assert_eq!(BackendLocation::parse(text), Ok(loc.clone()), "{text:?}");
            assert_eq!(BackendLocation::parse(loc.as_text()), Ok(loc));
        }
        for bad in ["CN-X", "-x", "a b", "x_y", "1x"] {
            assert!(BackendLocation::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_traffic_is_priced_like_internet_traffic_of_the_gateways_region() {
        // 3 GB read back from a backend in Shanghai by a Singapore instance: 3 x 0.117.
        let gateway = "ap-southeast-1";
        assert!(backend_traffic_billable(
            gateway,
            &BackendLocation::Region("cn-shanghai".into())
        ));
        assert_eq!(
            daily_traffic_charge_cents(per_gb(gateway), 0, 3 * BYTES_PER_GB),
            usd("0.35")
        );
        // A month of days in cents adds up to the month's amount in cents.
        let day = BYTES_PER_GB / 7;
        let days: Usd = (0..30)
            .map(|d| daily_traffic_charge_cents(per_gb(gateway), d * day, day))
            .sum();
        assert_eq!(
            days,
            traffic_amount(per_gb(gateway), 30 * day).round_cents()
        );
    }

    proptest! {
        #[test]
        fn daily_amounts_add_up_to_the_monthly_amount(
            days in prop::collection::vec(
                prop_oneof![0u64..10_000, 0u64..50 * BYTES_PER_GB, 0u64..5_000 * BYTES_PER_GB],
                1..=31),
            price in 0i64..1_000_000,
        ) {
            let per_gb = Usd::from_micros(price);
            let mut before = 0;
            let mut sum = Usd::ZERO;
            for bytes in days {
                let d = daily_traffic_charge(per_gb, before, bytes);
                prop_assert!(d >= Usd::ZERO);
                sum += d;
                before += bytes;
            }
            prop_assert_eq!(sum, traffic_amount(per_gb, before));
        }

        #[test]
        fn whole_gigabytes_cost_exactly_gb_times_price(gb in 0u64..1_000_000, price in 0i64..1_000_000) {
            let per_gb = Usd::from_micros(price);
            prop_assert_eq!(traffic_amount(per_gb, gb * BYTES_PER_GB), per_gb.checked_mul(gb as i64).unwrap());
        }
    }
}
