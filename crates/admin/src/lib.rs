//! The gateway's admin gRPC service.
//!
//! This crate owns the operator-facing API: it checks each request (so bad input is answered
//! with the field at fault before anything is proposed), turns it into a [`model::Command`],
//! has the [`cluster::Node`] commit it (forwarding to the leader when needed), and maps the
//! outcome to a gRPC status. Reads are served from the state this node has applied, and from
//! its copy of the history (ledgers, bills, events, closed days' usage), a page at a time;
//! they are linearizable by default (a read index from the leader first), or local on request.
//!
//! # Layout
//!
//! - this file: the RPC handlers, and the mapping of every error to a gRPC status;
//! - `access`: the authorisation table of every RPC, and where it is enforced;
//! - `auth`: who is calling (the operator or an account token);
//! - `config`: the declarative configuration: scope, parsing and who may apply what;
//! - `convert`: instances, groups and APIs to and from protobuf;
//! - `accounts`: accounts, ledgers, bills and events: parsing and presentation;
//! - `usage`: `DescribeUsage`, merging closed days (history) with open ones (state);
//! - `paging`: page sizes and cursors of history reads;
//! - `throttles`: throttling policies: requests to commands, policies to protobuf;
//! - `spans`: a span per write submitted to Raft, for a tracing exporter.

pub mod access;
mod accounts;
pub mod auth;
mod config;
mod convert;
mod paging;
mod spans;
mod throttles;
mod usage;

#[cfg(test)]
mod tests;

use catalog::{Catalog, SHARED_INSTANCE};
use cluster::{ClusterError, HistoryError, Node};
use model::{
    AuthType, BackendLocation, ChargeType, Command, DomainError, GroupChange, InstanceOptions,
    Reply, Stage, Update, validate,
};
use proto::admin as pb;
use proto::admin::admin_server::{Admin, AdminServer};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use access::{Guarded, Of, Rpc};
pub use auth::{Authenticator, Principal};
pub use convert::instance_to_pb;
pub use spans::{AdminWrite, WriteSpans};

/// The request metadata that chooses how fresh a read must be: `linearizable` (the default)
/// or `local`.
pub const CONSISTENCY_HEADER: &str = "x-consistency";

/// The admin service of one node.
pub struct AdminService {
    node: Node,
    catalog: Arc<Catalog>,
    /// `gatewayd --allow-private-webhooks`: webhooks may target loopback, private and other
    /// special-purpose addresses ([`model::validate::private_range`]).
    allow_private_webhooks: bool,
    /// Where a span per write goes, when spans are exported.
    spans: Option<Arc<dyn WriteSpans>>,
}

impl AdminService {
    pub fn new(
        node: Node,
        catalog: Arc<Catalog>,
        allow_private_webhooks: bool,
    ) -> AdminServer<AdminService> {
        Self::with_spans(node, catalog, allow_private_webhooks, None)
    }

    /// [`Self::new`], recording a span per write submitted to Raft in `spans`.
    pub fn with_spans(
        node: Node,
        catalog: Arc<Catalog>,
        allow_private_webhooks: bool,
        spans: Option<Arc<dyn WriteSpans>>,
    ) -> AdminServer<AdminService> {
        AdminServer::new(AdminService {
            node,
            catalog,
            allow_private_webhooks,
            spans,
        })
        // Room for a whole cluster's configuration document (ApplyConfig).
        .max_decoding_message_size(model::config::MAX_DOCUMENT_BYTES)
        .max_encoding_message_size(model::config::MAX_DOCUMENT_BYTES)
    }

    /// Refuses unless the authorisation table ([`access::Rpc::access`]) lets the caller of
    /// `req` call `rpc` on what the request names; every handler begins with it.
    fn authorize<T: access::Names>(&self, rpc: Rpc, req: &Request<T>) -> Result<Principal, Status> {
        // The guard found the RPC from the request's path: a handler checking another
        // entry than its own is a bug, and refused rather than trusted.
        if let Some(routed) = req.extensions().get::<Rpc>()
            && *routed != rpc
        {
            return Err(Status::internal(format!(
                "{} was checked as {}",
                routed.name(),
                rpc.name()
            )));
        }
        let p = Principal::of(req);
        access::check(rpc, &p, req.get_ref().names(), &self.node.state())?;
        Ok(p)
    }

