//! `POST /console/api/<Method>`: one endpoint per RPC of `service Admin`, nothing more.
//!
//! The body is the RPC's request message as JSON (the serde form that crates/proto derives
//! for the admin messages: field names as in the proto file, absent fields their default) and
//! the answer is the reply message. The call is made through a tonic client over the node's
//! own guarded admin service, so it passes the same authentication, authorisation table and
//! handler as a gRPC call on the admin listener: the console has no admin rule of its own.

use crate::AdminStack;
use crate::reply::ApiError;
use http::HeaderValue;
use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use tonic::metadata::MetadataValue;

/// A request for the admin service, with the caller's `Authorization` header (if any) as its
/// `authorization` metadata.
fn request<T>(msg: T, auth: Option<HeaderValue>) -> Result<tonic::Request<T>, ApiError> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = auth {
        let v = MetadataValue::try_from(v.as_bytes()).map_err(|_| {
            ApiError::from(tonic::Status::unauthenticated(
                "the authorization header must be 'Bearer TOKEN'",
            ))
        })?;
        req.metadata_mut().insert("authorization", v);
    }
    Ok(req)
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, ApiError> {
    // An empty body is the empty message, as `{}` is.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_json(name, &e))
}

macro_rules! rpcs {
    ($($rpc:ident => $method:ident($req:ident);)*) => {
        /// Every RPC the console forwards, by its proto name.
        pub const METHODS: &[&str] = &[$(stringify!($rpc),)*];

        /// Calls the RPC named `rpc` with the JSON request `body`; the reply as JSON.
        pub async fn call(
            client: &mut AdminClient<AdminStack>,
            rpc: &str,
            body: &[u8],
            auth: Option<HeaderValue>,
        ) -> Result<Vec<u8>, ApiError> {
            match rpc {
                $(stringify!($rpc) => {
                    let msg: pb::$req = parse(stringify!($req), body)?;
                    let reply = client.$method(request(msg, auth)?).await?.into_inner();
                    serde_json::to_vec(&reply).map_err(|e| {
                        ApiError::from(tonic::Status::internal(format!(
                            "cannot write the reply as JSON: {e}"
                        )))
                    })
                })*
                other => Err(ApiError::no_such_method(other)),
            }
        }
    };
}

rpcs! {
    CreateInstance => create_instance(CreateInstanceRequest);
    DescribeInstances => describe_instances(DescribeInstancesRequest);
    ModifyInstanceSpec => modify_instance_spec(ModifyInstanceSpecRequest);
    DeleteInstance => delete_instance(DeleteInstanceRequest);
    RenewInstance => renew_instance(RenewInstanceRequest);
    SetInstanceAutoRenew => set_instance_auto_renew(SetInstanceAutoRenewRequest);
    DescribeSpecs => describe_specs(DescribeSpecsRequest);
    DescribeRegions => describe_regions(DescribeRegionsRequest);
    CreateApiGroup => create_api_group(CreateApiGroupRequest);
    ModifyApiGroup => modify_api_group(ModifyApiGroupRequest);
    DescribeApiGroups => describe_api_groups(DescribeApiGroupsRequest);
    DeleteApiGroup => delete_api_group(DeleteApiGroupRequest);
    CreateApi => create_api(CreateApiRequest);
    ModifyApi => modify_api(ModifyApiRequest);
    DescribeApis => describe_apis(DescribeApisRequest);
    DeleteApi => delete_api(DeleteApiRequest);
    DeployApi => deploy_api(DeployApiRequest);
    AbolishApi => abolish_api(AbolishApiRequest);
    CreateAccount => create_account(CreateAccountRequest);
    DescribeAccounts => describe_accounts(DescribeAccountsRequest);
    Recharge => recharge(RechargeRequest);
    AdjustBalance => adjust_balance(AdjustBalanceRequest);
    SetBalanceAlert => set_balance_alert(SetBalanceAlertRequest);
    DescribeUsage => describe_usage(DescribeUsageRequest);
    DescribeBills => describe_bills(DescribeBillsRequest);
    DescribeEvents => describe_events(DescribeEventsRequest);
    DescribeLedger => describe_ledger(DescribeLedgerRequest);
    CreateApp => create_app(CreateAppRequest);
    DescribeApps => describe_apps(DescribeAppsRequest);
    DeleteApp => delete_app(DeleteAppRequest);
    AuthorizeApp => authorize_app(AuthorizeAppRequest);
    RevokeAppAuthorization => revoke_app_authorization(AuthorizeAppRequest);
    SetIpAccessControl => set_ip_access_control(SetIpAccessControlRequest);
    CreateTrafficControl => create_traffic_control(CreateTrafficControlRequest);
    SetTrafficControlSpecial => set_traffic_control_special(SetTrafficControlSpecialRequest);
    BindTrafficControl => bind_traffic_control(BindTrafficControlRequest);
    UnbindTrafficControl => unbind_traffic_control(BindTrafficControlRequest);
    DescribeTrafficControls => describe_traffic_controls(DescribeTrafficControlsRequest);
    DeleteTrafficControl => delete_traffic_control(DeleteTrafficControlRequest);
    ExportConfig => export_config(ExportConfigRequest);
    ApplyConfig => apply_config(ApplyConfigRequest);
    CreateToken => create_token(CreateTokenRequest);
    DescribeTokens => describe_tokens(DescribeTokensRequest);
    RevokeToken => revoke_token(RevokeTokenRequest);
    DescribeCluster => describe_cluster(DescribeClusterRequest);
    AddLearner => add_learner(AddLearnerRequest);
    PromoteLearner => promote_learner(PromoteLearnerRequest);
    RemoveNode => remove_node(RemoveNodeRequest);
}

/// Calls `rpc` and decodes its reply: for the console's own reads ([`crate::traffic`]).
pub async fn call_as<T: serde::de::DeserializeOwned>(
    client: &mut AdminClient<AdminStack>,
    rpc: &str,
    body: &[u8],
    auth: Option<HeaderValue>,
) -> Result<T, ApiError> {
    let json = call(client, rpc, body, auth).await?;
    serde_json::from_slice(&json).map_err(|e| {
        ApiError::from(tonic::Status::internal(format!(
            "cannot read the {rpc} reply: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_service_has_an_endpoint_and_no_other() {
        let methods = proto::admin_methods();
        assert!(methods.len() > 40, "{methods:?}");
        let mut ours: Vec<&str> = METHODS.to_vec();
        let mut theirs: Vec<&str> = methods.iter().map(String::as_str).collect();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn request_messages_read_their_proto_field_names() {
        let r: pb::CreateInstanceRequest = parse(
            "CreateInstanceRequest",
            br#"{"name":"i","spec":"api.s1.small","charge_type":2}"#,
        )
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.charge_type, r.auto_renew),
            ("i", 2, false)
        );
        let r: pb::DescribeSpecsRequest = parse("DescribeSpecsRequest", b"").unwrap();
        assert_eq!(r, pb::DescribeSpecsRequest {});
        let r: pb::ModifyApiGroupRequest =
            parse("ModifyApiGroupRequest", br#"{"name":"g","host":null}"#).unwrap();
        assert_eq!(r.host, None);
    }
}
