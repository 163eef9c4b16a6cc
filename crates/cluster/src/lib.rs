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
//!   changes, status, and the published state that readers watch; and the watcher that decides
//!   whether the node may serve ([`Node::not_serving`]: removed, or out of touch with a
//!   quorum);
//! - [`traffic`]: every member's request counters per instance, for the console's live chart
//!   ([`Node::gather_traffic`]);
//! - [`watch`]: a stream held open to every peer, whose break says at once that the peer's
//!   process is gone ([`Node::watch_peers`]);
//! - `abstain`: a voter that lost its log grants no vote until it holds what was committed;
//! - `prevote`: a voter stands for election only when a majority has lost the leader too;
//! - `standing`: the cluster id (in the data dir, on every peer message), the time of the
//!   last contact with a quorum, and a leader's removal announcement.

mod abstain;
pub mod network;
pub mod node;
mod prevote;
pub mod service;
mod standing;
// openraft's trait methods return its `StorageError` (over 200 bytes); the store's helpers
// return the same type rather than boxing it only to unbox it again at the trait boundary.
#[allow(clippy::result_large_err)]
pub mod store;
pub mod traffic;
mod types;
pub mod watch;

pub use model::{Clock, SystemClock};
pub use node::{ClusterError, MemberStatus, Node, NodeConfig, NodeStatus, ServingHook};
pub use standing::check_cluster_id;
pub use store::history::{History, HistoryError, Page};
pub use store::{Changes, Publication};
pub use traffic::{MemberTraffic, TrafficSource};
pub use types::{NodeId, Response, TypeConfig};
