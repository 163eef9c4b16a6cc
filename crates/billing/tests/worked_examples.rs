//! The pricing document's three worked examples, with the figures the rules give. Where the
//! document's own arithmetic slips, the test says so (see SLIPS.md).

use billing::{
    BYTES_PER_GB, Catalog, Decimal, Estimate, EstimateRequest, InstanceDuration, InstanceUsage,
    PaygInstance, Subscription, Term, Timestamp, Usd, daily_call_charge, daily_call_charge_cents,
    daily_traffic_charge, daily_traffic_charge_cents, estimate, monthly_call_price, traffic_amount,
};

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn gb(s: &str) -> Decimal {
    Decimal::parse(s).unwrap()
}

fn run(req: EstimateRequest) -> Estimate {
    estimate(Catalog::builtin(), &req).unwrap()
}

fn amounts(e: &Estimate) -> Vec<(String, Usd)> {
    e.line_items
        .iter()
        .map(|l| (l.description.clone(), l.amount_usd))
        .collect()
}

fn shared_example(first_year: bool) -> Estimate {
    run(EstimateRequest {
        region: "cn-hongkong".into(),
        calls: Some(12_000_000),
        first_year,
        instance: None,
        traffic_gb: Some(gb("100")),
    })
}

/// Document: "12 million API requests ... 100 GB ... in China (Hong Kong), you need to pay a total
/// of USD 22.5 (the fee for API calls is USD 6.9 (10 x 0.6 + 1 x 0.9 = 6.9), and the traffic fee is
/// USD 15.6 (100 x 0.156 = 15.6))". The free million comes off first, leaving 11 million billable
/// calls (the document's 10 + 1); its slip is only the swapped prices: 10 x 0.9 + 1 x 0.6 = 9.6.
#[test]
fn shared_instance_in_the_first_year() {
    let e = shared_example(true);
    assert_eq!(
        amounts(&e),
        [
            (
                "API calls, free quota (first year, 1,000,000 calls/month)".into(),
                Usd::ZERO
            ),
            (
                "API calls, tier 1 (up to 10,000,000 calls/month)".into(),
                usd("9")
            ),
            (
                "API calls, tier 2 (10,000,001 to 100,000,000 calls/month)".into(),
                usd("0.6")
            ),
            ("Outbound traffic to the internet".into(), usd("15.6")),
        ]
    );
    assert_eq!(e.total_usd, usd("25.2")); // not 22.5
    let shared = Catalog::builtin().shared();
    assert_eq!(monthly_call_price(shared, 12_000_000, true), usd("9.6")); // not 6.9
}

#[test]
fn shared_instance_after_the_first_year() {
    let e = shared_example(false);
    assert_eq!(e.line_items.len(), 3);
    assert_eq!(e.total_usd, usd("25.8"));
    let shared = Catalog::builtin().shared();
    assert_eq!(monthly_call_price(shared, 12_000_000, false), usd("10.2"));
}

#[test]
fn shared_instance_billed_daily_adds_up_to_the_example() {
    // 12 M calls and 100 GB spread unevenly over a 30-day month, billed day by day.
    let c = Catalog::builtin();
    let per_gb = c.region("cn-hongkong").unwrap().traffic_per_gb;
    let (mut calls, mut bytes, mut total, mut exact) = (0u64, 0u64, Usd::ZERO, Usd::ZERO);
    for day in 0..30u64 {
        let today_calls = if day == 29 {
            12_000_000 - calls
        } else {
            (day * 7_919) % 800_000
        };
        let today_bytes = if day == 29 {
            100 * BYTES_PER_GB - bytes
        } else {
            day * 123_456_789
        };
        exact += daily_call_charge(c.shared(), calls, today_calls, true);
        exact += daily_traffic_charge(per_gb, bytes, today_bytes);
        let day_cents = daily_call_charge_cents(c.shared(), calls, today_calls, true)
            + daily_traffic_charge_cents(per_gb, bytes, today_bytes);
        assert!(day_cents.is_whole_cents(), "day {day}: {day_cents}");
        total += day_cents;
        calls += today_calls;
        bytes += today_bytes;
    }
    assert_eq!(exact, usd("25.2"));
    // The bills people see are in whole cents, and still add up to the example.
    assert_eq!(total, usd("25.2"));
}

/// Document: "api.s1.small ... in Singapore ... 9.5 hours and ... 10 GB ... USD 10.47 (the instance
/// fee is USD 9.3 (10 x 0.93 = 9.3), and the traffic fee is USD 1.17 (10 x 0.117 = 1.17))". Right.
#[test]
fn pay_as_you_go_instance() {
    let e = run(EstimateRequest {
        region: "ap-southeast-1".into(),
        calls: None,
        first_year: false,
        instance: Some(InstanceUsage {
            spec: "api.s1.small".into(),
            duration: InstanceDuration::Hours(gb("9.5")),
        }),
        traffic_gb: Some(gb("10")),
    });
    assert_eq!(e.line_items[0].quantity, gb("10"));
    assert_eq!(e.line_items[0].unit_price_usd, usd("0.93"));
    assert_eq!(e.line_items[0].amount_usd, usd("9.3"));
    assert_eq!(e.line_items[1].amount_usd, usd("1.17"));
    assert_eq!(e.total_usd, usd("10.47"));

    // The same as a metered instance: 9.5 hours of life and 10 GB of bytes.
    let c = Catalog::builtin();
    let created = Timestamp::from_utc(2024, 6, 3, 8, 0, 0).unwrap();
    let mut i = PaygInstance::new("ap-southeast-1", "api.s1.small", created);
    i.release(created.plus_secs(9 * 3600 + 1800)).unwrap();
    let traffic = traffic_amount(
        c.region("ap-southeast-1").unwrap().traffic_per_gb,
        10 * BYTES_PER_GB,
    );
    assert_eq!(i.total(c).unwrap() + traffic, usd("10.47"));
}

/// Document: "a subscription ... api.s1.small ... in Singapore ... one month and ... 10 GB ... USD
/// 561.17 (the instance fee is USD 560, and the traffic fee is USD 1.17 (1000 x 0.117 = 1.17))".
/// Slip: 1000 x 0.117 is 117; the traffic is 10 GB, 10 x 0.117 = 1.17. The total is right.
#[test]
fn subscription_instance() {
    let e = run(EstimateRequest {
        region: "ap-southeast-1".into(),
        calls: None,
        first_year: false,
        instance: Some(InstanceUsage {
            spec: "api.s1.small".into(),
            duration: InstanceDuration::Months(1),
        }),
        traffic_gb: Some(gb("10")),
    });
    assert_eq!(e.line_items[0].amount_usd, usd("560"));
    assert_eq!(e.line_items[1].quantity, gb("10")); // not 1000
    assert_eq!(e.line_items[1].amount_usd, usd("1.17"));
    assert_eq!(e.total_usd, usd("561.17"));
    assert_eq!(
        traffic_amount(usd("0.117"), 1000 * BYTES_PER_GB),
        usd("117")
    );

    let s = Subscription {
        region: "ap-southeast-1".into(),
        spec: "api.s1.small".into(),
        term: Term::Months(1),
        start: Timestamp::from_utc(2024, 6, 1, 0, 0, 0).unwrap(),
    };
    assert_eq!(s.price(Catalog::builtin()).unwrap(), usd("560"));
}
