//! Resolving a request (host, stage, method, path) to a deployed API.
//!
//! Groups are bucketed by (host or any host, base path). A request is tried against the buckets
//! of its host first, then against the any-host buckets (so a host-specific group wins where both
//! would match), each list longest base path first; a bucket matches when the path is its base
//! path or lies under it, and its per-stage `matchit` router is then asked for the rest of the
//! path. Groups sharing a (host, base path) share one bucket.
//!
//! The router is generic over the value it resolves to (`T`, the compiled API) and over its
//! bucket owner (`O`, the group, used to bill requests that match a group but none of its APIs),
//! which keeps it testable without the rest of the data plane.

use crate::config::Stage;
use http::Method;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: host names are short, and the table's keys come from configuration (a client can
/// only look keys up, not add colliding ones), so SipHash's flooding resistance buys nothing
/// here and costs ~20 ns per request.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type HostMap<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

/// Why an API could not be added to the router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{stage} {method} {path}: deployed twice under the same host and base path")]
    Duplicate {
        stage: Stage,
        method: Method,
        path: String,
    },
    #[error("{stage} {path}: {reason}")]
    Conflict {
        stage: Stage,
        path: String,
        reason: String,
        /// How many deployments (methods) were left out with the pattern.
        dropped: usize,
    },
}

enum Owner<O> {
    One(O),
    Many,
}

struct Endpoint<T> {
    /// Few methods per path: a short vector beats a map.
    methods: Vec<(Method, T)>,
    any: Option<T>,
}

impl<T> Endpoint<T> {
    #[inline]
    fn get(&self, method: &Method) -> Option<&T> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }
}

struct BucketBuilder<T, O> {
    base: String,
    owner: Option<Owner<O>>,
    stages: [BTreeMap<String, Endpoint<T>>; 3],
}

/// Collects groups and APIs; [`RouterBuilder::build`] makes the immutable [`Router`].
pub(crate) struct RouterBuilder<T, O> {
    buckets: Vec<BucketBuilder<T, O>>,
    hosts: HostMap<Vec<usize>>,
    any: Vec<usize>,
}

/// Names a bucket of a [`RouterBuilder`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketId(usize);

impl<T, O> Default for RouterBuilder<T, O> {
    fn default() -> Self {
        RouterBuilder {
            buckets: Vec::new(),
            hosts: HostMap::default(),
            any: Vec::new(),
        }
    }
}

/// `/v1/` -> `/v1`, `v1` -> `/v1`, `/` or empty -> `` (no base path).
pub(crate) fn normalize_base(base: Option<&str>) -> String {
    let base = base.unwrap_or("").trim().trim_end_matches('/');
    if base.is_empty() {
        String::new()
    } else if base.starts_with('/') {
        base.to_string()
    } else {
        format!("/{base}")
    }
}

/// Lower case, without port or trailing dot. `None` or empty means any host.
pub(crate) fn normalize_host(host: Option<&str>) -> Option<String> {
    let host = host?.trim();
    let host = strip_port(host).trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) => &host[..i],
            None => host,
        }
    }
}

/// Accepts `/p/[id]` (the console's spelling) as `/p/{id}`, and adds a leading slash.
fn normalize_pattern(path: &str) -> String {
    let path = path.trim();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for c in path.chars() {
        out.push(match c {
            '[' => '{',
            ']' => '}',
            c => c,
        });
    }
    out
}

impl<T, O> RouterBuilder<T, O> {
    /// Declares a group reachable at (host, base path) and returns its bucket.
    pub(crate) fn group(&mut self, host: Option<&str>, base: Option<&str>, owner: O) -> BucketId {
        let host = normalize_host(host);
        let base = normalize_base(base);
        let list = match &host {
            Some(h) => self.hosts.entry(h.clone()).or_default(),
            None => &mut self.any,
        };
        if let Some(&i) = list.iter().find(|i| self.buckets[**i].base == base) {
            self.buckets[i].owner = Some(Owner::Many);
            return BucketId(i);
        }
        let i = self.buckets.len();
        list.push(i);
        self.buckets.push(BucketBuilder {
            base,
            owner: Some(Owner::One(owner)),
            stages: Default::default(),
        });
        BucketId(i)
    }

