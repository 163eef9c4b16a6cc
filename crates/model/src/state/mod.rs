//! The replicated configuration, and [`State::apply`], which dispatches each command to the
//! handler module of its family.
//!
//! Every map is an `imbl` persistent map: cloning the state is O(1) (a reference count per
//! map) and changing one entry copies O(log n) of it. That is what lets a node publish a new
//! state to its readers after every applied batch without copying what did not change, and
//! what makes `apply` all-or-nothing by construction: a handler works on a clone and the clone
//! replaces the state only if the handler succeeds.

mod accounts;
mod apps;
mod config;
mod cycle;
mod groups;
mod instances;
mod throttles;
mod usage;

#[cfg(test)]
mod tests;

use crate::command::{Command, Proposal, Reply};
use crate::entity::{
    Account, Api, ApiGroup, ApiToken, App, ChargeType, Deployment, Instance, IpRules, MonthToDate,
    ReleasedInstance, SpecChange, Stage, StopReason, Stopped, TERM_GRACE_DAYS, ThrottlePolicy,
};
use crate::history::{DayUsage, EventRecord, HistoryCut, HistoryRecord, LedgerEntry};
use crate::{DomainError, Millis};
use billing::{AccountBilling, Event, Timestamp};
use catalog::Catalog;
use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The account that owns what is created without naming one.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The names of what a command changed, for the data plane to recompile just that. A name
/// that no longer exists in the state was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub instances: BTreeSet<String>,
    pub groups: BTreeSet<String>,
    /// Accounts whose API calls started or stopped being served.
    pub accounts: BTreeSet<String>,
    pub apps: BTreeSet<String>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.groups.is_empty()
            && self.accounts.is_empty()
            && self.apps.is_empty()
    }

    /// Adds what `other` names.
    pub fn merge(&mut self, other: ChangeSet) {
        self.instances.extend(other.instances);
        self.groups.extend(other.groups);
        self.accounts.extend(other.accounts);
        self.apps.extend(other.apps);
    }
}

/// What applying one proposal did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub reply: Result<Reply, DomainError>,
    /// Empty when the command was refused.
    pub changes: ChangeSet,
    /// The history records the command wrote, in order; empty when it was refused.
    pub history: Vec<HistoryRecord>,
}

/// What a handler accumulates besides its reply.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) changes: ChangeSet,
    pub(crate) history: Vec<HistoryRecord>,
}

/// The replicated configuration: everything a node needs to serve and to bill, and nothing
/// that only grows with time (see [`crate::history`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub accounts: OrdMap<String, Account>,
    pub instances: OrdMap<String, Instance>,
    pub groups: OrdMap<String, ApiGroup>,
    /// Pay-as-you-go instances released but not fully billed yet.
    pub released: Vector<ReleasedInstance>,
    /// Usage of the days not closed yet: day -> account -> usage.
    pub usage: OrdMap<u64, OrdMap<String, DayUsage>>,
    /// The last usage flush applied from each node.
    pub usage_seq: OrdMap<u64, u64>,
    /// For each node, the hour before which all its usage is counted (the highest
    /// [`crate::UsageBatch::open_hour`] applied from it): a day can be billed once every node
    /// is past it.
    #[serde(default)]
    pub usage_open_hour: OrdMap<u64, u64>,
    /// The last event's sequence number (events are numbered across the cluster).
    pub last_event_seq: u64,
    pub last_closed_day: Option<u64>,
    /// When the first proposal was applied: the first daily cycle is that day's.
    pub genesis_ms: Option<Millis>,
    /// The latest proposal time applied. A new leader's clock may be behind the old one's;
    /// time in the state never goes backwards (see [`State::apply`]).
    pub clock_ms: Millis,
    /// The fingerprint of the price catalog the state is billed with
    /// ([`Catalog::fingerprint`]), from the last proposal applied.
    pub catalog: Option<String>,
    /// Account tokens of the admin API, by id.
    pub tokens: OrdMap<String, ApiToken>,
    /// Apps, by name.
    pub apps: OrdMap<String, App>,
    /// Throttling policies, by name.
    #[serde(default)]
    pub throttles: OrdMap<String, ThrottlePolicy>,
    /// The outcomes of recent client requests.
    pub sessions: Sessions,
    /// Indexes, so that no command scans a whole map.
    pub(crate) index: Indexes,
}

/// How many client requests' outcomes the state remembers. A retry comes seconds after its
/// first attempt; at thousands of writes a second this still covers minutes.
pub const REMEMBERED_REQUESTS: usize = 100_000;

