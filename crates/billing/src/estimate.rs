//! The offline price calculator behind `gatewayctl pricing estimate`: a month of shared-instance
//! calls, a dedicated instance for some hours, months or years, and outbound traffic, priced
//! with the same functions the bills use.
//!
//! In JSON, the money and quantity fields of an [`Estimate`] are numbers (`"total_usd": 25.2`),
//! printed from the exact values (the shortest decimal that reads back as the same number).

use crate::BillingError;
use crate::calls::call_breakdown;
use crate::decimal::Decimal;
use crate::instance::PaygInstance;
use crate::subscription::{Term, subscription_price};
use crate::time::{SECS_PER_HOUR, Timestamp};
use catalog::{Catalog, Usd};
use serde::{Deserialize, Serialize};

/// What to price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateRequest {
    /// A region id, e.g. `cn-hongkong`.
    pub region: String,
    /// A month's shared-instance calls.
    #[serde(default)]
    pub calls: Option<u64>,
    /// Whether the account is in its first year (the calls get the free quota).
    #[serde(default)]
    pub first_year: bool,
    /// A dedicated instance.
    #[serde(default)]
    pub instance: Option<InstanceUsage>,
    /// Outbound traffic to the internet, in GB of 2^30 bytes.
    #[serde(default)]
    pub traffic_gb: Option<Decimal>,
}

/// A dedicated instance and how long it is used or bought for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub spec: String,
    pub duration: InstanceDuration,
}

/// Pay-as-you-go hours (partial hours allowed, billed by the started hour), or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceDuration {
    Hours(Decimal),
    Months(u32),
    Years(u32),
}

/// One line of an estimate: `quantity x unit_price_usd = amount_usd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub description: String,
    #[serde(with = "number::decimal")]
    pub quantity: Decimal,
    /// What the quantity counts: `million calls`, `hour`, `month`, `year`, `GB`.
    pub unit: String,
    #[serde(with = "number::usd")]
    pub unit_price_usd: Usd,
    /// The line's amount, rounded half up to the micro-dollar.
    #[serde(with = "number::usd")]
    pub amount_usd: Usd,
}

/// A priced estimate; `total_usd` is the sum of the lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    pub region: String,
    pub region_name: String,
    pub line_items: Vec<LineItem>,
    #[serde(with = "number::usd")]
    pub total_usd: Usd,
}

/// Prices `req` with `catalog`. Unknown regions and specs are the catalog's errors, which list
/// the valid names.
pub fn estimate(catalog: &Catalog, req: &EstimateRequest) -> Result<Estimate, BillingError> {
    let region = catalog.region(&req.region)?;
    let mut lines = Vec::new();
    if let Some(calls) = req.calls {
        lines.extend(call_lines(catalog, calls, req.first_year));
    }
    if let Some(usage) = &req.instance {
        lines.push(instance_line(catalog, &req.region, usage)?);
    }
    if let Some(gb) = req.traffic_gb {
        lines.push(LineItem {
            description: "Outbound traffic to the internet".into(),
            quantity: gb,
            unit: "GB".into(),
            unit_price_usd: region.traffic_per_gb,
            amount_usd: region
                .traffic_per_gb
                .mul_ratio(i128::from(gb.millionths()), i128::from(Decimal::SCALE)),
        });
    }
    Ok(Estimate {
        region: region.id.clone(),
        region_name: region.name.clone(),
        total_usd: lines.iter().map(|l| l.amount_usd).sum(),
        line_items: lines,
    })
}

/// One line for the free quota (if any) and one per tier with calls in it.
fn call_lines(catalog: &Catalog, calls: u64, first_year: bool) -> Vec<LineItem> {
    // A count of calls is exactly a decimal number of millions.
    let millions = Decimal::from_millionths;
    let unit = || "million calls".to_string();
    let b = call_breakdown(catalog.shared(), calls, first_year);
    let mut lines = Vec::new();
    if b.free_calls > 0 {
        lines.push(LineItem {
            description: format!(
                "API calls, free quota (first year, {} calls/month)",
                grouped(catalog.shared().free_calls_per_month)
            ),
            quantity: millions(b.free_calls),
            unit: unit(),
            unit_price_usd: Usd::ZERO,
            amount_usd: Usd::ZERO,
        });
    }
    for t in b.tiers.iter().filter(|t| t.calls > 0) {
        let range = match t.up_to {
            Some(up) if t.above == 0 => format!("up to {} calls/month", grouped(up)),
            Some(up) => format!("{} to {} calls/month", grouped(t.above + 1), grouped(up)),
            None => format!("over {} calls/month", grouped(t.above)),
        };
        lines.push(LineItem {
            description: format!("API calls, tier {} ({range})", t.tier),
            quantity: millions(t.calls),
            unit: unit(),
            unit_price_usd: t.per_million,
            amount_usd: t.amount,
        });
    }
    if lines.is_empty() {
        lines.push(LineItem {
            description: "API calls".into(),
            quantity: Decimal::ZERO,
            unit: unit(),
            unit_price_usd: b.tiers[0].per_million,
            amount_usd: Usd::ZERO,
        });
    }
    lines
}

