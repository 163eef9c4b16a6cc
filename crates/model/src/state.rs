use crate::command::{ApiSpec, Command, GroupChange, Proposal, Reply};
use crate::ledger::{self, Bill, DayUsage, EventRecord, LedgerEntry, ReleasedInstance, ts};
use crate::{DomainError, Millis, validate};
use billing::{AccountBilling, Subscription, SubscriptionChange, Term};
use catalog::{Catalog, SHARED_INSTANCE, Usd};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The account that owns what is created without naming one.
pub const DEFAULT_ACCOUNT: &str = "default";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    Release,
    Pre,
    Test,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Release, Stage::Pre, Stage::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Release => "RELEASE",
            Stage::Pre => "PRE",
            Stage::Test => "TEST",
        }
    }

    /// Parses `RELEASE`, `PRE` or `TEST` (any case).
    pub fn parse(s: &str) -> Result<Stage, DomainError> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                DomainError::invalid("stage", format!("'{s}' is not one of RELEASE, PRE, TEST"))
            })
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
    /// The end of a subscription's paid term; after it the instance is billed by the hour.
    #[serde(default)]
    pub subscription_end_ms: Option<Millis>,
}

/// An account: the owner of instances and groups, and the party that is billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub created_at_ms: Millis,
    /// Balance and lifecycle state (active, overdue, suspended, purged).
    pub billing: AccountBilling,
    /// Where events are POSTed (`http://...`), if anywhere.
    pub webhook: Option<String>,
    /// Every movement of the balance.
    pub ledger: Vec<LedgerEntry>,
    /// The webhook has delivered the account's events up to this sequence number.
    pub events_acked: u64,
}

