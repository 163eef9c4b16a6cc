//! Raft for the gateway: the replicated log and state machine, and the peer network.
//!
//! This crate owns everything between an admin call and the replicated [`model::State`]:
//! - [`store`]: the openraft log store and state machine on sled, flushed before acknowledging;
//!   the history trees read a page at a time ([`History`]), snapshot files streamed in frames,
//!   and the [`Publication`] of each applied state with what changed;
//! - [`network`]: openraft's messages over tonic gRPC, one long-lived channel per peer (and
//!   separate ones for demand reports);
//! - [`service`]: the peer gRPC service that receives them;
//! - [`node`]: a running node: bootstrap (initialise once, or join), writes forwarded to the
//!   leader under a request id that the state machine applies at most once, membership
//!   changes, status, and the published state that readers watch.

pub mod network;
pub mod node;
pub mod service;
// openraft's trait methods return its `StorageError` (over 200 bytes); the store's helpers
// return the same type rather than boxing it only to unbox it again at the trait boundary.
#[allow(clippy::result_large_err)]
pub mod store;
mod types;

pub use model::{Clock, SystemClock};
pub use node::{ClusterError, MemberStatus, Node, NodeConfig, NodeStatus};
pub use store::history::{History, HistoryError, Page};
pub use store::{Changes, Publication};
pub use types::{NodeId, Response, TypeConfig};
