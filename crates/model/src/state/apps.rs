//! Apps (the identities of programs that sign their calls) and their authorisations on APIs.

use super::{App, Effects, State, deleted, index_remove};
use crate::{Command, DomainError, Millis, Reply, validate};

pub(super) fn apply(
    s: &mut State,
    command: &Command,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    match command {
        Command::CreateApp {
            name,
            account,
            key,
            secret,
        } => create(s, name, account, key, secret, now, fx),
        Command::DeleteApp { name } => delete(s, name, fx),
        Command::AuthorizeApp { group, api, app } => authorize(s, group, api, app, fx),
        Command::RevokeAppAuthorization { group, api, app } => revoke(s, group, api, app, fx),
        other => unreachable!("{} is not an app command", other.kind()),
    }
}

fn create(
    s: &mut State,
    name: &str,
    account: &str,
    key: &str,
    secret: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    validate::name("name", name)?;
    s.account(account)?;
    if key.len() < 8 || secret.len() < 16 {
        return Err(DomainError::invalid(
            "key",
            "app keys and secrets are too short",
        ));
    }
    if s.apps.contains_key(name) {
        return Err(DomainError::already_exists("app", name));
    }
    if s.index.app_keys.contains_key(key) {
        return Err(DomainError::already_exists("app key", key));
    }
    let app = App {
        name: name.to_string(),
        account: account.to_string(),
        key: key.to_string(),
        secret: secret.to_string(),
        created_at_ms: now,
    };
    s.apps.insert(name.to_string(), app.clone());
    s.index.app_keys.insert(key.to_string(), name.to_string());
    fx.changes.apps.insert(name.to_string());
    Ok(Reply::App(app))
}

fn delete(s: &mut State, name: &str, fx: &mut Effects) -> Result<Reply, DomainError> {
    let Some(app) = s.apps.remove(name) else {
        return Err(DomainError::not_found("app", name));
    };
    s.index.app_keys.remove(&app.key);
    // Only the APIs it was authorised on change, found through the index.
    let granted = s.index.grants_by_app.remove(name).unwrap_or_default();
    for (group, api) in granted {
        if let Some(g) = s.groups.get_mut(&group) {
            index_remove(&mut g.grants, &api, &name.to_string());
            fx.changes.groups.insert(group);
        }
    }
    fx.changes.apps.insert(name.to_string());
    Ok(deleted("app", name))
}

fn authorize(
    s: &mut State,
    group: &str,
    api: &str,
    app: &str,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let g = s.group(group)?;
    if !g.apis.contains_key(api) {
        return Err(DomainError::not_found("API", &format!("{group}/{api}")));
    }
    let a = s
        .apps
        .get(app)
        .ok_or_else(|| DomainError::not_found("app", app))?;
    if a.account != g.account {
        return Err(DomainError::invalid(
            "app",
            format!("app '{app}' belongs to another account than API group '{group}'"),
        ));
    }
    s.index
        .grants_by_app
        .entry(app.to_string())
        .or_default()
        .insert((group.to_string(), api.to_string()));
    let g = s.group_mut(group)?;
    g.grants
        .entry(api.to_string())
        .or_default()
        .insert(app.to_string());
    fx.changes.groups.insert(group.to_string());
    Ok(Reply::Group(g.clone()))
}

fn revoke(
    s: &mut State,
    group: &str,
    api: &str,
    app: &str,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let g = s.group(group)?;
    if !g.grants.get(api).is_some_and(|apps| apps.contains(app)) {
        return Err(DomainError::not_found(
            "authorization",
            &format!("{app} on {group}/{api}"),
        ));
    }
    index_remove(
        &mut s.index.grants_by_app,
        &app.to_string(),
        &(group.to_string(), api.to_string()),
    );
    let g = s.group_mut(group)?;
    index_remove(&mut g.grants, &api.to_string(), &app.to_string());
    fx.changes.groups.insert(group.to_string());
    Ok(Reply::Group(g.clone()))
}
