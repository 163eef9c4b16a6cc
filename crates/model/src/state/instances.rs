//! Dedicated instances: create (paying a subscription up front), change spec (paying an
//! upgrade's difference), renew a subscription, delete (kept until its last hours are billed).

use super::{
    ChargeType, Effects, Instance, ReleasedInstance, SpecChange, State, StopReason, Stopped,
    deleted, index_remove, ts,
};
use crate::command::InstanceOptions;
use crate::{Command, DomainError, Millis, Reply, validate};
use billing::{Event, Subscription, SubscriptionChange, Term};
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
        } => {
            let new = NewInstance {
                name,
                spec,
                region,
                charge_type: *charge_type,
                account,
                options: &InstanceOptions::default(),
            };
            create(s, new, now, catalog, fx)
        }
        Command::CreateInstanceWith {
            name,
            spec,
            region,
            charge_type,
            account,
            options,
        } => {
            let new = NewInstance {
                name,
                spec,
                region,
                charge_type: *charge_type,
                account,
                options,
            };
            create(s, new, now, catalog, fx)
        }
        Command::ModifyInstanceSpec { name, spec } => modify_spec(s, name, spec, now, catalog, fx),
        Command::RenewInstance { name, term } => renew(s, name, *term, now, catalog, fx),
        Command::SetInstanceAutoRenew { name, auto_renew } => {
            let inst = s
                .instances
                .get_mut(name)
                .ok_or_else(|| DomainError::not_found("instance", name))?;
            if inst.charge_type == ChargeType::Postpaid {
                return Err(not_a_subscription(name));
            }
            inst.auto_renew = *auto_renew;
            Ok(Reply::Instance(inst.clone()))
        }
        Command::DeleteInstance { name } => delete(s, name, now, fx),
        other => unreachable!("{} is not an instance command", other.kind()),
    }
}

/// What a create command asks for.
struct NewInstance<'a> {
    name: &'a str,
    spec: &'a str,
    region: &'a str,
    charge_type: ChargeType,
    account: &'a str,
    options: &'a InstanceOptions,
}

fn create(
    s: &mut State,
    new: NewInstance<'_>,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    let NewInstance {
        name,
        spec,
        region,
        charge_type,
        account,
        options,
    } = new;
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
    if options.auto_renew && term.is_none() {
        return Err(DomainError::invalid(
            "auto_renew",
            "only a subscription (charge type month or year) renews; pay-as-you-go is billed by the hour",
        ));
    }
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
    let mut inst = Instance {
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
        term_start_ms: term.map(|_| now),
        term,
        auto_renew: options.auto_renew && term.is_some(),
        term_warnings: 0,
        stopped: None,
        stops: Vec::new(),
    };
    // A pay-as-you-go instance of a suspended account starts stopped: it would accrue hours
    // while its APIs are refused. The recharge that restores the account starts it.
    if charge_type == ChargeType::Postpaid
        && !s.account(account)?.billing.serves_api_calls()
        && inst.stop(now, StopReason::AccountSuspended)
    {
        let event = Event::InstanceStopped {
            instance: name.to_string(),
            reason: StopReason::AccountSuspended.as_str().into(),
            release_at: None,
            hosted_groups: Vec::new(),
        };
        s.push_events(account, now, vec![event], fx);
    }
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
    if inst.charge_type == ChargeType::Postpaid {
        return Ok(None);
    }
    let term = inst.term.unwrap_or(match inst.charge_type {
        ChargeType::Year => Term::Years(1),
        _ => Term::Months(1),
    });
    if inst.spec == spec || inst.subscription_end_ms.is_none_or(|end| now >= end) {
        return Ok(None);
    }
    let sub = Subscription {
        region: inst.region.clone(),
        spec: inst.spec.clone(),
        term,
        start: ts(inst.term_start_ms.unwrap_or(inst.created_at_ms)),
    };
    match sub.change_spec(catalog, spec, ts(now)) {
        // Money moves in whole cents.
        Ok(SubscriptionChange::Upgrade { charge, .. }) => Ok(Some(charge.round_cents())),
        Ok(SubscriptionChange::AtRenewal { .. }) => Ok(None),
        Err(e) => Err(DomainError::FailedPrecondition(e.to_string())),
    }
}

