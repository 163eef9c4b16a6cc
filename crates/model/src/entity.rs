//! The entities of the replicated configuration: accounts, instances, API groups and their APIs
//! and deployments, apps and tokens. Plain data; [`crate::State`] keeps them and the commands
//! change them.

use crate::{DomainError, Millis};
use billing::{AccountBilling, BackendLocation};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

/// How a dedicated instance is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChargeType {
    /// Pay-as-you-go, by the started hour.
    Postpaid,
    /// Monthly subscription, paid up front.
    Month,
    /// Annual subscription, paid up front.
    Year,
}

impl ChargeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeType::Postpaid => "postpaid",
            ChargeType::Month => "month",
            ChargeType::Year => "year",
        }
    }
}

/// A release stage an API can be deployed to.
/// A deployment stage, chosen per request by the `X-Ca-Stage` header.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Stage {
    #[default]
    Release,
    Pre,
    Test,
}

impl Stage {
    /// Every stage, in [`index`](Self::index) order.
    pub const ALL: [Stage; 3] = [Stage::Release, Stage::Pre, Stage::Test];

    /// The header spelling: `RELEASE`, `PRE`, `TEST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Release => "RELEASE",
            Stage::Pre => "PRE",
            Stage::Test => "TEST",
        }
    }

    /// The stage's position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses a header value, case-insensitively.
    pub fn from_header(value: &[u8]) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|st| value.eq_ignore_ascii_case(st.as_str().as_bytes()))
    }

    /// Parses `RELEASE`, `PRE` or `TEST` (any case).
    pub fn parse(s: &str) -> Result<Stage, DomainError> {
        Stage::from_header(s.as_bytes()).ok_or_else(|| {
            DomainError::invalid("stage", format!("'{s}' is not one of RELEASE, PRE, TEST"))
        })
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::parse(s)
    }
}

/// A spec an instance had from `at_ms` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecChange {
    pub at_ms: Millis,
    pub spec: String,
}

/// A dedicated instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub spec: String,
    pub region: String,
    pub charge_type: ChargeType,
    pub account: String,
    pub created_at_ms: Millis,
    /// Every spec the instance has had, oldest first; the last is `spec`. Billing prices each
    /// stretch of time at the spec then in force.
    pub spec_history: Vec<SpecChange>,
    /// The end of a subscription's paid term. A term that ends unrenewed stops the instance
    /// (see [`TERM_GRACE_DAYS`]); it never turns into pay-as-you-go.
    pub subscription_end_ms: Option<Millis>,
    /// When the paid span that ends at `subscription_end_ms` started, and its length: what a
    /// mid-term upgrade is prorated over.
    #[serde(default)]
    pub term_start_ms: Option<Millis>,
    #[serde(default)]
    pub term: Option<billing::Term>,
    /// Renew the subscription from the balance when its term ends.
    #[serde(default)]
    pub auto_renew: bool,
    /// The term-end warnings sent for the current term: 1 after the 7-day one, 2 after the
    /// 1-day one.
    #[serde(default)]
    pub term_warnings: u8,
    /// Why and since when the instance is stopped; `None` while it runs.
    #[serde(default)]
    pub stopped: Option<Stopped>,
    /// The stops that bills not closed yet still need, oldest first (only the last may be
    /// open). Older ones are dropped as days close, so this stays short.
    #[serde(default)]
    pub stops: Vec<StopPeriod>,
}

/// How long an instance stopped at the end of its unrenewed term is kept (renewable, with its
/// API groups) before it is released.
pub const TERM_GRACE_DAYS: u32 = 7;

/// Why an instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Its account is suspended for an unpaid bill; the recharge that restores the account
    /// starts it again.
    AccountSuspended,
    /// Its subscription's term ended unrenewed; a renewal starts it again, and it is released
    /// [`TERM_GRACE_DAYS`] after the term's end otherwise.
    TermEnded,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::AccountSuspended => "account_suspended",
            StopReason::TermEnded => "term_ended",
        }
    }
}

/// A stopped instance: its APIs are refused and it accrues nothing, but it keeps its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub since_ms: Millis,
    pub reason: StopReason,
}

/// A stretch of time an instance was stopped: `[from_ms, until_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopPeriod {
    pub from_ms: Millis,
    pub until_ms: Option<Millis>,
}

impl Instance {
    /// Stops the instance at `at_ms`, if it runs.
    pub(crate) fn stop(&mut self, at_ms: Millis, reason: StopReason) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        self.stopped = Some(Stopped {
            since_ms: at_ms,
            reason,
        });
        self.stops.push(StopPeriod {
            from_ms: at_ms,
            until_ms: None,
        });
        true
    }

    /// Starts the instance again at `at_ms`, if it is stopped.
    pub(crate) fn start(&mut self, at_ms: Millis) -> bool {
        if self.stopped.take().is_none() {
            return false;
        }
        if let Some(last) = self.stops.last_mut()
            && last.until_ms.is_none()
        {
            last.until_ms = Some(at_ms.max(last.from_ms));
        }
        true
    }
}

