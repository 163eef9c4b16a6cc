//! [`Dataplane`]: the compiled configuration, the instances with their limiters and shares, the
//! usage and metric counters, and the decision half of the hot path ([`Dataplane::decide`]).
//! What the configuration compiles to is in [`crate::compiled`]; how it gets compiled and
//! swapped in, in [`crate::publish`].

use crate::access::AppAuth;
use crate::backend::{Unconnected, Upstreams};
use crate::compiled::{Api, Latencies, Snapshot, Statuses, Target, UsageHandle, lock};
use crate::config::Stage;
use crate::error::GatewayError;
use crate::instance::InstanceState;
use crate::loaded::Loaded;
use crate::metrics::{self, GlobalStats, Histogram, InstanceTraffic, InstanceView, StatusCounters};
use crate::moves::Reading;
use crate::options::DataplaneOptions;
use crate::request_id::{RequestId, RequestIds};
use crate::router::{Lookup, Router};
use crate::shares::{DemandReport, DemandTracker};
use crate::usage::{HOUR_MS, UsageDrain, UsageRegistry};
use arc_swap::{ArcSwap, ArcSwapOption};
use http::Method;
use model::UsageDelta;
use model::clock::{Clock, Nanos};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What [`Dataplane::publish`] or [`Dataplane::update`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Deployed APIs routable after the change (all of them, not only the changed ones).
    pub routes: usize,
    /// Groups compiled by this change (what it cost).
    pub groups_compiled: usize,
    /// Parts of the changed configuration that were left out, and why.
    pub warnings: Vec<String>,
}

/// An instance's limiter state on this node, for metrics and operators.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceShare {
    pub instance: String,
    pub ceiling_rps: u32,
    /// This node's share of the ceiling, in [0, 1].
    pub share: f64,
    /// What this node's limiter admits: `ceiling_rps * share`.
    pub limit_rps: f64,
    /// This node's offered rate as last measured by [`Dataplane::demand_report`].
    pub offered_rps: f64,
}

/// What access control needs of a request: the client's address, and the parts a signature
/// covers.
pub struct Access<'a> {
    pub peer: Option<std::net::IpAddr>,
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
}

impl Access<'_> {
    /// The refusal of the API's access control, or the calling app of a signed call.
    fn check<U: Upstreams>(
        &self,
        api: &Api<U>,
        apps: &AppAuth,
    ) -> Result<Option<String>, crate::access::Denied> {
        if let Some(ip) = self.peer {
            for acl in [&api.group.acl, &api.acl].into_iter().flatten() {
                acl.check(ip)?;
            }
        }
        let Some(allowed) = api.app_grants.as_deref() else {
            return Ok(None);
        };
        // Signature timestamps are wall-clock milliseconds; read the clock only for APP APIs.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        apps.check(self.method, self.uri, self.headers, allowed, now_ms)
            .map(Some)
    }
}

pub(crate) struct Inner<U: Upstreams> {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) burst: Duration,
    pub(crate) snapshot: ArcSwap<Snapshot<U>>,
    /// What is loaded, kept for incremental updates. Held by a publish or update for its
    /// whole compile (which serialises writers), and by nothing else: not by the hot path,
    /// metrics or usage draining.
    pub(crate) loaded: Mutex<Loaded<U>>,
    /// Usage cells by key. Taken briefly by a compile (to fetch one group's cells) and by
    /// [`Dataplane::drain_usage`].
    pub(crate) usage: Mutex<UsageRegistry>,
    /// The registry's counting hour, for the hot path to compare without the lock.
    pub(crate) usage_hour: AtomicU64,
    /// Taken briefly by a compile (one group's counters) and by a scrape.
    pub(crate) statuses: Mutex<Statuses>,
    /// Per-deployment latency histograms; locked like `statuses`.
    pub(crate) latencies: Mutex<Latencies>,
    /// Per-backend health and counters (see [`crate::spread`]); locked like `statuses`.
    pub(crate) backends: Mutex<crate::spread::BackendStates>,
    /// When a backend is taken out, for every compiled spread.
    pub(crate) backend_health: crate::health::HealthPolicy,
    pub(crate) demand: Mutex<DemandTracker>,
    /// Throttling-policy counters and window leases. Taken by a compile (one group's
    /// counters), by the report tick and by a peer's report; never by a request.
    pub(crate) throttles: Mutex<crate::throttle::Registry>,
    pub(crate) n_nodes: AtomicUsize,
    pub(crate) request_ids: RequestIds,
    /// The apps' keys and secrets, and the nonces of signed calls seen in the last 15
    /// minutes (across config changes).
    pub(crate) apps: AppAuth,
    pub(crate) pools: U,
    pub(crate) global: GlobalStats,
    /// The serving gate: while set, every request is answered 503 `NodeNotServing` with this
    /// reason (see [`Dataplane::set_not_serving`]). `gate_closed` mirrors it so that the hot
    /// path reads one relaxed boolean while the gate is open.
    /// Set once when the node begins to leave ([`Dataplane::begin_closing`]).
    pub(crate) closing: Arc<AtomicBool>,
    pub(crate) gate_closed: AtomicBool,
    pub(crate) gate_reason: ArcSwapOption<String>,
}

