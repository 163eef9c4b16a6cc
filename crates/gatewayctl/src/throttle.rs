//! `gatewayctl throttle`: throttling policies, their special apps and accounts, and where they
//! are bound.

use crate::output::{Format, Table, print};
use crate::{Client, ms_to_utc, print_deleted};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use proto::admin as pb;
use serde_json::{Value, json};

/// A policy and the API (on a stage) it applies to.
#[derive(Debug, Args)]
pub struct Binding {
    /// The policy's name.
    #[arg(long)]
    name: String,
    /// The API's group.
    #[arg(long)]
    group: String,
    /// The API's name.
    #[arg(long)]
    api: String,
    /// RELEASE, PRE or TEST.
    #[arg(long, default_value = "RELEASE")]
    stage: String,
}

impl Binding {
    fn request(self) -> pb::BindTrafficControlRequest {
        pb::BindTrafficControlRequest {
            name: self.name,
            group: self.group,
            api: self.api,
            stage: self.stage,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ThrottleCmd {
    /// Create a policy: calls per unit of each API bound to it, in total, per calling account
    /// and per calling app, cluster-wide.
    Create {
        /// The policy's name.
        #[arg(long)]
        name: String,
        /// The window the limits count calls over.
        #[arg(long, value_parser = ["second", "minute", "hour", "day"])]
        unit: String,
        /// Calls per unit of each bound API, from every caller together.
        #[arg(long)]
        api_limit: u64,
        /// Calls per unit from one account's apps (signed calls); at most --api-limit.
        #[arg(long)]
        user_limit: Option<u64>,
        /// Calls per unit from one app (signed calls); at most --user-limit (or --api-limit).
        #[arg(long)]
        app_limit: Option<u64>,
        /// The owning account (operators only; empty: the default account, or your own).
        #[arg(long, default_value = "")]
        account: String,
    },
    /// Give an app or an account its own limit under a policy (instead of --app-limit or
    /// --user-limit), or take it away with --remove.
    Special {
        /// The policy's name.
        #[arg(long)]
        name: String,
        /// The app, by its AppKey.
        #[arg(long, conflicts_with = "account", required_unless_present = "account")]
        app: Option<String>,
        /// The account.
        #[arg(long)]
        account: Option<String>,
        /// Its calls per unit; at most the policy's API limit.
        #[arg(long, required_unless_present = "remove")]
        limit: Option<u64>,
        /// Remove the special limit instead of setting one.
        #[arg(long, conflicts_with = "limit")]
        remove: bool,
    },
    /// Apply a policy to an API on a stage (an API takes one policy per stage).
    Bind(Binding),
    /// Stop applying a policy to an API on a stage.
    Unbind(Binding),
    /// List the policies you may see.
    List,
    /// One policy, with its special apps and accounts and its bindings.
    Get {
        /// The policy's name.
        #[arg(long)]
        name: String,
    },
    /// Delete a policy that is bound nowhere.
    Delete {
        /// The policy's name.
        #[arg(long)]
        name: String,
    },
}

fn policy_json(p: &pb::TrafficControl) -> Value {
    json!({
        "name": p.name,
        "account": p.account,
        "unit": p.unit,
        "api_limit": p.api_limit,
        "user_limit": p.user_limit,
        "app_limit": p.app_limit,
        "specials": p.specials.iter().map(|s| json!({
            "kind": s.kind, "target": s.target, "limit": s.limit,
        })).collect::<Vec<_>>(),
        "bindings": p.bindings.iter().map(|b| json!({
            "group": b.group, "api": b.api, "stage": b.stage,
        })).collect::<Vec<_>>(),
        "created_at_ms": p.created_at_ms,
    })
}

fn limit(l: Option<u64>) -> String {
    l.map_or_else(|| "-".to_string(), |l| l.to_string())
}

fn table(list: &[pb::TrafficControl]) -> Table {
    let mut t = Table::new(&[
        "POLICY",
        "ACCOUNT",
        "UNIT",
        "API",
        "USER",
        "APP",
        "SPECIALS",
        "BINDINGS",
        "CREATED (UTC)",
    ]);
    for p in list {
        t.row(vec![
            p.name.clone(),
            p.account.clone(),
            p.unit.clone(),
            p.api_limit.to_string(),
            limit(p.user_limit),
            limit(p.app_limit),
            p.specials.len().to_string(),
            p.bindings.len().to_string(),
            ms_to_utc(p.created_at_ms),
        ]);
    }
    t
}

fn details(p: &pb::TrafficControl) -> Table {
    let mut t = table(std::slice::from_ref(p));
    for s in &p.specials {
        t.row(vec![format!(
            "special {} {}: {}",
            s.kind, s.target, s.limit
        )]);
    }
    for b in &p.bindings {
        t.row(vec![format!(
            "bound to {}/{} on {}",
            b.group, b.api, b.stage
        )]);
    }
    t
}

fn show(f: Format, r: pb::TrafficControlReply) {
    let p = r.policy.unwrap_or_default();
    print(f, policy_json(&p), || details(&p));
}

pub async fn run(c: &mut Client, f: Format, cmd: ThrottleCmd) -> Result<()> {
    match cmd {
        ThrottleCmd::Create {
            name,
            unit,
            api_limit,
            user_limit,
            app_limit,
            account,
        } => {
            let req = pb::CreateTrafficControlRequest {
                name,
                account,
                unit,
                api_limit,
                user_limit,
                app_limit,
            };
            show(f, c.create_traffic_control(req).await?.into_inner());
        }
        ThrottleCmd::Special {
            name,
            app,
            account,
            limit,
            remove,
        } => {
            let limit = match (limit, remove) {
                (_, true) => 0,
                (Some(0), false) => bail!("--limit must be at least 1 (--remove takes it away)"),
                (Some(l), false) => l,
                (None, false) => bail!("give --limit N, or --remove"),
            };
            let req = pb::SetTrafficControlSpecialRequest {
                name,
                app_key: app.unwrap_or_default(),
                account: account.unwrap_or_default(),
                limit,
            };
            show(f, c.set_traffic_control_special(req).await?.into_inner());
        }
        ThrottleCmd::Bind(b) => {
            show(f, c.bind_traffic_control(b.request()).await?.into_inner());
        }
        ThrottleCmd::Unbind(b) => {
            show(f, c.unbind_traffic_control(b.request()).await?.into_inner());
        }
        ThrottleCmd::List => {
            let list = c
                .describe_traffic_controls(pb::DescribeTrafficControlsRequest::default())
                .await?
                .into_inner()
                .policies;
            print(
                f,
                json!(list.iter().map(policy_json).collect::<Vec<_>>()),
                || table(&list),
            );
        }
        ThrottleCmd::Get { name } => {
            let mut list = c
                .describe_traffic_controls(pb::DescribeTrafficControlsRequest { name })
                .await?
                .into_inner()
                .policies;
            let p = list.pop().unwrap_or_default();
            print(f, policy_json(&p), || details(&p));
        }
        ThrottleCmd::Delete { name } => {
            let r = c
                .delete_traffic_control(pb::DeleteTrafficControlRequest { name })
                .await?;
            print_deleted(f, r.into_inner());
        }
    }
    Ok(())
}
