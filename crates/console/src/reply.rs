//! The console's JSON answers, and its errors: `{code, message, field}`.
//!
//! A refused admin call keeps the gRPC status's code (its canonical name, such as
//! `INVALID_ARGUMENT`) and message, with the HTTP status that says the same. `field` is the
//! request field the message names: the admin service words every validation error as
//! `invalid FIELD: what is allowed` (`model::DomainError::Invalid`), so a form can show the
//! error at that field.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use tonic::{Code, Status};

/// A JSON response.
pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // Answers hold account data: no cache keeps them.
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// An error answer of a JSON endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The gRPC code's canonical name (`PERMISSION_DENIED`), or for a request the console
    /// itself refuses before any call, the nearest one.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when the message names one.
    pub field: Option<String>,
    #[serde(skip)]
    pub http: StatusCode,
    /// For 405: the method the path takes.
    #[serde(skip)]
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(code: &'static str, http: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            http,
            allow: None,
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(
            "NOT_FOUND",
            StatusCode::NOT_FOUND,
            format!("{path}: no such page or endpoint of the console"),
        )
    }

    pub fn no_such_method(method: &str) -> ApiError {
        ApiError::new(
            "UNIMPLEMENTED",
            StatusCode::NOT_FOUND,
            format!("{method} is not an RPC of the admin service (gateway.admin.v1.Admin)"),
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            "INVALID_ARGUMENT",
            StatusCode::METHOD_NOT_ALLOWED,
            format!("this path takes {allow} only"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            "INVALID_ARGUMENT",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json",
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            "RESOURCE_EXHAUSTED",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {limit} bytes; apply large configuration documents with gatewayctl"
            ),
        )
    }

    pub fn bad_request(message: String) -> ApiError {
        ApiError::new("INVALID_ARGUMENT", StatusCode::BAD_REQUEST, message)
    }

    /// A body that is not the request message: serde names an unknown field, which is the
    /// field at fault.
    pub fn bad_json(message_type: &str, e: &serde_json::Error) -> ApiError {
        let text = e.to_string();
        let field = text
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(f, _)| f.to_string());
        let mut err = ApiError::bad_request(format!("the body is not a {message_type}: {text}"));
        err.field = field;
        err
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = json(self.http, body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        resp
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> ApiError {
        let (code, http) = code_of(s.code());
        let mut e = ApiError::new(code, http, s.message());
        if s.code() == Code::InvalidArgument {
            e.field = field_of(s.message());
        }
        e
    }
}

/// The field an admin validation error names: `invalid FIELD: ...`.
pub fn field_of(message: &str) -> Option<String> {
    let (field, _) = message.strip_prefix("invalid ")?.split_once(':')?;
    let ok = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    ok.then(|| field.to_string())
}

/// The canonical name of a gRPC code and the HTTP status that means the same.
pub fn code_of(code: Code) -> (&'static str, StatusCode) {
    use StatusCode as H;
    match code {
        Code::Ok => ("OK", H::OK),
        Code::Cancelled => ("CANCELLED", H::from_u16(499).unwrap_or(H::BAD_REQUEST)),
        Code::Unknown => ("UNKNOWN", H::INTERNAL_SERVER_ERROR),
        Code::InvalidArgument => ("INVALID_ARGUMENT", H::BAD_REQUEST),
        Code::DeadlineExceeded => ("DEADLINE_EXCEEDED", H::GATEWAY_TIMEOUT),
        Code::NotFound => ("NOT_FOUND", H::NOT_FOUND),
        Code::AlreadyExists => ("ALREADY_EXISTS", H::CONFLICT),
        Code::PermissionDenied => ("PERMISSION_DENIED", H::FORBIDDEN),
        Code::ResourceExhausted => ("RESOURCE_EXHAUSTED", H::TOO_MANY_REQUESTS),
        Code::FailedPrecondition => ("FAILED_PRECONDITION", H::CONFLICT),
        Code::Aborted => ("ABORTED", H::CONFLICT),
        Code::OutOfRange => ("OUT_OF_RANGE", H::BAD_REQUEST),
        Code::Unimplemented => ("UNIMPLEMENTED", H::NOT_IMPLEMENTED),
        Code::Internal => ("INTERNAL", H::INTERNAL_SERVER_ERROR),
        Code::Unavailable => ("UNAVAILABLE", H::SERVICE_UNAVAILABLE),
        Code::DataLoss => ("DATA_LOSS", H::INTERNAL_SERVER_ERROR),
        Code::Unauthenticated => ("UNAUTHENTICATED", H::UNAUTHORIZED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_name_their_field() {
        assert_eq!(
            field_of("invalid spec: 'x' is not a spec").as_deref(),
            Some("spec")
        );
        assert_eq!(
            field_of("invalid definition.path: must start with /").as_deref(),
            Some("definition.path")
        );
        assert_eq!(
            field_of("invalid backends[2].weight: must be 1..=1000, got 0").as_deref(),
            Some("backends[2].weight")
        );
        assert_eq!(field_of("instance 'x' not found"), None);
        assert_eq!(field_of("invalid bearer token (unknown)"), None);
        let e = ApiError::from(Status::invalid_argument("invalid region: no such region"));
        assert_eq!(
            (e.code, e.http, e.field.as_deref()),
            ("INVALID_ARGUMENT", StatusCode::BAD_REQUEST, Some("region"))
        );
        let e = ApiError::from(Status::permission_denied("invalid x: y"));
        assert_eq!((e.http, e.field), (StatusCode::FORBIDDEN, None));
    }

    #[test]
    fn an_unknown_json_field_is_named() {
        let e = serde_json::from_str::<proto::admin::DescribeInstancesRequest>(r#"{"nme":"x"}"#)
            .unwrap_err();
        let e = ApiError::bad_json("DescribeInstancesRequest", &e);
        assert_eq!(e.field.as_deref(), Some("nme"));
        assert_eq!(e.http, StatusCode::BAD_REQUEST);
    }
}