fn not_a_subscription(name: &str) -> DomainError {
    DomainError::FailedPrecondition(format!(
        "instance '{name}' is pay-as-you-go: it has no term to renew (it is billed by the hour)"
    ))
}

/// The term a renewal of `t` adds to the paid span `span`: the same kind adds up, mixed kinds
/// count in months (what a later upgrade is prorated over).
fn extend_term(span: Option<Term>, t: Term) -> Term {
    match (span, t) {
        (Some(Term::Months(a)), Term::Months(b)) => Term::Months(a.saturating_add(b)),
        (Some(Term::Years(a)), Term::Years(b)) => Term::Years(a.saturating_add(b)),
        (Some(a), b) => Term::Months(a.months().saturating_add(b.months())),
        (None, b) => b,
    }
}

/// Pays a term of `name` from the balance and moves its end (see [`Command::RenewInstance`]).
/// `automatic` is the renewal the cycle makes at the end of a term of an auto-renewing
/// instance; it renews at the term's end.
pub(super) fn renew_at(
    s: &mut State,
    name: &str,
    term: Term,
    now: Millis,
    automatic: bool,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Instance, DomainError> {
    if term.months() == 0 {
        return Err(DomainError::invalid(
            "term",
            "must be at least one month or one year",
        ));
    }
    let inst = s
        .instances
        .get(name)
        .ok_or_else(|| DomainError::not_found("instance", name))?;
    if inst.charge_type == ChargeType::Postpaid {
        return Err(not_a_subscription(name));
    }
    let price = catalog
        .spec_price(&inst.region, &inst.spec)
        .map_err(|e| DomainError::invalid("spec", e.to_string()))?;
    let amount = billing::subscription_price(&price, term).map_err(super::billing_err)?;
    let account = inst.account.clone();
    let ended = matches!(
        inst.stopped,
        Some(Stopped {
            reason: StopReason::TermEnded,
            ..
        })
    );
    let end = inst.subscription_end_ms.unwrap_or(now);
    // A running term is extended from its end, and so is the one an automatic renewal
    // follows (without a gap); one that ended unrenewed starts again now.
    let (start, span) = if automatic || !(ended || end < now) {
        (end, inst.term)
    } else {
        (now, None)
    };
    let paid =
        billing::pay_upfront(&s.account(&account)?.billing, amount, ts(now)).map_err(|e| {
            DomainError::FailedPrecondition(format!(
                "account '{account}': renewing instance '{name}' for {} costs {amount}: {e}",
                term_name(term)
            ))
        })?;
    s.book(
        &account,
        now,
        format!("renewal {name} ({})", term_name(term)),
        -amount,
        paid,
        fx,
    )?;
    let inst = s.instances.get_mut(name).expect("checked above");
    let new_end = term.end(ts(start)).unix_secs() * 1000;
    if span.is_none() {
        inst.term_start_ms = Some(start);
    }
    inst.term = Some(extend_term(span, term));
    inst.subscription_end_ms = Some(new_end);
    inst.term_warnings = 0;
    inst.charge_type = match term {
        Term::Months(_) => ChargeType::Month,
        Term::Years(_) => ChargeType::Year,
    };
    let started = ended && inst.start(now);
    let inst = inst.clone();
    let mut events = vec![Event::TermRenewed {
        instance: name.to_string(),
        term_end: ts(new_end),
        amount,
        automatic,
    }];
    if started {
        events.push(Event::InstanceStarted {
            instance: name.to_string(),
        });
        if let Some(hosted) = s.index.groups_by_instance.get(name) {
            fx.changes.groups.extend(hosted.iter().cloned());
        }
    }
    fx.changes.instances.insert(name.to_string());
    s.push_events(&account, now, events, fx);
    Ok(inst)
}

fn renew(
    s: &mut State,
    name: &str,
    term: Term,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    renew_at(s, name, term, now, false, catalog, fx).map(Reply::Instance)
}

pub(crate) fn term_name(t: Term) -> String {
    match t {
        Term::Months(1) => "1 month".into(),
        Term::Months(m) => format!("{m} months"),
        Term::Years(1) => "1 year".into(),
        Term::Years(y) => format!("{y} years"),
    }
}

fn check_spec(catalog: &Catalog, spec: &str) -> Result<(), DomainError> {
    catalog
        .spec(spec)
        .map(|_| ())
        .map_err(|e| DomainError::invalid("spec", e.to_string()))
}
