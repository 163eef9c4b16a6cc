use crate::Millis;
use crate::entity::{
    Account, Api, ApiGroup, ApiSpec, ApiToken, App, ChargeType, Deployment, Instance, Stage,
    ThrottlePolicy, ThrottleUnit,
};
use catalog::Usd;
use serde::{Deserialize, Serialize};

/// What goes into the Raft log: a command stamped with the proposer's clock.
///
/// The time travels with the command so that every replica applies the same instant, and the
/// catalog's fingerprint so that every replica prices it the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub at_ms: Millis,
    /// The fingerprint of the proposer's price catalog ([`catalog::Catalog::fingerprint`]):
    /// a node that prices with another catalog must not apply it (see [`crate::State::apply`]).
    #[serde(default)]
    pub catalog: String,
    /// The client request this proposal carries, named by the node that first received it.
    /// A proposal whose request was applied before is answered with the first outcome instead
    /// of being applied again (see [`crate::State::apply`]): a write retried after a lost
    /// reply, or proposed again through a new leader, is applied once.
    #[serde(default)]
    pub request_id: Option<String>,
    pub command: Command,
}

/// What one node counted for one (account, instance, API, region) since its last flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    pub account: String,
    pub instance: String,
    pub api: String,
    pub region: String,
    pub calls: u64,
    /// Bytes of HTTP responses written to clients (status lines, headers, bodies, framing).
    pub bytes_out: u64,
    /// Bytes read back from a backend outside the instance's region (billed backend traffic).
    #[serde(default)]
    pub backend_bytes: u64,
}

/// One record of a node's usage journal: what the node counted of the calls that arrived in
/// one hour (see [`Command::RecordUsageBatches`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    /// Rises with every batch a node journals, across its restarts; each is counted once.
    pub seq: u64,
    /// The hour the calls arrived in, in hours since the Unix epoch (UTC).
    pub hour: u64,
    /// Every call the node received before this hour is in this batch or an earlier one: the
    /// node's counts of the days before it are complete.
    pub open_hour: u64,
    pub deltas: Vec<UsageDelta>,
}

/// How a command changes one optional field. Three cases where `Option<Option<T>>` would make
/// two of them the same once it has been through JSON (the Raft log's encoding writes `None`
/// and `Some(None)` both as `null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update<T> {
    /// Leave the field as it is.
    #[default]
    Keep,
    /// Remove the value.
    Clear,
    Set(T),
}

impl<T: Clone> Update<T> {
    /// The field's value after the update.
    pub fn applied_to(&self, current: Option<T>) -> Option<T> {
        match self {
            Update::Keep => current,
            Update::Clear => None,
            Update::Set(v) => Some(v.clone()),
        }
    }
}

/// Options of a new dedicated instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceOptions {
    /// Renew a subscription's term from the balance when it ends (ignored for pay-as-you-go).
    pub auto_renew: bool,
}

/// A change to an API group; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChange {
    pub instance: Option<String>,
    /// `Some(None)` removes the host.
    pub host: Option<Option<String>>,
    /// `Some(None)` removes the base path.
    pub base_path: Option<Option<String>>,
}

/// Who a special limit of a throttling policy is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialTarget {
    /// An app, by its AppKey.
    App(String),
    Account(String),
}

