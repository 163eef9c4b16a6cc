//! API groups and what they hold: APIs, their deployments per stage, and IP access control.

use super::{
    Api, ApiGroup, Deployment, Effects, IpRules, Stage, State, deleted, index_remove, route_of,
};
use crate::command::GroupChange;
use crate::entity::ApiSpec;
use crate::{Command, DomainError, Millis, Reply, validate};
use catalog::{Catalog, SHARED_INSTANCE};
use imbl::OrdMap;

pub(super) fn apply(
    s: &mut State,
    command: &Command,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let reply = match command {
        Command::CreateApiGroup {
            name,
            account,
            instance,
            host,
            base_path,
        } => create_group(s, name, account, instance, host, base_path, now)?,
        Command::ModifyApiGroup { name, change } => modify_group(s, name, change)?,
        Command::DeleteApiGroup { name, force } => delete_group(s, name, *force)?,
        Command::CreateApi { group, name, spec } => create_api(s, group, name, spec, now, catalog)?,
        Command::ModifyApi { group, name, spec } => modify_api(s, group, name, spec, catalog)?,
        Command::DeleteApi { group, name } => delete_api(s, group, name)?,
        Command::DeployApi { group, name, stage } => deploy(s, group, name, *stage, now)?,
        Command::AbolishApi { group, name, stage } => abolish(s, group, name, *stage)?,
        Command::SetIpAccessControl {
            group,
            api,
            allow,
            deny,
        } => set_acl(s, group, api.as_deref(), allow, deny)?,
        other => unreachable!("{} is not a group command", other.kind()),
    };
    // Every command of this family changes exactly one group (or removes it).
    let group = match command {
        Command::CreateApiGroup { name, .. }
        | Command::ModifyApiGroup { name, .. }
        | Command::DeleteApiGroup { name, .. } => name,
        Command::CreateApi { group, .. }
        | Command::ModifyApi { group, .. }
        | Command::DeleteApi { group, .. }
        | Command::DeployApi { group, .. }
        | Command::AbolishApi { group, .. }
        | Command::SetIpAccessControl { group, .. } => group,
        _ => unreachable!("matched above"),
    };
    fx.changes.groups.insert(group.clone());
    Ok(reply)
}

fn create_group(
    s: &mut State,
    name: &str,
    account: &str,
    instance: &str,
    host: &Option<String>,
    base_path: &Option<String>,
    now: Millis,
) -> Result<Reply, DomainError> {
    validate::name("name", name)?;
    s.account(account)?;
    check_instance_ref(s, instance, account)?;
    check_route_fields(host.as_deref(), base_path.as_deref())?;
    if s.groups.contains_key(name) {
        return Err(DomainError::already_exists("API group", name));
    }
    check_route_free(s, name, host, base_path)?;
    let mut g = ApiGroup::empty(name, account, now);
    g.instance = instance.to_string();
    g.host = host.clone();
    g.base_path = base_path.clone();
    s.index.add_group(&g);
    s.groups.insert(name.to_string(), g.clone());
    Ok(Reply::Group(g))
}

fn modify_group(s: &mut State, name: &str, change: &GroupChange) -> Result<Reply, DomainError> {
    let g = s.group(name)?;
    let instance = change
        .instance
        .clone()
        .unwrap_or_else(|| g.instance.clone());
    let host = change.host.clone().unwrap_or_else(|| g.host.clone());
    let base_path = change
        .base_path
        .clone()
        .unwrap_or_else(|| g.base_path.clone());
    check_instance_ref(s, &instance, &g.account)?;
    check_route_fields(host.as_deref(), base_path.as_deref())?;
    check_route_free(s, name, &host, &base_path)?;
    let old_route = route_of(g.host.as_deref(), g.base_path.as_deref());
    let old_instance = g.instance.clone();
    let name_s = name.to_string();
    s.index.routes.remove(&old_route);
    s.index.routes.insert(
        route_of(host.as_deref(), base_path.as_deref()),
        name_s.clone(),
    );
    index_remove(&mut s.index.groups_by_instance, &old_instance, &name_s);
    s.index
        .groups_by_instance
        .entry(instance.clone())
        .or_default()
        .insert(name_s);
    let g = s.group_mut(name)?;
    g.instance = instance;
    g.host = host;
    g.base_path = base_path;
    Ok(Reply::Group(g.clone()))
}

