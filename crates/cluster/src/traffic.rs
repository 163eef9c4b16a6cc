//! The console's live traffic: every member's request counters per instance, gathered when
//! asked.
//!
//! A node answers the peer call `InstanceTraffic` from the [`TrafficSource`] its data-plane
//! wiring sets once ([`crate::Node::set_traffic_source`]). [`crate::Node::gather_traffic`]
//! asks every member of the membership this node has applied at once, itself in process, each
//! within a timeout, and says for each member what it answered or why there is no answer: a
//! chart drawn from the members that answer is better than none while one is down.
//!
//! The calls go over connections of their own, as demand reports do: a member that stops
//! answering has its calls cancelled at every poll, and those resets must not count against
//! the connection that carries Raft. They carry the cluster id like every peer call, and a
//! reply from another cluster's node is refused rather than summed.

use crate::network::Channels;
use crate::standing::Standing;
use crate::types::NodeId;
use proto::peer::{InstanceCounters, InstanceTrafficReply, InstanceTrafficRequest};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads this node's counters per instance; set by the data-plane wiring.
pub type TrafficSource = Box<dyn Fn() -> Vec<InstanceCounters> + Send + Sync>;

/// One member's answer to [`crate::Node::gather_traffic`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemberTraffic {
    pub node_id: NodeId,
    /// Its counters, or why they could not be had (unreachable, no answer in time, refused).
    pub reply: Result<InstanceTrafficReply, String>,
}

/// A node's side of the live traffic: its counter source and the connections it asks on.
pub(crate) struct Traffic {
    source: OnceLock<TrafficSource>,
    /// When this process started counting (its counters start from zero with it).
    started_ms: u64,
    channels: Channels,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Traffic {
    pub(crate) fn new(tls: Option<tls::ClientTls>) -> Traffic {
        Traffic {
            source: OnceLock::new(),
            started_ms: unix_ms(),
            channels: Channels::new(tls),
        }
    }

    /// Sets the counter source (the first call wins).
    pub(crate) fn set_source(&self, source: TrafficSource) {
        let _ = self.source.set(source);
    }

    /// This node's counters now (none before a source is set).
    pub(crate) fn local(&self, node_id: NodeId) -> InstanceTrafficReply {
        InstanceTrafficReply {
            node_id,
            at_ms: unix_ms(),
            started_ms: self.started_ms,
            instances: self.source.get().map(|s| s()).unwrap_or_default(),
        }
    }

    /// Asks every one of `members` (`me` in process) at once; each answer within `timeout`.
    /// By node id.
    pub(crate) async fn gather(
        &self,
        me: NodeId,
        members: BTreeMap<NodeId, String>,
        standing: &Standing,
        timeout: Duration,
    ) -> Vec<MemberTraffic> {
        let asks = members.into_iter().map(|(node_id, addr)| async move {
            let reply = if node_id == me {
                Ok(self.local(me))
            } else {
                self.ask(node_id, &addr, standing, timeout).await
            };
            MemberTraffic { node_id, reply }
        });
        futures::future::join_all(asks).await
    }

    async fn ask(
        &self,
        node_id: NodeId,
        addr: &str,
        standing: &Standing,
        timeout: Duration,
    ) -> Result<InstanceTrafficReply, String> {
        let mut client = self
            .channels
            .get(addr)
            .map_err(|e| format!("unreachable: bad peer address {addr}: {e}"))?;
        let mut req = tonic::Request::new(InstanceTrafficRequest {});
        req.set_timeout(timeout);
        standing.stamp(req.metadata_mut());
        // The gRPC timeout bounds the call once it is sent; this bounds the connecting too.
        let reply = tokio::time::timeout(timeout, client.instance_traffic(req))
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
            .map_err(|s| match s.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    format!("no answer within {} ms", timeout.as_millis())
                }
                tonic::Code::Unavailable => format!("unreachable: {}", s.message()),
                _ => format!("refused: {}", s.message()),
            })?;
        standing
            .check_incoming(reply.metadata(), false)
            .map_err(|e| format!("refused: {e}"))?;
        let reply = reply.into_inner();
        if reply.node_id != node_id {
            return Err(format!(
                "refused: node {} answered at node {node_id}'s address {addr}",
                reply.node_id
            ));
        }
        Ok(reply)
    }
}
