//! The authorisation matrix of the admin API on a real node: every RPC of `service Admin`
//! (taken from the compiled proto, so a new RPC without a case here fails this test) is called
//! by the operator, by the account that owns what the call names, by another account and with
//! no token, and each outcome is checked; a refused call must change nothing.
//!
//! The expectations below are written out independently of the table in
//! `crates/admin/src/access.rs`: loosening an entry there makes this test fail.
//!
//! Every call is made twice: with gRPC, and through the web console's JSON endpoint
//! (`POST /console/api/<Method>` on the same listener), which must give the same outcome.
//!
//! Also here: webhook targets. Special-purpose addresses are refused when a webhook is set,
//! and again when it is called, after the lookup, unless gatewayd runs with
//! `--allow-private-webhooks`.

use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use std::time::Duration;
use testkit::http::Server;
use testkit::{Cluster, binaries, eventually};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const SETTLE: Duration = Duration::from_secs(20);
const OPERATOR: &str = "operator-token-authz-0123456789";

/// Who the expectations say may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq)]
enum May {
    /// Any authenticated caller.
    Anyone,
    /// The operator only.
    Operator,
    /// The operator and the account that owns what the call names.
    Owner,
}

/// The expectation for each RPC, by its proto name.
fn may(rpc: &str) -> May {
    use May::*;
    match rpc {
        "DescribeSpecs" | "DescribeRegions" => Anyone,
        "CreateAccount" | "Recharge" | "AdjustBalance" | "CreateToken" | "DescribeTokens"
        | "RevokeToken" | "DescribeCluster" | "AddLearner" | "PromoteLearner" | "RemoveNode" => {
            Operator
        }
        "CreateInstance"
        | "DescribeInstances"
        | "ModifyInstanceSpec"
        | "DeleteInstance"
        | "RenewInstance"
        | "SetInstanceAutoRenew"
        | "CreateApiGroup"
        | "ModifyApiGroup"
        | "DescribeApiGroups"
        | "DeleteApiGroup"
        | "CreateApi"
        | "ModifyApi"
        | "DescribeApis"
        | "DeleteApi"
        | "DeployApi"
        | "AbolishApi"
        | "DescribeAccounts"
        | "SetBalanceAlert"
        | "DescribeUsage"
        | "DescribeBills"
        | "DescribeEvents"
        | "DescribeLedger"
        | "CreateApp"
        | "DescribeApps"
        | "DeleteApp"
        | "AuthorizeApp"
        | "RevokeAppAuthorization"
        | "SetIpAccessControl"
        | "ExportConfig"
        | "ApplyConfig"
        | "CreateTrafficControl"
        | "SetTrafficControlSpecial"
        | "BindTrafficControl"
        | "UnbindTrafficControl"
        | "DescribeTrafficControls"
        | "DeleteTrafficControl" => Owner,
        other => panic!("no expectation for RPC {other}: say who may call it"),
    }
}

/// Account `a`'s resources that the calls name (made by the operator before the matrix).
struct Fixture {
    /// A token of account `a` that RevokeToken may revoke (not the one the matrix uses).
    spare_token_id: String,
    /// Account `a`'s configuration document, for ApplyConfig (applying it changes nothing).
    a_document: String,
}

fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn definition(path: &str) -> Option<pb::ApiDefinition> {
    Some(pb::ApiDefinition {
        method: "GET".into(),
        path: path.into(),
        backend: "http://127.0.0.1:9".into(),
        timeout_ms: 0,
        auth_type: String::new(),
        backend_location: String::new(),
        ..Default::default()
    })
}

