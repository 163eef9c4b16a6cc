//! The responses the gateway makes itself. Every one is JSON `{"code", "message",
//! "request_id"}` with `X-Ca-Request-Id`, `X-Ca-Error-Code` and `X-Ca-Error-Message` headers,
//! so clients can tell the gateway's own answers from their backends'.

use crate::body::ResponseBody;
use bytes::Bytes;
use decide::GatewayError;
use decide::wire::{THROTTLED_MESSAGE, X_CA_ERROR_CODE, X_CA_ERROR_MESSAGE, X_CA_REQUEST_ID};
use http::Response;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

/// The JSON response for `error`.
pub fn error_response(error: &GatewayError, request_id: &HeaderValue) -> Response<ResponseBody> {
    let message = error.to_string();
    let rid = request_id.to_str().unwrap_or("");
    let body = serde_json::json!({
        "code": error.code(),
        "message": message,
        "request_id": rid,
    });
    let body = Bytes::from(body.to_string());
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(X_CA_REQUEST_ID, request_id.clone());
    headers.insert(X_CA_ERROR_CODE, HeaderValue::from_static(error.code()));
    // The cloud's clients match the throttling message exactly, so the header carries it
    // verbatim; the body names the instance.
    let header_text = match error {
        GatewayError::Throttled { .. } => THROTTLED_MESSAGE.to_string(),
        _ => message.clone(),
    };
    // Names come from configuration; one that is not plain ASCII (which many clients mangle
    // in headers) leaves the code in the header, the full message in the body.
    let header_message = Some(&header_text)
        .filter(|m| m.is_ascii())
        .and_then(|m| HeaderValue::from_str(m).ok())
        .unwrap_or_else(|| HeaderValue::from_static(error.code()));
    headers.insert(X_CA_ERROR_MESSAGE, header_message);
    if let Some(secs) = error.retry_after_secs() {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
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
        let r = error_response(&e, &HeaderValue::from_static("rid-1"));
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
        let r = error_response(&e, &HeaderValue::from_static("rid"));
        assert_eq!(r.headers()[X_CA_ERROR_MESSAGE], "AccountSuspended");
        assert_eq!(r.status(), 403);
    }
}
