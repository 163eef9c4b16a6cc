//! Wiring between the replicated state and the data plane: config publication (a change set
//! in, the changed groups recompiled), limiter demand reports between nodes, readiness and
//! Raft metrics.

use catalog::Catalog;
use cluster::{Changes, Node, Publication};
use dataplane::{
    AppCredential, ConfigUpdate, Dataplane, DataplaneConfig, DemandReport, DeployedApi,
    GroupConfig, InstanceConfig, IpRules, SHARED_INSTANCE, ThrottleConfig,
};
use model::{ApiGroup, ChangeSet, State};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often each node tells its peers its offered load per instance.
const DEMAND_INTERVAL: Duration = Duration::from_millis(100);
/// How often the demand loop looks, between reports, whether calls have moved.
const EARLY_CHECK: Duration = Duration::from_millis(10);

/// The built-in shared instance's settings.
#[derive(Debug, Clone)]
pub struct SharedInstance {
    pub ceiling_rps: u32,
    pub region: String,
}

/// Turns the replicated state into the data plane's configuration: all of it, or the part a
/// change set names.
pub struct ConfigSource {
    pub catalog: Arc<Catalog>,
    pub shared: SharedInstance,
}

impl ConfigSource {
    fn shared_instance(&self) -> InstanceConfig {
        InstanceConfig {
            name: SHARED_INSTANCE.to_string(),
            ceiling_rps: self.shared.ceiling_rps,
            region: self.shared.region.clone(),
        }
    }

    fn instance(&self, i: &model::Instance) -> InstanceConfig {
        InstanceConfig {
            name: i.name.clone(),
            // The state machine only accepts specs of the catalog; 0 would close the instance.
            ceiling_rps: self.catalog.spec(&i.spec).map(|s| s.max_rps).unwrap_or(0),
            region: i.region.clone(),
        }
    }

    /// The data plane's whole view of the state (at startup, and after a snapshot replaced
    /// the state).
    pub fn full(&self, state: &State) -> DataplaneConfig {
        let mut instances = vec![self.shared_instance()];
        instances.extend(state.instances.values().map(|i| self.instance(i)));
        DataplaneConfig {
            instances,
            groups: state
                .groups
                .values()
                .map(|g| self.group(state, g))
                .collect(),
            apps: state.apps.values().map(app).collect(),
        }
    }

    /// What the data plane must recompile for `changes`: the named instances, groups and
    /// apps, and the groups of accounts whose calls started or stopped being served. Found by
    /// name and through the state's indexes: the cost is that of what changed.
    pub fn update(&self, state: &State, changes: &ChangeSet) -> ConfigUpdate {
        let mut u = ConfigUpdate::default();
        for name in &changes.instances {
            match state.instances.get(name) {
                Some(i) => u.instances.push(self.instance(i)),
                None => u.removed_instances.push(name.clone()),
            }
        }
        let mut groups = changes.groups.clone();
        for account in &changes.accounts {
            groups.extend(state.groups_of_account(account).map(|g| g.name.clone()));
        }
        for name in groups {
            match state.groups.get(&name) {
                Some(g) => u.groups.push(self.group(state, g)),
                None => u.removed_groups.push(name),
            }
        }
        for name in &changes.apps {
            match state.apps.get(name) {
                Some(a) => u.apps.push(app(a)),
                None => u.removed_apps.push(name.clone()),
            }
        }
        u
    }
}

fn app(a: &model::App) -> AppCredential {
    AppCredential {
        name: a.name.clone(),
        key: a.key.clone(),
        secret: a.secret.clone(),
    }
}

fn rules(allow: &[String], deny: &[String]) -> Option<IpRules> {
    (!allow.is_empty() || !deny.is_empty()).then(|| IpRules {
        allow: allow.to_vec(),
        deny: deny.to_vec(),
    })
}

impl ConfigSource {
    /// The region of instance `name`: where its traffic is billed.
    fn region_of<'a>(&'a self, state: &'a State, name: &str) -> &'a str {
        if name == SHARED_INSTANCE {
            return &self.shared.region;
        }
        state.instances.get(name).map_or("", |i| i.region.as_str())
    }

