//! Dedicated instances: create (paying a subscription up front), change spec (paying an
//! upgrade's difference), delete (kept until its last hours are billed).

use super::{
    ChargeType, Effects, Instance, ReleasedInstance, SpecChange, State, deleted, index_remove, ts,
};
use crate::{Command, DomainError, Millis, Reply, validate};
use billing::{Subscription, SubscriptionChange, Term};
use catalog::{Catalog, SHARED_INSTANCE, Usd};

pub(super) fn apply(
    s: &mut State,
    command: &Command,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    match command {
        Command::CreateInstance {
            name,
            spec,
            region,
            charge_type,
            account,
        } => create(
            s,
            name,
            spec,
            region,
            *charge_type,
            account,
            now,
            catalog,
            fx,
        ),
        Command::ModifyInstanceSpec { name, spec } => modify_spec(s, name, spec, now, catalog, fx),
        Command::DeleteInstance { name } => delete(s, name, now, fx),
        other => unreachable!("{} is not an instance command", other.kind()),
    }
}

#[allow(clippy::too_many_arguments)]
fn create(
    s: &mut State,
    name: &str,
    spec: &str,
    region: &str,
    charge_type: ChargeType,
    account: &str,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    validate::name("name", name)?;
    if name == SHARED_INSTANCE {
        return Err(DomainError::invalid(
            "name",
            format!("'{SHARED_INSTANCE}' is the built-in shared instance"),
        ));
    }
    check_spec(catalog, spec)?;
    catalog
        .region(region)
        .map_err(|e| DomainError::invalid("region", e.to_string()))?;
    s.account(account)?;
    if s.instances.contains_key(name) {
        return Err(DomainError::already_exists("instance", name));
    }
    let term = match charge_type {
        ChargeType::Postpaid => None,
        ChargeType::Month => Some(Term::Months(1)),
        ChargeType::Year => Some(Term::Years(1)),
    };
    let mut subscription_end_ms = None;
    if let Some(term) = term {
        let sub = Subscription {
            region: region.to_string(),
            spec: spec.to_string(),
            term,
            start: ts(now),
        };
        let price = sub
            .price(catalog)
            .map_err(|e| DomainError::invalid("spec", e.to_string()))?;
        let paid = billing::pay_upfront(&s.account(account)?.billing, price, ts(now))
            .map_err(|e| DomainError::FailedPrecondition(format!("account '{account}': {e}")))?;
        s.book(
            account,
            now,
            format!("subscription {name}"),
            -price,
            paid,
            fx,
        )?;
        subscription_end_ms = Some(sub.end().unix_secs() * 1000);
    }
    let inst = Instance {
        name: name.to_string(),
        spec: spec.to_string(),
        region: region.to_string(),
        charge_type,
        account: account.to_string(),
        created_at_ms: now,
        spec_history: vec![SpecChange {
            at_ms: now,
            spec: spec.to_string(),
        }],
        subscription_end_ms,
    };
    s.instances.insert(name.to_string(), inst.clone());
    s.index
        .instances_by_account
        .entry(account.to_string())
        .or_default()
        .insert(name.to_string());
    fx.changes.instances.insert(name.to_string());
    Ok(Reply::Instance(inst))
}

fn modify_spec(
    s: &mut State,
    name: &str,
    spec: &str,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    check_spec(catalog, spec)?;
    let inst = s
        .instances
        .get(name)
        .ok_or_else(|| DomainError::not_found("instance", name))?;
    if let Some(charge) = upgrade_charge(inst, spec, now, catalog)? {
        let account = inst.account.clone();
        let paid =
            billing::pay_upfront(&s.account(&account)?.billing, charge, ts(now)).map_err(|e| {
                DomainError::FailedPrecondition(format!(
                    "account '{account}': upgrading the subscription costs {charge}: {e}"
                ))
            })?;
        s.book(
            &account,
            now,
            format!("upgrade {name} to {spec}"),
            -charge,
            paid,
            fx,
        )?;
    }
    let inst = s.instances.get_mut(name).expect("checked above");
    if inst.spec != spec {
        inst.spec = spec.to_string();
        inst.spec_history.push(SpecChange {
            at_ms: now,
            spec: spec.to_string(),
        });
        fx.changes.instances.insert(name.to_string());
    }
    Ok(Reply::Instance(inst.clone()))
}

fn delete(s: &mut State, name: &str, now: Millis, fx: &mut Effects) -> Result<Reply, DomainError> {
    if !s.instances.contains_key(name) {
        return Err(DomainError::not_found("instance", name));
    }
    if let Some(hosted) = s.index.groups_by_instance.get(name) {
        let names: Vec<&str> = hosted.iter().map(String::as_str).collect();
        return Err(DomainError::FailedPrecondition(format!(
            "instance '{name}' still hosts API groups {}; move them to another instance first",
            names.join(", ")
        )));
    }
    let inst = s.instances.remove(name).expect("checked above");
    index_remove(
        &mut s.index.instances_by_account,
        &inst.account,
        &name.to_string(),
    );
    // Kept until its last hours are billed.
    s.released.push_back(ReleasedInstance {
        instance: inst,
        released_at_ms: now,
    });
    fx.changes.instances.insert(name.to_string());
    Ok(deleted("instance", name))
}

/// What upgrading a subscription instance to `spec` costs now, if anything. Downgrades and
/// changes after the paid term cost nothing here (see the README).
fn upgrade_charge(
    inst: &Instance,
    spec: &str,
    now: Millis,
    catalog: &Catalog,
) -> Result<Option<Usd>, DomainError> {
    let term = match inst.charge_type {
        ChargeType::Postpaid => return Ok(None),
        ChargeType::Month => Term::Months(1),
        ChargeType::Year => Term::Years(1),
    };
    if inst.spec == spec || inst.subscription_end_ms.is_none_or(|end| now >= end) {
        return Ok(None);
    }
    let sub = Subscription {
        region: inst.region.clone(),
        spec: inst.spec.clone(),
        term,
        start: ts(inst.created_at_ms),
    };
    match sub.change_spec(catalog, spec, ts(now)) {
        Ok(SubscriptionChange::Upgrade { charge, .. }) => Ok(Some(charge)),
        Ok(SubscriptionChange::AtRenewal { .. }) => Ok(None),
        Err(e) => Err(DomainError::FailedPrecondition(e.to_string())),
    }
}

fn check_spec(catalog: &Catalog, spec: &str) -> Result<(), DomainError> {
    catalog
        .spec(spec)
        .map(|_| ())
        .map_err(|e| DomainError::invalid("spec", e.to_string()))
}
