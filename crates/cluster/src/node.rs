//! A running cluster node: Raft, its storage and network, bootstrap, and the write path.

use crate::abstain::Abstention;
use crate::network::{Channels, PeerNetworkFactory, decode, encode};
use crate::standing::{Fence, Standing};
use crate::store::history::History;
use crate::store::{self, LogStore, Publication};
use crate::traffic::{MemberTraffic, Traffic, TrafficSource};
use crate::types::{NodeId, Raft, Response, StorageError};
use catalog::Catalog;
use model::{Clock, Command, DomainError, Proposal, Reply, State, SystemClock};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Membership, ServerState, SnapshotPolicy};
use proto::peer::{JoinRequest, ProbeReply, ProbeRequest, RemovingRequest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// The cluster this node must belong to (`--cluster-id`): checked against the data dir
    /// and the peers, and used to initialise a new cluster. `None`: whatever the data dir
    /// says, or the first leader that reaches a pristine node.
    pub cluster_id: Option<String>,
    /// Stop serving (see [`Node::not_serving`]) after this long without contact with a quorum;
    /// `None` serves the last configuration however old it is.
    pub max_stale_config: Option<Duration>,
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
            cluster_id: None,
            max_stale_config: None,
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
    /// The read index of a linearizable read: the leader confirms with a quorum that it still
    /// leads and answers with its commit index, which the asking node applies before reading.
    ReadIndex,
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

/// Whether `id` is a member of `mem` once any change in progress completes: a voter of the
/// target configuration or a learner. (During a joint change that removes a voter, the voter
/// is still in the old configuration but no longer in the target one.)
pub(crate) fn is_member(mem: &Membership<NodeId, BasicNode>, id: NodeId) -> bool {
    mem.get_joint_config()
        .last()
        .is_some_and(|target| target.contains(&id))
        || mem.learner_ids().any(|l| l == id)
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
    /// The cluster this node belongs to (or expects to), if known.
    pub cluster_id: Option<String>,
    /// Why this node refuses API traffic, if it does (see [`Node::not_serving`]).
    pub not_serving: Option<String>,
    /// What this node is waiting for before it can take part, if anything.
    pub waiting: Option<String>,
}

/// Handles the demand reports peers send for the limiter shares; set by the data plane wiring.
pub type DemandHandler = Box<dyn Fn(NodeId, &[u8]) + Send + Sync>;

/// How far behind what it has stored a node may apply and still be ready (see
/// [`Node::is_caught_up`]).
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(1);

/// What readiness remembers between checks.
#[derive(Default)]
struct Readiness {
    seen_leader: bool,
    /// (when, last stored log index) samples of the last window.
    stored: std::collections::VecDeque<(Instant, u64)>,
}

/// Told whether the node may serve API traffic ([`Node::not_serving`]): at once when a leader
/// announces this node's removal or the node finds it was removed, and every 100 ms otherwise.
pub type ServingHook = Box<dyn Fn(Option<String>) + Send + Sync>;

struct Inner {
    id: NodeId,
    readiness: std::sync::Mutex<Readiness>,
    raft: Raft,
    channels: Channels,
    /// Connections for demand reports only. Reports go every 100 ms with a 100 ms timeout;
    /// through a partition they are cancelled by the hundred, and HTTP/2 servers drop a
    /// connection with too many reset streams. On their own connections that cannot take the
    /// one carrying Raft and forwarded writes (and a forwarded write's reply) with it.
    demand_channels: Channels,
    /// The console's live traffic: this node's counter source, and connections to ask peers.
    traffic: Traffic,
    /// Peer connections' TLS, for the watches of peers ([`crate::watch`]).
    peer_tls: Option<tls::ClientTls>,
    /// Set when the node stops: ends the `Watch` streams peers hold open to it.
    closing: watch::Sender<bool>,
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
    /// The cluster id, quorum contact and removal fence (shared with the peer network and
    /// service).
    standing: Arc<Standing>,
    max_stale_config: Option<Duration>,
    /// Why this node knows it is no longer a member, once it does.
    removed: watch::Sender<Option<String>>,
    /// Set when this node's cluster id and a peer's differ: the node must not run.
    conflict: watch::Sender<Option<String>>,
    /// What the bootstrap or the join is waiting for (see [`NodeStatus::waiting`]).
    waiting_setup: Mutex<Option<String>>,
    /// What the node waits for once it is part of a cluster (a leader), set by the watcher.
    waiting_leader: Mutex<Option<String>>,
    serving_hook: OnceLock<ServingHook>,
    /// Set once this node is part of the cluster for this run: at once for an initial voter,
    /// after its join for a learner (until then, a membership without it is no removal).
    joined: std::sync::atomic::AtomicBool,
    /// Whether a node that started with an empty log may vote yet.
    abstention: Abstention,
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
        let standing = Arc::new(
            Standing::open(&cfg.data_dir, cfg.cluster_id.as_deref())
                .map_err(ClusterError::Invalid)?,
        );
        let (log, sm) = store::open(&dir, cfg.catalog.clone()).map_err(storage_err)?;
        let pristine = log.is_pristine().map_err(storage_err)?;
        if !pristine {
            // Data from before cluster ids (no file): `--cluster-id` names its cluster.
            standing.claim_data().map_err(ClusterError::Internal)?;
        }
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
            PeerNetworkFactory::new(channels.clone(), standing.clone()),
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
                traffic: Traffic::new(cfg.peer_tls.clone()),
                peer_tls: cfg.peer_tls.clone(),
                closing: watch::Sender::new(false),
                state,
                publication,
                history,
                clock: cfg.clock.clone(),
                catalog: cfg.catalog.clone(),
                request_ids: RequestIds::new(cfg.node_id),
                write_timeout: cfg.write_timeout,
                election_max: cfg.election_timeout.1,
                demand_handler: OnceLock::new(),
                readiness: Default::default(),
                standing,
                max_stale_config: cfg.max_stale_config,
                removed: watch::Sender::new(None),
                conflict: watch::Sender::new(None),
                waiting_setup: Mutex::new(None),
                waiting_leader: Mutex::new(None),
                serving_hook: OnceLock::new(),
                joined: std::sync::atomic::AtomicBool::new(false),
                abstention: Abstention::new(pristine),
            }),
        };
        let joins = !cfg.voters.contains_key(&cfg.node_id);
        if !joins {
            node.inner
                .joined
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::spawn(node.clone().watch_standing(cfg.voters.clone(), joins));
        tokio::spawn(
            node.clone()
                .gate_elections(cfg.heartbeat, cfg.election_timeout.0),
        );
        let voters = cfg.voters.clone();
        let me = cfg.advertise_peer.clone();
        if !voters.contains_key(&cfg.node_id) {
            // Not an initial voter: (re)join as a learner, whether new or restarted, since a
            // learner leaves the membership when it shuts down (see `leave_if_learner`).
            node.set_waiting_setup(Some(
                "a voter to add this node as a learner (asking them now)".into(),
            ));
            let n = node.clone();
            tokio::spawn(async move { n.join_as_learner(voters, me).await });
        } else if pristine {
            node.set_waiting_setup(Some(
                "every initial voter to answer before the cluster is initialised (asking them now)"
                    .into(),
            ));
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
    ///
    /// Returns the members whose process is not there: the connection was refused (nothing
    /// listens on the peer port, as after a SIGKILL or during a restart). A peer that does not
    /// answer in time (a partition, a pause) is not in the list: silence is told apart from
    /// absence only by its length.
    pub async fn broadcast_demand(&self, data: Vec<u8>, timeout: Duration) -> Vec<NodeId> {
        let me = self.id();
        let sends = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| {
                let data = data.clone();
                async move {
                    let Ok(mut c) = self.inner.demand_channels.get(&addr) else {
                        return None;
                    };
                    let mut req =
                        tonic::Request::new(proto::peer::DemandReport { node_id: me, data });
                    req.set_timeout(timeout);
                    self.inner.standing.stamp(req.metadata_mut());
                    match c.report_demand(req).await {
                        Err(status) if crate::network::is_refused(&status) => Some(id),
                        _ => None,
                    }
                }
            });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub(crate) fn handle_demand(&self, from: NodeId, data: &[u8]) {
        if let Some(h) = self.inner.demand_handler.get() {
            h(from, data);
        }
    }

    /// Registers where this node's request counters per instance come from (once): what it
    /// answers to peers' `InstanceTraffic` and counts for itself in [`Node::gather_traffic`].
    pub fn set_traffic_source(&self, source: TrafficSource) {
        self.inner.traffic.set_source(source);
    }

    /// Every member's request counters per instance (see [`crate::traffic`]): this node's read
    /// in process, the others asked at once, each answer awaited at most `timeout`. By node id.
    /// This node counts even before it is in the membership it applied (a learner joining).
    pub async fn gather_traffic(&self, timeout: Duration) -> Vec<MemberTraffic> {
        let mut members = self.members();
        members.entry(self.id()).or_default();
        self.inner
            .traffic
            .gather(self.id(), members, &self.inner.standing, timeout)
            .await
    }

    pub(crate) fn local_traffic(&self) -> proto::peer::InstanceTrafficReply {
        self.inner.traffic.local(self.id())
    }

    /// Initialises a new cluster exactly once, whatever order its voters start in: the voter
    /// with the lowest id initialises, and only once every voter answers and none has joined a
    /// cluster yet. A pristine node that is not an initial voter asks to join as a learner.
    async fn bootstrap(self, voters: BTreeMap<NodeId, String>, log: LogStore) {
        let id = self.id();
        let lowest = voters.keys().next().copied();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut said = Said::default();
        loop {
            tick.tick().await;
            if !log.is_pristine().unwrap_or(false)
                || self.raft().is_initialized().await.unwrap_or(true)
            {
                self.set_waiting_setup(None);
                return; // Some leader has reached us: we are part of a cluster.
            }
            let mut silent = Vec::new();
            let mut someone_initialized = false;
            for (&peer, addr) in voters.iter().filter(|(p, _)| **p != id) {
                match self.probe(addr).await {
                    Some(reply) => someone_initialized |= reply.initialized,
                    None => silent.push(format!("node {peer} at {addr}")),
                }
            }
            let waiting = if someone_initialized {
                "a leader of the initialised cluster to reach this node".to_string()
            } else if !silent.is_empty() {
                format!(
                    "every initial voter to answer before the cluster is initialised; not answering: {}",
                    silent.join(", ")
                )
            } else {
                let lowest = lowest.unwrap_or(id);
                format!("node {lowest} (the lowest voter id) to initialise the cluster")
            };
            said.log(&waiting);
            self.set_waiting_setup(Some(waiting));
            if someone_initialized {
                // Wait for the leader to replicate to us (we are in its membership).
                continue;
            }
            if silent.is_empty() && lowest == Some(id) {
                let members: BTreeMap<NodeId, BasicNode> = voters
                    .iter()
                    .map(|(k, v)| (*k, BasicNode::new(v)))
                    .collect();
                // The cluster's id is on disk before the cluster exists: every entry this
                // node sends as its first leader carries it.
                match self.inner.standing.for_new_cluster() {
                    Ok(cluster) => {
                        tracing::info!(node = id, cluster_id = %cluster, "initialising cluster {cluster}")
                    }
                    Err(e) => {
                        tracing::error!(node = id, "cannot initialise the cluster: {e}");
                        continue;
                    }
                }
                self.set_waiting_setup(None);
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
        let mut said = Said::default();
        loop {
            tick.tick().await;
            match self.try_join(&voters, &me).await {
                Ok(()) => {
                    self.set_waiting_setup(None);
                    self.inner
                        .joined
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(node = self.id(), "joined the cluster as a learner");
                    return;
                }
                Err(why) => {
                    let waiting = format!(
                        "a voter to add this node as a learner (asked {}): {why}",
                        voters.values().cloned().collect::<Vec<_>>().join(", ")
                    );
                    said.log(&waiting);
                    self.set_waiting_setup(Some(waiting));
                }
            }
        }
    }

    fn set_waiting_setup(&self, w: Option<String>) {
        *self
            .inner
            .waiting_setup
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = w;
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

    /// Asks a peer whether it is part of a cluster, which, and whether this node is a member
    /// of it; `None` when it does not answer.
    async fn probe(&self, addr: &str) -> Option<ProbeReply> {
        let mut c = self.channels().get(addr).ok()?;
        let mut req = tonic::Request::new(ProbeRequest {
            from_node_id: self.id(),
        });
        req.set_timeout(Duration::from_millis(500));
        self.inner.standing.stamp(req.metadata_mut());
        c.probe(req).await.ok().map(|r| r.into_inner())
    }

    /// Asks each voter in turn to add this node as a learner; the error says what the last
    /// one answered.
    async fn try_join(&self, voters: &BTreeMap<NodeId, String>, me: &str) -> Result<(), String> {
        let mut why = String::from("no voter answered");
        for addr in voters.values() {
            let Ok(mut c) = self.channels().get(addr) else {
                continue;
            };
            let mut req = tonic::Request::new(JoinRequest {
                node_id: self.id(),
                peer_addr: me.to_string(),
            });
            req.set_timeout(self.inner.write_timeout);
            self.inner.standing.stamp(req.metadata_mut());
            match c.join(req).await {
                Ok(r) => match decode::<LeaderReply>(r.get_ref()) {
                    Ok(LeaderReply::Done { .. }) => return Ok(()),
                    Ok(LeaderReply::Failed(e)) => why = format!("{addr} answered: {e}"),
                    Ok(LeaderReply::NotLeader { .. }) => why = format!("{addr} knows no leader"),
                    Err(e) => why = format!("{addr} sent an undecodable reply: {e}"),
                },
                Err(status) => why = format!("{addr}: {}", status.message()),
            }
        }
        Err(why)
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
                Some(l) if l == self.id() => {
                    let reply = self.lead(req.clone(), deadline).await;
                    // This node may have proposed the write before it learnt that it no
                    // longer leads; the new leader may have the entry and commit it.
                    if matches!(reply, LeaderReply::NotLeader { .. }) {
                        sent_unanswered = true;
                    }
                    reply
                }
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
                    // A request that may have reached a leader without an answer coming back
                    // may be applied, whatever later attempts are told.
                    if matches!(reply, LeaderReply::NotLeader { .. }) && delivered {
                        sent_unanswered = true;
                    }
                    reply
                }
                None => LeaderReply::NotLeader { leader: None },
            };
            match outcome {
                LeaderReply::Done { index, reply } => {
                    let reply = reply.map(|r| *r);
                    if matches!(req, LeaderRequest::ReadIndex) {
                        self.applied_before(index, deadline).await?;
                        return Ok(None);
                    }
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
                // A refusal before proposing ("no quorum") speaks for this attempt only: an
                // earlier one may have been proposed and may still commit.
                LeaderReply::Failed(ClusterError::Unavailable(reason))
                    if sent_unanswered && req.request_id().is_some() =>
                {
                    return Err(ClusterError::OutcomeUnknown {
                        request_id: req.request_id().unwrap_or_default().to_string(),
                        reason: format!("an earlier attempt got no answer, and then: {reason}"),
                    });
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

    /// Waits until this node has applied `index`, or fails at the deadline: a read must not be
    /// served from a node that lags behind the read index.
    async fn applied_before(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft()
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| {
                let applied = self.raft().metrics().borrow().last_applied.map(|l| l.index);
                ClusterError::Unavailable(format!(
                    "this node (node {}) has applied up to index {} and did not reach the read index {index} within {:?}; retry, or read with local consistency",
                    self.id(),
                    applied.unwrap_or(0),
                    self.inner.write_timeout
                ))
            })
    }

    /// Makes the next read of this node's state linearizable: the leader confirms with a
    /// quorum that it still leads (openraft's read index, no log entry written) and this node
    /// then applies up to the leader's commit index. After it returns, [`Node::state`] holds
    /// every write acknowledged before the call began, wherever it was acknowledged.
    pub async fn linearizable_read(&self) -> Result<(), ClusterError> {
        self.to_leader(LeaderRequest::ReadIndex).await.map(|_| ())
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
        self.inner.standing.stamp(r.metadata_mut());
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
        if matches!(req, LeaderRequest::ReadIndex) {
            let left = deadline.saturating_duration_since(Instant::now());
            return match tokio::time::timeout(left, self.raft().get_read_log_id()).await {
                Err(_) => LeaderReply::Failed(ClusterError::Unavailable(format!(
                    "no quorum: node {} could not confirm its leadership for a read within {:?}",
                    self.id(),
                    self.inner.write_timeout
                ))),
                Ok(Ok((read, _applied))) => LeaderReply::Done {
                    index: read.map(|l| l.index).unwrap_or(0),
                    reply: None,
                },
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    LeaderReply::NotLeader {
                        leader: f.leader_id,
                    }
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    LeaderReply::Failed(ClusterError::Unavailable(format!(
                        "no quorum: node {} could not confirm its leadership for a read: {e}",
                        self.id()
                    )))
                }
                Ok(Err(RaftError::Fatal(e))) => {
                    LeaderReply::Failed(ClusterError::Internal(e.to_string()))
                }
            };
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
                    // The node stops serving before it stops receiving the log: it never
                    // serves a change made after its removal.
                    self.announce_removal(id, mem.get_node(&id).map(|n| n.addr.clone()))
                        .await;
                    self.raft()
                        .change_membership(change, false)
                        .await
                        .map(|r| (r.log_id.index, None))
                }
                LeaderRequest::ReadIndex => unreachable!("a read index is answered above"),
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
        // The bootstrap and join loops notice a little after the fact that a leader has
        // reached this node: a member with a leader waits for them no longer.
        let set_up = m.current_leader.is_some() && is_member(mem, self.id());
        let waiting = (!set_up)
            .then(|| {
                self.inner
                    .waiting_setup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .flatten()
            .or_else(|| {
                self.inner
                    .waiting_leader
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            });
        NodeStatus {
            node_id: self.id(),
            leader_id: m.current_leader,
            term: m.current_term,
            state: role_name(m.state),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            members,
            cluster_id: self.inner.standing.cluster_id(),
            not_serving: self.not_serving(),
            waiting,
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

    /// Whether this node's state is current enough to serve: it has known a leader since it
    /// started, and it has applied every entry it had stored [`CATCH_UP_WINDOW`] ago. Entries
    /// appended since (usage records arrive every second) are not waited for, so a node that
    /// keeps up stays ready instead of flapping on every append; a node replaying a backlog is
    /// not ready until it applies entries within the window of receiving them. A leader lost
    /// later does not make the node unready by itself: the data plane serves on from its last
    /// state. Meant to be asked regularly (the readiness loop does, every 100 ms).
    pub fn is_caught_up(&self) -> bool {
        let m = self.raft().metrics().borrow().clone();
        let mut r = self
            .inner
            .readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.seen_leader |= m.current_leader.is_some();
        let now = Instant::now();
        r.stored.push_back((now, m.last_log_index.unwrap_or(0)));
        // Keep the newest sample that is at least a window old at the front.
        while r
            .stored
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= CATCH_UP_WINDOW)
        {
            r.stored.pop_front();
        }
        let target = r.stored.front().map_or(0, |(_, index)| *index);
        r.seen_leader && m.last_applied.is_some_and(|l| l.index >= target)
    }

    pub async fn shutdown(&self) {
        // Peers watching this node learn that it is gone as its watch streams end.
        self.inner.closing.send_replace(true);
        let _ = self.raft().shutdown().await;
    }

    /// Becomes true when the node stops.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Watches every other member and calls `gone` with a peer's id as soon as its process is
    /// found gone (see [`crate::watch`]). Runs until the returned task is aborted.
    pub fn watch_peers(&self, gone: crate::watch::PeerGone) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        crate::watch::spawn(
            crate::watch::Watcher {
                me: self.id(),
                members: Box::new(move || node.members()),
                standing: self.inner.standing.clone(),
                tls: self.inner.peer_tls.clone(),
            },
            gone,
        )
    }

    pub(crate) fn abstention(&self) -> &Abstention {
        &self.inner.abstention
    }

    pub(crate) fn standing(&self) -> &Standing {
        &self.inner.standing
    }

    /// Why this node must not serve API traffic now, if it must not: it was removed from the
    /// cluster, a leader announced its removal, or (with `max_stale_config`) it has had no
    /// contact with a quorum for longer than that. `None`: serve.
    pub fn not_serving(&self) -> Option<String> {
        let me = self.id();
        if let Some(why) = self.removed() {
            return Some(format!("node {me} was removed from the cluster: {why}"));
        }
        if let Some(f) = self.fence() {
            return Some(format!(
                "node {} is removing node {me} from the cluster",
                f.leader
            ));
        }
        let max = self.inner.max_stale_config?;
        // Worded without the age, so that it reads the same for as long as it lasts.
        (self.inner.standing.contact_age() > max).then(|| {
            format!(
                "node {me} has had no contact with a quorum of the cluster for more than {} ms (--max-stale-config): its configuration may be stale",
                max.as_millis()
            )
        })
    }

    /// Registers what to tell when the node may or may not serve (once).
    pub fn set_serving_hook(&self, h: ServingHook) {
        if self.inner.serving_hook.set(h).is_ok() {
            self.refresh_serving();
        }
    }

    fn refresh_serving(&self) {
        if let Some(h) = self.inner.serving_hook.get() {
            h(self.not_serving());
        }
    }

    /// Why this node knows it is no longer a member, once it does.
    pub fn removed(&self) -> Option<String> {
        self.inner.removed.borrow().clone()
    }

    /// Resolves once this node knows it was removed, with why.
    pub async fn wait_removed(&self) -> String {
        let mut rx = self.inner.removed.subscribe();
        match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves if this node's cluster id and a peer's differ, with a message naming both:
    /// such a node must not run.
    pub async fn wait_conflict(&self) -> String {
        let mut rx = self.inner.conflict.subscribe();
        match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    fn fence(&self) -> Option<Fence> {
        self.inner
            .standing
            .fence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A leader is about to remove this node: stop serving now.
    pub(crate) fn set_fence(&self, leader: NodeId) {
        tracing::warn!(
            node = self.id(),
            leader,
            "node {leader} is removing this node from the cluster: no longer serving API traffic"
        );
        *self
            .inner
            .standing
            .fence
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Fence {
            leader,
            at: Instant::now(),
        });
        // Before the leader hears back, so before it proposes the removal.
        self.refresh_serving();
    }

    /// Tells node `id` (at `addr`) that this leader is about to remove it, so that it stops
    /// serving first. Best effort: a node that cannot be reached is cut off anyway, and learns
    /// of its removal from its peers when it is reachable again.
    async fn announce_removal(&self, id: NodeId, addr: Option<String>) {
        if id == self.id() {
            self.set_fence(id);
            return;
        }
        let Some(addr) = addr else { return };
        let Ok(mut c) = self.channels().get(&addr) else {
            return;
        };
        let mut req = tonic::Request::new(RemovingRequest {
            node_id: id,
            leader_id: self.id(),
        });
        req.set_timeout(Duration::from_secs(1));
        self.inner.standing.stamp(req.metadata_mut());
        if let Err(e) = c.removing(req).await {
            tracing::warn!(
                node = self.id(),
                "could not tell node {id} at {addr} that it is being removed ({}); removing it anyway",
                e.message()
            );
        }
    }

    /// Keeps this node's standing current, every 100 ms, for as long as it runs:
    /// - as leader, its quorum contact from openraft's `millis_since_quorum_ack`;
    /// - removal: from the membership it applied, or, when it hears from no quorum, from its
    ///   peers' memberships (a removed node receives no more log entries, so it may never apply
    ///   the entry that removes it);
    /// - the cluster id: checked against the peers' (`voters`, then the members) until one
    ///   answers with the same id;
    /// - what it waits for, logged every few seconds.
    ///
    /// `joins`: the node joins as a learner, so a membership without it means "not yet" until
    /// it has been a member.
    async fn watch_standing(self, voters: BTreeMap<NodeId, String>, joins: bool) {
        let me = self.id();
        let stale_after = self.inner.election_max * 2;
        let fence_hold = self.inner.write_timeout * 2;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_member = false;
        let mut was_leader = false;
        let mut id_confirmed = voters.keys().all(|&v| v == me);
        let mut last_probe: Option<Instant> = None;
        let mut leaderless_since: Option<Instant> = None;
        // The membership (leader term, log index) that showed this node removed.
        let mut removed_by: Option<(u64, Option<u64>)> = None;
        let mut said = Said::default();
        loop {
            tick.tick().await;
            let m = self.raft().metrics().borrow().clone();
            if m.running_state.is_err() || m.state == ServerState::Shutdown {
                return;
            }
            if m.state == ServerState::Leader {
                // Elected: a quorum granted its votes just now (openraft reports no quorum
                // acknowledgement until the followers answer the first entries).
                let ms = if was_leader {
                    m.millis_since_quorum_ack
                } else {
                    Some(0)
                };
                if let Some(ms) = ms {
                    self.inner.standing.note_contact(Duration::from_millis(ms));
                }
            }
            was_leader = m.state == ServerState::Leader;
            let mem = m.membership_config.membership();
            let mem_log = *m.membership_config.log_id();
            let mine = (
                mem_log.map_or(0, |l| l.leader_id.term),
                mem_log.map(|l| l.index),
            );
            let applied =
                mem_log.is_some() && m.last_applied.map(|l| l.index) >= mem_log.map(|l| l.index);
            let member = is_member(mem, me);
            // A learner is armed once it has joined in this run and then seen itself in the
            // membership it applied; a restarted learner may still hold the membership from
            // before it left, or one from before it was removed, while it joins again.
            let joined = self.inner.joined.load(std::sync::atomic::Ordering::Relaxed);
            was_member |= member && joined;
            let armed = was_member || !joins;
            let contact_fresh = self.inner.standing.contact_age() <= stale_after;
            if let Some(f) = self.fence()
                && f.at.elapsed() > fence_hold
                && member
                && contact_fresh
                && self.removed().is_none()
            {
                tracing::warn!(
                    node = me,
                    "the removal announced by node {} did not happen: serving again",
                    f.leader
                );
                *self
                    .inner
                    .standing
                    .fence
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }

            // Ask the peers when this node may be cut off from the log: it has not confirmed
            // its cluster id yet, or it is a member that hears from no quorum.
            let suspect = armed && mem_log.is_some() && self.removed().is_none() && !contact_fresh;
            let due = last_probe.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if (suspect || !id_confirmed) && due {
                last_probe = Some(Instant::now());
                let mut peers: BTreeMap<NodeId, String> = voters.clone();
                peers.extend(mem.nodes().map(|(id, n)| (*id, n.addr.clone())));
                peers.remove(&me);
                let replies = futures::future::join_all(
                    peers
                        .iter()
                        .map(|(id, addr)| async { (*id, addr.clone(), self.probe(addr).await) }),
                )
                .await;
                for (peer, addr, reply) in replies {
                    let Some(r) = reply else { continue };
                    if let Some(ours) = self.inner.standing.cluster_id()
                        && !r.cluster_id.is_empty()
                    {
                        if r.cluster_id != ours {
                            self.mark_conflict(format!(
                                "{} belongs to cluster {ours}, but peer node {peer} at {addr} belongs to cluster {}",
                                self.inner.standing.source(),
                                r.cluster_id
                            ));
                            return;
                        }
                        id_confirmed = true;
                    }
                    let theirs = (r.membership_term, r.membership_index);
                    if suspect
                        && !r.asker_is_member
                        && r.membership_index.is_some()
                        && theirs >= mine
                        && self.removed().is_none()
                    {
                        removed_by = Some(theirs);
                        self.mark_removed(format!(
                            "node {peer}'s membership (log index {}) does not include it",
                            r.membership_index.unwrap_or(0)
                        ));
                    }
                }
            }

            // Its own membership, once the cluster id is settled (a data dir of another
            // cluster has a membership without this node too; that is not a removal).
            let id_settled = id_confirmed || last_probe.is_some();
            let removed = self.removed().is_some();
            if member && removed && removed_by.is_none_or(|by| mine > by) {
                // Added again (by an operator, or a learner that rejoined).
                tracing::warn!(node = me, "this node is a member again");
                removed_by = None;
                self.inner.removed.send_replace(None);
            } else if !member && !removed && armed && applied && id_settled {
                removed_by = Some(mine);
                let index = mem_log.map_or(0, |l| l.index);
                self.mark_removed(format!(
                    "the membership it applied (log index {index}) does not include it"
                ));
            }

            self.refresh_serving();

            // What it waits for: a leader, or (with one) contact with a quorum through it.
            let voters = || {
                mem.voter_ids()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let waiting = if mem_log.is_none() || self.removed().is_some() {
                None
            } else if m.current_leader.is_none() {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                (since.elapsed() > stale_after).then(|| {
                    (
                        "no leader",
                        format!(
                            "a majority of the voters [{}] to elect a leader (none known for {:.0} s, term {})",
                            voters(),
                            since.elapsed().as_secs_f64(),
                            m.current_term
                        ),
                    )
                })
            } else {
                leaderless_since = None;
                let age = self.inner.standing.contact_age();
                (age > stale_after).then(|| {
                    (
                        "no quorum",
                        format!(
                            "contact with a majority of the voters [{}] (none for {:.0} s; leader: node {})",
                            voters(),
                            age.as_secs_f64(),
                            m.current_leader.unwrap_or_default()
                        ),
                    )
                })
            };
            if let Some((key, text)) = &waiting {
                said.log_as(key, text);
            }
            *self
                .inner
                .waiting_leader
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = waiting.map(|(_, text)| text);
        }
    }

    fn mark_removed(&self, why: String) {
        tracing::error!(
            node = self.id(),
            "this node was removed from the cluster: {why}; it no longer serves API traffic"
        );
        self.inner.removed.send_replace(Some(why));
        self.refresh_serving();
    }

    fn mark_conflict(&self, why: String) {
        tracing::error!(node = self.id(), "{why}");
        self.inner.conflict.send_replace(Some(why));
    }
}

/// Logs what a node waits for when it changes, and again every few seconds while it lasts;
/// not in the first seconds, when waiting for the other nodes to start is normal.
struct Said {
    since: Instant,
    last: Option<(String, Instant)>,
}

impl Default for Said {
    fn default() -> Self {
        Said {
            since: Instant::now(),
            last: None,
        }
    }
}

impl Said {
    const EVERY: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_secs(2);

    fn log(&mut self, waiting: &str) {
        self.log_as(waiting, waiting);
    }

    /// Logs `waiting`, which may change in details (a count of seconds) while its `key` (what
    /// it is about) stays the same: logged again when the key changes or every few seconds.
    fn log_as(&mut self, key: &str, waiting: &str) {
        let due = self.since.elapsed() >= Self::QUIET
            && match &self.last {
                Some((last, at)) => last != key || at.elapsed() >= Self::EVERY,
                None => true,
            };
        if due {
            tracing::warn!("waiting for {waiting}");
            self.last = Some((key.to_string(), Instant::now()));
        }
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
