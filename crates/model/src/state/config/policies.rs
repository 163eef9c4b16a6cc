//! The throttling policies of a declarative configuration: exported with the groups, and
//! applied after them (so that a binding may name an API the same document adds).

use super::{Problems, State};
use crate::config::{ApplyOptions, BindingEntry, ChangeKind, ObjectChange, PolicyEntry};
use crate::entity::{Stage, ThrottleBinding, ThrottlePolicy, ThrottleUnit};
use crate::state::Effects;
use crate::{DEFAULT_ACCOUNT, DomainError, Millis, validate};
use imbl::{OrdMap, OrdSet};
use std::collections::{BTreeMap, BTreeSet};

/// A policy as the document gives it.
pub(super) fn export(p: &ThrottlePolicy) -> PolicyEntry {
    PolicyEntry {
        name: p.name.clone(),
        account: p.account.clone(),
        unit: p.unit.as_str().to_string(),
        api_limit: p.api_limit,
        user_limit: p.user_limit,
        app_limit: p.app_limit,
        special_apps: p
            .special_apps
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        special_accounts: p
            .special_accounts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        bindings: p
            .bindings
            .iter()
            .map(|b| BindingEntry {
                group: b.group.clone(),
                api: b.api.clone(),
                stage: b.stage.as_str().to_string(),
            })
            .collect(),
    }
}

/// Makes the policies match the document, on a state whose groups already do. Bindings of
/// APIs that the groups step removed are dropped first. Every problem is collected.
pub(super) fn apply(
    s: &mut State,
    entries: &[PolicyEntry],
    options: &ApplyOptions,
    now: Millis,
    problems: &mut Problems,
    fx: &mut Effects,
    report: &mut Vec<ObjectChange>,
) {
    let mut planned = Vec::new();
    let mut named = BTreeSet::new();
    for entry in entries {
        let object = format!("policy {}", entry.name);
        if !named.insert(entry.name.clone()) {
            problems.push(
                &object,
                DomainError::invalid("name", "the document names this policy more than once"),
            );
            continue;
        }
        if let Some(p) = plan(s, entry, options, now, &object, problems) {
            planned.push(p);
        }
    }
    let mut doomed: Vec<String> = planned.iter().map(|p| p.name.clone()).collect();
    if options.prune {
        doomed.extend(
            s.throttles
                .values()
                .filter(|p| options.account.as_ref().is_none_or(|a| *a == p.account))
                .filter(|p| !named.contains(&p.name))
                .map(|p| p.name.clone()),
        );
    }
    let mut olds = BTreeMap::new();
    for name in doomed {
        if let Some(old) = s.throttles.get(&name).cloned() {
            for b in &old.bindings {
                super::super::throttles::unbind_one(s, &old.name, b);
                fx.changes.groups.insert(b.group.clone());
            }
            s.throttles.remove(&name);
            olds.insert(name, old);
        }
    }
    for p in &planned {
        let mut stored = p.clone();
        stored.bindings = OrdSet::new();
        stored.created_at_ms = olds.get(&p.name).map_or(now, |o| o.created_at_ms);
        s.throttles.insert(p.name.clone(), stored);
        for b in &p.bindings {
            if let Some(other) = s.throttle_of(&b.group, &b.api, b.stage) {
                let message = format!(
                    "{}/{} on {} is bound to policy '{}' (an API takes one policy per stage)",
                    b.group, b.api, b.stage, other.name
                );
                problems.push(
                    &format!("policy {}", p.name),
                    DomainError::invalid("bindings", message),
                );
                continue;
            }
            super::super::throttles::bind_one(s, &p.name, b);
            fx.changes.groups.insert(b.group.clone());
        }
        let old = olds.remove(&p.name);
        if old.as_ref() != s.throttles.get(&p.name) {
            report.push(ObjectChange {
                kind: if old.is_some() {
                    ChangeKind::Change
                } else {
                    ChangeKind::Add
                },
                object: format!("policy {}", p.name),
                details: Vec::new(),
            });
        }
    }
    for name in olds.keys() {
        report.push(ObjectChange {
            kind: ChangeKind::Remove,
            object: format!("policy {name}"),
            details: Vec::new(),
        });
    }
}

/// Bindings of APIs or groups that no longer exist go with them.
pub(super) fn drop_orphan_bindings(s: &mut State, fx: &mut Effects) {
    let orphans: Vec<(String, ThrottleBinding)> = s
        .throttles
        .values()
        .flat_map(|p| p.bindings.iter().map(move |b| (p.name.clone(), b.clone())))
        .filter(|(_, b)| {
            s.groups
                .get(&b.group)
                .is_none_or(|g| !g.apis.contains_key(&b.api))
        })
        .collect();
    for (p, b) in orphans {
        super::super::throttles::unbind_one(s, &p, &b);
        fx.changes.groups.insert(b.group);
    }
}

