//! The peer gRPC service: receives Raft messages, forwarded writes, bootstrap probes, join
//! requests, demand reports and the console's traffic questions from other nodes.

use crate::network::{decode, decode_binary, encode};
use crate::node::{LeaderReply, LeaderRequest, Node, is_member};
use crate::standing::Standing;
use crate::types::{NodeId, TypeConfig};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use proto::peer::peer_server::{Peer, PeerServer};
use proto::peer::{
    DemandAck, DemandReport, InstanceTrafficReply, InstanceTrafficRequest, JoinRequest, ProbeReply,
    ProbeRequest, RaftPayload, RemovingReply, RemovingRequest, WatchRequest,
};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The largest Raft message accepted (snapshots travel in chunks of openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default; a batch of log entries can be larger).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub struct PeerService {
    node: Node,
    /// When a refused request was last logged: a node of another cluster that keeps sending
    /// (every heartbeat) is logged every 10 s, not every 100 ms.
    refused_logged: std::sync::Mutex<Option<Instant>>,
}

impl PeerService {
    pub fn new(node: Node) -> PeerServer<PeerService> {
        PeerServer::new(PeerService {
            node,
            refused_logged: std::sync::Mutex::new(None),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn bad_payload(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

impl PeerService {
    /// Refuses a request from another cluster's node; with `adopt` (a leader's log entries),
    /// a node that has no cluster id yet takes the sender's.
    fn check<T>(&self, req: &Request<T>, adopt: bool) -> Result<(), Status> {
        self.node
            .standing()
            .check_incoming(req.metadata(), adopt)
            .map_err(|e| {
                let mut last = self
                    .refused_logged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!(node = self.node.id(), "refused a peer request: {e}");
                }
                Status::failed_precondition(e)
            })
    }

    /// A reply stamped with this node's cluster id.
    fn reply<T>(&self, body: T) -> Result<Response<T>, Status> {
        let mut r = Response::new(body);
        self.node.standing().stamp(r.metadata_mut());
        Ok(r)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&req, true)?;
        let leader_quorum_age = Standing::quorum_age_of(req.metadata());
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        let leader_commit = rpc.leader_commit.map(|l| (l.leader_id.term, l.index));
        let result = self.node.raft().append_entries(rpc).await;
        // Accepted by this node's Raft (a current leader, whether or not the entries matched):
        // contact with a quorum as recent as that leader's own.
        if let Ok(r) = &result
            && !matches!(r, AppendEntriesResponse::HigherVote(_))
        {
            self.node
                .standing()
                .note_contact(leader_quorum_age.unwrap_or_default());
            self.node.abstention().heard_leader(leader_commit);
        }
        self.reply(encode(&result))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check(&req, false)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        let applied = self
            .node
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index);
        if let Some(why) = self.node.abstention().refuses(
            rpc.last_log_id.map(|l| (l.leader_id.term, l.index)),
            applied,
        ) {
            // Not a vote against: the candidate counts it as no answer, as from a node down.
            return Err(Status::unavailable(format!(
                "node {} does not vote: {why}",
                self.node.id()
            )));
        }
        let result = self.node.raft().vote(rpc).await;
        self.reply(encode(&result))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&req, true)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_binary(req.get_ref())
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot chunk: {e}")))?;
        let result = self.node.raft().install_snapshot(rpc).await;
        self.reply(encode(&result))
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check(&req, false)?;
        let deadline = Instant::now() + grpc_timeout(&req).unwrap_or(Duration::from_secs(5));
        let leader_req: LeaderRequest = decode(req.get_ref()).map_err(bad_payload)?;
        let reply = self.node.lead(leader_req, deadline).await;
        self.reply(encode(&reply))
    }

    /// Not checked for the cluster id: it is how a node finds out which cluster its peers
    /// belong to, and whether it is still a member.
    async fn probe(&self, req: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        let asker = req.get_ref().from_node_id;
        let initialized = self.node.raft().is_initialized().await.unwrap_or(false);
        let m = self.node.raft().metrics().borrow().clone();
        let log_id = *m.membership_config.log_id();
        self.reply(ProbeReply {
            node_id: self.node.id(),
            initialized,
            leader_id: m.current_leader,
            term: m.current_term,
            cluster_id: self.node.standing().cluster_id().unwrap_or_default(),
            membership_term: log_id.map_or(0, |l| l.leader_id.term),
            membership_index: log_id.map(|l| l.index),
            asker_is_member: is_member(m.membership_config.membership(), asker),
            millis_since_leader_contact: self
                .node
                .leader_contact_age()
                .map(|age| age.as_millis() as u64),
        })
    }

    async fn removing(
        &self,
        req: Request<RemovingRequest>,
    ) -> Result<Response<RemovingReply>, Status> {
        self.check(&req, false)?;
        let RemovingRequest { node_id, leader_id } = req.into_inner();
        if node_id != self.node.id() {
            return Err(Status::invalid_argument(format!(
                "node_id {node_id} is not this node ({})",
                self.node.id()
            )));
        }
        self.node.set_fence(leader_id);
        self.reply(RemovingReply {})
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<RaftPayload>, Status> {
        self.check(&req, false)?;
        let JoinRequest { node_id, peer_addr } = req.into_inner();
        // Decided on the leader: this node's view of the membership may be stale.
        let reply = match self.node.add_learner(node_id, peer_addr).await {
            Ok(()) => LeaderReply::Done {
                index: 0,
                reply: None,
            },
            Err(e) => LeaderReply::Failed(e),
        };
        self.reply(encode(&reply))
    }

    async fn report_demand(
        &self,
        req: Request<DemandReport>,
    ) -> Result<Response<DemandAck>, Status> {
        self.check(&req, false)?;
        let r = req.get_ref();
        self.node.handle_demand(r.node_id, &r.data);
        self.reply(DemandAck {})
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.check(&req, false)?;
        self.reply(crate::watch::answer(self.node.closing()))
    }

    async fn instance_traffic(
        &self,
        req: Request<InstanceTrafficRequest>,
    ) -> Result<Response<InstanceTrafficReply>, Status> {
        self.check(&req, false)?;
        self.reply(self.node.local_traffic())
    }
}

/// The caller's deadline from the `grpc-timeout` header, e.g. `4999m`.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