/// The data plane of one node. Cheap to clone; all clones share state.
pub struct Dataplane<U: Upstreams = Unconnected> {
    pub(crate) inner: Arc<Inner<U>>,
}

impl<U: Upstreams> Clone for Dataplane<U> {
    fn clone(&self) -> Self {
        Dataplane {
            inner: self.inner.clone(),
        }
    }
}

impl<U: Upstreams> std::fmt::Debug for Dataplane<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").finish_non_exhaustive()
    }
}

/// The outcome of [`Dataplane::decide`]: the request is either admitted for forwarding, or
/// answered by the gateway with an error.
pub struct Verdict<U: Upstreams = Unconnected> {
    pub(crate) target: Target<U>,
    pub(crate) rejection: Option<GatewayError>,
    /// Bytes of the request path taken by the group's base path.
    pub(crate) base_len: usize,
}

impl<U: Upstreams> std::fmt::Debug for Verdict<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdict")
            .field("api", &self.api())
            .field("rejection", &self.rejection)
            .finish()
    }
}

impl<U: Upstreams> Verdict<U> {
    /// Admitted: the request goes to its backend.
    pub fn is_admitted(&self) -> bool {
        self.rejection.is_none() && matches!(self.target, Target::Api(_))
    }

    /// Why the gateway answers the request itself.
    pub fn rejection(&self) -> Option<&GatewayError> {
        self.rejection.as_ref()
    }

    /// The group the request is attributed to: the matched API's, or for an unmatched request
    /// the group owning the most specific (host, base path) it fell in, if a single one does.
    pub fn group(&self) -> Option<&str> {
        match &self.target {
            Target::Api(api) => Some(&api.group.name),
            Target::Group(g) => Some(&g.name),
            Target::Nobody => None,
        }
    }

    /// The account owning the group the request is attributed to.
    pub fn account(&self) -> Option<&str> {
        match &self.target {
            Target::Api(api) => Some(&api.group.account),
            Target::Group(g) => Some(&g.account),
            Target::Nobody => None,
        }
    }

    /// The matched API's name.
    pub fn api(&self) -> Option<&str> {
        match &self.target {
            Target::Api(api) => Some(&api.name),
            _ => None,
        }
    }

    /// The API the request goes to, when it is admitted.
    #[inline]
    pub fn admitted_api(&self) -> Option<&Api<U>> {
        match (&self.target, &self.rejection) {
            (Target::Api(api), None) => Some(api),
            _ => None,
        }
    }

    /// Bytes of the request path taken by the group's base path: the backend gets the rest.
    #[inline]
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Where the response's bytes are counted: moved out of the verdict, not cloned, so that
    /// the request touches the route's shared reference count only once.
    #[inline]
    pub fn into_usage(self) -> UsageHandle<U> {
        UsageHandle(self.target)
    }

    /// Counts the response status in the metrics of the API (or group) the request resolved to.
    /// The server calls it when the response head is ready.
    #[inline]
    pub fn record_status(&self, dataplane: &Dataplane<U>, status: http::StatusCode) {
        let status = status.as_u16();
        match &self.target {
            Target::Api(api) => api.status.record(status),
            Target::Group(g) => g.unmatched_status.record(status),
            Target::Nobody => dataplane.inner.global.unrouted.record(status),
        }
    }
}

impl<U: Upstreams> Dataplane<U> {
    /// A data plane with default options for node `node_id`, with an empty configuration.
    pub fn new(node_id: u64) -> Self {
        Self::with_options(DataplaneOptions {
            node_id,
            ..Default::default()
        })
    }