/// The policy an entry describes (with no bindings yet: they are added once the old ones are
/// out), or `None` with its problems noted.
fn plan(
    s: &State,
    entry: &PolicyEntry,
    options: &ApplyOptions,
    now: Millis,
    object: &str,
    problems: &mut Problems,
) -> Option<ThrottlePolicy> {
    let before = problems.0.len();
    problems.check(object, validate::name("name", &entry.name));
    let account = match (&entry.account, &options.account) {
        (a, _) if !a.is_empty() => a.clone(),
        (_, Some(scope)) => scope.clone(),
        (_, None) => DEFAULT_ACCOUNT.to_string(),
    };
    if let Some(scope) = &options.account
        && *scope != account
    {
        problems.push(
            object,
            DomainError::invalid(
                "account",
                format!("'{account}' is not '{scope}', the only account this apply may change"),
            ),
        );
    }
    if s.account(&account).is_err() {
        problems.push(
            object,
            DomainError::invalid("account", format!("'{account}' is not an existing account")),
        );
    }
    let unit = ThrottleUnit::parse(&entry.unit);
    if let Err(e) = &unit {
        problems.push(object, e.clone());
    }
    problems.check(
        object,
        validate::throttle_limits(entry.api_limit, entry.user_limit, entry.app_limit),
    );
    for (key, limit) in &entry.special_apps {
        if !s.index.app_keys.contains_key(key) {
            problems.push(
                object,
                DomainError::invalid("special_apps", format!("'{key}' is not an existing AppKey")),
            );
        }
        problems.check(
            object,
            special_limit("special_apps", *limit, entry.api_limit),
        );
    }
    for (a, limit) in &entry.special_accounts {
        if s.account(a).is_err() {
            problems.push(
                object,
                DomainError::invalid(
                    "special_accounts",
                    format!("'{a}' is not an existing account"),
                ),
            );
        }
        problems.check(
            object,
            special_limit("special_accounts", *limit, entry.api_limit),
        );
    }
    let mut bindings = OrdSet::new();
    for b in &entry.bindings {
        match binding(s, b, &account) {
            Ok(b) => {
                if bindings.insert(b.clone()).is_some() {
                    problems.push(
                        object,
                        DomainError::invalid(
                            "bindings",
                            format!("{}/{} on {} is listed twice", b.group, b.api, b.stage),
                        ),
                    );
                }
            }
            Err(e) => problems.push(object, e),
        }
    }
    if problems.0.len() > before {
        return None;
    }
    Some(ThrottlePolicy {
        name: entry.name.clone(),
        account,
        unit: unit.ok()?,
        api_limit: entry.api_limit,
        user_limit: entry.user_limit,
        app_limit: entry.app_limit,
        special_apps: entry
            .special_apps
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect::<OrdMap<_, _>>(),
        special_accounts: entry
            .special_accounts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect::<OrdMap<_, _>>(),
        bindings,
        created_at_ms: now,
    })
}

fn special_limit(field: &str, limit: u64, api_limit: u64) -> Result<(), DomainError> {
    validate::throttle_limit(field, limit)?;
    if limit > api_limit {
        return Err(DomainError::invalid(
            field,
            format!("{limit} is more than the API limit {api_limit}; it may be at most that"),
        ));
    }
    Ok(())
}

fn binding(s: &State, b: &BindingEntry, account: &str) -> Result<ThrottleBinding, DomainError> {
    let stage = Stage::parse(&b.stage).map_err(|_| {
        DomainError::invalid(
            "bindings",
            format!("stage '{}' is not one of RELEASE, PRE, TEST", b.stage),
        )
    })?;
    let g = s.groups.get(&b.group).ok_or_else(|| {
        DomainError::invalid("bindings", format!("'{}' is not an API group", b.group))
    })?;
    if !g.apis.contains_key(&b.api) {
        return Err(DomainError::invalid(
            "bindings",
            format!("'{}/{}' is not an API", b.group, b.api),
        ));
    }
    if g.account != account {
        return Err(DomainError::invalid(
            "bindings",
            format!(
                "API group '{}' belongs to account '{}', the policy to '{account}'",
                b.group, g.account
            ),
        ));
    }
    Ok(ThrottleBinding {
        group: b.group.clone(),
        api: b.api.clone(),
        stage,
    })
}