/// The outcomes of the last [`REMEMBERED_REQUESTS`] client requests, by request id: the
/// state-machine half of exactly-once writes (the Raft dissertation's client sessions, keyed
/// by a request id instead of a client and sequence). Replicated and snapshotted with the rest
/// of the state, so every node answers a repeat the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sessions {
    by_id: OrdMap<String, (u64, Result<Reply, DomainError>)>,
    /// Application order -> request id, to forget the oldest first.
    order: OrdMap<u64, String>,
    next: u64,
}

impl Sessions {
    /// The outcome of `id`, if it was applied and is still remembered.
    pub fn outcome(&self, id: &str) -> Option<&Result<Reply, DomainError>> {
        self.by_id.get(id).map(|(_, outcome)| outcome)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn remember(&mut self, id: &str, outcome: Result<Reply, DomainError>) {
        self.next += 1;
        self.by_id.insert(id.to_string(), (self.next, outcome));
        self.order.insert(self.next, id.to_string());
        while self.by_id.len() > REMEMBERED_REQUESTS {
            let Some((seq, oldest)) = self.order.get_min().cloned() else {
                break;
            };
            self.order.remove(&seq);
            self.by_id.remove(&oldest);
        }
    }
}

/// Derived lookups, kept in step by the handlers (and checked against a rebuild in tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Indexes {
    /// [`route_of`] (host, base path) -> the group serving it.
    pub(crate) routes: OrdMap<String, String>,
    /// Account -> its groups.
    pub(crate) groups_by_account: OrdMap<String, OrdSet<String>>,
    /// Instance -> the groups it hosts.
    pub(crate) groups_by_instance: OrdMap<String, OrdSet<String>>,
    /// Account -> its dedicated instances.
    pub(crate) instances_by_account: OrdMap<String, OrdSet<String>>,
    /// AppKey -> app name.
    pub(crate) app_keys: OrdMap<String, String>,
    /// App -> the (group, API) pairs it is authorised on.
    pub(crate) grants_by_app: OrdMap<String, OrdSet<(String, String)>>,
    /// Group -> stage -> API -> the throttling policy bound there.
    #[serde(default)]
    pub(crate) throttle_bindings: OrdMap<String, OrdMap<Stage, OrdMap<String, String>>>,
}

impl Default for State {
    fn default() -> Self {
        let mut accounts = OrdMap::new();
        accounts.insert(
            DEFAULT_ACCOUNT.to_string(),
            Account::new(DEFAULT_ACCOUNT, 0),
        );
        State {
            accounts,
            instances: OrdMap::new(),
            groups: OrdMap::new(),
            released: Vector::new(),
            usage: OrdMap::new(),
            usage_seq: OrdMap::new(),
            usage_open_hour: OrdMap::new(),
            last_event_seq: 0,
            last_closed_day: None,
            genesis_ms: None,
            clock_ms: 0,
            catalog: None,
            tokens: OrdMap::new(),
            apps: OrdMap::new(),
            throttles: OrdMap::new(),
            sessions: Sessions::default(),
            index: Indexes::default(),
        }
    }
}

/// The state machine cannot go on: replicas would diverge if it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node prices with catalog {local}, but the cluster's state and proposals use catalog {replicated}; start every node with the same catalog (--catalog)"
)]
pub struct CatalogMismatch {
    pub local: String,
    pub replicated: String,
}

