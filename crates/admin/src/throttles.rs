//! Throttling policies: requests checked and turned into commands, and policies shown.

use crate::auth::Principal;
use crate::{check, domain_status, parse_stage, unexpected};
use model::{Command, DomainError, Reply, SpecialTarget, ThrottlePolicy, ThrottleUnit, validate};
use proto::admin as pb;
use tonic::Status;

pub(crate) fn to_pb(p: &ThrottlePolicy) -> pb::TrafficControl {
    let specials = p
        .special_apps
        .iter()
        .map(|(k, l)| ("APP", k, l))
        .chain(p.special_accounts.iter().map(|(a, l)| ("ACCOUNT", a, l)))
        .map(|(kind, target, limit)| pb::TrafficControlSpecial {
            kind: kind.to_string(),
            target: target.clone(),
            limit: *limit,
        })
        .collect();
    pb::TrafficControl {
        name: p.name.clone(),
        account: p.account.clone(),
        unit: p.unit.as_str().to_string(),
        api_limit: p.api_limit,
        user_limit: p.user_limit,
        app_limit: p.app_limit,
        specials,
        bindings: p
            .bindings
            .iter()
            .map(|b| pb::TrafficControlBinding {
                group: b.group.clone(),
                api: b.api.clone(),
                stage: b.stage.as_str().to_string(),
            })
            .collect(),
        created_at_ms: p.created_at_ms,
    }
}

pub(crate) fn reply(reply: Reply) -> Result<tonic::Response<pb::TrafficControlReply>, Status> {
    match reply {
        Reply::Throttle(p) => Ok(tonic::Response::new(pb::TrafficControlReply {
            policy: Some(to_pb(&p)),
        })),
        other => Err(unexpected(other)),
    }
}

/// The command of a create request, checked before it is proposed.
pub(crate) fn create(p: &Principal, r: pb::CreateTrafficControlRequest) -> Result<Command, Status> {
    let account = p.account_for_create(r.account)?;
    check(validate::name("name", &r.name))?;
    let unit = ThrottleUnit::parse(&r.unit).map_err(domain_status)?;
    check(validate::throttle_limits(
        r.api_limit,
        r.user_limit,
        r.app_limit,
    ))?;
    Ok(Command::CreateThrottlePolicy {
        name: r.name,
        account,
        unit,
        api_limit: r.api_limit,
        user_limit: r.user_limit,
        app_limit: r.app_limit,
    })
}

pub(crate) fn special(r: pb::SetTrafficControlSpecialRequest) -> Result<Command, Status> {
    let target = match (r.app_key.is_empty(), r.account.is_empty()) {
        (false, true) => SpecialTarget::App(r.app_key),
        (true, false) => SpecialTarget::Account(r.account),
        _ => {
            return Err(domain_status(DomainError::invalid(
                "app_key",
                "give exactly one of app_key and account",
            )));
        }
    };
    let limit = (r.limit > 0).then_some(r.limit);
    if let Some(l) = limit {
        check(validate::throttle_limit("limit", l))?;
    }
    Ok(Command::SetThrottleSpecial {
        name: r.name,
        target,
        limit,
    })
}

pub(crate) fn binding(r: pb::BindTrafficControlRequest, bind: bool) -> Result<Command, Status> {
    let stage = parse_stage(&r.stage)?;
    let pb::BindTrafficControlRequest {
        name, group, api, ..
    } = r;
    Ok(if bind {
        Command::BindThrottlePolicy {
            name,
            group,
            api,
            stage,
        }
    } else {
        Command::UnbindThrottlePolicy {
            name,
            group,
            api,
            stage,
        }
    })
}