fn delete_group(s: &mut State, name: &str, force: bool) -> Result<Reply, DomainError> {
    let g = s.group(name)?;
    // Deleting a group that serves traffic turns its calls into 404s: only when asked to.
    let deployed: Vec<String> = g
        .deployments
        .iter()
        .filter(|(_, apis)| !apis.is_empty())
        .map(|(stage, apis)| {
            let names: Vec<&str> = apis.keys().map(String::as_str).collect();
            format!("{}: {}", stage.as_str(), names.join(", "))
        })
        .collect();
    if !force && !deployed.is_empty() {
        return Err(DomainError::FailedPrecondition(format!(
            "API group '{name}' has deployed APIs ({}); abolish them first, or delete with force (gatewayctl group delete --force) to stop their traffic too",
            deployed.join("; ")
        )));
    }
    remove_group(s, name);
    super::throttles::unbind_all(s, name, None);
    Ok(deleted("API group", name))
}

/// Removes a group and its index entries (also used by the purge of an account).
pub(super) fn remove_group(s: &mut State, name: &str) {
    let Some(g) = s.groups.remove(name) else {
        return;
    };
    let name = name.to_string();
    let ix = &mut s.index;
    ix.routes
        .remove(&route_of(g.host.as_deref(), g.base_path.as_deref()));
    index_remove(&mut ix.groups_by_account, &g.account, &name);
    index_remove(&mut ix.groups_by_instance, &g.instance, &name);
    for (api, apps) in &g.grants {
        for app in apps {
            index_remove(&mut ix.grants_by_app, app, &(name.clone(), api.clone()));
        }
    }
}

fn create_api(
    s: &mut State,
    group: &str,
    name: &str,
    spec: &ApiSpec,
    now: Millis,
    catalog: &Catalog,
) -> Result<Reply, DomainError> {
    validate::name("name", name)?;
    check_api_spec(spec, catalog)?;
    let g = s.group(group)?;
    if g.apis.contains_key(name) {
        return Err(DomainError::already_exists(
            "API",
            &format!("{group}/{name}"),
        ));
    }
    check_api_route_free(g, name, spec)?;
    let api = Api {
        name: name.to_string(),
        spec: spec.clone(),
        created_at_ms: now,
    };
    let g = s.group_mut(group)?;
    g.api_routes.insert(route_key(spec), name.to_string());
    g.apis.insert(name.to_string(), api.clone());
    Ok(Reply::Api {
        group: group.to_string(),
        api,
    })
}

fn modify_api(
    s: &mut State,
    group: &str,
    name: &str,
    spec: &ApiSpec,
    catalog: &Catalog,
) -> Result<Reply, DomainError> {
    check_api_spec(spec, catalog)?;
    let g = s.group(group)?;
    let old = g
        .apis
        .get(name)
        .ok_or_else(|| DomainError::not_found("API", &format!("{group}/{name}")))?;
    let old_key = route_key(&old.spec);
    check_api_route_free(g, name, spec)?;
    let g = s.group_mut(group)?;
    g.api_routes.remove(&old_key);
    g.api_routes.insert(route_key(spec), name.to_string());
    let api = g.apis.get_mut(name).expect("checked above");
    api.spec = spec.clone();
    Ok(Reply::Api {
        group: group.to_string(),
        api: api.clone(),
    })
}

