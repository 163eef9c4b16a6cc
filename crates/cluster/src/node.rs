//! A running cluster node: Raft, its storage and network, bootstrap, and the write path.

use crate::network::{Channels, PeerNetworkFactory, decode, encode};
use crate::store::history::History;
use crate::store::{self, LogStore, Publication};
use crate::types::{NodeId, Raft, Response, StorageError};
use catalog::Catalog;
use model::{Clock, Command, DomainError, Proposal, Reply, State, SystemClock};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use proto::peer::{JoinRequest, ProbeRequest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a node is set up.
pub struct NodeConfig {
    pub node_id: NodeId,
    /// sled lives in `data_dir/raft`.
    pub data_dir: PathBuf,
    /// The `HOST:PORT` at which peers reach this node's peer service.
    pub advertise_peer: String,
    /// The initial voters and their peer addresses. A node that is not among them joins as a
    /// learner.
    pub voters: BTreeMap<NodeId, String>,
    pub catalog: Arc<Catalog>,
    /// Where this node's wall-clock time comes from ([`Clock::now_ms`]). Proposals carry the
    /// leader's time, so the state machine never reads a clock; tests substitute a clock they
    /// drive.
    pub clock: Arc<dyn Clock>,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many log entries since the last one.
    pub snapshot_every: u64,
    /// How long a write may wait for a leader and a quorum before it is refused as UNAVAILABLE.
    pub write_timeout: Duration,
    /// TLS for connections to peers (this node's certificate and the cluster CA); `None` dials
    /// them in plaintext.
    pub peer_tls: Option<tls::ClientTls>,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf, advertise_peer: String) -> Self {
        let mut voters = BTreeMap::new();
        voters.insert(node_id, advertise_peer.clone());
        NodeConfig {
            node_id,
            data_dir,
            advertise_peer,
            voters,
            catalog: Arc::new(Catalog::builtin().clone()),
            clock: Arc::new(SystemClock::new()),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 5000,
            write_timeout: Duration::from_secs(5),
            peer_tls: None,
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// No leader, or the leader has no quorum: nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// The write was sent to a leader but no answer came back: it may or may not be applied.
    /// Retrying with the same request id applies it at most once.
    #[error(
        "outcome unknown: {reason}; the write may still be applied, so retry it with the same request id ({request_id}): it is applied at most once"
    )]
    OutcomeUnknown { request_id: String, reason: String },
    /// A membership request that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LeaderRequest {
    fn request_id(&self) -> Option<&str> {
        match self {
            LeaderRequest::Write { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
}

/// What a follower asks the leader to do on its behalf.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    /// A client write, named by the node that first received it: however often it is
    /// forwarded or proposed again, the state machine applies it once.
    Write {
        request_id: String,
        command: Command,
    },
    AddLearner {
        id: NodeId,
        addr: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
}

/// The leader's answer, with the log index to wait for locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderReply {
    // Boxed: replies carry whole groups; the other variants are small. (Serialized the same.)
    Done {
        index: u64,
        reply: Option<Box<Reply>>,
    },
    NotLeader {
        leader: Option<NodeId>,
    },
    Failed(ClusterError),
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub peer_addr: String,
    /// `leader`, `follower`, `learner`.
    pub role: &'static str,
    pub voter: bool,
    /// The last log index known to be on that member (leader's view; own applied index).
    pub matched_index: Option<u64>,
}

/// The cluster as the answering node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub state: &'static str,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// Handles the demand reports peers send for the limiter shares; set by the data plane wiring.
pub type DemandHandler = Box<dyn Fn(NodeId, &[u8]) + Send + Sync>;

struct Inner {
    id: NodeId,
    raft: Raft,
    channels: Channels,
    /// Connections for demand reports only. Reports go every 100 ms with a 100 ms timeout;
    /// through a partition they are cancelled by the hundred, and HTTP/2 servers drop a
    /// connection with too many reset streams. On their own connections that cannot take the
    /// one carrying Raft and forwarded writes (and a forwarded write's reply) with it.
    demand_channels: Channels,
    state: watch::Receiver<Arc<State>>,
    publication: Arc<Publication>,
    history: History,
    clock: Arc<dyn Clock>,
    /// Stamped (as its fingerprint) on every proposal this node makes as leader.
    catalog: Arc<Catalog>,
    request_ids: RequestIds,
    write_timeout: Duration,
    election_max: Duration,
    demand_handler: OnceLock<DemandHandler>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// Opens the store and starts Raft. A node with data resumes from it; a pristine node
    /// bootstraps in the background (see [`Node::bootstrap`]). The peer service must be served
    /// (see [`crate::service`]) for the node to take part.
    pub async fn start(cfg: NodeConfig) -> Result<Node, ClusterError> {
        let dir = cfg.data_dir.join("raft");
        std::fs::create_dir_all(&dir).map_err(|e| {
            ClusterError::Internal(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let (log, sm) = store::open(&dir, cfg.catalog.clone()).map_err(storage_err)?;
        let pristine = log.is_pristine().map_err(storage_err)?;
        let publication = sm.publication();
        let history = sm.history();
        let state = publication.subscribe();
        let raft_config = Config {
            cluster_name: "gateway".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
            election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            // Kept after a snapshot so that a follower a little behind is sent log entries,
            // not the whole snapshot.
            max_in_snapshot_log_to_keep: (cfg.snapshot_every / 5).max(10),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Internal(format!("raft config: {e}")))?;
        let channels = Channels::new(cfg.peer_tls.clone());
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            PeerNetworkFactory::new(channels.clone()),
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| ClusterError::Internal(format!("raft did not start: {e}")))?;
        let node = Node {
            inner: Arc::new(Inner {
                id: cfg.node_id,
                raft,
                channels,
                demand_channels: Channels::new(cfg.peer_tls.clone()),
                state,
                publication,
                history,
                clock: cfg.clock.clone(),
                catalog: cfg.catalog.clone(),
                request_ids: RequestIds::new(cfg.node_id),
                write_timeout: cfg.write_timeout,
                election_max: cfg.election_timeout.1,
                demand_handler: OnceLock::new(),
            }),
        };
        let voters = cfg.voters.clone();
        let me = cfg.advertise_peer.clone();
        if !voters.contains_key(&cfg.node_id) {
            // Not an initial voter: (re)join as a learner, whether new or restarted, since a
            // learner leaves the membership when it shuts down (see `leave_if_learner`).
            let n = node.clone();
            tokio::spawn(async move { n.join_as_learner(voters, me).await });
        } else if pristine {
            let n = node.clone();
            tokio::spawn(async move { n.bootstrap(voters, log).await });
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn channels(&self) -> &Channels {
        &self.inner.channels
    }

    /// The state as last applied on this node.
    pub fn state(&self) -> Arc<State> {
        self.inner.state.borrow().clone()
    }

    /// Sees every state this node applies.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.inner.state.clone()
    }

    /// The applied state with what changed, for the one consumer that compiles changes (the
    /// data plane).
    pub fn publication(&self) -> Arc<Publication> {
        self.inner.publication.clone()
    }

    /// This node's copy of the history (ledger, bills, events, closed usage).
    pub fn history(&self) -> &History {
        &self.inner.history
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Registers what to do with peers' demand reports (once).
    pub fn set_demand_handler(&self, h: DemandHandler) {
        let _ = self.inner.demand_handler.set(h);
    }

    /// Sends this node's demand report to every other member, without waiting for answers
    /// longer than `timeout`. Reports are best-effort: a lost one is replaced by the next.
    pub async fn broadcast_demand(&self, data: Vec<u8>, timeout: Duration) {
        let me = self.id();
        let sends = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, addr)| {
                let data = data.clone();
                async move {
                    let Ok(mut c) = self.inner.demand_channels.get(&addr) else {
                        return;
                    };
                    let mut req =
                        tonic::Request::new(proto::peer::DemandReport { node_id: me, data });
                    req.set_timeout(timeout);
                    let _ = c.report_demand(req).await;
                }
            });
        futures::future::join_all(sends).await;
    }

    pub(crate) fn handle_demand(&self, from: NodeId, data: &[u8]) {
        if let Some(h) = self.inner.demand_handler.get() {
            h(from, data);
        }
    }

    /// Initialises a new cluster exactly once, whatever order its voters start in: the voter
    /// with the lowest id initialises, and only once every voter answers and none has joined a
    /// cluster yet. A pristine node that is not an initial voter asks to join as a learner.
    async fn bootstrap(self, voters: BTreeMap<NodeId, String>, log: LogStore) {
        let id = self.id();
        let lowest = voters.keys().next().copied();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !log.is_pristine().unwrap_or(false)
                || self.raft().is_initialized().await.unwrap_or(true)
            {
                return; // Some leader has reached us: we are part of a cluster.
            }
            let mut all_answer = true;
            let mut someone_initialized = false;
            for (&peer, addr) in voters.iter().filter(|(p, _)| **p != id) {
                match self.probe(addr).await {
                    Some(initialized) => someone_initialized |= initialized,
                    None => {
                        tracing::debug!(node = id, peer, "voter not reachable yet");
                        all_answer = false;
                    }
                }
            }
            if someone_initialized {
                // Wait for the leader to replicate to us (we are in its membership).
                continue;
            }
            if all_answer && lowest == Some(id) {
                let members: BTreeMap<NodeId, BasicNode> = voters
                    .iter()
                    .map(|(k, v)| (*k, BasicNode::new(v)))
                    .collect();
                match self.raft().initialize(members).await {
                    Ok(()) => tracing::info!(node = id, "initialised the cluster"),
                    Err(e) => tracing::info!(node = id, "cluster already initialised: {e}"),
                }
                return;
            }
        }
    }

    /// Asks the voters, until one answers yes, to add this node as a learner.
    async fn join_as_learner(self, voters: BTreeMap<NodeId, String>, me: String) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if self.try_join(&voters, &me).await {
                tracing::info!(node = self.id(), "joined the cluster as a learner");
                return;
            }
        }
    }

    /// A learner that shuts down leaves the membership, so that scaling the nodes down removes
    /// them; it joins again when it starts. Voters stay: removing one is an operator's call.
    pub async fn leave_if_learner(&self, within: Duration) {
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let is_learner =
            mem.get_node(&self.id()).is_some() && !mem.voter_ids().any(|v| v == self.id());
        if !is_learner {
            return;
        }
        match tokio::time::timeout(within, self.remove(self.id())).await {
            Ok(Ok(())) => tracing::info!(node = self.id(), "left the membership"),
            Ok(Err(e)) => tracing::warn!(node = self.id(), "could not leave the membership: {e}"),
            Err(_) => tracing::warn!(node = self.id(), "leaving the membership timed out"),
        }
    }

    /// Asks a voter whether it is part of a cluster; `None` when it does not answer.
    async fn probe(&self, addr: &str) -> Option<bool> {
        let mut c = self.channels().get(addr).ok()?;
        let mut req = tonic::Request::new(ProbeRequest {
            from_node_id: self.id(),
        });
        req.set_timeout(Duration::from_millis(500));
        c.probe(req).await.ok().map(|r| r.into_inner().initialized)
    }

    async fn try_join(&self, voters: &BTreeMap<NodeId, String>, me: &str) -> bool {
        for addr in voters.values() {
            let Ok(mut c) = self.channels().get(addr) else {
                continue;
            };
            let mut req = tonic::Request::new(JoinRequest {
                node_id: self.id(),
                peer_addr: me.to_string(),
            });
            req.set_timeout(self.inner.write_timeout);
            if let Ok(r) = c.join(req).await
                && let Ok(LeaderReply::Done { .. }) = decode::<LeaderReply>(r.get_ref())
            {
                return true;
            }
        }
        false
    }

    /// Proposes a command and returns its reply once it is committed and applied here.
    pub async fn write(&self, command: Command) -> Result<Reply, ClusterError> {
        let request_id = self.inner.request_ids.next();
        self.write_request(request_id, command).await
    }

    /// [`Node::write`] with the caller's request id: a client that retries a write whose
    /// outcome it does not know sends the same id, and the write is applied at most once.
    pub async fn write_request(
        &self,
        request_id: String,
        command: Command,
    ) -> Result<Reply, ClusterError> {
        let req = LeaderRequest::Write {
            request_id,
            command,
        };
        match self.to_leader(req).await? {
            Some(reply) => Ok(reply),
            None => Err(ClusterError::Internal("write returned no reply".into())),
        }
    }

    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), ClusterError> {
        if addr.is_empty() || !addr.contains(':') {
            return Err(ClusterError::Invalid(format!(
                "peer address '{addr}' must be HOST:PORT"
            )));
        }
        self.to_leader(LeaderRequest::AddLearner { id, addr })
            .await
            .map(|_| ())
    }

    pub async fn promote(&self, id: NodeId) -> Result<(), ClusterError> {
        self.to_leader(LeaderRequest::Promote { id })
            .await
            .map(|_| ())
    }

    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        self.to_leader(LeaderRequest::Remove { id })
            .await
            .map(|_| ())
    }

    /// Runs a request on the leader, wherever it is, then waits until this node has applied
    /// the entry, so that a caller reads its own write from the node it asked.
    async fn to_leader(&self, req: LeaderRequest) -> Result<Option<Reply>, ClusterError> {
        let deadline = Instant::now() + self.inner.write_timeout;
        let mut metrics = self.raft().metrics();
        // Set once a leader may have received the write without our hearing back.
        let mut sent_unanswered = false;
        loop {
            let leader = metrics.borrow().current_leader;
            let outcome = match leader {
                Some(l) if l == self.id() => self.lead(req.clone(), deadline).await,
                Some(l) => {
                    // A leader that is cut off may never answer: when another leader is
                    // elected meanwhile, stop waiting and send to it. Only a leader change
                    // ends the wait, never a timeout alone. If the old leader had already
                    // replicated the entry to a majority, the new leader applies it too; the
                    // resent write carries the same request id, so the state machine answers
                    // it with the first outcome instead of applying it twice.
                    let mut changes = self.raft().metrics();
                    let new_leader = changes.wait_for(|m| m.current_leader != Some(l));
                    let (reply, delivered) = tokio::select! {
                        r = self.forward(l, &req, deadline) => r,
                        // It may have reached the old leader before the change.
                        _ = new_leader => (LeaderReply::NotLeader { leader: None }, true),
                    };
                    // A definite answer from the leader settles it; a request that may have
                    // reached a leader without an answer coming back does not.
                    match reply {
                        LeaderReply::NotLeader { .. } if delivered => sent_unanswered = true,
                        LeaderReply::NotLeader { .. } => {}
                        LeaderReply::Done { .. } | LeaderReply::Failed(_) => {
                            sent_unanswered = false
                        }
                    }
                    reply
                }
                None => LeaderReply::NotLeader { leader: None },
            };
            match outcome {
                LeaderReply::Done { index, reply } => {
                    let reply = reply.map(|r| *r);
                    // A node that removed itself never receives the entry that removes it.
                    if matches!(req, LeaderRequest::Remove { id } if id == self.id()) {
                        return Ok(reply);
                    }
                    let wait = Duration::from_secs(2).min(self.inner.write_timeout);
                    // Committed already; if this node lags (e.g. it is cut off), answer anyway.
                    let _ = self
                        .raft()
                        .wait(Some(wait))
                        .applied_index_at_least(Some(index), "read your write")
                        .await;
                    return Ok(reply);
                }
                LeaderReply::Failed(e) => return Err(e),
                LeaderReply::NotLeader { .. } => {}
            }
            // No usable leader yet: wait for the metrics to change, or give up at the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(match req.request_id() {
                    Some(id) if sent_unanswered => ClusterError::OutcomeUnknown {
                        request_id: id.to_string(),
                        reason: format!(
                            "the leader did not answer within {:?}",
                            self.inner.write_timeout
                        ),
                    },
                    _ => ClusterError::Unavailable(self.no_leader_message()),
                });
            }
            let step = left.min(Duration::from_millis(100));
            let _ = tokio::time::timeout(step, metrics.changed()).await;
        }
    }

    fn no_leader_message(&self) -> String {
        let m = self.raft().metrics().borrow().clone();
        let leader = match m.current_leader {
            Some(l) if l == self.id() => format!(
                "this node (node {l}) was leader in term {} but cannot reach a quorum",
                m.current_term
            ),
            Some(l) => format!(
                "the last known leader is node {l} (term {}), which this node cannot reach",
                m.current_term
            ),
            None => format!("no leader is known (term {})", m.current_term),
        };
        format!(
            "no quorum: the write was not accepted within {:?}; {leader}. Retry when a majority of voters is up and connected",
            self.inner.write_timeout
        )
    }

    /// Sends a request to the leader's peer service. The flag says whether the request may
    /// have reached the leader: false only when it certainly did not (no connection).
    async fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
        deadline: Instant,
    ) -> (LeaderReply, bool) {
        let m = self.raft().metrics().borrow().clone();
        let Some(node) = m.membership_config.membership().get_node(&leader).cloned() else {
            return (LeaderReply::NotLeader { leader: None }, false);
        };
        let Ok(mut client) = self.channels().get(&node.addr) else {
            return (LeaderReply::NotLeader { leader: None }, false);
        };
        let mut r = tonic::Request::new(encode(req));
        r.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        match client.forward(r).await {
            Ok(resp) => {
                let reply = decode(resp.get_ref()).unwrap_or_else(|e| {
                    LeaderReply::Failed(ClusterError::Internal(format!(
                        "bad reply from leader: {e}"
                    )))
                });
                (reply, true)
            }
            Err(status) => {
                tracing::debug!(leader, "forward failed: {status}");
                // tonic reports a failed connection as UNAVAILABLE "tcp connect error": the
                // request was never written. Anything else may have reached the leader.
                let not_sent = status.code() == tonic::Code::Unavailable
                    && status.message().contains("connect");
                let reply = LeaderReply::NotLeader {
                    leader: Some(leader),
                };
                (reply, !not_sent)
            }
        }
    }

    /// Runs a request on this node, which believes it is the leader.
    pub(crate) async fn lead(&self, req: LeaderRequest, deadline: Instant) -> LeaderReply {
        let m = self.raft().metrics().borrow().clone();
        if m.current_leader != Some(self.id()) {
            return LeaderReply::NotLeader {
                leader: m.current_leader,
            };
        }
        // A leader cut off from its quorum keeps its role until it hears a higher term; refuse
        // quickly rather than letting the write hang.
        let stale = Duration::from_millis(m.millis_since_quorum_ack.unwrap_or(0));
        if m.membership_config.membership().voter_ids().count() > 1
            && stale > self.inner.election_max
        {
            return LeaderReply::Failed(ClusterError::Unavailable(format!(
                "no quorum: this node (node {}) is leader in term {} but has not heard from a majority of voters for {} ms",
                self.id(),
                m.current_term,
                stale.as_millis()
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let request_id = req.request_id().map(str::to_string);
        let run = async {
            match req {
                LeaderRequest::Write {
                    request_id,
                    command,
                } => {
                    let p = Proposal {
                        at_ms: self.now_ms(),
                        catalog: self.inner.catalog.fingerprint().to_string(),
                        request_id: Some(request_id),
                        command,
                    };
                    self.raft().client_write(p).await.map(|r| {
                        let Response(result) = r.data;
                        (r.log_id.index, Some(result))
                    })
                }
                LeaderRequest::AddLearner { id, addr } => {
                    // Already a member (learner or voter) at this address: nothing to write.
                    let mem = m.membership_config.membership();
                    if mem.get_node(&id).is_some_and(|n| n.addr == addr) {
                        return Ok((m.last_applied.map(|l| l.index).unwrap_or(0), None));
                    }
                    if let Some(err) = self.check_add_learner(id, &addr) {
                        return Ok((0, Some(Err(err))));
                    }
                    self.raft()
                        .add_learner(id, BasicNode::new(addr), false)
                        .await
                        .map(|r| (r.log_id.index, None))
                }
                LeaderRequest::Promote { id } => {
                    let mem = m.membership_config.membership().clone();
                    if mem.voter_ids().any(|v| v == id) {
                        return Ok((m.last_applied.map(|l| l.index).unwrap_or(0), None));
                    }
                    if mem.get_node(&id).is_none() {
                        return Ok((
                            0,
                            Some(Err(DomainError::not_found("node", &id.to_string()))),
                        ));
                    }
                    let ids: BTreeSet<NodeId> = [id].into();
                    self.raft()
                        .change_membership(ChangeMembers::AddVoterIds(ids), false)
                        .await
                        .map(|r| (r.log_id.index, None))
                }
                LeaderRequest::Remove { id } => {
                    let mem = m.membership_config.membership().clone();
                    let ids: BTreeSet<NodeId> = [id].into();
                    let change = if mem.voter_ids().any(|v| v == id) {
                        if mem.voter_ids().count() == 1 {
                            return Ok((
                                0,
                                Some(Err(DomainError::FailedPrecondition(format!(
                                    "node {id} is the only voter; add and promote another first"
                                )))),
                            ));
                        }
                        ChangeMembers::RemoveVoters(ids)
                    } else if mem.get_node(&id).is_some() {
                        ChangeMembers::RemoveNodes(ids)
                    } else {
                        return Ok((
                            0,
                            Some(Err(DomainError::not_found("node", &id.to_string()))),
                        ));
                    };
                    self.raft()
                        .change_membership(change, false)
                        .await
                        .map(|r| (r.log_id.index, None))
                }
            }
        };
        match tokio::time::timeout(left, run).await {
            Err(_) => {
                let reason = format!(
                    "node {} proposed the request but could not commit it within {:?}",
                    self.id(),
                    self.inner.write_timeout
                );
                LeaderReply::Failed(match request_id {
                    Some(request_id) => ClusterError::OutcomeUnknown { request_id, reason },
                    None => ClusterError::Unavailable(format!(
                        "no quorum: {reason}; it may still be applied if a majority returns"
                    )),
                })
            }
            Ok(Ok((_, Some(Err(domain))))) => LeaderReply::Failed(ClusterError::Domain(domain)),
            Ok(Ok((index, reply))) => LeaderReply::Done {
                index,
                reply: reply.map(|r| Box::new(r.expect("errors handled above"))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                LeaderReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                LeaderReply::Failed(ClusterError::Invalid(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => {
                LeaderReply::Failed(ClusterError::Internal(e.to_string()))
            }
        }
    }

    /// A learner id must not already be a voter, and its address must not belong to another node.
    fn check_add_learner(&self, id: NodeId, addr: &str) -> Option<DomainError> {
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        if mem.voter_ids().any(|v| v == id) {
            return Some(DomainError::already_exists("voter", &id.to_string()));
        }
        mem.nodes()
            .find(|(nid, n)| **nid != id && n.addr == addr)
            .map(|(nid, _)| {
                DomainError::invalid(
                    "peer_addr",
                    format!("{addr} is already the address of node {nid}"),
                )
            })
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft().metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| {
                let voter = voters.contains(id);
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if voter {
                    "follower"
                } else {
                    "learner"
                };
                let matched_index = if *id == self.id() {
                    m.last_applied.map(|l| l.index)
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                MemberStatus {
                    node_id: *id,
                    peer_addr: n.addr.clone(),
                    role,
                    voter,
                    matched_index,
                }
            })
            .collect();
        NodeStatus {
            node_id: self.id(),
            leader_id: m.current_leader,
            term: m.current_term,
            state: role_name(m.state),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// The ids and peer addresses of every member (voters and learners).
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft().metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// True once this node has applied everything the cluster had committed when it learnt of
    /// the current leader: its config is current enough to serve.
    pub fn is_caught_up(&self) -> bool {
        let m = self.raft().metrics().borrow().clone();
        m.current_leader.is_some()
            && m.last_applied.is_some()
            && m.last_applied.map(|l| l.index) >= m.last_log_index
    }

    pub async fn shutdown(&self) {
        let _ = self.raft().shutdown().await;
    }
}

/// Names the client writes this node receives: unique across the cluster (the node id) and
/// across restarts of this node (the time it started, in nanoseconds).
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new(node: NodeId) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        RequestIds {
            prefix: format!("{node}-{boot:x}"),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

fn storage_err(e: StorageError) -> ClusterError {
    ClusterError::Internal(format!("storage: {e}"))
}
