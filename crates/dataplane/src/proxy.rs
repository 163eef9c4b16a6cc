//! Forwarding an admitted request to its backend over a pooled connection, and back.

use crate::body::{BodyTooLarge, Checkout, LimitedBody, RequestBody, ResponseBody};
use crate::clock::Nanos;
use crate::direct::{self, ExchangeError};
use crate::error::{GatewayError, X_CA_REQUEST_ID};
use crate::pool::{BackendPools, HostPool};
use crate::request_id::RequestId;
use crate::server::ConnInfo;
use http::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};
use std::sync::Arc;
use std::time::Duration;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The timeout used when a deployment says zero.
pub(crate) const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a backend address was refused at publish time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend '{0}' is not a valid http://HOST:PORT[/prefix] URL")]
    Invalid(String),
    #[error("backend '{0}': only http:// backends are supported")]
    Scheme(String),
}

/// A parsed backend address, `http://HOST:PORT[/prefix]`, with the pool of its connections.
#[derive(Clone)]
pub(crate) struct Backend {
    authority: Authority,
    /// The `Host` header sent to the backend: its authority.
    host: HeaderValue,
    /// Without trailing slash; empty for none.
    prefix: String,
    pool: Arc<HostPool>,
}

impl Backend {
    pub(crate) fn parse(url: &str, pools: &BackendPools) -> Result<Backend, BackendError> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| BackendError::Invalid(url.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(BackendError::Scheme(url.to_string())),
            None => return Err(BackendError::Invalid(url.to_string())),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| BackendError::Invalid(url.to_string()))?;
        if uri.query().is_some() {
            return Err(BackendError::Invalid(url.to_string()));
        }
        // As HTTP clients do: the default port is left out.
        let host = match authority.port_u16() {
            Some(80) => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .map_err(|_| BackendError::Invalid(url.to_string()))?;
        Ok(Backend {
            pool: pools.get(&authority),
            authority,
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The request target sent to the backend (origin form) for a request path (after the
    /// group's base path) and query. `original` is the client's request URI: reused as it is
    /// when nothing changes.
    fn target(&self, original: Uri, base_len: usize) -> Option<Uri> {
        let path = original.path().get(base_len..).unwrap_or("");
        if self.prefix.is_empty()
            && base_len == 0
            && original.scheme().is_none()
            && original.authority().is_none()
            && path.starts_with('/')
        {
            return Some(original);
        }
        let path = if path.is_empty() { "/" } else { path };
        let pq = self.path_and_query(path, original.query())?;
        Some(Uri::from(pq))
    }

    fn path_and_query(&self, path: &str, query: Option<&str>) -> Option<PathAndQuery> {
        let mut pq = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.prefix);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).ok()
    }

    /// The full backend URL for a request path and query.
    #[cfg(test)]
    fn uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(self.path_and_query(path, query)?)
            .build()
            .ok()
    }
}

/// Removes the hop-by-hop headers (RFC 9110 7.6.1): `Connection` and the headers it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const FIXED: [HeaderName; 6] = [
        CONNECTION,
        KEEP_ALIVE,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ];
    const PROXY: u8 = 1 << 6;
    // One pass over the names instead of a lookup per name; most messages have none of them,
    // or only `Connection: keep-alive`.
    let mut found = 0u8;
    for k in headers.keys() {
        if let Some(i) = FIXED.iter().position(|f| f == k) {
            found |= 1 << i;
        } else if k.as_str().starts_with("proxy-") {
            found |= PROXY;
        }
    }
    if found == 0 {
        return;
    }
    let names_others = found & 1 != 0
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| !t.trim().eq_ignore_ascii_case("keep-alive"))
            })
        });
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in FIXED.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if found & PROXY != 0 {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
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

/// Whether the error chain holds our body-limit error.
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// What went wrong talking to the backend.
#[derive(Debug)]
pub(crate) enum ForwardError {
    Timeout(Duration),
    Broken(&'static str),
    BodyTooLarge,
}

/// Sends the request to `backend` and returns its response head (the body streams on).
/// `base_len` is the length of the group's base path at the start of the request path; `now`
/// is the request's arrival on the data plane's clock.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    backend: &Backend,
    timeout: Duration,
    req: Request<RequestBody>,
    base_len: usize,
    conn: &ConnInfo,
    request_id: RequestId,
    max_body: u64,
    now: Nanos,
) -> Result<Response<ResponseBody>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    // The host the request was routed by: the URI's authority (HTTP/2, absolute form) wins.
    let routed_host = parts.headers.remove(HOST);
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok().or(routed_host),
        None => routed_host,
    };
    let uri = backend
        .target(std::mem::take(&mut parts.uri), base_len)
        .ok_or(ForwardError::Broken("the request path cannot be forwarded"))?;
    strip_hop_by_hop(&mut parts.headers);
    // Room for what is added below, in one step.
    parts.headers.reserve(5);
    let scheme = if conn.tls { "https" } else { "http" };
    set_forwarded(&mut parts.headers, &conn.peer_ip, scheme, host);
    parts.headers.insert(HOST, backend.host.clone());
    let timeout = if timeout.is_zero() {
        DEFAULT_BACKEND_TIMEOUT
    } else {
        timeout
    };
    // Backends are spoken to in HTTP/1.1 whatever the client used.
    let client_version = parts.version;
    let body = match body {
        RequestBody::Incoming(body) if !body.is_end_stream() => Some(body),
        _ => None,
    };
    let Some(body) = body else {
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let exchange = direct::exchange(
            &backend.pool,
            &parts.method,
            target,
            &parts.headers,
            request_id,
            now,
        );
        let mut response = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(ForwardError::Timeout(timeout)),
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend.authority, error = %e, "backend exchange failed");
                return Err(ForwardError::Broken(match e {
                    ExchangeError::Connect => "could not connect to the backend",
                    ExchangeError::Broken => {
                        "the backend closed the connection or sent an invalid response"
                    }
                }));
            }
            Ok(Ok(response)) => response,
        };
        *response.version_mut() = client_version;
        strip_hop_by_hop(response.headers_mut());
        response
            .headers_mut()
            .insert(X_CA_REQUEST_ID, request_id.header_value());
        return Ok(response);
    };
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
    // The client is answered in its own version, not the backend's (an HTTP/1.0 backend must
    // not turn the client's HTTP/1.1 keep-alive connection into HTTP/1.0).
    parts.version = client_version;
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_CA_REQUEST_ID, request_id.header_value());
    let conn = Checkout {
        tx,
        pool: backend.pool.clone(),
    };
    Ok(Response::from_parts(
        parts,
        ResponseBody::stream(body, Some(conn)),
    ))
}

