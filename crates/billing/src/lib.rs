//! The gateway's billing: pure pricing math and the account lifecycle.
//!
//! This crate owns what a bill comes to and what happens to an account that does not pay it:
//! the shared instance's graduated call tiers and first-year free quota ([`calls`]), pay-as-you-go
//! dedicated instances billed by the started hour ([`instance`]), monthly and annual
//! subscriptions ([`subscription`]), outbound traffic ([`traffic`]), the offline price
//! calculator behind `gatewayctl pricing estimate` ([`estimate()`]), and the lifecycle of an
//! account: active, overdue, suspended, purged ([`account`]). The prices themselves come from
//! the [`catalog`] crate.
//!
//! Everything is a function of explicit inputs. Nothing reads a clock (times are [`Timestamp`]s,
//! unix seconds, passed in), nothing does I/O, and money is never a float: amounts are exact
//! [`Usd`] micro-dollars, computed exactly and rounded half up to the micro-dollar once per bill
//! line. Days and months are UTC.
//!
//! # Decisions
//!
//! The pricing document leaves some rules open; this is what the gateway does.
//!
//! * **Calls are graduated.** Calls are numbered within a calendar month; calls 1 to 10,000,000
//!   cost 0.9 USD per million, calls 10,000,001 to 100,000,000 cost 0.6, the rest 0.45. Every
//!   request the gateway received counts, throttled and failed ones included. Each tier is a bill
//!   line, rounded once.
//! * **The free quota comes off the month's count first.** In the first year, 1,000,000 calls
//!   of each calendar month are free; the tiers apply to the calls that remain (the pricing
//!   document's example: 12 million calls are 11 million billable, `10 x 0.9 + 1 x 0.6`).
//! * **The month that straddles the first anniversary gets the full free quota.** The first year
//!   is 12 months from the account's creation; a calendar month gets the quota when any part of
//!   it lies in the first year (the month of creation included). The rule depends on the month
//!   only, so it never changes in the middle of a month's daily bills.
//! * **Daily bills add up exactly, in whole cents.** A day's charge for calls (or traffic) is the
//!   growth of the month's price rounded to cents (half up):
//!   `round(price(calls up to the end of the day)) - round(price(calls before it))`. That is the
//!   day's exact amount plus the sub-cent remainder carried from the earlier days; what is left
//!   over is carried to the next day. The days of a month add up to exactly the month's price
//!   in cents, with no rounding drift, and every bill line and balance is whole cents.
//! * **Pay-as-you-go hours are counted from creation, and a spec change does not restart them.**
//!   Hour `k` of an instance is `[created + k h, created + (k+1) h)`; every hour in which the
//!   instance ran at some moment before the release is billed in full, once (so 9.5 hours are
//!   billed 10, and anything up to an hour is billed one). A stopped instance (its account
//!   suspended) runs no hours: the hours wholly inside a stop are not billed, and billing
//!   resumes with the hour in which it is started again. An hour in which the spec changed is billed at the highest hourly
//!   price in force during it: the same wall-clock hour is never billed twice, an upgrade is paid
//!   from the hour it happens in, and a brief upgrade inside an hour cannot go unpaid. An hour
//!   is billed on the (UTC) day it starts, so the daily amounts add up to the whole life.
//! * **Subscriptions are paid up front.** Monthly: months x the monthly price. Annual: years x the
//!   annual price, where the document's "Annual Subscription Price (US$/month)" column actually
//!   holds a whole year's price (12 x monthly x 0.85); the catalog stores it as
//!   `annual_per_year`. A term ends on the same day of the month (clamped to the month's end).
//!   A renewal pays the next term from the balance, at the same prices. A term that ends
//!   unrenewed never turns into pay-as-you-go: the instance is stopped at the term's end and
//!   released after a grace period (see the model crate).
//! * **A subscription upgrade is charged pro rata; a downgrade waits for the renewal.** An upgrade
//!   applies at once and charges `(new term price - old term price) x remaining days / term days`
//!   (a started day counts). A downgrade applies at the end of the paid term; nothing is
//!   refunded.
//! * **A GB is 2^30 bytes** (1,073,741,824), as the cloud bills it. Traffic is metered in bytes
//!   and priced once per monthly bill line: `bytes x price per GB / 2^30`.
//! * **Outbound traffic is what goes to the client**: every byte of the HTTP response written
//!   (status line, headers, body, chunk framing; HTTP/2 as its HTTP/1.1 equivalent; TLS as the
//!   plaintext). The data plane meters it; this crate prices bytes.
//! * **Backend traffic** (the bytes read back from a backend, heads and framing included) is
//!   billed at the gateway region's traffic price, on a line of its own, when the API declares a
//!   backend in another region or outside the cloud ([`BackendLocation`]); a backend declared
//!   nowhere is local and not billed.
//! * **Account states.** A bill is always deducted in full; what the balance cannot cover is
//!   owed. Active: the balance covers the previous cycle's bill. Overdue: it does not (the
//!   document's "payment becomes overdue"; still served, the owner is reminded). Suspended: a bill
//!   is owed; API calls fail, management works. A recharge that covers what is owed restores
//!   service at once. Six months after the suspension, and no sooner than seven days after a
//!   warning, the account is Purged (its API configuration may be cleared). A cycle is settled
//!   once; the overdue alert forecasts seven days from the average of the last seven daily
//!   bills; the balance alert fires when the balance drops below the owner's threshold. Each
//!   alert fires once per crossing.
//!
//! # The document's worked examples, and its two slips
//!
//! The examples are acceptance tests (`tests/worked_examples.rs`), with the figures the rules
//! give. Two of the document's figures differ (see also `SLIPS.md`):
//!
//! 1. **Shared instance, 12 million calls and 100 GB in China (Hong Kong).** The document says
//!    the calls cost USD 6.9 "(10 x 0.6 + 1 x 0.9 = 6.9)" and the total is USD 22.5. That prices
//!    10 million calls at tier 2's 0.6 and 1 million at tier 1's 0.9: the tiers' prices are
//!    swapped. The 11 million is right: the free million comes off the 12 first, and the tiers
//!    apply to the rest, `10 x 0.9 + 1 x 0.6 = 9.6`, total `9.6 + 15.6 = 25.2`. After the
//!    first year: `10 x 0.9 + 2 x 0.6 = 10.2`, total `10.2 + 15.6 = 25.8`. The traffic fee,
//!    `100 x 0.156 = 15.6`, is right.
//! 2. **Subscription api.s1.small in Singapore, one month and 10 GB.** The document writes the
//!    traffic fee as "1000 x 0.117 = 1.17"; 1000 x 0.117 is 117. The traffic is 10 GB:
//!    `10 x 0.117 = 1.17`. The fee (1.17) and the total (`560 + 1.17 = 561.17`) are right.
//!
//! The pay-as-you-go example (api.s1.small in Singapore, 9.5 hours and 10 GB:
//! `10 x 0.93 + 10 x 0.117 = 9.3 + 1.17 = 10.47`) is right as written.