impl State {
    /// Refuses a catalog other than the one the state was built with.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), CatalogMismatch> {
        match &self.catalog {
            Some(replicated) => check_fingerprint(replicated, catalog),
            None => Ok(()),
        }
    }

    /// Applies one proposal. A refused command changes nothing; so does a proposal made with
    /// another price catalog than this node's, which gets `Err` (the caller must stop
    /// applying: it would bill differently from the nodes that share the proposer's catalog).
    ///
    /// Time: the proposal carries the proposer's clock, but a new leader's clock may be behind
    /// the last one's, so the time applied is never earlier than the latest applied before.
    ///
    /// A proposal whose `request_id` was applied before (and is still remembered) changes
    /// nothing and gets the first outcome again.
    pub fn apply(&mut self, p: &Proposal, catalog: &Catalog) -> Result<Applied, CatalogMismatch> {
        check_fingerprint(&p.catalog, catalog)?;
        if let Some(outcome) = p
            .request_id
            .as_deref()
            .and_then(|id| self.sessions.outcome(id))
        {
            return Ok(Applied {
                reply: outcome.clone(),
                changes: ChangeSet::default(),
                history: Vec::new(),
            });
        }
        let now = p.at_ms.max(self.clock_ms);
        let mut next = self.clone();
        let mut fx = Effects::default();
        match next.dispatch(&p.command, now, catalog, &mut fx) {
            Ok(reply) => {
                next.clock_ms = now;
                if next.catalog.as_deref() != Some(catalog.fingerprint()) {
                    next.catalog = Some(catalog.fingerprint().to_string());
                }
                if next.genesis_ms.is_none() {
                    // The first command to succeed starts the first daily cycle, the default
                    // account's first year.
                    next.genesis_ms = Some(now);
                    if let Some(a) = next.accounts.get_mut(DEFAULT_ACCOUNT)
                        && a.created_at_ms == 0
                    {
                        a.created_at_ms = now;
                    }
                }
                if let Some(id) = &p.request_id {
                    next.sessions.remember(id, Ok(reply.clone()));
                }
                *self = next;
                Ok(Applied {
                    reply: Ok(reply),
                    changes: fx.changes,
                    history: fx.history,
                })
            }
            Err(e) => {
                // A refusal is an outcome too: the retry of a refused write is refused the
                // same way, even if the state has changed since so that it would pass now.
                if let Some(id) = &p.request_id {
                    self.sessions.remember(id, Err(e.clone()));
                }
                Ok(Applied {
                    reply: Err(e),
                    changes: ChangeSet::default(),
                    history: Vec::new(),
                })
            }
        }
    }

    fn dispatch(
        &mut self,
        command: &Command,
        now: Millis,
        catalog: &Catalog,
        fx: &mut Effects,
    ) -> Result<Reply, DomainError> {
        use Command as C;
        match command {
            C::CreateInstance { .. }
            | C::CreateInstanceWith { .. }
            | C::ModifyInstanceSpec { .. }
            | C::DeleteInstance { .. }
            | C::RenewInstance { .. }
            | C::SetInstanceAutoRenew { .. } => instances::apply(self, command, now, catalog, fx),
            C::CreateApiGroup { .. }
            | C::ModifyApiGroup { .. }
            | C::DeleteApiGroup { .. }
            | C::CreateApi { .. }
            | C::ModifyApi { .. }
            | C::DeleteApi { .. }
            | C::DeployApi { .. }
            | C::AbolishApi { .. }
            | C::SetIpAccessControl { .. } => groups::apply(self, command, now, catalog, fx),
            C::CreateAccount { .. }
            | C::Recharge { .. }
            | C::SetAccountAlert { .. }
            | C::AdjustBalance { .. }
            | C::AckEvents { .. }
            | C::RecordWebhookFailure { .. }
            | C::CreateToken { .. }
            | C::RevokeToken { .. } => accounts::apply(self, command, now, fx),
            C::CreateApp { .. }
            | C::DeleteApp { .. }
            | C::AuthorizeApp { .. }
            | C::RevokeAppAuthorization { .. } => apps::apply(self, command, now, fx),
            C::CreateThrottlePolicy { .. }
            | C::SetThrottleSpecial { .. }
            | C::BindThrottlePolicy { .. }
            | C::UnbindThrottlePolicy { .. }
            | C::DeleteThrottlePolicy { .. } => throttles::apply(self, command, now, fx),
            C::RecordUsage { node, seq, deltas } => usage::record(self, *node, *seq, deltas, now),
            C::RecordUsageBatches { node, batches } => {
                usage::record_batches(self, *node, batches, now)
            }
            C::CloseCycle { day } => cycle::close(self, *day, now, catalog, fx),
            C::ApplyConfig { desired, options } => {
                config::apply(self, desired, options, now, catalog, fx).map(Reply::ConfigApplied)
            }
        }
    }

    /// The first daily cycle not closed yet.
    pub fn next_open_day(&self) -> Option<u64> {
        match self.last_closed_day {
            Some(d) => Some(d + 1),
            None => self.genesis_ms.map(day_of),
        }
    }

    /// Where the history of this state ends (see [`HistoryCut`]).
    pub fn history_cut(&self) -> HistoryCut {
        HistoryCut {
            ledger: self
                .accounts
                .values()
                .map(|a| (a.name.clone(), a.ledger_len))
                .collect(),
            last_event: self.last_event_seq,
            last_closed_day: self.last_closed_day,
        }
    }

    /// The groups of `account`, by name.
    pub fn groups_of_account(&self, account: &str) -> impl Iterator<Item = &ApiGroup> {
        self.index
            .groups_by_account
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get(g))
    }

    /// The name of the app whose AppKey is `key`.
    pub fn app_name_of_key(&self, key: &str) -> Option<&str> {
        self.index.app_keys.get(key).map(String::as_str)
    }

    /// The throttling policy bound to API `group/api` on `stage`, if any.
    pub fn throttle_of(&self, group: &str, api: &str, stage: Stage) -> Option<&ThrottlePolicy> {
        let name = self
            .index
            .throttle_bindings
            .get(group)?
            .get(&stage)?
            .get(api)?;
        self.throttles.get(name)
    }

    /// The throttling policies bound to the APIs of `group`: stage -> API -> policy.
    pub fn throttles_of_group(
        &self,
        group: &str,
    ) -> impl Iterator<Item = (Stage, &str, &ThrottlePolicy)> {
        self.index
            .throttle_bindings
            .get(group)
            .into_iter()
            .flat_map(|stages| stages.iter())
            .flat_map(|(stage, apis)| apis.iter().map(move |(api, p)| (*stage, api, p)))
            .filter_map(|(stage, api, p)| Some((stage, api.as_str(), self.throttles.get(p)?)))
    }

    /// The dedicated instances of `account`.
    pub fn instances_of_account(&self, account: &str) -> impl Iterator<Item = &Instance> {
        self.index
            .instances_by_account
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|i| self.instances.get(i))
    }

    pub(crate) fn account(&self, name: &str) -> Result<&Account, DomainError> {
        self.accounts
            .get(name)
            .ok_or_else(|| DomainError::not_found("account", name))
    }

    pub(crate) fn account_mut(&mut self, name: &str) -> Result<&mut Account, DomainError> {
        self.accounts
            .get_mut(name)
            .ok_or_else(|| DomainError::not_found("account", name))
    }

    pub(crate) fn group(&self, name: &str) -> Result<&ApiGroup, DomainError> {
        self.groups
            .get(name)
            .ok_or_else(|| DomainError::not_found("API group", name))
    }

    pub(crate) fn group_mut(&mut self, name: &str) -> Result<&mut ApiGroup, DomainError> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| DomainError::not_found("API group", name))
    }

    /// Notes events for `account`, numbered in the cluster's one sequence.
    pub(crate) fn push_events(
        &mut self,
        account: &str,
        at_ms: Millis,
        events: Vec<Event>,
        fx: &mut Effects,
    ) {
        for event in events {
            self.last_event_seq += 1;
            let seq = self.last_event_seq;
            if let Some(a) = self.accounts.get_mut(account) {
                a.last_event_seq = seq;
            }
            fx.history.push(HistoryRecord::Event(EventRecord {
                seq,
                at_ms,
                account: account.to_string(),
                event,
            }));
        }
    }

    /// Whether the data plane serves the calls to the APIs of group `g`: its account is not
    /// suspended, and it runs on the shared instance or on a dedicated one that is not stopped.
    pub fn serves_group(&self, g: &ApiGroup) -> bool {
        self.accounts
            .get(&g.account)
            .is_some_and(|a| a.billing.serves_api_calls())
            && self
                .instances
                .get(&g.instance)
                .is_none_or(|i| i.stopped.is_none())
    }

    /// Sets an account's billing state at `now`, noting a change in whether its calls are
    /// served. Suspension stops the account's pay-as-you-go instances (they accrue nothing
    /// while stopped); restoration starts them again, billed from the hour it happens in.
    /// Returns the events of the instances stopped or started, for the caller to note after
    /// its own.
    pub(crate) fn set_billing(
        &mut self,
        account: &str,
        billing: AccountBilling,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<Vec<Event>, DomainError> {
        let acct = self.account_mut(account)?;
        let (was, will) = (acct.billing.serves_api_calls(), billing.serves_api_calls());
        acct.billing = billing;
        if was == will {
            return Ok(Vec::new());
        }
        fx.changes.accounts.insert(account.to_string());
        let names: Vec<String> = self
            .index
            .instances_by_account
            .get(account)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let mut events = Vec::new();
        for name in names {
            let Some(inst) = self.instances.get_mut(&name) else {
                continue;
            };
            let changed = if will {
                matches!(
                    inst.stopped,
                    Some(Stopped {
                        reason: StopReason::AccountSuspended,
                        ..
                    })
                ) && inst.start(now)
            } else {
                inst.charge_type == ChargeType::Postpaid
                    && inst.stop(now, StopReason::AccountSuspended)
            };
            if !changed {
                continue;
            }
            fx.changes.instances.insert(name.clone());
            if let Some(hosted) = self.index.groups_by_instance.get(&name) {
                fx.changes.groups.extend(hosted.iter().cloned());
            }
            events.push(if will {
                Event::InstanceStarted { instance: name }
            } else {
                Event::InstanceStopped {
                    instance: name,
                    reason: StopReason::AccountSuspended.as_str().into(),
                    release_at: None,
                    hosted_groups: Vec::new(),
                }
            });
        }
        Ok(events)
    }

    /// Moves money, writes the ledger entry, and notes the events the move causes.
    pub(crate) fn book(
        &mut self,
        account: &str,
        at_ms: Millis,
        what: String,
        amount: catalog::Usd,
        outcome: (AccountBilling, Vec<Event>),
        fx: &mut Effects,
    ) -> Result<(), DomainError> {
        let (billing, events) = outcome;
        let instance_events = self.set_billing(account, billing, at_ms, fx)?;
        let acct = self.account_mut(account)?;
        acct.ledger_len += 1;
        let record = HistoryRecord::Ledger {
            account: account.to_string(),
            seq: acct.ledger_len,
            entry: LedgerEntry {
                at_ms,
                what,
                amount,
                balance_after: acct.billing.balance(),
            },
        };
        fx.history.push(record);
        self.push_events(account, at_ms, events, fx);
        self.push_events(account, at_ms, instance_events, fx);
        Ok(())
    }

    /// Rebuilds every index from the primary maps: what the handlers keep in step must equal it.
    pub(crate) fn rebuilt_indexes(&self) -> Indexes {
        let mut ix = Indexes::default();
        for g in self.groups.values() {
            ix.add_group(g);
        }
        for i in self.instances.values() {
            ix.instances_by_account
                .entry(i.account.clone())
                .or_default()
                .insert(i.name.clone());
        }
        for a in self.apps.values() {
            ix.app_keys.insert(a.key.clone(), a.name.clone());
        }
        for p in self.throttles.values() {
            for b in &p.bindings {
                ix.throttle_bindings
                    .entry(b.group.clone())
                    .or_default()
                    .entry(b.stage)
                    .or_default()
                    .insert(b.api.clone(), p.name.clone());
            }
        }
        ix
    }

    /// Whether the indexes are in step with the maps (for tests and for checking a loaded
    /// snapshot).
    pub fn indexes_consistent(&self) -> bool {
        self.index == self.rebuilt_indexes()
            && self.groups.values().all(|g| {
                let (apis, deployed) = groups::rebuilt_route_indexes(g);
                g.api_routes == apis && g.deployed_routes == deployed
            })
    }
}

