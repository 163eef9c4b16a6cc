//! Resolving a request (host, stage, method, path) to a deployed API.
//!
//! Groups are bucketed by (host or any host, normalised base path): a [`BucketKey`]. Each
//! bucket holds its per-stage `matchit` routers and is compiled alone ([`BucketBuilder`]) from
//! the groups at its key (one, unless two groups share a host and base path, which the model
//! forbids but the router still handles: the bucket then has no owner).
//!
//! The [`Router`] is a persistent map of hosts to tables of buckets by base path (`imbl`, a
//! hash array mapped trie): cloning it is O(1) and replacing one bucket ([`Router::set`]) copies
//! only the O(log n) path to it, so a configuration change builds the next snapshot from the
//! previous one at the cost of the buckets it changed, and the snapshots share the rest.
//!
//! Lookup does not iterate over buckets. The candidates for a request path are its prefixes
//! that end at a '/' boundary (or at its end); each table keeps the set of base-path lengths it
//! holds, so only the prefixes of those lengths are hashed and looked up, longest first. The
//! request's host's table is tried first, then the any-host table, so a host-specific group
//! wins where both would match, and the most specific base path wins within each. A bucket
//! matches when the path is its base path or lies under it, and its stage's router is then
//! asked for the rest of the path; the first bucket the path falls in (the most specific) is
//! the one an unmatched request is attributed to.
//!
//! The router is generic over the value it resolves to (`T`, the compiled API) and over its
//! bucket owner (`O`, the group, used to bill requests that match a group but none of its APIs),
//! which keeps it testable without the rest of the data plane.

use crate::config::Stage;
use http::Method;
use imbl::shared_ptr::DefaultSharedPtr;
use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// FNV-1a: host names and base paths are short, and the tables' keys come from configuration (a
/// client can only look keys up, not add colliding ones), so SipHash's flooding resistance buys
/// nothing here and costs ~20 ns per lookup.
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

/// A persistent map from strings (hosts, base paths): O(1) clone, O(log n) change.
type Map<V> = imbl::GenericHashMap<String, V, BuildHasherDefault<Fnv>, DefaultSharedPtr>;

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
// Byte loops rather than `find`/`rfind`: hosts are short, and `memrchr`'s setup costs more than
// the scan (this runs on every request).
pub(crate) fn strip_port(host: &str) -> &str {
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        bytes.iter().position(|&b| b == b']').map(|i| i + 1)
    } else {
        bytes.iter().rposition(|&b| b == b':')
    };
    // Both ends are at ASCII bytes, so on char boundaries.
    &host[..end.unwrap_or(bytes.len())]
}

/// A request's host as the tables key it, but for case: without port and trailing dots.
#[inline]
fn request_host(host: &str) -> &str {
    let host = strip_port(host);
    let bytes = host.as_bytes();
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == b'.' {
        end -= 1;
    }
    &host[..end]
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

/// Where a bucket sits in the router: a normalised host (`None` = any host) and a normalised
/// base path (`""` = none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BucketKey {
    pub(crate) host: Option<String>,
    pub(crate) base: String,
}

impl BucketKey {
    /// The key of a group configured with `host` and `base` (both as configured).
    pub(crate) fn new(host: Option<&str>, base: Option<&str>) -> BucketKey {
        BucketKey {
            host: normalize_host(host),
            base: normalize_base(base),
        }
    }
}

/// Collects the groups and APIs of one bucket; [`BucketBuilder::build`] compiles it.
pub(crate) struct BucketBuilder<T, O> {
    owner: Option<Owner<O>>,
    stages: [BTreeMap<String, Endpoint<T>>; 3],
}

impl<T, O> Default for BucketBuilder<T, O> {
    fn default() -> Self {
        BucketBuilder {
            owner: None,
            stages: Default::default(),
        }
    }
}

impl<T, O> BucketBuilder<T, O> {
    /// Declares a group at this bucket's key. With more than one, unmatched requests are
    /// attributed to none of them.
    pub(crate) fn group(&mut self, owner: O) {
        self.owner = Some(match self.owner {
            None => Owner::One(owner),
            Some(_) => Owner::Many,
        });
    }

