//! The data plane's decisions: everything the gateway decides about a request before it talks
//! to a backend, with no I/O, no async runtime and no HTTP server or client in it (the
//! `upstream` crate talks to backends, the `dataplane` crate serves clients).
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
//! - **The canonical request path** ([`canonical_path`]): the one spelling of a path that
//!   routing, the access checks and the forwarded request use; the [`head`] checks before it
//!   (one valid host, `Content-Length` lines, header names with underscores).
//! - **The account gate**: APIs of suspended accounts answer 403.
//! - **Access checks**: IP access control and signed app calls ([`IpAcl`], [`AppCredential`]).
//! - **Instance limiters and their cluster shares**: each instance's cluster-wide ceiling C is
//!   enforced on this node as `C * w` by a lock-free GCRA limiter ([`GcraLimiter`]) whose rate
//!   changes in place; the share `w` follows the demand that nodes report to each other
//!   ([`Dataplane::demand_report`], [`Dataplane::apply_peer_demand`], [`share`]).
//! - **Throttling policies**: the API, user and app limits of the policy bound to an API on a
//!   stage, checked after access control and before the instance ceiling, each cluster-wide:
//!   per-second limits as demand-following shares like the ceilings, minute, hour and day
//!   limits as leases of the window's budget ([`budget`](crate::budget) explains the design).
//! - **Usage counters** for billing, per (account, instance, API, region)
//!   ([`Dataplane::drain_usage`]), and **metrics** ([`Dataplane::render_metrics`], and the
//!   per-instance request counters without the text, [`Dataplane::instance_traffic`]).
//! - **Several backends per API** ([`spread`], [`health`]): a weighted choice per request,
//!   passive health (taken out after failures in a row, back on probation), per node.
//! - **Trace context** ([`trace`]): the W3C `traceparent` continued or started per request.
//! - **The wire names**: the `X-Ca-*` headers and the byte-level header helpers ([`wire`]).
//!
//! A compiled route holds its backend's connection pool, of a type this crate does not know:
//! [`Dataplane`] is generic over the [`Upstreams`] that keep the pools ([`Unconnected`] when
//! deciding alone: tests, benchmarks, fuzzing), so the request path looks nothing up and
//! dispatches nothing dynamically.
//!
//! Counters on the hot path are kept per server thread ([`per_thread`]), so that threads never
//! write each other's cache lines. Time comes from a [`Clock`], so that every decision can be
//! run on a [`FakeClock`].
//!
//! # Layout
//!
//! Lower modules first; nothing imports a module above it.
//!
//! - [`per_thread`], [`wire`], `limiter`, [`path`], [`head`]: leaves. Time comes from `model`'s [`Clock`].
//! - `error`, `config`, `access`, [`request_id`], `metrics`, `usage`, `shares`, `router`:
//!   the checks and counters a decision uses.
//! - `budget`: window leases (pure); `throttle`: a policy's counters, compiled.
//! - `instance`: an instance's limiter and counters.
//! - `options`: a data plane's tunables; `backend`: backend addresses and the [`Upstreams`]
//!   seam; [`health`]: a backend's passive health and the weighted round-robin (pure);
//!   [`spread`]: an API's backends compiled, picked by weight and health.
//! - `compiled`: groups and APIs compiled, the snapshot the hot path reads;
//!   `loaded`: what is loaded, for incremental updates.
//! - `plane`: [`Dataplane`], its state and counters, and the decision itself
//!   ([`Dataplane::decide`]).
//! - `publish`: compiling a change into the next snapshot.

mod access;
mod backend;
pub mod budget;
mod compiled;
mod config;
mod error;
pub mod head;
pub mod health;
mod instance;
mod limiter;
mod loaded;
mod metrics;
mod moves;
mod options;
pub mod path;
pub mod per_thread;
mod plane;
mod publish;
pub mod request_id;
mod router;
mod shares;
pub mod spread;
mod throttle;
pub mod trace;
mod usage;
pub mod wire;

pub use access::{AppCredential, Denied, IpAcl};
pub use backend::{Backend, BackendError, DEFAULT_BACKEND_TIMEOUT, Unconnected, Upstreams};
pub use budget::{LEASE_HORIZON_MS, LEASE_TTL_MS, LeaseGrant, LeaseUse, RECLAIM_AFTER_MS};
pub use catalog::SHARED_INSTANCE;
pub use compiled::{Api, UsageHandle};
pub use config::{
    ConfigUpdate, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, IpRules,
    ThrottleConfig, ThrottleUnit,
};
pub use error::{GatewayError, ThrottleScope};
pub use head::HostError;
pub use limiter::{DEFAULT_BURST, GcraLimiter};
pub use metrics::InstanceTraffic;
pub use model::clock::{Clock, FakeClock, Nanos, SystemClock};
pub use model::{Stage, UsageDelta};
pub use options::DataplaneOptions;
pub use path::{PathError, canonical_path};
pub use plane::{Access, Dataplane, InstanceShare, PublishReport, Verdict};
pub use router::RouteError;
pub use shares::{DEFAULT_SHARE_FLOOR, DemandReport, GONE_AFTER, InstanceDemand, share, shares};
pub use spread::{Outcome, Spread};
pub use usage::{HOUR_MS, UNMATCHED_API, UsageDrain};
