//! The responses the gateway makes itself, and the errors behind them.
//!
//! Every one is JSON `{"code", "message", "request_id"}` with `X-Ca-Request-Id`,
//! `X-Ca-Error-Code` and `X-Ca-Error-Message` headers, so clients can tell the gateway's own
//! answers from their backends'.

use crate::body::ResponseBody;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub const X_CA_REQUEST_ID: HeaderName = HeaderName::from_static("x-ca-request-id");
pub const X_CA_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-ca-error-message");
pub const X_CA_ERROR_CODE: HeaderName = HeaderName::from_static("x-ca-error-code");
pub const X_CA_STAGE: HeaderName = HeaderName::from_static("x-ca-stage");

/// Why the gateway answered a request itself instead of the backend.
/// `X-Ca-Error-Message` of a throttled request, as the cloud words it.
pub const THROTTLED_MESSAGE: &str = "Throttled by INSTANCE Flow Control";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The instance's limiter on this node refused the request.
    #[error("Throttled by INSTANCE Flow Control (instance {instance})")]
    Throttled {
        instance: Arc<str>,
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
    /// This node does not serve API traffic (see [`crate::Dataplane::set_not_serving`]).
    #[error("This gateway node is not serving API traffic: {reason}")]
    NodeNotServing { reason: Arc<String> },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Denied(d) => d.status,
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::AccountSuspended { .. } => StatusCode::FORBIDDEN,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NodeNotServing { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Throttled { .. } => "Throttled",
            GatewayError::Denied(d) => d.code,
            GatewayError::NotFound { .. } => "ApiNotFound",
            GatewayError::AccountSuspended { .. } => "AccountSuspended",
            GatewayError::BadGateway(_) => "BackendUnavailable",
            GatewayError::GatewayTimeout(_) => "BackendTimeout",
            GatewayError::BodyTooLarge { .. } => "RequestBodyTooLarge",
            GatewayError::HeadersTooLarge { .. } => "RequestHeaderFieldsTooLarge",
            GatewayError::BadRequest(_) => "BadRequest",
            GatewayError::NodeNotServing { .. } => "NodeNotServing",
        }
    }

    /// The JSON response for this error.
    pub(crate) fn to_response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let message = self.to_string();
        let rid = request_id.to_str().unwrap_or("");
        let body = serde_json::json!({
            "code": self.code(),
            "message": message,
            "request_id": rid,
        });
        let body = Bytes::from(body.to_string());
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(X_CA_REQUEST_ID, request_id.clone());
        headers.insert(X_CA_ERROR_CODE, HeaderValue::from_static(self.code()));
        // The cloud's clients match the throttling message exactly, so the header carries it
        // verbatim; the body names the instance.
        let header_text = match self {
            GatewayError::Throttled { .. } => THROTTLED_MESSAGE.to_string(),
            _ => message.clone(),
        };
        // Names come from configuration; one that is not plain ASCII (which many clients mangle
        // in headers) leaves the code in the header, the full message in the body.
        let header_message = Some(&header_text)
            .filter(|m| m.is_ascii())
            .and_then(|m| HeaderValue::from_str(m).ok())
            .unwrap_or_else(|| HeaderValue::from_static(self.code()));
        headers.insert(X_CA_ERROR_MESSAGE, header_message);
        if let GatewayError::Throttled {
            retry_after_secs, ..
        } = self
        {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_response_has_retry_after_and_json() {
        let e = GatewayError::Throttled {
            instance: "api-s1".into(),
            retry_after_secs: 1,
        };
        let r = e.to_response(&HeaderValue::from_static("rid-1"));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()[X_CA_REQUEST_ID], "rid-1");
        assert_eq!(r.headers()[X_CA_ERROR_MESSAGE], THROTTLED_MESSAGE);
    }

    #[test]
    fn non_ascii_names_fall_back_to_the_code_in_the_header() {
        let e = GatewayError::AccountSuspended {
            account: "账户".into(),
        };
        let r = e.to_response(&HeaderValue::from_static("rid"));
        assert_eq!(r.headers()[X_CA_ERROR_MESSAGE], "AccountSuspended");
        assert_eq!(r.status(), 403);
    }
}
