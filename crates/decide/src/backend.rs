//! Backends as the compiled routes hold them: a parsed address ([`Backend`]) and what the
//! server reaches it through, which this crate leaves to the layer that connects
//! ([`Upstreams`]): the decision needs to know where a request goes, not how.

use crate::options::DataplaneOptions;
use http::HeaderValue;
use http::Uri;
use http::uri::{Authority, PathAndQuery};
use std::time::Duration;

/// The connection pools of the backends, by authority, as the layer that talks to backends keeps
/// them. A compiled route holds its backend's pool ([`Upstreams::Pool`]), so that the request
/// path does no lookup; pools are created and released when routes are published.
pub trait Upstreams: Send + Sync + 'static {
    /// What a route holds to reach its backend.
    type Pool: Clone + Send + Sync + 'static;

    /// The pools of a data plane with these options (connect and idle timeouts, clock).
    fn new(options: &DataplaneOptions) -> Self;

    /// The pool of `authority`, shared by every route to it.
    fn pool(&self, authority: &Authority) -> Self::Pool;

    /// Forgets the pools of `authorities` that no route uses any more.
    fn release(&self, authorities: &[Authority]);

    /// Forgets every pool no route uses (a sweep for those a release could not drop).
    fn retain_used(&self);

    /// How many pools are kept.
    fn len(&self) -> usize;

    /// Whether no pool is kept.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// No connections: backends are parsed and checked, nothing connects. For deciding alone
/// (tests, benchmarks, fuzzing the router).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconnected;

impl Upstreams for Unconnected {
    type Pool = ();

    fn new(_: &DataplaneOptions) -> Self {
        Unconnected
    }

    fn pool(&self, _: &Authority) {}

    fn release(&self, _: &[Authority]) {}

    fn retain_used(&self) {}

    fn len(&self) -> usize {
        0
    }
}

/// The timeout used when a deployment says zero.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a backend address was refused at publish time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend '{0}' is not a valid http://HOST:PORT[/prefix] URL")]
    Invalid(String),
    #[error("backend '{0}': only http:// backends are supported")]
    Scheme(String),
}

/// A parsed backend address, `http://HOST:PORT[/prefix]`, with what the server reaches it
/// through: `P`, the pool of its connections (see [`Upstreams`]).
#[derive(Clone)]
pub struct Backend<P> {
    authority: Authority,
    /// The `Host` header sent to the backend: its authority.
    host: HeaderValue,
    /// Without trailing slash; empty for none.
    prefix: String,
    pool: P,
}

impl<P> Backend<P> {
    /// Parses `url`; `pool` gives the pool of its authority.
    pub fn parse(url: &str, pool: impl FnOnce(&Authority) -> P) -> Result<Self, BackendError> {
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
            pool: pool(&authority),
            authority,
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// The backend's authority: its pool's key.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header sent to the backend.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The pool of the backend's connections.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The request target sent to the backend (origin form) for a request path (after the
    /// group's base path) and query. `original` is the client's request URI: reused as it is
    /// when nothing changes.
    pub fn target(&self, original: Uri, base_len: usize) -> Option<Uri> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_targets() {
        let plain = Backend::parse("http://127.0.0.1:8081", |_| ()).unwrap();
        let prefixed = Backend::parse("http://127.0.0.1:8081/api", |_| ()).unwrap();
        let uri: Uri = "/base/p/1?a=b".parse().unwrap();
        assert_eq!(plain.target(uri.clone(), 0).unwrap(), "/base/p/1?a=b");
        assert_eq!(plain.target(uri.clone(), 5).unwrap(), "/p/1?a=b");
        assert_eq!(prefixed.target(uri, 5).unwrap(), "/api/p/1?a=b");
        let base: Uri = "/base?x".parse().unwrap();
        assert_eq!(plain.target(base, 5).unwrap(), "/?x");
        let absolute: Uri = "http://api.example.com/p".parse().unwrap();
        assert_eq!(plain.target(absolute, 0).unwrap(), "/p");
        assert_eq!(plain.host, "127.0.0.1:8081");
        assert_eq!(Backend::parse("http://svc:80", |_| ()).unwrap().host, "svc");
    }

    #[test]
    fn backend_urls() {
        let b = Backend::parse("http://127.0.0.1:8081/api/", |_| ()).unwrap();
        assert_eq!(
            b.uri("/p/1", Some("a=b")).unwrap().to_string(),
            "http://127.0.0.1:8081/api/p/1?a=b"
        );
        let b = Backend::parse("http://svc:80", |_| ()).unwrap();
        assert_eq!(b.uri("/", None).unwrap().to_string(), "http://svc:80/");
        assert!(matches!(
            Backend::parse("https://x", |_| ()),
            Err(BackendError::Scheme(_))
        ));
        assert!(Backend::parse("not a url", |_| ()).is_err());
        assert!(Backend::parse("/relative", |_| ()).is_err());
        assert!(Backend::parse("http://x/?q=1", |_| ()).is_err());
    }
}
