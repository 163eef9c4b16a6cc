//! Between the replicated model and the admin API's protobuf messages.

use model::{
    ApiGroup, ApiSpec, AuthType, BackendLocation, Backends, ChargeType, Instance, Stage,
    WeightedBackend,
};
use proto::admin as pb;

pub fn charge_type_to_pb(c: ChargeType) -> pb::ChargeType {
    match c {
        ChargeType::Postpaid => pb::ChargeType::Postpaid,
        ChargeType::Month => pb::ChargeType::Month,
        ChargeType::Year => pb::ChargeType::Year,
    }
}

pub fn instance_to_pb(i: &Instance, catalog: &catalog::Catalog) -> pb::Instance {
    let spec = catalog.spec(&i.spec).ok();
    pb::Instance {
        name: i.name.clone(),
        spec: i.spec.clone(),
        max_rps: spec.map(|s| s.max_rps).unwrap_or(0),
        sla: spec.map(|s| s.sla.clone()).unwrap_or_default(),
        region: i.region.clone(),
        charge_type: charge_type_to_pb(i.charge_type) as i32,
        account: i.account.clone(),
        created_at_ms: i.created_at_ms,
        spec_changed_at_ms: i
            .spec_history
            .last()
            .map(|c| c.at_ms)
            .unwrap_or(i.created_at_ms),
        term_end_ms: i.subscription_end_ms,
        auto_renew: i.auto_renew,
        status: if i.stopped.is_some() {
            "stopped"
        } else {
            "running"
        }
        .into(),
        stopped_reason: i.stopped.map(|s| s.reason.as_str().to_string()),
        stopped_at_ms: i.stopped.map(|s| s.since_ms),
        release_at_ms: i.stopped.and_then(|s| match s.reason {
            model::StopReason::TermEnded => {
                Some(s.since_ms + u64::from(model::TERM_GRACE_DAYS) * 86_400_000)
            }
            model::StopReason::AccountSuspended => None,
        }),
    }
}

pub fn definition_to_pb(s: &ApiSpec) -> pb::ApiDefinition {
    pb::ApiDefinition {
        method: s.method.clone(),
        path: s.path.clone(),
        backend: s.backends.first_url().to_string(),
        backends: s
            .backends
            .iter()
            .map(|b| pb::WeightedBackend {
                url: b.url.clone(),
                weight: Some(b.weight),
            })
            .collect(),
        timeout_ms: s.timeout_ms,
        auth_type: s.auth.as_str().to_string(),
        backend_location: s.backend_location.as_text().to_string(),
    }
}

pub fn definition_from_pb(d: Option<pb::ApiDefinition>) -> ApiSpec {
    let d = d.unwrap_or_default();
    ApiSpec {
        method: d.method.to_ascii_uppercase(),
        path: d.path,
        backends: if d.backends.is_empty() {
            Backends::one(d.backend)
        } else {
            Backends(
                d.backends
                    .into_iter()
                    .map(|b| WeightedBackend {
                        url: b.url,
                        weight: b.weight.unwrap_or(1),
                    })
                    .collect(),
            )
        },
        timeout_ms: if d.timeout_ms == 0 {
            5_000
        } else {
            d.timeout_ms
        },
        // An unknown auth type is refused before this (see `create_api`); fail closed anyway.
        auth: AuthType::parse(&d.auth_type).unwrap_or(AuthType::App),
        // Refused before this too when it does not parse; local is what an empty one means.
        backend_location: BackendLocation::parse(&d.backend_location).unwrap_or_default(),
    }
}

pub fn group_to_pb(g: &ApiGroup) -> pb::ApiGroup {
    pb::ApiGroup {
        name: g.name.clone(),
        account: g.account.clone(),
        instance: g.instance.clone(),
        host: g.host.clone(),
        base_path: g.base_path.clone(),
        created_at_ms: g.created_at_ms,
        apis: g.apis.keys().cloned().collect(),
        grants: g
            .grants
            .iter()
            .flat_map(|(api, apps)| apps.iter().map(move |app| format!("{api}:{app}")))
            .collect(),
        ip_allow: g.ip_allow.clone(),
        ip_deny: g.ip_deny.clone(),
        api_acls: g
            .api_acls
            .iter()
            .map(|(api, rules)| pb::ApiIpAccessControl {
                api: api.clone(),
                allow: rules.allow.clone(),
                deny: rules.deny.clone(),
            })
            .collect(),
        deployments: g
            .deployments
            .iter()
            .flat_map(|(stage, apis)| {
                apis.iter().map(move |(name, d)| pb::Deployment {
                    stage: stage.as_str().to_string(),
                    api: name.clone(),
                    definition: Some(definition_to_pb(&d.spec)),
                    deployed_at_ms: d.deployed_at_ms,
                })
            })
            .collect(),
    }
}

pub fn api_to_pb(g: &ApiGroup, name: &str) -> Option<pb::Api> {
    let api = g.apis.get(name)?;
    Some(pb::Api {
        group: g.name.clone(),
        name: api.name.clone(),
        definition: Some(definition_to_pb(&api.spec)),
        created_at_ms: api.created_at_ms,
        deployed_stages: Stage::ALL
            .into_iter()
            .filter(|st| g.deployments.get(st).is_some_and(|d| d.contains_key(name)))
            .map(|st| st.as_str().to_string())
            .collect(),
    })
}