/// Usage of the closed days of the current month: the shared instance's call tiers and the
/// traffic tiers are monthly, so a day's bill depends on what the month used before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthToDate {
    /// The first day (days since 1970-01-01) of the month these counts belong to.
    pub month_first_day: u64,
    pub shared_calls: u64,
    pub bytes_by_region: std::collections::BTreeMap<String, u64>,
    /// Billed backend traffic, by the instance's region.
    #[serde(default)]
    pub backend_bytes_by_region: std::collections::BTreeMap<String, u64>,
}

/// An account: the owner of instances and groups, and the party that is billed. Its ledger,
/// bills and events are history (see [`crate::history`]); the account keeps how far they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub created_at_ms: Millis,
    /// Balance and lifecycle state (active, overdue, suspended, purged).
    pub billing: AccountBilling,
    /// Where events are POSTed (`http://...`), if anywhere.
    pub webhook: Option<String>,
    /// How many ledger entries the account has; the last one's sequence number.
    pub ledger_len: u64,
    /// The sequence number of the account's last event (0: none yet).
    pub last_event_seq: u64,
    /// The webhook has delivered the account's events up to this sequence number.
    pub events_acked: u64,
    /// Usage of the month's closed days, for the monthly tiers.
    pub month_to_date: MonthToDate,
}

impl Account {
    pub(crate) fn new(name: &str, at_ms: Millis) -> Account {
        Account {
            name: name.to_string(),
            created_at_ms: at_ms,
            billing: AccountBilling::new(),
            webhook: None,
            ledger_len: 0,
            last_event_seq: 0,
            events_acked: 0,
            month_to_date: MonthToDate::default(),
        }
    }
}

/// An admin API token that acts for one account. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub account: String,
    /// Lower-case hex SHA-256 of the token's secret part.
    pub secret_sha256: String,
    pub created_at_ms: Millis,
}

/// An API as defined; what is served is its [`Deployment`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Api {
    pub name: String,
    pub spec: ApiSpec,
    pub created_at_ms: Millis,
}

/// An API definition as it was when deployed to a stage: later edits to the API do not reach
/// traffic until it is deployed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: ApiSpec,
    pub deployed_at_ms: Millis,
}

/// A group of APIs sharing a host and/or base path, running on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGroup {
    pub name: String,
    pub account: String,
    /// [`catalog::SHARED_INSTANCE`] or the name of a dedicated instance.
    pub instance: String,
    pub host: Option<String>,
    pub base_path: Option<String>,
    pub created_at_ms: Millis,
    pub apis: OrdMap<String, Api>,
    /// Stage -> API name -> what is deployed there.
    pub deployments: OrdMap<Stage, OrdMap<String, Deployment>>,
    /// API name -> the apps allowed to call it (for APIs whose auth type is APP).
    pub grants: OrdMap<String, OrdSet<String>>,
    /// Client addresses allowed (empty: all) and denied (wins), as CIDRs.
    pub ip_allow: Vec<String>,
    pub ip_deny: Vec<String>,
    /// API name -> that API's own IP access control, checked after the group's: a request
    /// must pass both.
    pub api_acls: OrdMap<String, IpRules>,
    /// `METHOD path-shape` -> the API defined there, so that a clash is found without
    /// scanning the group's APIs.
    pub(crate) api_routes: OrdMap<String, String>,
    /// `STAGE METHOD path-shape` -> the API deployed there.
    pub(crate) deployed_routes: OrdMap<String, String>,
}

impl ApiGroup {
    /// A group of `account` with no instance, route, API, grant or ACL yet.
    pub(crate) fn empty(name: &str, account: &str, now: Millis) -> ApiGroup {
        ApiGroup {
            name: name.to_string(),
            account: account.to_string(),
            instance: String::new(),
            host: None,
            base_path: None,
            created_at_ms: now,
            apis: OrdMap::new(),
            deployments: OrdMap::new(),
            grants: OrdMap::new(),
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            api_acls: OrdMap::new(),
            api_routes: OrdMap::new(),
            deployed_routes: OrdMap::new(),
        }
    }
}

/// Allowed (empty: all) and denied (wins) client addresses, as CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// An app: the identity of a program that calls APIs with signed requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub account: String,
    /// The AppKey, sent in `X-Ca-Key`.
    pub key: String,
    /// The AppSecret. Every node needs it to check signatures (HMAC), so unlike an admin token
    /// it cannot be kept as a hash.
    pub secret: String,
    pub created_at_ms: Millis,
}

