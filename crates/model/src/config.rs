//! The declarative configuration: a document that describes API groups, their APIs, what is
//! deployed on each stage, IP access control and app grants, as `gatewayctl export` writes it
//! and `gatewayctl apply` makes the cluster match (one [`crate::Command::ApplyConfig`]).
//!
//! # Format (version 1)
//!
//! ```yaml
//! version: 1
//! groups:
//! - name: shop                    # the group's name
//!   account: default              # the owning account (default: the caller's, else "default")
//!   instance: shared              # "shared" or a dedicated instance of the same account
//!   host: shop.example.com        # optional
//!   base_path: /shop              # optional
//!   ip_allow: [10.0.0.0/8]        # optional: the group's IP access control
//!   ip_deny: [10.9.0.0/16]        # optional
//!   apis:
//!   - name: get-item
//!     method: GET
//!     path: /items/{id}
//!     backend: http://10.0.0.5:8080  # one backend; or several, with optional weights:
//!     # backends: [http://10.0.0.5:8080@3, http://10.0.0.6:8080]   (URL[@WEIGHT], 1..=1000)
//!     timeout_ms: 5000            # optional, default 5000 (as for `api create`)
//!     auth: ANONYMOUS             # ANONYMOUS (default) or APP
//!     backend_location: cn-shanghai  # optional: local (default), external, or a region id;
//!                                 # traffic with a non-local backend is billed
//!     apps: [mobile]              # optional: apps allowed to call it (existing, same account)
//!     ip_allow: []                # optional: the API's own IP access control
//!     ip_deny: []
//!     stages: [RELEASE, TEST]     # deployed with the definition above
//!     pinned:                     # optional: stages that serve an earlier definition
//!       PRE:
//!         method: GET
//!         path: /items/{id}
//!         backend: http://10.0.0.4:8080
//! ```
//!
//! The document is the whole truth about every object it names: an API entry without `stages`
//! is deployed nowhere, one without `apps` grants no app, a group without `ip_allow` allows
//! everyone. Objects it does not name are left alone, unless the apply prunes (see
//! [`ApplyOptions`]). Apps, accounts and instances are referenced by name, never created:
//! an app's secret has no place in a file that is meant to be edited and reviewed.
//!
//! `pinned` keeps a round trip faithful: a deployment serves the definition as it was when
//! deployed, so after an API is edited and not deployed again its stage serves an earlier
//! definition. Export writes that definition under `pinned`; apply keeps it. To deploy the
//! current definition there, move the stage from `pinned` to `stages`.
//!
//! Every value is kept as the text the operator wrote (methods, stages, auth types, CIDRs) and
//! checked when applied, so that a refusal lists every problem at once, each naming its object
//! and field, instead of stopping at the first one a parser meets.
//!
//! Throttling policies are a top-level `policies:` list (optional, so documents without it
//! stay valid, and an apply without it leaves every policy alone):
//!
//! ```yaml
//! policies:
//! - name: gold                    # the policy's name
//!   account: default              # as for groups
//!   unit: minute                  # second, minute, hour or day
//!   api_limit: 6000               # calls per unit of each bound API, cluster-wide
//!   user_limit: 600               # optional, at most api_limit: per calling account
//!   app_limit: 60                 # optional, at most user_limit: per calling app
//!   special_apps: {3f2a9c: 300}   # optional: AppKey -> its own limit
//!   special_accounts: {acme: 900} # optional: account -> its own limit
//!   bindings:                     # the APIs and stages it applies to (one policy each)
//!   - {group: shop, api: get-item, stage: RELEASE}
//! ```
//!
//! A policy entry is the whole truth about that policy, its bindings included. Policies are
//! applied after the groups, so a binding may name an API the same document adds; a prune
//! removes the policies (of the account in scope) that the document does not name.

use crate::{Backends, DomainError, WeightedBackend};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The largest document the admin API takes or gives (gRPC's default, 4 MiB, is about 15,000
/// APIs): the server and gatewayctl both allow this much for the configuration calls.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// The backend timeout of an API entry that gives none.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// A declarative configuration document.
///
/// (Serialized with `skip_serializing_if` to stay short and readable: it travels as YAML or
/// JSON, and in the Raft log as JSON, never in a non-self-describing encoding.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub version: u32,
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyEntry>,
}

