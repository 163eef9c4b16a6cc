//! Publishing: compiling the configuration and swapping it in, at the cost of what changed.
//!
//! The unit of compilation is the group ([`GroupConfig`] is self-contained). [`Loaded`] keeps,
//! for every group, its configuration and what it compiled to, and indexes them by instance and
//! by router bucket. A change ([`Dataplane::update`]) then:
//!
//! 1. applies instance changes: a ceiling changes in place (the limiter keeps its booking); a
//!    new, removed or re-regioned instance marks the groups on it for recompiling (their usage
//!    keys name the region, and they are only routable while their instance exists);
//! 2. applies group changes: an unchanged group costs one comparison, a group whose only change
//!    is its account's suspension has a flag flipped in place, any other change marks it;
//! 3. applies app changes to the shared key map ([`crate::access::AppAuth`]): no route is
//!    recompiled, since routes hold only the names of the apps granted on them;
//! 4. compiles the marked groups (backends, ACLs, counters) and rebuilds the router buckets they
//!    left or joined (normally one bucket per group), each put into the persistent router in
//!    O(log n);
//! 5. swaps in a snapshot made of O(1) clones of the router and the instance map, then releases
//!    by key the status counters and backend pools that only the retired routes used.
//!
//! Nothing here scans all groups, APIs or counters: the cost is that of the changed groups plus
//! O(log n) map operations. [`Dataplane::publish`] diffs a whole configuration against what is
//! loaded (a comparison per entry) and applies the difference the same way.
//!
//! Compiling happens under [`Loaded`]'s mutex, which serialises writers and which nothing else
//! takes: the hot path reads the snapshot without a lock, and usage draining and scrapes take
//! only the counter maps' locks, which a compile holds briefly, once per group. Counters are
//! fetched from those maps by key, so an API that still exists keeps its usage cell and its
//! status counters across any number of changes: no counted call is lost.

use crate::access::{AppCredential, AppKey, IpAcl};
use crate::backend::Upstreams;
use crate::compiled::{Api, GroupCtx, Snapshot, Statuses, lock};
use crate::config::{ConfigUpdate, DataplaneConfig, GroupConfig, InstanceConfig, IpRules};
use crate::instance::InstanceState;
use crate::loaded::{CompiledGroup, Loaded, LoadedGroup, LoadedInstance};
use crate::metrics::Histogram;
use crate::metrics::StatusCounters;
use crate::plane::{Dataplane, PublishReport};
use crate::router::{BucketBuilder, BucketKey};
use crate::spread::Spread;
use crate::usage::{UNMATCHED_API, UsageKey};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// A change to apply: borrowed from a [`ConfigUpdate`], or the difference between a full
/// configuration and what is loaded.
#[derive(Default)]
struct Changes<'a> {
    instances: Vec<&'a InstanceConfig>,
    removed_instances: Vec<String>,
    groups: Vec<&'a GroupConfig>,
    removed_groups: Vec<String>,
    apps: Vec<&'a AppCredential>,
    removed_apps: Vec<String>,
}

/// What applying a change found to do.
struct Work<U: Upstreams> {
    /// Groups to recompile (or to take out of the router), in name order.
    groups: BTreeSet<String>,
    /// Router buckets to rebuild (or remove).
    buckets: BTreeSet<BucketKey>,
    /// Compiled groups replaced or removed: dropped after the swap, and then the counters and
    /// pools only they used are released.
    retired: Vec<CompiledGroup<U>>,
    /// New instances and changed ceilings: their shares are set after the swap.
    shares: Vec<Arc<InstanceState>>,
}

impl<U: Upstreams> Default for Work<U> {
    fn default() -> Self {
        Work {
            groups: BTreeSet::new(),
            buckets: BTreeSet::new(),
            retired: Vec::new(),
            shares: Vec::new(),
        }
    }
}

/// True when `a` and `b` differ at most in `suspended`.
fn same_but_suspension(a: &GroupConfig, b: &GroupConfig) -> bool {
    // Destructured, so that a new field cannot be forgotten here.
    let GroupConfig {
        name,
        account,
        instance,
        host,
        base_path,
        deployments,
        acl,
        api_acls,
        grants,
        suspended: _,
        throttles,
    } = a;
    *name == b.name
        && *account == b.account
        && *instance == b.instance
        && *host == b.host
        && *base_path == b.base_path
        && *deployments == b.deployments
        && *acl == b.acl
        && *api_acls == b.api_acls
        && *grants == b.grants
        && *throttles == b.throttles
}

/// Compiles IP rules; `None` when they let everyone in.
fn compile_acl(
    rules: Option<&IpRules>,
    whose: impl FnOnce() -> String,
    report: &mut PublishReport,
) -> Option<IpAcl> {
    let rules = rules?;
    let (acl, warnings) = IpAcl::new(&rules.allow, &rules.deny);
    if !warnings.is_empty() {
        let whose = whose();
        report
            .warnings
            .extend(warnings.into_iter().map(|w| format!("{whose}: {w}")));
    }
    Some(acl).filter(|acl| !acl.is_open())
}

fn status_of(statuses: &mut Statuses, instance: &str, api: &str) -> Arc<StatusCounters> {
    statuses
        .entry((instance.to_string(), api.to_string()))
        .or_default()
        .clone()
}

