//! openraft's messages over gRPC.
//!
//! Each peer gets one long-lived tonic channel, created lazily and shared by every Raft
//! replication stream and forwarded write to that peer. Payloads are openraft's own serde types
//! as JSON inside a protobuf `bytes` field (see `proto/peer.proto` for why).

use crate::standing::{QUORUM_AGE_HEADER, Standing};
use crate::types::{NodeId, TypeConfig};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::peer::RaftPayload;
use proto::peer::peer_client::PeerClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a TCP connection to a peer before calling it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on every peer connection, busy or idle.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// One channel per peer address, shared across the node.
#[derive(Clone, Default)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    /// With it, peers are dialled over mutual TLS: this node's certificate, the cluster CA.
    tls: Option<tls::ClientTls>,
}

impl Channels {
    pub fn new(tls: Option<tls::ClientTls>) -> Self {
        Channels {
            by_addr: Arc::default(),
            tls,
        }
    }

    /// The channel to `addr` (`HOST:PORT`), created on first use. Connection happens lazily and
    /// is retried by tonic, so a peer that is down now is reached once it is up.
    pub fn get(&self, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        let mut map = self.by_addr.lock().expect("channel map lock");
        if let Some(ch) = map.get(addr) {
            return Ok(PeerClient::new(ch.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A peer that stops answering (a partition, a paused process) is noticed within
            // about two seconds, and the connection re-dialled, rather than left to TCP's
            // retransmission backoff, which after a long cut delays the healed link by
            // many seconds.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(KEEPALIVE_INTERVAL));
        let ch = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls::Connector::new(tls.clone())),
            None => endpoint.connect_lazy(),
        };
        map.insert(addr.to_string(), ch.clone());
        Ok(PeerClient::new(ch))
    }
}

/// Snapshot chunks are bytes: as JSON they would travel as arrays of numbers, ~3.6 times their
/// size, so their requests are postcard.
pub(crate) fn encode_binary<T: Serialize>(v: &T) -> RaftPayload {
    RaftPayload {
        data: postcard::to_stdvec(v).expect("raft messages always serialize"),
    }
}

pub(crate) fn decode_binary<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, postcard::Error> {
    postcard::from_bytes(&p.data)
}

pub(crate) fn encode<T: Serialize>(v: &T) -> RaftPayload {
    RaftPayload {
        data: serde_json::to_vec(v).expect("raft messages always serialize"),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&p.data)
}

/// Creates a [`PeerNetwork`] per target for openraft.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    channels: Channels,
    standing: Arc<Standing>,
    failures: Arc<PeerFailures>,
}

impl PeerNetworkFactory {
    pub(crate) fn new(channels: Channels, standing: Arc<Standing>) -> Self {
        PeerNetworkFactory {
            channels,
            standing,
            failures: Arc::new(PeerFailures::new(PEER_ERROR_EVERY)),
        }
    }
}

/// At most one log line per peer this often while its RPCs keep failing.
pub const PEER_ERROR_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Failed RPCs to peers, logged at most once per peer per period with a count of those not
/// logged. A leader retries a dead peer several times a second; openraft's own lines about it
/// (`openraft::replication`) are off by default for this reason.
pub struct PeerFailures {
    every: std::time::Duration,
    peers: std::sync::Mutex<std::collections::HashMap<NodeId, Failing>>,
}

#[derive(Clone, Copy)]
struct Failing {
    logged_at: std::time::Instant,
    /// Failures since the last line.
    unlogged: u64,
    /// Failures since the peer last answered.
    total: u64,
}

/// What [`PeerFailures`] says to log.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureLog {
    /// Log this failure, and how many since the last line were not.
    Log {
        unlogged: u64,
    },
    Quiet,
}

impl PeerFailures {
    pub fn new(every: std::time::Duration) -> Self {
        PeerFailures {
            every,
            peers: Default::default(),
        }
    }

    /// A failed RPC to `peer` at `now`.
    pub fn failed(&self, peer: NodeId, now: std::time::Instant) -> FailureLog {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get_mut(&peer) {
            Some(f) if now.duration_since(f.logged_at) < self.every => {
                f.unlogged += 1;
                f.total += 1;
                FailureLog::Quiet
            }
            Some(f) => {
                let unlogged = f.unlogged;
                f.logged_at = now;
                f.unlogged = 0;
                f.total += 1;
                FailureLog::Log { unlogged }
            }
            None => {
                peers.insert(
                    peer,
                    Failing {
                        logged_at: now,
                        unlogged: 0,
                        total: 1,
                    },
                );
                FailureLog::Log { unlogged: 0 }
            }
        }
    }

