//! The peer gRPC service: receives Raft messages, forwarded writes, bootstrap probes, join
//! requests and demand reports from other nodes.

use crate::network::{decode, decode_binary, encode};
use crate::node::{LeaderReply, LeaderRequest, Node};
use crate::types::{NodeId, TypeConfig};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use proto::peer::peer_server::{Peer, PeerServer};
use proto::peer::{DemandAck, DemandReport, JoinRequest, ProbeReply, ProbeRequest, RaftPayload};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The largest Raft message accepted (snapshots travel in chunks of openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default; a batch of log entries can be larger).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub struct PeerService {
    node: Node,
}

impl PeerService {
    pub fn new(node: Node) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { node })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn bad_payload(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        let result = self.node.raft().append_entries(rpc).await;
        // Accepted from the leader of our term (a stale leader is answered `HigherVote`).
        if let Ok(resp) = &result
            && !matches!(resp, AppendEntriesResponse::HigherVote(_))
        {
            self.node.heard_from_leader();
        }
        Ok(Response::new(encode(&result)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        let result = self.node.raft().vote(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_binary(req.get_ref())
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot chunk: {e}")))?;
        let result = self.node.raft().install_snapshot(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let deadline = Instant::now() + grpc_timeout(&req).unwrap_or(Duration::from_secs(5));
        let leader_req: LeaderRequest = decode(req.get_ref()).map_err(bad_payload)?;
        let reply = self.node.lead(leader_req, deadline).await;
        Ok(Response::new(encode(&reply)))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        let initialized = self.node.raft().is_initialized().await.unwrap_or(false);
        let status = self.node.status();
        Ok(Response::new(ProbeReply {
            node_id: self.node.id(),
            initialized,
            leader_id: status.leader_id,
            term: status.term,
            millis_since_leader_contact: self
                .node
                .leader_contact_age()
                .map(|age| age.as_millis() as u64),
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<RaftPayload>, Status> {
        let JoinRequest { node_id, peer_addr } = req.into_inner();
        // Decided on the leader: this node's view of the membership may be stale.
        let reply = match self.node.add_learner(node_id, peer_addr).await {
            Ok(()) => LeaderReply::Done {
                index: 0,
                reply: None,
            },
            Err(e) => LeaderReply::Failed(e),
        };
        Ok(Response::new(encode(&reply)))
    }

    async fn report_demand(
        &self,
        req: Request<DemandReport>,
    ) -> Result<Response<DemandAck>, Status> {
        let r = req.get_ref();
        self.node.handle_demand(r.node_id, &r.data);
        Ok(Response::new(DemandAck {}))
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