impl<U: Upstreams> Dataplane<U> {
    /// Replaces the whole configuration with `config` (at startup, after a snapshot, in
    /// tests). It is diffed against what is loaded and only the difference is compiled (see
    /// [`update`](Self::update)); an entry configured twice is warned about and its first
    /// occurrence used. Requests in flight finish on the configuration they started with;
    /// instance limiters and counters carry over (ceilings change in place).
    pub fn publish(&self, config: &DataplaneConfig) -> PublishReport {
        let mut loaded = lock(&self.inner.loaded);
        let mut report = PublishReport::default();
        let mut changes = Changes::default();
        let mut twice = |what: &str, name: &str| {
            report
                .warnings
                .push(format!("{what} '{name}' is configured twice"));
        };

        let mut instances = HashSet::new();
        for ic in &config.instances {
            if !instances.insert(ic.name.as_str()) {
                twice("instance", &ic.name);
            } else if loaded
                .instances
                .get(&ic.name)
                .is_none_or(|li| li.config != *ic)
            {
                changes.instances.push(ic);
            }
        }
        let mut groups = HashSet::new();
        for g in &config.groups {
            if !groups.insert(g.name.as_str()) {
                twice("group", &g.name);
            } else if loaded.groups.get(&g.name).is_none_or(|lg| lg.config != *g) {
                changes.groups.push(g);
            }
        }
        let mut apps = HashSet::new();
        for a in &config.apps {
            if !apps.insert(a.name.as_str()) {
                twice("app", &a.name);
            } else if loaded.apps.get(&a.name) != Some(a) {
                changes.apps.push(a);
            }
        }
        let gone = |names: &mut dyn Iterator<Item = &String>, keep: &HashSet<&str>| {
            names
                .filter(|n| !keep.contains(n.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        };
        changes.removed_instances = gone(&mut loaded.instances.keys(), &instances);
        changes.removed_groups = gone(&mut loaded.groups.keys(), &groups);
        changes.removed_apps = gone(&mut loaded.apps.keys(), &apps);
        self.apply(&mut loaded, &changes, report)
    }

    /// Applies what changed: upserts (whole entries, by name) and removals of instances,
    /// groups and apps; see [`ConfigUpdate`]. Costs what changed: the upserted groups are
    /// compiled (unless only their suspension changed, which is flipped in place), groups on an
    /// instance that appears, disappears or changes region are recompiled, and the rest of the
    /// compiled configuration is shared with the previous snapshot.
    pub fn update(&self, update: &ConfigUpdate) -> PublishReport {
        let mut loaded = lock(&self.inner.loaded);
        let changes = Changes {
            instances: update.instances.iter().collect(),
            removed_instances: update.removed_instances.clone(),
            groups: update.groups.iter().collect(),
            removed_groups: update.removed_groups.clone(),
            apps: update.apps.iter().collect(),
            removed_apps: update.removed_apps.clone(),
        };
        self.apply(&mut loaded, &changes, PublishReport::default())
    }

    fn apply(
        &self,
        loaded: &mut Loaded<U>,
        changes: &Changes<'_>,
        mut report: PublishReport,
    ) -> PublishReport {
        let mut work = Work::default();
        self.apply_instances(loaded, changes, &mut work);
        apply_groups(loaded, changes, &mut work);
        self.apply_apps(loaded, changes, &mut report);
        self.compile_groups(loaded, &mut work, &mut report);
        // New per-second limits, and changed ones, get this node's share before any call
        // reaches them (a new counter otherwise admitted the whole limit here until the next
        // report: a restarted node over-admitted by ~2% in the throttling benchmark).
        self.update_throttle_shares();
        rebuild_buckets(loaded, &work.buckets, &mut report);
        report.routes = loaded.routes;

        let old = self.inner.snapshot.swap(Arc::new(Snapshot {
            router: loaded.router.clone(),
            instances: loaded.instance_states.clone(),
        }));
        // The retired routes live on only in the old snapshot (and in requests in flight).
        drop(old);
        self.release(std::mem::take(&mut work.retired));
        // New instances start at the even share; correct them from what is known of demand.
        self.update_shares(work.shares.iter().map(|s| &**s));
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        report
    }

    fn apply_instances(&self, loaded: &mut Loaded<U>, changes: &Changes<'_>, work: &mut Work<U>) {
        let n_nodes = self.inner.n_nodes.load(Relaxed).max(1);
        for &ic in &changes.instances {
            match loaded.instances.get_mut(&ic.name) {
                Some(li) if li.config == *ic => {}
                Some(li) => {
                    if li.config.ceiling_rps != ic.ceiling_rps {
                        li.state.set_ceiling(ic.ceiling_rps, self.now());
                        work.shares.push(li.state.clone());
                    }
                    if li.config.region != ic.region {
                        // Usage is keyed by region.
                        work.groups.extend(groups_on(&loaded.by_instance, &ic.name));
                    }
                    li.config = ic.clone();
                }
                None => {
                    let state = Arc::new(InstanceState::new(
                        &ic.name,
                        ic.ceiling_rps,
                        1.0 / n_nodes as f64,
                        self.inner.burst,
                    ));
                    loaded
                        .instance_states
                        .insert(state.name.clone(), state.clone());
                    loaded.instances.insert(
                        ic.name.clone(),
                        LoadedInstance {
                            config: ic.clone(),
                            state: state.clone(),
                        },
                    );
                    work.shares.push(state);
                    // Groups waiting for it become routable.
                    work.groups.extend(groups_on(&loaded.by_instance, &ic.name));
                }
            }
        }
        for name in &changes.removed_instances {
            if loaded.instances.remove(name).is_some() {
                // Its state lives on only in snapshots still in use.
                loaded.instance_states.remove(name.as_str());
                work.groups.extend(groups_on(&loaded.by_instance, name));
            }
        }
    }

    /// App changes edit the shared key map: O(log n) each, and no route is recompiled.
    fn apply_apps(
        &self,
        loaded: &mut Loaded<U>,
        changes: &Changes<'_>,
        report: &mut PublishReport,
    ) {
        let mut changed_keys = BTreeSet::new();
        for &a in &changes.apps {
            if let Some(old) = loaded.apps.get(&a.name) {
                if old == a {
                    continue;
                }
                unclaim(&mut loaded.key_claims, &old.key, &old.name);
                changed_keys.insert(old.key.clone());
            }
            loaded
                .key_claims
                .entry(a.key.clone())
                .or_default()
                .insert(a.name.clone());
            changed_keys.insert(a.key.clone());
            loaded.apps.insert(a.name.clone(), a.clone());
        }
        for name in &changes.removed_apps {
            if let Some(old) = loaded.apps.remove(name) {
                unclaim(&mut loaded.key_claims, &old.key, name);
                changed_keys.insert(old.key);
            }
        }
        if changed_keys.is_empty() {
            return;
        }
        let mut keys = (*self.inner.apps.keys()).clone();
        for key in changed_keys {
            let holder = loaded.key_claims.get(&key).and_then(|claims| {
                if claims.len() > 1 {
                    report.warnings.push(format!(
                        "apps {claims:?} share a key; only '{}' may use it",
                        claims.first().map(String::as_str).unwrap_or_default()
                    ));
                }
                claims.first()
            });
            match holder.and_then(|name| loaded.apps.get(name)) {
                Some(app) => {
                    keys.insert(
                        key,
                        Arc::new(AppKey {
                            name: app.name.clone(),
                            secret: app.secret.clone(),
                        }),
                    );
                }
                None => {
                    keys.remove(&key);
                }
            }
        }
        self.inner.apps.set_keys(keys);
    }

    /// Compiles the marked groups and notes the buckets they left and joined.
    fn compile_groups(
        &self,
        loaded: &mut Loaded<U>,
        work: &mut Work<U>,
        report: &mut PublishReport,
    ) {
        for name in std::mem::take(&mut work.groups) {
            let Some(lg) = loaded.groups.get_mut(&name) else {
                continue;
            };
            if let Some(old) = lg.compiled.take() {
                if let Some(b) = loaded.buckets.get_mut(&old.key) {
                    b.members.remove(&name);
                }
                work.buckets.insert(old.key.clone());
                work.retired.push(old);
            }
            let Some(instance) = loaded.instances.get(&lg.config.instance) else {
                report.warnings.push(format!(
                    "group '{}' is on unknown instance '{}'; its APIs are not routed",
                    lg.config.name, lg.config.instance
                ));
                continue;
            };
            let compiled = self.compile_group(&lg.config, instance, report);
            loaded
                .buckets
                .entry(compiled.key.clone())
                .or_default()
                .members
                .insert(name);
            work.buckets.insert(compiled.key.clone());
            lg.compiled = Some(compiled);
            report.groups_compiled += 1;
        }
    }

    /// One group, alone: its backends, ACLs and counters. O(size of the group).
    fn compile_group(
        &self,
        g: &GroupConfig,
        instance: &LoadedInstance,
        report: &mut PublishReport,
    ) -> CompiledGroup<U> {
        let acl = compile_acl(g.acl.as_ref(), || format!("group '{}'", g.name), report);
        let mut backends = Vec::with_capacity(g.deployments.len());
        let mut states = lock(&self.inner.backends);
        for (i, d) in g.deployments.iter().enumerate() {
            let spread = Spread::parse(
                &d.backend,
                self.inner.backend_health,
                |a| self.inner.pools.pool(a),
                |url| crate::spread::state_of(&mut states, &g.name, &d.api, url),
            );
            match spread {
                Ok(b) => backends.push((i, b)),
                Err(e) => report
                    .warnings
                    .push(format!("group '{}' API '{}': {e}", g.name, d.api)),
            }
        }
        drop(states);
        let usage_key = |api: &str| UsageKey {
            account: g.account.clone(),
            instance: g.instance.clone(),
            api: api.to_string(),
            region: instance.config.region.clone(),
        };
        // Each counter map is locked once per group, briefly: a drain or a scrape waits for at
        // most one group's lookups, never for a whole compile.
        let (unmatched_usage, usage): (_, Vec<_>) = {
            let mut cells = lock(&self.inner.usage);
            (
                cells.cell(usage_key(UNMATCHED_API)),
                backends
                    .iter()
                    .map(|(i, _)| cells.cell(usage_key(&g.deployments[*i].api)))
                    .collect(),
            )
        };
        let (unmatched_status, status): (_, Vec<_>) = {
            let mut statuses = lock(&self.inner.statuses);
            (
                status_of(&mut statuses, &g.instance, UNMATCHED_API),
                backends
                    .iter()
                    .map(|(i, _)| status_of(&mut statuses, &g.instance, &g.deployments[*i].api))
                    .collect(),
            )
        };
        let mut throttles: Vec<Option<crate::throttle::Throttle>> = {
            let mut registry = lock(&self.inner.throttles);
            backends
                .iter()
                .map(|(i, _)| {
                    let d = &g.deployments[*i];
                    let t = g.throttles.get(&(d.stage, d.api.clone()))?;
                    let granted: &[String] = if d.app_auth {
                        g.grants.get(&d.api).map_or(&[], Vec::as_slice)
                    } else {
                        &[]
                    };
                    Some(registry.compile(
                        t,
                        (&g.name, &d.api, d.stage),
                        &g.account,
                        granted,
                        self.inner.burst,
                    ))
                })
                .collect()
        };
        let latency: Vec<Arc<Histogram>> = {
            let mut latencies = lock(&self.inner.latencies);
            backends
                .iter()
                .map(|(i, _)| {
                    let d = &g.deployments[*i];
                    latencies
                        .entry((g.name.clone(), d.api.clone(), d.stage))
                        .or_default()
                        .clone()
                })
                .collect()
        };
        let ctx = Arc::new(GroupCtx {
            name: g.name.clone(),
            account: g.account.clone(),
            acl,
            instance: instance.state.clone(),
            suspended: AtomicBool::new(g.suspended),
            unmatched_usage,
            unmatched_status,
        });
        let apis = backends
            .into_iter()
            .zip(usage.into_iter().zip(status).zip(latency))
            .zip(throttles.drain(..))
            .map(|(((i, backend), ((usage, status), latency)), throttle)| {
                let d = &g.deployments[i];
                let app_grants = d.app_auth.then(|| {
                    g.grants
                        .get(&d.api)
                        .map(|apps| apps.clone().into_boxed_slice())
                        .unwrap_or_default()
                });
                let acl = compile_acl(
                    g.api_acls.get(&d.api),
                    || format!("group '{}' API '{}'", g.name, d.api),
                    report,
                );
                let api = Api {
                    group: ctx.clone(),
                    app_grants,
                    acl,
                    name: d.api.clone(),
                    spread: backend,
                    timeout: d.timeout,
                    backend_billed: d.backend_billed,
                    usage,
                    status,
                    throttle,
                    latency,
                };
                (i, Arc::new(api))
            })
            .collect();
        CompiledGroup {
            key: BucketKey::new(g.host.as_deref(), g.base_path.as_deref()),
            ctx,
            apis,
        }
    }

    /// Forgets the status counters and backend pools that only `retired` used, by key. Those
    /// still held by a request in flight are swept at the next scrape
    /// ([`Dataplane::render_metrics`]). Usage cells are not touched: a drain takes their last
    /// counts before forgetting them.
    fn release(&self, retired: Vec<CompiledGroup<U>>) {
        if retired.is_empty() {
            return;
        }
        let mut statuses = Vec::new();
        let mut authorities = Vec::new();
        for c in &retired {
            let instance = c.ctx.instance.name.to_string();
            statuses.push((instance.clone(), UNMATCHED_API.to_string()));
            for (_, api) in &c.apis {
                statuses.push((instance.clone(), api.name.clone()));
                authorities.extend(api.spread.backends().map(|b| b.authority().clone()));
            }
        }
        drop(retired);
        {
            let mut counters = lock(&self.inner.statuses);
            for key in &statuses {
                if counters.get(key).is_some_and(|c| Arc::strong_count(c) == 1) {
                    counters.remove(key);
                }
            }
        }
        // Histograms no compiled route holds any more (a removed deployment); those a request
        // in flight still holds go at the next scrape.
        lock(&self.inner.latencies).retain(|_, h| Arc::strong_count(h) > 1);
        self.inner.pools.release(&authorities);
    }
}

/// Applies group upserts and removals to what is loaded, marking what must be recompiled.
fn apply_groups<U: Upstreams>(loaded: &mut Loaded<U>, changes: &Changes<'_>, work: &mut Work<U>) {
    for &g in &changes.groups {
        match loaded.groups.get_mut(&g.name) {
            Some(lg) if lg.config == *g => {}
            Some(lg) if same_but_suspension(&lg.config, g) => {
                lg.config.suspended = g.suspended;
                if let Some(c) = &lg.compiled {
                    c.ctx.suspended.store(g.suspended, Relaxed);
                }
            }
            Some(lg) => {
                if lg.config.instance != g.instance {
                    unindex(&mut loaded.by_instance, &lg.config.instance, &g.name);
                    loaded
                        .by_instance
                        .entry(g.instance.clone())
                        .or_default()
                        .insert(g.name.clone());
                }
                lg.config = g.clone();
                work.groups.insert(g.name.clone());
            }
            None => {
                loaded
                    .by_instance
                    .entry(g.instance.clone())
                    .or_default()
                    .insert(g.name.clone());
                loaded.groups.insert(
                    g.name.clone(),
                    LoadedGroup {
                        config: g.clone(),
                        compiled: None,
                    },
                );
                work.groups.insert(g.name.clone());
            }
        }
    }
    for name in &changes.removed_groups {
        let Some(lg) = loaded.groups.remove(name) else {
            continue;
        };
        unindex(&mut loaded.by_instance, &lg.config.instance, name);
        if let Some(c) = lg.compiled {
            if let Some(b) = loaded.buckets.get_mut(&c.key) {
                b.members.remove(name);
            }
            work.buckets.insert(c.key.clone());
            work.retired.push(c);
        }
    }
}

/// The names of the groups on an instance.
fn groups_on<'a>(
    by_instance: &'a HashMap<String, BTreeSet<String>>,
    instance: &str,
) -> impl Iterator<Item = String> + 'a {
    by_instance.get(instance).into_iter().flatten().cloned()
}

