//! Who may call which admin RPC: the one table ([`Rpc::access`]) and the one place it is
//! enforced.
//!
//! Enforcement has two halves, both driven by the table:
//!
//! - [`Guarded`] wraps the whole admin service. Before a request reaches a handler it
//!   authenticates the caller, finds the RPC's entry by its gRPC path, and refuses what the
//!   entry alone decides: an account token calling an operator-only RPC, and any RPC that
//!   has no entry at all (a new RPC is refused until it is given one).
//! - [`check`], called first thing by every handler (`AdminService::authorize`), decides
//!   what needs the decoded request: whether the account token owns the instance, group, app
//!   or account that the request names.
//!
//! Listings are the handlers' half of the same rule: an account token sees only its own
//! account's resources ([`Principal::sees`], [`Principal::scope`]).

use crate::auth::{Authenticator, Principal};
use model::State;
use proto::admin as pb;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any authenticated caller: the RPC reads nothing of any account (the catalog).
    Anyone,
    /// The operator only.
    Operator,
    /// The operator, or the account token of the account that owns the resource of this kind
    /// that the request names ([`Names::names`]). An empty name is the caller's own account,
    /// or a listing that the handler limits to it. A named resource that does not exist is
    /// left to the handler (NOT_FOUND), as no account owns it.
    Owner(Of),
}

/// The kind of resource whose owner an [`Access::Owner`] RPC checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    /// The account itself (the request's `account` or `name` field).
    Account,
    Instance,
    Group,
    App,
    /// A throttling policy.
    Throttle,
}

/// Declares [`Rpc`] and its table in one list, so that an RPC cannot exist without an entry.
macro_rules! table {
    ($($rpc:ident => $access:expr;)*) => {
        /// An RPC of the admin service (`service Admin` in proto/admin.proto).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc {
            $($rpc,)*
        }

        impl Rpc {
            /// Every RPC with an entry in the table.
            pub const ALL: &'static [Rpc] = &[$(Rpc::$rpc,)*];

            /// The RPC's method name in the proto file.
            pub fn name(self) -> &'static str {
                match self {
                    $(Rpc::$rpc => stringify!($rpc),)*
                }
            }

            /// Who may call it: THE authorisation table of the admin API.
            pub fn access(self) -> Access {
                use Access::*;
                match self {
                    $(Rpc::$rpc => $access,)*
                }
            }
        }
    };
}

table! {
    // Instances: an account buys, changes, renews (from its own balance) and deletes its own.
    CreateInstance => Owner(Of::Account);
    DescribeInstances => Owner(Of::Instance);
    ModifyInstanceSpec => Owner(Of::Instance);
    DeleteInstance => Owner(Of::Instance);
    RenewInstance => Owner(Of::Instance);
    SetInstanceAutoRenew => Owner(Of::Instance);
    // The catalog is public to every caller.
    DescribeSpecs => Anyone;
    DescribeRegions => Anyone;
    // API groups and APIs (a group on a dedicated instance must share its account: the
    // state machine refuses another account's instance).
    CreateApiGroup => Owner(Of::Account);
    ModifyApiGroup => Owner(Of::Group);
    DescribeApiGroups => Owner(Of::Group);
    DeleteApiGroup => Owner(Of::Group);
    CreateApi => Owner(Of::Group);
    ModifyApi => Owner(Of::Group);
    DescribeApis => Owner(Of::Group);
    DeleteApi => Owner(Of::Group);
    DeployApi => Owner(Of::Group);
    AbolishApi => Owner(Of::Group);
    // Accounts and money: money comes in only through the operator (who has been paid); an
    // account reads its balance, usage, bills, events and ledger and sets its own alerts.
    CreateAccount => Operator;
    DescribeAccounts => Owner(Of::Account);
    Recharge => Operator;
    AdjustBalance => Operator;
    SetBalanceAlert => Owner(Of::Account);
    DescribeUsage => Owner(Of::Account);
    DescribeBills => Owner(Of::Account);
    DescribeEvents => Owner(Of::Account);
    DescribeLedger => Owner(Of::Account);
    // Apps (the app granted must share the group's account: the state machine checks it).
    CreateApp => Owner(Of::Account);
    DescribeApps => Owner(Of::App);
    DeleteApp => Owner(Of::App);
    AuthorizeApp => Owner(Of::Group);
    RevokeAppAuthorization => Owner(Of::Group);
    SetIpAccessControl => Owner(Of::Group);
    // Declarative configuration: each group of an applied document is checked too
    // (`config::authorize`), and the command is limited to the account.
    // Throttling policies: an account's own, bound to its own APIs (the binding's group and a
    // special limit's account are checked by the handlers, with [`check_owner`]).
    CreateTrafficControl => Owner(Of::Account);
    SetTrafficControlSpecial => Owner(Of::Throttle);
    BindTrafficControl => Owner(Of::Throttle);
    UnbindTrafficControl => Owner(Of::Throttle);
    DescribeTrafficControls => Owner(Of::Throttle);
    DeleteTrafficControl => Owner(Of::Throttle);
    ExportConfig => Owner(Of::Account);
    ApplyConfig => Owner(Of::Account);
    // Tokens and the cluster are the operator's.
    CreateToken => Operator;
    DescribeTokens => Operator;
    RevokeToken => Operator;
    DescribeCluster => Operator;
    AddLearner => Operator;
    PromoteLearner => Operator;
    RemoveNode => Operator;
}

