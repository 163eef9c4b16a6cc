//! Why the gateway answers a request itself: [`GatewayError`], its status and its stable code.
//! The response made of one is the server's (see the `upstream` crate's `error_response`).

use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Which limit of a policy refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleScope {
    Api,
    User,
    App,
}

impl ThrottleScope {
    /// `X-Ca-Error-Message` of a call this limit refused, as the cloud words it.
    pub fn message(self) -> &'static str {
        match self {
            ThrottleScope::Api => "Throttled by API Flow Control",
            ThrottleScope::User => "Throttled by USER Flow Control",
            ThrottleScope::App => "Throttled by APP Flow Control",
        }
    }
}

/// Why the gateway answered a request itself instead of the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The instance's limiter on this node refused the request.
    #[error("Throttled by INSTANCE Flow Control (instance {instance})")]
    Throttled {
        instance: Arc<str>,
        retry_after_secs: u64,
    },
    /// A throttling policy bound to the API refused the request: its API, user or app limit.
    #[error("{}", .scope.message())]
    ThrottledBy {
        scope: ThrottleScope,
        retry_after_secs: u64,
    },
    /// Refused by the API's access control (IP access control, signature, app authorisation).
    #[error("{}", .0.message)]
    Denied(crate::access::Denied),
    #[error("No API matches {method} {path} in stage {stage}")]
    NotFound {
        method: String,
        path: String,
        stage: &'static str,
    },
    #[error(
        "Account {account} is suspended for overdue payment: API calls are refused until the \
         balance is settled; management operations still work"
    )]
    AccountSuspended { account: String },
    #[error("Bad gateway: {0}")]
    BadGateway(&'static str),
    #[error("The backend did not answer within {} ms", .0.as_millis())]
    GatewayTimeout(Duration),
    #[error("The request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("The request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("Bad request: {0}")]
    BadRequest(&'static str),
    /// The request's host is missing, repeated or malformed (see [`crate::head`]).
    #[error("Invalid host: {0}")]
    InvalidHost(crate::head::HostError),
    #[error("The request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The request path is not one the gateway routes unambiguously (see [`crate::path`]).
    #[error("Invalid request path: {0}")]
    InvalidPath(crate::path::PathError),
    /// This node does not serve API traffic (see [`crate::Dataplane::set_not_serving`]).
    #[error("This gateway node is not serving API traffic: {reason}")]
    NodeNotServing { reason: Arc<String> },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Throttled { .. } | GatewayError::ThrottledBy { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Denied(d) => d.status,
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::AccountSuspended { .. } => StatusCode::FORBIDDEN,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BadRequest(_)
            | GatewayError::InvalidPath(_)
            | GatewayError::InvalidHost(_) => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::NodeNotServing { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable, machine-readable code.
    /// How long a throttled caller is told to wait (`Retry-After`), in seconds.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::Throttled {
                retry_after_secs, ..
            }
            | GatewayError::ThrottledBy {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Throttled { .. } | GatewayError::ThrottledBy { .. } => "Throttled",
            GatewayError::Denied(d) => d.code,
            GatewayError::NotFound { .. } => "ApiNotFound",
            GatewayError::AccountSuspended { .. } => "AccountSuspended",
            GatewayError::BadGateway(_) => "BackendUnavailable",
            GatewayError::GatewayTimeout(_) => "BackendTimeout",
            GatewayError::BodyTooLarge { .. } => "RequestBodyTooLarge",
            GatewayError::HeadersTooLarge { .. } => "RequestHeaderFieldsTooLarge",
            GatewayError::BadRequest(_) => "BadRequest",
            GatewayError::InvalidPath(_) => "InvalidPath",
            GatewayError::InvalidHost(_) => "InvalidHost",
            GatewayError::UriTooLong { .. } => "RequestUriTooLong",
            GatewayError::NodeNotServing { .. } => "NodeNotServing",
        }
    }
}
