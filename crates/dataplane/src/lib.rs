//! The gateway's data plane: everything between a client's request and its backend.
//!
//! This crate owns:
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
//!   ([`Dataplane::drain_usage`]), and **metrics** ([`Dataplane::render_metrics`]).
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
//! - `config`: the plain-data configuration ([`DataplaneConfig`], [`GroupConfig`],
//!   [`ConfigUpdate`]).
//! - `publish`: what is loaded, and compiling a change into the next snapshot.
//! - `router`: the persistent (host, base path) -> bucket map and the request lookup.
//! - `plane`: [`Dataplane`], its snapshot and counters, and the decision half of the hot
//!   path ([`Dataplane::decide`]).
//! - `access`, `instance`, `limiter`, `shares`, `usage`, `metrics`, `per_thread`: the checks
//!   and counters the decision uses.
//! - `server`, `threads`, `h1`, `direct`, `proxy`, `pool`, `body`, `ops`: the servers and the
//!   backend side.

mod access;
mod body;
mod clock;
mod config;
mod direct;
mod error;
mod h1;
mod instance;
mod limiter;
mod metrics;
mod ops;
mod per_thread;
mod plane;
mod pool;
mod proxy;
mod publish;
mod request_id;
mod router;
mod server;
mod shares;
mod sideline;
mod threads;
mod usage;

pub use access::{AppCredential, Denied, IpAcl};
pub use catalog::SHARED_INSTANCE;
pub use clock::{Clock, FakeClock, MonotonicClock, Nanos};
pub use config::{
    ConfigUpdate, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, IpRules, Stage,
    UnknownStage,
};
pub use error::{
    GatewayError, THROTTLED_MESSAGE, X_CA_ERROR_CODE, X_CA_ERROR_MESSAGE, X_CA_REQUEST_ID,
    X_CA_STAGE,
};
pub use limiter::{DEFAULT_BURST, GcraLimiter};
pub use ops::{ExtraMetrics, OpsHooks, serve_ops};
pub use plane::{Dataplane, DataplaneOptions, InstanceShare, PublishReport, Verdict};
pub use proxy::BackendError;
pub use router::RouteError;
pub use server::{ServerLimits, serve, serve_tls};
pub use shares::{DEFAULT_SHARE_FLOOR, DemandReport, GONE_AFTER, InstanceDemand, share, shares};
pub use threads::{ServerThreads, bind_listener, serve_threads};
pub use usage::{UNMATCHED_API, UsageDelta};
