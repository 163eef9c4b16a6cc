//! Throttling policies: their limits, special apps and accounts, and their bindings to APIs on
//! stages. A binding lives in its policy (`bindings`) and in the index by group, so that the
//! data plane's compile of one group finds its policies without scanning them all; both are
//! changed together, and a group or API that goes away takes its bindings with it.

use super::{Effects, State, deleted};
use crate::command::SpecialTarget;
use crate::entity::{Stage, ThrottleBinding, ThrottlePolicy};
use crate::{Command, DomainError, Millis, Reply, validate};
use imbl::{OrdMap, OrdSet};

pub(super) fn apply(
    s: &mut State,
    command: &Command,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    match command {
        Command::CreateThrottlePolicy {
            name,
            account,
            unit,
            api_limit,
            user_limit,
            app_limit,
        } => {
            validate::name("name", name)?;
            s.account(account)?;
            validate::throttle_limits(*api_limit, *user_limit, *app_limit)?;
            if s.throttles.contains_key(name) {
                return Err(DomainError::already_exists("throttling policy", name));
            }
            let policy = ThrottlePolicy {
                name: name.clone(),
                account: account.clone(),
                unit: *unit,
                api_limit: *api_limit,
                user_limit: *user_limit,
                app_limit: *app_limit,
                special_apps: OrdMap::new(),
                special_accounts: OrdMap::new(),
                bindings: OrdSet::new(),
                created_at_ms: now,
            };
            s.throttles.insert(name.clone(), policy.clone());
            Ok(Reply::Throttle(Box::new(policy)))
        }
        Command::SetThrottleSpecial {
            name,
            target,
            limit,
        } => set_special(s, name, target, *limit, fx),
        Command::BindThrottlePolicy {
            name,
            group,
            api,
            stage,
        } => bind(s, name, group, api, *stage, fx),
        Command::UnbindThrottlePolicy {
            name,
            group,
            api,
            stage,
        } => unbind(s, name, group, api, *stage, fx),
        Command::DeleteThrottlePolicy { name } => {
            let p = policy(s, name)?;
            if let Some(b) = p.bindings.iter().next() {
                return Err(DomainError::FailedPrecondition(format!(
                    "throttling policy '{name}' is bound to {} APIs (e.g. {}/{} on {}); unbind them first",
                    p.bindings.len(),
                    b.group,
                    b.api,
                    b.stage
                )));
            }
            s.throttles.remove(name);
            Ok(deleted("throttling policy", name))
        }
        other => unreachable!("{} is not a throttling command", other.kind()),
    }
}

fn policy<'a>(s: &'a State, name: &str) -> Result<&'a ThrottlePolicy, DomainError> {
    s.throttles
        .get(name)
        .ok_or_else(|| DomainError::not_found("throttling policy", name))
}

/// Marks every group the policy is bound in as changed: its compiled limits change.
fn touch_bound_groups(p: &ThrottlePolicy, fx: &mut Effects) {
    fx.changes
        .groups
        .extend(p.bindings.iter().map(|b| b.group.clone()));
}

fn set_special(
    s: &mut State,
    name: &str,
    target: &SpecialTarget,
    limit: Option<u64>,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let p = policy(s, name)?;
    if let Some(limit) = limit {
        validate::throttle_limit("limit", limit)?;
        if limit > p.api_limit {
            return Err(DomainError::invalid(
                "limit",
                format!(
                    "{limit} is more than the policy's API limit {}; it may be at most that",
                    p.api_limit
                ),
            ));
        }
    }
    let (map_of, key, field) = match target {
        SpecialTarget::App(key) => {
            if limit.is_some() && !s.index.app_keys.contains_key(key) {
                return Err(DomainError::not_found("app key", key));
            }
            (true, key, "app")
        }
        SpecialTarget::Account(a) => {
            if limit.is_some() {
                s.account(a)?;
            }
            (false, a, "account")
        }
    };
    let mut p = p.clone();
    let map = if map_of {
        &mut p.special_apps
    } else {
        &mut p.special_accounts
    };
    match limit {
        Some(limit) => {
            map.insert(key.clone(), limit);
        }
        None => {
            if map.remove(key).is_none() {
                return Err(DomainError::not_found(
                    &format!("special {field} of throttling policy '{name}'"),
                    key,
                ));
            }
        }
    }
    touch_bound_groups(&p, fx);
    s.throttles.insert(name.to_string(), p.clone());
    Ok(Reply::Throttle(Box::new(p)))
}

