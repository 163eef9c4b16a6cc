//! Accounts and their admin tokens: create, recharge, alerts, webhook acknowledgements.

use super::{Account, ApiToken, Effects, State, deleted, ts};
use crate::command::Update;
use crate::{Command, DomainError, Millis, Reply, validate};
use catalog::Usd;

pub(super) fn apply(
    s: &mut State,
    command: &Command,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    match command {
        Command::CreateAccount {
            name,
            webhook,
            balance_alert,
        } => create(s, name, webhook.as_deref(), *balance_alert, now),
        Command::Recharge { account, amount } => recharge(s, account, *amount, now, fx),
        Command::SetAccountAlert {
            account,
            threshold,
            webhook,
        } => set_alert(s, account, threshold, webhook, now, fx),
        Command::AdjustBalance {
            account,
            amount,
            reason,
        } => adjust(s, account, *amount, reason, now, fx),
        Command::AckEvents { account, seq } => {
            let acct = s.account_mut(account)?;
            acct.events_acked = acct.events_acked.max(*seq);
            Ok(Reply::Done)
        }
        Command::RecordWebhookFailure {
            account,
            attempts,
            error,
        } => {
            s.account(account)?;
            let event = billing::Event::WebhookFailed {
                attempts: *attempts,
                error: error.clone(),
            };
            s.push_events(account, now, vec![event], fx);
            Ok(Reply::Done)
        }
        Command::CreateToken {
            id,
            account,
            secret_sha256,
        } => create_token(s, id, account, secret_sha256, now),
        Command::RevokeToken { id } => {
            if s.tokens.remove(id).is_none() {
                return Err(DomainError::not_found("token", id));
            }
            Ok(deleted("token", id))
        }
        other => unreachable!("{} is not an account command", other.kind()),
    }
}

fn create(
    s: &mut State,
    name: &str,
    webhook: Option<&str>,
    balance_alert: Option<Usd>,
    now: Millis,
) -> Result<Reply, DomainError> {
    validate::name("name", name)?;
    if let Some(w) = webhook {
        validate::webhook(w)?;
    }
    if let Some(t) = balance_alert {
        validate::threshold(t)?;
    }
    if s.accounts.contains_key(name) {
        return Err(DomainError::already_exists("account", name));
    }
    let mut acct = Account::new(name, now);
    acct.webhook = webhook.map(str::to_string);
    acct.billing = billing::set_balance_alert(&acct.billing, balance_alert).0;
    s.accounts.insert(name.to_string(), acct.clone());
    Ok(Reply::Account(Box::new(acct)))
}

fn recharge(
    s: &mut State,
    account: &str,
    amount: Usd,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    if amount <= Usd::ZERO {
        return Err(DomainError::invalid(
            "amount",
            format!("{amount} must be more than 0"),
        ));
    }
    validate::whole_cents("amount", amount)?;
    let acct = s.account(account)?;
    let outcome = billing::recharge(&acct.billing, amount, ts(now))
        .map_err(|e| DomainError::invalid("amount", e.to_string()))?;
    s.book(account, now, "recharge".into(), amount, outcome, fx)?;
    Ok(Reply::Account(Box::new(s.account(account)?.clone())))
}

fn set_alert(
    s: &mut State,
    account: &str,
    threshold: &Update<Usd>,
    webhook: &Update<String>,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    if let Update::Set(w) = webhook {
        validate::webhook(w)?;
    }
    if let Update::Set(t) = threshold {
        validate::threshold(*t)?;
    }
    let acct = s.account(account)?;
    let threshold = threshold.applied_to(acct.billing.balance_alert_threshold());
    let (b, events) = billing::set_balance_alert(&acct.billing, threshold);
    let instance_events = s.set_billing(account, b, now, fx)?;
    let acct = s.account_mut(account)?;
    acct.webhook = webhook.applied_to(acct.webhook.take());
    s.push_events(account, now, events, fx);
    s.push_events(account, now, instance_events, fx);
    Ok(Reply::Account(Box::new(s.account(account)?.clone())))
}

fn adjust(
    s: &mut State,
    account: &str,
    amount: Usd,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<Reply, DomainError> {
    if amount == Usd::ZERO {
        return Err(DomainError::invalid(
            "amount",
            "must not be 0: a credit is positive (+12.50), a debit negative (-12.50)",
        ));
    }
    validate::whole_cents("amount", amount)?;
    validate::reason(reason)?;
    let outcome = billing::adjust(&s.account(account)?.billing, amount, ts(now))
        .map_err(|e| DomainError::invalid("amount", e.to_string()))?;
    s.book(
        account,
        now,
        format!("adjustment: {reason}"),
        amount,
        outcome,
        fx,
    )?;
    Ok(Reply::Account(Box::new(s.account(account)?.clone())))
}

fn create_token(
    s: &mut State,
    id: &str,
    account: &str,
    secret_sha256: &str,
    now: Millis,
) -> Result<Reply, DomainError> {
    let hex = |v: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(id, 8..=64) {
        return Err(DomainError::invalid(
            "id",
            "must be 8 to 64 lower-case hex digits",
        ));
    }
    if !hex(secret_sha256, 64..=64) {
        return Err(DomainError::invalid(
            "secret_sha256",
            "must be 64 lower-case hex digits",
        ));
    }
    s.account(account)?;
    if s.tokens.contains_key(id) {
        return Err(DomainError::already_exists("token", id));
    }
    let token = ApiToken {
        id: id.to_string(),
        account: account.to_string(),
        secret_sha256: secret_sha256.to_string(),
        created_at_ms: now,
    };
    s.tokens.insert(id.to_string(), token.clone());
    Ok(Reply::Token(token))
}