    pub fn with_options(options: DataplaneOptions) -> Self {
        let pools = U::new(&options);
        let demand = DemandTracker::new(
            options.node_id,
            options.demand_window.as_nanos() as u64,
            options.stale_after.as_nanos() as u64,
            options.share_floor,
        );
        Dataplane {
            inner: Arc::new(Inner {
                clock: options.clock,
                burst: options.burst,
                snapshot: ArcSwap::from_pointee(Snapshot {
                    router: Router::default(),
                    instances: imbl::OrdMap::new(),
                }),
                loaded: Mutex::new(Loaded::default()),
                usage: Mutex::new(UsageRegistry::default()),
                usage_hour: AtomicU64::new(0),
                statuses: Mutex::new(Statuses::default()),
                latencies: Mutex::new(Latencies::default()),
                backends: Mutex::default(),
                backend_health: options.backend_health,
                demand: Mutex::new(demand),
                throttles: Mutex::new(Default::default()),
                n_nodes: AtomicUsize::new(1),
                request_ids: RequestIds::new(options.node_id),
                apps: AppAuth::new(Arc::new(signer::NonceCache::new(1 << 20))),
                pools,
                global: GlobalStats::default(),
                closing: Arc::new(AtomicBool::new(false)),
                gate_closed: AtomicBool::new(false),
                gate_reason: ArcSwapOption::empty(),
            }),
        }
    }

    /// Stops this node serving API traffic (`Some(reason)`: every request is answered 503
    /// with code `NodeNotServing` and the reason in its message, and counts no call), or lets
    /// it serve again (`None`). The caller decides: e.g. the node was removed from its cluster,
    /// or its configuration may be stale.
    pub fn set_not_serving(&self, reason: Option<String>) {
        let closed = reason.is_some();
        self.inner.gate_reason.store(reason.map(Arc::new));
        self.inner.gate_closed.store(closed, Relaxed);
    }

    /// Why this node does not serve API traffic, if it does not.
    pub fn not_serving(&self) -> Option<Arc<String>> {
        self.inner.gate_reason.load_full()
    }

    /// Now, on this data plane's clock (what [`apply_peer_demand`](Self::apply_peer_demand)
    /// expects).
    pub fn now(&self) -> Nanos {
        self.inner.clock.now()
    }

    /// The next request id (unique across the cluster: it carries the node id).
    #[inline]
    pub fn next_request_id(&self) -> RequestId {
        self.inner.request_ids.next()
    }

    /// The node is going away: from now on every HTTP/1 response says `Connection: close`, so
    /// that keep-alive clients move to another node before the listener closes (see
    /// [`Dataplane::closing_flag`]). There is no way back: a node leaves once.
    pub fn begin_closing(&self) {
        self.inner.closing.store(true, Relaxed);
    }

    /// The flag [`Dataplane::begin_closing`] sets, for the servers' connections to read.
    pub fn closing_flag(&self) -> Arc<AtomicBool> {
        self.inner.closing.clone()
    }

    /// Counts a client connection opened (`true`) or closed, for the `open_connections` gauge.
    pub fn count_connection(&self, opened: bool) {
        let open = &self.inner.global.open_connections;
        if opened {
            open.fetch_add(1, Relaxed);
        } else {
            open.fetch_sub(1, Relaxed);
        }
    }

    /// Counts a tunnel (an upgraded connection) opened (`true`) or closed, for the
    /// `open_tunnels` gauge and the `tunnels_total` counter.
    pub fn count_tunnel(&self, opened: bool) {
        let global = &self.inner.global;
        if opened {
            global.open_tunnels.fetch_add(1, Relaxed);
            global.tunnels.fetch_add(1, Relaxed);
        } else {
            global.open_tunnels.fetch_sub(1, Relaxed);
        }
    }

    /// Counts the status of a request refused before it could be routed (e.g. an invalid
    /// path), with the unrouted requests.
    pub fn record_unrouted_status(&self, status: http::StatusCode) {
        self.inner.global.unrouted.record(status.as_u16());
    }

    /// Admission on this data plane's clock; see [`decide_at`](Self::decide_at).
    #[inline]
    pub fn decide(
        &self,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &str,
    ) -> Verdict<U> {
        self.decide_with(
            host,
            stage,
            method,
            path,
            None,
            None,
            self.inner.clock.now(),
        )
    }