    /// Adds an API. Method `ANY` matches every method.
    pub(crate) fn insert(
        &mut self,
        stage: Stage,
        method: Method,
        path: &str,
        value: T,
    ) -> Result<(), RouteError> {
        let pattern = normalize_pattern(path);
        let endpoint = self.stages[stage.index()]
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

    /// Compiles the bucket; patterns that conflict with earlier ones (in pattern order) are
    /// left out and reported.
    pub(crate) fn build(self) -> (Bucket<T, O>, Vec<RouteError>) {
        let mut errors = Vec::new();
        let mut bucket = Bucket {
            owner: match self.owner {
                Some(Owner::One(o)) => Some(o),
                _ => None,
            },
            stages: [(); 3].map(|_| matchit::Router::new()),
            routes: 0,
        };
        for (stage, patterns) in Stage::ALL.into_iter().zip(self.stages) {
            for (pattern, endpoint) in patterns {
                let n = endpoint.methods.len() + usize::from(endpoint.any.is_some());
                match bucket.stages[stage.index()].insert(pattern.clone(), endpoint) {
                    Ok(()) => bucket.routes += n,
                    Err(e) => errors.push(RouteError::Conflict {
                        stage,
                        path: pattern,
                        reason: e.to_string(),
                        dropped: n,
                    }),
                }
            }
        }
        (bucket, errors)
    }
}

/// The compiled, immutable routes of one (host, base path).
pub(crate) struct Bucket<T, O> {
    /// The group to bill an unmatched request to; `None` when several groups share the bucket.
    owner: Option<O>,
    stages: [matchit::Router<Endpoint<T>>; 3],
    /// Deployments routable through this bucket.
    routes: usize,
}

impl<T, O> Bucket<T, O> {
    /// Deployments routable through this bucket (those left out by conflicts not counted).
    pub(crate) fn routes(&self) -> usize {
        self.routes
    }
}

/// Up to this many buckets, a table is also kept as a short list that lookups scan: cheaper
/// than hashing, and the common case (a host's table holds one bucket).
const FEW: usize = 4;

/// The path relative to `base` if the path is `base` or lies under it (`base` normalised).
#[inline]
fn under<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    if base.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// A bucket and its base path, in a table with few buckets.
type FewEntry<T, O> = (Box<str>, Arc<Bucket<T, O>>);

/// The buckets of one host (or of any host), by base path.
struct Table<T, O> {
    buckets: Map<Arc<Bucket<T, O>>>,
    /// The base-path lengths present, longest first, each with its number of buckets: a request
    /// path's prefixes of other lengths cannot name a bucket and are not even hashed. At most as
    /// many entries as the longest base path has bytes.
    lens: Arc<Vec<(usize, usize)>>,
    /// With at most [`FEW`] buckets: the buckets, longest base path first.
    few: Option<Arc<[FewEntry<T, O>]>>,
}

// Manual: the derive would ask for `T: Clone, O: Clone`, which sharing through `Arc` needs not.
impl<T, O> Clone for Table<T, O> {
    fn clone(&self) -> Self {
        Table {
            buckets: self.buckets.clone(),
            lens: self.lens.clone(),
            few: self.few.clone(),
        }
    }
}

impl<T, O> Default for Table<T, O> {
    fn default() -> Self {
        Table {
            buckets: Map::default(),
            lens: Arc::default(),
            few: None,
        }
    }
}

impl<T, O> Table<T, O> {
    fn set(&mut self, base: &str, bucket: Option<Arc<Bucket<T, O>>>) {
        let (had, has) = match bucket {
            Some(b) => (self.buckets.insert(base.to_string(), b).is_some(), true),
            None => (self.buckets.remove(base).is_some(), false),
        };
        self.few = (self.buckets.len() <= FEW).then(|| {
            let mut few: Vec<FewEntry<T, O>> = self
                .buckets
                .iter()
                .map(|(base, b)| (Box::from(base.as_str()), b.clone()))
                .collect();
            few.sort_by_key(|(base, _)| std::cmp::Reverse(base.len()));
            few.into()
        });
        if had == has {
            return;
        }
        let len = base.len();
        let lens = Arc::make_mut(&mut self.lens);
        let at = lens.iter().position(|(l, _)| *l <= len);
        match at {
            Some(i) if lens[i].0 == len => {
                if has {
                    lens[i].1 += 1;
                } else {
                    lens[i].1 -= 1;
                    if lens[i].1 == 0 {
                        lens.remove(i);
                    }
                }
            }
            // A new length (an absent bucket's length is always present).
            _ => lens.insert(at.unwrap_or(lens.len()), (len, 1)),
        }
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Tries the buckets `path` falls in, most specific first. `owner` is set by the first.
    #[inline]
    fn find<'a>(
        &'a self,
        stage: Stage,
        method: &Method,
        path: &'a str,
        owner: &mut Option<Option<&'a O>>,
    ) -> Option<Lookup<'a, T, O>> {
        if let Some(few) = &self.few {
            for (base, bucket) in few.iter() {
                if let Some(rest) = under(path, base)
                    && let Some(hit) = bucket.find(stage, method, rest, owner)
                {
                    return Some(hit);
                }
            }
            return None;
        }
        let bytes = path.as_bytes();
        for &(len, _) in self.lens.iter() {
            // A base path ends where the request path does or at one of its slashes (which
            // also makes `len` a char boundary).
            let rest = match bytes.len().cmp(&len) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal if len == 0 => path,
                std::cmp::Ordering::Equal => "/",
                std::cmp::Ordering::Greater if len == 0 => path,
                std::cmp::Ordering::Greater if bytes[len] == b'/' => &path[len..],
                std::cmp::Ordering::Greater => continue,
            };
            if let Some(bucket) = self.buckets.get(&path[..len])
                && let Some(hit) = bucket.find(stage, method, rest, owner)
            {
                return Some(hit);
            }
        }
        None
    }
}