impl Account {
    fn new(name: &str, at_ms: Millis) -> Account {
        Account {
            name: name.to_string(),
            created_at_ms: at_ms,
            billing: ledger::new_billing(),
            webhook: None,
            ledger: Vec::new(),
            events_acked: 0,
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
    /// [`SHARED_INSTANCE`] or the name of a dedicated instance.
    pub instance: String,
    pub host: Option<String>,
    pub base_path: Option<String>,
    pub created_at_ms: Millis,
    pub apis: BTreeMap<String, Api>,
    /// Stage -> API name -> what is deployed there.
    pub deployments: BTreeMap<Stage, BTreeMap<String, Deployment>>,
    /// API name -> the apps allowed to call it (for APIs whose auth type is APP).
    #[serde(default)]
    pub grants: BTreeMap<String, BTreeSet<String>>,
    /// Client addresses allowed (empty: all) and denied (wins), as CIDRs.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// API name -> that API's own IP access control, checked after the group's: a request
    /// must pass both.
    #[serde(default)]
    pub api_acls: BTreeMap<String, IpRules>,
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

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub accounts: BTreeMap<String, Account>,
    pub instances: BTreeMap<String, Instance>,
    pub groups: BTreeMap<String, ApiGroup>,
    /// Pay-as-you-go instances released but not fully billed yet.
    pub released: Vec<ReleasedInstance>,
    /// Day -> account -> usage.
    pub usage: BTreeMap<u64, BTreeMap<String, DayUsage>>,
    /// The last usage flush applied from each node.
    pub usage_seq: BTreeMap<u64, u64>,
    /// Account -> its bills, oldest first.
    pub bills: BTreeMap<String, Vec<Bill>>,
    pub events: Vec<EventRecord>,
    pub next_event_seq: u64,
    pub last_closed_day: Option<u64>,
    /// When the first proposal was applied: the first daily cycle is that day's.
    pub genesis_ms: Option<Millis>,
    /// Account tokens of the admin API, by id.
    pub tokens: BTreeMap<String, ApiToken>,
    /// Apps, by name.
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
}

impl Default for State {
    fn default() -> Self {
        let mut accounts = BTreeMap::new();
        accounts.insert(
            DEFAULT_ACCOUNT.to_string(),
            Account::new(DEFAULT_ACCOUNT, 0),
        );
        State {
            accounts,
            instances: BTreeMap::new(),
            groups: BTreeMap::new(),
            released: Vec::new(),
            usage: BTreeMap::new(),
            usage_seq: BTreeMap::new(),
            bills: BTreeMap::new(),
            events: Vec::new(),
            next_event_seq: 0,
            last_closed_day: None,
            genesis_ms: None,
            tokens: BTreeMap::new(),
            apps: BTreeMap::new(),
        }
    }
}

impl State {
    /// Applies one proposal. On error nothing has changed.
    pub fn apply(&mut self, p: &Proposal, catalog: &Catalog) -> Result<Reply, DomainError> {
        let reply = self.apply_command(p, catalog)?;
        if self.genesis_ms.is_none() {
            // The first command to succeed starts the first daily cycle, and the default
            // account's first year.
            self.genesis_ms = Some(p.at_ms);
            if let Some(a) = self.accounts.get_mut(DEFAULT_ACCOUNT)
                && a.created_at_ms == 0
            {
                a.created_at_ms = p.at_ms;
            }
        }
        Ok(reply)
    }

    fn apply_command(&mut self, p: &Proposal, catalog: &Catalog) -> Result<Reply, DomainError> {
        let now = p.at_ms;
        match &p.command {
            Command::CreateInstance {
                name,
                spec,
                region,
                charge_type,
                account,
            } => {
                validate::name("name", name)?;
                if name == SHARED_INSTANCE {
                    return Err(DomainError::invalid(
                        "name",
                        format!("'{SHARED_INSTANCE}' is the built-in shared instance"),
                    ));
                }
                check_spec(catalog, spec)?;
                catalog
                    .region(region)
                    .map_err(|e| DomainError::invalid("region", e.to_string()))?;
                self.account(account)?;
                if self.instances.contains_key(name) {
                    return Err(DomainError::already_exists("instance", name));
                }
                let term = match charge_type {
                    ChargeType::Postpaid => None,
                    ChargeType::Month => Some(Term::Months(1)),
                    ChargeType::Year => Some(Term::Years(1)),
                };
                let mut subscription_end_ms = None;
                if let Some(term) = term {
                    let sub = Subscription {
                        region: region.clone(),
                        spec: spec.clone(),
                        term,
                        start: ts(now),
                    };
                    let price = sub
                        .price(catalog)
                        .map_err(|e| DomainError::invalid("spec", e.to_string()))?;
                    let paid =
                        billing::pay_upfront(&self.accounts[account].billing, price, ts(now))
                            .map_err(|e| {
                                DomainError::FailedPrecondition(format!("account '{account}': {e}"))
                            })?;
                    self.book(account, now, format!("subscription {name}"), -price, paid);
                    subscription_end_ms = Some(sub.end().unix_secs() * 1000);
                }
                let inst = Instance {
                    name: name.clone(),
                    spec: spec.clone(),
                    region: region.clone(),
                    charge_type: *charge_type,
                    account: account.clone(),
                    created_at_ms: now,
                    spec_history: vec![SpecChange {
                        at_ms: now,
                        spec: spec.clone(),
                    }],
                    subscription_end_ms,
                };
                self.instances.insert(name.clone(), inst.clone());
                Ok(Reply::Instance(inst))
            }
            Command::ModifyInstanceSpec { name, spec } => {
                check_spec(catalog, spec)?;
                let inst = self
                    .instances
                    .get(name)
                    .ok_or_else(|| DomainError::not_found("instance", name))?;
                if let Some(charge) = self.upgrade_charge(inst, spec, now, catalog)? {
                    let account = inst.account.clone();
                    let paid = billing::pay_upfront(
                        &self.accounts[&account].billing,
                        charge,
                        ts(now),
                    )
                    .map_err(|e| {
                        DomainError::FailedPrecondition(format!(
                            "account '{account}': upgrading the subscription costs {charge}: {e}"
                        ))
                    })?;
                    self.book(
                        &account,
                        now,
                        format!("upgrade {name} to {spec}"),
                        -charge,
                        paid,
                    );
                }
                let inst = self.instances.get_mut(name).expect("checked above");
                if inst.spec != *spec {
                    inst.spec = spec.clone();
                    inst.spec_history.push(SpecChange {
                        at_ms: now,
                        spec: spec.clone(),
                    });
                }
                Ok(Reply::Instance(inst.clone()))
            }
            Command::DeleteInstance { name } => {
                if !self.instances.contains_key(name) {
                    return Err(DomainError::not_found("instance", name));
                }
                let hosted: Vec<&str> = self
                    .groups
                    .values()
                    .filter(|g| g.instance == *name)
                    .map(|g| g.name.as_str())
                    .collect();
                if !hosted.is_empty() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "instance '{name}' still hosts API groups {}; move them to another instance first",
                        hosted.join(", ")
                    )));
                }
                let inst = self.instances.remove(name).expect("checked above");
                // Kept until its last hours are billed.
                self.released.push(ReleasedInstance {
                    instance: inst,
                    released_at_ms: now,
                });
                Ok(deleted("instance", name))
            }
            Command::CreateApiGroup {
                name,
                account,
                instance,
                host,
                base_path,
            } => {
                validate::name("name", name)?;
                self.account(account)?;
                self.check_instance_ref(instance, account)?;
                check_route_fields(host.as_deref(), base_path.as_deref())?;
                if self.groups.contains_key(name) {
                    return Err(DomainError::already_exists("API group", name));
                }
                self.check_route_free(name, host, base_path)?;
                let g = ApiGroup {
                    name: name.clone(),
                    account: account.clone(),
                    instance: instance.clone(),
                    host: host.clone(),
                    base_path: base_path.clone(),
                    created_at_ms: now,
                    apis: BTreeMap::new(),
                    deployments: BTreeMap::new(),
                    grants: BTreeMap::new(),
                    ip_allow: Vec::new(),
                    ip_deny: Vec::new(),
                    api_acls: BTreeMap::new(),
                };
                self.groups.insert(name.clone(), g.clone());
                Ok(Reply::Group(g))
            }
            Command::ModifyApiGroup { name, change } => {
                let g = self.group(name)?;
                let GroupChange {
                    instance,
                    host,
                    base_path,
                } = change;
                let instance = instance.clone().unwrap_or_else(|| g.instance.clone());
                let host = host.clone().unwrap_or_else(|| g.host.clone());
                let base_path = base_path.clone().unwrap_or_else(|| g.base_path.clone());
                self.check_instance_ref(&instance, &g.account)?;
                check_route_fields(host.as_deref(), base_path.as_deref())?;
                self.check_route_free(name, &host, &base_path)?;
                let g = self.groups.get_mut(name).expect("checked above");
                g.instance = instance;
                g.host = host;
                g.base_path = base_path;
                Ok(Reply::Group(g.clone()))
            }
            Command::DeleteApiGroup { name } => {
                self.group(name)?;
                self.groups.remove(name);
                Ok(deleted("API group", name))
            }
            Command::CreateApi { group, name, spec } => {
                validate::name("name", name)?;
                check_api_spec(spec)?;
                let g = self.group(group)?;
                if g.apis.contains_key(name) {
                    return Err(DomainError::already_exists(
                        "API",
                        &format!("{group}/{name}"),
                    ));
                }
                check_api_route_free(g, name, spec)?;
                let api = Api {
                    name: name.clone(),
                    spec: spec.clone(),
                    created_at_ms: now,
                };
                let g = self.groups.get_mut(group).expect("checked above");
                g.apis.insert(name.clone(), api.clone());
                Ok(Reply::Api {
                    group: group.clone(),
                    api,
                })
            }
            Command::ModifyApi { group, name, spec } => {
                check_api_spec(spec)?;
                let g = self.group(group)?;
                if !g.apis.contains_key(name) {
                    return Err(DomainError::not_found("API", &format!("{group}/{name}")));
                }
                check_api_route_free(g, name, spec)?;
                let g = self.groups.get_mut(group).expect("checked above");
                let api = g.apis.get_mut(name).expect("checked above");
                api.spec = spec.clone();
                Ok(Reply::Api {
                    group: group.clone(),
                    api: api.clone(),
                })
            }
            Command::DeleteApi { group, name } => {
                let g = self.group(group)?;
                if !g.apis.contains_key(name) {
                    return Err(DomainError::not_found("API", &format!("{group}/{name}")));
                }
                let deployed: Vec<&str> = g
                    .deployments
                    .iter()
                    .filter(|(_, apis)| apis.contains_key(name))
                    .map(|(st, _)| st.as_str())
                    .collect();
                if !deployed.is_empty() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "API '{group}/{name}' is deployed to {}; abolish it there first",
                        deployed.join(", ")
                    )));
                }
                let g = self.groups.get_mut(group).expect("checked above");
                g.apis.remove(name);
                // A new API of the same name starts without the old one's permissions.
                g.grants.remove(name);
                g.api_acls.remove(name);
                Ok(deleted("API", &format!("{group}/{name}")))
            }
            Command::DeployApi { group, name, stage } => {
                let g = self.group(group)?;
                let api = g
                    .apis
                    .get(name)
                    .ok_or_else(|| DomainError::not_found("API", &format!("{group}/{name}")))?;
                // Another API deployed at the same method and path on this stage would shadow it.
                let clash = g.deployments.get(stage).and_then(|d| {
                    d.iter()
                        .find(|(other, dep)| *other != name && same_route(&dep.spec, &api.spec))
                });
                if let Some((other, _)) = clash {
                    return Err(DomainError::FailedPrecondition(format!(
                        "API '{group}/{other}' is already deployed to {} at {} {}",
                        stage.as_str(),
                        api.spec.method,
                        api.spec.path
                    )));
                }
                let deployment = Deployment {
                    spec: api.spec.clone(),
                    deployed_at_ms: now,
                };
                let g = self.groups.get_mut(group).expect("checked above");
                g.deployments
                    .entry(*stage)
                    .or_default()
                    .insert(name.clone(), deployment.clone());
                Ok(Reply::Deployment {
                    group: group.clone(),
                    api: name.clone(),
                    stage: *stage,
                    deployment,
                })
            }
            Command::AbolishApi { group, name, stage } => {
                let g = self.group(group)?;
                if !g.apis.contains_key(name) {
                    return Err(DomainError::not_found("API", &format!("{group}/{name}")));
                }
                let is_deployed = g
                    .deployments
                    .get(stage)
                    .is_some_and(|d| d.contains_key(name));
                if !is_deployed {
                    return Err(DomainError::FailedPrecondition(format!(
                        "API '{group}/{name}' is not deployed to {}",
                        stage.as_str()
                    )));
                }
                let g = self.groups.get_mut(group).expect("checked above");
                let stage_map = g.deployments.get_mut(stage).expect("checked above");
                stage_map.remove(name);
                if stage_map.is_empty() {
                    g.deployments.remove(stage);
                }
                Ok(deleted(
                    "deployment",
                    &format!("{group}/{name}@{}", stage.as_str()),
                ))
            }
            Command::CreateAccount {
                name,
                webhook,
                balance_alert,
            } => {
                validate::name("name", name)?;
                if let Some(w) = webhook {
                    validate::webhook(w)?;
                }
                if balance_alert.is_some_and(|t| t < Usd::ZERO) {
                    return Err(DomainError::invalid("threshold", "must not be negative"));
                }
                if self.accounts.contains_key(name) {
                    return Err(DomainError::already_exists("account", name));
                }
                let mut acct = Account::new(name, now);
                acct.webhook = webhook.clone();
                acct.billing = billing::set_balance_alert(&acct.billing, *balance_alert).0;
                self.accounts.insert(name.clone(), acct.clone());
                Ok(Reply::Account(Box::new(acct)))
            }
            Command::Recharge { account, amount } => {
                if *amount <= Usd::ZERO {
                    return Err(DomainError::invalid(
                        "amount",
                        format!("{amount} must be more than 0"),
                    ));
                }
                let acct = self.account(account)?;
                let outcome = billing::recharge(&acct.billing, *amount, ts(now))
                    .map_err(|e| DomainError::invalid("amount", e.to_string()))?;
                self.book(account, now, "recharge".into(), *amount, outcome);
                Ok(Reply::Account(Box::new(self.accounts[account].clone())))
            }
            Command::SetAccountAlert {
                account,
                threshold,
                webhook,
            } => {
                if let Some(Some(w)) = webhook {
                    validate::webhook(w)?;
                }
                if threshold.is_some_and(|t| t < Usd::ZERO) {
                    return Err(DomainError::invalid("threshold", "must not be negative"));
                }
                let acct = self.account(account)?;
                let (b, events) = billing::set_balance_alert(&acct.billing, *threshold);
                let acct = self.accounts.get_mut(account).expect("checked above");
                acct.billing = b;
                if let Some(w) = webhook {
                    acct.webhook = w.clone();
                }
                self.push_events(account, now, events);
                Ok(Reply::Account(Box::new(self.accounts[account].clone())))
            }
            Command::RecordUsage { node, seq, deltas } => {
                self.record_usage(*node, *seq, deltas, now)
            }
            Command::CloseCycle { day } => self.close_cycle(*day, now, catalog),
            Command::CreateToken {
                id,
                account,
                secret_sha256,
            } => {
                let hex = |v: &str, len: std::ops::RangeInclusive<usize>| {
                    len.contains(&v.len())
                        && v.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                };
                if !hex(id, 8..=64) {
                    return Err(DomainError::invalid(
                        "id",
                        "must be 8 to 64 lower-case hex digits",
                    ));
                }
                if !hex(secret_sha256, 64..=64) {
                    return Err(DomainError::invalid(
                        "secret_sha256",
                        "must be 64 lower-case hex digits",
                    ));
                }
                self.account(account)?;
                if self.tokens.contains_key(id) {
                    return Err(DomainError::already_exists("token", id));
                }
                let token = ApiToken {
                    id: id.clone(),
                    account: account.clone(),
                    secret_sha256: secret_sha256.clone(),
                    created_at_ms: now,
                };
                self.tokens.insert(id.clone(), token.clone());
                Ok(Reply::Token(token))
            }
            Command::RevokeToken { id } => {
                if self.tokens.remove(id).is_none() {
                    return Err(DomainError::not_found("token", id));
                }
                Ok(deleted("token", id))
            }
            Command::CreateApp {
                name,
                account,
                key,
                secret,
            } => {
                validate::name("name", name)?;
                self.account(account)?;
                if key.len() < 8 || secret.len() < 16 {
                    return Err(DomainError::invalid(
                        "key",
                        "app keys and secrets are too short",
                    ));
                }
                if self.apps.contains_key(name) {
                    return Err(DomainError::already_exists("app", name));
                }
                if self.apps.values().any(|a| a.key == *key) {
                    return Err(DomainError::already_exists("app key", key));
                }
                let app = App {
                    name: name.clone(),
                    account: account.clone(),
                    key: key.clone(),
                    secret: secret.clone(),
                    created_at_ms: now,
                };
                self.apps.insert(name.clone(), app.clone());
                Ok(Reply::App(app))
            }
            Command::DeleteApp { name } => {
                if self.apps.remove(name).is_none() {
                    return Err(DomainError::not_found("app", name));
                }
                for g in self.groups.values_mut() {
                    for apps in g.grants.values_mut() {
                        apps.remove(name);
                    }
                    g.grants.retain(|_, apps| !apps.is_empty());
                }
                Ok(deleted("app", name))
            }
            Command::AuthorizeApp { group, api, app } => {
                let g = self.group(group)?;
                if !g.apis.contains_key(api) {
                    return Err(DomainError::not_found("API", &format!("{group}/{api}")));
                }
                let a = self
                    .apps
                    .get(app)
                    .ok_or_else(|| DomainError::not_found("app", app))?;
                if a.account != g.account {
                    return Err(DomainError::invalid(
                        "app",
                        format!("app '{app}' belongs to another account than API group '{group}'"),
                    ));
                }
                let g = self.groups.get_mut(group).expect("checked above");
                g.grants.entry(api.clone()).or_default().insert(app.clone());
                Ok(Reply::Group(g.clone()))
            }
            Command::RevokeAppAuthorization { group, api, app } => {
                let g = self.group(group)?;
                if !g.grants.get(api).is_some_and(|apps| apps.contains(app)) {
                    return Err(DomainError::not_found(
                        "authorization",
                        &format!("{app} on {group}/{api}"),
                    ));
                }
                let g = self.groups.get_mut(group).expect("checked above");
                let apps = g.grants.get_mut(api).expect("checked above");
                apps.remove(app);
                if apps.is_empty() {
                    g.grants.remove(api);
                }
                Ok(Reply::Group(g.clone()))
            }
            Command::SetIpAccessControl {
                group,
                api,
                allow,
                deny,
            } => {
                for c in allow {
                    validate::cidr("allow", c)?;
                }
                for c in deny {
                    validate::cidr("deny", c)?;
                }
                let g = self.group(group)?;
                if let Some(api) = api
                    && !g.apis.contains_key(api)
                {
                    return Err(DomainError::not_found("API", &format!("{group}/{api}")));
                }
                let g = self.groups.get_mut(group).expect("checked above");
                match api {
                    None => {
                        g.ip_allow = allow.clone();
                        g.ip_deny = deny.clone();
                    }
                    Some(api) if allow.is_empty() && deny.is_empty() => {
                        g.api_acls.remove(api);
                    }
                    Some(api) => {
                        let rules = IpRules {
                            allow: allow.clone(),
                            deny: deny.clone(),
                        };
                        g.api_acls.insert(api.clone(), rules);
                    }
                }
                Ok(Reply::Group(g.clone()))
            }
            Command::AckEvents { account, seq } => {
                self.account(account)?;
                let acct = self.accounts.get_mut(account).expect("checked above");
                acct.events_acked = acct.events_acked.max(*seq);
                Ok(Reply::Done)
            }
        }
    }

    /// What upgrading a subscription instance to `spec` costs now, if anything. Downgrades
    /// and changes after the paid term cost nothing here (see the README).
    fn upgrade_charge(
        &self,
        inst: &Instance,
        spec: &str,
        now: Millis,
        catalog: &Catalog,
    ) -> Result<Option<Usd>, DomainError> {
        let term = match inst.charge_type {
            ChargeType::Postpaid => return Ok(None),
            ChargeType::Month => Term::Months(1),
            ChargeType::Year => Term::Years(1),
        };
        if inst.spec == spec || inst.subscription_end_ms.is_none_or(|end| now >= end) {
            return Ok(None);
        }
        let sub = Subscription {
            region: inst.region.clone(),
            spec: inst.spec.clone(),
            term,
            start: ts(inst.created_at_ms),
        };
        match sub.change_spec(catalog, spec, ts(now)) {
            Ok(SubscriptionChange::Upgrade { charge, .. }) => Ok(Some(charge)),
            Ok(SubscriptionChange::AtRenewal { .. }) => Ok(None),
            Err(e) => Err(DomainError::FailedPrecondition(e.to_string())),
        }
    }

    fn account(&self, name: &str) -> Result<&Account, DomainError> {
        self.accounts
            .get(name)
            .ok_or_else(|| DomainError::not_found("account", name))
    }

    fn group(&self, name: &str) -> Result<&ApiGroup, DomainError> {
        self.groups
            .get(name)
            .ok_or_else(|| DomainError::not_found("API group", name))
    }

    /// A group may run on the shared instance or on a dedicated instance of its own account.
    fn check_instance_ref(&self, instance: &str, account: &str) -> Result<(), DomainError> {
        if instance == SHARED_INSTANCE {
            return Ok(());
        }
        let inst = self.instances.get(instance).ok_or_else(|| {
            DomainError::invalid(
                "instance",
                format!(
                    "'{instance}' is neither '{SHARED_INSTANCE}' nor an existing dedicated instance"
                ),
            )
        })?;
        if inst.account != account {
            return Err(DomainError::invalid(
                "instance",
                format!("'{instance}' belongs to another account"),
            ));
        }
        Ok(())
    }

    /// Two groups may not answer to the same host and base path: requests could not be told apart.
    fn check_route_free(
        &self,
        name: &str,
        host: &Option<String>,
        base_path: &Option<String>,
    ) -> Result<(), DomainError> {
        let taken = self
            .groups
            .values()
            .find(|g| g.name != name && g.host == *host && g.base_path == *base_path);
        match taken {
            Some(g) => Err(DomainError::FailedPrecondition(format!(
                "API group '{}' already serves host {} and base path {}",
                g.name,
                host.as_deref().unwrap_or("(any)"),
                base_path.as_deref().unwrap_or("(none)")
            ))),
            None => Ok(()),
        }
    }
}

