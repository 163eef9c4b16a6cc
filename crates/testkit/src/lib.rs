//! Test support for the gateway's integration tests and benchmarks.
//!
//! This crate owns how tests run real nodes: [`Cluster`] starts `gatewayd` processes on
//! 127.0.0.1 with ports leased so that no other test process can take them ([`ports`]) and
//! data in a temp dir, kills them with SIGKILL or stops them with SIGTERM, restarts them on
//! the same data, and runs `gatewayctl` against them. Every process a test spawns is held in a
//! [`KillOnDrop`], so a panicking test leaves none behind. [`eventually`] polls a condition
//! until a deadline, and [`Cluster::wait_caught_up`] waits for a node to apply what another
//! has, so tests never sleep or hope to synchronise. When a test panics, the logs of its nodes
//! are printed. [`netns`] puts test hosts in network namespaces, for tests that cut the
//! network between nodes.

pub mod http;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod ports;

pub use ports::{PortLease, free_port};

/// Times for tests on the development clock, in Unix milliseconds.
pub mod time {
    pub const HOUR_MS: u64 = 3_600_000;
    pub const DAY_MS: u64 = 24 * HOUR_MS;
    /// 2026-01-01T00:00:00Z.
    pub const JAN_1: u64 = 1_767_225_600_000;
}

use proto::admin::admin_client::AdminClient;
use std::collections::BTreeMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub gatewayd: PathBuf,
    pub gatewayctl: PathBuf,
}

/// The workspace's binaries, as cargo built them for this integration test or bench.
#[macro_export]
macro_rules! binaries {
    () => {
        $crate::Binaries {
            gatewayd: env!("CARGO_BIN_EXE_gatewayd").into(),
            gatewayctl: env!("CARGO_BIN_EXE_gatewayctl").into(),
        }
    };
}

/// A child process that is killed (SIGKILL) and reaped when dropped: a test that panics, or
/// returns early, leaves no process behind holding its ports or its data directory. Derefs to
/// the [`Child`] for everything else.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Spawns `cmd` under the guard.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<KillOnDrop> {
        cmd.spawn().map(KillOnDrop)
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both are harmless when the child has already exited and been waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub admin: u16,
    pub peer: u16,
    pub http: u16,
    pub ops: u16,
}

impl Ports {
    /// Leases four ports; they stay the node's across restarts for as long as the leases live.
    fn lease() -> (Ports, [PortLease; 4]) {
        let leases = [(); 4].map(|_| PortLease::take());
        let ports = Ports {
            admin: leases[0].port(),
            peer: leases[1].port(),
            http: leases[2].port(),
            ops: leases[3].port(),
        };
        (ports, leases)
    }
}

/// One gatewayd process (or its stopped remains).
#[derive(Debug)]
pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub ports: Ports,
    /// Held while the node exists, so that no other test process takes its ports, even while
    /// it is stopped between a kill and a restart.
    _leases: [PortLease; 4],
    child: Option<KillOnDrop>,
}

impl NodeProc {
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// How the process ended, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// What `gatewayctl` did.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    fn from(o: Output) -> CtlOutput {
        CtlOutput {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The output parsed as JSON; panics with the error output if the command failed.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.success, "gatewayctl failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("gatewayctl printed no JSON ({e}): {}", self.stdout))
    }
}

/// A development clock file that nodes started with `--dev-mode --dev-clock-file PATH` take
/// their time from, so that tests can move days of billing cycles in seconds.
pub struct DevClock(pub PathBuf);

impl DevClock {
    /// Sets the time, in Unix milliseconds.
    pub fn set(&self, ms: u64) {
        // Write then rename, so a node never reads a half-written file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string()).expect("write the clock file");
        std::fs::rename(&tmp, &self.0).expect("rename the clock file");
    }

    /// The flags that make a node read this clock.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--dev-mode".into(),
            "--dev-clock-file".into(),
            self.0.display().to_string(),
        ]
    }
}

impl Cluster {
    /// `n` nodes on a development clock set to `start_ms`, started with `extra` flags too; once
    /// they have a leader.
    pub async fn start_with_clock(
        bins: Binaries,
        n: u64,
        start_ms: u64,
        extra: &[&str],
    ) -> (Cluster, DevClock) {
        let mut c = Cluster::new(bins, n);
        let clock = DevClock(c.dir().join("clock"));
        clock.set(start_ms);
        c.extra_args = clock.node_args();
        c.extra_args.extend(extra.iter().map(|s| s.to_string()));
        for id in 1..=n {
            c.spawn(id);
        }
        c.wait_leader(Duration::from_secs(30)).await;
        (c, clock)
    }
}