impl<T, O> Bucket<T, O> {
    /// Asks the stage's router for `rest` (the path after the base path).
    #[inline]
    fn find<'a>(
        &'a self,
        stage: Stage,
        method: &Method,
        rest: &'a str,
        owner: &mut Option<Option<&'a O>>,
    ) -> Option<Lookup<'a, T, O>> {
        // The most specific bucket the path falls in is the one an unmatched request is
        // billed to (if it belongs to a single group).
        owner.get_or_insert(self.owner.as_ref());
        let m = self.stages[stage.index()].at(rest).ok()?;
        let value = m.value.get(method)?;
        Some(Lookup::Api { value, path: rest })
    }
}

/// The compiled, immutable router: cheap to clone, changed a bucket at a time.
pub(crate) struct Router<T, O> {
    hosts: Map<Table<T, O>>,
    any: Table<T, O>,
}

impl<T, O> Clone for Router<T, O> {
    fn clone(&self) -> Self {
        Router {
            hosts: self.hosts.clone(),
            any: self.any.clone(),
        }
    }
}

impl<T, O> Default for Router<T, O> {
    fn default() -> Self {
        Router {
            hosts: Map::default(),
            any: Table::default(),
        }
    }
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
    /// Puts `bucket` at `key`, or removes the bucket there (`None`). O(log n).
    pub(crate) fn set(&mut self, key: &BucketKey, bucket: Option<Arc<Bucket<T, O>>>) {
        let Some(host) = &key.host else {
            self.any.set(&key.base, bucket);
            return;
        };
        match self.hosts.get_mut(host.as_str()) {
            Some(table) => {
                table.set(&key.base, bucket);
                if table.is_empty() {
                    self.hosts.remove(host.as_str());
                }
            }
            None if bucket.is_some() => {
                let mut table = Table::default();
                table.set(&key.base, bucket);
                self.hosts.insert(host.clone(), table);
            }
            None => {}
        }
    }

    /// The table of a request's host (port, trailing dot and case ignored).
    #[inline]
    fn host_table(&self, host: &str) -> Option<&Table<T, O>> {
        let host = request_host(host);
        // Hosts are almost always sent in lower case: look them up as they are first.
        if let Some(table) = self.hosts.get(host) {
            return Some(table);
        }
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        // Lowered on the stack (a DNS name has at most 253 bytes).
        let mut buf = [0u8; 256];
        match buf.get_mut(..host.len()) {
            Some(lower) => {
                lower.copy_from_slice(host.as_bytes());
                lower.make_ascii_lowercase();
                // Changing the case of ASCII letters keeps UTF-8 valid.
                std::str::from_utf8(lower)
                    .ok()
                    .and_then(|h| self.hosts.get(h))
            }
            None => self.hosts.get(host.to_ascii_lowercase().as_str()),
        }
    }

    pub(crate) fn lookup<'a>(
        &'a self,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &'a str,
    ) -> Lookup<'a, T, O> {
        let mut owner = None;
        if !self.hosts.is_empty()
            && let Some(table) = host.and_then(|h| self.host_table(h))
            && let Some(hit) = table.find(stage, method, path, &mut owner)
        {
            return hit;
        }
        if let Some(hit) = self.any.find(stage, method, path, &mut owner) {
            return hit;
        }
        Lookup::Unmatched {
            owner: owner.flatten(),
        }
    }
}

/// Collects groups and APIs of many buckets at once, for tests of the router alone.
#[cfg(test)]
pub(crate) struct RouterBuilder<T, O> {
    buckets: Vec<(BucketKey, BucketBuilder<T, O>)>,
}

/// Names a bucket of a [`RouterBuilder`].
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketId(usize);