fn instance_line(
    catalog: &Catalog,
    region: &str,
    usage: &InstanceUsage,
) -> Result<LineItem, BillingError> {
    let price = catalog.spec_price(region, &usage.spec)?;
    let spec = &usage.spec;
    let line = match usage.duration {
        InstanceDuration::Hours(hours) => {
            if hours == Decimal::ZERO {
                return Err(BillingError::ZeroDuration);
            }
            // Priced as a real instance's life, so the estimate follows the bill's rules.
            let secs = u128::from(hours.millionths()) * u128::from(SECS_PER_HOUR);
            let secs = u64::try_from(secs.div_ceil(u128::from(Decimal::SCALE)))
                .map_err(|_| BillingError::Overflow)?;
            let created = Timestamp::from_unix_secs(0);
            let mut instance = PaygInstance::new(region, spec, created);
            instance.release(created.plus_secs(secs))?;
            let billed = instance.billed_hour_count().expect("released");
            LineItem {
                description: format!(
                    "{spec} pay-as-you-go, {hours} {} used, billed by the started hour",
                    if hours == Decimal::from_int(1).ok_or(BillingError::Overflow)? {
                        "hour"
                    } else {
                        "hours"
                    }
                ),
                quantity: Decimal::from_int(billed).ok_or(BillingError::Overflow)?,
                unit: "hour".into(),
                unit_price_usd: price.payg_per_hour,
                amount_usd: instance.total(catalog)?,
            }
        }
        InstanceDuration::Months(m) => LineItem {
            description: format!("{spec} monthly subscription"),
            quantity: Decimal::from_int(m.into()).ok_or(BillingError::Overflow)?,
            unit: "month".into(),
            unit_price_usd: price.monthly,
            amount_usd: subscription_price(&price, Term::Months(m))?,
        },
        InstanceDuration::Years(y) => LineItem {
            description: format!("{spec} annual subscription (15% off 12 months)"),
            quantity: Decimal::from_int(y.into()).ok_or(BillingError::Overflow)?,
            unit: "year".into(),
            unit_price_usd: price.annual_per_year,
            amount_usd: subscription_price(&price, Term::Years(y))?,
        },
    };
    Ok(line)
}