fn delete_api(s: &mut State, group: &str, name: &str) -> Result<Reply, DomainError> {
    let g = s.group(group)?;
    let Some(api) = g.apis.get(name) else {
        return Err(DomainError::not_found("API", &format!("{group}/{name}")));
    };
    let deployed: Vec<&str> = g
        .deployments
        .iter()
        .filter(|(_, apis)| apis.contains_key(name))
        .map(|(st, _)| st.as_str())
        .collect();
    if !deployed.is_empty() {
        return Err(DomainError::FailedPrecondition(format!(
            "API '{group}/{name}' is deployed to {}; abolish it there first",
            deployed.join(", ")
        )));
    }
    let key = route_key(&api.spec);
    let granted = g.grants.get(name).cloned().unwrap_or_default();
    let g = s.group_mut(group)?;
    g.apis.remove(name);
    g.api_routes.remove(&key);
    // A new API of the same name starts without the old one's permissions or policies.
    g.grants.remove(name);
    g.api_acls.remove(name);
    super::throttles::unbind_all(s, group, Some(name));
    for app in granted {
        index_remove(
            &mut s.index.grants_by_app,
            &app,
            &(group.to_string(), name.to_string()),
        );
    }
    Ok(deleted("API", &format!("{group}/{name}")))
}

fn deploy(
    s: &mut State,
    group: &str,
    name: &str,
    stage: Stage,
    now: Millis,
) -> Result<Reply, DomainError> {
    let g = s.group(group)?;
    let api = g
        .apis
        .get(name)
        .ok_or_else(|| DomainError::not_found("API", &format!("{group}/{name}")))?;
    // Another API deployed at the same method and path on this stage would shadow it.
    let key = deployed_key(stage, &api.spec);
    if let Some(other) = g.deployed_routes.get(&key).filter(|other| *other != name) {
        return Err(DomainError::FailedPrecondition(format!(
            "API '{group}/{other}' is already deployed to {} at {} {}",
            stage.as_str(),
            api.spec.method,
            api.spec.path
        )));
    }
    let deployment = Deployment {
        spec: api.spec.clone(),
        deployed_at_ms: now,
    };
    let g = s.group_mut(group)?;
    // A redeploy of a changed definition frees the route it was deployed at.
    let previous = g
        .deployments
        .get(&stage)
        .and_then(|d| d.get(name))
        .map(|d| deployed_key(stage, &d.spec));
    if let Some(previous) = previous {
        g.deployed_routes.remove(&previous);
    }
    g.deployed_routes.insert(key, name.to_string());
    g.deployments
        .entry(stage)
        .or_default()
        .insert(name.to_string(), deployment.clone());
    Ok(Reply::Deployment {
        group: group.to_string(),
        api: name.to_string(),
        stage,
        deployment,
    })
}

fn abolish(s: &mut State, group: &str, name: &str, stage: Stage) -> Result<Reply, DomainError> {
    let g = s.group(group)?;
    if !g.apis.contains_key(name) {
        return Err(DomainError::not_found("API", &format!("{group}/{name}")));
    }
    let Some(deployed) = g.deployments.get(&stage).and_then(|d| d.get(name)) else {
        return Err(DomainError::FailedPrecondition(format!(
            "API '{group}/{name}' is not deployed to {}",
            stage.as_str()
        )));
    };
    let key = deployed_key(stage, &deployed.spec);
    let g = s.group_mut(group)?;
    g.deployed_routes.remove(&key);
    let stage_map = g.deployments.get_mut(&stage).expect("checked above");
    stage_map.remove(name);
    if stage_map.is_empty() {
        g.deployments.remove(&stage);
    }
    Ok(deleted(
        "deployment",
        &format!("{group}/{name}@{}", stage.as_str()),
    ))
}

fn set_acl(
    s: &mut State,
    group: &str,
    api: Option<&str>,
    allow: &[String],
    deny: &[String],
) -> Result<Reply, DomainError> {
    for c in allow {
        validate::cidr("allow", c)?;
    }
    for c in deny {
        validate::cidr("deny", c)?;
    }
    let g = s.group(group)?;
    if let Some(api) = api
        && !g.apis.contains_key(api)
    {
        return Err(DomainError::not_found("API", &format!("{group}/{api}")));
    }
    let g = s.group_mut(group)?;
    match api {
        None => {
            g.ip_allow = allow.to_vec();
            g.ip_deny = deny.to_vec();
        }
        Some(api) if allow.is_empty() && deny.is_empty() => {
            g.api_acls.remove(api);
        }
        Some(api) => {
            let rules = IpRules {
                allow: allow.to_vec(),
                deny: deny.to_vec(),
            };
            g.api_acls.insert(api.to_string(), rules);
        }
    }
    Ok(Reply::Group(g.clone()))
}