/// Every change to the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateInstance {
        name: String,
        spec: String,
        region: String,
        charge_type: ChargeType,
        account: String,
    },
    /// [`Command::CreateInstance`] with options. A variant of its own so that the original
    /// command keeps its shape in logs written before the options existed.
    CreateInstanceWith {
        name: String,
        spec: String,
        region: String,
        charge_type: ChargeType,
        account: String,
        options: InstanceOptions,
    },
    ModifyInstanceSpec {
        name: String,
        spec: String,
    },
    /// Pays another subscription term of instance `name` from its account's balance, at the
    /// catalog's price. The term runs on from the end of the paid one, or from now for an
    /// instance stopped at the end of its term (which starts it again).
    RenewInstance {
        name: String,
        term: billing::Term,
    },
    /// Whether a subscription renews itself from the balance at the end of its term.
    SetInstanceAutoRenew {
        name: String,
        auto_renew: bool,
    },
    DeleteInstance {
        name: String,
    },
    CreateApiGroup {
        name: String,
        account: String,
        instance: String,
        host: Option<String>,
        base_path: Option<String>,
    },
    ModifyApiGroup {
        name: String,
        change: GroupChange,
    },
    DeleteApiGroup {
        name: String,
        /// Delete even while APIs are deployed (their traffic then gets 404).
        #[serde(default)]
        force: bool,
    },
    CreateApi {
        group: String,
        name: String,
        spec: ApiSpec,
    },
    ModifyApi {
        group: String,
        name: String,
        spec: ApiSpec,
    },
    DeleteApi {
        group: String,
        name: String,
    },
    DeployApi {
        group: String,
        name: String,
        stage: Stage,
    },
    AbolishApi {
        group: String,
        name: String,
        stage: Stage,
    },
    CreateAccount {
        name: String,
        webhook: Option<String>,
        balance_alert: Option<Usd>,
    },
    Recharge {
        account: String,
        amount: Usd,
    },
    /// Sets, removes or keeps the balance alert threshold and the webhook.
    SetAccountAlert {
        account: String,
        threshold: Update<Usd>,
        webhook: Update<String>,
    },
    /// An operator's correction of an account's balance: a credit (positive) or a debit
    /// (negative), in whole cents, written to the ledger with its reason.
    AdjustBalance {
        account: String,
        amount: Usd,
        reason: String,
    },
    /// A node's usage counts since its last flush. `(node, seq)` is applied at most once, so
    /// a retried flush never counts twice.
    RecordUsage {
        node: u64,
        seq: u64,
        deltas: Vec<UsageDelta>,
    },
    /// Batches from a node's usage journal, in `seq` order. Each batch is counted once (a
    /// batch whose `seq` is not above the last one counted from the node is skipped, so a
    /// replay after a restart or a retried proposal never counts twice), into the day its
    /// calls arrived, or the first open day if that one is billed already.
    RecordUsageBatches {
        node: u64,
        batches: Vec<UsageBatch>,
    },
    /// Bills the daily cycle `day` (days since 1970-01-01, UTC) for every account.
    CloseCycle {
        day: u64,
    },
    /// The webhook has delivered the account's events up to `seq`.
    AckEvents {
        account: String,
        seq: u64,
    },
    /// The leader's webhook deliveries to the account have failed `attempts` times in a row:
    /// an event for the account's owner.
    RecordWebhookFailure {
        account: String,
        attempts: u32,
        error: String,
    },
    /// An admin API token for an account; only the SHA-256 of its secret is kept.
    CreateToken {
        id: String,
        account: String,
        secret_sha256: String,
    },
    RevokeToken {
        id: String,
    },
    /// An app that calls APIs with signed requests. The key and secret are drawn by the node
    /// that took the request (the state machine draws nothing).
    CreateApp {
        name: String,
        account: String,
        key: String,
        secret: String,
    },
    DeleteApp {
        name: String,
    },
    /// Lets `app` call API `group/api` (its auth type must be APP to need it).
    AuthorizeApp {
        group: String,
        api: String,
        app: String,
    },
    RevokeAppAuthorization {
        group: String,
        api: String,
        app: String,
    },
    /// Sets the IP access control of a group, or of one of its APIs: allowed and denied CIDRs
    /// (deny wins; an empty allow list allows everyone not denied). A request must pass both
    /// its group's and its API's.
    SetIpAccessControl {
        group: String,
        /// `None`: the group's own. Empty lists for an API remove its rules.
        #[serde(default)]
        api: Option<String>,
        allow: Vec<String>,
        deny: Vec<String>,
    },
    /// A throttling policy of `account` (see [`ThrottlePolicy`]).
    CreateThrottlePolicy {
        name: String,
        account: String,
        unit: ThrottleUnit,
        api_limit: u64,
        user_limit: Option<u64>,
        app_limit: Option<u64>,
    },
    /// Gives an app or an account its own limit under a policy (`Some`), or takes it away.
    SetThrottleSpecial {
        name: String,
        target: SpecialTarget,
        limit: Option<u64>,
    },
    /// Applies policy `name` to API `group/api` on `stage` (one policy per API and stage).
    BindThrottlePolicy {
        name: String,
        group: String,
        api: String,
        stage: Stage,
    },
    UnbindThrottlePolicy {
        name: String,
        group: String,
        api: String,
        stage: Stage,
    },
    /// Deletes a policy that is bound nowhere.
    DeleteThrottlePolicy {
        name: String,
    },
    /// Makes the API groups match a declarative configuration document, all or nothing (see
    /// [`crate::config`]).
    ApplyConfig {
        desired: crate::config::Document,
        options: crate::config::ApplyOptions,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateInstance { .. } => "CreateInstance",
            Command::CreateInstanceWith { .. } => "CreateInstanceWith",
            Command::ModifyInstanceSpec { .. } => "ModifyInstanceSpec",
            Command::RenewInstance { .. } => "RenewInstance",
            Command::SetInstanceAutoRenew { .. } => "SetInstanceAutoRenew",
            Command::DeleteInstance { .. } => "DeleteInstance",
            Command::CreateApiGroup { .. } => "CreateApiGroup",
            Command::ModifyApiGroup { .. } => "ModifyApiGroup",
            Command::DeleteApiGroup { .. } => "DeleteApiGroup",
            Command::CreateApi { .. } => "CreateApi",
            Command::ModifyApi { .. } => "ModifyApi",
            Command::DeleteApi { .. } => "DeleteApi",
            Command::DeployApi { .. } => "DeployApi",
            Command::AbolishApi { .. } => "AbolishApi",
            Command::CreateAccount { .. } => "CreateAccount",
            Command::Recharge { .. } => "Recharge",
            Command::SetAccountAlert { .. } => "SetAccountAlert",
            Command::AdjustBalance { .. } => "AdjustBalance",
            Command::RecordUsage { .. } => "RecordUsage",
            Command::RecordUsageBatches { .. } => "RecordUsageBatches",
            Command::CloseCycle { .. } => "CloseCycle",
            Command::AckEvents { .. } => "AckEvents",
            Command::RecordWebhookFailure { .. } => "RecordWebhookFailure",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::CreateApp { .. } => "CreateApp",
            Command::DeleteApp { .. } => "DeleteApp",
            Command::AuthorizeApp { .. } => "AuthorizeApp",
            Command::RevokeAppAuthorization { .. } => "RevokeAppAuthorization",
            Command::SetIpAccessControl { .. } => "SetIpAccessControl",
            Command::CreateThrottlePolicy { .. } => "CreateThrottlePolicy",
            Command::SetThrottleSpecial { .. } => "SetThrottleSpecial",
            Command::BindThrottlePolicy { .. } => "BindThrottlePolicy",
            Command::UnbindThrottlePolicy { .. } => "UnbindThrottlePolicy",
            Command::DeleteThrottlePolicy { .. } => "DeleteThrottlePolicy",
            Command::ApplyConfig { .. } => "ApplyConfig",
        }
    }
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Instance(Instance),
    Group(ApiGroup),
    Api {
        group: String,
        api: Api,
    },
    Deployment {
        group: String,
        api: String,
        stage: Stage,
        deployment: Deployment,
    },
    Deleted {
        kind: String,
        name: String,
    },
    Account(Box<Account>),
    UsageRecorded {
        duplicate: bool,
    },
    CycleClosed {
        day: u64,
    },
    Token(ApiToken),
    App(App),
    Throttle(Box<ThrottlePolicy>),
    /// What an [`Command::ApplyConfig`] changed.
    ConfigApplied(crate::config::ApplyReport),
    Done,
}