/// `12000000` -> `12,000,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Exact values for the CLI's JSON: money as a decimal string, like the accounts' balances
/// (`"10.47"`), quantities as numbers. A quantity's float is made only to be printed: the
/// shortest decimal that reads back as the same double is the exact amount, for any amount
/// below 2^53 millionths (9 billion). Both read back from a string or a number.
mod number {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            N(f64),
        }
        Ok(match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::N(n) => format!("{n}"),
        })
    }

    pub mod usd {
        use super::*;
        use catalog::Usd;

        pub fn serialize<S: Serializer>(v: &Usd, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(v)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
            Usd::parse(&read(d)?).map_err(D::Error::custom)
        }
    }

    pub mod decimal {
        use super::*;
        use crate::decimal::Decimal;

        pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(v.millionths() as f64 / Decimal::SCALE as f64)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
            Decimal::parse(&read(d)?).map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> &'static Catalog {
        Catalog::builtin()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn dec(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn req(region: &str) -> EstimateRequest {
        EstimateRequest {
            region: region.into(),
            calls: None,
            first_year: false,
            instance: None,
            traffic_gb: None,
        }
    }

    fn amounts(e: &Estimate) -> Vec<Usd> {
        e.line_items.iter().map(|l| l.amount_usd).collect()
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(12_000_000), "12,000,000");
    }

    #[test]
    fn empty_request_prices_nothing() {
        let e = estimate(cat(), &req("cn-hangzhou")).unwrap();
        assert!(e.line_items.is_empty());
        assert_eq!(e.total_usd, Usd::ZERO);
        assert_eq!(e.region_name, "China (Hangzhou)");
    }

    #[test]
    fn calls_lines_name_each_tier() {
        let mut r = req("cn-hangzhou");
        r.calls = Some(150_000_000);
        let e = estimate(cat(), &r).unwrap();
        let d: Vec<_> = e
            .line_items
            .iter()
            .map(|l| l.description.as_str())
            .collect();
        assert_eq!(
            d,
            [
                "API calls, tier 1 (up to 10,000,000 calls/month)",
                "API calls, tier 2 (10,000,001 to 100,000,000 calls/month)",
                "API calls, tier 3 (over 100,000,000 calls/month)",
            ]
        );
        assert_eq!(amounts(&e), [usd("9"), usd("54"), usd("22.5")]);
        assert_eq!(e.line_items[2].quantity, dec("50"));
        assert_eq!(e.total_usd, usd("85.5"));

        r.calls = Some(0);
        let e = estimate(cat(), &r).unwrap();
        assert_eq!(e.line_items.len(), 1);
        assert_eq!(e.total_usd, Usd::ZERO);
    }

    #[test]
    fn partial_hours_and_subscriptions() {
        let mut r = req("ap-southeast-1");
        let with = |r: &mut EstimateRequest, d| {
            r.instance = Some(InstanceUsage {
                spec: "api.s2.large".into(),
                duration: d,
            });
            estimate(cat(), r).unwrap()
        };
        let e = with(&mut r, InstanceDuration::Hours(dec("0.25")));
        assert_eq!(e.line_items[0].quantity, dec("1"));
        assert_eq!(e.total_usd, usd("7.43"));
        let e = with(&mut r, InstanceDuration::Hours(dec("2.000001")));
        assert_eq!(e.total_usd, usd("22.29"));
        let e = with(&mut r, InstanceDuration::Months(3));
        assert_eq!(e.total_usd, usd("13380"));
        let e = with(&mut r, InstanceDuration::Years(1));
        assert_eq!(e.total_usd, usd("45492"));
        assert_eq!(e.line_items[0].unit, "year");
    }

    #[test]
    fn bad_inputs_are_refused_with_the_valid_names() {
        let e = estimate(cat(), &req("mars-1")).unwrap_err().to_string();
        assert!(e.contains("mars-1") && e.contains("ap-southeast-1"), "{e}");
        let mut r = req("cn-hangzhou");
        r.instance = Some(InstanceUsage {
            spec: "api.s9.huge".into(),
            duration: InstanceDuration::Months(1),
        });
        let e = estimate(cat(), &r).unwrap_err().to_string();
        assert!(
            e.contains("api.s9.huge") && e.contains("api.s2.large.x6"),
            "{e}"
        );
        for d in [
            InstanceDuration::Hours(Decimal::ZERO),
            InstanceDuration::Months(0),
            InstanceDuration::Years(0),
        ] {
            r.instance = Some(InstanceUsage {
                spec: "api.s1.small".into(),
                duration: d,
            });
            assert!(matches!(
                estimate(cat(), &r),
                Err(BillingError::ZeroDuration)
            ));
        }
    }

    #[test]
    fn json_has_line_items_and_money_as_strings() {
        let mut r = req("cn-hongkong");
        r.calls = Some(12_000_000);
        r.first_year = true;
        r.traffic_gb = Some(dec("100"));
        let e = estimate(cat(), &r).unwrap();
        let v = serde_json::to_value(&e).unwrap();
        // Money as the accounts give it: an exact decimal string, never a float.
        assert_eq!(v["total_usd"], "25.20");
        assert_eq!(v["line_items"][0]["unit"], "million calls");
        assert_eq!(v["line_items"][1]["quantity"], serde_json::json!(10.0));
        assert_eq!(v["line_items"][1]["unit_price_usd"], "0.90");
        assert_eq!(v["line_items"][1]["amount_usd"], "9.00");
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"total_usd\":\"25.20\""), "{text}");
        let back: Estimate = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        // Estimates written before (money as numbers) still read.
        let old = text.replace("\"25.20\"", "25.2");
        assert_eq!(serde_json::from_str::<Estimate>(&old).unwrap(), e);
        // The request reads from JSON too, with the hours as a decimal string.
        let r: EstimateRequest = serde_json::from_str(
            r#"{"region":"ap-southeast-1","instance":{"spec":"api.s1.small","duration":{"hours":"9.5"}}}"#,
        )
        .unwrap();
        assert_eq!(estimate(cat(), &r).unwrap().total_usd, usd("9.3"));
    }
}