#[cfg(test)]
impl<T, O> Default for RouterBuilder<T, O> {
    fn default() -> Self {
        RouterBuilder {
            buckets: Vec::new(),
        }
    }
}

#[cfg(test)]
impl<T, O> RouterBuilder<T, O> {
    pub(crate) fn group(&mut self, host: Option<&str>, base: Option<&str>, owner: O) -> BucketId {
        let key = BucketKey::new(host, base);
        let i = match self.buckets.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.buckets.push((key, BucketBuilder::default()));
                self.buckets.len() - 1
            }
        };
        self.buckets[i].1.group(owner);
        BucketId(i)
    }

    pub(crate) fn insert(
        &mut self,
        bucket: BucketId,
        stage: Stage,
        method: Method,
        path: &str,
        value: T,
    ) -> Result<(), RouteError> {
        self.buckets[bucket.0].1.insert(stage, method, path, value)
    }

    pub(crate) fn build(self) -> (Router<T, O>, Vec<RouteError>) {
        let mut router = Router::default();
        let mut errors = Vec::new();
        for (key, b) in self.buckets {
            let (bucket, e) = b.build();
            errors.extend(e);
            router.set(&key, Some(Arc::new(bucket)));
        }
        (router, errors)
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
        for (host, stripped) in [
            ("a.b:80", "a.b"),
            ("a:b:c", "a:b"),
            ("[::1]", "[::1]"),
            ("[::1]:8080", "[::1]"),
            ("[::1", "[::1"),
            ("", ""),
            (":", ""),
            ("é:1", "é"),
        ] {
            assert_eq!(strip_port(host), stripped, "{host}");
        }
        assert_eq!(request_host("A.b..:80"), "A.b");
        assert_eq!(normalize_pattern("p/[id]/x"), "/p/{id}/x");
    }

    #[test]
    fn buckets_are_replaced_and_removed_in_place() {
        let mut r: Router<&str, &str> = Router::default();
        let bucket = |owner: &'static str, value: &'static str| {
            let mut b = BucketBuilder::default();
            b.group(owner);
            b.insert(Stage::Release, Method::GET, "/x", value).unwrap();
            Arc::new(b.build().0)
        };
        let v1 = BucketKey::new(None, Some("/v1"));
        let host = BucketKey::new(Some("Api.Example.com"), None);
        r.set(&v1, Some(bucket("g1", "a")));
        r.set(&host, Some(bucket("g2", "b")));
        let before = r.clone();
        r.set(&v1, Some(bucket("g1", "c")));
        assert_eq!(
            api(&r, None, Stage::Release, Method::GET, "/v1/x"),
            Some("c")
        );
        // The clone taken before is a snapshot: unchanged.
        assert_eq!(
            api(&before, None, Stage::Release, Method::GET, "/v1/x"),
            Some("a")
        );
        assert_eq!(
            api(
                &r,
                Some("api.example.com:80"),
                Stage::Release,
                Method::GET,
                "/x"
            ),
            Some("b")
        );
        r.set(&host, None);
        r.set(&v1, None);
        assert!(r.hosts.is_empty() && r.any.is_empty() && r.any.lens.is_empty());
        assert!(r.any.few.as_ref().is_some_and(|few| few.is_empty()));
        assert_eq!(owner(&r, Some("api.example.com"), "/x"), None);
        // Removing what is not there changes nothing.
        r.set(&host, None);
        assert!(r.hosts.is_empty());
    }

    #[test]
    fn non_ascii_paths_and_hosts_do_not_split_characters() {
        let mut b = RouterBuilder::default();
        let g = b.group(Some("é.test"), Some("/é"), "g");
        b.insert(g, Stage::Release, Method::GET, "/x", "x").unwrap();
        let (r, _) = b.build();
        assert_eq!(
            api(&r, Some("É.TEST"), Stage::Release, Method::GET, "/é/x"),
            None,
            "only ASCII letters are case-folded"
        );
        assert_eq!(
            api(&r, Some("é.TEST"), Stage::Release, Method::GET, "/é/x"),
            Some("x")
        );
        for p in ["/é", "/éé", "/\u{e9}\u{301}/x", "é", ""] {
            let _ = r.lookup(Some("é.test"), Stage::Release, &Method::GET, p);
        }
        let long = "A".repeat(300);
        let _ = r.lookup(Some(&long), Stage::Release, &Method::GET, "/");
    }

    /// The lookup before the persistent router: every bucket of the host, then every any-host
    /// one, each list longest base path first, tested with a prefix strip. The reference the
    /// hashed-prefix lookup must agree with.
    fn reference<'a>(
        buckets: &'a [(BucketKey, Arc<Bucket<u32, u32>>)],
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &'a str,
    ) -> (Option<u32>, Option<u32>) {
        fn strip_port(host: &str) -> &str {
            if host.starts_with('[') {
                host.find(']').map_or(host, |i| &host[..=i])
            } else {
                host.rfind(':').map_or(host, |i| &host[..i])
            }
        }
        let host = host.map(|h| strip_port(h).trim_end_matches('.').to_ascii_lowercase());
        let mut order: Vec<&(BucketKey, Arc<Bucket<u32, u32>>)> = buckets
            .iter()
            .filter(|(k, _)| k.host.is_some() && k.host == host)
            .collect();
        order.sort_by_key(|(k, _)| std::cmp::Reverse(k.base.len()));
        let mut any: Vec<_> = buckets.iter().filter(|(k, _)| k.host.is_none()).collect();
        any.sort_by_key(|(k, _)| std::cmp::Reverse(k.base.len()));
        order.extend(any);
        let strip = |base: &str| -> Option<&'a str> {
            if base.is_empty() {
                return Some(path);
            }
            let rest = path.strip_prefix(base)?;
            if rest.is_empty() {
                Some("/")
            } else {
                rest.starts_with('/').then_some(rest)
            }
        };
        let mut owner = None;
        for (key, bucket) in order {
            let Some(rest) = strip(&key.base) else {
                continue;
            };
            owner.get_or_insert(bucket.owner);
            if let Ok(m) = bucket.stages[stage.index()].at(rest)
                && let Some(v) = m.value.get(method)
            {
                return (Some(*v), None);
            }
        }
        (None, owner.flatten())
    }

    fn key_strategy() -> impl Strategy<Value = BucketKey> {
        let host = proptest::option::of(proptest::sample::select(vec![
            "a.test",
            "A.test:80",
            "b.test.",
            "c.test",
        ]));
        let base = proptest::option::of(proptest::sample::select(vec![
            "/", "/a", "a/", "/a/b", "/ab", "/a/b/c", "/b", "/a//b", "/é",
        ]));
        (host, base).prop_map(|(h, b)| BucketKey::new(h, b))
    }

    proptest! {
        /// Buckets set, replaced and removed in any order route exactly as the reference over
        /// the buckets left at the end.
        #[test]
        fn prefix_lookup_agrees_with_the_reference(
            ops in proptest::collection::vec(
                (key_strategy(), proptest::option::of((0u32..4, proptest::collection::vec(
                    (0usize..3, proptest::sample::select(vec!["/", "/x", "/x/{id}", "/b", "/c/{*rest}", "/{p}"])),
                    0..4,
                )))),
                0..24,
            ),
            requests in proptest::collection::vec((
                proptest::option::of(proptest::sample::select(vec![
                    "a.test", "A.TEST", "a.test:8080", "b.test", "B.test.", "c.test", "d.test",
                ])),
                proptest::sample::select(vec![
                    "", "/", "/a", "/a/", "/a/x", "/a/b", "/a/b/x", "/a/b/c", "/a/b/c/x", "/ab/x",
                    "/abc", "/b", "/b/x/1", "/x", "/x/1", "/c/d/e", "/a//b/x", "/é/x", "x", "//",
                ]),
                0usize..3,
            ), 1..40),
        ) {
            let mut router: Router<u32, u32> = Router::default();
            let mut live: Vec<(BucketKey, Arc<Bucket<u32, u32>>)> = Vec::new();
            for (n, (key, spec)) in ops.into_iter().enumerate() {
                let bucket = spec.map(|(owner, routes)| {
                    let mut b = BucketBuilder::default();
                    b.group(owner);
                    for (j, (stage, pattern)) in routes.into_iter().enumerate() {
                        let _ = b.insert(Stage::ALL[stage], Method::GET, pattern, (n * 10 + j) as u32);
                    }
                    Arc::new(b.build().0)
                });
                live.retain(|(k, _)| *k != key);
                if let Some(b) = &bucket {
                    live.push((key.clone(), b.clone()));
                }
                router.set(&key, bucket);
            }
            for (host, path, stage) in requests {
                let stage = Stage::ALL[stage];
                let got = match router.lookup(host, stage, &Method::GET, path) {
                    Lookup::Api { value, .. } => (Some(*value), None),
                    Lookup::Unmatched { owner } => (None, owner.copied()),
                };
                prop_assert_eq!(
                    got,
                    reference(&live, host, stage, &Method::GET, path),
                    "{:?} {} {:?}", host, path, stage
                );
            }
        }

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