/// The window a throttling policy counts calls over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ThrottleUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl ThrottleUnit {
    pub const ALL: [ThrottleUnit; 4] = [
        ThrottleUnit::Second,
        ThrottleUnit::Minute,
        ThrottleUnit::Hour,
        ThrottleUnit::Day,
    ];

    /// `second`, `minute`, `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleUnit::Second => "second",
            ThrottleUnit::Minute => "minute",
            ThrottleUnit::Hour => "hour",
            ThrottleUnit::Day => "day",
        }
    }

    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            ThrottleUnit::Second => 1,
            ThrottleUnit::Minute => 60,
            ThrottleUnit::Hour => 3_600,
            ThrottleUnit::Day => 86_400,
        }
    }

    /// Parses `second`, `minute`, `hour` or `day` (any case).
    pub fn parse(s: &str) -> Result<ThrottleUnit, DomainError> {
        ThrottleUnit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                DomainError::invalid(
                    "unit",
                    format!("'{s}' is not one of second, minute, hour, day"),
                )
            })
    }
}

impl std::fmt::Display for ThrottleUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a throttling policy applies: one API of a group, on one stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ThrottleBinding {
    pub group: String,
    pub api: String,
    pub stage: Stage,
}

/// A throttling policy: how many calls per [`ThrottleUnit`] each API bound to it admits in
/// total (`api_limit`), per calling account (`user_limit`) and per calling app (`app_limit`),
/// cluster-wide. Limits are per bound API and stage: two APIs bound to one policy each get
/// the whole `api_limit`. The user and app limits apply to signed calls (APIs whose auth type
/// is APP), where the gateway knows the app and its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlePolicy {
    pub name: String,
    pub account: String,
    pub unit: ThrottleUnit,
    pub api_limit: u64,
    /// At most `api_limit`.
    pub user_limit: Option<u64>,
    /// At most `user_limit` (or `api_limit` without one).
    pub app_limit: Option<u64>,
    /// AppKey -> that app's own limit, instead of `app_limit`.
    pub special_apps: OrdMap<String, u64>,
    /// Account -> that account's own limit, instead of `user_limit`.
    pub special_accounts: OrdMap<String, u64>,
    pub bindings: OrdSet<ThrottleBinding>,
    pub created_at_ms: Millis,
}

/// An instance released while billed by the hour, kept until its last day is billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedInstance {
    pub instance: Instance,
    pub released_at_ms: Millis,
}

/// The definition of an API as an operator writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSpec {
    /// An HTTP method from [`crate::validate::METHODS`].
    pub method: String,
    /// A path pattern such as `/items/{id}`, matched after the group's base path.
    pub path: String,
    /// Where calls go: one or more `http://HOST:PORT[/prefix]` with weights. Stored under the
    /// name and in the place of the single backend URL it replaced (see [`crate::backends`]).
    #[serde(rename = "backend")]
    pub backends: crate::Backends,
    pub timeout_ms: u64,
    /// Who may call it: anyone, or only authorised apps with signed requests.
    #[serde(default)]
    pub auth: AuthType,
    /// Where the backend is: the bytes read back from one outside the instance's region are
    /// billed as backend traffic.
    #[serde(default)]
    pub backend_location: BackendLocation,
}

/// How an API authenticates its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthType {
    #[default]
    Anonymous,
    /// Requests signed with an authorised app's AppKey and AppSecret (`X-Ca-Signature`).
    App,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Anonymous => "ANONYMOUS",
            AuthType::App => "APP",
        }
    }

    /// `ANONYMOUS` or `APP` (any case); empty is anonymous.
    pub fn parse(s: &str) -> Result<AuthType, crate::DomainError> {
        match s.to_ascii_uppercase().as_str() {
            "" | "ANONYMOUS" => Ok(AuthType::Anonymous),
            "APP" => Ok(AuthType::App),
            _ => Err(crate::DomainError::invalid(
                "auth_type",
                format!("'{s}' is not one of ANONYMOUS, APP"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_case_insensitively() {
        assert_eq!("release".parse::<Stage>(), Ok(Stage::Release));
        assert_eq!("Pre".parse::<Stage>(), Ok(Stage::Pre));
        assert_eq!(Stage::from_header(b"TEST"), Some(Stage::Test));
        assert!("prod".parse::<Stage>().is_err());
        assert_eq!(Stage::from_header(b"RELEASEX"), None);
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(s.as_str().parse::<Stage>(), Ok(s));
            assert_eq!(s.index(), i);
        }
    }
}