/// How a call reaches the admin service.
enum Via<'a> {
    /// gRPC on the admin listener.
    Grpc(&'a mut AdminClient<Channel>),
    /// The web console's JSON endpoint on the same listener, `POST /console/api/<Method>`.
    Console(&'a str),
}

/// Calls `rpc` through the console's JSON endpoint on `addr`: the same message as JSON, the
/// token as a bearer header. Its `{code, message}` error comes back as the status it names.
async fn console_call<T: serde::Serialize>(
    addr: &str,
    rpc: &str,
    msg: &T,
    token: Option<&str>,
) -> Result<(), Status> {
    let body = serde_json::to_string(msg).unwrap();
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    let r = testkit::http::post_json(addr, &format!("/console/api/{rpc}"), &headers, &body)
        .await
        .unwrap_or_else(|| panic!("the console answered no {rpc}"));
    if r.status == 200 {
        return Ok(());
    }
    let e: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|_| panic!("{rpc}: HTTP {} without a JSON error: {}", r.status, r.body));
    let code = match e["code"].as_str().unwrap_or("") {
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "UNAVAILABLE" => Code::Unavailable,
        _ => Code::Unknown,
    };
    let expected_http = match code {
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::InvalidArgument => 400,
        Code::NotFound => 404,
        _ => r.status,
    };
    assert_eq!(r.status, expected_http, "{rpc}: {}", r.body);
    Err(Status::new(code, e["message"].as_str().unwrap_or("")))
}