/// A group may run on the shared instance or on a dedicated instance of its own account.
pub(super) fn check_instance_ref(
    s: &State,
    instance: &str,
    account: &str,
) -> Result<(), DomainError> {
    if instance == SHARED_INSTANCE {
        return Ok(());
    }
    let inst = s.instances.get(instance).ok_or_else(|| {
        DomainError::invalid(
            "instance",
            format!(
                "'{instance}' is neither '{SHARED_INSTANCE}' nor an existing dedicated instance"
            ),
        )
    })?;
    if inst.account != account {
        return Err(DomainError::invalid(
            "instance",
            format!("'{instance}' belongs to another account"),
        ));
    }
    Ok(())
}

/// Two groups may not answer to the same host and base path: requests could not be told apart.
fn check_route_free(
    s: &State,
    name: &str,
    host: &Option<String>,
    base_path: &Option<String>,
) -> Result<(), DomainError> {
    match s
        .index
        .routes
        .get(&route_of(host.as_deref(), base_path.as_deref()))
    {
        Some(other) if other != name => Err(DomainError::FailedPrecondition(format!(
            "API group '{other}' already serves host {} and base path {}",
            host.as_deref().unwrap_or("(any)"),
            base_path.as_deref().unwrap_or("(none)")
        ))),
        _ => Ok(()),
    }
}

pub(super) fn check_route_fields(
    host: Option<&str>,
    base_path: Option<&str>,
) -> Result<(), DomainError> {
    if let Some(h) = host {
        validate::host(h)?;
    }
    if let Some(b) = base_path {
        validate::base_path(b)?;
    }
    Ok(())
}

pub(super) fn check_api_spec(spec: &ApiSpec, catalog: &Catalog) -> Result<(), DomainError> {
    validate::method(&spec.method)?;
    validate::api_path(&spec.path)?;
    spec.backends.check()?;
    validate::backend_location(catalog, &spec.backend_location)?;
    validate::timeout_ms(spec.timeout_ms)
}

/// What a router cannot tell apart: the method and the path with parameter names erased
/// (`/a/{id}` and `/a/{x}` have the same shape).
pub(super) fn route_key(spec: &ApiSpec) -> String {
    let shape = spec
        .path
        .split('/')
        .map(|seg| match seg.strip_prefix("{*") {
            Some(_) => "{*}",
            None if seg.starts_with('{') => "{}",
            None => seg,
        })
        .collect::<Vec<_>>()
        .join("/");
    format!("{} {shape}", spec.method)
}

/// [`route_key`] on one stage.
pub(super) fn deployed_key(stage: Stage, spec: &ApiSpec) -> String {
    format!("{} {}", stage.as_str(), route_key(spec))
}

fn check_api_route_free(g: &ApiGroup, name: &str, spec: &ApiSpec) -> Result<(), DomainError> {
    match g
        .api_routes
        .get(&route_key(spec))
        .filter(|other| *other != name)
    {
        Some(other) => Err(DomainError::FailedPrecondition(format!(
            "API '{}/{other}' already serves {} {}",
            g.name, spec.method, spec.path
        ))),
        None => Ok(()),
    }
}

/// A group's route indexes rebuilt from its APIs and deployments.
pub(super) fn rebuilt_route_indexes(
    g: &ApiGroup,
) -> (OrdMap<String, String>, OrdMap<String, String>) {
    let apis = g
        .apis
        .values()
        .map(|a| (route_key(&a.spec), a.name.clone()))
        .collect();
    let deployed = g
        .deployments
        .iter()
        .flat_map(|(stage, d)| {
            d.iter()
                .map(move |(name, dep)| (deployed_key(*stage, &dep.spec), name.clone()))
        })
        .collect();
    (apis, deployed)
}