/// A throttling policy, its special apps and accounts, and where it is bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub name: String,
    /// Empty: as for a group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
    /// `second`, `minute`, `hour` or `day`.
    pub unit: String,
    pub api_limit: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub special_apps: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub special_accounts: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<BindingEntry>,
}

/// One API on one stage a policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingEntry {
    pub group: String,
    pub api: String,
    /// `RELEASE`, `PRE` or `TEST`.
    pub stage: String,
}

/// An API group and everything in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub name: String,
    /// Empty: the account the apply acts for, or [`crate::DEFAULT_ACCOUNT`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
    /// Empty: [`catalog::SHARED_INSTANCE`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    #[serde(default)]
    pub apis: Vec<ApiEntry>,
}

/// An API: its definition, grants, IP access control and deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiEntry {
    pub name: String,
    pub method: String,
    pub path: String,
    /// One backend of weight 1. Documents give this or `backends`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Several backends, each `URL[@WEIGHT]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `ANONYMOUS` or `APP`; empty is anonymous.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    /// `local` (or empty: the default), `external`, or a region id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_location: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    /// The stages that serve the definition above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// Stage -> the earlier definition it serves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pinned: BTreeMap<String, Definition>,
}

impl ApiEntry {
    /// The entry's own definition.
    pub fn definition(&self) -> Definition {
        Definition {
            method: self.method.clone(),
            path: self.path.clone(),
            backend: self.backend.clone(),
            backends: self.backends.clone(),
            timeout_ms: self.timeout_ms,
            auth: self.auth.clone(),
            backend_location: self.backend_location.clone(),
        }
    }
}

/// An API definition as a deployment serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub method: String,
    pub path: String,
    /// One backend of weight 1. Documents give this or `backends`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Several backends, each `URL[@WEIGHT]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_location: String,
}

impl Definition {
    /// The backends the definition names, from `backend` or `backends` (one of the two);
    /// whether they are valid is [`Backends::check`]'s to say. Errors name the field.
    pub fn backend_list(&self) -> Result<Backends, DomainError> {
        if !self.backend.is_empty() && !self.backends.is_empty() {
            return Err(DomainError::invalid(
                "backends",
                "give either backend (one) or backends (a list), not both",
            ));
        }
        if !self.backend.is_empty() {
            return Ok(Backends::one(self.backend.clone()));
        }
        let mut list = Vec::with_capacity(self.backends.len());
        for (i, item) in self.backends.iter().enumerate() {
            list.push(
                WeightedBackend::parse(item)
                    .map_err(|why| DomainError::invalid(&format!("backends[{i}]"), why))?,
            );
        }
        Ok(Backends(list))
    }

    /// `backend` for one backend of weight 1 (so that documents written before lists read
    /// and round-trip unchanged), else `backends`.
    pub fn set_backends(&mut self, backends: &Backends) {
        if backends.is_single() {
            self.backend = backends.first_url().to_string();
            self.backends.clear();
        } else {
            self.backend.clear();
            self.backends = backends.iter().map(ToString::to_string).collect();
        }
    }
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// How an apply treats what the document does not name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOptions {
    /// Remove the groups (of the account in scope) and the APIs (of the groups in the
    /// document) that the document does not name.
    pub prune: bool,
    /// Let a prune remove groups and APIs that are deployed (their traffic then gets 404).
    /// Without it such a prune is refused, as `group delete` is without `--force`; a document
    /// that names the object with no `stages` abolishes it explicitly.
    pub force: bool,
    /// The account the apply is limited to: every group in the document must belong to it,
    /// and a prune removes only its groups. `None` (the operator's whole-cluster apply) prunes
    /// every account's groups.
    pub account: Option<String>,
}

/// One thing wrong with a document, naming the object (`group shop`, `api shop/get-item`) and,
/// in `message`, the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// What an apply does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChangeKind {
    Add,
    Change,
    Remove,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Change => "change",
            ChangeKind::Remove => "remove",
        }
    }
}

/// A change to one object: `details` says field by field what changes (`backend:
/// http://a -> http://b`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChange {
    pub kind: ChangeKind,
    /// `group NAME` or `api GROUP/NAME`.
    pub object: String,
    pub details: Vec<String>,
}

/// What an apply changed (or, dry, would change), in document order: groups, each followed by
/// its APIs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub changes: Vec<ObjectChange>,
}