fn deleted(kind: &str, name: &str) -> Reply {
    Reply::Deleted {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

fn check_spec(catalog: &Catalog, spec: &str) -> Result<(), DomainError> {
    catalog
        .spec(spec)
        .map(|_| ())
        .map_err(|e| DomainError::invalid("spec", e.to_string()))
}

fn check_route_fields(host: Option<&str>, base_path: Option<&str>) -> Result<(), DomainError> {
    if let Some(h) = host {
        validate::host(h)?;
    }
    if let Some(b) = base_path {
        validate::base_path(b)?;
    }
    Ok(())
}

fn check_api_spec(spec: &ApiSpec) -> Result<(), DomainError> {
    validate::method(&spec.method)?;
    validate::api_path(&spec.path)?;
    validate::backend(&spec.backend)?;
    validate::timeout_ms(spec.timeout_ms)
}

/// Two API definitions that a router could not tell apart: same method, same path shape.
fn same_route(a: &ApiSpec, b: &ApiSpec) -> bool {
    a.method == b.method && path_shape(&a.path) == path_shape(&b.path)
}

/// The path with parameter names erased: `/a/{id}` and `/a/{x}` have the same shape.
fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix("{*") {
            Some(_) => "{*}",
            None if seg.starts_with('{') => "{}",
            None => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn check_api_route_free(g: &ApiGroup, name: &str, spec: &ApiSpec) -> Result<(), DomainError> {
    match g
        .apis
        .values()
        .find(|a| a.name != name && same_route(&a.spec, spec))
    {
        Some(other) => Err(DomainError::FailedPrecondition(format!(
            "API '{}/{}' already serves {} {}",
            g.name, other.name, spec.method, spec.path
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