    /// Adds an API to a bucket. Method `ANY` matches every method.
    pub(crate) fn insert(
        &mut self,
        bucket: BucketId,
        stage: Stage,
        method: Method,
        path: &str,
        value: T,
    ) -> Result<(), RouteError> {
        let pattern = normalize_pattern(path);
        let endpoint = self.buckets[bucket.0].stages[stage.index()]
            .entry(pattern.clone())
            .or_insert_with(|| Endpoint {
                methods: Vec::new(),
                any: None,
            });
        let duplicate = || RouteError::Duplicate {
            stage,
            method: method.clone(),
            path: pattern.clone(),
        };
        if method.as_str().eq_ignore_ascii_case("ANY") {
            if endpoint.any.is_some() {
                return Err(duplicate());
            }
            endpoint.any = Some(value);
        } else {
            if endpoint.methods.iter().any(|(m, _)| *m == method) {
                return Err(duplicate());
            }
            endpoint.methods.push((method, value));
        }
        Ok(())
    }

    /// Compiles the router; patterns that conflict with earlier ones are left out and reported.
    pub(crate) fn build(self) -> (Router<T, O>, Vec<RouteError>) {
        let mut errors = Vec::new();
        let buckets = self
            .buckets
            .into_iter()
            .map(|b| {
                let stages = [(); 3].map(|_| matchit::Router::new());
                let mut bucket = Bucket {
                    base: b.base,
                    owner: match b.owner {
                        Some(Owner::One(o)) => Some(o),
                        _ => None,
                    },
                    stages,
                };
                for (stage, patterns) in Stage::ALL.into_iter().zip(b.stages) {
                    for (pattern, endpoint) in patterns {
                        let dropped = endpoint.methods.len() + usize::from(endpoint.any.is_some());
                        if let Err(e) =
                            bucket.stages[stage.index()].insert(pattern.clone(), endpoint)
                        {
                            errors.push(RouteError::Conflict {
                                stage,
                                path: pattern,
                                reason: e.to_string(),
                                dropped,
                            });
                        }
                    }
                }
                bucket
            })
            .collect::<Vec<_>>();
        let order = |list: &mut Vec<usize>| {
            list.sort_by_key(|i| std::cmp::Reverse(buckets[*i].base.len()));
        };
        let mut hosts = self.hosts;
        hosts.values_mut().for_each(order);
        let mut any = self.any;
        order(&mut any);
        (
            Router {
                buckets,
                hosts,
                any,
            },
            errors,
        )
    }
}

struct Bucket<T, O> {
    base: String,
    /// The group to bill an unmatched request to; `None` when several groups share the bucket.
    owner: Option<O>,
    stages: [matchit::Router<Endpoint<T>>; 3],
}

