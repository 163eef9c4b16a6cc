//! Forwarding an admitted request to its backend over the pooled client, and back.

use crate::body::{BodyTooLarge, LimitedBody, ResponseBody};
use crate::error::{GatewayError, X_CA_REQUEST_ID};
use http::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) type BackendClient = Client<HttpConnector, LimitedBody>;

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

/// A parsed backend address: `http://HOST:PORT[/prefix]`.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    scheme: Scheme,
    authority: Authority,
    /// Without trailing slash; empty for none.
    prefix: String,
}

impl Backend {
    pub(crate) fn parse(url: &str) -> Result<Backend, BackendError> {
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
        Ok(Backend {
            scheme: Scheme::HTTP,
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The backend URI for a request path (after the group's base path) and query.
    pub(crate) fn uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut pq = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.prefix);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }
}

/// Removes the hop-by-hop headers (RFC 9110 7.6.1): `Connection` and the headers it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
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
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
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
/// hop's scheme (`http`; the gateway is the edge, so a client's claim is overwritten), and the
/// host the client asked for.
fn set_forwarded(headers: &mut HeaderMap, client: SocketAddr, host: Option<HeaderValue>) {
    let ip = client.ip().to_string();
    let chain: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if chain.is_empty() {
        ip
    } else {
        format!("{}, {ip}", chain.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
/// `base_len` is the length of the group's base path at the start of the request path.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    client: &BackendClient,
    backend: &Backend,
    timeout: Duration,
    req: Request<Incoming>,
    base_len: usize,
    client_addr: SocketAddr,
    request_id: &HeaderValue,
    max_body: u64,
) -> Result<Response<ResponseBody>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().get(base_len..).unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    let uri = backend
        .uri(path, parts.uri.query())
        .ok_or(ForwardError::Broken("the request path cannot be forwarded"))?;
    // The host the request was routed by: the URI's authority (HTTP/2, absolute form) wins.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(HOST).cloned());
    strip_hop_by_hop(&mut parts.headers);
    // The client sets Host from the backend URI.
    parts.headers.remove(HOST);
    set_forwarded(&mut parts.headers, client_addr, host);
    parts.headers.insert(X_CA_REQUEST_ID, request_id.clone());
    parts.uri = uri;
    // Backends are spoken to in HTTP/1.1 whatever the client used.
    let client_version = parts.version;
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, LimitedBody::new(body, max_body));

    let timeout = if timeout.is_zero() {
        DEFAULT_BACKEND_TIMEOUT
    } else {
        timeout
    };
    let response = match tokio::time::timeout(timeout, client.request(upstream)).await {
        Err(_) => return Err(ForwardError::Timeout(timeout)),
        Ok(Err(e)) => {
            if body_too_large(&e) {
                return Err(ForwardError::BodyTooLarge);
            }
            tracing::debug!(error = %e, "backend request failed");
            return Err(ForwardError::Broken(if e.is_connect() {
                "could not connect to the backend"
            } else {
                "the backend closed the connection or sent an invalid response"
            }));
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    // The client is answered in its own version, not the backend's (an HTTP/1.0 backend must
    // not turn the client's HTTP/1.1 keep-alive connection into HTTP/1.0).
    parts.version = client_version;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(X_CA_REQUEST_ID, request_id.clone());
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
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

    #[test]
    fn backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8081/api/").unwrap();
        assert_eq!(
            b.uri("/p/1", Some("a=b")).unwrap().to_string(),
            "http://127.0.0.1:8081/api/p/1?a=b"
        );
        let b = Backend::parse("http://svc:80").unwrap();
        assert_eq!(b.uri("/", None).unwrap().to_string(), "http://svc:80/");
        assert!(matches!(
            Backend::parse("https://x"),
            Err(BackendError::Scheme(_))
        ));
        assert!(Backend::parse("not a url").is_err());
        assert!(Backend::parse("/relative").is_err());
        assert!(Backend::parse("http://x/?q=1").is_err());
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
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "10.0.0.1:5000".parse().unwrap(),
            Some(HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
    }
}
