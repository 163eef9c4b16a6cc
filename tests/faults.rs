//! The fault harness: three real `gatewayd` processes, each in its own network namespace
//! (`testkit::netns`), under concurrent admin clients while a nemesis cuts the network
//! (a node isolated, a one-way cut, the leader isolated), pauses processes (SIGSTOP longer
//! than the election timeout), kills and restarts them on their data, and sets the leader's
//! clock (each node reads its own development clock) minutes ahead or behind the others. Every client
//! operation is recorded with its invocation and completion times, and the history is checked
//! for linearizability (crate `linearizability`) against a model of the operations: recharges
//! (each with a request id, retried with it when the outcome is unknown) and balance reads of
//! a few accounts; creates, spec changes, deletes and reads of a few instances. After the
//! faults heal, every node must hold the same state.
//!
//! Clients reach every node through the bridge whatever the faults (the cuts only name the
//! nodes' addresses), so operations keep arriving at isolated and deposed nodes, which is where
//! stale reads and duplicate writes would come from.
//!
//! `FAULT_RUNS=N` (default 1) runs N randomized runs with seeds `FAULT_SEED`, +1, ...;
//! `FAULT_SECONDS` sets how long each run's faults last (default 12). Each run prints its seed,
//! its nemeses and the checker's figures.
//!
//! Needs root, iproute2 and iptables: without network namespaces the tests say so and pass,
//! unless `CI` is set, where they fail.

use linearizability::{CheckError, Completion, Model, Operation};
use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::netns::Net;
use testkit::{Binaries, binaries, eventually};
use tonic::transport::Channel;

const NODES: usize = 3;
const ADMIN_PORT: u16 = 9090;
const PEER_PORT: u16 = 9091;
const ACCOUNTS: u8 = 3;
const INSTANCES: u8 = 3;
const SPECS: [&str; 3] = ["api.s1.small", "api.s1.medium", "api.s2.large"];
const REGION: &str = "ap-southeast-1";
const TOKEN: &str = "fault-harness-operator-token-0123456789";
/// How long any wait for the cluster may take.
const SETTLE: Duration = Duration::from_secs(30);
/// Longer than the election timeout (500-1000 ms), so a paused leader is deposed.
const PAUSE: Duration = Duration::from_millis(2500);
/// A client's bound on one call; gatewayd's own write timeout is 5 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(7);
/// Each client runs at most this many operations per run.
const MAX_OPS_PER_CLIENT: usize = 400;
const CLIENTS: u64 = 6;