/// Sends `req` over an idle connection of the backend's pool, or a new one. A request that a
/// pooled connection could not take (it closed meanwhile) goes again over another.
async fn send(
    backend: &Backend,
    mut req: Request<LimitedBody>,
    now: Nanos,
) -> Result<(Response<Incoming>, crate::pool::Sender), ForwardError> {
    let pool = &backend.pool;
    loop {
        let (mut tx, pooled) = match pool.checkout(now) {
            Some(tx) => (tx, true),
            None => match pool.connect().await {
                Ok(tx) => (tx, false),
                Err(e) => {
                    tracing::debug!(backend = %backend.authority, error = %e, "backend connect failed");
                    return Err(ForwardError::Broken("could not connect to the backend"));
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
                if body_too_large(&e) {
                    return Err(ForwardError::BodyTooLarge);
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
    pub(crate) fn into_gateway_error(self, max_body: u64) -> GatewayError {
        match self {
            ForwardError::Timeout(d) => GatewayError::GatewayTimeout(d),
            ForwardError::Broken(why) => GatewayError::BadGateway(why),
            ForwardError::BodyTooLarge => GatewayError::BodyTooLarge { limit: max_body },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonotonicClock;
    use crate::pool::PoolOptions;
    use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};

    fn pools() -> BackendPools {
        BackendPools::new(PoolOptions {
            clock: Arc::new(MonotonicClock::new()),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
        })
    }

    #[test]
    fn backend_targets() {
        let pools = pools();
        let plain = Backend::parse("http://127.0.0.1:8081", &pools).unwrap();
        let prefixed = Backend::parse("http://127.0.0.1:8081/api", &pools).unwrap();
        let uri: Uri = "/base/p/1?a=b".parse().unwrap();
        assert_eq!(plain.target(uri.clone(), 0).unwrap(), "/base/p/1?a=b");
        assert_eq!(plain.target(uri.clone(), 5).unwrap(), "/p/1?a=b");
        assert_eq!(prefixed.target(uri, 5).unwrap(), "/api/p/1?a=b");
        let base: Uri = "/base?x".parse().unwrap();
        assert_eq!(plain.target(base, 5).unwrap(), "/?x");
        let absolute: Uri = "http://api.example.com/p".parse().unwrap();
        assert_eq!(plain.target(absolute, 0).unwrap(), "/p");
        assert_eq!(plain.host, "127.0.0.1:8081");
        assert_eq!(Backend::parse("http://svc:80", &pools).unwrap().host, "svc");
    }

    #[test]
    fn backend_urls() {
        let pools = pools();
        let b = Backend::parse("http://127.0.0.1:8081/api/", &pools).unwrap();
        assert_eq!(
            b.uri("/p/1", Some("a=b")).unwrap().to_string(),
            "http://127.0.0.1:8081/api/p/1?a=b"
        );
        let b = Backend::parse("http://svc:80", &pools).unwrap();
        assert_eq!(b.uri("/", None).unwrap().to_string(), "http://svc:80/");
        assert!(matches!(
            Backend::parse("https://x", &pools),
            Err(BackendError::Scheme(_))
        ));
        assert!(Backend::parse("not a url", &pools).is_err());
        assert!(Backend::parse("/relative", &pools).is_err());
        assert!(Backend::parse("http://x/?q=1", &pools).is_err());
    }

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
}
