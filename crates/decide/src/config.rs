//! The plain-data configuration the data plane is compiled from.
//!
//! The unit of compilation is the group: a [`GroupConfig`] carries everything its routes need
//! (its IP access control and its APIs', the apps granted on its APIs, whether its account is
//! suspended), so that changing one group recompiles that group alone. App credentials are
//! global, but only the signature check reads them, by key, at request time: changing an app
//! recompiles nothing.
//!
//! Two ways in: a whole [`DataplaneConfig`] ([`crate::Dataplane::publish`], at startup and
//! after a snapshot), or a [`ConfigUpdate`] naming what changed ([`crate::Dataplane::update`],
//! after each applied command). These are the data plane's own shapes, not the replicated
//! state's: the data plane does not depend on how the state is kept or replicated (it shares
//! only the `model` crate's small value types, [`Stage`] among them).

pub use model::{Stage, ThrottleUnit};
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything the data plane needs to route, gate and limit requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// All instances, including the built-in shared one ([`crate::SHARED_INSTANCE`]).
    pub instances: Vec<InstanceConfig>,
    /// All groups, by unique name.
    pub groups: Vec<GroupConfig>,
    /// The apps that may sign calls to APIs with auth type APP.
    pub apps: Vec<crate::AppCredential>,
}

/// What changed since the last publish or update, for [`crate::Dataplane::update`].
/// Everything is by name: an upsert replaces the whole entry of that name (a group comes
/// complete, with all its deployments, ACLs and grants), a removal of a name that is not loaded
/// is a no-op. Within one update, upserts apply in order (the last of a name wins), then
/// removals; an entry that did not change costs a comparison, so sending more than changed is
/// harmless.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigUpdate {
    /// Instances added or changed (ceiling, region).
    pub instances: Vec<InstanceConfig>,
    pub removed_instances: Vec<String>,
    /// Groups added or changed, each complete.
    pub groups: Vec<GroupConfig>,
    pub removed_groups: Vec<String>,
    /// Apps added or changed (key, secret).
    pub apps: Vec<crate::AppCredential>,
    pub removed_apps: Vec<String>,
}

impl ConfigUpdate {
    pub fn is_empty(&self) -> bool {
        self == &ConfigUpdate::default()
    }
}

/// Allowed and denied CIDRs (or single addresses). Denied blocks win; with allowed blocks, only
/// they get in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// An instance and its cluster-wide ceiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    /// Requests per second for the whole cluster; each node enforces its share of it.
    pub ceiling_rps: u32,
    /// Region id (e.g. `cn-hangzhou`), recorded with usage for traffic pricing.
    pub region: String,
}

/// An API group: where its APIs are reachable, which instance carries them, and who may call
/// them. Self-contained, so that it can be compiled alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    pub account: String,
    pub instance: String,
    /// Requests must carry this host (without port) to reach the group; `None` = any host.
    pub host: Option<String>,
    /// A path prefix such as `/v1`; the API paths are matched after stripping it.
    pub base_path: Option<String>,
    pub deployments: Vec<DeployedApi>,
    /// The group's IP access control, checked for every API; `None` lets every address in.
    pub acl: Option<IpRules>,
    /// Each API's own IP access control (by API name), checked after the group's.
    pub api_acls: BTreeMap<String, IpRules>,
    /// The apps (by name) authorised on each API (by API name). They matter on the stages where
    /// the API is deployed with auth type APP ([`DeployedApi::app_auth`]); there, an API not
    /// listed here lets no app in.
    pub grants: BTreeMap<String, Vec<String>>,
    /// The group's account is suspended (overdue payment): its API calls are refused with 403.
    pub suspended: bool,
    /// The throttling policy bound to each (stage, API), if any.
    pub throttles: BTreeMap<(Stage, String), ThrottleConfig>,
}

impl GroupConfig {
    /// A group with no access control, not suspended.
    pub fn new(
        name: impl Into<String>,
        account: impl Into<String>,
        instance: impl Into<String>,
    ) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            account: account.into(),
            instance: instance.into(),
            host: None,
            base_path: None,
            deployments: Vec::new(),
            acl: None,
            api_acls: BTreeMap::new(),
            grants: BTreeMap::new(),
            suspended: false,
            throttles: BTreeMap::new(),
        }
    }
}

/// One API deployed to one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployedApi {
    pub stage: Stage,
    /// The API's name or id; it is the `api` of usage records and metrics.
    pub api: String,
    /// The method; the extension method `ANY` matches every method.
    pub method: http::Method,
    /// The path pattern after the group's base path, e.g. `/p/{id}` or `/files/{*rest}`
    /// (`/p/[id]` is accepted too).
    pub path: String,
    /// `http://HOST:PORT[/prefix]`; the request path (after the base path) and query are appended.
    /// Several backends are written as `model::Backends`' text form, `URL[@WEIGHT]` separated
    /// by spaces: requests are spread over them by weight (see [`crate::spread`]).
    pub backend: String,
    /// Deadline for the backend's response head.
    pub timeout: Duration,
    /// Auth type APP: only signed calls of apps authorised on the API (see
    /// [`GroupConfig::grants`]) get through. Per stage: each deployment keeps the auth type
    /// the API had when it was deployed there.
    pub app_auth: bool,
    /// The backend is outside the instance's region (another region, or off the cloud): the
    /// bytes read back from it are counted as backend traffic, which is billed (the pricing
    /// document's outbound traffic rule d). The caller decides it from where the API's owner
    /// said the backend is.
    pub backend_billed: bool,
}

/// A policy as the data plane compiles it for one bound API and stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub policy: String,
    pub unit: ThrottleUnit,
    pub api_limit: u64,
    pub user_limit: Option<u64>,
    pub app_limit: Option<u64>,
    /// App name -> its own limit.
    pub special_apps: BTreeMap<String, u64>,
    /// Account -> its own limit.
    pub special_accounts: BTreeMap<String, u64>,
}