    /// The decision half of the hot path: resolve the API, count the call, check the account
    /// and the instance limiter. Takes no lock. `host` may carry a port.
    #[inline]
    pub fn decide_at(
        &self,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &str,
        now: Nanos,
    ) -> Verdict<U> {
        self.decide_with(host, stage, method, path, None, None, now)
    }

    /// As [`decide_at`](Self::decide_at); a request already known to be refused (`early`, e.g.
    /// a body over the limit) is still resolved and counted, but takes no limiter slot.
    // The hot path's inputs, passed as they are rather than gathered into a struct per request.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_with(
        &self,
        host: Option<&str>,
        stage: Stage,
        method: &Method,
        path: &str,
        early: Option<GatewayError>,
        access: Option<&Access<'_>>,
        now: Nanos,
    ) -> Verdict<U> {
        if self.inner.gate_closed.load(Relaxed)
            && let Some(reason) = self.inner.gate_reason.load_full()
        {
            return Verdict {
                target: Target::Nobody,
                rejection: Some(GatewayError::NodeNotServing { reason }),
                base_len: 0,
            };
        }
        let snapshot = self.inner.snapshot.load();
        match snapshot.router.lookup(host, stage, method, path) {
            Lookup::Api {
                value: api,
                path: rest,
            } => {
                let wall_ms = self.note_arrival();
                api.usage.add_call();
                let group = &api.group;
                let rejection = if early.is_some() {
                    early
                } else if group.suspended.load(Relaxed) {
                    Some(GatewayError::AccountSuspended {
                        account: group.account.clone(),
                    })
                } else {
                    self.admit(api, access, now, wall_ms).err()
                };
                Verdict {
                    target: Target::Api(api.clone()),
                    rejection,
                    // `rest` is a suffix of `path`, or "/" for the base path itself.
                    base_len: if path.ends_with(rest) {
                        path.len() - rest.len()
                    } else {
                        path.len()
                    },
                }
            }
            Lookup::Unmatched { owner } => {
                let target = match owner {
                    Some(g) => {
                        self.note_arrival();
                        g.unmatched_usage.add_call();
                        Target::Group(g.clone())
                    }
                    None => Target::Nobody,
                };
                let rejection = early.unwrap_or_else(|| GatewayError::NotFound {
                    method: method.to_string(),
                    path: path.to_string(),
                    stage: stage.as_str(),
                });
                Verdict {
                    target,
                    rejection: Some(rejection),
                    base_len: 0,
                }
            }
        }
    }

    /// Access control, then the throttling policy, then the instance's limiter: each refusal
    /// leaves the later limits' quotas alone. `wall_ms`: the wall clock read at the arrival.
    #[inline]
    fn admit(
        &self,
        api: &Api<U>,
        access: Option<&Access<'_>>,
        now: Nanos,
        wall_ms: u64,
    ) -> Result<(), GatewayError> {
        let app = match access {
            Some(a) => a
                .check(api, &self.inner.apps)
                .map_err(GatewayError::Denied)?,
            None => None,
        };
        if let Some(t) = &api.throttle {
            t.admit(app.as_deref(), now, || wall_ms)?;
        }
        let group = &api.group;
        group
            .instance
            .admit(now)
            .map_err(|wait| GatewayError::Throttled {
                instance: group.instance.name.clone(),
                retry_after_secs: wait.div_ceil(1_000_000_000).max(1),
            })
    }

    /// Measures this node's offered rate per instance (over the last one or two report periods),
    /// updates this node's shares, and returns the report to send to every peer. Call it every
    /// ~100 ms, also when there are no peers: it is what measures this node's own demand.
    pub fn demand_report(&self) -> DemandReport {
        let now = self.now();
        let snapshot = self.inner.snapshot.load();
        let mut demand = lock(&self.inner.demand);
        let mut throttles = lock(&self.inner.throttles);
        throttles.sweep();
        let mut report = demand.sample(now, readings(&snapshot, &throttles));
        let live = demand.live_nodes(now);
        let round = self.round(demand.self_id(), &live, now);
        let (leases, grants) = throttles.lease_round(&round, |key| demand.own_demand(key));
        report.leases = leases;
        report.grants = grants;
        report.incarnation = throttles.incarnation;
        Self::apply_shares(&demand, &throttles, &snapshot, now);
        report
    }

    /// An early report, if calls have moved to or away from this node at an instance or a
    /// per-second limit by more than chance explains (see `crate::moves`): the moved rates,
    /// this node's shares set from them at once, and the report for the peers, so that theirs
    /// follow. The report loop asks every ~10 ms. Only demand: leases go with the periodic
    /// [`demand_report`](Self::demand_report).
    pub fn demand_report_early(&self) -> Option<DemandReport> {
        let now = self.now();
        let snapshot = self.inner.snapshot.load();
        let mut demand = lock(&self.inner.demand);
        let throttles = lock(&self.inner.throttles);
        let read = |key: &str| read_counter(&snapshot, &throttles, key);
        let mut report = demand.sample_early(now, read)?;
        report.incarnation = throttles.incarnation;
        Self::apply_shares(&demand, &throttles, &snapshot, now);
        Some(report)
    }

    fn round<'a>(&self, self_id: u64, live: &'a [u64], now: Nanos) -> crate::throttle::Round<'a> {
        crate::throttle::Round {
            self_id,
            live,
            mono_ms: now / 1_000_000,
            wall_ms: self.inner.clock.now_ms(),
        }
    }

    /// Records a peer's report, received at `now` (this data plane's clock, see
    /// [`now`](Self::now)), and updates this node's shares. Reports from nodes that are not
    /// serving are ignored.
    pub fn apply_peer_demand(&self, node_id: u64, report: &DemandReport, now: Nanos) {
        let mut demand = lock(&self.inner.demand);
        let back = demand.record_peer(node_id, report, now);
        let mut throttles = lock(&self.inner.throttles);
        let snapshot = self.inner.snapshot.load();
        if back {
            demand.measure_afresh(now, readings(&snapshot, &throttles));
        }
        throttles.note_peer(node_id, report.incarnation);
        if !report.leases.is_empty() || !report.grants.is_empty() {
            let live = demand.live_nodes(now);
            let round = self.round(demand.self_id(), &live, now);
            throttles.on_peer(&round, node_id, &report.leases, &report.grants);
        }
        Self::apply_shares(&demand, &throttles, &snapshot, now);
    }

    /// A peer's process is known to be gone (a demand report to it was refused): it stops
    /// counting as serving now, and every share is recomputed without it, rather than after
    /// [`crate::shares::GONE_AFTER`] of silence. It counts again when it reports.
    pub fn peer_down(&self, node_id: u64) {
        self.change_serving(|demand, _| demand.mark_down(node_id));
    }

    /// Which nodes serve traffic (this one is always counted). Changes every instance's share.
    pub fn set_serving_nodes(&self, ids: &[u64], self_id: u64) {
        self.change_serving(|demand, now| {
            demand.set_serving(ids, self_id, now);
            false
        });
    }

    /// Changes who counts as serving, then every share follows. `change` says whether calls
    /// are about to move (a peer went down): then this node's rates are measured afresh.
    fn change_serving(&self, change: impl FnOnce(&mut DemandTracker, Nanos) -> bool) {
        let mut demand = lock(&self.inner.demand);
        let now = self.now();
        let moving = change(&mut demand, now);
        self.inner.n_nodes.store(demand.n_nodes(now), Relaxed);
        let throttles = lock(&self.inner.throttles);
        let snapshot = self.inner.snapshot.load();
        if moving {
            demand.measure_afresh(now, readings(&snapshot, &throttles));
        }
        Self::apply_shares(&demand, &throttles, &snapshot, now);
    }

    /// Sets the shares of `instances` (new ones, or ones whose ceiling changed) from what is
    /// known of demand.
    pub(crate) fn update_shares<'a>(&self, instances: impl IntoIterator<Item = &'a InstanceState>) {
        let now = self.now();
        let demand = lock(&self.inner.demand);
        let mut scratch = Vec::new();
        for instance in instances {
            let ceiling = f64::from(instance.ceiling_and_share().0);
            instance.set_share(
                demand.share_for(&instance.name, ceiling, now, &mut scratch),
                now,
            );
        }
    }

    /// Sets the shares of the per-second limits made or changed by the last compile.
    pub(crate) fn update_throttle_shares(&self) {
        let now = self.now();
        let demand = lock(&self.inner.demand);
        let changed = lock(&self.inner.throttles).take_changed();
        let mut scratch = Vec::new();
        for cell in changed {
            set_throttle_share(&demand, &cell, now, &mut scratch);
        }
    }

    fn apply_shares(
        demand: &DemandTracker,
        throttles: &crate::throttle::Registry,
        snapshot: &Snapshot<U>,
        now: Nanos,
    ) {
        let mut scratch = Vec::new();
        for instance in snapshot.instances.values() {
            let ceiling = f64::from(instance.ceiling_and_share().0);
            instance.set_share(
                demand.share_for(&instance.name, ceiling, now, &mut scratch),
                now,
            );
        }
        // Per-second policy limits follow demand the same way.
        for cell in throttles.cells.values() {
            if cell.unit == crate::config::ThrottleUnit::Second {
                set_throttle_share(demand, cell, now, &mut scratch);
            }
        }
    }

    /// Each instance's ceiling, this node's share and what its limiter admits, by instance name.
    pub fn instance_shares(&self) -> Vec<InstanceShare> {
        self.shares_of(&self.inner.snapshot.load())
    }

    fn shares_of(&self, snapshot: &Snapshot<U>) -> Vec<InstanceShare> {
        let demand = lock(&self.inner.demand);
        snapshot
            .instances
            .values()
            .map(|i| {
                let (ceiling_rps, share) = i.ceiling_and_share();
                InstanceShare {
                    instance: i.name.to_string(),
                    ceiling_rps,
                    share,
                    limit_rps: i.limiter.rate(),
                    offered_rps: demand.own_demand(&i.name),
                }
            })
            .collect()
    }

    /// Takes and zeroes the usage counted since the previous call, whatever hour it arrived
    /// in. Counts are never lost to a concurrent request: they land in this drain or the next.
    pub fn drain_usage(&self) -> Vec<UsageDelta> {
        lock(&self.inner.usage).drain()
    }

    /// Takes and zeroes the usage counted since the previous call, by the hour the calls
    /// arrived in on this data plane's clock (see [`UsageDrain`]).
    pub fn drain_usage_dated(&self) -> UsageDrain {
        let hour = self.inner.clock.now_ms() / HOUR_MS;
        let mut registry = lock(&self.inner.usage);
        let drained = registry.drain_dated(hour);
        self.inner.usage_hour.store(registry.hour, Relaxed);
        drained
    }

    /// A call arrives: if the clock has entered a later hour than the counters count, they
    /// move on to it first, so the call is dated the hour it arrived in. One read of the wall
    /// clock per call (returned, for the throttling windows); the lock only once an hour.
    #[inline]
    fn note_arrival(&self) -> u64 {
        let wall_ms = self.inner.clock.now_ms();
        let hour = wall_ms / HOUR_MS;
        if hour > self.inner.usage_hour.load(Relaxed) {
            self.roll_usage(hour);
        }
        wall_ms
    }

    #[cold]
    fn roll_usage(&self, hour: u64) {
        let mut registry = lock(&self.inner.usage);
        registry.roll(hour);
        self.inner.usage_hour.store(registry.hour, Relaxed);
    }

    /// Each instance's request counters and limits, the numbers `/metrics` shows for it
    /// ([`Self::render_metrics`]) without rendering text: a walk of the instances and of the
    /// route counters. Read by the console's live chart, on every node about once a second.
    pub fn instance_traffic(&self) -> Vec<InstanceTraffic> {
        let snapshot = self.inner.snapshot.load();
        let shares = self.shares_of(&snapshot);
        let views = instance_views(&snapshot, &shares);
        // Read under the lock (taken by compiles and scrapes, not by requests), nothing copied.
        // Released routes are left for the scrape's sweep, so both show the same counts.
        let statuses = lock(&self.inner.statuses);
        let routes: Vec<(&str, &str, &StatusCounters)> = statuses
            .iter()
            .map(|((i, a), c)| (i.as_str(), a.as_str(), &**c))
            .collect();
        metrics::traffic(&views, &routes)
    }

    /// Appends the data plane's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let snapshot = self.inner.snapshot.load();
        let shares = self.shares_of(&snapshot);
        let views = instance_views(&snapshot, &shares);
        // Copied out under the lock (Arc clones), rendered without it.
        let statuses: Vec<((String, String), Arc<StatusCounters>)> = {
            let mut statuses = lock(&self.inner.statuses);
            // The sweep for counters that an update could not release because a request in
            // flight still held them: a scrape walks them all anyway. The last counts of a
            // released route are rendered once more.
            let mut all = Vec::with_capacity(statuses.len());
            statuses.retain(|k, c| {
                let used = Arc::strong_count(c) > 1;
                all.push((k.clone(), c.clone()));
                used
            });
            all
        };
        self.inner.pools.retain_used();
        let mut routes: Vec<(&str, &str, &StatusCounters)> = statuses
            .iter()
            .map(|((i, a), c)| (i.as_str(), a.as_str(), &**c))
            .collect();
        routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let latencies: Vec<((String, String, Stage), Arc<Histogram>)> = {
            let mut latencies = lock(&self.inner.latencies);
            let mut all = Vec::with_capacity(latencies.len());
            latencies.retain(|k, h| {
                all.push((k.clone(), h.clone()));
                Arc::strong_count(h) > 1
            });
            all
        };
        let mut per_api: Vec<(&str, &str, &str, &Histogram)> = latencies
            .iter()
            .map(|((g, a, s), h)| (g.as_str(), a.as_str(), s.as_str(), &**h))
            .collect();
        per_api.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        metrics::render(out, &views, &routes, &per_api, &self.inner.global);
        crate::spread::render(out, &self.inner.backends);
        lock(&self.inner.throttles).render_metrics(out);
    }
}