    /// Refuses a webhook URL that is malformed or that targets a special-purpose address: a
    /// literal one, or any address its host name resolves to now (it is checked again at
    /// each delivery, after that delivery's own lookup).
    async fn check_webhook(&self, url: &str) -> Result<(), Status> {
        check(validate::webhook(url))?;
        if self.allow_private_webhooks {
            return Ok(());
        }
        let (host, port) = validate::webhook_host_port(url).ok_or_else(|| {
            Status::invalid_argument(format!("invalid webhook: '{url}' has no host"))
        })?;
        let allowed = "webhooks must go to public addresses unless the operator starts gatewayd with --allow-private-webhooks";
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            if let Some(range) = validate::private_range(ip) {
                return Err(Status::invalid_argument(format!(
                    "invalid webhook: '{url}' targets {ip}, a {range} address; {allowed}"
                )));
            }
            return Ok(());
        }
        let addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| {
            Status::invalid_argument(format!(
                "invalid webhook: the host of '{url}' does not resolve: {e}"
            ))
        })?;
        for a in addrs {
            if let Some(range) = validate::private_range(a.ip()) {
                return Err(Status::invalid_argument(format!(
                    "invalid webhook: '{url}' resolves to {}, a {range} address; {allowed}",
                    a.ip()
                )));
            }
        }
        Ok(())
    }

    /// Makes the read that follows linearizable, unless the caller asked for local consistency
    /// with the `x-consistency: local` metadata (gatewayctl `--consistency local`): then the
    /// read is served from what this node has applied, which may lag the cluster, but costs no
    /// round trip to the leader and works without a quorum.
    async fn read_barrier<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match req.metadata().get(CONSISTENCY_HEADER).map(|v| v.to_str()) {
            None | Some(Ok("linearizable")) => {
                self.node.linearizable_read().await.map_err(to_status)
            }
            Some(Ok("local")) => Ok(()),
            Some(_) => Err(Status::invalid_argument(format!(
                "{CONSISTENCY_HEADER}: must be 'linearizable' (the default) or 'local'"
            ))),
        }
    }

    async fn write(&self, cmd: Command) -> Result<Reply, Status> {
        let kind = cmd.kind();
        let start = std::time::SystemTime::now();
        let written = self.node.write(cmd).await.map_err(|e| {
            tracing::debug!(command = kind, "refused: {e}");
            to_status(e)
        });
        self.span(kind, start, &written);
        written
    }

    /// Records the span of a write, when spans are exported.
    fn span(&self, kind: &'static str, start: std::time::SystemTime, r: &Result<Reply, Status>) {
        if let Some(sink) = &self.spans {
            spans::finish(&**sink, kind, start, r.as_ref().map(|_| ()));
        }
    }

    /// [`Self::write`] under a request id the client can retry with: its own, or one made up
    /// here and given back in an "outcome unknown" error. Ids are scoped by `scope` (the
    /// account written to), so that no one can be answered with another account's outcome.
    async fn write_as(
        &self,
        scope: &str,
        request_id: String,
        cmd: Command,
    ) -> Result<Reply, Status> {
        let request_id = if request_id.is_empty() {
            auth::random_hex(12)?
        } else {
            check(validate::request_id(&request_id))?;
            request_id
        };
        let kind = cmd.kind();
        let scoped = format!("client:{scope}:{request_id}");
        let start = std::time::SystemTime::now();
        let written = self.node.write_request(scoped, cmd).await.map_err(|e| {
            tracing::debug!(command = kind, "refused: {e}");
            match e {
                ClusterError::OutcomeUnknown { reason, .. } => Status::deadline_exceeded(format!(
                    "outcome unknown: {reason}; the write may still be applied, so retry it with request id {request_id} (gatewayctl --request-id {request_id}): it is applied at most once"
                )),
                e => to_status(e),
            }
        });
        self.span(kind, start, &written);
        written
    }
}

/// Maps a cluster or domain error to the gRPC status a client can act on.
pub fn to_status(e: ClusterError) -> Status {
    match e {
        ClusterError::Domain(d) => domain_status(d),
        ClusterError::Unavailable(m) => Status::unavailable(m),
        // Not UNAVAILABLE, which clients may retry blindly: only a retry with the same
        // request id is safe.
        e @ ClusterError::OutcomeUnknown { .. } => Status::deadline_exceeded(e.to_string()),
        ClusterError::Invalid(m) => Status::failed_precondition(m),
        ClusterError::Internal(m) => Status::internal(m),
    }
}

/// Maps a failed read of this node's history (storage or a corrupt record: nothing the caller
/// can fix) to the status every history read answers with.
fn history_status(e: HistoryError) -> Status {
    tracing::error!("reading history failed: {e}");
    Status::internal(format!("this node could not read its history: {e}"))
}

fn domain_status(d: DomainError) -> Status {
    let msg = d.to_string();
    match d {
        DomainError::Invalid { .. } => Status::invalid_argument(msg),
        DomainError::NotFound { .. } => Status::not_found(msg),
        DomainError::AlreadyExists { .. } => Status::already_exists(msg),
        DomainError::FailedPrecondition(_) => Status::failed_precondition(msg),
    }
}

fn check(r: Result<(), DomainError>) -> Result<(), Status> {
    r.map_err(domain_status)
}

fn parse_stage(s: &str) -> Result<Stage, Status> {
    if s.is_empty() {
        return Ok(Stage::Release);
    }
    Stage::parse(s).map_err(domain_status)
}

fn unexpected(reply: Reply) -> Status {
    Status::internal(format!("unexpected reply {reply:?}"))
}

