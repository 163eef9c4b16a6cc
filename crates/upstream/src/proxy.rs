//! Forwarding an admitted request to its backend over a pooled connection, and back.

use crate::body::{Checkout, RequestBody, ResponseBody};
use crate::direct::{self, ExchangeError};
use crate::limited::{BodyTooLarge, ClientBodyError, LimitedBody};
use crate::pool::{HostPool, Sender};
use crate::upgrade;
use decide::request_id::RequestId;
use decide::wire::{
    X_CA_REQUEST_ID, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, connection_options,
    is_hop_by_hop, put_header, strip_hop_by_hop,
};
use decide::{DEFAULT_BACKEND_TIMEOUT, GatewayError, Nanos};
use http::header::{CONNECTION, HOST, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, Version};
use hyper::body::{Body, Incoming};
use std::sync::Arc;
use std::time::Duration;

/// What a request gains on its way to the backend.
pub(crate) struct Forwarding<'a> {
    /// The backend's `Host`.
    pub(crate) backend_host: &'a HeaderValue,
    /// The client's address, appended to `X-Forwarded-For`.
    pub(crate) client_ip: &'a HeaderValue,
    /// This hop's scheme for `X-Forwarded-Proto`: `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The host the client asked for when its URI carried one (HTTP/2, absolute form); else
    /// its `Host` header is.
    pub(crate) uri_host: Option<&'a str>,
    pub(crate) request_id: RequestId,
}