impl Rpc {
    /// The RPC a gRPC request path (`/gateway.admin.v1.Admin/CreateInstance`) calls.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(pb::admin_server::SERVICE_NAME)?
            .strip_prefix('/')?;
        Rpc::ALL.iter().copied().find(|r| r.name() == method)
    }
}

/// The name a request gives of the resource its RPC's [`Access::Owner`] entry is about;
/// empty for the caller's own account or a listing, and for RPCs that name none.
pub trait Names {
    fn names(&self) -> &str;
}

macro_rules! names {
    ($($msg:ident => $($field:ident)?;)*) => {
        $(impl Names for pb::$msg {
            fn names(&self) -> &str {
                names!(@field self $($field)?)
            }
        })*
    };
    (@field $self:ident $field:ident) => { &$self.$field };
    (@field $self:ident) => { "" };
}

names! {
    CreateInstanceRequest => account;
    DescribeInstancesRequest => name;
    ModifyInstanceSpecRequest => name;
    DeleteInstanceRequest => name;
    RenewInstanceRequest => name;
    SetInstanceAutoRenewRequest => name;
    DescribeSpecsRequest => ;
    DescribeRegionsRequest => ;
    CreateApiGroupRequest => account;
    ModifyApiGroupRequest => name;
    DescribeApiGroupsRequest => name;
    DeleteApiGroupRequest => name;
    CreateApiRequest => group;
    ModifyApiRequest => group;
    DescribeApisRequest => group;
    DeleteApiRequest => group;
    DeployApiRequest => group;
    AbolishApiRequest => group;
    CreateAccountRequest => name;
    DescribeAccountsRequest => name;
    RechargeRequest => account;
    AdjustBalanceRequest => account;
    SetBalanceAlertRequest => account;
    DescribeUsageRequest => account;
    DescribeBillsRequest => account;
    DescribeEventsRequest => account;
    DescribeLedgerRequest => account;
    CreateAppRequest => account;
    DescribeAppsRequest => name;
    DeleteAppRequest => name;
    AuthorizeAppRequest => group;
    SetIpAccessControlRequest => group;
    CreateTrafficControlRequest => account;
    SetTrafficControlSpecialRequest => name;
    BindTrafficControlRequest => name;
    DescribeTrafficControlsRequest => name;
    DeleteTrafficControlRequest => name;
    ExportConfigRequest => account;
    ApplyConfigRequest => account;
    CreateTokenRequest => account;
    DescribeTokensRequest => account;
    RevokeTokenRequest => ;
    DescribeClusterRequest => ;
    AddLearnerRequest => ;
    PromoteLearnerRequest => ;
    RemoveNodeRequest => ;
}

/// What the table decides from the RPC and the caller alone (see [`Guarded`]).
pub fn admit(rpc: Rpc, p: &Principal) -> Result<(), Status> {
    match (rpc.access(), p) {
        (Access::Operator, Principal::Account(a)) => Err(Status::permission_denied(format!(
            "{} needs the operator's token; the token of account '{a}' cannot call it",
            rpc.name()
        ))),
        _ => Ok(()),
    }
}

/// The whole decision for a call of `rpc` by `p` naming `named` (see [`Names`]), against the
/// state this node has applied.
pub fn check(rpc: Rpc, p: &Principal, named: &str, state: &State) -> Result<(), Status> {
    admit(rpc, p)?;
    match rpc.access() {
        Access::Owner(of) => check_owner(rpc, of, p, named, state),
        Access::Anyone | Access::Operator => Ok(()),
    }
}