/// Calls `rpc` as the bearer of `token`, naming account `a`'s resources.
async fn call(
    via: &mut Via<'_>,
    rpc: &str,
    f: &Fixture,
    token: Option<&str>,
) -> Result<(), Status> {
    macro_rules! go {
        ($method:ident, $msg:expr) => {{
            let msg = $msg;
            match via {
                Via::Grpc(c) => c.$method(with(msg, token)).await.map(|_| ()),
                Via::Console(addr) => console_call(addr, rpc, &msg, token).await,
            }
        }};
    }
    let s = |v: &str| v.to_string();
    match rpc {
        "CreateInstance" => go!(
            create_instance,
            pb::CreateInstanceRequest {
                name: s("a-new-inst"),
                spec: s("api.s1.small"),
                region: s("cn-hongkong"),
                account: s("a"),
                ..Default::default()
            }
        ),
        "DescribeInstances" => go!(
            describe_instances,
            pb::DescribeInstancesRequest { name: s("a-inst") }
        ),
        "ModifyInstanceSpec" => go!(
            modify_instance_spec,
            pb::ModifyInstanceSpecRequest {
                name: s("a-inst"),
                spec: s("api.s1.medium"),
            }
        ),
        "DeleteInstance" => go!(
            delete_instance,
            pb::DeleteInstanceRequest {
                name: s("a-del-inst")
            }
        ),
        "RenewInstance" => go!(
            renew_instance,
            pb::RenewInstanceRequest {
                name: s("a-sub-inst"),
                months: 1,
                ..Default::default()
            }
        ),
        "SetInstanceAutoRenew" => go!(
            set_instance_auto_renew,
            pb::SetInstanceAutoRenewRequest {
                name: s("a-sub-inst"),
                auto_renew: true,
            }
        ),
        "DescribeSpecs" => go!(describe_specs, pb::DescribeSpecsRequest {}),
        "DescribeRegions" => go!(describe_regions, pb::DescribeRegionsRequest {}),
        "CreateApiGroup" => go!(
            create_api_group,
            pb::CreateApiGroupRequest {
                name: s("a-new-grp"),
                account: s("a"),
                base_path: Some(s("/a-new")),
                ..Default::default()
            }
        ),
        "ModifyApiGroup" => go!(
            modify_api_group,
            pb::ModifyApiGroupRequest {
                name: s("a-grp"),
                base_path: Some(s("/a-moved")),
                ..Default::default()
            }
        ),
        "DescribeApiGroups" => go!(
            describe_api_groups,
            pb::DescribeApiGroupsRequest { name: s("a-grp") }
        ),
        "DeleteApiGroup" => go!(
            delete_api_group,
            pb::DeleteApiGroupRequest {
                name: s("a-del-grp"),
                force: true,
            }
        ),
        "CreateApi" => go!(
            create_api,
            pb::CreateApiRequest {
                group: s("a-grp"),
                name: s("new-api"),
                definition: definition("/new"),
            }
        ),
        "ModifyApi" => go!(
            modify_api,
            pb::ModifyApiRequest {
                group: s("a-grp"),
                name: s("a-api"),
                definition: definition("/changed"),
            }
        ),
        "DescribeApis" => go!(
            describe_apis,
            pb::DescribeApisRequest {
                group: s("a-grp"),
                name: String::new(),
            }
        ),
        "DeleteApi" => go!(
            delete_api,
            pb::DeleteApiRequest {
                group: s("a-grp"),
                name: s("del-api"),
            }
        ),
        "DeployApi" => go!(
            deploy_api,
            pb::DeployApiRequest {
                group: s("a-grp"),
                name: s("a-api"),
                stage: s("TEST"),
            }
        ),
        "AbolishApi" => go!(
            abolish_api,
            pb::AbolishApiRequest {
                group: s("a-grp"),
                name: s("a-api"),
                stage: s("RELEASE"),
            }
        ),
        "CreateAccount" => go!(
            create_account,
            pb::CreateAccountRequest {
                name: s("c"),
                ..Default::default()
            }
        ),
        "DescribeAccounts" => go!(
            describe_accounts,
            pb::DescribeAccountsRequest { name: s("a") }
        ),
        "Recharge" => go!(
            recharge,
            pb::RechargeRequest {
                account: s("a"),
                amount: s("1"),
                request_id: String::new(),
            }
        ),
        "AdjustBalance" => go!(
            adjust_balance,
            pb::AdjustBalanceRequest {
                account: s("a"),
                amount: s("+1"),
                reason: s("matrix"),
                request_id: String::new(),
            }
        ),
        "SetBalanceAlert" => go!(
            set_balance_alert,
            pb::SetBalanceAlertRequest {
                account: s("a"),
                threshold: Some(s("5")),
                webhook: None,
            }
        ),
        "DescribeUsage" => go!(
            describe_usage,
            pb::DescribeUsageRequest {
                account: s("a"),
                ..Default::default()
            }
        ),
        "DescribeBills" => go!(
            describe_bills,
            pb::DescribeBillsRequest {
                account: s("a"),
                ..Default::default()
            }
        ),
        "DescribeEvents" => go!(
            describe_events,
            pb::DescribeEventsRequest {
                account: s("a"),
                ..Default::default()
            }
        ),
        "DescribeLedger" => go!(
            describe_ledger,
            pb::DescribeLedgerRequest {
                account: s("a"),
                ..Default::default()
            }
        ),
        "CreateApp" => go!(
            create_app,
            pb::CreateAppRequest {
                name: s("a-new-app"),
                account: s("a"),
            }
        ),
        "DescribeApps" => go!(describe_apps, pb::DescribeAppsRequest { name: s("a-app") }),
        "CreateTrafficControl" => go!(
            create_traffic_control,
            pb::CreateTrafficControlRequest {
                name: s("a-new-tc"),
                account: s("a"),
                unit: s("minute"),
                api_limit: 100,
                ..Default::default()
            }
        ),
        "SetTrafficControlSpecial" => go!(
            set_traffic_control_special,
            pb::SetTrafficControlSpecialRequest {
                name: s("a-tc"),
                account: s("a"),
                limit: 5,
                ..Default::default()
            }
        ),
        "BindTrafficControl" => go!(
            bind_traffic_control,
            pb::BindTrafficControlRequest {
                name: s("a-tc"),
                group: s("a-grp"),
                api: s("a-api"),
                stage: s("RELEASE"),
            }
        ),
        "UnbindTrafficControl" => go!(
            unbind_traffic_control,
            pb::BindTrafficControlRequest {
                name: s("a-tc"),
                group: s("a-grp"),
                api: s("a-api"),
                stage: s("RELEASE"),
            }
        ),
        "DescribeTrafficControls" => go!(
            describe_traffic_controls,
            pb::DescribeTrafficControlsRequest { name: s("a-tc") }
        ),
        "DeleteTrafficControl" => go!(
            delete_traffic_control,
            pb::DeleteTrafficControlRequest {
                name: s("a-del-tc")
            }
        ),
        "DeleteApp" => go!(
            delete_app,
            pb::DeleteAppRequest {
                name: s("a-del-app")
            }
        ),
        "AuthorizeApp" => go!(
            authorize_app,
            pb::AuthorizeAppRequest {
                group: s("a-grp"),
                api: s("a-api"),
                app: s("a-app"),
            }
        ),
        "RevokeAppAuthorization" => go!(
            revoke_app_authorization,
            pb::AuthorizeAppRequest {
                group: s("a-grp"),
                api: s("a-api"),
                app: s("a-app"),
            }
        ),
        "SetIpAccessControl" => go!(
            set_ip_access_control,
            pb::SetIpAccessControlRequest {
                group: s("a-grp"),
                api: String::new(),
                allow: vec![s("198.18.0.0/15")],
                deny: vec![],
            }
        ),
        "ExportConfig" => go!(export_config, pb::ExportConfigRequest { account: s("a") }),
        "ApplyConfig" => go!(
            apply_config,
            pb::ApplyConfigRequest {
                account: s("a"),
                document_json: f.a_document.clone(),
                ..Default::default()
            }
        ),
        "CreateToken" => go!(create_token, pb::CreateTokenRequest { account: s("a") }),
        "DescribeTokens" => go!(
            describe_tokens,
            pb::DescribeTokensRequest { account: s("a") }
        ),
        "RevokeToken" => go!(
            revoke_token,
            pb::RevokeTokenRequest {
                id: f.spare_token_id.clone()
            }
        ),
        "DescribeCluster" => go!(describe_cluster, pb::DescribeClusterRequest {}),
        // Membership changes that the node refuses as invalid once they are authorised: the
        // matrix must not take the one node apart.
        "AddLearner" => go!(
            add_learner,
            pb::AddLearnerRequest {
                node_id: 0,
                peer_addr: s("127.0.0.1:9"),
            }
        ),
        "PromoteLearner" => go!(promote_learner, pb::PromoteLearnerRequest { node_id: 99 }),
        "RemoveNode" => go!(remove_node, pb::RemoveNodeRequest { node_id: 99 }),
        other => panic!("the matrix has no case for RPC {other}: add one"),
    }
}