fn bind(
    s: &mut State,
    name: &str,
    group: &str,
    api: &str,
    stage: Stage,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let p = policy(s, name)?;
    let g = s.group(group)?;
    if !g.apis.contains_key(api) {
        return Err(DomainError::not_found("API", &format!("{group}/{api}")));
    }
    if g.account != p.account {
        return Err(DomainError::invalid(
            "group",
            format!(
                "API group '{group}' belongs to account '{}', the throttling policy '{name}' to '{}'",
                g.account, p.account
            ),
        ));
    }
    if let Some(bound) = s.throttle_of(group, api, stage) {
        return Err(DomainError::already_exists(
            "binding",
            &format!(
                "{group}/{api} on {stage} (to throttling policy '{}'; an API takes one policy per stage)",
                bound.name
            ),
        ));
    }
    let mut p = p.clone();
    p.bindings.insert(ThrottleBinding {
        group: group.to_string(),
        api: api.to_string(),
        stage,
    });
    let p = p;
    s.throttles.insert(name.to_string(), p.clone());
    index_binding(s, name, group, api, stage);
    fx.changes.groups.insert(group.to_string());
    Ok(Reply::Throttle(Box::new(p)))
}

fn unbind(
    s: &mut State,
    name: &str,
    group: &str,
    api: &str,
    stage: Stage,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let binding = ThrottleBinding {
        group: group.to_string(),
        api: api.to_string(),
        stage,
    };
    if !policy(s, name)?.bindings.contains(&binding) {
        return Err(DomainError::not_found(
            "binding",
            &format!("{group}/{api} on {stage} of throttling policy '{name}'"),
        ));
    }
    remove_binding(s, name, &binding);
    fx.changes.groups.insert(group.to_string());
    let p = policy(s, name)?.clone();
    Ok(Reply::Throttle(Box::new(p)))
}

fn index_binding(s: &mut State, policy: &str, group: &str, api: &str, stage: Stage) {
    s.index
        .throttle_bindings
        .entry(group.to_string())
        .or_default()
        .entry(stage)
        .or_default()
        .insert(api.to_string(), policy.to_string());
}

/// Adds a binding to an existing policy and to the index (for the configuration apply, which
/// has checked it).
pub(super) fn bind_one(s: &mut State, policy: &str, b: &ThrottleBinding) {
    if let Some(p) = s.throttles.get_mut(policy) {
        p.bindings.insert(b.clone());
    }
    index_binding(s, policy, &b.group, &b.api, b.stage);
}

/// Removes one binding from its policy and from the index.
pub(super) fn unbind_one(s: &mut State, policy: &str, b: &ThrottleBinding) {
    remove_binding(s, policy, b);
}

/// Removes one binding from its policy and from the index.
fn remove_binding(s: &mut State, policy: &str, b: &ThrottleBinding) {
    if let Some(p) = s.throttles.get_mut(policy) {
        p.bindings.remove(b);
    }
    let ix = &mut s.index.throttle_bindings;
    if let Some(stages) = ix.get_mut(&b.group) {
        if let Some(apis) = stages.get_mut(&b.stage) {
            apis.remove(&b.api);
            if apis.is_empty() {
                stages.remove(&b.stage);
            }
        }
        if stages.is_empty() {
            ix.remove(&b.group);
        }
    }
}

/// Removes the bindings of `group` (of its API `api` only, with `Some`): the group or the API
/// is going away. The caller marks the group changed.
pub(super) fn unbind_all(s: &mut State, group: &str, api: Option<&str>) {
    let Some(stages) = s.index.throttle_bindings.get(group) else {
        return;
    };
    let doomed: Vec<(String, ThrottleBinding)> = stages
        .iter()
        .flat_map(|(stage, apis)| {
            apis.iter()
                .filter(|(a, _)| api.is_none_or(|only| only == a.as_str()))
                .map(move |(a, p)| {
                    let b = ThrottleBinding {
                        group: group.to_string(),
                        api: a.clone(),
                        stage: *stage,
                    };
                    (p.clone(), b)
                })
        })
        .collect();
    for (p, b) in doomed {
        remove_binding(s, &p, &b);
    }
}