/// Whether an account token may touch the `of` named `named` in a call of `rpc`: the
/// [`Access::Owner`] rule, also used by handlers for a second resource a request names (the
/// group a policy is bound to). The operator may; an empty name is the caller's own account.
pub fn check_owner(
    rpc: Rpc,
    of: Of,
    p: &Principal,
    named: &str,
    state: &State,
) -> Result<(), Status> {
    let Principal::Account(own) = p else {
        return Ok(());
    };
    if named.is_empty() {
        return Ok(());
    }
    let (kind, owner) = match of {
        Of::Account if named != own => {
            return Err(Status::permission_denied(format!(
                "{}: the token of account '{own}' cannot see or act for account '{named}'",
                rpc.name()
            )));
        }
        Of::Account => return Ok(()),
        Of::Instance => (
            "instance",
            state.instances.get(named).map(|i| i.account.as_str()),
        ),
        Of::Group => (
            "API group",
            state.groups.get(named).map(|g| g.account.as_str()),
        ),
        Of::App => ("app", state.apps.get(named).map(|a| a.account.as_str())),
        Of::Throttle => (
            "throttling policy",
            state.throttles.get(named).map(|t| t.account.as_str()),
        ),
    };
    match owner {
        Some(owner) if owner != own => Err(Status::permission_denied(format!(
            "{}: {kind} '{named}' belongs to another account than '{own}', the account of this token",
            rpc.name()
        ))),
        _ => Ok(()),
    }
}

/// The admin service behind authentication and the table: see the module documentation.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    auth: Authenticator,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Guarded { inner, auth }
    }

    /// Authenticates and admits `req`, recording the caller and the RPC for the handler.
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<Rpc, Status> {
        let principal = self.auth.authenticate(req.headers())?;
        let path = req.uri().path();
        let rpc = Rpc::from_path(path).ok_or_else(|| {
            Status::permission_denied(format!(
                "{path} has no entry in the admin API's authorisation table, so no one may call it"
            ))
        })?;
        admit(rpc, &principal)?;
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(rpc);
        Ok(rpc)
    }
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.admit(&mut req) {
            Ok(rpc) => {
                // The handler learns the RPC (and the caller's trace) for its write spans.
                let traceparent = req
                    .headers()
                    .get("traceparent")
                    .map(|v| v.as_bytes().to_vec());
                let traced = crate::spans::with_rpc(rpc.name(), traceparent, self.inner.call(req));
                Box::pin(traced)
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto_methods() -> Vec<String> {
        let methods = proto::admin_methods();
        assert!(methods.len() > 40, "{methods:?}");
        methods
    }

    #[test]
    fn the_table_has_exactly_the_rpcs_of_the_service() {
        let methods = proto_methods();
        let missing: Vec<_> = methods
            .iter()
            .filter(|m| Rpc::ALL.iter().all(|r| r.name() != *m))
            .collect();
        assert!(missing.is_empty(), "RPCs without an entry: {missing:?}");
        let stale: Vec<_> = Rpc::ALL
            .iter()
            .filter(|r| !methods.iter().any(|m| m == r.name()))
            .collect();
        assert!(stale.is_empty(), "entries of no RPC: {stale:?}");
    }

    #[test]
    fn paths_name_rpcs_of_this_service_only() {
        assert_eq!(
            Rpc::from_path("/gateway.admin.v1.Admin/Recharge"),
            Some(Rpc::Recharge)
        );
        for path in [
            "/gateway.admin.v1.Admin/Nope",
            "/gateway.admin.v1.Admin/",
            "/gateway.peer.v1.Peer/Recharge",
            "/gateway.admin.v1.AdminX/Recharge",
            "gateway.admin.v1.Admin/Recharge",
        ] {
            assert_eq!(Rpc::from_path(path), None, "{path}");
        }
    }

    #[test]
    fn operator_only_rpcs_refuse_every_account_token() {
        let account = Principal::Account("a".into());
        for rpc in Rpc::ALL {
            let refused = admit(*rpc, &account).is_err();
            assert_eq!(refused, rpc.access() == Access::Operator, "{rpc:?}");
            assert!(admit(*rpc, &Principal::Operator).is_ok(), "{rpc:?}");
        }
    }
}
