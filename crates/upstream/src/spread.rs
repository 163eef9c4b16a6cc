//! Forwarding to one of an API's backends ([`decide::Spread`]): the backend picked by weight
//! and health, how the request went reported back to passive health, and one retry on another
//! backend for an idempotent request that could not be connected.
//!
//! A retry is safe only when the first backend saw nothing: [`ForwardError::Connect`] means no
//! connection was made, so no byte of the request left. Only requests whose method is
//! idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and that have no body are retried: the
//! head is kept for the second attempt, a streamed body is not (it is read from the client as
//! it is sent). A retried call is one call: the client, usage and the route's counters see one
//! request; the per-backend counters see it on both backends.

use crate::body::{RequestBody, ResponseBody};
use crate::pool::HostPool;
use crate::proxy::{Client, ForwardError, forward};
use decide::request_id::RequestId;
use decide::{Nanos, Outcome};
use http::{Request, Response};
use std::sync::Arc;
use std::time::Duration;

/// An API's backends as the compiled routes hold them.
pub type Spread = decide::Spread<Arc<HostPool>>;

/// What [`forward_spread`] did: the answer, and which backend gave it (the one tried last).
pub struct Spreaded {
    pub result: Result<Response<ResponseBody>, ForwardError>,
    /// The index in the spread of the backend that answered or failed last; `None` if there
    /// was none to try.
    pub backend: Option<usize>,
    /// Whether the request was sent again to another backend.
    pub retried: bool,
}

/// Sends `req` to a backend of `spread` (see [`forward`] for the other arguments), and to a
/// second one if the first could not be connected and the request may be sent again.
#[allow(clippy::too_many_arguments)]
pub async fn forward_spread(
    spread: &Spread,
    timeout: Duration,
    req: Request<RequestBody>,
    base_len: usize,
    client: Client<'_>,
    request_id: RequestId,
    max_body: u64,
    now: Nanos,
) -> Spreaded {
    let Some(first) = spread.pick(now, None) else {
        return Spreaded {
            result: Err(ForwardError::Connect),
            backend: None,
            retried: false,
        };
    };
    // The head, for a second attempt: only when one could be made.
    let again = (spread.len() > 1 && retriable(&req)).then(|| head_of(&req));
    let send = |i: usize, req| {
        forward(
            spread.backend(i),
            timeout,
            req,
            base_len,
            client,
            request_id,
            max_body,
            now,
        )
    };
    let result = send(first, req).await;
    let clock = spread.backend(first).pool();
    report(spread, first, &result, clock);
    let retry = match (&result, again) {
        (Err(ForwardError::Connect), Some(req)) => {
            spread.pick(clock.now(), Some(first)).map(|i| (i, req))
        }
        _ => None,
    };
    let Some((second, req)) = retry else {
        return Spreaded {
            result,
            backend: Some(first),
            retried: false,
        };
    };
    spread.count_retry(second);
    let result = send(second, req).await;
    report(spread, second, &result, spread.backend(second).pool());
    Spreaded {
        result,
        backend: Some(second),
        retried: true,
    }
}

/// Passive health's view of how the request went: a 5xx or a backend-side error is a failure;
/// the client's own errors (a body too large or malformed) say nothing about the backend.
fn report(
    spread: &Spread,
    i: usize,
    result: &Result<Response<ResponseBody>, ForwardError>,
    pool: &HostPool,
) {
    let outcome = match result {
        Ok(r) if r.status().is_server_error() => Outcome::Failed,
        Ok(_) => Outcome::Answered,
        Err(ForwardError::BodyTooLarge | ForwardError::ClientBody) => return,
        Err(ForwardError::Connect | ForwardError::Broken(_) | ForwardError::Timeout(_)) => {
            Outcome::Failed
        }
    };
    spread.report(i, outcome, pool.now());
}

/// Whether a request may be sent to a second backend after the first could not be connected:
/// an idempotent method (RFC 9110 9.2.2; CONNECT never) and no body to send.
fn retriable(req: &Request<RequestBody>) -> bool {
    req.method().is_idempotent()
        && match req.body() {
            RequestBody::Empty => true,
            RequestBody::Incoming(body) => hyper::body::Body::is_end_stream(body),
        }
}

/// A copy of a bodiless request's head.
fn head_of(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn only_idempotent_bodiless_requests_are_retried() {
        let req = |m: Method| {
            let mut r = Request::new(RequestBody::Empty);
            *r.method_mut() = m;
            r
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(retriable(&req(m)));
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!retriable(&req(m)));
        }
    }
}