    /// A successful RPC to `peer`: how many failed before it, if any did.
    pub fn answered(&self, peer: NodeId) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.remove(&peer).map(|f| f.total)
    }

    fn report(&self, peer: NodeId, addr: &str, error: &dyn std::error::Error) {
        if let FailureLog::Log { unlogged } = self.failed(peer, std::time::Instant::now()) {
            let mut root: &dyn std::error::Error = error;
            while let Some(source) = root.source() {
                root = source;
            }
            let every = self.every.as_secs();
            tracing::warn!(
                peer,
                addr,
                "cannot reach peer {peer} at {addr}: {root}{}",
                if unlogged > 0 {
                    format!(" ({unlogged} more failures in the last {every} s not logged)")
                } else {
                    format!(" (further failures are logged at most every {every} s)")
                }
            );
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            standing: self.standing.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    channels: Channels,
    /// Stamps this node's cluster id on every message, and its quorum age on AppendEntries.
    standing: Arc<Standing>,
    failures: Arc<PeerFailures>,
}

/// Which peer RPC to call.
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerNetwork {
    /// Sends one Raft RPC. Transport failures become `Unreachable` (openraft backs off);
    /// an error the remote Raft returned becomes `RemoteError`. Transport failures are logged
    /// here, rate-limited ([`PeerFailures`]).
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.call_once(rpc, req, option).await;
        match &result {
            Err(RPCError::Unreachable(_) | RPCError::Network(_)) => {}
            _ => {
                if let Some(failed) = self.failures.answered(self.target) {
                    tracing::info!(
                        peer = self.target,
                        "peer {} at {} answers again (after {failed} failed calls)",
                        self.target,
                        self.addr
                    );
                }
            }
        }
        result
    }

    async fn call_once<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: &dyn std::error::Error| {
            self.failures.report(self.target, &self.addr, e);
            RPCError::Unreachable(Unreachable::new(&AnyErr(e.to_string())))
        };
        let mut client = self.channels.get(&self.addr).map_err(|e| unreachable(&e))?;
        let payload = match rpc {
            Rpc::InstallSnapshot => encode_binary(req),
            Rpc::AppendEntries | Rpc::Vote => encode(req),
        };
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        self.standing.stamp(request.metadata_mut());
        if matches!(rpc, Rpc::AppendEntries) {
            request
                .metadata_mut()
                .insert(QUORUM_AGE_HEADER, self.standing.quorum_age_header());
        }
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => unreachable(&status),
                    _ => {
                        self.failures.report(self.target, &self.addr, &status);
                        RPCError::Network(NetworkError::new(&status))
                    }
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply).map_err(|e| {
            self.failures.report(self.target, &self.addr, &e);
            RPCError::Network(NetworkError::new(&e))
        })?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(&self.addr),
                e,
            ))
        })
    }
}

/// A transport error as a plain message, for openraft's error wrappers.
#[derive(Debug)]
struct AnyErr(String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Whether a call failed because the connection to the peer was refused: no process listens
/// on its address (it was killed, or is restarting), as opposed to one that is slow or cut off.
pub(crate) fn is_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn peer_failures_log_once_per_period_with_the_count_left_out() {
        let f = PeerFailures::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(f.failed(3, t0), FailureLog::Log { unlogged: 0 });
        // A leader retrying twice a second for 29 s logs nothing more.
        for i in 1..58 {
            assert_eq!(
                f.failed(3, t0 + Duration::from_millis(500 * i)),
                FailureLog::Quiet
            );
        }
        // Another peer is counted apart.
        assert_eq!(f.failed(2, t0), FailureLog::Log { unlogged: 0 });
        assert_eq!(
            f.failed(3, t0 + Duration::from_secs(30)),
            FailureLog::Log { unlogged: 57 }
        );
        assert_eq!(f.answered(3), Some(59));
        assert_eq!(f.answered(3), None);
        // After an answer, the next failure is logged at once.
        assert_eq!(
            f.failed(3, t0 + Duration::from_secs(31)),
            FailureLog::Log { unlogged: 0 }
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_apart_from_a_silent_peer() {
        let report = || tonic::Request::new(proto::peer::DemandReport::default());
        // Nothing listens: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let channels = Channels::new(None);
        let status = channels
            .get(&addr)
            .unwrap()
            .report_demand(report())
            .await
            .unwrap_err();
        assert!(is_refused(&status), "{status:?}");
        // A listener that accepts and never answers: a timeout, not a refusal.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let mut req = report();
        req.set_timeout(Duration::from_millis(200));
        let status = channels
            .get(&addr)
            .unwrap()
            .report_demand(req)
            .await
            .unwrap_err();
        assert!(!is_refused(&status), "{status:?}");
        drop(silent);
    }
}