fn unclaim(key_claims: &mut HashMap<String, BTreeSet<String>>, key: &str, app: &str) {
    if let Some(claims) = key_claims.get_mut(key) {
        claims.remove(app);
        if claims.is_empty() {
            key_claims.remove(key);
        }
    }
}

fn unindex(by_instance: &mut HashMap<String, BTreeSet<String>>, instance: &str, group: &str) {
    if let Some(groups) = by_instance.get_mut(instance) {
        groups.remove(group);
        if groups.is_empty() {
            by_instance.remove(instance);
        }
    }
}

/// Rebuilds the router buckets at `keys` from their member groups' compiled APIs (normally one
/// group each), or removes the empty ones. O(size of those buckets + log n) each.
fn rebuild_buckets<U: Upstreams>(
    loaded: &mut Loaded<U>,
    keys: &BTreeSet<BucketKey>,
    report: &mut PublishReport,
) {
    for key in keys {
        let Some(lb) = loaded.buckets.get_mut(key) else {
            continue;
        };
        loaded.routes -= lb.routes;
        if lb.members.is_empty() {
            loaded.buckets.remove(key);
            loaded.router.set(key, None);
            continue;
        }
        let mut builder = BucketBuilder::default();
        for name in &lb.members {
            let Some(lg) = loaded.groups.get(name) else {
                continue;
            };
            let Some(c) = &lg.compiled else {
                continue;
            };
            builder.group(c.ctx.clone());
            for (i, api) in &c.apis {
                let d = &lg.config.deployments[*i];
                if let Err(e) = builder.insert(d.stage, d.method.clone(), &d.path, api.clone()) {
                    report
                        .warnings
                        .push(format!("group '{}' API '{}': {e}", lg.config.name, d.api));
                }
            }
        }
        let (bucket, errors) = builder.build();
        report
            .warnings
            .extend(errors.into_iter().map(|e| format!("not routed: {e}")));
        lb.routes = bucket.routes();
        loaded.routes += lb.routes;
        loaded.router.set(key, Some(Arc::new(bucket)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeployedApi, Stage};
    use crate::options::DataplaneOptions;
    use crate::plane::Access;
    use http::Method;
    use model::clock::FakeClock;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    /// Pools counted as the server's are (one per authority, released once unused), so that
    /// the tests see what publishing keeps.
    #[derive(Default)]
    struct Counted(std::sync::Mutex<HashMap<http::uri::Authority, Arc<()>>>);

    impl Upstreams for Counted {
        type Pool = Arc<()>;

        fn new(_: &DataplaneOptions) -> Self {
            Counted::default()
        }

        fn pool(&self, authority: &http::uri::Authority) -> Arc<()> {
            lock(&self.0).entry(authority.clone()).or_default().clone()
        }

        fn release(&self, authorities: &[http::uri::Authority]) {
            let mut pools = lock(&self.0);
            for a in authorities {
                if pools.get(a).is_some_and(|p| Arc::strong_count(p) == 1) {
                    pools.remove(a);
                }
            }
        }

        fn retain_used(&self) {
            lock(&self.0).retain(|_, p| Arc::strong_count(p) > 1);
        }

        fn len(&self) -> usize {
            lock(&self.0).len()
        }
    }

    type Dataplane = crate::plane::Dataplane<Counted>;

    fn dataplane() -> Dataplane {
        Dataplane::with_options(DataplaneOptions {
            node_id: 1,
            clock: Arc::new(FakeClock::new(SEC)),
            ..Default::default()
        })
    }

    fn instance(name: &str, ceiling_rps: u32, region: &str) -> InstanceConfig {
        InstanceConfig {
            name: name.into(),
            ceiling_rps,
            region: region.into(),
        }
    }

    fn deployed(api: &str, method: Method, path: &str) -> DeployedApi {
        DeployedApi {
            stage: Stage::Release,
            api: api.into(),
            method,
            path: path.into(),
            backend: "http://127.0.0.1:9".into(),
            timeout: Duration::from_secs(1),
            app_auth: false,
            backend_billed: false,
        }
    }

    fn group(name: &str, instance: &str, base: &str, apis: &[&str]) -> GroupConfig {
        let mut g = GroupConfig::new(name, format!("acct-{name}"), instance);
        g.base_path = Some(base.into());
        g.deployments = apis
            .iter()
            .map(|a| deployed(a, Method::GET, &format!("/{a}")))
            .collect();
        g
    }

    fn get(dp: &Dataplane, path: &str) -> crate::Verdict<Counted> {
        dp.decide(None, Stage::Release, &Method::GET, path)
    }

    fn code(v: &crate::Verdict<Counted>) -> Option<&'static str> {
        v.rejection().map(|e| e.code())
    }

    fn status_keys(dp: &Dataplane) -> BTreeSet<(String, String)> {
        lock(&dp.inner.statuses).keys().cloned().collect()
    }

    #[test]
    fn a_call_is_dated_the_hour_it_arrived_not_the_hour_it_is_drained() {
        // 2026-01-01T23:59:59.900Z.
        let before_midnight_ms = 1_767_225_600_000 + 86_400_000 - 100;
        let clock = Arc::new(FakeClock::new(before_midnight_ms * 1_000_000));
        let dp = Dataplane::with_options(DataplaneOptions {
            node_id: 1,
            clock: clock.clone(),
            ..Default::default()
        });
        dp.publish(&DataplaneConfig {
            instances: vec![instance("i", 1_000_000, "r")],
            groups: vec![group("g", "i", "/g", &["a"])],
            apps: vec![],
        });
        assert!(get(&dp, "/g/a").is_admitted());
        clock.advance(Duration::from_millis(200));
        assert!(get(&dp, "/g/a").is_admitted());
        assert!(get(&dp, "/g/a").is_admitted());
        let drained = dp.drain_usage_dated();
        let hour = before_midnight_ms / crate::HOUR_MS;
        let calls: Vec<(u64, u64)> = drained
            .by_hour
            .iter()
            .map(|(h, ds)| (*h, ds.iter().map(|d| d.calls).sum()))
            .collect();
        assert_eq!(calls, vec![(hour, 1), (hour + 1, 2)]);
        assert_eq!(drained.open_hour, hour + 1);
    }

    #[test]
    fn an_update_compiles_only_the_changed_group_and_counts_carry_over() {
        let dp = dataplane();
        let groups: Vec<GroupConfig> = (0..50)
            .map(|i| group(&format!("g{i}"), "i", &format!("/g{i}"), &["a", "b"]))
            .collect();
        let report = dp.publish(&DataplaneConfig {
            instances: vec![instance("i", 1_000_000, "r")],
            groups: groups.clone(),
            apps: vec![],
        });
        assert_eq!((report.routes, report.groups_compiled), (100, 50));
        assert!(get(&dp, "/g7/a").is_admitted());

        // Deploy one more API in g7: only g7 is compiled; its other APIs keep their counters.
        let mut g7 = groups[7].clone();
        g7.deployments.push(deployed("c", Method::GET, "/c"));
        let report = dp.update(&ConfigUpdate {
            groups: vec![g7.clone()],
            ..Default::default()
        });
        assert_eq!((report.routes, report.groups_compiled), (101, 1));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(get(&dp, "/g7/a").is_admitted());
        assert!(get(&dp, "/g7/c").is_admitted());
        // The same group again, and the whole config again: nothing to compile.
        assert_eq!(
            dp.update(&ConfigUpdate {
                groups: vec![g7.clone()],
                ..Default::default()
            })
            .groups_compiled,
            0
        );
        let mut all = groups.clone();
        all[7] = g7;
        let full = DataplaneConfig {
            instances: vec![instance("i", 1_000_000, "r")],
            groups: all,
            apps: vec![],
        };
        assert_eq!(dp.publish(&full).groups_compiled, 0);
        let usage = dp.drain_usage();
        let calls = |api: &str| {
            usage
                .iter()
                .filter(|d| d.api == api && d.account == "acct-g7")
                .map(|d| d.calls)
                .sum::<u64>()
        };
        assert_eq!((calls("a"), calls("c")), (2, 1), "{usage:?}");

        // Removing a group releases its status counters by key; a drain then forgets its
        // usage cells, after taking their last counts.
        assert!(get(&dp, "/g3/a").is_admitted());
        assert!(status_keys(&dp).contains(&("i".into(), "c".into())));
        let report = dp.update(&ConfigUpdate {
            removed_groups: vec!["g7".into(), "g3".into()],
            ..Default::default()
        });
        assert_eq!((report.routes, report.groups_compiled), (96, 0));
        assert!(!status_keys(&dp).contains(&("i".into(), "c".into())));
        assert!(
            status_keys(&dp).contains(&("i".into(), "a".into())),
            "still used by other groups"
        );
        assert_eq!(code(&get(&dp, "/g7/a")), Some("ApiNotFound"));
        let usage = dp.drain_usage();
        assert!(
            usage.iter().any(|d| d.account == "acct-g3" && d.calls == 1),
            "{usage:?}"
        );
        assert!(lock(&dp.inner.usage).drain().is_empty());
    }

    #[test]
    fn suspension_and_app_changes_recompile_nothing() {
        let dp = dataplane();
        let mut g = group("g", "i", "/g", &["a", "signed"]);
        g.deployments[1].app_auth = true;
        g.grants.insert("signed".into(), vec!["app".into()]);
        dp.publish(&DataplaneConfig {
            instances: vec![instance("i", 1_000_000, "r")],
            groups: vec![g.clone()],
            apps: vec![],
        });
        g.suspended = true;
        let report = dp.update(&ConfigUpdate {
            groups: vec![g.clone()],
            ..Default::default()
        });
        assert_eq!(report.groups_compiled, 0);
        assert_eq!(code(&get(&dp, "/g/a")), Some("AccountSuspended"));
        g.suspended = false;
        dp.update(&ConfigUpdate {
            groups: vec![g.clone()],
            ..Default::default()
        });
        assert!(get(&dp, "/g/a").is_admitted());

        // An app appears, then its secret changes: the key map changes, no group compiles.
        let signed = |secret: &str, nonce: &str| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let mut req = signer::RequestParts::from_uri("GET", "/g/signed");
            signer::Signer::new("key", secret).sign(&mut req, now_ms, nonce);
            let mut b = http::Request::builder().uri("/g/signed");
            for (k, v) in &req.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            b.body(()).unwrap().into_parts().0
        };
        let call = |parts: &http::request::Parts| {
            let access = Access {
                peer: None,
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
            };
            let v = dp.decide_with(
                None,
                Stage::Release,
                &Method::GET,
                "/g/signed",
                None,
                Some(&access),
                dp.now(),
            );
            code(&v)
        };
        assert_eq!(call(&signed("s1", "n1")), Some("SignatureRejected"));
        let app = |secret: &str| AppCredential {
            name: "app".into(),
            key: "key".into(),
            secret: secret.into(),
        };
        let report = dp.update(&ConfigUpdate {
            apps: vec![app("s1")],
            ..Default::default()
        });
        assert_eq!(report.groups_compiled, 0);
        assert_eq!(call(&signed("s1", "n2")), None);
        dp.update(&ConfigUpdate {
            apps: vec![app("s2")],
            ..Default::default()
        });
        assert_eq!(call(&signed("s1", "n3")), Some("SignatureRejected"));
        assert_eq!(call(&signed("s2", "n4")), None);
        dp.update(&ConfigUpdate {
            removed_apps: vec!["app".into()],
            ..Default::default()
        });
        assert_eq!(call(&signed("s2", "n5")), Some("SignatureRejected"));
    }

    #[test]
    fn groups_wait_for_their_instance() {
        let dp = dataplane();
        let report = dp.update(&ConfigUpdate {
            groups: vec![group("g", "later", "/g", &["a"])],
            ..Default::default()
        });
        assert_eq!(report.routes, 0);
        assert!(
            report.warnings[0].contains("unknown instance"),
            "{report:?}"
        );
        let report = dp.update(&ConfigUpdate {
            instances: vec![instance("later", 1_000_000, "r")],
            ..Default::default()
        });
        assert_eq!((report.routes, report.groups_compiled), (1, 1));
        assert!(get(&dp, "/g/a").is_admitted());
        // A new region re-keys the group's usage: the group is recompiled.
        let report = dp.update(&ConfigUpdate {
            instances: vec![instance("later", 1_000_000, "r2")],
            ..Default::default()
        });
        assert_eq!(report.groups_compiled, 1);
        assert!(get(&dp, "/g/a").is_admitted());
        let regions: BTreeSet<String> = dp.drain_usage().into_iter().map(|d| d.region).collect();
        assert_eq!(regions, BTreeSet::from(["r".into(), "r2".into()]));
        // A ceiling changes in place.
        let report = dp.update(&ConfigUpdate {
            instances: vec![instance("later", 5, "r2")],
            ..Default::default()
        });
        assert_eq!(report.groups_compiled, 0);
        assert_eq!(dp.instance_shares()[0].limit_rps, 5.0);
        let report = dp.update(&ConfigUpdate {
            removed_instances: vec!["later".into()],
            ..Default::default()
        });
        assert_eq!(report.routes, 0);
        assert!(dp.instance_shares().is_empty());
        assert_eq!(code(&get(&dp, "/g/a")), Some("ApiNotFound"));
    }

    /// `name{instance="x",...} value` lines of a scrape, summed per (name, instance); requests
    /// of class 5xx also under `failed`.
    fn scraped(text: &str) -> BTreeMap<(String, String), f64> {
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, rest)) = line.split_once("{instance=\"") else {
                continue;
            };
            let (instance, rest) = rest.split_once('"').unwrap();
            let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            *out.entry((name.to_string(), instance.to_string()))
                .or_default() += value;
            if rest.contains("class=\"5xx\"") {
                *out.entry(("failed".to_string(), instance.to_string()))
                    .or_default() += value;
            }
        }
        out
    }

    #[test]
    fn instance_traffic_is_what_the_metrics_show() {
        let dp = dataplane();
        dp.publish(&DataplaneConfig {
            instances: vec![instance("small", 2, "r"), instance("big", 1_000_000, "r")],
            groups: vec![
                group("g", "small", "/g", &["a", "b"]),
                group("h", "big", "/h", &["a"]),
                group("gone", "big", "/gone", &["a"]),
            ],
            apps: vec![],
        });
        // The clock stands still: `small` admits its burst and throttles the rest.
        for (i, path) in ["/g/a", "/g/b", "/g/zzz", "/h/a", "/gone/a", "/nowhere"]
            .iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            let v = get(&dp, path);
            let status = match v.rejection() {
                Some(e) => e.status(),
                None if i % 7 == 0 => http::StatusCode::BAD_GATEWAY,
                None => http::StatusCode::OK,
            };
            v.record_status(&dp, status);
        }
        // A route released with counts on it: both still show them until the next scrape.
        dp.update(&ConfigUpdate {
            removed_groups: vec!["gone".into()],
            ..Default::default()
        });
        let traffic = dp.instance_traffic();
        let mut text = String::new();
        dp.render_metrics(&mut text);
        let metrics = scraped(&text);
        let m = |name: &str, instance: &str| {
            metrics
                .get(&(name.to_string(), instance.to_string()))
                .copied()
                .unwrap_or(0.0)
        };
        assert_eq!(
            traffic
                .iter()
                .map(|t| t.instance.as_str())
                .collect::<Vec<_>>(),
            ["big", "small"]
        );
        for t in &traffic {
            let i = t.instance.as_str();
            assert_eq!(t.requests as f64, m("gateway_requests_total", i), "{i}");
            assert_eq!(t.throttled as f64, m("gateway_throttled_total", i), "{i}");
            assert_eq!(t.failed as f64, m("failed", i), "{i}");
            assert_eq!(
                t.ceiling_rps as f64,
                m("gateway_instance_ceiling_rps", i),
                "{i}"
            );
            assert_eq!(t.limit_rps, m("gateway_instance_limit_rps", i), "{i}");
        }
        let small = &traffic[1];
        assert!(
            small.throttled > 0 && small.requests > small.throttled,
            "{small:?}"
        );
        assert!(traffic[0].failed > 0, "{:?}", traffic[0]);
        // 60 requests, 10 of them to no instance.
        assert_eq!(traffic.iter().map(|t| t.requests).sum::<u64>(), 50);
    }

    #[test]
    fn drains_scrapes_and_requests_do_not_wait_for_a_compile() {
        let dp = dataplane();
        dp.publish(&DataplaneConfig {
            instances: vec![instance("i", 1_000_000, "r")],
            groups: vec![group("g", "i", "/g", &["a"])],
            apps: vec![],
        });
        // A compile holds `loaded` throughout; nothing else may need it.
        let held = lock(&dp.inner.loaded);
        let (tx, rx) = std::sync::mpsc::channel();
        let other = dp.clone();
        std::thread::spawn(move || {
            let admitted = get(&other, "/g/a").is_admitted();
            let drained = other.drain_usage().len();
            let mut metrics = String::new();
            other.render_metrics(&mut metrics);
            let _ = other.demand_report();
            let _ = tx.send((admitted, drained));
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert_eq!(got, Ok((true, 1)));
    }

    // ------------------------------------------------ incremental equals from-scratch

    const INSTANCES: [&str; 3] = ["i0", "i1", "i2"];
    const GROUPS: usize = 6;
    const APPS: usize = 4;
    const APIS: [&str; 4] = ["a0", "a1", "a2", "a3"];

    fn rules() -> impl Strategy<Value = IpRules> {
        (
            proptest::sample::subsequence(vec!["10.0.0.0/8", "192.168.0.0/16"], 0..=2),
            proptest::sample::subsequence(vec!["10.0.0.1", "172.16.0.0/12", "bogus"], 0..=2),
        )
            .prop_map(|(allow, deny)| IpRules {
                allow: allow.into_iter().map(String::from).collect(),
                deny: deny.into_iter().map(String::from).collect(),
            })
    }

    fn deployment() -> impl Strategy<Value = DeployedApi> {
        (
            0usize..3,
            proptest::sample::select(APIS.to_vec()),
            proptest::sample::select(vec!["GET", "POST", "ANY"]),
            proptest::sample::select(vec!["/x", "/x/{id}", "/y", "/{p}", "/f/{*rest}", "/"]),
            proptest::sample::select(vec![
                "http://127.0.0.1:9",
                "http://10.0.0.2:80/pre",
                "ftp://not-http",
            ]),
            proptest::bool::weighted(0.3),
        )
            .prop_map(
                |(stage, api, method, path, backend, app_auth)| DeployedApi {
                    stage: Stage::ALL[stage],
                    api: api.into(),
                    method: Method::from_bytes(method.as_bytes()).unwrap(),
                    path: path.into(),
                    backend: backend.into(),
                    timeout: Duration::from_secs(1),
                    app_auth,
                    backend_billed: false,
                },
            )
    }

    fn group_config() -> impl Strategy<Value = GroupConfig> {
        (
            (
                0..GROUPS,
                0usize..3,
                proptest::sample::select(vec!["i0", "i1", "i2", "i9"]),
                proptest::option::of(proptest::sample::select(vec!["h1.test", "H2.test:80"])),
                proptest::option::of(proptest::sample::select(vec!["/a", "/a/b", "b/", "/"])),
            ),
            (
                proptest::collection::vec(deployment(), 0..5),
                proptest::option::of(rules()),
                proptest::collection::btree_map(
                    proptest::sample::select(APIS.to_vec()),
                    rules(),
                    0..2,
                ),
                proptest::collection::btree_map(
                    proptest::sample::select(APIS.to_vec()),
                    proptest::sample::subsequence(vec!["app0", "app1", "app2", "app3"], 0..=2),
                    0..3,
                ),
                proptest::bool::weighted(0.2),
            ),
        )
            .prop_map(
                |(
                    (n, account, instance, host, base),
                    (deployments, acl, api_acls, grants, suspended),
                )| {
                    GroupConfig {
                        name: format!("g{n}"),
                        account: format!("acct{account}"),
                        instance: instance.into(),
                        host: host.map(String::from),
                        base_path: base.map(String::from),
                        deployments,
                        acl,
                        api_acls: api_acls
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                        grants: grants
                            .into_iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.into_iter().map(String::from).collect())
                            })
                            .collect(),
                        suspended,
                        throttles: Default::default(),
                    }
                },
            )
    }

    #[derive(Clone, Debug)]
    enum Op {
        Group(GroupConfig),
        RemoveGroup(usize),
        ToggleSuspension(usize),
        Instance(InstanceConfig),
        RemoveInstance(usize),
        App(AppCredential),
        RemoveApp(usize),
        /// A whole config published over what is loaded.
        Full,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => group_config().prop_map(Op::Group),
            1 => (0..GROUPS).prop_map(Op::RemoveGroup),
            2 => (0..GROUPS).prop_map(Op::ToggleSuspension),
            2 => (
                0usize..3,
                proptest::sample::select(vec![3u32, 1_000_000]),
                proptest::sample::select(vec!["r1", "r2"]),
            )
                .prop_map(|(i, ceiling, region)| Op::Instance(instance(INSTANCES[i], ceiling, region))),
            1 => (0usize..3).prop_map(Op::RemoveInstance),
            1 => (0..APPS, 0usize..3, 0usize..2).prop_map(|(n, k, s)| Op::App(AppCredential {
                name: format!("app{n}"),
                key: format!("k{k}"),
                secret: format!("s{s}"),
            })),
            1 => (0..APPS).prop_map(Op::RemoveApp),
            1 => Just(Op::Full),
        ]
    }

    /// The configuration the updates describe, kept as a from-scratch publish would see it.
    #[derive(Default)]
    struct Model {
        instances: BTreeMap<String, InstanceConfig>,
        groups: BTreeMap<String, GroupConfig>,
        apps: BTreeMap<String, AppCredential>,
    }

    impl Model {
        fn full(&self) -> DataplaneConfig {
            DataplaneConfig {
                instances: self.instances.values().cloned().collect(),
                groups: self.groups.values().cloned().collect(),
                apps: self.apps.values().cloned().collect(),
            }
        }

        /// Turns a batch of ops into one update, and applies it as `update` documents:
        /// upserts in order, then removals.
        fn batch(&mut self, ops: &[Op]) -> ConfigUpdate {
            let mut u = ConfigUpdate::default();
            for op in ops {
                match op {
                    Op::Group(g) => u.groups.push(g.clone()),
                    Op::RemoveGroup(n) => u.removed_groups.push(format!("g{n}")),
                    Op::ToggleSuspension(n) => {
                        if let Some(g) = self.groups.get(&format!("g{n}")) {
                            let mut g = g.clone();
                            g.suspended = !g.suspended;
                            u.groups.push(g);
                        }
                    }
                    Op::Instance(i) => u.instances.push(i.clone()),
                    Op::RemoveInstance(n) => u.removed_instances.push(INSTANCES[*n].into()),
                    Op::App(a) => u.apps.push(a.clone()),
                    Op::RemoveApp(n) => u.removed_apps.push(format!("app{n}")),
                    Op::Full => {}
                }
            }
            for i in &u.instances {
                self.instances.insert(i.name.clone(), i.clone());
            }
            for g in &u.groups {
                self.groups.insert(g.name.clone(), g.clone());
            }
            for a in &u.apps {
                self.apps.insert(a.name.clone(), a.clone());
            }
            for n in &u.removed_instances {
                self.instances.remove(n);
            }
            for n in &u.removed_groups {
                self.groups.remove(n);
            }
            for n in &u.removed_apps {
                self.apps.remove(n);
            }
            u
        }
    }

    /// A signed (or unsigned) request for `path`.
    fn request(path: &str, signature: Option<(&str, &str)>, nonce: u64) -> http::request::Parts {
        let mut b = http::Request::builder().uri(path);
        if let Some((key, secret)) = signature {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let mut req = signer::RequestParts::from_uri("GET", path);
            signer::Signer::new(key, secret).sign(&mut req, now_ms, &nonce.to_string());
            for (k, v) in &req.headers {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        b.body(()).unwrap().into_parts().0
    }

    type Decision = (Option<String>, Option<String>, Option<(&'static str, u16)>);

    fn decision(
        dp: &Dataplane,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        parts: &http::request::Parts,
        peer: std::net::IpAddr,
    ) -> Decision {
        let access = Access {
            peer: Some(peer),
            method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let v = dp.decide_with(
            host,
            stage,
            method,
            parts.uri.path(),
            None,
            Some(&access),
            dp.now(),
        );
        (
            v.api().map(String::from),
            v.group().map(String::from),
            v.rejection().map(|e| (e.code(), e.status().as_u16())),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any sequence of updates (and full publishes over a loaded plane) decides every
        /// request as a fresh data plane given the final configuration at once, and ends with the
        /// same counters and pools.
        #[test]
        fn incremental_equals_from_scratch(
            batches in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..12),
        ) {
            let incremental = dataplane();
            let mut model = Model::default();
            // Instances first, so that most groups are routable (the ops may remove them).
            let start: Vec<Op> = INSTANCES
                .iter()
                .map(|i| Op::Instance(instance(i, 1_000_000, "r1")))
                .collect();
            for ops in std::iter::once(&start).chain(&batches) {
                let update = model.batch(ops);
                if ops.iter().any(|o| matches!(o, Op::Full)) {
                    incremental.publish(&model.full());
                } else {
                    incremental.update(&update);
                }
            }
            let scratch = dataplane();
            let report = scratch.publish(&model.full());
            prop_assert_eq!(incremental.update(&ConfigUpdate::default()).routes, report.routes);
            // Cells of removed routes linger until drained; nothing was counted yet.
            prop_assert!(incremental.drain_usage().is_empty());

            let hosts = [None, Some("h1.test"), Some("H1.TEST:443"), Some("h2.test."), Some("x.test")];
            let paths = [
                "/", "/x", "/x/1", "/y", "/q", "/f/a/b", "/a", "/a/x", "/a/x/1", "/a/b",
                "/a/b/y", "/a/b/f/z", "/b/x", "/b", "/ab/x",
            ];
            let methods = [Method::GET, Method::POST, Method::DELETE];
            let peers: [std::net::IpAddr; 3] = [
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                "172.16.0.1".parse().unwrap(),
            ];
            let signatures = [None, Some(("k0", "s0")), Some(("k1", "s1")), Some(("k2", "s0"))];
            let mut n = 0u64;
            for host in hosts {
                for path in paths {
                    for stage in Stage::ALL {
                        for method in &methods {
                            n += 1;
                            let peer = peers[(n % 3) as usize];
                            let parts = request(path, signatures[(n / 3 % 4) as usize], n);
                            let a = decision(&incremental, host, stage, method, &parts, peer);
                            let b = decision(&scratch, host, stage, method, &parts, peer);
                            prop_assert_eq!(a, b, "{:?} {} {} {}", host, stage, method, path);
                        }
                    }
                }
            }
            prop_assert_eq!(incremental.drain_usage(), scratch.drain_usage());
            prop_assert_eq!(status_keys(&incremental), status_keys(&scratch));
            prop_assert_eq!(incremental.inner.pools.len(), scratch.inner.pools.len());
            prop_assert_eq!(incremental.instance_shares(), scratch.instance_shares());
        }
    }
}