/// Sets a per-second limit's rate on this node to its share of the limit.
fn set_throttle_share(
    demand: &DemandTracker,
    cell: &crate::throttle::Cell,
    now: Nanos,
    scratch: &mut Vec<f64>,
) {
    let limit = cell.limit.load(Relaxed) as f64;
    let share = demand.share_for(&cell.key, limit, now, scratch);
    cell.gcra.set_rate_at(limit * share, now);
}

/// The demand counter `key` (an instance's name, or a policy counter's key).
fn read_counter<'a, U: Upstreams>(
    snapshot: &'a Snapshot<U>,
    throttles: &'a crate::throttle::Registry,
    key: &str,
) -> Option<Reading<'a>> {
    if key.starts_with(crate::throttle::KEY_PREFIX) {
        throttles.cells.get(key).map(|c| c.reading())
    } else {
        snapshot.instances.get(key).map(|i| i.reading())
    }
}

/// The demand counters of every instance and policy counter: what demand is measured from.
fn readings<'a, U: Upstreams>(
    snapshot: &'a Snapshot<U>,
    throttles: &'a crate::throttle::Registry,
) -> impl Iterator<Item = Reading<'a>> + 'a {
    snapshot
        .instances
        .values()
        .map(|i| i.reading())
        .chain(throttles.cells.values().map(|c| c.reading()))
}