fn check_fingerprint(replicated: &str, catalog: &Catalog) -> Result<(), CatalogMismatch> {
    if replicated == catalog.fingerprint() {
        Ok(())
    } else {
        Err(CatalogMismatch {
            local: catalog.fingerprint().to_string(),
            replicated: replicated.to_string(),
        })
    }
}

/// Removes `item` from the set under `key`, and the key once its set is empty.
pub(crate) fn index_remove<K: Ord + Clone, V: Ord + Clone>(
    map: &mut OrdMap<K, OrdSet<V>>,
    key: &K,
    item: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The key of a group's (host, base path) in the route index. (Map keys are strings so that
/// the state stays encodable as JSON too; a validated host has no newline.)
pub(crate) fn route_of(host: Option<&str>, base_path: Option<&str>) -> String {
    format!("{}\n{}", host.unwrap_or(""), base_path.unwrap_or(""))
}

pub(crate) fn deleted(kind: &str, name: &str) -> Reply {
    Reply::Deleted {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

pub(crate) fn ts(ms: Millis) -> Timestamp {
    Timestamp::from_unix_secs(ms / 1000)
}

pub(crate) fn day_of(ms: Millis) -> u64 {
    ms / 1000 / billing::time::SECS_PER_DAY
}

pub(crate) fn billing_err(e: billing::BillingError) -> DomainError {
    DomainError::FailedPrecondition(e.to_string())
}

impl Indexes {
    /// Adds the entries that group `g` contributes: its route, its account's and instance's
    /// group sets and its app grants.
    pub(crate) fn add_group(&mut self, g: &ApiGroup) {
        self.routes.insert(
            route_of(g.host.as_deref(), g.base_path.as_deref()),
            g.name.clone(),
        );
        self.groups_by_account
            .entry(g.account.clone())
            .or_default()
            .insert(g.name.clone());
        self.groups_by_instance
            .entry(g.instance.clone())
            .or_default()
            .insert(g.name.clone());
        for (api, apps) in &g.grants {
            for app in apps {
                self.grants_by_app
                    .entry(app.clone())
                    .or_default()
                    .insert((g.name.clone(), api.clone()));
            }
        }
    }
}