impl<T, O> Bucket<T, O> {
    /// The path relative to the base path, if the path is under it.
    #[inline]
    fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.base.is_empty() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.base.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

/// The compiled, immutable router.
pub(crate) struct Router<T, O> {
    buckets: Vec<Bucket<T, O>>,
    hosts: HostMap<Vec<usize>>,
    any: Vec<usize>,
}

/// What a request resolved to.
#[derive(Debug, PartialEq)]
pub(crate) enum Lookup<'a, T, O> {
    /// A deployed API; `path` is the request path after the group's base path.
    Api { value: &'a T, path: &'a str },
    /// No API; `owner` is the group the request is attributed to, if one is clear.
    Unmatched { owner: Option<&'a O> },
}

impl<T, O> Router<T, O> {
    pub(crate) fn lookup<'a>(
        &'a self,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &'a str,
    ) -> Lookup<'a, T, O> {
        let mut owner = None;
        let mut owner_found = false;
        if !self.hosts.is_empty()
            && let Some(host) = host
        {
            let host = strip_port(host).trim_end_matches('.');
            // Hosts are almost always sent in lower case: allocate only when they are not.
            let list = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.hosts.get(&host.to_ascii_lowercase())
            } else {
                self.hosts.get(host)
            };
            if let Some(list) = list
                && let Some(hit) =
                    self.try_list(list, stage, method, path, &mut owner, &mut owner_found)
            {
                return hit;
            }
        }
        if let Some(hit) =
            self.try_list(&self.any, stage, method, path, &mut owner, &mut owner_found)
        {
            return hit;
        }
        Lookup::Unmatched { owner }
    }

    #[inline]
    fn try_list<'a>(
        &'a self,
        list: &[usize],
        stage: Stage,
        method: &Method,
        path: &'a str,
        owner: &mut Option<&'a O>,
        owner_found: &mut bool,
    ) -> Option<Lookup<'a, T, O>> {
        for &i in list {
            let bucket = &self.buckets[i];
            let Some(rest) = bucket.strip(path) else {
                continue;
            };
            // The most specific bucket the path falls in is the one an unmatched request is
            // billed to (if it belongs to a single group).
            if !*owner_found {
                *owner_found = true;
                *owner = bucket.owner.as_ref();
            }
            if let Ok(m) = bucket.stages[stage.index()].at(rest)
                && let Some(value) = m.value.get(method)
            {
                return Some(Lookup::Api { value, path: rest });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type R = Router<&'static str, &'static str>;

    fn router() -> R {
        let mut b = RouterBuilder::default();
        let any = b.group(None, None, "any-group");
        b.insert(any, Stage::Release, Method::GET, "/p/{id}", "any:get-p")
            .unwrap();
        b.insert(any, Stage::Release, Method::POST, "/p/{id}", "any:post-p")
            .unwrap();
        b.insert(any, Stage::Test, Method::GET, "/p/{id}", "any:test-get-p")
            .unwrap();
        b.insert(
            any,
            Stage::Release,
            Method::from_bytes(b"ANY").unwrap(),
            "/any",
            "any:any",
        )
        .unwrap();
        b.insert(
            any,
            Stage::Release,
            Method::GET,
            "/files/{*rest}",
            "any:files",
        )
        .unwrap();
        let v1 = b.group(None, Some("/v1/"), "v1-group");
        b.insert(v1, Stage::Release, Method::GET, "/p/[id]", "v1:get-p")
            .unwrap();
        b.insert(v1, Stage::Release, Method::GET, "/", "v1:root")
            .unwrap();
        let host = b.group(Some("API.Example.com:8080"), None, "host-group");
        b.insert(host, Stage::Release, Method::GET, "/p/{id}", "host:get-p")
            .unwrap();
        let host_v2 = b.group(Some("api.example.com"), Some("v2"), "host-v2-group");
        b.insert(host_v2, Stage::Release, Method::GET, "/x", "host-v2:x")
            .unwrap();
        let (r, errors) = b.build();
        assert!(errors.is_empty(), "{errors:?}");
        r
    }

    fn api<'a>(
        r: &'a R,
        host: Option<&str>,
        stage: Stage,
        m: Method,
        p: &'a str,
    ) -> Option<&'a str> {
        match r.lookup(host, stage, &m, p) {
            Lookup::Api { value, .. } => Some(value),
            Lookup::Unmatched { .. } => None,
        }
    }

    fn owner(r: &R, host: Option<&str>, p: &str) -> Option<&'static str> {
        match r.lookup(host, Stage::Release, &Method::GET, p) {
            Lookup::Unmatched { owner } => owner.copied(),
            Lookup::Api { .. } => panic!("{p} matched"),
        }
    }

    #[test]
    fn any_host_group_matches_paths_as_they_are() {
        let r = router();
        assert_eq!(
            api(&r, None, Stage::Release, Method::GET, "/p/1"),
            Some("any:get-p")
        );
        assert_eq!(
            api(&r, Some("other.org"), Stage::Release, Method::POST, "/p/1"),
            Some("any:post-p")
        );
        assert_eq!(
            api(&r, None, Stage::Release, Method::GET, "/files/a/b/c"),
            Some("any:files")
        );
    }

    #[test]
    fn host_specific_group_wins_and_host_is_normalised() {
        let r = router();
        for host in ["api.example.com", "API.example.COM:443", "api.example.com."] {
            assert_eq!(
                api(&r, Some(host), Stage::Release, Method::GET, "/p/1"),
                Some("host:get-p"),
                "{host}"
            );
        }
        // Not deployed in the host group: falls through to the any-host group.
        assert_eq!(
            api(
                &r,
                Some("api.example.com"),
                Stage::Release,
                Method::POST,
                "/p/1"
            ),
            Some("any:post-p")
        );
        assert_eq!(
            api(
                &r,
                Some("api.example.com"),
                Stage::Release,
                Method::GET,
                "/v2/x"
            ),
            Some("host-v2:x")
        );
        assert_eq!(
            api(&r, Some("other.org"), Stage::Release, Method::GET, "/v2/x"),
            None
        );
    }

    #[test]
    fn base_path_is_stripped_before_matching() {
        let r = router();
        match r.lookup(None, Stage::Release, &Method::GET, "/v1/p/7") {
            Lookup::Api { value, path } => assert_eq!((*value, path), ("v1:get-p", "/p/7")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            api(&r, None, Stage::Release, Method::GET, "/v1"),
            Some("v1:root")
        );
        assert_eq!(
            api(&r, None, Stage::Release, Method::GET, "/v1/"),
            Some("v1:root")
        );
        // `/v10/...` is not under `/v1`.
        assert_eq!(owner(&r, None, "/v10/p/7"), Some("any-group"));
    }

    #[test]
    fn method_and_any_method() {
        let r = router();
        assert_eq!(api(&r, None, Stage::Release, Method::DELETE, "/p/1"), None);
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(api(&r, None, Stage::Release, m, "/any"), Some("any:any"));
        }
    }

    #[test]
    fn stages_are_separate() {
        let r = router();
        assert_eq!(
            api(&r, None, Stage::Test, Method::GET, "/p/1"),
            Some("any:test-get-p")
        );
        assert_eq!(api(&r, None, Stage::Pre, Method::GET, "/p/1"), None);
        assert_eq!(api(&r, None, Stage::Test, Method::POST, "/p/1"), None);
    }

    #[test]
    fn unmatched_requests_are_attributed_to_the_most_specific_group() {
        let r = router();
        assert_eq!(owner(&r, None, "/nope"), Some("any-group"));
        assert_eq!(owner(&r, None, "/v1/nope"), Some("v1-group"));
        assert_eq!(
            owner(&r, Some("api.example.com"), "/nope"),
            Some("host-group")
        );
        assert_eq!(
            owner(&r, Some("api.example.com"), "/v2/nope"),
            Some("host-v2-group")
        );
    }

    #[test]
    fn shared_bucket_is_attributed_to_nobody_and_empty_router_matches_nothing() {
        let mut b: RouterBuilder<&str, &str> = RouterBuilder::default();
        let g1 = b.group(None, None, "g1");
        let g2 = b.group(None, Some("/"), "g2");
        b.insert(g1, Stage::Release, Method::GET, "/a", "a")
            .unwrap();
        b.insert(g2, Stage::Release, Method::GET, "/b", "b")
            .unwrap();
        let (r, _) = b.build();
        assert_eq!(api(&r, None, Stage::Release, Method::GET, "/b"), Some("b"));
        assert_eq!(owner(&r, None, "/c"), None);
        let (empty, _) = RouterBuilder::<&str, &str>::default().build();
        assert_eq!(owner(&empty, Some("x"), "/"), None);
    }

    #[test]
    fn duplicates_and_conflicts_are_reported() {
        let mut b: RouterBuilder<&str, &str> = RouterBuilder::default();
        let g = b.group(None, None, "g");
        b.insert(g, Stage::Release, Method::GET, "/p/{id}", "a")
            .unwrap();
        assert!(matches!(
            b.insert(g, Stage::Release, Method::GET, "/p/{id}", "b"),
            Err(RouteError::Duplicate { .. })
        ));
        b.insert(g, Stage::Release, Method::GET, "/p/{name}", "c")
            .unwrap();
        let (r, errors) = b.build();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(
            api(&r, None, Stage::Release, Method::GET, "/p/1"),
            Some("a" | "c")
        ));
    }

    #[test]
    fn helpers() {
        assert_eq!(normalize_base(Some("/")), "");
        assert_eq!(normalize_base(Some("v1/")), "/v1");
        assert_eq!(normalize_host(Some("  ")), None);
        assert_eq!(normalize_host(Some("[::1]:80")), Some("[::1]".into()));
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(normalize_pattern("p/[id]/x"), "/p/{id}/x");
    }

    proptest! {
        #[test]
        fn random_requests_never_panic(
            host in proptest::option::of("[a-zA-Z0-9.:\\[\\]-]{0,20}"),
            path in "\\PC{0,40}",
            raw in proptest::collection::vec(any::<u8>(), 0..40),
            stage in 0usize..3,
        ) {
            let r = router();
            let stage = Stage::ALL[stage];
            let _ = r.lookup(host.as_deref(), stage, &Method::GET, &path);
            let lossy = String::from_utf8_lossy(&raw);
            let _ = r.lookup(host.as_deref(), stage, &Method::POST, &lossy);
            let slash = format!("/{lossy}");
            let _ = r.lookup(Some("api.example.com"), stage, &Method::GET, &slash);
        }

        #[test]
        fn random_patterns_never_panic(patterns in proptest::collection::vec("\\PC{0,20}", 0..8)) {
            let mut b: RouterBuilder<usize, ()> = RouterBuilder::default();
            let g = b.group(None, None, ());
            for (i, p) in patterns.iter().enumerate() {
                let _ = b.insert(g, Stage::Release, Method::GET, p, i);
            }
            let (r, _) = b.build();
            for p in &patterns {
                let _ = r.lookup(None, Stage::Release, &Method::GET, p);
            }
        }
    }
}