/// A set of gatewayd processes on loopback.
pub struct Cluster {
    bins: Binaries,
    tmp: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    /// The initial voters, as given to every node with --peers.
    voters: Vec<u64>,
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
    /// Extra environment variables for every node.
    pub extra_env: Vec<(String, String)>,
    /// The cluster CA when every listener serves TLS (see [`Cluster::new_tls`]).
    pub pki: Option<pki::Pki>,
    /// The operator's token, for the status calls of the waits ([`Cluster::status`]) when the
    /// nodes require one (`--admin-token-file`).
    pub admin_token: Option<String>,
    /// Whether nodes get `--allow-private-webhooks` (the default: tests' webhooks listen on
    /// 127.0.0.1, which gatewayd refuses without it).
    pub allow_private_webhooks: bool,
}

impl Cluster {
    /// Prepares `n` voters (ids 1..=n) without starting them.
    pub fn new(bins: Binaries, n: u64) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("gateway-test-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(id, Self::new_node(tmp.path(), id));
        }
        Cluster {
            bins,
            tmp,
            nodes,
            voters: (1..=n).collect(),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            pki: None,
            admin_token: None,
            allow_private_webhooks: true,
        }
    }

    /// Like [`Cluster::new`], with TLS on every listener: the peer listeners require
    /// certificates of a cluster CA made for the test, and each node has its own certificate
    /// for 127.0.0.1 (see [`Cluster::node_cert`]). Admin clients trust that CA.
    pub fn new_tls(bins: Binaries, n: u64) -> Cluster {
        let mut c = Cluster::new(bins, n);
        c.pki = Some(pki::Pki::new(&c.tmp.path().join("pki"), "cluster"));
        c
    }

    /// Node `id`'s certificate files (TLS clusters only), issued on first use.
    pub fn node_cert(&self, id: u64) -> pki::CertFiles {
        let pki = self.pki.as_ref().expect("a TLS cluster");
        let files = pki::CertFiles {
            cert: self.tmp.path().join(format!("pki/node-{id}.pem")),
            key: self.tmp.path().join(format!("pki/node-{id}-key.pem")),
        };
        if !files.cert.exists() {
            pki.issue_into(&files, &["127.0.0.1", "localhost"]);
        }
        files
    }

    /// A client config trusting the cluster CA (TLS clusters only).
    pub fn client_tls(&self) -> tls::ClientTls {
        let pki = self.pki.as_ref().expect("a TLS cluster");
        tls::ClientFiles {
            ca: pki.ca.clone(),
            identity: None,
        }
        .load("test client", tls::ALPN_H2)
        .expect("client TLS config")
    }

    /// Starts `n` voters and waits until they have elected a leader.
    pub async fn start(bins: Binaries, n: u64) -> Cluster {
        let mut c = Cluster::new(bins, n);
        for id in 1..=n {
            c.spawn(id);
        }
        c.wait_leader(Duration::from_secs(20)).await;
        c
    }

    /// One node with `extra` on its command line, and `GET /<api>` in group `group` on
    /// `backend` (a URL) deployed and answering 200.
    pub async fn single_with_api(
        bins: Binaries,
        extra: &[String],
        group: &str,
        api: &str,
        backend: &str,
    ) -> Cluster {
        let mut c = Cluster::new(bins, 1);
        c.extra_args = extra.to_vec();
        c.spawn(1);
        c.wait_leader(Duration::from_secs(20)).await;
        c.deploy_get_api(group, api, backend, &[]);
        let (addr, path) = (c.http_addr(1), format!("/{api}"));
        eventually(
            &format!("{path} routable"),
            Duration::from_secs(20),
            || async { http::get(&addr, &path).await.filter(|r| r.status == 200) },
        )
        .await;
        c
    }

    fn new_node(root: &Path, id: u64) -> NodeProc {
        let (ports, leases) = Ports::lease();
        NodeProc {
            id,
            dir: root.join(format!("node-{id}")),
            ports,
            _leases: leases,
            child: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn peers_arg(&self) -> String {
        self.voters
            .iter()
            .map(|id| format!("{id}=127.0.0.1:{}", self.nodes[id].ports.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command line a node runs with.
    pub fn command(&self, id: u64) -> Command {
        let n = &self.nodes[&id];
        let mut cmd = Command::new(&self.bins.gatewayd);
        cmd.arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--listen-admin")
            .arg(format!("127.0.0.1:{}", n.ports.admin))
            .arg("--listen-peer")
            .arg(format!("127.0.0.1:{}", n.ports.peer))
            .arg("--listen-http")
            .arg(format!("127.0.0.1:{}", n.ports.http))
            .arg("--listen-ops")
            .arg(format!("127.0.0.1:{}", n.ports.ops))
            .arg("--peers")
            .arg(self.peers_arg())
            .args(self.tls_args(id))
            .args(
                self.allow_private_webhooks
                    .then_some("--allow-private-webhooks"),
            )
            .args(&self.extra_args)
            // The node's own defaults (--log-level info), whatever the test runner has.
            .env_remove("RUST_LOG")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        // Settings of the environment the tests run in must not leak into the nodes.
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") && !self.extra_env.iter().any(|(e, _)| *e == k) {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    fn tls_args(&self, id: u64) -> Vec<String> {
        let Some(pki) = &self.pki else {
            return Vec::new();
        };
        let files = self.node_cert(id);
        let (cert, key) = (files.cert.display(), files.key.display());
        let mut args = Vec::new();
        for listener in ["peer", "admin", "http"] {
            args.push(format!("--{listener}-tls-cert={cert}"));
            args.push(format!("--{listener}-tls-key={key}"));
        }
        args.push(format!("--peer-tls-ca={}", pki.ca.display()));
        args
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn spawn(&mut self, id: u64) {
        let mut cmd = self.command(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(!node.is_running(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("log file");
        let child = KillOnDrop::spawn(
            cmd.stdout(Stdio::from(log.try_clone().expect("log fd")))
                .stderr(Stdio::from(log)),
        )
        .expect("spawn gatewayd");
        node.child = Some(child);
    }

    /// Prepares and starts a node that is not an initial voter: it joins as a learner.
    pub fn add_node(&mut self, id: u64) {
        self.prepare_node(id);
        self.spawn(id);
    }

    /// Prepares a node that is not an initial voter, without starting it.
    pub fn prepare_node(&mut self, id: u64) {
        let node = Self::new_node(self.tmp.path(), id);
        self.nodes.insert(id, node);
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; returns whether it exited
    /// successfully.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(mut c) = node.child.take() else {
            return false;
        };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Leaves node `id` out of the voters in the `--peers` of every node started from now on,
    /// as an operator does before bringing back a removed node: it then joins as a learner.
    pub fn drop_initial_voter(&mut self, id: u64) {
        self.voters.retain(|v| *v != id);
    }

    /// Deletes a stopped node's data, as if its disk were lost.
    pub fn wipe(&mut self, id: u64) {
        let node = &self.nodes[&id];
        assert!(node.child.is_none(), "stop node {id} before wiping it");
        let _ = std::fs::remove_dir_all(&node.dir);
    }

    pub fn admin_endpoint(&self, id: u64) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.nodes[&id].ports.admin)
    }

    pub fn http_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].ports.http)
    }

    pub fn ops_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].ports.ops)
    }

    /// Runs `gatewayctl --endpoint <node id> ARGS`, with no token.
    pub fn ctl(&self, id: u64, args: &[&str]) -> CtlOutput {
        self.ctl_with_token(id, None, args)
    }

    /// Runs `gatewayctl --endpoint <node id> ARGS` with `GATEWAY_TOKEN` set to `token`.
    pub fn ctl_with_token(&self, id: u64, token: Option<&str>, args: &[&str]) -> CtlOutput {
        let mut cmd = Command::new(&self.bins.gatewayctl);
        cmd.arg("--endpoint")
            .arg(self.admin_endpoint(id))
            .args(args)
            .env_remove("GATEWAY_ENDPOINT")
            .env_remove("GATEWAY_TOKEN")
            .env_remove("GATEWAY_TOKEN_FILE")
            .env_remove("GATEWAY_TLS_CA");
        if let Some(pki) = &self.pki {
            cmd.arg("--tls-ca").arg(&pki.ca);
        }
        if let Some(t) = token {
            cmd.env("GATEWAY_TOKEN", t);
        }
        CtlOutput::from(cmd.output().expect("run gatewayctl"))
    }

    /// Runs `gatewayctl ... -o json` and parses its output; panics if it fails.
    pub fn ctl_json(&self, id: u64, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        self.ctl(id, &a).json()
    }

    /// Through node 1: creates API `name` in group `group` (the group too, if it is not there
    /// yet) at `GET /<name>` on `backend`, with any more `api create` flags in `extra`, and
    /// deploys it to RELEASE.
    pub fn deploy_get_api(&self, group: &str, name: &str, backend: &str, extra: &[&str]) {
        let _ = self.ctl(1, &["group", "create", "--name", group]);
        let path = format!("/{name}");
        let mut create = vec![
            "api",
            "create",
            "--group",
            group,
            "--name",
            name,
            "--method",
            "GET",
            "--path",
            &path,
            "--backend",
            backend,
        ];
        create.extend_from_slice(extra);
        self.ctl_json(1, &create);
        self.ctl_json(1, &["api", "deploy", "--group", group, "--name", name]);
    }

    /// A gRPC admin client for node `id`.
    pub async fn admin(&self, id: u64) -> AdminClient<Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.admin_endpoint(id))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15));
        let ch = match &self.pki {
            Some(_) => endpoint.connect_with_connector_lazy(tls::Connector::new(self.client_tls())),
            None => endpoint.connect_lazy(),
        };
        AdminClient::new(ch)
    }

    /// The cluster status as node `id` reports it, if it answers.
    pub async fn status(&self, id: u64) -> Option<proto::admin::ClusterStatus> {
        let mut c = self.admin(id).await;
        let mut req = tonic::Request::new(proto::admin::DescribeClusterRequest {});
        if let Some(token) = &self.admin_token {
            let value = format!("Bearer {token}")
                .parse()
                .expect("a token fit for a header");
            req.metadata_mut().insert("authorization", value);
        }
        c.describe_cluster(req).await.ok().map(|r| r.into_inner())
    }

    /// Waits until each of `readers` has applied the log up to the index `writer` has applied
    /// now, and returns that index.
    ///
    /// A write returns once it is applied on the node that answered it, so `writer`'s applied
    /// index is at least the write's own: after this, a read on any of `readers` sees the
    /// write. This is read-after-write across nodes that waits on the Raft log, not on luck.
    pub async fn wait_caught_up(&self, writer: u64, readers: &[u64]) -> u64 {
        let wait = Duration::from_secs(20);
        let index = eventually(&format!("node {writer}'s applied index"), wait, || async {
            self.status(writer).await?.applied_index
        })
        .await;
        for &reader in readers {
            let what = format!("node {reader} to apply index {index} (applied on node {writer})");
            eventually(&what, wait, || async {
                let applied = self.status(reader).await?.applied_index?;
                (applied >= index).then_some(())
            })
            .await;
        }
        index
    }

    /// Waits until every running node agrees on one leader, and returns it.
    pub async fn wait_leader(&mut self, timeout: Duration) -> u64 {
        self.wait_leader_other_than(None, timeout).await
    }

    /// Waits until every running node agrees on one leader that is not `not`: after killing
    /// a leader, the survivors still name it until they time it out.
    pub async fn wait_leader_other_than(&mut self, not: Option<u64>, timeout: Duration) -> u64 {
        let running: Vec<u64> = self
            .nodes
            .iter_mut()
            .filter_map(|(id, n)| n.is_running().then_some(*id))
            .collect();
        let this = &*self;
        eventually("a leader all running nodes agree on", timeout, || {
            let running = running.clone();
            async move {
                let mut leader = None;
                for id in running {
                    let s = this.status(id).await?;
                    let l = s.leader_id?;
                    if leader.is_some_and(|x| x != l) || Some(l) == not {
                        return None;
                    }
                    leader = Some(l);
                }
                leader
            }
        })
        .await
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[&id].log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.kill(*id);
        }
        if std::thread::panicking() {
            for id in ids {
                eprintln!(
                    "----- node {id} log (last 60 lines) -----\n{}",
                    self.log_tail(id, 60)
                );
            }
        }
    }
}

/// Sends a signal by name with kill(1), so that the crate needs no libc bindings.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_child_dies_with_a_panicking_test() {
        let mut pid = 0;
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let child = KillOnDrop::spawn(Command::new("sleep").arg("60")).unwrap();
            pid = child.id();
            assert!(Path::new(&format!("/proc/{pid}")).exists());
            panic!("the test fails while its child runs");
        }));
        assert!(failed.is_err());
        // Killed and reaped: not even a zombie is left.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