    /// One group as the data plane compiles it: everything it needs is here, so that it can be
    /// recompiled alone.
    fn group(&self, state: &State, g: &ApiGroup) -> GroupConfig {
        let region = self.region_of(state, &g.instance);
        let deployments = g
            .deployments
            .iter()
            .flat_map(|(stage, apis)| {
                let stage = *stage;
                apis.iter().filter_map(move |(name, d)| {
                    Some(DeployedApi {
                        stage,
                        api: name.clone(),
                        method: d.spec.method.parse().ok()?,
                        path: d.spec.path.clone(),
                        backend: d.spec.backends.to_text(),
                        timeout: Duration::from_millis(d.spec.timeout_ms),
                        app_auth: d.spec.auth == model::AuthType::App,
                        // The pricing document's rule d: traffic with a backend in another
                        // region or off the cloud is billed.
                        backend_billed: billing::backend_traffic_billable(
                            region,
                            &d.spec.backend_location,
                        ),
                    })
                })
            })
            .collect();
        group_config(state, g, deployments)
    }
}

fn group_config(state: &State, g: &ApiGroup, deployments: Vec<DeployedApi>) -> GroupConfig {
    GroupConfig {
        name: g.name.clone(),
        account: g.account.clone(),
        instance: g.instance.clone(),
        host: g.host.clone(),
        base_path: g.base_path.clone(),
        deployments,
        acl: rules(&g.ip_allow, &g.ip_deny),
        api_acls: g
            .api_acls
            .iter()
            .filter_map(|(api, r)| Some((api.clone(), rules(&r.allow, &r.deny)?)))
            .collect(),
        grants: g
            .grants
            .iter()
            .map(|(api, apps)| (api.clone(), apps.iter().cloned().collect()))
            .collect(),
        // Overdue bills stop API calls (not management) until a recharge covers them, and a
        // stopped instance (an unrenewed subscription past its term) serves none.
        suspended: !state.serves_group(g),
        throttles: state
            .throttles_of_group(&g.name)
            .map(|(stage, api, p)| ((stage, api.to_string()), throttle(state, p)))
            .collect(),
    }
}

/// A policy as the data plane takes it: special apps by name (the state keeps their keys).
fn throttle(state: &State, p: &model::ThrottlePolicy) -> ThrottleConfig {
    ThrottleConfig {
        policy: p.name.clone(),
        unit: p.unit,
        api_limit: p.api_limit,
        user_limit: p.user_limit,
        app_limit: p.app_limit,
        special_apps: p
            .special_apps
            .iter()
            .filter_map(|(key, limit)| Some((state.app_name_of_key(key)?.to_string(), *limit)))
            .collect(),
        special_accounts: p
            .special_accounts
            .iter()
            .map(|(a, limit)| (a.clone(), *limit))
            .collect(),
    }
}

/// Publishes every newly applied state to the data plane, recompiling only what changed.
///
/// It runs on a thread of its own, not on the runtime that serves Raft and the admin API: a
/// large first load (or a snapshot) compiles for a while, and must not delay heartbeats.
pub fn spawn_publisher(
    publication: Arc<Publication>,
    dp: Dataplane,
    source: ConfigSource,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("config-publisher".into())
        .spawn(move || {
            let mut applied = publication.subscribe();
            loop {
                applied.mark_unchanged();
                let (state, changes) = publication.take();
                let report = match changes {
                    Changes::Everything => dp.publish(&source.full(&state)),
                    Changes::Some(c) if c.is_empty() => Default::default(),
                    Changes::Some(c) => dp.update(&source.update(&state, &c)),
                };
                for w in report.warnings {
                    tracing::warn!("config: {w}");
                }
                if runtime.block_on(applied.changed()).is_err() {
                    return;
                }
            }
        })
}