/// Writes the HTTP/1.1 head of a bodiless request to the backend: the client's headers less
/// the hop-by-hop ones, those `Connection` names and those this hop sets, then `Host`,
/// `X-Forwarded-For`, `-Proto`, `-Host` and `X-Ca-Request-Id`.
///
/// The rules are [`strip_hop_by_hop`]'s and [`set_forwarded`]'s, applied while writing instead
/// of by editing the map: a handful of hashed lookups and inserts less per request.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    fwd: &Forwarding<'_>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let start = out.len();
    let mut seen = put_end_to_end(out, headers, &[]);
    if seen.connection_options {
        // Rare: `Connection` names headers of this hop. Write the lines again without them.
        let named: Vec<&[u8]> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| connection_options(v.as_bytes()))
            .collect();
        out.truncate(start);
        seen = put_end_to_end(out, headers, &named);
    }
    put_header(out, b"host", fwd.backend_host.as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    if seen.forwarded_for {
        for v in headers.get_all(X_FORWARDED_FOR) {
            if v.to_str().is_ok() {
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(fwd.client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    put_header(out, b"x-forwarded-proto", fwd.scheme.as_bytes());
    let host = fwd
        .uri_host
        .map(str::as_bytes)
        .or(seen.host.map(HeaderValue::as_bytes));
    if let Some(host) = host {
        put_header(out, b"x-forwarded-host", host);
    }
    put_header(
        out,
        X_CA_REQUEST_ID.as_str().as_bytes(),
        fwd.request_id.as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
}

/// What [`put_end_to_end`] passed over that the rest of the head depends on.
#[derive(Default)]
struct Seen<'h> {
    /// The client's (first) `Host`.
    host: Option<&'h HeaderValue>,
    /// An `X-Forwarded-For` to append to.
    forwarded_for: bool,
    /// A `Connection` that names other headers.
    connection_options: bool,
}

/// Writes the headers that go on to the backend as they are; `named` are those `Connection`
/// lists (empty until it is known to list any).
fn put_end_to_end<'h>(out: &mut Vec<u8>, headers: &'h HeaderMap, named: &[&[u8]]) -> Seen<'h> {
    let mut seen = Seen::default();
    for (name, value) in headers {
        let n = name.as_str().as_bytes();
        if name == HOST {
            seen.host.get_or_insert(value);
        } else if !named.is_empty() && named.iter().any(|t| n.eq_ignore_ascii_case(t)) {
            // Named by `Connection`: it stays on this hop.
        } else if name == X_FORWARDED_FOR {
            seen.forwarded_for = true;
        } else if is_hop_by_hop(n) {
            seen.connection_options |=
                name == CONNECTION && connection_options(value.as_bytes()).next().is_some();
        } else if name != X_FORWARDED_PROTO && name != X_FORWARDED_HOST && name != X_CA_REQUEST_ID {
            put_header(out, n, value.as_bytes());
        }
    }
    seen
}

/// Sets the `X-Forwarded-*` headers: the client's address appended to `X-Forwarded-For`, this
/// hop's scheme (`http` or `https`; the gateway is the edge, so a client's claim is
/// overwritten), and the host the client asked for.
/// `client_ip` is the client's address as a header value.
fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    scheme: &'static str,
    host: Option<HeaderValue>,
) {
    let chain: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if chain.is_empty() {
        headers.insert(X_FORWARDED_FOR, client_ip.clone());
    } else {
        let ip = client_ip.to_str().unwrap_or("");
        let value = format!("{}, {ip}", chain.join(", "));
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Whether the error chain holds an error of type `E` (our body errors, under hyper's).
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// What went wrong talking to the backend.
#[derive(Debug)]
pub enum ForwardError {
    /// The backend did not answer within this time.
    Timeout(Duration),
    /// No connection to the backend could be made (refused, or not within the connect
    /// timeout): nothing of the request was sent, so another backend may take it.
    Connect,
    /// The backend broke off or answered nonsense; what the client's 502 says.
    Broken(&'static str),
    /// The client's streamed body grew past the limit.
    BodyTooLarge,
    /// The client's body was malformed (bad chunked framing) or cut off: a 400, and not a
    /// backend failure. The backend connection that carried part of it is dropped.
    ClientBody,
}

/// A backend as the compiled routes hold it: its address and its pool.
pub type Backend = decide::Backend<Arc<HostPool>>;

/// The client a request comes from, as forwarding tells the backend.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The client's IP address as a header value (for `X-Forwarded-For`).
    pub ip: &'a HeaderValue,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// Sends the request to `backend` and returns its response head (the body streams on).
/// `base_len` is the length of the group's base path at the start of the request path; `now`
/// is the request's arrival on the data plane's clock.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    backend: &Backend,
    timeout: Duration,
    req: Request<RequestBody>,
    base_len: usize,
    client: Client<'_>,
    request_id: RequestId,
    max_body: u64,
    now: Nanos,
) -> Result<Response<ResponseBody>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    // The host the client asked for, when its URI says (HTTP/2, absolute form).
    let authority = parts.uri.authority().cloned();
    let uri = backend
        .target(std::mem::take(&mut parts.uri), base_len)
        .ok_or(ForwardError::Broken("the request path cannot be forwarded"))?;
    let timeout = if timeout.is_zero() {
        DEFAULT_BACKEND_TIMEOUT
    } else {
        timeout
    };
    let scheme = if client.tls { "https" } else { "http" };
    let body = match body {
        RequestBody::Incoming(body) if !body.is_end_stream() => Some(body),
        _ => None,
    };
    let Some(body) = body else {
        let forwarding = Forwarding {
            backend_host: backend.host(),
            client_ip: client.ip,
            scheme,
            uri_host: authority.as_ref().map(Authority::as_str),
            request_id,
        };
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let encode = |out: &mut Vec<u8>| {
            encode_request_head(out, &parts.method, target, &parts.headers, &forwarding)
        };
        // An upgrade (WebSocket) keeps `Connection: upgrade` and `Upgrade`, and gets a
        // connection of its own (see `crate::upgrade`).
        let exchanged = match upgrade::requested(parts.version, &parts.headers) {
            None => {
                let exchange =
                    direct::exchange(backend.pool(), &parts.method, encode, request_id, now);
                tokio::time::timeout(timeout, exchange).await
            }
            Some(protocols) => {
                let encode = |out: &mut Vec<u8>| {
                    encode(out);
                    upgrade::ask(out, protocols);
                };
                let exchange =
                    upgrade::exchange(backend.pool(), &parts.method, encode, request_id, now);
                tokio::time::timeout(timeout, exchange).await
            }
        };
        let mut response = match exchanged {
            Err(_) => return Err(ForwardError::Timeout(timeout)),
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend.authority(), error = %e, "backend exchange failed");
                return Err(match e {
                    ExchangeError::Connect => ForwardError::Connect,
                    ExchangeError::Broken => ForwardError::Broken(
                        "the backend closed the connection or sent an invalid response",
                    ),
                });
            }
            Ok(Ok(response)) => response.map(ResponseBody::direct),
        };
        // The client is answered in its own version, whatever the backend's.
        *response.version_mut() = parts.version;
        return Ok(response);
    };
    // A request with a body goes through hyper's client, which takes its head as a map.
    let routed_host = parts.headers.remove(HOST);
    let host = match &authority {
        Some(a) => HeaderValue::from_str(a.as_str()).ok().or(routed_host),
        None => routed_host,
    };
    strip_hop_by_hop(&mut parts.headers);
    // Room for what is added below, in one step.
    parts.headers.reserve(5);
    set_forwarded(&mut parts.headers, client.ip, scheme, host);
    parts.headers.insert(HOST, backend.host().clone());
    // Backends are spoken to in HTTP/1.1 whatever the client used.
    let client_version = parts.version;
    parts
        .headers
        .insert(X_CA_REQUEST_ID, request_id.header_value());
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, LimitedBody::new(body, max_body));

    let (response, tx) = match tokio::time::timeout(timeout, send(backend, upstream, now)).await {
        Err(_) => return Err(ForwardError::Timeout(timeout)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(sent)) => sent,
    };
    let (mut parts, body) = response.into_parts();
    // Backend traffic: the head as read, its size as HTTP/1 wrote it (hyper keeps no raw head).
    let head_bytes = decide::wire::http1_head_len(parts.status, &parts.headers);
    // The client is answered in its own version, not the backend's (an HTTP/1.0 backend must
    // not turn the client's HTTP/1.1 keep-alive connection into HTTP/1.0).
    parts.version = client_version;
    strip_hop_by_hop(&mut parts.headers);
    // As `direct` does for the lean exchange: no length on a status that has no body, and
    // identical length lines as one (hyper's client has refused different ones already).
    let status = parts.status;
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    } else if decide::head::merge_content_length(&mut parts.headers).is_err() {
        return Err(ForwardError::Broken(
            "the backend sent Content-Length lines that disagree",
        ));
    }
    parts
        .headers
        .insert(X_CA_REQUEST_ID, request_id.header_value());
    let conn = Checkout {
        tx,
        pool: backend.pool().clone(),
    };
    Ok(Response::from_parts(
        parts,
        ResponseBody::stream(body, Some(conn), head_bytes),
    ))
}