fn deleted(reply: Reply) -> Result<Response<pb::DeleteReply>, Status> {
    match reply {
        Reply::Deleted { kind, name } => Ok(Response::new(pb::DeleteReply { kind, name })),
        other => Err(unexpected(other)),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::InstanceReply>, Status> {
        let p = self.authorize(Rpc::CreateInstance, &req)?;
        let r = req.into_inner();
        let account = p.account_for_create(r.account)?;
        check(validate::name("name", &r.name))?;
        let charge_type = match pb::ChargeType::try_from(r.charge_type) {
            Ok(pb::ChargeType::Unspecified | pb::ChargeType::Postpaid) => ChargeType::Postpaid,
            Ok(pb::ChargeType::Month) => ChargeType::Month,
            Ok(pb::ChargeType::Year) => ChargeType::Year,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid charge_type: {} is not one of postpaid, month, year",
                    r.charge_type
                )));
            }
        };
        self.catalog
            .spec(&r.spec)
            .map_err(|e| Status::invalid_argument(format!("invalid spec: {e}")))?;
        self.catalog
            .region(&r.region)
            .map_err(|e| Status::invalid_argument(format!("invalid region: {e}")))?;
        if r.auto_renew && charge_type == ChargeType::Postpaid {
            return Err(Status::invalid_argument(
                "invalid auto_renew: only a subscription (charge type month or year) renews; pay-as-you-go is billed by the hour",
            ));
        }
        let reply = self
            .write(Command::CreateInstanceWith {
                name: r.name,
                spec: r.spec,
                region: r.region,
                charge_type,
                account,
                options: InstanceOptions {
                    auto_renew: r.auto_renew,
                },
            })
            .await?;
        match reply {
            Reply::Instance(i) => Ok(Response::new(pb::InstanceReply {
                instance: Some(instance_to_pb(&i, &self.catalog)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn describe_instances(
        &self,
        req: Request<pb::DescribeInstancesRequest>,
    ) -> Result<Response<pb::DescribeInstancesReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeInstances, &req)?;
        let name = req.into_inner().name;
        let state = self.node.state();
        let instances = if name.is_empty() {
            state
                .instances
                .values()
                .filter(|i| p.sees(&i.account))
                .map(|i| instance_to_pb(i, &self.catalog))
                .collect()
        } else {
            let i = state
                .instances
                .get(&name)
                .ok_or_else(|| domain_status(DomainError::not_found("instance", &name)))?;
            vec![instance_to_pb(i, &self.catalog)]
        };
        Ok(Response::new(pb::DescribeInstancesReply { instances }))
    }

    async fn modify_instance_spec(
        &self,
        req: Request<pb::ModifyInstanceSpecRequest>,
    ) -> Result<Response<pb::InstanceReply>, Status> {
        self.authorize(Rpc::ModifyInstanceSpec, &req)?;
        let r = req.into_inner();
        self.catalog
            .spec(&r.spec)
            .map_err(|e| Status::invalid_argument(format!("invalid spec: {e}")))?;
        match self
            .write(Command::ModifyInstanceSpec {
                name: r.name,
                spec: r.spec,
            })
            .await?
        {
            Reply::Instance(i) => Ok(Response::new(pb::InstanceReply {
                instance: Some(instance_to_pb(&i, &self.catalog)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_instance(
        &self,
        req: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::DeleteInstance, &req)?;
        let name = req.into_inner().name;
        deleted(self.write(Command::DeleteInstance { name }).await?)
    }

    async fn renew_instance(
        &self,
        req: Request<pb::RenewInstanceRequest>,
    ) -> Result<Response<pb::InstanceReply>, Status> {
        self.authorize(Rpc::RenewInstance, &req)?;
        let r = req.into_inner();
        // An account renews its own instances, from its own balance (as it buys them).
        let term = match (r.months, r.years) {
            (m, 0) if m > 0 => billing::Term::Months(m),
            (0, y) if y > 0 => billing::Term::Years(y),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "invalid term: give months or years, exactly one of them and more than 0 (got months {}, years {})",
                    r.months, r.years
                )));
            }
        };
        // Request ids are scoped by the account paying, as for recharges.
        let scope = self
            .node
            .state()
            .instances
            .get(&r.name)
            .map(|i| i.account.clone())
            .unwrap_or_default();
        match self
            .write_as(
                &scope,
                r.request_id,
                Command::RenewInstance { name: r.name, term },
            )
            .await?
        {
            Reply::Instance(i) => Ok(Response::new(pb::InstanceReply {
                instance: Some(instance_to_pb(&i, &self.catalog)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn set_instance_auto_renew(
        &self,
        req: Request<pb::SetInstanceAutoRenewRequest>,
    ) -> Result<Response<pb::InstanceReply>, Status> {
        self.authorize(Rpc::SetInstanceAutoRenew, &req)?;
        let r = req.into_inner();
        match self
            .write(Command::SetInstanceAutoRenew {
                name: r.name,
                auto_renew: r.auto_renew,
            })
            .await?
        {
            Reply::Instance(i) => Ok(Response::new(pb::InstanceReply {
                instance: Some(instance_to_pb(&i, &self.catalog)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn describe_specs(
        &self,
        req: Request<pb::DescribeSpecsRequest>,
    ) -> Result<Response<pb::DescribeSpecsReply>, Status> {
        self.authorize(Rpc::DescribeSpecs, &req)?;
        let specs = self
            .catalog
            .specs()
            .iter()
            .map(|s| pb::Spec {
                name: s.name.clone(),
                max_rps: s.max_rps,
                sla: s.sla.clone(),
            })
            .collect();
        Ok(Response::new(pb::DescribeSpecsReply { specs }))
    }

    async fn describe_regions(
        &self,
        req: Request<pb::DescribeRegionsRequest>,
    ) -> Result<Response<pb::DescribeRegionsReply>, Status> {
        self.authorize(Rpc::DescribeRegions, &req)?;
        let regions = self
            .catalog
            .regions()
            .iter()
            .map(|r| pb::Region {
                id: r.id.clone(),
                name: r.name.clone(),
            })
            .collect();
        Ok(Response::new(pb::DescribeRegionsReply { regions }))
    }

    async fn create_api_group(
        &self,
        req: Request<pb::CreateApiGroupRequest>,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        let p = self.authorize(Rpc::CreateApiGroup, &req)?;
        let r = req.into_inner();
        let account = p.account_for_create(r.account)?;
        check(validate::name("name", &r.name))?;
        let host = r.host.filter(|h| !h.is_empty());
        let base_path = r.base_path.filter(|b| !b.is_empty());
        if let Some(h) = &host {
            check(validate::host(h))?;
        }
        if let Some(b) = &base_path {
            check(validate::base_path(b))?;
        }
        let instance = if r.instance.is_empty() {
            SHARED_INSTANCE.to_string()
        } else {
            r.instance
        };
        group_reply(
            self.write(Command::CreateApiGroup {
                name: r.name,
                account,
                instance,
                host,
                base_path,
            })
            .await?,
        )
    }

    async fn modify_api_group(
        &self,
        req: Request<pb::ModifyApiGroupRequest>,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        self.authorize(Rpc::ModifyApiGroup, &req)?;
        let r = req.into_inner();
        let clearable = |v: Option<String>| v.map(|s| if s.is_empty() { None } else { Some(s) });
        let change = GroupChange {
            instance: r.instance,
            host: clearable(r.host),
            base_path: clearable(r.base_path),
        };
        if change == GroupChange::default() {
            return Err(Status::invalid_argument(
                "nothing to change: give at least one of instance, host, base_path",
            ));
        }
        group_reply(
            self.write(Command::ModifyApiGroup {
                name: r.name,
                change,
            })
            .await?,
        )
    }

    async fn describe_api_groups(
        &self,
        req: Request<pb::DescribeApiGroupsRequest>,
    ) -> Result<Response<pb::DescribeApiGroupsReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeApiGroups, &req)?;
        let name = req.into_inner().name;
        let state = self.node.state();
        let groups = if name.is_empty() {
            state
                .groups
                .values()
                .filter(|g| p.sees(&g.account))
                .map(convert::group_to_pb)
                .collect()
        } else {
            let g = state
                .groups
                .get(&name)
                .ok_or_else(|| domain_status(DomainError::not_found("API group", &name)))?;
            vec![convert::group_to_pb(g)]
        };
        Ok(Response::new(pb::DescribeApiGroupsReply { groups }))
    }

    async fn delete_api_group(
        &self,
        req: Request<pb::DeleteApiGroupRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::DeleteApiGroup, &req)?;
        let pb::DeleteApiGroupRequest { name, force } = req.into_inner();
        deleted(self.write(Command::DeleteApiGroup { name, force }).await?)
    }

    async fn create_api(
        &self,
        req: Request<pb::CreateApiRequest>,
    ) -> Result<Response<pb::ApiReply>, Status> {
        self.authorize(Rpc::CreateApi, &req)?;
        let r = req.into_inner();
        check(validate::name("name", &r.name))?;
        if let Some(d) = &r.definition {
            check(AuthType::parse(&d.auth_type).map(|_| ()))?;
            check(
                BackendLocation::parse(&d.backend_location)
                    .map(|_| ())
                    .map_err(|why| DomainError::invalid("backend_location", why)),
            )?;
        }
        let spec = convert::definition_from_pb(r.definition);
        check_definition(&spec)?;
        self.api_reply(
            self.write(Command::CreateApi {
                group: r.group,
                name: r.name,
                spec,
            })
            .await?,
        )
    }

    async fn modify_api(
        &self,
        req: Request<pb::ModifyApiRequest>,
    ) -> Result<Response<pb::ApiReply>, Status> {
        self.authorize(Rpc::ModifyApi, &req)?;
        let r = req.into_inner();
        if let Some(d) = &r.definition {
            check(AuthType::parse(&d.auth_type).map(|_| ()))?;
            check(
                BackendLocation::parse(&d.backend_location)
                    .map(|_| ())
                    .map_err(|why| DomainError::invalid("backend_location", why)),
            )?;
        }
        let spec = convert::definition_from_pb(r.definition);
        check_definition(&spec)?;
        self.api_reply(
            self.write(Command::ModifyApi {
                group: r.group,
                name: r.name,
                spec,
            })
            .await?,
        )
    }

    async fn describe_apis(
        &self,
        req: Request<pb::DescribeApisRequest>,
    ) -> Result<Response<pb::DescribeApisReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeApis, &req)?;
        let r = req.into_inner();
        let state = self.node.state();
        let groups: Vec<&model::ApiGroup> = if r.group.is_empty() {
            state
                .groups
                .values()
                .filter(|g| p.sees(&g.account))
                .collect()
        } else {
            let g = state
                .groups
                .get(&r.group)
                .ok_or_else(|| domain_status(DomainError::not_found("API group", &r.group)))?;
            vec![g]
        };
        let mut apis = Vec::new();
        for g in groups {
            for name in g.apis.keys() {
                if r.name.is_empty() || *name == r.name {
                    apis.extend(convert::api_to_pb(g, name));
                }
            }
        }
        if !r.name.is_empty() && apis.is_empty() {
            return Err(domain_status(DomainError::not_found(
                "API",
                &format!("{}/{}", r.group, r.name),
            )));
        }
        Ok(Response::new(pb::DescribeApisReply { apis }))
    }

    async fn delete_api(
        &self,
        req: Request<pb::DeleteApiRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::DeleteApi, &req)?;
        let r = req.into_inner();
        deleted(
            self.write(Command::DeleteApi {
                group: r.group,
                name: r.name,
            })
            .await?,
        )
    }

    async fn deploy_api(
        &self,
        req: Request<pb::DeployApiRequest>,
    ) -> Result<Response<pb::DeployApiReply>, Status> {
        self.authorize(Rpc::DeployApi, &req)?;
        let r = req.into_inner();
        let stage = parse_stage(&r.stage)?;
        match self
            .write(Command::DeployApi {
                group: r.group,
                name: r.name,
                stage,
            })
            .await?
        {
            Reply::Deployment {
                group,
                api,
                stage,
                deployment,
            } => Ok(Response::new(pb::DeployApiReply {
                group,
                deployment: Some(pb::Deployment {
                    stage: stage.as_str().to_string(),
                    api,
                    definition: Some(convert::definition_to_pb(&deployment.spec)),
                    deployed_at_ms: deployment.deployed_at_ms,
                }),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn abolish_api(
        &self,
        req: Request<pb::AbolishApiRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::AbolishApi, &req)?;
        let r = req.into_inner();
        let stage = parse_stage(&r.stage)?;
        deleted(
            self.write(Command::AbolishApi {
                group: r.group,
                name: r.name,
                stage,
            })
            .await?,
        )
    }

    async fn create_account(
        &self,
        req: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        self.authorize(Rpc::CreateAccount, &req)?;
        let r = req.into_inner();
        check(validate::name("name", &r.name))?;
        let webhook = r.webhook.filter(|w| !w.is_empty());
        if let Some(w) = &webhook {
            self.check_webhook(w).await?;
        }
        let balance_alert = match r.balance_alert.filter(|t| !t.is_empty()) {
            Some(t) => Some(accounts::parse_usd("balance_alert", &t)?),
            None => None,
        };
        self.account_reply(
            self.write(Command::CreateAccount {
                name: r.name,
                webhook,
                balance_alert,
            })
            .await?,
        )
    }

    async fn describe_accounts(
        &self,
        req: Request<pb::DescribeAccountsRequest>,
    ) -> Result<Response<pb::DescribeAccountsReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeAccounts, &req)?;
        let name = req.into_inner().name;
        let state = self.node.state();
        let history = self.node.history();
        let list = if name.is_empty() {
            state
                .accounts
                .values()
                .filter(|a| p.sees(&a.name))
                .map(|a| accounts::account_to_pb(a, history))
                .collect::<Result<_, _>>()
        } else {
            let a = accounts::find_account(&state, &name)?;
            accounts::account_to_pb(a, history).map(|a| vec![a])
        };
        Ok(Response::new(pb::DescribeAccountsReply {
            accounts: list.map_err(history_status)?,
        }))
    }

    async fn recharge(
        &self,
        req: Request<pb::RechargeRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        self.authorize(Rpc::Recharge, &req)?;
        let r = req.into_inner();
        // Money comes in only through the operator (who has been paid): an account's own token
        // could otherwise credit itself, clear its suspension and buy subscriptions for free.
        let amount = accounts::parse_usd("amount", &r.amount)?;
        if amount <= catalog::Usd::ZERO {
            return Err(Status::invalid_argument(format!(
                "invalid amount: {amount} must be more than 0"
            )));
        }
        self.account_reply(
            self.write_as(
                &r.account.clone(),
                r.request_id,
                Command::Recharge {
                    account: r.account,
                    amount,
                },
            )
            .await?,
        )
    }

    async fn adjust_balance(
        &self,
        req: Request<pb::AdjustBalanceRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        self.authorize(Rpc::AdjustBalance, &req)?;
        let r = req.into_inner();
        // Like a recharge, and for the same reason: an account must not credit itself.
        let amount = accounts::parse_usd("amount", r.amount.trim_start_matches('+'))?;
        if amount == catalog::Usd::ZERO {
            return Err(Status::invalid_argument(
                "invalid amount: must not be 0: a credit is positive (+12.50), a debit negative (-12.50)",
            ));
        }
        check(validate::whole_cents("amount", amount))?;
        check(validate::reason(&r.reason))?;
        self.account_reply(
            self.write_as(
                &r.account.clone(),
                r.request_id,
                Command::AdjustBalance {
                    account: r.account,
                    amount,
                    reason: r.reason,
                },
            )
            .await?,
        )
    }

    async fn set_balance_alert(
        &self,
        req: Request<pb::SetBalanceAlertRequest>,
    ) -> Result<Response<pb::AccountReply>, Status> {
        self.authorize(Rpc::SetBalanceAlert, &req)?;
        let r = req.into_inner();
        let threshold = match r.threshold.as_deref() {
            None => Update::Keep,
            Some("") => Update::Clear,
            Some(t) => {
                let t = accounts::parse_usd("threshold", t)?;
                check(validate::threshold(t))?;
                Update::Set(t)
            }
        };
        let webhook = match r.webhook {
            None => Update::Keep,
            Some(w) if w.is_empty() => Update::Clear,
            Some(w) => {
                self.check_webhook(&w).await?;
                Update::Set(w)
            }
        };
        if threshold == Update::Keep && webhook == Update::Keep {
            return Err(Status::invalid_argument(
                "nothing to change: give a threshold (empty removes it), a webhook (empty removes it), or both",
            ));
        }
        self.account_reply(
            self.write(Command::SetAccountAlert {
                account: r.account,
                threshold,
                webhook,
            })
            .await?,
        )
    }

    async fn describe_usage(
        &self,
        req: Request<pb::DescribeUsageRequest>,
    ) -> Result<Response<pb::DescribeUsageReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeUsage, &req)?;
        let r = req.into_inner();
        let account = p.scope(r.account)?;
        let day = accounts::parse_opt_day("day", &r.day)?;
        let limit = paging::limit(r.limit)?;
        let after = if r.after.is_empty() {
            None
        } else {
            let c = paging::UsageCursor::parse("after", &r.after)?;
            if !account.is_empty() && c.account != account {
                return Err(Status::invalid_argument(format!(
                    "invalid after: '{}' is a cursor of account '{}', not of '{account}'",
                    r.after, c.account
                )));
            }
            Some(c)
        };
        let state = self.node.state();
        if !account.is_empty() {
            accounts::find_account(&state, &account)?;
        }
        let query = usage::Query {
            account: &account,
            day,
            after: after.as_ref(),
            limit,
        };
        let page = usage::page(&state, self.node.history(), &query).map_err(history_status)?;
        Ok(Response::new(pb::DescribeUsageReply {
            rows: page.rows,
            next_after: page.next.map(|c| c.to_string()),
        }))
    }

    async fn describe_bills(
        &self,
        req: Request<pb::DescribeBillsRequest>,
    ) -> Result<Response<pb::DescribeBillsReply>, Status> {
        self.read_barrier(&req).await?;
        self.authorize(Rpc::DescribeBills, &req)?;
        let r = req.into_inner();
        let day = match r.day.as_deref() {
            None => None,
            Some("") => {
                return Err(Status::invalid_argument(
                    "invalid day: must not be empty: give a date like 2026-01-31 (or leave day out to list the bills)",
                ));
            }
            Some(d) => Some(accounts::parse_day("day", d)?),
        };
        let after_day = accounts::parse_opt_day("after_day", &r.after_day)?;
        let limit = paging::limit(r.limit)?;
        if day.is_some() && after_day.is_some() {
            return Err(Status::invalid_argument(
                "invalid after_day: give day (one bill) or after_day (a page of bills), not both",
            ));
        }
        accounts::find_account(&self.node.state(), &r.account)?;
        let history = self.node.history();
        if let Some(day) = day {
            let bill = history
                .bill(&r.account, day)
                .map_err(history_status)?
                .ok_or_else(|| {
                    domain_status(DomainError::not_found(
                        "bill",
                        &format!("{}@{}", r.account, accounts::day_name(day)),
                    ))
                })?;
            return Ok(Response::new(pb::DescribeBillsReply {
                bills: vec![accounts::bill_to_pb(&r.account, &bill)],
                next_after_day: None,
            }));
        }
        let page = history
            .bills(&r.account, after_day, limit)
            .map_err(history_status)?;
        Ok(Response::new(pb::DescribeBillsReply {
            bills: page
                .items
                .iter()
                .map(|b| accounts::bill_to_pb(&r.account, b))
                .collect(),
            next_after_day: page.next.map(accounts::day_name),
        }))
    }

    async fn describe_events(
        &self,
        req: Request<pb::DescribeEventsRequest>,
    ) -> Result<Response<pb::DescribeEventsReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeEvents, &req)?;
        let r = req.into_inner();
        let account = p.scope(r.account)?;
        let limit = paging::limit(r.limit)?;
        if !account.is_empty() {
            accounts::find_account(&self.node.state(), &account)?;
        }
        let only = (!account.is_empty()).then_some(account.as_str());
        let page = self
            .node
            .history()
            .events(only, r.after_seq, limit)
            .map_err(history_status)?;
        Ok(Response::new(pb::DescribeEventsReply {
            events: page.items.iter().map(accounts::event_to_pb).collect(),
            next_after_seq: page.next,
        }))
    }

    async fn describe_ledger(
        &self,
        req: Request<pb::DescribeLedgerRequest>,
    ) -> Result<Response<pb::DescribeLedgerReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeLedger, &req)?;
        let r = req.into_inner();
        // An account token may leave the account out: its own is the only one it sees.
        let account = p.scope(r.account)?;
        if account.is_empty() {
            return Err(Status::invalid_argument(
                "invalid account: must not be empty (the account whose ledger to read)",
            ));
        }
        let limit = paging::limit(r.limit)?;
        accounts::find_account(&self.node.state(), &account)?;
        let page = self
            .node
            .history()
            .ledger(&account, r.after_seq, limit)
            .map_err(history_status)?;
        Ok(Response::new(pb::DescribeLedgerReply {
            entries: page
                .items
                .iter()
                .map(|(seq, e)| accounts::ledger_entry_to_pb(*seq, e))
                .collect(),
            next_after_seq: page.next,
        }))
    }

    async fn create_app(
        &self,
        req: Request<pb::CreateAppRequest>,
    ) -> Result<Response<pb::AppReply>, Status> {
        let p = self.authorize(Rpc::CreateApp, &req)?;
        let r = req.into_inner();
        let account = p.account_for_create(r.account)?;
        check(validate::name("name", &r.name))?;
        let key = auth::random_hex(12)?;
        let secret = auth::random_hex(24)?;
        match self
            .write(Command::CreateApp {
                name: r.name,
                account,
                key,
                secret,
            })
            .await?
        {
            Reply::App(a) => Ok(Response::new(pb::AppReply {
                app: Some(app_to_pb(&a)),
                app_secret: a.secret.clone(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn describe_apps(
        &self,
        req: Request<pb::DescribeAppsRequest>,
    ) -> Result<Response<pb::DescribeAppsReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::DescribeApps, &req)?;
        let name = req.into_inner().name;
        let state = self.node.state();
        let apps = state
            .apps
            .values()
            .filter(|a| p.sees(&a.account) && (name.is_empty() || a.name == name))
            .map(app_to_pb)
            .collect::<Vec<_>>();
        if !name.is_empty() && apps.is_empty() {
            return Err(domain_status(DomainError::not_found("app", &name)));
        }
        Ok(Response::new(pb::DescribeAppsReply { apps }))
    }

    async fn delete_app(
        &self,
        req: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::DeleteApp, &req)?;
        let name = req.into_inner().name;
        deleted(self.write(Command::DeleteApp { name }).await?)
    }

    async fn create_traffic_control(
        &self,
        req: Request<pb::CreateTrafficControlRequest>,
    ) -> Result<Response<pb::TrafficControlReply>, Status> {
        let p = self.authorize(Rpc::CreateTrafficControl, &req)?;
        let command = throttles::create(&p, req.into_inner())?;
        throttles::reply(self.write(command).await?)
    }

    async fn set_traffic_control_special(
        &self,
        req: Request<pb::SetTrafficControlSpecialRequest>,
    ) -> Result<Response<pb::TrafficControlReply>, Status> {
        let rpc = Rpc::SetTrafficControlSpecial;
        let p = self.authorize(rpc, &req)?;
        let r = req.into_inner();
        access::check_owner(rpc, Of::Account, &p, &r.account, &self.node.state())?;
        let command = throttles::special(r)?;
        throttles::reply(self.write(command).await?)
    }

    async fn bind_traffic_control(
        &self,
        req: Request<pb::BindTrafficControlRequest>,
    ) -> Result<Response<pb::TrafficControlReply>, Status> {
        self.change_binding(req, true).await
    }

    async fn unbind_traffic_control(
        &self,
        req: Request<pb::BindTrafficControlRequest>,
    ) -> Result<Response<pb::TrafficControlReply>, Status> {
        self.change_binding(req, false).await
    }

    async fn describe_traffic_controls(
        &self,
        req: Request<pb::DescribeTrafficControlsRequest>,
    ) -> Result<Response<pb::DescribeTrafficControlsReply>, Status> {
        let p = self.authorize(Rpc::DescribeTrafficControls, &req)?;
        self.read_barrier(&req).await?;
        let name = req.into_inner().name;
        let state = self.node.state();
        let policies = state
            .throttles
            .values()
            .filter(|t| p.sees(&t.account) && (name.is_empty() || t.name == name))
            .map(throttles::to_pb)
            .collect::<Vec<_>>();
        if !name.is_empty() && policies.is_empty() {
            return Err(domain_status(DomainError::not_found(
                "throttling policy",
                &name,
            )));
        }
        Ok(Response::new(pb::DescribeTrafficControlsReply { policies }))
    }

    async fn delete_traffic_control(
        &self,
        req: Request<pb::DeleteTrafficControlRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::DeleteTrafficControl, &req)?;
        let name = req.into_inner().name;
        deleted(self.write(Command::DeleteThrottlePolicy { name }).await?)
    }

    async fn authorize_app(
        &self,
        req: Request<pb::AuthorizeAppRequest>,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        self.change_grant(req, true).await
    }

    async fn revoke_app_authorization(
        &self,
        req: Request<pb::AuthorizeAppRequest>,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        self.change_grant(req, false).await
    }

    async fn set_ip_access_control(
        &self,
        req: Request<pb::SetIpAccessControlRequest>,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        self.authorize(Rpc::SetIpAccessControl, &req)?;
        let r = req.into_inner();
        for c in &r.allow {
            check(validate::cidr("allow", c))?;
        }
        for c in &r.deny {
            check(validate::cidr("deny", c))?;
        }
        group_reply(
            self.write(Command::SetIpAccessControl {
                group: r.group,
                api: (!r.api.is_empty()).then_some(r.api),
                allow: r.allow,
                deny: r.deny,
            })
            .await?,
        )
    }

    async fn export_config(
        &self,
        req: Request<pb::ExportConfigRequest>,
    ) -> Result<Response<pb::ExportConfigReply>, Status> {
        self.read_barrier(&req).await?;
        let p = self.authorize(Rpc::ExportConfig, &req)?;
        let account = config::scope(&p, req.into_inner().account)?;
        let doc = self.node.state().export_config(account.as_deref());
        let document_json = serde_json::to_string(&doc)
            .map_err(|e| Status::internal(format!("cannot encode the document: {e}")))?;
        Ok(Response::new(pb::ExportConfigReply { document_json }))
    }

    async fn apply_config(
        &self,
        req: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigReply>, Status> {
        let p = self.authorize(Rpc::ApplyConfig, &req)?;
        let dry_run = req.get_ref().dry_run;
        if dry_run {
            // Checked against everything acknowledged before, as the write would be.
            self.read_barrier(&req).await?;
        }
        let r = req.into_inner();
        let account = config::scope(&p, r.account.clone())?;
        let desired = config::parse(&r.document_json)?;
        let state = self.node.state();
        config::authorize(&p, &state, &desired)?;
        let options = config::options(&r, account);
        if dry_run {
            let report = state
                .dry_run_config(&desired, &options, self.node.now_ms(), &self.catalog)
                .map_err(domain_status)?;
            return Ok(Response::new(config::reply(report, false)));
        }
        drop(state);
        // No request id: an apply is idempotent (the same document applied twice changes
        // nothing the second time), so retrying one whose outcome is unknown is safe.
        match self
            .write(Command::ApplyConfig { desired, options })
            .await?
        {
            Reply::ConfigApplied(report) => Ok(Response::new(config::reply(report, true))),
            other => Err(unexpected(other)),
        }
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::TokenReply>, Status> {
        self.authorize(Rpc::CreateToken, &req)?;
        let account = req.into_inner().account;
        let id = auth::random_hex(8)?;
        let secret = auth::random_hex(24)?;
        let reply = self
            .write(Command::CreateToken {
                id: id.clone(),
                account,
                secret_sha256: auth::sha256_hex(&secret),
            })
            .await?;
        match reply {
            Reply::Token(t) => Ok(Response::new(pb::TokenReply {
                token: Some(token_to_pb(&t)),
                secret_token: format!("{}{id}_{secret}", auth::TOKEN_PREFIX),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn describe_tokens(
        &self,
        req: Request<pb::DescribeTokensRequest>,
    ) -> Result<Response<pb::DescribeTokensReply>, Status> {
        self.read_barrier(&req).await?;
        self.authorize(Rpc::DescribeTokens, &req)?;
        let account = req.into_inner().account;
        let tokens = self
            .node
            .state()
            .tokens
            .values()
            .filter(|t| account.is_empty() || t.account == account)
            .map(token_to_pb)
            .collect();
        Ok(Response::new(pb::DescribeTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        self.authorize(Rpc::RevokeToken, &req)?;
        let id = req.into_inner().id;
        deleted(self.write(Command::RevokeToken { id }).await?)
    }

    async fn describe_cluster(
        &self,
        req: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(Rpc::DescribeCluster, &req)?;
        Ok(Response::new(self.cluster_status()))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(Rpc::AddLearner, &req)?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument(
                "invalid node_id: must be 1 or more",
            ));
        }
        self.node
            .add_learner(r.node_id, r.peer_addr)
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.cluster_status()))
    }

    async fn promote_learner(
        &self,
        req: Request<pb::PromoteLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(Rpc::PromoteLearner, &req)?;
        self.node
            .promote(req.into_inner().node_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.cluster_status()))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(Rpc::RemoveNode, &req)?;
        self.node
            .remove(req.into_inner().node_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.cluster_status()))
    }
}

impl AdminService {
    fn cluster_status(&self) -> pb::ClusterStatus {
        let s = self.node.status();
        pb::ClusterStatus {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            state: s.state.to_string(),
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    node_id: m.node_id,
                    peer_addr: m.peer_addr,
                    role: m.role.to_string(),
                    voter: m.voter,
                    matched_index: m.matched_index,
                })
                .collect(),
            cluster_id: s.cluster_id.unwrap_or_default(),
            not_serving: s.not_serving,
            waiting: s.waiting,
        }
    }

    /// Binds a throttling policy to an API on a stage, or unbinds it.
    async fn change_binding(
        &self,
        req: Request<pb::BindTrafficControlRequest>,
        bind: bool,
    ) -> Result<Response<pb::TrafficControlReply>, Status> {
        let rpc = if bind {
            Rpc::BindTrafficControl
        } else {
            Rpc::UnbindTrafficControl
        };
        let p = self.authorize(rpc, &req)?;
        let r = req.into_inner();
        access::check_owner(rpc, Of::Group, &p, &r.group, &self.node.state())?;
        let command = throttles::binding(r, bind)?;
        throttles::reply(self.write(command).await?)
    }

    /// Grants an app the right to call an API, or takes it away.
    async fn change_grant(
        &self,
        req: Request<pb::AuthorizeAppRequest>,
        grant: bool,
    ) -> Result<Response<pb::ApiGroupReply>, Status> {
        let rpc = if grant {
            Rpc::AuthorizeApp
        } else {
            Rpc::RevokeAppAuthorization
        };
        self.authorize(rpc, &req)?;
        let pb::AuthorizeAppRequest { group, api, app } = req.into_inner();
        let cmd = if grant {
            Command::AuthorizeApp { group, api, app }
        } else {
            Command::RevokeAppAuthorization { group, api, app }
        };
        group_reply(self.write(cmd).await?)
    }

    fn account_reply(&self, reply: Reply) -> Result<Response<pb::AccountReply>, Status> {
        match reply {
            Reply::Account(a) => Ok(Response::new(pb::AccountReply {
                account: Some(
                    accounts::account_to_pb(&a, self.node.history()).map_err(history_status)?,
                ),
            })),
            other => Err(unexpected(other)),
        }
    }

    fn api_reply(&self, reply: Reply) -> Result<Response<pb::ApiReply>, Status> {
        match reply {
            Reply::Api { group, api } => {
                let state = self.node.state();
                // Deployed stages come from the group as applied here, which includes this write.
                let pb_api = state
                    .groups
                    .get(&group)
                    .and_then(|g| convert::api_to_pb(g, &api.name))
                    .unwrap_or(pb::Api {
                        group,
                        name: api.name.clone(),
                        definition: Some(convert::definition_to_pb(&api.spec)),
                        created_at_ms: api.created_at_ms,
                        deployed_stages: vec![],
                    });
                Ok(Response::new(pb::ApiReply { api: Some(pb_api) }))
            }
            other => Err(unexpected(other)),
        }
    }
}

fn app_to_pb(a: &model::App) -> pb::App {
    pb::App {
        name: a.name.clone(),
        account: a.account.clone(),
        app_key: a.key.clone(),
        created_at_ms: a.created_at_ms,
    }
}

fn token_to_pb(t: &model::ApiToken) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        account: t.account.clone(),
        created_at_ms: t.created_at_ms,
    }
}

fn group_reply(reply: Reply) -> Result<Response<pb::ApiGroupReply>, Status> {
    match reply {
        Reply::Group(g) => Ok(Response::new(pb::ApiGroupReply {
            group: Some(convert::group_to_pb(&g)),
        })),
        other => Err(unexpected(other)),
    }
}

fn check_definition(spec: &model::ApiSpec) -> Result<(), Status> {
    check(validate::method(&spec.method))?;
    check(validate::api_path(&spec.path))?;
    check(spec.backends.check())?;
    check(validate::timeout_ms(spec.timeout_ms))
}
