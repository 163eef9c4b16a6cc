//! Wiring between the replicated state and the data plane: config publication, limiter demand
//! reports between nodes, readiness and Raft metrics.

use catalog::Catalog;
use cluster::Node;
use dataplane::{
    Dataplane, DataplaneConfig, DemandReport, DeployedApi, GroupConfig, InstanceConfig,
    SHARED_INSTANCE, Stage,
};
use model::State;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often each node tells its peers its offered load per instance.
const DEMAND_INTERVAL: Duration = Duration::from_millis(100);

/// The data plane's view of the replicated state.
pub fn config_from_state(
    state: &State,
    catalog: &Catalog,
    shared: &SharedInstance,
) -> DataplaneConfig {
    let mut instances = vec![InstanceConfig {
        name: SHARED_INSTANCE.to_string(),
        ceiling_rps: shared.ceiling_rps,
        region: shared.region.clone(),
    }];
    instances.extend(state.instances.values().map(|i| InstanceConfig {
        name: i.name.clone(),
        // The state machine only accepts specs of the catalog; 0 would close the instance.
        ceiling_rps: catalog.spec(&i.spec).map(|s| s.max_rps).unwrap_or(0),
        region: i.region.clone(),
    }));
    let groups = state
        .groups
        .values()
        .map(|g| GroupConfig {
            name: g.name.clone(),
            account: g.account.clone(),
            instance: g.instance.clone(),
            host: g.host.clone(),
            base_path: g.base_path.clone(),
            deployments: g
                .deployments
                .iter()
                .flat_map(|(stage, apis)| {
                    let stage = match stage {
                        model::Stage::Release => Stage::Release,
                        model::Stage::Pre => Stage::Pre,
                        model::Stage::Test => Stage::Test,
                    };
                    apis.iter().filter_map(move |(name, d)| {
                        Some(DeployedApi {
                            stage,
                            api: name.clone(),
                            method: d.spec.method.parse().ok()?,
                            path: d.spec.path.clone(),
                            backend: d.spec.backend.clone(),
                            timeout: Duration::from_millis(d.spec.timeout_ms),
                            app_auth: d.spec.auth == model::AuthType::App,
                        })
                    })
                })
                .collect(),
        })
        .collect();
    // Overdue bills stop API calls (not management) until a recharge covers them.
    let suspended_accounts = state
        .accounts
        .values()
        .filter(|a| !a.billing.serves_api_calls())
        .map(|a| a.name.clone())
        .collect();
    let access = dataplane::AccessConfig {
        apps: state
            .apps
            .values()
            .map(|a| dataplane::AppCredential {
                name: a.name.clone(),
                key: a.key.clone(),
                secret: a.secret.clone(),
            })
            .collect(),
        app_apis: state
            .groups
            .values()
            .flat_map(|g| {
                g.grants.iter().map(|(api, apps)| dataplane::AppApi {
                    group: g.name.clone(),
                    api: api.clone(),
                    apps: apps.iter().cloned().collect(),
                })
            })
            .collect(),
        group_acls: state
            .groups
            .values()
            .flat_map(|g| {
                let own = (!g.ip_allow.is_empty() || !g.ip_deny.is_empty()).then(|| {
                    dataplane::GroupAcl {
                        group: g.name.clone(),
                        api: None,
                        allow: g.ip_allow.clone(),
                        deny: g.ip_deny.clone(),
                    }
                });
                let apis = g.api_acls.iter().map(|(api, rules)| dataplane::GroupAcl {
                    group: g.name.clone(),
                    api: Some(api.clone()),
                    allow: rules.allow.clone(),
                    deny: rules.deny.clone(),
                });
                own.into_iter().chain(apis)
            })
            .collect(),
    };
    DataplaneConfig {
        instances,
        groups,
        suspended_accounts,
        access,
    }
}

/// The built-in shared instance's settings.
#[derive(Debug, Clone)]
pub struct SharedInstance {
    pub ceiling_rps: u32,
    pub region: String,
}

/// Publishes every newly applied state to the data plane.
pub async fn publish_configs(
    mut states: watch::Receiver<Arc<State>>,
    dp: Dataplane,
    catalog: Arc<Catalog>,
    shared: SharedInstance,
) {
    loop {
        let state = states.borrow_and_update().clone();
        let report = dp.publish(&config_from_state(&state, &catalog, &shared));
        for w in report.warnings {
            tracing::warn!("config: {w}");
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Every 100 ms: measure this node's demand, send it to the peers, keep the serving set in
/// step with the membership, and keep readiness up to date.
pub async fn demand_loop(
    node: Node,
    dp: Dataplane,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(DEMAND_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members: Vec<u64> = node.members().keys().copied().collect();
        if !members.is_empty() {
            dp.set_serving_nodes(&members, node.id());
        }
        ready.store(
            node.is_caught_up() && !draining.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let report = dp.demand_report();
        match serde_json::to_vec(&report) {
            Ok(data) => node.broadcast_demand(data, DEMAND_INTERVAL).await,
            Err(e) => tracing::warn!("demand report: {e}"),
        }
    }
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
}