/// Sends `req` over an idle connection of the backend's pool, or a new one. A request that a
/// pooled connection could not take (it closed meanwhile) goes again over another.
async fn send(
    backend: &Backend,
    mut req: Request<LimitedBody>,
    now: Nanos,
) -> Result<(Response<Incoming>, Sender), ForwardError> {
    let pool = backend.pool();
    loop {
        let (mut tx, pooled) = match pool.checkout(now) {
            Some(tx) => (tx, true),
            None => match pool.connect().await {
                Ok(tx) => (tx, false),
                Err(e) => {
                    tracing::debug!(backend = %backend.authority(), error = %e, "backend connect failed");
                    return Err(ForwardError::Connect);
                }
            },
        };
        match tx.try_send_request(req).await {
            Ok(response) => return Ok((response, tx)),
            Err(mut e) => {
                if pooled && let Some(unsent) = e.take_message() {
                    req = unsent;
                    continue;
                }
                let e = e.into_error();
                // The backend connection (`tx`) is dropped here, not pooled: it carried part of
                // a request that never ended.
                if caused_by::<BodyTooLarge>(&e) {
                    return Err(ForwardError::BodyTooLarge);
                }
                if caused_by::<ClientBodyError>(&e) {
                    return Err(ForwardError::ClientBody);
                }
                tracing::debug!(error = %e, "backend request failed");
                return Err(ForwardError::Broken(
                    "the backend closed the connection or sent an invalid response",
                ));
            }
        }
    }
}

