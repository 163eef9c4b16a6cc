//! Who is calling the admin API. What each caller may do is the table in [`crate::access`].
//!
//! Every call but gRPC health carries `authorization: Bearer TOKEN`. The operator's token
//! (`gatewayd --admin-token-file`) may do everything. An account token (`gwt_ID_SECRET`,
//! created by the operator, revocable) acts for one account: it sees and changes only that
//! account's instances, groups, APIs, usage, ledger, bills and events. Only the SHA-256 of a token's
//! secret is in the replicated state. Without an operator token the admin API only listens on
//! loopback and a call without a token acts as the operator (local development).

use cluster::Node;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tonic::{Request, Status};

/// The caller of an admin RPC, as [`crate::access::Guarded`] established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Account(String),
}

impl Principal {
    /// The caller of `req` (set by [`crate::access::Guarded`]).
    pub fn of<T>(req: &Request<T>) -> Principal {
        req.extensions()
            .get::<Principal>()
            .cloned()
            // The guard always sets it; a service built without it (unit tests) is local-only.
            .unwrap_or(Principal::Operator)
    }

    /// Whether the caller may see what belongs to `account`.
    pub fn sees(&self, account: &str) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Account(a) => a == account,
        }
    }

    /// The account a listing is limited to: what was asked (empty is every account, for the
    /// operator), and always the caller's own for an account token.
    pub fn scope(&self, asked: String) -> Result<String, Status> {
        match self {
            Principal::Operator => Ok(asked),
            Principal::Account(a) if asked.is_empty() || asked == *a => Ok(a.clone()),
            Principal::Account(a) => Err(Status::permission_denied(format!(
                "the token of account '{a}' cannot see account '{asked}'"
            ))),
        }
    }

    /// The account a create acts for: the one asked for, or the caller's own.
    pub fn account_for_create(&self, asked: String) -> Result<String, Status> {
        match self {
            Principal::Operator => Ok(if asked.is_empty() {
                model::DEFAULT_ACCOUNT.to_string()
            } else {
                asked
            }),
            Principal::Account(a) if asked.is_empty() || asked == *a => Ok(a.clone()),
            Principal::Account(a) => Err(Status::permission_denied(format!(
                "the token of account '{a}' cannot create resources for account '{asked}'"
            ))),
        }
    }
}

/// The prefix of account tokens.
pub const TOKEN_PREFIX: &str = "gwt_";

/// Lower-case hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Establishes who is calling from the bearer token (see [`crate::access::Guarded`]).
#[derive(Clone)]
pub struct Authenticator {
    operator: Option<Arc<str>>,
    node: Node,
}

impl Authenticator {
    /// `operator`: the operator's token; `None` lets calls without a token act as the operator
    /// (only for an admin API bound to loopback).
    pub fn new(operator: Option<String>, node: Node) -> Self {
        Authenticator {
            operator: operator.map(|t| Arc::from(t.trim())),
            node,
        }
    }

    fn principal(&self, token: Option<&str>) -> Result<Principal, Status> {
        let Some(token) = token else {
            return match self.operator {
                Some(_) => Err(Status::unauthenticated(
                    "missing bearer token: set GATEWAY_TOKEN or --token-file",
                )),
                None => Ok(Principal::Operator),
            };
        };
        if let Some(op) = &self.operator
            && constant_time_eq(token.as_bytes(), op.as_bytes())
        {
            return Ok(Principal::Operator);
        }
        let invalid =
            || Status::unauthenticated("invalid bearer token (unknown, revoked or mistyped)");
        let (id, secret) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(invalid)?;
        let state = self.node.state();
        let stored = state.tokens.get(id).ok_or_else(invalid)?;
        if constant_time_eq(
            sha256_hex(secret).as_bytes(),
            stored.secret_sha256.as_bytes(),
        ) {
            Ok(Principal::Account(stored.account.clone()))
        } else {
            Err(invalid())
        }
    }
}

impl Authenticator {
    /// The caller of a request with these headers (`authorization: Bearer TOKEN`).
    pub fn authenticate(
        &self,
        headers: &tonic::codegen::http::HeaderMap,
    ) -> Result<Principal, Status> {
        let token = match headers.get("authorization") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Status::unauthenticated("the authorization header must be 'Bearer TOKEN'")
                    })?,
            ),
        };
        self.principal(token)
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes as hex, from the operating system.
pub fn random_hex(n: usize) -> Result<String, Status> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Status::internal(format!("no randomness for a token: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