/// Every 100 ms: measure this node's demand, send it to the peers, keep the serving set in
/// step with the membership, and keep readiness up to date. Every 10 ms between those: if
/// calls have moved to or away from this node since a peer went down or came back (see
/// `decide`'s `moves`), an early report, so that the shares follow in tens of ms.
pub async fn demand_loop(
    node: Node,
    dp: Dataplane,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(EARLY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report: Option<tokio::time::Instant> = None;
    loop {
        let now = tick.tick().await;
        if last_report.is_some_and(|t| now.duration_since(t) < DEMAND_INTERVAL) {
            if let Some(report) = dp.demand_report_early() {
                broadcast(&node, &dp, report).await;
            }
            continue;
        }
        last_report = Some(now);
        let members: Vec<u64> = node.members().keys().copied().collect();
        if !members.is_empty() {
            dp.set_serving_nodes(&members, node.id());
        }
        ready.store(
            node.is_caught_up() && !draining.load(Ordering::Relaxed) && dp.not_serving().is_none(),
            Ordering::Relaxed,
        );
        broadcast(&node, &dp, dp.demand_report()).await;
    }
}

/// Sends a demand report to every peer.
async fn broadcast(node: &Node, dp: &Dataplane, report: DemandReport) {
    match serde_json::to_vec(&report) {
        Ok(data) => {
            // A peer that refused the connection is gone now, not after a second of
            // silence: its share of every ceiling and per-second limit goes to the others.
            for id in node.broadcast_demand(data, DEMAND_INTERVAL).await {
                tracing::debug!(peer = id, "demand report refused: counted as not serving");
                dp.peer_down(id);
            }
        }
        Err(e) => tracing::warn!("demand report: {e}"),
    }
}

/// Closes the data plane's serving gate while the node must not serve (removed from the
/// cluster, or out of touch with a quorum for longer than `--max-stale-config`), and opens it
/// again when it may; logs each change.
pub fn gate_serving(node: &Node, dp: Dataplane) {
    node.set_serving_hook(Box::new(move |reason: Option<String>| {
        if dp.not_serving().as_deref() == reason.as_ref() {
            return;
        }
        match &reason {
            Some(why) => tracing::warn!("not serving API traffic (503 NodeNotServing): {why}"),
            None => tracing::info!("serving API traffic again"),
        }
        dp.set_not_serving(reason);
    }));
}

/// Tells the data plane at once when a peer's process is gone (its watch stream broke, or its
/// port refused the connection): that peer's shares go to the others now, not after a second
/// without its reports.
pub fn watch_peers(node: &Node, dp: Dataplane) -> tokio::task::JoinHandle<()> {
    node.watch_peers(std::sync::Arc::new(move |id| {
        tracing::debug!(peer = id, "peer process gone: counted as not serving");
        dp.peer_down(id);
    }))
}

/// Feeds peers' demand reports to the data plane.
pub fn accept_peer_demand(node: &Node, dp: Dataplane) {
    node.set_demand_handler(Box::new(move |from, data| {
        match serde_json::from_slice::<DemandReport>(data) {
            Ok(report) => dp.apply_peer_demand(from, &report, dp.now()),
            Err(e) => tracing::debug!(from, "undecodable demand report: {e}"),
        }
    }));
}

/// Answers peers' (and this node's console's) questions for the request counters per
/// instance from the data plane: the numbers of its `/metrics`, without rendering them.
pub fn serve_traffic(node: &Node, dp: Dataplane) {
    node.set_traffic_source(Box::new(move || {
        dp.instance_traffic()
            .into_iter()
            .map(|t| proto::peer::InstanceCounters {
                instance: t.instance,
                ceiling_rps: t.ceiling_rps,
                limit_rps: t.limit_rps,
                requests: t.requests,
                throttled: t.throttled,
                failed: t.failed,
            })
            .collect()
    }));
}

/// Raft's view for /metrics.
pub fn raft_metrics(node: &Node, out: &mut String) {
    let s = node.status();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    };
    gauge("gateway_raft_term", "The current Raft term.", s.term);
    gauge(
        "gateway_raft_applied_index",
        "The last log index applied on this node.",
        s.applied_index.unwrap_or(0),
    );
    gauge(
        "gateway_raft_last_log_index",
        "The last log index stored on this node.",
        s.last_log_index.unwrap_or(0),
    );
    gauge(
        "gateway_raft_leader_id",
        "The leader this node follows (0 if none).",
        s.leader_id.unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "# HELP gateway_raft_role 1 for this node's current Raft role."
    );
    let _ = writeln!(out, "# TYPE gateway_raft_role gauge");
    for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
        let v = u8::from(s.state == role);
        let _ = writeln!(out, "gateway_raft_role{{role=\"{role}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP gateway_webhook_failures_total Event deliveries to account webhooks that failed (this node delivers while it leads).\n# TYPE gateway_webhook_failures_total counter\ngateway_webhook_failures_total {}",
        crate::jobs::WEBHOOK_FAILURES.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP gateway_usage_journalled_calls_total Calls this node wrote to its usage journal since it started.\n# TYPE gateway_usage_journalled_calls_total counter\ngateway_usage_journalled_calls_total {}",
        crate::metering::JOURNALLED_CALLS.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP gateway_usage_committed_calls_total Calls of usage journal batches this node committed to the cluster since it started.\n# TYPE gateway_usage_committed_calls_total counter\ngateway_usage_committed_calls_total {}",
        crate::metering::COMMITTED_CALLS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    //! Conformance of the incremental publish: a random command log (every command family,
    //! money included) applied one command at a time, each change set turned into an update,
    //! must give the same data-plane configuration and the same routing decisions as compiling
    //! the final state from scratch.

    use super::*;
    use catalog::Usd;
    use model::{ApiSpec, AuthType, ChargeType, Command, GroupChange, Proposal, UsageDelta};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const DAY_MS: u64 = 86_400_000;
    /// 2026-01-01T00:00:00Z.
    const T0: u64 = 1_767_225_600_000;

    fn source() -> ConfigSource {
        ConfigSource {
            catalog: Arc::new(Catalog::builtin().clone()),
            shared: SharedInstance {
                ceiling_rps: 1_000_000,
                region: "cn-hongkong".into(),
            },
        }
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        // An apply is weighted up: it does in one command what a dozen single ones do.
        prop_oneof![5 => arb_single_command(), 1 => arb_apply_config()]
    }

    fn arb_single_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["a", "b", "c"]);
        let account = prop::sample::select(vec![model::DEFAULT_ACCOUNT, "acme"]);
        let inst = prop::sample::select(vec!["a", "b", SHARED_INSTANCE]);
        let path = prop::sample::select(vec!["/x", "/x/{id}", "/y", "/files/{*rest}"]);
        let method = prop::sample::select(vec!["GET", "POST", "ANY"]);
        let stage = prop::sample::select(model::Stage::ALL.to_vec());
        let host = prop::option::of(prop::sample::select(vec!["api.example.com", "b.example"]));
        let base = prop::option::of(prop::sample::select(vec!["/v1", "/v2", "/v1/deep"]));
        let cidr = prop::sample::select(vec!["198.18.0.0/15", "127.0.0.1/32"]);
        let amount = prop::sample::select(vec!["0.01", "20", "3000"]);
        prop_oneof![
            (name.clone(), account.clone(), any::<bool>()).prop_map(|(n, a, monthly)| {
                Command::CreateInstance {
                    name: n.into(),
                    spec: "api.s1.small".into(),
                    region: "cn-hongkong".into(),
                    charge_type: if monthly {
                        ChargeType::Month
                    } else {
                        ChargeType::Postpaid
                    },
                    account: a.into(),
                }
            }),
            name.clone().prop_map(|n| Command::ModifyInstanceSpec {
                name: n.into(),
                spec: "api.s1.medium".into(),
            }),
            name.clone()
                .prop_map(|n| Command::DeleteInstance { name: n.into() }),
            (
                name.clone(),
                account.clone(),
                inst.clone(),
                host.clone(),
                base.clone()
            )
                .prop_map(|(n, a, i, h, b)| Command::CreateApiGroup {
                    name: n.into(),
                    account: a.into(),
                    instance: i.into(),
                    host: h.map(Into::into),
                    base_path: b.map(Into::into),
                }),
            (name.clone(), prop::option::of(inst), host, base).prop_map(|(n, i, h, b)| {
                Command::ModifyApiGroup {
                    name: n.into(),
                    change: GroupChange {
                        instance: i.map(Into::into),
                        host: Some(h.map(Into::into)),
                        base_path: Some(b.map(Into::into)),
                    },
                }
            }),
            name.clone().prop_map(|n| Command::DeleteApiGroup {
                name: n.into(),
                force: true,
            }),
            (name.clone(), name.clone(), method, path, any::<bool>()).prop_map(
                |(g, n, m, p, app)| Command::CreateApi {
                    group: g.into(),
                    name: n.into(),
                    spec: ApiSpec {
                        method: m.into(),
                        path: p.into(),
                        backends: "http://127.0.0.1:9".into(),
                        timeout_ms: 1000,
                        auth: if app {
                            AuthType::App
                        } else {
                            AuthType::Anonymous
                        },
                        backend_location: Default::default(),
                    },
                }
            ),
            (name.clone(), name.clone()).prop_map(|(g, n)| Command::DeleteApi {
                group: g.into(),
                name: n.into(),
            }),
            (name.clone(), name.clone(), stage.clone()).prop_map(|(g, n, s)| {
                Command::DeployApi {
                    group: g.into(),
                    name: n.into(),
                    stage: s,
                }
            }),
            (name.clone(), name.clone(), stage).prop_map(|(g, n, s)| Command::AbolishApi {
                group: g.into(),
                name: n.into(),
                stage: s,
            }),
            (
                name.clone(),
                prop::option::of(name.clone()),
                cidr.clone(),
                cidr
            )
                .prop_map(|(g, api, allow, deny)| Command::SetIpAccessControl {
                    group: g.into(),
                    api: api.map(Into::into),
                    allow: vec![allow.into()],
                    deny: vec![deny.into()],
                }),
            Just(Command::CreateAccount {
                name: "acme".into(),
                webhook: None,
                balance_alert: None,
            }),
            (account.clone(), amount).prop_map(|(a, m)| Command::Recharge {
                account: a.into(),
                amount: Usd::parse(m).unwrap(),
            }),
            (1..1000u64, account.clone(), 0..5_000_000u64).prop_map(|(seq, a, calls)| {
                Command::RecordUsage {
                    node: 1,
                    seq,
                    deltas: vec![UsageDelta {
                        account: a.into(),
                        instance: SHARED_INSTANCE.into(),
                        api: "x".into(),
                        region: "cn-hongkong".into(),
                        calls,
                        bytes_out: calls * 1000,
                        backend_bytes: 0,
                    }],
                }
            }),
            (name.clone(), account).prop_map(|(n, a)| Command::CreateApp {
                name: n.into(),
                account: a.into(),
                key: format!("key-{n}-0123456"),
                secret: "0123456789abcdef".into(),
            }),
            name.clone()
                .prop_map(|n| Command::DeleteApp { name: n.into() }),
            (name.clone(), name.clone(), name.clone()).prop_map(|(g, api, app)| {
                Command::AuthorizeApp {
                    group: g.into(),
                    api: api.into(),
                    app: app.into(),
                }
            }),
            (name.clone(), name.clone(), name).prop_map(|(g, api, app)| {
                Command::RevokeAppAuthorization {
                    group: g.into(),
                    api: api.into(),
                    app: app.into(),
                }
            }),
        ]
    }

    /// A declarative apply over the same few names: groups moved between hosts, base paths and
    /// instances, APIs redefined, deployed, pinned, granted and pruned, in one command.
    fn arb_apply_config() -> impl Strategy<Value = Command> {
        use model::config::{ApiEntry, ApplyOptions, Definition, Document, GroupEntry};
        let name = prop::sample::select(vec!["a", "b", "c"]);
        let path = prop::sample::select(vec!["/x", "/x/{id}", "/y", "/files/{*rest}"]);
        let stages = prop::sample::subsequence(vec!["RELEASE", "PRE", "TEST"], 0..=3);
        let api = (
            name.clone(),
            prop::sample::select(vec!["GET", "POST", "ANY"]),
            path.clone(),
            any::<bool>(),
            stages,
            prop::option::of(path),
            prop_oneof![3 => Just(vec![]), 1 => prop::sample::subsequence(vec!["a", "b"], 0..=2)],
            prop::option::of(Just("127.0.0.1/32")),
        )
            .prop_map(|(n, m, p, app, stages, pinned, apps, deny)| {
                let auth = if app { "APP" } else { "ANONYMOUS" };
                ApiEntry {
                    name: n.into(),
                    method: m.into(),
                    path: p.into(),
                    backend: "http://127.0.0.1:9".into(),
                    backends: vec![],
                    timeout_ms: 1000,
                    auth: auth.into(),
                    backend_location: String::new(),
                    apps: apps.into_iter().map(Into::into).collect(),
                    ip_allow: vec![],
                    ip_deny: deny.into_iter().map(Into::into).collect(),
                    stages: stages.into_iter().map(Into::into).collect(),
                    pinned: pinned
                        .map(|p| {
                            let d = Definition {
                                method: "GET".into(),
                                path: p.into(),
                                backend: "http://127.0.0.1:8".into(),
                                backends: vec![],
                                timeout_ms: 1000,
                                auth: auth.into(),
                                backend_location: String::new(),
                            };
                            [("TEST".to_string(), d)].into()
                        })
                        .unwrap_or_default(),
                }
            });
        let group = (
            name,
            prop::sample::select(vec![model::DEFAULT_ACCOUNT, model::DEFAULT_ACCOUNT, "acme"]),
            prop::sample::select(vec!["a", SHARED_INSTANCE, SHARED_INSTANCE]),
            prop::option::of(prop::sample::select(vec!["api.example.com", "b.example"])),
            prop::option::of(prop::sample::select(vec!["/v1", "/v2", "/v1/deep"])),
            prop::option::of(Just("198.18.0.0/15")),
            prop::collection::vec(api, 0..3),
        )
            .prop_map(|(n, a, i, h, b, allow, apis)| GroupEntry {
                name: n.into(),
                account: a.into(),
                instance: i.into(),
                host: h.map(Into::into),
                base_path: b.map(Into::into),
                ip_allow: allow.into_iter().map(Into::into).collect(),
                ip_deny: vec![],
                apis,
            });
        (
            prop::collection::vec(group, 0..3),
            any::<bool>(),
            any::<bool>(),
            prop::option::weighted(0.2, Just("acme")),
        )
            .prop_map(|(groups, prune, force, account)| Command::ApplyConfig {
                desired: Document {
                    version: 1,
                    groups,
                    policies: Vec::new(),
                },
                options: ApplyOptions {
                    prune,
                    force,
                    account: account.map(Into::into),
                },
            })
    }

    /// The data plane's configuration as the updates built it, kept by name.
    #[derive(Default, Debug, PartialEq)]
    struct Shadow {
        instances: BTreeMap<String, InstanceConfig>,
        groups: BTreeMap<String, GroupConfig>,
        apps: BTreeMap<String, AppCredential>,
    }

    impl Shadow {
        fn of(c: DataplaneConfig) -> Shadow {
            Shadow {
                instances: c
                    .instances
                    .into_iter()
                    .map(|i| (i.name.clone(), i))
                    .collect(),
                groups: c.groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
                apps: c.apps.into_iter().map(|a| (a.name.clone(), a)).collect(),
            }
        }

        fn update(&mut self, u: &ConfigUpdate) {
            for i in &u.instances {
                self.instances.insert(i.name.clone(), i.clone());
            }
            for n in &u.removed_instances {
                self.instances.remove(n);
            }
            for g in &u.groups {
                self.groups.insert(g.name.clone(), g.clone());
            }
            for n in &u.removed_groups {
                self.groups.remove(n);
            }
            for a in &u.apps {
                self.apps.insert(a.name.clone(), a.clone());
            }
            for n in &u.removed_apps {
                self.apps.remove(n);
            }
        }
    }

    /// What a data plane decides for a grid of requests.
    fn decisions(dp: &Dataplane) -> Vec<String> {
        let mut out = Vec::new();
        for host in [None, Some("api.example.com"), Some("B.example:8080")] {
            for path in [
                "/x",
                "/x/1",
                "/y",
                "/files/a/b",
                "/v1/x",
                "/v1/deep/x/2",
                "/v2/y",
            ] {
                for method in [http::Method::GET, http::Method::POST] {
                    for stage in model::Stage::ALL {
                        let v = dp.decide(host, stage, &method, path);
                        out.push(format!(
                            "{host:?} {stage} {method} {path} -> {:?} {:?}",
                            v.api(),
                            v.rejection().map(|e| e.code())
                        ));
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn incremental_publish_equals_a_full_build(
            log in prop::collection::vec((0..DAY_MS / 2, arb_command()), 1..60)
        ) {
            let src = source();
            let cat = Catalog::builtin();
            let mut state = State::default();
            let incremental = Dataplane::new(1);
            incremental.publish(&src.full(&state));
            let mut shadow = Shadow::of(src.full(&state));
            let mut t = T0;
            for (dt, command) in log {
                t += dt;
                // Close the days that ended, as the leader would: bills move account states.
                while let Some(day) = state.next_open_day().filter(|d| (d + 1) * DAY_MS <= t) {
                    let p = Proposal { at_ms: t, catalog: cat.fingerprint().into(), request_id: None, command: Command::CloseCycle { day } };
                    let applied = state.apply(&p, cat).unwrap();
                    prop_assert!(applied.reply.is_ok());
                    let u = src.update(&state, &applied.changes);
                    shadow.update(&u);
                    incremental.update(&u);
                }
                let p = Proposal { at_ms: t, catalog: cat.fingerprint().into(), request_id: None, command };
                let applied = state.apply(&p, cat).unwrap();
                let u = src.update(&state, &applied.changes);
                shadow.update(&u);
                incremental.update(&u);
            }
            prop_assert_eq!(&shadow, &Shadow::of(src.full(&state)));
            let scratch = Dataplane::new(1);
            scratch.publish(&src.full(&state));
            prop_assert_eq!(decisions(&incremental), decisions(&scratch));
        }
    }
}