impl ForwardError {
    /// The answer the client gets; `max_body` is the server's body limit.
    pub fn into_gateway_error(self, max_body: u64) -> GatewayError {
        match self {
            ForwardError::Timeout(d) => GatewayError::GatewayTimeout(d),
            ForwardError::Connect => GatewayError::BadGateway("could not connect to the backend"),
            ForwardError::Broken(why) => GatewayError::BadGateway(why),
            ForwardError::BodyTooLarge => GatewayError::BodyTooLarge { limit: max_body },
            ForwardError::ClientBody => GatewayError::BadRequest(
                "the request body is malformed (invalid chunked framing) or was cut off",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{
        HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    };

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRAILER, HeaderValue::from_static("x"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");

        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("10.0.0.1"),
            "http",
            Some(HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
    }

    fn encoded(headers: &[(&str, &str)], uri_host: Option<&str>) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let fwd = Forwarding {
            backend_host: &HeaderValue::from_static("backend:8081"),
            client_ip: &HeaderValue::from_static("10.0.0.1"),
            scheme: "https",
            uri_host,
            request_id: decide::request_id::RequestIds::new(7).next(),
        };
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::GET, "/p?q=1", &map, &fwd);
        let text = String::from_utf8(out).unwrap();
        let id = std::str::from_utf8(fwd.request_id.as_bytes()).unwrap();
        text.replace(id, "ID")
    }

    #[test]
    fn request_heads_are_encoded_with_the_forwarding_rules() {
        // The client's end-to-end headers go on; this hop's are replaced.
        assert_eq!(
            encoded(
                &[
                    ("host", "api.example.com"),
                    ("accept", "*/*"),
                    ("connection", "keep-alive"),
                    ("x-forwarded-proto", "ftp"),
                    ("x-forwarded-host", "spoofed"),
                    ("x-ca-request-id", "client-chosen"),
                    ("proxy-authorization", "Basic x"),
                    ("te", "trailers"),
                ],
                None
            ),
            "GET /p?q=1 HTTP/1.1\r\naccept: */*\r\nhost: backend:8081\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: api.example.com\r\nx-ca-request-id: ID\r\n\r\n"
        );
        // An existing chain is appended to; the URI's host wins over `Host`.
        assert_eq!(
            encoded(
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "2.2.2.2"),
                    ("host", "ignored"),
                ],
                Some("h2.example.com")
            ),
            "GET /p?q=1 HTTP/1.1\r\nhost: backend:8081\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: h2.example.com\r\nx-ca-request-id: ID\r\n\r\n"
        );
        // Headers `Connection` names stay on this hop, wherever they come in the head.
        assert_eq!(
            encoded(
                &[
                    ("x-secret", "1"),
                    ("connection", "close, X-Secret"),
                    ("x-keep", "1"),
                    ("x-other", "1"),
                    ("connection", "x-other"),
                ],
                None
            ),
            "GET /p?q=1 HTTP/1.1\r\nx-keep: 1\r\nhost: backend:8081\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-ca-request-id: ID\r\n\r\n"
        );
    }

    #[test]
    fn encoding_matches_editing_the_map() {
        // The two ways of forwarding a head (written directly, or edited in a map for hyper's
        // client) pass on the same headers.
        let cases: [&[(&str, &str)]; 3] = [
            &[
                ("host", "h"),
                ("accept", "*/*"),
                ("x-forwarded-for", "1.1.1.1"),
            ],
            &[
                ("connection", "x-a"),
                ("x-a", "1"),
                ("keep-alive", "5"),
                ("x-b", "2"),
            ],
            &[
                ("upgrade", "ws"),
                ("proxy-x", "1"),
                ("x-b", "2"),
                ("x-ca-request-id", "c"),
            ],
        ];
        for headers in cases {
            let text = encoded(headers, None);
            let mut direct: Vec<String> = text
                .lines()
                .skip(1)
                .filter(|l| !l.is_empty() && !l.starts_with("x-ca-request-id"))
                .map(str::to_string)
                .collect();
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let host = map.remove(HOST);
            strip_hop_by_hop(&mut map);
            set_forwarded(
                &mut map,
                &HeaderValue::from_static("10.0.0.1"),
                "https",
                host,
            );
            map.insert(HOST, HeaderValue::from_static("backend:8081"));
            map.remove(X_CA_REQUEST_ID);
            let mut edited: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            direct.sort();
            edited.sort();
            assert_eq!(direct, edited, "{headers:?}");
        }
    }
}
