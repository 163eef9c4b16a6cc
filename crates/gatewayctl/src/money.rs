//! Commands about money: accounts, usage, bills, events, and the offline price calculator.

use crate::output::{Format, Page, Table, print, print_page};
use crate::{Client, ms_to_utc};
use anyhow::{Result, bail};
use billing::{Decimal, EstimateRequest, InstanceDuration, InstanceUsage};
use clap::{Args, Subcommand};
use proto::admin as pb;
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account (the owner of instances, groups and apps, and what is billed).
    Create {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// Where notifications are POSTed, http://HOST:PORT/path.
        #[arg(long)]
        webhook: Option<String>,
        /// Alert when the balance drops below this many US dollars.
        #[arg(long)]
        alert_threshold: Option<String>,
    },
    /// List the accounts you may see.
    List,
    /// An account, with its last 20 ledger entries (`account ledger` shows them all).
    Get {
        /// The account's name.
        #[arg(long)]
        name: String,
    },
    /// Every movement of an account's balance, oldest first: all of it, or with --limit a
    /// page at a time. `-o csv` or `-o json` exports it.
    Ledger {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// Only entries after this sequence number (the next_after_seq of the previous page).
        #[arg(long, visible_alias = "after", default_value_t = 0)]
        after_seq: u64,
        #[command(flatten)]
        limit: LimitArg,
    },
    /// Credit (+X) or debit (-X) the balance, in whole cents, with the reason written to the
    /// ledger: refunds and corrections. Operator only.
    Adjust {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// Signed US dollars, e.g. +12.50 or -3.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Why, kept in the ledger (e.g. a refund's ticket).
        #[arg(long)]
        reason: String,
        /// Names the adjustment so that retrying it applies it at most once: after an
        /// "outcome unknown" error, retry with the id the error gave.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Add US dollars to the balance; restores a suspended account once what it owes is paid.
    Recharge {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// US dollars, in whole cents, e.g. 25.00 (a debit is `account adjust --amount -X`).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Names the recharge so that retrying it applies it at most once: after an "outcome
        /// unknown" error, retry with the id the error gave.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Set the balance alert threshold, the webhook, or both; what is not given is kept, and
    /// an empty value removes it (`--webhook ""`).
    SetAlert {
        /// The account's name.
        #[arg(long)]
        name: String,
        /// Alert when the balance drops below this many US dollars (empty removes it).
        #[arg(long, required_unless_present = "webhook", allow_hyphen_values = true)]
        threshold: Option<String>,
        /// POST events to this http(s) URL (empty removes it).
        #[arg(long)]
        webhook: Option<String>,
    },
}

/// How many records a page of a listing holds.
#[derive(Debug, Args)]
pub struct LimitArg {
    /// The most records to show (1 to 1000; the server's default is 100). With -o json, the
    /// output is then an object holding the records and where the next page starts; without,
    /// the bare array it always was.
    #[arg(long)]
    limit: Option<u32>,
}

impl LimitArg {
    fn get(&self) -> u32 {
        self.limit.unwrap_or(0)
    }

    /// Whether to print JSON as a page object (see `Page::as_object`).
    fn paged(&self) -> bool {
        self.limit.is_some()
    }
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this account (empty: every account you may see).
    #[arg(long, default_value = "")]
    account: String,
    /// A day, YYYY-MM-DD (UTC).
    #[arg(long, default_value = "")]
    day: String,
    /// Start after this account-day, ACCOUNT/YYYY-MM-DD (the next_after of the previous page).
    #[arg(long, default_value = "")]
    after: String,
    #[command(flatten)]
    limit: LimitArg,
}

#[derive(Debug, Subcommand)]
pub enum BillCmd {
    /// An account's bills, oldest first, a page at a time.
    List {
        /// The account.
        #[arg(long)]
        account: String,
        /// Only the bills of days after this one, YYYY-MM-DD (the next_after_day of the
        /// previous page).
        #[arg(long, default_value = "")]
        after: String,
        #[command(flatten)]
        limit: LimitArg,
    },
    /// Show one day's bill of an account.
    Get {
        /// The account.
        #[arg(long)]
        account: String,
        /// YYYY-MM-DD (UTC).
        #[arg(long)]
        day: String,
    },
    /// A month's statement: each day's bill and its lines, each instance's charges and usage,
    /// and each API's calls and traffic. `-o csv` gives one line per item.
    Statement {
        /// The account.
        #[arg(long)]
        account: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this account (empty: every account you may see).
    #[arg(long, default_value = "")]
    account: String,
    /// Only events after this sequence number (the next_after_seq of the previous page).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    limit: LimitArg,
}

#[derive(Debug, Subcommand)]
pub enum PricingCmd {
    /// Price usage offline, from the built-in catalog: no server needed.
    Estimate(EstimateArgs),
}

#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// A region from `gatewayctl region list`.
    #[arg(long)]
    region: String,
    /// Shared-instance API calls in a month.
    #[arg(long)]
    calls: Option<u64>,
    /// The account is in its first year: a million calls a month are free.
    #[arg(long)]
    first_year: bool,
    /// A dedicated instance spec.
    #[arg(long, requires = "duration")]
    spec: Option<String>,
    /// Pay-as-you-go hours (partial hours are billed as whole ones).
    #[arg(long, group = "duration", requires = "spec")]
    hours: Option<String>,
    /// Monthly subscription, this many months.
    #[arg(long, group = "duration", requires = "spec")]
    months: Option<u32>,
    /// Annual subscription, this many years.
    #[arg(long, group = "duration", requires = "spec")]
    years: Option<u32>,
    /// Outbound traffic to the internet, in GB.
    #[arg(long)]
    traffic_gb: Option<String>,
}

fn account_json(a: &pb::Account) -> Value {
    json!({
        "name": a.name,
        "state": a.state,
        "balance": a.balance,
        "owed": a.owed,
        "balance_alert": a.balance_alert,
        "webhook": a.webhook,
        "created_at_ms": a.created_at_ms,
        "last_cycle": a.last_cycle,
        "suspended_at_ms": a.suspended_at_ms,
        "purge_at_ms": a.purge_at_ms,
        "ledger": a.ledger.iter().map(ledger_entry_json).collect::<Vec<_>>(),
        "ledger_len": a.ledger_len,
    })
}

fn ledger_entry_json(e: &pb::LedgerEntry) -> Value {
    json!({
        "seq": e.seq, "at_ms": e.at_ms, "what": e.what, "amount": e.amount,
        "balance_after": e.balance_after,
    })
}

fn accounts_table(list: &[pb::Account]) -> Table {
    let mut t = Table::new(&[
        "ACCOUNT",
        "STATE",
        "BALANCE",
        "OWED",
        "ALERT BELOW",
        "LAST CYCLE",
    ]);
    for a in list {
        t.row(vec![
            a.name.clone(),
            a.state.clone(),
            a.balance.clone(),
            a.owed.clone(),
            a.balance_alert.clone().unwrap_or_else(|| "-".into()),
            a.last_cycle.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

fn print_account(f: Format, a: Option<pb::Account>) -> Result<()> {
    let Some(a) = a else {
        bail!("the server returned no account")
    };
    print(f, account_json(&a), || {
        accounts_table(std::slice::from_ref(&a))
    });
    Ok(())
}

pub async fn account(c: &mut Client, f: Format, cmd: AccountCmd) -> Result<()> {
    match cmd {
        AccountCmd::Create {
            name,
            webhook,
            alert_threshold,
        } => {
            let r = c
                .create_account(pb::CreateAccountRequest {
                    name,
                    webhook,
                    balance_alert: alert_threshold,
                })
                .await?;
            print_account(f, r.into_inner().account)
        }
        AccountCmd::List => {
            let list = c
                .describe_accounts(pb::DescribeAccountsRequest::default())
                .await?
                .into_inner()
                .accounts;
            print(
                f,
                json!(list.iter().map(account_json).collect::<Vec<_>>()),
                || accounts_table(&list),
            );
            Ok(())
        }
        AccountCmd::Get { name } => {
            let mut list = c
                .describe_accounts(pb::DescribeAccountsRequest { name })
                .await?
                .into_inner()
                .accounts;
            print_account(f, list.pop())
        }
        AccountCmd::Ledger {
            name,
            after_seq,
            limit,
        } => {
            let r = if limit.paged() {
                c.describe_ledger(pb::DescribeLedgerRequest {
                    account: name,
                    after_seq,
                    limit: limit.get(),
                })
                .await?
                .into_inner()
            } else {
                whole_ledger(c, name, after_seq).await?
            };
            let page = Page {
                items: r.entries.iter().map(ledger_entry_json).collect(),
                items_key: "entries",
                next_key: "next_after_seq",
                next: r.next_after_seq.map(Value::from),
                flag: "--after-seq",
                // A new command: no older shape to keep.
                as_object: true,
            };
            print_page(f, page, || {
                let mut t = Table::new(&["SEQ", "TIME (UTC)", "AMOUNT", "BALANCE AFTER", "WHAT"]);
                for e in &r.entries {
                    t.row(vec![
                        e.seq.to_string(),
                        ms_to_utc(e.at_ms),
                        e.amount.clone(),
                        e.balance_after.clone(),
                        e.what.clone(),
                    ]);
                }
                t
            });
            Ok(())
        }
        AccountCmd::Recharge {
            name,
            amount,
            request_id,
        } => {
            let r = c
                .recharge(pb::RechargeRequest {
                    account: name,
                    amount,
                    request_id,
                })
                .await?;
            print_account(f, r.into_inner().account)
        }
        AccountCmd::Adjust {
            name,
            amount,
            reason,
            request_id,
        } => {
            let r = c
                .adjust_balance(pb::AdjustBalanceRequest {
                    account: name,
                    amount,
                    reason,
                    request_id,
                })
                .await?;
            print_account(f, r.into_inner().account)
        }
        AccountCmd::SetAlert {
            name,
            threshold,
            webhook,
        } => {
            let r = c
                .set_balance_alert(pb::SetBalanceAlertRequest {
                    account: name,
                    threshold,
                    webhook,
                })
                .await?;
            print_account(f, r.into_inner().account)
        }
    }
}

/// Every ledger entry after `after_seq`, read a page of 1000 at a time.
async fn whole_ledger(
    c: &mut Client,
    account: String,
    mut after_seq: u64,
) -> Result<pb::DescribeLedgerReply> {
    let mut all = pb::DescribeLedgerReply::default();
    // A ledger grows by a few entries a day: this bound is far beyond any real one.
    for _ in 0..10_000 {
        let page = c
            .describe_ledger(pb::DescribeLedgerRequest {
                account: account.clone(),
                after_seq,
                limit: 1000,
            })
            .await?
            .into_inner();
        all.entries.extend(page.entries);
        match page.next_after_seq {
            Some(next) if next > after_seq => after_seq = next,
            _ => return Ok(all),
        }
    }
    bail!("the ledger of {account} has more than 10,000,000 entries: read it with --limit")
}

pub async fn usage(c: &mut Client, f: Format, a: UsageArgs) -> Result<()> {
    let r = c
        .describe_usage(pb::DescribeUsageRequest {
            account: a.account,
            day: a.day,
            after: a.after,
            limit: a.limit.get(),
        })
        .await?
        .into_inner();
    let rows = r.rows;
    let page = Page {
        items: rows
            .iter()
            .map(|r| {
                json!({
                    "day": r.day, "account": r.account, "instance": r.instance, "api": r.api,
                    "calls": r.calls, "bytes_out": r.bytes_out, "backend_bytes": r.backend_bytes,
                })
            })
            .collect(),
        items_key: "rows",
        next_key: "next_after",
        next: r.next_after.map(Value::from),
        flag: "--after",
        as_object: a.limit.paged(),
    };
    print_page(f, page, || {
        let mut t = Table::new(&[
            "DAY",
            "ACCOUNT",
            "INSTANCE",
            "API",
            "CALLS",
            "BYTES OUT",
            "BACKEND BYTES",
        ]);
        for r in &rows {
            t.row(vec![
                r.day.clone(),
                r.account.clone(),
                r.instance.clone(),
                r.api.clone(),
                r.calls.to_string(),
                r.bytes_out.to_string(),
                r.backend_bytes.to_string(),
            ]);
        }
        t
    });
    Ok(())
}

fn bill_json(b: &pb::Bill) -> Value {
    json!({
        "account": b.account,
        "day": b.day,
        "lines": b.lines.iter().map(|l| json!({"item": l.item, "quantity": l.quantity, "amount": l.amount, "instance": l.instance})).collect::<Vec<_>>(),
        "total": b.total,
        "balance_after": b.balance_after,
        "state_after": b.state_after,
        "issued_at_ms": b.issued_at_ms,
    })
}

pub async fn bill(c: &mut Client, f: Format, cmd: BillCmd) -> Result<()> {
    match cmd {
        BillCmd::List {
            account,
            after,
            limit,
        } => bill_list(c, f, account, after, limit).await,
        BillCmd::Get { account, day } => bill_get(c, f, account, day).await,
        BillCmd::Statement { account, month } => statement(c, f, account, month).await,
    }
}

/// Parses `YYYY-MM`.
fn parse_month(s: &str) -> Result<billing::Month> {
    let bad = || anyhow::anyhow!("invalid --month: '{s}' is not a month like 2026-01");
    let (y, m) = s.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m) = (
        y.parse::<i32>().map_err(|_| bad())?,
        m.parse::<u8>().map_err(|_| bad())?,
    );
    billing::Month::new(y, m).ok_or_else(bad)
}

/// Adds decimal US dollar strings exactly.
fn add_usd(a: &str, b: &str) -> Result<String> {
    let p = |s: &str| {
        billing::Usd::parse(s).map_err(|e| anyhow::anyhow!("the server sent an amount {e}"))
    };
    Ok((p(a)? + p(b)?).to_string())
}

async fn statement(c: &mut Client, f: Format, account: String, month: String) -> Result<()> {
    let m = parse_month(&month)?;
    let first = m.start().day();
    let before = billing::Day::from_index(first.index() - 1).to_string();
    let in_month = |day: &str| day.starts_with(&format!("{m}-"));
    // The month's bills: at most 31, one page.
    let bills: Vec<pb::Bill> = c
        .describe_bills(pb::DescribeBillsRequest {
            account: account.clone(),
            after_day: before.clone(),
            limit: 31,
            ..Default::default()
        })
        .await?
        .into_inner()
        .bills
        .into_iter()
        .filter(|b| in_month(&b.day))
        .collect();
    // The month's usage, by day, instance and API, a page at a time (bounded: a month of an
    // account's usage is 31 account-days).
    let mut usage: Vec<pb::UsageRow> = Vec::new();
    let mut after = format!("{account}/{before}");
    for _ in 0..64 {
        let page = c
            .describe_usage(pb::DescribeUsageRequest {
                account: account.clone(),
                after: after.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        let past = page.rows.iter().any(|r| !in_month(&r.day));
        usage.extend(page.rows.into_iter().filter(|r| in_month(&r.day)));
        match page.next_after {
            Some(next) if !past => after = next,
            _ => break,
        }
    }
    let mut apis: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    let mut instances: std::collections::BTreeMap<String, (u64, u64, String)> = Default::default();
    for r in &usage {
        let a = apis.entry((r.instance.clone(), r.api.clone())).or_default();
        a.0 += r.calls;
        a.1 += r.bytes_out;
        let i = instances
            .entry(r.instance.clone())
            .or_insert((0, 0, "0".into()));
        i.0 += r.calls;
        i.1 += r.bytes_out;
    }
    let mut total = "0".to_string();
    let mut rows = Vec::new();
    for b in &bills {
        total = add_usd(&total, &b.total)?;
        for l in &b.lines {
            if !l.instance.is_empty() {
                let i = instances
                    .entry(l.instance.clone())
                    .or_insert((0, 0, "0".into()));
                i.2 = add_usd(&i.2, &l.amount)?;
            }
            rows.push(json!({
                "section": "day", "day": b.day, "instance": l.instance, "api": "",
                "item": l.item, "quantity": l.quantity, "calls": "", "bytes_out": "",
                "amount": l.amount,
            }));
        }
    }
    for (name, (calls, bytes, amount)) in &instances {
        rows.push(json!({
            "section": "instance", "day": "", "instance": name, "api": "",
            "item": "hours and calls billed this month", "quantity": "", "calls": calls,
            "bytes_out": bytes, "amount": amount,
        }));
    }
    for ((instance, api), (calls, bytes)) in &apis {
        rows.push(json!({
            "section": "api", "day": "", "instance": instance, "api": api,
            "item": "usage this month", "quantity": "", "calls": calls, "bytes_out": bytes,
            "amount": "",
        }));
    }
    rows.push(json!({
        "section": "total", "day": "", "instance": "", "api": "", "item": format!("{account} {m}"),
        "quantity": format!("{} daily bills", bills.len()), "calls": "", "bytes_out": "",
        "amount": total,
    }));
    match f {
        Format::Csv => print!("{}", crate::output::csv(&rows)),
        Format::Json | Format::Yaml => {
            let v = json!({
                "account": account,
                "month": m.to_string(),
                "total": total,
                "days": bills.iter().map(bill_json).collect::<Vec<_>>(),
                "instances": instances.iter().map(|(n, (calls, bytes, amount))| json!({
                    "instance": n, "calls": calls, "bytes_out": bytes, "amount": amount,
                })).collect::<Vec<_>>(),
                "apis": apis.iter().map(|((i, a), (calls, bytes))| json!({
                    "instance": i, "api": a, "calls": calls, "bytes_out": bytes,
                })).collect::<Vec<_>>(),
            });
            crate::output::print_data(f, &v);
        }
        Format::Table => {
            let mut t = Table::new(&["DAY", "ITEM", "QUANTITY", "AMOUNT (USD)"]);
            for r in rows.iter().filter(|r| r["section"] == "day") {
                t.row(vec![
                    r["day"].as_str().unwrap_or_default().into(),
                    r["item"].as_str().unwrap_or_default().into(),
                    r["quantity"].as_str().unwrap_or_default().into(),
                    r["amount"].as_str().unwrap_or_default().into(),
                ]);
            }
            print!("{}", t.render());
            let mut t = Table::new(&["INSTANCE", "CALLS", "BYTES OUT", "CHARGED (USD)"]);
            for (n, (calls, bytes, amount)) in &instances {
                t.row(vec![
                    n.clone(),
                    calls.to_string(),
                    bytes.to_string(),
                    amount.clone(),
                ]);
            }
            print!("\n{}", t.render());
            let mut t = Table::new(&["INSTANCE", "API", "CALLS", "BYTES OUT"]);
            for ((i, a), (calls, bytes)) in &apis {
                t.row(vec![
                    i.clone(),
                    a.clone(),
                    calls.to_string(),
                    bytes.to_string(),
                ]);
            }
            print!("\n{}", t.render());
            println!(
                "\nTOTAL for {account} in {m}: {total} USD ({} daily bills)",
                bills.len()
            );
        }
    }
    Ok(())
}

async fn bill_list(
    c: &mut Client,
    f: Format,
    account: String,
    after: String,
    limit: LimitArg,
) -> Result<()> {
    let r = c
        .describe_bills(pb::DescribeBillsRequest {
            account,
            after_day: after,
            limit: limit.get(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let bills = r.bills;
    let page = Page {
        items: bills.iter().map(bill_json).collect(),
        items_key: "bills",
        next_key: "next_after_day",
        next: r.next_after_day.map(Value::from),
        flag: "--after",
        as_object: limit.paged(),
    };
    print_page(f, page, || {
        let mut t = Table::new(&[
            "DAY",
            "TOTAL (USD)",
            "BALANCE AFTER",
            "STATE AFTER",
            "LINES",
        ]);
        for b in &bills {
            t.row(vec![
                b.day.clone(),
                b.total.clone(),
                b.balance_after.clone(),
                b.state_after.clone(),
                b.lines.len().to_string(),
            ]);
        }
        t
    });
    Ok(())
}

async fn bill_get(c: &mut Client, f: Format, account: String, day: String) -> Result<()> {
    if day.trim().is_empty() {
        bail!(
            "invalid --day: must not be empty: give a date like 2026-01-31 (bill list shows them all)"
        );
    }
    let bills = c
        .describe_bills(pb::DescribeBillsRequest {
            account,
            day: Some(day),
            ..Default::default()
        })
        .await?
        .into_inner()
        .bills;
    let Some(b) = bills.first() else {
        bail!("no such bill")
    };
    print(f, bill_json(b), || {
        let mut t = Table::new(&["ITEM", "QUANTITY", "AMOUNT (USD)"]);
        for l in &b.lines {
            t.row(vec![l.item.clone(), l.quantity.clone(), l.amount.clone()]);
        }
        t.row(vec![
            format!("TOTAL for {} on {} ({})", b.account, b.day, b.state_after),
            String::new(),
            b.total.clone(),
        ]);
        t
    });
    Ok(())
}

pub async fn events(c: &mut Client, f: Format, a: EventsArgs) -> Result<()> {
    let r = c
        .describe_events(pb::DescribeEventsRequest {
            account: a.account,
            after_seq: a.after,
            limit: a.limit.get(),
        })
        .await?
        .into_inner();
    let events = r.events;
    let page = Page {
        items: events
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq, "at_ms": e.at_ms, "account": e.account, "kind": e.kind,
                    "detail": serde_json::from_str::<Value>(&e.detail_json).unwrap_or(Value::Null),
                })
            })
            .collect(),
        items_key: "events",
        next_key: "next_after_seq",
        next: r.next_after_seq.map(Value::from),
        flag: "--after",
        as_object: a.limit.paged(),
    };
    print_page(f, page, || {
        let mut t = Table::new(&["SEQ", "TIME (UTC)", "ACCOUNT", "EVENT", "DETAIL"]);
        for e in &events {
            t.row(vec![
                e.seq.to_string(),
                ms_to_utc(e.at_ms),
                e.account.clone(),
                e.kind.clone(),
                e.detail_json.clone(),
            ]);
        }
        t
    });
    Ok(())
}

/// The offline price calculator.
pub fn estimate(f: Format, a: EstimateArgs) -> Result<()> {
    let decimal = |flag: &str, s: &str| {
        Decimal::parse(s).map_err(|e| anyhow::anyhow!("invalid --{flag}: {e}"))
    };
    let duration = match (&a.hours, a.months, a.years) {
        (Some(h), None, None) => Some(InstanceDuration::Hours(decimal("hours", h)?)),
        (None, Some(m), None) => Some(InstanceDuration::Months(m)),
        (None, None, Some(y)) => Some(InstanceDuration::Years(y)),
        _ => None,
    };
    let instance = match (a.spec, duration) {
        (Some(spec), Some(duration)) => Some(InstanceUsage { spec, duration }),
        (Some(_), None) => bail!("--spec needs one of --hours, --months or --years"),
        _ => None,
    };
    let req = EstimateRequest {
        region: a.region,
        calls: a.calls,
        first_year: a.first_year,
        instance,
        traffic_gb: a
            .traffic_gb
            .as_deref()
            .map(|g| decimal("traffic-gb", g))
            .transpose()?,
    };
    let est = billing::estimate(catalog::Catalog::builtin(), &req)?;
    print(f, serde_json::to_value(&est)?, || {
        let mut t = Table::new(&["ITEM", "QUANTITY", "UNIT PRICE (USD)", "AMOUNT (USD)"]);
        for l in &est.line_items {
            t.row(vec![
                l.description.clone(),
                format!("{} {}", l.quantity, l.unit),
                l.unit_price_usd.to_string(),
                l.amount_usd.to_string(),
            ]);
        }
        t.row(vec![
            format!("TOTAL ({})", est.region_name),
            String::new(),
            String::new(),
            est.total_usd.to_string(),
        ]);
        t
    });
    Ok(())
}