// ------------------------------------------------------------------------------------------
// Randomness: a seeded generator, so a run's nemeses and operations can be replayed.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ------------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone)]
enum Input {
    Recharge { account: u8, micros: i64 },
    ReadBalance { account: u8 },
    Create { instance: u8, spec: &'static str },
    Modify { instance: u8, spec: &'static str },
    Delete { instance: u8 },
    Get { instance: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    /// A balance, in millionths of a dollar.
    Balance(i64),
    Done,
    /// Refused as already existing / not found.
    Exists,
    Missing,
    /// Refused with "nothing was written" (no quorum): the claim the check holds it to.
    NoEffect,
    Spec(Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Account(u8),
    Instance(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Value {
    Balance(i64),
    Spec(Option<String>),
}

struct Gateway;

impl Model for Gateway {
    type State = Value;
    type Input = Input;
    type Output = Output;
    type Key = Key;

    fn init(&self) -> Value {
        // Not used: each partition starts from the state it was set up with (see `initial`).
        Value::Balance(0)
    }

    fn partition(&self, input: &Input) -> Key {
        match input {
            Input::Recharge { account, .. } | Input::ReadBalance { account } => {
                Key::Account(*account)
            }
            Input::Create { instance, .. }
            | Input::Modify { instance, .. }
            | Input::Delete { instance }
            | Input::Get { instance } => Key::Instance(*instance),
        }
    }

    fn step(&self, state: &Value, input: &Input, output: Option<&Output>) -> Option<Value> {
        if output == Some(&Output::NoEffect) {
            return Some(state.clone());
        }
        let unknown = output.is_none();
        let is = |o: Output| output == Some(&o);
        match (state, input) {
            (Value::Balance(b), Input::Recharge { micros, .. }) => {
                let after = b + micros;
                (unknown || is(Output::Balance(after))).then_some(Value::Balance(after))
            }
            (Value::Balance(b), Input::ReadBalance { .. }) => {
                is(Output::Balance(*b)).then(|| state.clone())
            }
            (Value::Spec(current), Input::Create { spec, .. }) => match current {
                None if unknown || is(Output::Done) => Some(Value::Spec(Some(spec.to_string()))),
                Some(_) if unknown || is(Output::Exists) => Some(state.clone()),
                _ => None,
            },
            (Value::Spec(current), Input::Modify { spec, .. }) => match current {
                Some(_) if unknown || is(Output::Done) => Some(Value::Spec(Some(spec.to_string()))),
                None if unknown || is(Output::Missing) => Some(state.clone()),
                _ => None,
            },
            (Value::Spec(current), Input::Delete { .. }) => match current {
                Some(_) if unknown || is(Output::Done) => Some(Value::Spec(None)),
                None if unknown || is(Output::Missing) => Some(state.clone()),
                _ => None,
            },
            (Value::Spec(current), Input::Get { .. }) => {
                is(Output::Spec(current.clone())).then(|| state.clone())
            }
            _ => None,
        }
    }
}

/// The model with each partition's state as the harness set it up before the clients began.
struct Started {
    initial: BTreeMap<Key, Value>,
}

impl Model for Started {
    type State = (bool, Value);
    type Input = Input;
    type Output = Output;
    type Key = Key;

    fn init(&self) -> (bool, Value) {
        (false, Value::Balance(0))
    }

    fn partition(&self, input: &Input) -> Key {
        Gateway.partition(input)
    }

    fn step(
        &self,
        state: &(bool, Value),
        input: &Input,
        out: Option<&Output>,
    ) -> Option<(bool, Value)> {
        let current = if state.0 {
            state.1.clone()
        } else {
            self.initial[&Gateway.partition(input)].clone()
        };
        Gateway.step(&current, input, out).map(|v| (true, v))
    }
}

type History = Vec<Operation<Input, Output>>;

// ------------------------------------------------------------------------------------------
// The nodes

struct Gateways {
    net: Net,
    /// Each node's wall clock (`--dev-clock-file`), ticking with real time plus an offset.
    clocks: Arc<Clocks>,
    bins: Binaries,
    dir: tempfile::TempDir,
    token_file: PathBuf,
    nodes: Vec<Option<Child>>,
    paused: Vec<bool>,
}

impl Gateways {
    fn new(net: Net) -> Gateways {
        let dir = tempfile::Builder::new()
            .prefix("gateway-faults-")
            .tempdir()
            .expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let clocks = Clocks::start(dir.path());
        Gateways {
            net,
            clocks,
            bins: binaries!(),
            dir,
            token_file,
            nodes: (0..NODES).map(|_| None).collect(),
            paused: vec![false; NODES],
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", i + 1))
    }

    fn start(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let ip = self.net.host(i).ip.clone();
        let peers = self.net.peers_arg(PEER_PORT);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut cmd = self.net.command(i, &self.bins.gatewayd);
        cmd.args(["--node-id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{}", i + 1)))
            .args(["--listen-admin", &format!("{ip}:{ADMIN_PORT}")])
            .args(["--listen-peer", &format!("{ip}:{PEER_PORT}")])
            .args(["--listen-http", &format!("{ip}:8080")])
            .args(["--listen-ops", &format!("{ip}:9100")])
            .args(["--peers", &peers])
            .arg("--admin-token-file")
            .arg(&self.token_file)
            .args(["--peer-plaintext", "--admin-plaintext"])
            .args(["--dev-mode", "--dev-clock-file"])
            .arg(&self.clocks.files[i]);
        self.nodes[i] = Some(Net::spawn_node(cmd, log));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused[i] = false;
    }

    fn signal(&mut self, i: usize, name: &str) {
        if let Some(c) = &self.nodes[i] {
            testkit::signal(c.id(), name);
            self.paused[i] = name == "STOP";
        }
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{ADMIN_PORT}", self.net.host(i).ip)
    }

    fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
        if std::thread::panicking() {
            // Keep the whole logs: a backtrace can fill the last lines.
            let kept =
                std::env::temp_dir().join(format!("gateway-faults-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for i in 0..NODES {
                let _ = std::fs::copy(self.log_path(i), kept.join(format!("node-{}.log", i + 1)));
                eprintln!(
                    "----- node {} log (last 60 lines) -----\n{}",
                    i + 1,
                    self.log_tail(i, 60)
                );
            }
            eprintln!("the nodes' whole logs are kept in {}", kept.display());
        }
    }
}

/// An admin client of one node, with the operator's token and the chosen read consistency.
#[derive(Clone)]
struct Admin {
    client: AdminClient<Channel>,
    local_reads: bool,
}

impl Admin {
    fn new(endpoint: String, local_reads: bool) -> Admin {
        let ch = tonic::transport::Endpoint::from_shared(endpoint)
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Admin {
            client: AdminClient::new(ch),
            local_reads,
        }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        md.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        if self.local_reads {
            md.insert("x-consistency", "local".parse().unwrap());
        }
        r
    }
}

fn account_name(a: u8) -> String {
    format!("acct-{a}")
}

fn instance_name(i: u8) -> String {
    format!("inst-{i}")
}

/// "12.340000" -> 12_340_000.
fn micros(balance: &str) -> i64 {
    let (whole, frac) = balance.split_once('.').unwrap_or((balance, ""));
    let frac = format!("{frac:0<6}");
    whole.parse::<i64>().expect("balance") * 1_000_000 + frac[..6].parse::<i64>().expect("balance")
}

/// What a failed write tells the client: refused with nothing written, or unknown.
fn write_failure(status: &tonic::Status) -> Option<Output> {
    match status.code() {
        tonic::Code::AlreadyExists => Some(Output::Exists),
        tonic::Code::NotFound => Some(Output::Missing),
        // "no quorum: ... nothing was written": held to it.
        tonic::Code::Unavailable if status.message().starts_with("no quorum") => {
            Some(Output::NoEffect)
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Clients

struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn record(&self, client: u64, call: u64, input: Input, completion: Completion<Output>) {
        self.history.lock().unwrap().push(Operation {
            client,
            call,
            input,
            completion,
        });
    }
}

/// Runs one random operation through `admin`; `None` for a read that failed (it constrains
/// nothing, so it is left out of the history).
async fn run_op(
    admins: &[Admin],
    rng: &mut Rng,
    client: u64,
    seq: usize,
    rec: &Recorder,
    until: Instant,
) {
    let mut admin = admins[rng.below(NODES as u64) as usize].clone();
    let call = rec.now();
    let account = rng.below(ACCOUNTS as u64) as u8;
    let instance = rng.below(INSTANCES as u64) as u8;
    let spec = SPECS[rng.below(SPECS.len() as u64) as usize];
    match rng.below(6) {
        0 | 1 => {
            // A recharge with a request id; when its outcome is unknown, retried with the same
            // id through any node until it is known or the run ends.
            let cents = 1 + rng.below(99) as i64;
            let input = Input::Recharge {
                account,
                micros: cents * 10_000,
            };
            let request = pb::RechargeRequest {
                account: account_name(account),
                amount: format!("0.{cents:02}"),
                request_id: format!("c{client}-{seq}"),
            };
            // Once an attempt may have been applied, a later attempt refused with "nothing
            // written" says nothing about the first: keep asking until one is answered.
            let mut uncertain = false;
            loop {
                match admin.client.recharge(admin.req(request.clone())).await {
                    Ok(r) => {
                        let balance = micros(&r.into_inner().account.unwrap().balance);
                        let done = Completion::Returned {
                            at: rec.now(),
                            output: Output::Balance(balance),
                        };
                        return rec.record(client, call, input, done);
                    }
                    Err(s) => {
                        let failure = write_failure(&s);
                        uncertain |= failure.is_none();
                        if let Some(output) = failure.filter(|_| !uncertain) {
                            let done = Completion::Returned {
                                at: rec.now(),
                                output,
                            };
                            return rec.record(client, call, input, done);
                        }
                        if Instant::now() >= until {
                            return rec.record(client, call, input, Completion::Unknown);
                        }
                        admin = admins[rng.below(NODES as u64) as usize].clone();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        2 => {
            let r = admin
                .client
                .describe_accounts(admin.req(pb::DescribeAccountsRequest {
                    name: account_name(account),
                }))
                .await;
            if let Ok(r) = r {
                let balance = micros(&r.into_inner().accounts[0].balance);
                let done = Completion::Returned {
                    at: rec.now(),
                    output: Output::Balance(balance),
                };
                rec.record(client, call, Input::ReadBalance { account }, done);
            }
        }
        3 => {
            let r = admin
                .client
                .describe_instances(admin.req(pb::DescribeInstancesRequest {
                    name: instance_name(instance),
                }))
                .await;
            let output = match r {
                Ok(r) => Output::Spec(r.into_inner().instances.first().map(|i| i.spec.clone())),
                Err(s) if s.code() == tonic::Code::NotFound => Output::Spec(None),
                Err(_) => return,
            };
            let done = Completion::Returned {
                at: rec.now(),
                output,
            };
            rec.record(client, call, Input::Get { instance }, done);
        }
        kind => {
            let name = instance_name(instance);
            let (input, result) = match kind {
                4 if rng.below(2) == 0 => {
                    let r = admin
                        .client
                        .create_instance(admin.req(pb::CreateInstanceRequest {
                            name,
                            spec: spec.into(),
                            region: REGION.into(),
                            charge_type: pb::ChargeType::Postpaid as i32,
                            account: "fleet".into(),
                            auto_renew: false,
                        }))
                        .await
                        .map(|_| ());
                    (Input::Create { instance, spec }, r)
                }
                4 => {
                    let r = admin
                        .client
                        .modify_instance_spec(admin.req(pb::ModifyInstanceSpecRequest {
                            name,
                            spec: spec.into(),
                        }))
                        .await
                        .map(|_| ());
                    (Input::Modify { instance, spec }, r)
                }
                _ => {
                    let r = admin
                        .client
                        .delete_instance(admin.req(pb::DeleteInstanceRequest { name }))
                        .await
                        .map(|_| ());
                    (Input::Delete { instance }, r)
                }
            };
            let completion = match result {
                Ok(()) => Completion::Returned {
                    at: rec.now(),
                    output: Output::Done,
                },
                Err(s) => match write_failure(&s) {
                    Some(output) => Completion::Returned {
                        at: rec.now(),
                        output,
                    },
                    None => Completion::Unknown,
                },
            };
            rec.record(client, call, input, completion);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Nemeses

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nemesis {
    /// One node hears no other node (the test still reaches it).
    IsolateNode,
    /// The leader hears no other node.
    IsolateLeader,
    /// A follower stops hearing the leader; the leader still hears it.
    OneWayFromLeader,
    /// The leader is paused (SIGSTOP) for longer than the election timeout.
    PauseLeader,
    /// A node is SIGKILLed and restarted on its data.
    KillRestart,
    /// The leader's wall clock jumps 1-30 minutes ahead or behind the others'.
    SkewLeader,
}

const NEMESES: [Nemesis; 6] = [
    Nemesis::IsolateNode,
    Nemesis::IsolateLeader,
    Nemesis::OneWayFromLeader,
    Nemesis::PauseLeader,
    Nemesis::KillRestart,
    Nemesis::SkewLeader,
];

/// The leader most running nodes name, if any.
async fn leader(g: &Gateways) -> Option<usize> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..NODES {
        if g.nodes[i].is_none() || g.paused[i] {
            continue;
        }
        let a = Admin::new(g.endpoint(i), true);
        let mut c = a.client.clone();
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(500),
            c.describe_cluster(a.req(pb::DescribeClusterRequest {})),
        )
        .await
            && let Some(l) = s.into_inner().leader_id
        {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(l, _)| l as usize - 1)
}

/// Applies one fault, holds it, and heals it.
async fn inflict(g: &mut Gateways, nemesis: Nemesis, rng: &mut Rng, hold: Duration) {
    let leader = leader(g).await.unwrap_or(0);
    let other = |rng: &mut Rng| (leader + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
    match nemesis {
        Nemesis::IsolateNode => {
            g.net.isolate(rng.below(NODES as u64) as usize);
            tokio::time::sleep(hold).await;
            g.net.heal();
        }
        Nemesis::IsolateLeader => {
            g.net.isolate(leader);
            tokio::time::sleep(hold).await;
            g.net.heal();
        }
        Nemesis::OneWayFromLeader => {
            g.net.cut_one_way(leader, other(rng));
            tokio::time::sleep(hold).await;
            g.net.heal();
        }
        Nemesis::PauseLeader => {
            g.signal(leader, "STOP");
            tokio::time::sleep(PAUSE.max(hold)).await;
            g.signal(leader, "CONT");
        }
        Nemesis::KillRestart => {
            let victim = rng.below(NODES as u64) as usize;
            g.kill(victim);
            tokio::time::sleep(hold).await;
            g.start(victim);
        }
        Nemesis::SkewLeader => {
            let minutes = 1 + rng.below(30) as i64;
            let sign = if rng.below(2) == 0 { -1 } else { 1 };
            g.clocks.set_offset(leader, sign * minutes * 60_000);
            tokio::time::sleep(hold).await;
            g.clocks.set_offset(leader, 0);
        }
    }
}

/// The nodes' development clocks: one file each, rewritten every 20 ms with the time of a
/// fixed midday (so that no skew crosses a day and closes a billing cycle the model does not
/// know) plus the real time elapsed, plus the node's offset.
struct Clocks {
    files: Vec<PathBuf>,
    offsets: Mutex<[i64; NODES]>,
    start: Instant,
}

/// 2026-06-15T12:00:00Z.
const CLOCK_BASE_MS: i64 = 1_781_524_800_000;

impl Clocks {
    /// Writes the files once, then keeps them ticking on a thread for as long as the returned
    /// handle lives.
    fn start(dir: &std::path::Path) -> Arc<Clocks> {
        let clocks = Arc::new(Clocks {
            files: (0..NODES)
                .map(|i| dir.join(format!("clock-{}", i + 1)))
                .collect(),
            offsets: Mutex::new([0; NODES]),
            start: Instant::now(),
        });
        clocks.tick();
        let weak = Arc::downgrade(&clocks);
        std::thread::spawn(move || {
            while let Some(c) = weak.upgrade() {
                c.tick();
                drop(c);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        clocks
    }

    /// Rewrites every file (write, then rename, so a node never reads half a number). The
    /// lock is held throughout: the ticker and a nemesis must not rename the same file at once.
    /// Errors are ignored: the files go with the test's directory at its end.
    fn tick(&self) {
        let offsets = self.offsets.lock().unwrap();
        let now = CLOCK_BASE_MS + self.start.elapsed().as_millis() as i64;
        for (file, offset) in self.files.iter().zip(offsets.iter()) {
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, (now + offset).to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, file);
            }
        }
    }

    fn set_offset(&self, node: usize, ms: i64) {
        self.offsets.lock().unwrap()[node] = ms;
        self.tick();
    }
}

// ------------------------------------------------------------------------------------------
// A run

/// The network, or why there is none; fails instead under CI, where it must run.
fn network() -> Option<Net> {
    match Net::new(NODES) {
        Ok(net) => Some(net),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and this test needs network namespaces and iptables: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: this test needs network namespaces and iptables (root): {e}");
            None
        }
    }
}

/// Starts the nodes, waits for a leader, and creates the accounts and the fleet account.
async fn cluster(net: Net) -> Gateways {
    let mut g = Gateways::new(net);
    for i in 0..NODES {
        g.start(i);
    }
    let admin = Admin::new(g.endpoint(0), false);
    for name in (0..ACCOUNTS).map(account_name).chain(["fleet".to_string()]) {
        eventually(&format!("account {name} created"), SETTLE, || {
            let mut a = admin.clone();
            let name = name.clone();
            async move {
                let r = a
                    .client
                    .create_account(a.req(pb::CreateAccountRequest {
                        name,
                        webhook: None,
                        balance_alert: None,
                    }))
                    .await;
                match r {
                    Ok(_) => Some(()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await;
    }
    g
}

/// Every node's state, read locally, once they agree.
async fn converged(g: &Gateways) -> String {
    eventually("every node holds the same state", SETTLE, || async {
        let mut seen: Option<String> = None;
        for i in 0..NODES {
            let a = Admin::new(g.endpoint(i), true);
            let mut c = a.client.clone();
            let accounts = c
                .describe_accounts(a.req(pb::DescribeAccountsRequest {
                    name: String::new(),
                }))
                .await
                .ok()?
                .into_inner()
                .accounts;
            let instances = c
                .describe_instances(a.req(pb::DescribeInstancesRequest {
                    name: String::new(),
                }))
                .await
                .ok()?
                .into_inner()
                .instances;
            let view = format!(
                "{:?} {:?}",
                accounts
                    .iter()
                    .filter(|a| a.name.starts_with("acct-"))
                    .map(|a| (&a.name, &a.balance))
                    .collect::<Vec<_>>(),
                instances
                    .iter()
                    .map(|i| (&i.name, &i.spec))
                    .collect::<Vec<_>>()
            );
            if seen.as_ref().is_some_and(|s| *s != view) {
                return None;
            }
            seen = Some(view);
        }
        seen
    })
    .await
}

/// One randomized run: clients and nemeses for `seconds`, then the checks.
async fn run(seed: u64, seconds: u64) {
    let Some(net) = network() else { return };
    let mut g = cluster(net).await;
    let mut rng = Rng(seed);
    let initial: BTreeMap<Key, Value> = (0..ACCOUNTS)
        .map(|a| (Key::Account(a), Value::Balance(0)))
        .chain((0..INSTANCES).map(|i| (Key::Instance(i), Value::Spec(None))))
        .collect();
    let admins: Arc<Vec<Admin>> = Arc::new(
        (0..NODES)
            .map(|i| Admin::new(g.endpoint(i), false))
            .collect(),
    );
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
    });
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (admins, rec) = (admins.clone(), rec.clone());
            let mut rng = Rng(seed ^ (client + 1).wrapping_mul(0x1234_5678_9abc_def1));
            tokio::spawn(async move {
                for seq in 0..MAX_OPS_PER_CLIENT {
                    if Instant::now() >= until {
                        break;
                    }
                    run_op(&admins, &mut rng, client, seq, &rec, until).await;
                }
            })
        })
        .collect();
    let mut inflicted = Vec::new();
    while Instant::now() + Duration::from_secs(2) < until {
        let nemesis = NEMESES[rng.below(NEMESES.len() as u64) as usize];
        let hold = Duration::from_millis(800 + rng.below(2200));
        inflicted.push(nemesis);
        inflict(&mut g, nemesis, &mut rng, hold).await;
        tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let history = std::mem::take(&mut *rec.history.lock().unwrap());
    let unknown = history
        .iter()
        .filter(|o| matches!(o.completion, Completion::Unknown))
        .count();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for op in &history {
        let kind = format!("{:?}", op.input);
        let kind = kind.split([' ', '{']).next().unwrap_or("").to_string();
        let out = match &op.completion {
            Completion::Returned { output, .. } => format!("{output:?}"),
            Completion::Unknown => "unknown".into(),
        };
        let out = out.split('(').next().unwrap_or("").to_string();
        *outcomes.entry(format!("{kind}:{out}")).or_default() += 1;
    }
    eprintln!("seed {seed}: outcomes {outcomes:?}");
    let checked = linearizability::check(&Started { initial }, &history);
    let view = converged(&g).await;
    eprintln!(
        "seed {seed}: nemeses {inflicted:?}; {} operations ({unknown} with unknown outcome); check: {checked:?}; final state {view}",
        history.len()
    );
    match checked {
        Ok(_) => {}
        Err(CheckError::NotLinearizable(a)) => panic!("seed {seed}: not linearizable: {a}"),
        Err(e) => panic!("seed {seed}: {e}"),
    }
    assert!(
        history.len() > 50,
        "seed {seed}: too few operations to mean anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_faults_leave_a_linearizable_history_and_one_state() {
    let runs: u64 = std::env::var("FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let first: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seconds: u64 = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in first..first + runs {
        run(seed, seconds).await;
    }
}

/// The checker catches a real anomaly: local reads on a node cut off from the leader are
/// stale, and the same history with linearizable reads is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_stale_local_reads_that_linearizable_reads_prevent() {
    let Some(net) = network() else { return };
    let g = cluster(net).await;
    let leader = eventually("a leader", SETTLE, || leader(&g)).await;
    let cut = (leader + 1) % NODES;
    g.net.isolate(cut);
    for local_reads in [true, false] {
        let writer = Admin::new(g.endpoint(leader), false);
        let reader = Admin::new(g.endpoint(cut), local_reads);
        let rec = Recorder {
            start: Instant::now(),
            history: Mutex::new(Vec::new()),
        };
        // The second round starts where the first left the balance.
        let before = if local_reads { 0 } else { 500_000 };
        let mut expected = before;
        for seq in 0..5 {
            // A recharge acknowledged by the leader...
            let call = rec.now();
            let mut w = writer.clone();
            let r = w
                .client
                .recharge(w.req(pb::RechargeRequest {
                    account: account_name(0),
                    amount: "0.10".into(),
                    request_id: format!("stale-{local_reads}-{seq}"),
                }))
                .await
                .expect("the leader keeps its quorum");
            let balance = micros(&r.into_inner().account.unwrap().balance);
            expected += 100_000;
            assert_eq!(balance, expected);
            let done = Completion::Returned {
                at: rec.now(),
                output: Output::Balance(balance),
            };
            rec.record(
                0,
                call,
                Input::Recharge {
                    account: 0,
                    micros: 100_000,
                },
                done,
            );
            // ...then read on the cut-off node.
            let call = rec.now();
            let mut r = reader.clone();
            if let Ok(read) = r
                .client
                .describe_accounts(r.req(pb::DescribeAccountsRequest {
                    name: account_name(0),
                }))
                .await
            {
                let done = Completion::Returned {
                    at: rec.now(),
                    output: Output::Balance(micros(&read.into_inner().accounts[0].balance)),
                };
                rec.record(1, call, Input::ReadBalance { account: 0 }, done);
            }
        }
        let history = std::mem::take(&mut *rec.history.lock().unwrap());
        let initial = Started {
            initial: [(Key::Account(0), Value::Balance(before))].into(),
        };
        let reads = history
            .iter()
            .filter(|o| matches!(o.input, Input::ReadBalance { .. }))
            .count();
        match (local_reads, linearizability::check(&initial, &history)) {
            (true, Err(CheckError::NotLinearizable(a))) => {
                assert_eq!(reads, 5, "local reads are served without a quorum");
                eprintln!("local reads, as expected: {a}");
            }
            (true, other) => panic!("stale local reads were not caught: {other:?}"),
            (false, Ok(_)) => {
                assert_eq!(reads, 0, "a cut-off node cannot serve a linearizable read");
            }
            (false, other) => panic!("linearizable reads: {other:?}"),
        }
    }
}

/// Recharges through every node while the leader is isolated and healed, a follower stops
/// hearing the leader and then the leader is isolated, and the leader is paused: each
/// recharge whose outcome is unknown is retried with its request id until it is known, and in
/// the end the balance and the ledger hold every recharge exactly once (the two causes of
/// duplicates in issue 22, and the pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recharges_through_cuts_and_leader_changes_apply_exactly_once() {
    let Some(net) = network() else { return };
    let mut g = cluster(net).await;
    let admins: Arc<Vec<Admin>> = Arc::new(
        (0..NODES)
            .map(|i| Admin::new(g.endpoint(i), false))
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let acknowledged = Arc::new(Mutex::new(0u64));
    // Clients: each sends recharges of 1.00 through the nodes in turn until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3u64)
        .map(|client| {
            let (admins, acknowledged, stop) = (admins.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 400 {
                    let request = pb::RechargeRequest {
                        account: account_name(0),
                        amount: "1.00".into(),
                        request_id: format!("once-{client}-{sent}"),
                    };
                    let mut node = (client + sent) as usize % NODES;
                    sent += 1;
                    // "Nothing written" settles it only while no attempt may have been applied.
                    let mut uncertain = false;
                    loop {
                        let mut a = admins[node].clone();
                        match a.client.recharge(a.req(request.clone())).await {
                            Ok(_) => {
                                *acknowledged.lock().unwrap() += 1;
                                break;
                            }
                            Err(s) if !uncertain && write_failure(&s) == Some(Output::NoEffect) => {
                                break;
                            }
                            Err(s) => {
                                uncertain |= write_failure(&s).is_none();
                                assert!(Instant::now() < deadline, "outcome still unknown: {s}");
                                node = (node + 1) % NODES;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let pause = |d: u64| tokio::time::sleep(Duration::from_millis(d));
    // 1. The leader is cut off both ways, and healed after 2.5 s.
    let l = eventually("a leader", SETTLE, || leader(&g)).await;
    pause(300).await;
    g.net.isolate(l);
    pause(2500).await;
    g.net.heal();
    pause(1500).await;
    // 2. A follower stops hearing the leader; 0.5 s later the leader is isolated; healed at 8 s.
    let l = eventually("a leader", SETTLE, || leader(&g)).await;
    let f = (l + 1) % NODES;
    g.net.cut_one_way(l, f);
    pause(500).await;
    g.net.isolate(l);
    pause(7500).await;
    g.net.heal();
    pause(1500).await;
    // 3. The leader is paused for 5 s.
    let l = eventually("a leader", SETTLE, || leader(&g)).await;
    g.signal(l, "STOP");
    pause(5000).await;
    g.signal(l, "CONT");
    pause(1500).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = *acknowledged.lock().unwrap();
    converged(&g).await;
    // Every node's ledger and balance: exactly the acknowledged recharges.
    for i in 0..NODES {
        let a = Admin::new(g.endpoint(i), true);
        let mut entries = 0u64;
        let mut after_seq = 0;
        loop {
            let mut c = a.client.clone();
            let page = c
                .describe_ledger(a.req(pb::DescribeLedgerRequest {
                    account: account_name(0),
                    after_seq,
                    limit: 1000,
                }))
                .await
                .expect("ledger")
                .into_inner();
            entries += page
                .entries
                .iter()
                .filter(|e| e.amount.starts_with("1.00"))
                .count() as u64;
            match page.next_after_seq {
                Some(s) => after_seq = s,
                None => break,
            }
        }
        let mut c = a.client.clone();
        let balance = c
            .describe_accounts(a.req(pb::DescribeAccountsRequest {
                name: account_name(0),
            }))
            .await
            .unwrap()
            .into_inner()
            .accounts[0]
            .balance
            .clone();
        eprintln!(
            "node {}: {acknowledged} acknowledged, {entries} ledger entries, balance {balance}",
            i + 1
        );
        assert_eq!(entries, acknowledged, "node {}: ledger entries", i + 1);
        assert_eq!(
            micros(&balance),
            acknowledged as i64 * 1_000_000,
            "node {}: balance",
            i + 1
        );
    }
    assert!(
        acknowledged >= 100,
        "only {acknowledged} recharges acknowledged"
    );
}

/// The cluster status node `i` reports, if it answers within a second.
async fn status(g: &Gateways, i: usize) -> Option<pb::ClusterStatus> {
    let a = Admin::new(g.endpoint(i), true);
    let mut c = a.client.clone();
    tokio::time::timeout(
        Duration::from_secs(1),
        c.describe_cluster(a.req(pb::DescribeClusterRequest {})),
    )
    .await
    .ok()?
    .ok()
    .map(|r| r.into_inner())
}

/// A follower cut off for 20 s while writes go on, and a follower paused for 10 s, come back
/// without an election (pre-vote: they did not raise their term while away) and catch up
/// within 2 s of being heard again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_back_from_a_partition_or_a_pause_catches_up_without_an_election() {
    let Some(net) = network() else { return };
    let mut g = cluster(net).await;
    let l = eventually("a leader", SETTLE, || leader(&g)).await;
    let writer = Admin::new(g.endpoint(l), false);
    let mut seq = 0u64;
    for (away, how) in [
        (Duration::from_secs(20), "cut off"),
        (Duration::from_secs(10), "paused"),
    ] {
        let f = (l + 1 + seq as usize % 2) % NODES;
        let term = status(&g, l).await.expect("leader status").term;
        if how == "cut off" {
            g.net.isolate(f);
        } else {
            g.signal(f, "STOP");
        }
        // Writes while it is away, bounded in count and time.
        let until = Instant::now() + away;
        while Instant::now() < until && seq < 2_000 {
            let mut w = writer.clone();
            w.client
                .recharge(w.req(pb::RechargeRequest {
                    account: account_name(0),
                    amount: "0.01".into(),
                    request_id: format!("away-{seq}"),
                }))
                .await
                .expect("the majority keeps writing");
            seq += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = status(&g, l).await.expect("leader status").applied_index;
        let back = Instant::now();
        if how == "cut off" {
            g.net.heal();
        } else {
            g.signal(f, "CONT");
        }
        eventually(&format!("node {} caught up", f + 1), SETTLE, || async {
            let s = status(&g, f).await?;
            (s.applied_index >= target).then_some(())
        })
        .await;
        let caught_up = back.elapsed();
        let s = status(&g, l).await.expect("leader status");
        eprintln!(
            "node {} {how} for {away:?} ({seq} writes so far): caught up {caught_up:?} after it was heard again; leader {:?} term {} (was node {} term {term})",
            f + 1,
            s.leader_id,
            s.term,
            l + 1
        );
        assert_eq!(s.leader_id, Some(l as u64 + 1), "the leader was deposed");
        assert_eq!(s.term, term, "an election happened");
        assert!(
            caught_up < Duration::from_secs(2),
            "caught up in {caught_up:?}"
        );
    }
}
