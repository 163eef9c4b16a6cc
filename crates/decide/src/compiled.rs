//! The configuration as the hot path reads it: groups and APIs compiled, with their counters and
//! backends, in an immutable [`Snapshot`]; and who a request is attributed to ([`Target`]).

use crate::access::IpAcl;
use crate::backend::{Backend, Upstreams};
use crate::config::Stage;
use crate::instance::InstanceState;
use crate::metrics::{Histogram, StatusCounters};
use crate::router::Router;
use crate::spread::Spread;
use crate::usage::UsageCell;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A group, compiled.
pub(crate) struct GroupCtx {
    pub(crate) name: String,
    pub(crate) account: String,
    /// `None` when the group lets every address in.
    pub(crate) acl: Option<IpAcl>,
    pub(crate) instance: Arc<InstanceState>,
    /// Changed in place when a group changes in nothing else (an account suspended or
    /// restored), so that this most frequent change of a billing cycle recompiles nothing.
    pub(crate) suspended: AtomicBool,
    pub(crate) unmatched_usage: Arc<UsageCell>,
    pub(crate) unmatched_status: Arc<StatusCounters>,
}

/// A deployed API, compiled.
pub struct Api<U: Upstreams> {
    pub(crate) group: Arc<GroupCtx>,
    /// For APIs whose auth type is APP: the apps (by name) authorised on the API. Their keys and
    /// secrets are looked up at request time ([`AppAuth`]), so app changes recompile no route.
    pub(crate) app_grants: Option<Box<[String]>>,
    /// The API's own IP access control, checked after its group's; `None` lets all in.
    pub(crate) acl: Option<IpAcl>,
    pub(crate) name: String,
    /// Its backends, with weights and health.
    pub(crate) spread: Spread<U::Pool>,
    pub(crate) timeout: Duration,
    /// Bytes read back from the backend are counted as backend traffic.
    pub(crate) backend_billed: bool,
    pub(crate) usage: Arc<UsageCell>,
    pub(crate) status: Arc<StatusCounters>,
    /// The throttling policy bound to the API on its stage.
    pub(crate) throttle: Option<crate::throttle::Throttle>,
    /// The deployment's own latency histogram (group, API, stage).
    pub(crate) latency: Arc<Histogram>,
}

impl<U: Upstreams> Api<U> {
    /// Where the API's requests go: its first backend (see [`spread`](Self::spread) for all).
    #[inline]
    pub fn backend(&self) -> &Backend<U::Pool> {
        self.spread.first()
    }

    /// The API's backends: pick one per request and report how it went.
    #[inline]
    pub fn spread(&self) -> &Spread<U::Pool> {
        &self.spread
    }

    /// How long the backend may take to answer; zero for the default.
    #[inline]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Counts a backend answer that took `elapsed`, in its instance's latency histogram.
    #[inline]
    pub fn record_latency(&self, elapsed: Duration) {
        self.group.instance.stats.latency.record(elapsed);
        self.latency.record(elapsed);
    }

    /// Counts a backend that did not answer in time.
    #[inline]
    pub fn count_backend_timeout(&self) {
        self.group.instance.stats.backend_timeouts.add(1);
    }

    /// Counts a backend that could not be reached or broke off.
    #[inline]
    pub fn count_backend_error(&self) {
        self.group.instance.stats.backend_errors.add(1);
    }
}

/// The immutable compiled configuration the hot path reads through an `ArcSwap`. Both parts
/// are persistent maps, so that each configuration change makes the next snapshot from the
/// previous one in O(1) plus what changed, and the two share the rest.
pub(crate) struct Snapshot<U: Upstreams> {
    pub(crate) router: Router<Arc<Api<U>>, Arc<GroupCtx>>,
    pub(crate) instances: imbl::OrdMap<Arc<str>, Arc<InstanceState>>,
}

/// Status counters by (instance, API): the labels of the per-route metrics.
pub(crate) type Statuses = HashMap<(String, String), Arc<StatusCounters>>;

/// Latency histograms by (group, API, stage): bounded by what is deployed.
pub(crate) type Latencies = HashMap<(String, String, Stage), Arc<Histogram>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a request is attributed to.
pub(crate) enum Target<U: Upstreams> {
    Api(Arc<Api<U>>),
    Group(Arc<GroupCtx>),
    Nobody,
}

// Not derived: that would ask for `U: Clone`, and only the `Arc`s are cloned.
impl<U: Upstreams> Clone for Target<U> {
    fn clone(&self) -> Self {
        match self {
            Target::Api(api) => Target::Api(api.clone()),
            Target::Group(g) => Target::Group(g.clone()),
            Target::Nobody => Target::Nobody,
        }
    }
}

impl<U: Upstreams> Target<U> {
    /// The usage cell the request's calls and bytes are counted in.
    pub(crate) fn usage(&self) -> Option<&UsageCell> {
        match self {
            Target::Api(api) => Some(&api.usage),
            Target::Group(g) => Some(&g.unmatched_usage),
            Target::Nobody => None,
        }
    }
}

/// The usage a response's bytes are counted in, as the server writes them: what the request
/// resolved to, and nothing else of the data plane.
pub struct UsageHandle<U: Upstreams>(pub(crate) Target<U>);

impl<U: Upstreams> Clone for UsageHandle<U> {
    fn clone(&self) -> Self {
        UsageHandle(self.0.clone())
    }
}

impl<U: Upstreams> UsageHandle<U> {
    /// Counts `n` bytes sent to the client (outbound traffic: every byte of the HTTP response
    /// written, head and framing included).
    #[inline]
    pub fn add_bytes(&self, n: u64) {
        if let Some(usage) = self.0.usage() {
            usage.add_bytes(n);
        }
    }

    /// Counts `n` bytes read back from the backend, when the API's backend is billed for
    /// (outside the instance's region); a no-op otherwise.
    #[inline]
    pub fn add_backend_bytes(&self, n: u64) {
        if let Target::Api(api) = &self.0
            && api.backend_billed
        {
            api.usage.add_backend_bytes(n);
        }
    }

    /// Whether [`add_backend_bytes`](Self::add_backend_bytes) counts anything: lets a body
    /// skip working out sizes nobody is billed for.
    #[inline]
    pub fn counts_backend(&self) -> bool {
        matches!(&self.0, Target::Api(api) if api.backend_billed)
    }
}
