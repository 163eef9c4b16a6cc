//! The gateway's backend side: everything between an admitted request and its backend.
//!
//! This crate owns:
//!
//! - **Connection pools** per backend authority ([`BackendPools`], the data plane's
//!   [`decide::Upstreams`]): the compiled routes hold their backend's [`HostPool`], so that the
//!   request path looks nothing up.
//! - **The direct exchange**: a bodiless request's head written to a pooled socket and the
//!   response parsed off it with `httparse`, from the client connection's own task (`direct`).
//! - **Forwarding** ([`forward`]): the forwarding headers, and requests with a body through
//!   hyper's HTTP/1.1 client, streaming both ways.
//! - **Upgrades** (WebSocket and other `Upgrade:` protocols): a 101 hands the backend
//!   connection to the server, which relays it ([`BackendUpgrade`]).
//! - **Several backends** ([`forward_spread`]): the backend [`decide::Spread`] picks, its
//!   health told how the request went, an idempotent request retried once on another backend
//!   when the first could not be connected.
//! - **The bodies**: the request body a handler gets ([`RequestBody`]) and the response body,
//!   which counts the bytes it sends through a [`decide::UsageHandle`] ([`ResponseBody`]).
//! - **The answers the gateway makes itself** ([`error_response`]).
//! - **A small HTTP/1 client** ([`client`]) for the gateway's own calls: webhooks and
//!   `gatewayctl call` (one request per connection, the answer read whole).
//!
//! It decides nothing: which backend, and whether at all, is the `decide` crate's.
//!
//! # Layout
//!
//! Lower modules first; nothing imports a module above it.
//!
//! - `limited`: the request body with its size limit (what pooled connections carry).
//! - `pool`: the pools and their connections.
//! - `direct`: the lean exchange over a pooled socket.
//! - `body`: request and response bodies.
//! - `upgrade`: HTTP/1.1 upgrades (WebSocket): the request over a connection of its own, and
//!   the backend connection of a 101 handed to the server.
//! - `respond`, `proxy`: the gateway's own answers, and forwarding.
//! - `spread`: forwarding to one of an API's backends, with passive health reports and one
//!   retry on another backend after a connect failure.
//! - [`client`]: stands apart; uses none of the above.

mod body;
pub mod client;
mod direct;
mod limited;
mod pool;
mod proxy;
mod respond;
mod spread;
mod upgrade;

pub use body::{Checkout, OnEnd, RequestBody, ResponseBody};
pub use direct::HeaderBlock;
#[cfg(feature = "fuzzing")]
pub use direct::fuzzing;
pub use limited::{BodyTooLarge, BoxError, ClientBodyError};
pub use pool::{BackendPools, HostPool};
pub use proxy::{Backend, Client, ForwardError, forward};
pub use respond::error_response;
pub use spread::{Spread, Spreaded, forward_spread};
pub use upgrade::{BackendUpgrade, UpgradedBackend};

/// The data plane with its backends connected.
pub type Dataplane = decide::Dataplane<BackendPools>;
/// A decision of [`Dataplane`].
pub type Verdict = decide::Verdict<BackendPools>;
