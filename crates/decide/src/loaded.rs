//! What a data plane has loaded, kept for incremental updates: every group's configuration and
//! what it compiled to, indexed by instance and by router bucket (see [`crate::publish`]).

use crate::access::AppCredential;
use crate::backend::Upstreams;
use crate::compiled::{Api, GroupCtx};
use crate::config::{GroupConfig, InstanceConfig};
use crate::instance::InstanceState;
use crate::router::{BucketKey, Router};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// An instance as loaded.
pub(crate) struct LoadedInstance {
    pub(crate) config: InstanceConfig,
    /// Kept while the instance exists, so its limiter and counters survive changes.
    pub(crate) state: Arc<InstanceState>,
}

/// A group as loaded.
pub(crate) struct LoadedGroup<U: Upstreams> {
    pub(crate) config: GroupConfig,
    /// `None` while its instance is unknown (its APIs are not routed until it appears).
    pub(crate) compiled: Option<CompiledGroup<U>>,
}

/// What a group compiled to, kept so that its bucket can be rebuilt without recompiling it
/// (when another group at the same host and base path changes).
pub(crate) struct CompiledGroup<U: Upstreams> {
    pub(crate) key: BucketKey,
    pub(crate) ctx: Arc<GroupCtx>,
    /// The routable deployments: their index in the group's `deployments`, compiled.
    pub(crate) apis: Vec<(usize, Arc<Api<U>>)>,
}

/// The groups compiled into one router bucket, and how many routes the bucket holds.
#[derive(Default)]
pub(crate) struct LoadedBucket {
    /// By name: a bucket shared by several groups is built in name order, so that which of two
    /// conflicting patterns wins does not depend on the order of changes.
    pub(crate) members: BTreeSet<String>,
    pub(crate) routes: usize,
}

/// What is loaded in a [`Dataplane`], for incremental updates.
pub(crate) struct Loaded<U: Upstreams> {
    pub(crate) instances: HashMap<String, LoadedInstance>,
    /// The snapshot's instances, cloned into each snapshot in O(1).
    pub(crate) instance_states: imbl::OrdMap<Arc<str>, Arc<InstanceState>>,
    pub(crate) groups: HashMap<String, LoadedGroup<U>>,
    /// The names of the groups on each instance (compiled, or waiting for the instance): what an
    /// instance change recompiles, found without a scan.
    pub(crate) by_instance: HashMap<String, BTreeSet<String>>,
    pub(crate) buckets: HashMap<BucketKey, LoadedBucket>,
    /// The router of the current snapshot; each change edits it and clones it into the next.
    pub(crate) router: Router<Arc<Api<U>>, Arc<GroupCtx>>,
    /// Deployed APIs routable: the sum of the buckets' routes.
    pub(crate) routes: usize,
    pub(crate) apps: HashMap<String, AppCredential>,
    /// The apps claiming each key. Keys are unique in a valid configuration; when they are not,
    /// the first claimant by name holds the key, whatever the order of the changes was.
    pub(crate) key_claims: HashMap<String, BTreeSet<String>>,
}

// Not derived: that would ask `U: Default`.
impl<U: Upstreams> Default for Loaded<U> {
    fn default() -> Self {
        Loaded {
            instances: HashMap::new(),
            instance_states: imbl::OrdMap::new(),
            groups: HashMap::new(),
            by_instance: HashMap::new(),
            buckets: HashMap::new(),
            router: Router::default(),
            routes: 0,
            apps: HashMap::new(),
            key_claims: HashMap::new(),
        }
    }
}