/// Everything a call could change, as the operator reads it.
async fn snapshot(c: &mut AdminClient<Channel>) -> String {
    let t = Some(OPERATOR);
    let config = c
        .export_config(with(pb::ExportConfigRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let accounts = c
        .describe_accounts(with(pb::DescribeAccountsRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let instances = c
        .describe_instances(with(pb::DescribeInstancesRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let apps = c
        .describe_apps(with(pb::DescribeAppsRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let tokens = c
        .describe_tokens(with(pb::DescribeTokensRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let events = c
        .describe_events(with(
            pb::DescribeEventsRequest {
                limit: 1000,
                ..Default::default()
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner();
    let members = c
        .describe_cluster(with(pb::DescribeClusterRequest {}, t))
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        // Not matched_index: the log's progress is not the state's.
        .map(|m| (m.node_id, m.role, m.voter))
        .collect::<Vec<_>>();
    format!(
        "{config:?}\n{accounts:?}\n{instances:?}\n{apps:?}\n{tokens:?}\n{events:?}\n{members:?}"
    )
}

async fn operator_setup(c: &mut AdminClient<Channel>) -> (String, String, Fixture) {
    let t = Some(OPERATOR);
    let s = |v: &str| v.to_string();
    for name in ["a", "b"] {
        c.create_account(with(
            pb::CreateAccountRequest {
                name: s(name),
                ..Default::default()
            },
            t,
        ))
        .await
        .unwrap();
        c.recharge(with(
            pb::RechargeRequest {
                account: s(name),
                amount: s("5000"),
                request_id: String::new(),
            },
            t,
        ))
        .await
        .unwrap();
    }
    for (name, charge_type) in [
        ("a-inst", pb::ChargeType::Postpaid),
        ("a-del-inst", pb::ChargeType::Postpaid),
        ("a-sub-inst", pb::ChargeType::Month),
    ] {
        c.create_instance(with(
            pb::CreateInstanceRequest {
                name: s(name),
                spec: s("api.s1.small"),
                region: s("cn-hongkong"),
                charge_type: charge_type as i32,
                account: s("a"),
                auto_renew: false,
            },
            t,
        ))
        .await
        .unwrap();
    }
    for (name, base_path) in [("a-grp", "/a"), ("a-del-grp", "/a-del")] {
        c.create_api_group(with(
            pb::CreateApiGroupRequest {
                name: s(name),
                account: s("a"),
                base_path: Some(s(base_path)),
                ..Default::default()
            },
            t,
        ))
        .await
        .unwrap();
    }
    for (name, path) in [("a-api", "/a"), ("del-api", "/del")] {
        c.create_api(with(
            pb::CreateApiRequest {
                group: s("a-grp"),
                name: s(name),
                definition: definition(path),
            },
            t,
        ))
        .await
        .unwrap();
    }
    c.deploy_api(with(
        pb::DeployApiRequest {
            group: s("a-grp"),
            name: s("a-api"),
            stage: s("RELEASE"),
        },
        t,
    ))
    .await
    .unwrap();
    for name in ["a-app", "a-del-app"] {
        c.create_app(with(
            pb::CreateAppRequest {
                name: s(name),
                account: s("a"),
            },
            t,
        ))
        .await
        .unwrap();
    }
    for name in ["a-tc", "a-del-tc"] {
        c.create_traffic_control(with(
            pb::CreateTrafficControlRequest {
                name: s(name),
                account: s("a"),
                unit: s("second"),
                api_limit: 1000,
                ..Default::default()
            },
            t,
        ))
        .await
        .unwrap();
    }
    let token = |account: &str| {
        let req = with(
            pb::CreateTokenRequest {
                account: s(account),
            },
            t,
        );
        let mut c = c.clone();
        async move { c.create_token(req).await.unwrap().into_inner() }
    };
    let a_token = token("a").await.secret_token;
    let b_token = token("b").await.secret_token;
    let spare_token_id = token("a").await.token.unwrap().id;
    let a_document = c
        .export_config(with(pb::ExportConfigRequest { account: s("a") }, t))
        .await
        .unwrap()
        .into_inner()
        .document_json;
    (
        a_token,
        b_token,
        Fixture {
            spare_token_id,
            a_document,
        },
    )
}

fn is_auth_refusal(r: &Result<(), Status>) -> bool {
    matches!(r, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_under_every_kind_of_caller() {
    let mut c = Cluster::new(binaries!(), 1);
    let token_file = c.dir().join("operator-token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    c.extra_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    c.admin_token = Some(OPERATOR.into());
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let mut admin = c.admin(1).await;
    let (a_token, b_token, f) = operator_setup(&mut admin).await;
    // The console is served on the admin listener (loopback: on by default).
    let console = format!("127.0.0.1:{}", c.nodes[&1].ports.admin);

    let rpcs = proto::admin_methods();
    assert!(rpcs.len() > 40, "the service's RPCs: {rpcs:?}");
    let mut failures = Vec::new();
    for rpc in &rpcs {
        let rule = may(rpc);
        // The refusals first, while everything they name is still there; each changes nothing.
        let mut refusals: Vec<(&str, Option<&str>, Code)> =
            vec![("no token", None, Code::Unauthenticated)];
        if rule != May::Anyone {
            refusals.push(("another account", Some(&b_token), Code::PermissionDenied));
        }
        if rule == May::Operator {
            refusals.push(("the owning account", Some(&a_token), Code::PermissionDenied));
        }
        for (who, token, code) in refusals {
            // Through gRPC and through the console's JSON endpoint: the same refusal.
            for through in ["gRPC", "the console"] {
                let before = snapshot(&mut admin).await;
                let r = match through {
                    "gRPC" => call(&mut Via::Grpc(&mut admin.clone()), rpc, &f, token).await,
                    _ => call(&mut Via::Console(&console), rpc, &f, token).await,
                };
                match &r {
                    Err(s) if s.code() == code => {}
                    other => failures.push(format!(
                        "{rpc} by {who} through {through}: expected {code:?}, got {other:?}"
                    )),
                }
                let after = snapshot(&mut admin).await;
                if before != after {
                    failures.push(format!(
                        "{rpc} by {who} through {through} was refused but changed the state"
                    ));
                }
            }
        }
        // Then the callers it allows: not refused for who they are (a domain error, such as
        // NOT_FOUND for what the call before deleted, is still "allowed").
        let mut allowed: Vec<(&str, Option<&str>)> = vec![("the operator", Some(OPERATOR))];
        if rule != May::Operator {
            allowed.insert(0, ("the owning account", Some(&a_token)));
        }
        if rule == May::Anyone {
            allowed.push(("another account", Some(&b_token)));
        }
        for (i, (who, token)) in allowed.into_iter().enumerate() {
            let r = call(&mut Via::Grpc(&mut admin.clone()), rpc, &f, token).await;
            if is_auth_refusal(&r) {
                failures.push(format!("{rpc} by {who}: expected it allowed, got {r:?}"));
            }
            // The console lets the same caller through (what the gRPC call did may make it
            // find the work done: ALREADY_EXISTS, NOT_FOUND).
            let through_console = call(&mut Via::Console(&console), rpc, &f, token).await;
            if is_auth_refusal(&through_console) {
                failures.push(format!(
                    "{rpc} by {who} through the console: expected it allowed, got {through_console:?}"
                ));
            }
            // The first allowed call succeeds, but for the membership changes made invalid on
            // purpose; later ones may find it done (ALREADY_EXISTS, NOT_FOUND).
            let invalid_on_purpose =
                matches!(rpc.as_str(), "AddLearner" | "PromoteLearner" | "RemoveNode");
            if i == 0 && !invalid_on_purpose && r.is_err() {
                failures.push(format!("{rpc} by {who}: expected success, got {r:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells of the matrix are wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn set_alert(
    c: &mut AdminClient<Channel>,
    threshold: Option<&str>,
    webhook: Option<&str>,
) -> Result<pb::AccountReply, Status> {
    c.set_balance_alert(pb::SetBalanceAlertRequest {
        account: "w".into(),
        threshold: threshold.map(str::to_string),
        webhook: webhook.map(str::to_string),
    })
    .await
    .map(|r| r.into_inner())
}

/// The events of account `w`, as (kind, detail).
async fn events(c: &mut AdminClient<Channel>) -> Vec<(String, String)> {
    c.describe_events(pb::DescribeEventsRequest {
        account: "w".into(),
        limit: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
    .into_iter()
    .map(|e| (e.kind, e.detail_json))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_special_purpose_addresses_are_refused_unless_allowed() {
    let hook = Server::start("ok").await;
    let port = hook.addr.rsplit(':').next().unwrap().to_string();
    let by_name = format!("http://localhost:{port}/hook");

    // Without the flag: literal addresses and names are refused when set, naming the field
    // and the range.
    let mut c = Cluster::new(binaries!(), 1);
    c.allow_private_webhooks = false;
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let mut admin = c.admin(1).await;
    let refused = admin
        .create_account(pb::CreateAccountRequest {
            name: "w".into(),
            webhook: Some("http://169.254.169.254/latest/meta-data".into()),
            balance_alert: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("invalid webhook")
            && refused.message().contains("link-local")
            && refused.message().contains("--allow-private-webhooks"),
        "{}",
        refused.message()
    );
    admin
        .create_account(pb::CreateAccountRequest {
            name: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (url, range) in [
        (format!("http://{}/hook", hook.addr), "loopback"),
        (by_name.clone(), "loopback"),
        ("http://10.0.0.1:80/h".to_string(), "RFC 1918"),
        ("http://[fd00::1]:80/h".to_string(), "unique local"),
    ] {
        let e = set_alert(&mut admin, None, Some(&url)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}");
        assert!(e.message().contains(range), "{url}: {}", e.message());
    }

    // With the flag, loopback works: set by name, and an alert is delivered to it.
    c.kill(1);
    c.allow_private_webhooks = true;
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let mut admin = c.admin(1).await;
    set_alert(&mut admin, Some("5"), Some(&by_name))
        .await
        .unwrap();
    eventually("the alert on the loopback webhook", SETTLE, || async {
        (hook.count() > 0).then_some(())
    })
    .await;

    // The same stored webhook, the flag gone: the name resolves to 127.0.0.1 at send time,
    // so nothing is sent, and the failure is an event of the account.
    c.kill(1);
    c.allow_private_webhooks = false;
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let mut admin = c.admin(1).await;
    let delivered = hook.count();
    set_alert(&mut admin, Some("6"), None).await.unwrap();
    let failed = eventually("a webhook_failed event", SETTLE, || async {
        let mut admin = c.admin(1).await;
        events(&mut admin)
            .await
            .into_iter()
            .find(|(kind, _)| kind == "webhook_failed")
    })
    .await;
    assert!(
        failed.1.contains("localhost") && failed.1.contains("loopback"),
        "{failed:?}"
    );
    assert_eq!(
        hook.count(),
        delivered,
        "nothing was sent to a loopback address"
    );
}
