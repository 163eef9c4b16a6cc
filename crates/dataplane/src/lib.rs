//! The gateway's data plane: everything between a client's request and its backend. It is
//! built in three layers, each using only those below it:
//!
//! 1. `decide`: the decisions (routing, account gate, access, limiters and shares, usage and
//!    metrics), with no I/O; its items are re-exported here.
//! 2. `upstream`: the backend side (pools, the direct exchange, forwarding, bodies).
//! 3. this crate: the servers (listeners, server threads, the lean HTTP/1 loop, hyper, the ops
//!    endpoint).
//!
//! Together they own:
//!
//! - **Routing and publishing**: plain-data configuration, built by the caller from the
//!   replicated state, compiled into an immutable snapshot (hosts, base paths, stages, methods,
//!   `matchit` path patterns) swapped in through an `ArcSwap`, so the request path takes no
//!   lock and in-flight requests keep the snapshot they started with. A [`GroupConfig`] is
//!   self-contained (its ACLs, app grants and suspension travel with it), so a change costs
//!   what changed: [`Dataplane::update`] takes a [`ConfigUpdate`] (instances, groups and apps
//!   upserted or removed by name), recompiles only the named groups and puts their router
//!   buckets into a persistent map (`imbl`) that the new snapshot shares with the previous
//!   one; an app change edits only the shared key map of the signature check, and a
//!   suspension flips a flag in place. [`Dataplane::publish`] takes a whole
//!   [`DataplaneConfig`] (startup, snapshots) and applies its difference from what is loaded
//!   the same way. Lookup does not walk the groups: the request path's prefixes are looked up
//!   by hash (a few lookups, with 5 groups or 5,000).
//! - **The account gate**: APIs of suspended accounts answer 403.
//! - **Instance limiters and their cluster shares**: each instance's cluster-wide ceiling C is
//!   enforced on this node as `C * w` by a lock-free GCRA limiter ([`GcraLimiter`]) whose rate
//!   changes in place; the share `w` follows the demand that nodes report to each other
//!   ([`Dataplane::demand_report`], [`Dataplane::apply_peer_demand`], [`share`]).
//! - **Usage counters** for billing, per (account, instance, API, region)
//!   ([`Dataplane::drain_usage`]), and **metrics** ([`Dataplane::render_metrics`], and the
//!   per-instance request counters without the text, [`Dataplane::instance_traffic`]).
//! - **The servers**: the reverse proxy, on a thread and runtime per core fed by one accepting
//!   thread ([`serve_threads`]) or on the caller's runtime ([`serve`]), and the ops endpoint
//!   ([`serve_ops`]). Bodiless requests on plain-text connections take a lean HTTP/1 path on
//!   both legs (`h1`, `direct`), with no header map for the backend: the request head is
//!   written from the client's headers with the forwarding rules applied on the way, and the
//!   backend's header lines go on to the client as they were read. Requests with a body,
//!   HTTP/2 and TLS are served by hyper.
//!
//! It does not know how configuration is replicated, how demand reports travel between nodes,
//! or where usage goes: the caller wires those (see the `gatewayd` binary).
//!
//! The hot path: accept -> parse head -> resolve -> count the call -> account gate -> access
//! checks -> instance limiter -> proxy over a pooled connection -> count bytes out -> respond.
//! Counters on it are kept per server thread (`per_thread`), so that threads never write each
//! other's cache lines.
//!
//! # Layout
//!
//! Lower modules first; nothing imports a module above it.
//!
//! - `access_log`: the access log (thread-local batches, one writer thread, rotation);
//! - `spans`: request spans handed to a tracing exporter, and the per-request hooks.
//! - `conn`: a client connection (limits, what a handler knows of it, the connection cap,
//!   where connections come from); `sideline`: work polled beside a connection.
//! - `tunnel`: upgraded connections (WebSocket), relayed to their backend after the 101.
//! - `h1`: the lean HTTP/1 loop for bodiless requests on plain-text connections.
//! - `server`: one connection (lean loop, then hyper), the request handler, accept loops.
//! - `threads`: a server thread and runtime per core, fed by one accepting thread.
//! - `ops`: the ops endpoint.

mod access_log;
mod conn;
mod h1;
mod ops;
mod server;
mod sideline;
mod spans;
mod threads;
mod tunnel;

pub use access_log::{
    AccessLog, AccessLogSettings, AccessLogTarget, AccessLogWriter, Arrived, Record, Routed, Sent,
};
pub use conn::ServerLimits;
pub use decide::health::HealthPolicy;
pub use decide::trace::TraceContext;
pub use decide::wire::{
    THROTTLED_MESSAGE, X_CA_ERROR_CODE, X_CA_ERROR_MESSAGE, X_CA_REQUEST_ID, X_CA_STAGE,
};
pub use decide::{
    AppCredential, ConfigUpdate, DEFAULT_BURST, DEFAULT_SHARE_FLOOR, DataplaneConfig,
    DataplaneOptions, DemandReport, Denied, DeployedApi, FakeClock, GONE_AFTER, GatewayError,
    GcraLimiter, GroupConfig, InstanceConfig, InstanceDemand, InstanceShare, InstanceTraffic,
    IpAcl, IpRules, Nanos, PublishReport, RouteError, SHARED_INSTANCE, Stage, SystemClock,
    ThrottleConfig, ThrottleScope, ThrottleUnit, UNMATCHED_API, UsageDelta, UsageDrain, share,
    shares,
};
pub use decide::{BackendError, Clock};
pub use ops::{ExtraMetrics, OpsHooks, serve_ops};
pub use server::{serve, serve_tls};
pub use spans::{RequestHooks, RequestSpan, RequestSpans};
pub use threads::{ServerThreads, bind_listener, serve_threads};
pub use upstream::{Dataplane, Verdict};