/// Each instance of `snapshot` with its share, as the metrics read them.
fn instance_views<'a, U: Upstreams>(
    snapshot: &'a Snapshot<U>,
    shares: &'a [InstanceShare],
) -> Vec<InstanceView<'a>> {
    snapshot
        .instances
        .values()
        .zip(shares)
        .map(|(i, s)| InstanceView {
            name: &i.name,
            ceiling_rps: s.ceiling_rps,
            share: s.share,
            limit_rps: s.limit_rps,
            offered_rps: s.offered_rps,
            stats: &i.stats,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_gate_answers_every_request_until_it_opens() {
        let dp = Dataplane::new(1);
        let code = |dp: &Dataplane| {
            let v = dp.decide(Some("a.example"), Stage::Release, &Method::GET, "/x");
            v.rejection()
                .map(|e| (e.status().as_u16(), e.code(), e.to_string()))
        };
        assert_eq!(code(&dp).unwrap().1, "ApiNotFound");
        dp.set_not_serving(Some("node 4 was removed from the cluster".into()));
        let (status, c, message) = code(&dp).unwrap();
        assert_eq!((status, c), (503, "NodeNotServing"));
        assert!(message.contains("node 4 was removed"), "{message}");
        assert_eq!(
            dp.not_serving().as_deref().map(String::as_str),
            Some("node 4 was removed from the cluster")
        );
        dp.set_not_serving(None);
        assert_eq!(code(&dp).unwrap().1, "ApiNotFound");
        assert!(dp.not_serving().is_none());
    }
}