pub mod account;
pub mod calls;
pub mod decimal;
pub mod estimate;
pub mod instance;
pub mod subscription;
pub mod time;
pub mod traffic;

pub use account::{
    AccountBilling, AccountState, Event, adjust, check_alerts, pay_upfront, purge_due, recharge,
    set_balance_alert, settle_cycle,
};
pub use calls::{
    CallBreakdown, TierCharge, call_breakdown, daily_call_charge, daily_call_charge_cents,
    free_quota_applies, monthly_call_price,
};
pub use catalog::{Catalog, CatalogError, Usd};
pub use decimal::{Decimal, ParseDecimalError};
pub use estimate::{
    Estimate, EstimateRequest, InstanceDuration, InstanceUsage, LineItem, estimate,
};
pub use instance::{BilledHour, PaygInstance, SpecChange, Stop};
pub use subscription::{Subscription, SubscriptionChange, Term, subscription_price};
pub use time::{Day, Month, Timestamp};
pub use traffic::{
    BYTES_PER_GB, BackendLocation, TrafficKind, backend_traffic_billable, daily_traffic_charge,
    daily_traffic_charge_cents, traffic_amount,
};

/// Why a price or a lifecycle step could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// An unknown region or spec; the message lists the valid names.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("invalid instance history: {0}")]
    InvalidSpecHistory(String),
    #[error("the instance is still running, so its whole-life amount is not known yet")]
    NotReleased,
    #[error("a duration must be more than zero")]
    ZeroDuration,
    #[error("the amount is too large to compute")]
    Overflow,
    #[error("the subscription already has spec {0}")]
    SameSpec(String),
    #[error("{at} is outside the paid term from {start} to {end}")]
    OutsideTerm {
        at: Timestamp,
        start: Timestamp,
        end: Timestamp,
    },
    #[error("invalid amount {0}: bills cannot be negative and recharges must be positive")]
    InvalidAmount(Usd),
    #[error("the balance {balance} does not cover {amount}: recharge first")]
    InsufficientBalance { balance: Usd, amount: Usd },
    #[error("the cycle of {cycle} is already settled (the last settled is {last})")]
    CycleAlreadySettled { cycle: Day, last: Day },
}
