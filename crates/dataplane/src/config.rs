//! The plain-data configuration the data plane is compiled from.
//!
//! The lead's code builds a [`DataplaneConfig`] from the replicated state after every Raft apply
//! and hands it to [`crate::Dataplane::publish`]. Keeping these types here (instead of using the
//! `model` crate's) keeps the data plane independent of how the state is replicated.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Everything the data plane needs to route, gate and limit requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataplaneConfig {
    /// All instances, including the built-in shared one ([`crate::SHARED_INSTANCE`]).
    pub instances: Vec<InstanceConfig>,
    pub groups: Vec<GroupConfig>,
    /// Accounts whose groups' API calls are refused with 403 (overdue payment).
    pub suspended_accounts: Vec<String>,
    /// Who may call what: apps, APIs that need signed calls, groups' IP access control.
    pub access: AccessConfig,
}

/// Access control: everything here is optional; an empty config lets everyone in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessConfig {
    pub apps: Vec<crate::AppCredential>,
    /// The apps (by name) authorised on each API. They matter on the stages where the API is
    /// deployed with auth type APP ([`DeployedApi::app_auth`]); there, an API not listed here
    /// lets no app in.
    pub app_apis: Vec<AppApi>,
    /// IP access control of groups and of APIs.
    pub group_acls: Vec<GroupAcl>,
}

/// The apps authorised on an API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppApi {
    pub group: String,
    pub api: String,
    pub apps: Vec<String>,
}

/// Allowed and denied CIDRs of a group (`api: None`) or of one of its APIs. A request must
/// pass its group's and its API's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAcl {
    pub group: String,
    pub api: Option<String>,
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

/// An API group: where its APIs are reachable and which instance carries them.
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
    pub backend: String,
    /// Deadline for the backend's response head.
    pub timeout: Duration,
    /// Auth type APP: only signed calls of apps authorised on the API (see
    /// [`AccessConfig::app_apis`]) get through. Per stage: each deployment keeps the auth type
    /// the API had when it was deployed there.
    pub app_auth: bool,
}

/// A deployment stage, chosen per request by the `X-Ca-Stage` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Stage {
    #[default]
    Release,
    Pre,
    Test,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Release, Stage::Pre, Stage::Test];

    /// The header spelling: `RELEASE`, `PRE`, `TEST`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Release => "RELEASE",
            Stage::Pre => "PRE",
            Stage::Test => "TEST",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Parses a header value, case-insensitively.
    pub fn from_header(value: &[u8]) -> Option<Stage> {
        if value.eq_ignore_ascii_case(b"RELEASE") {
            Some(Stage::Release)
        } else if value.eq_ignore_ascii_case(b"PRE") {
            Some(Stage::Pre)
        } else if value.eq_ignore_ascii_case(b"TEST") {
            Some(Stage::Test)
        } else {
            None
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stage name was not `RELEASE`, `PRE` or `TEST`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage '{0}'; valid stages are RELEASE, PRE, TEST")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::from_header(s.as_bytes()).ok_or_else(|| UnknownStage(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_parses_case_insensitively() {
        assert_eq!("release".parse::<Stage>(), Ok(Stage::Release));
        assert_eq!("Pre".parse::<Stage>(), Ok(Stage::Pre));
        assert_eq!("TEST".parse::<Stage>(), Ok(Stage::Test));
        assert!("prod".parse::<Stage>().is_err());
        for s in Stage::ALL {
            assert_eq!(s.as_str().parse::<Stage>(), Ok(s));
        }
    }
}
