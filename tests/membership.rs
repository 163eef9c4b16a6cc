//! Membership edges, end to end on real `gatewayd` processes (issue 21):
//!
//! - a node removed from the cluster stops serving API traffic before the removal is
//!   committed (the leader announces it first), so it never serves a change made after it; it
//!   says so in its log, /readyz turns 503, and with `--exit-when-removed` it exits (status 0)
//!   once its peers confirm it is no longer a member;
//! - the cluster id: every node keeps it in its data dir; a node started on another cluster's
//!   data dir, or with a `--cluster-id` that its data dir contradicts, refuses to run;
//! - a node waiting for voters says what it waits for, and `cluster status` exits non-zero;
//! - a voter whose disk is lost comes back by the documented procedure: removed, wiped,
//!   started as a learner, caught up, promoted; then it carries the cluster's writes;
//! - `--max-stale-config` on and off for a node cut off from the network (network namespaces
//!   on 198.18.0.0/15; skipped, saying so, where they cannot be made).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::http::{Server, get};
use testkit::{Cluster, binaries, eventually};

const SETTLE: Duration = Duration::from_secs(30);
/// How soon a removed node must know it was removed (contact is stale after 2 s, then the
/// peers are asked every second).
const REMOVAL_BOUND: Duration = Duration::from_secs(8);

async fn readyz(ops: &str) -> Option<u16> {
    get(ops, "/readyz").await.map(|r| r.status)
}

fn cluster_id(c: &Cluster, id: u64) -> String {
    c.ctl_json(id, &["cluster", "status"])["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What a poller saw: when the request was sent, and the status and error code.
#[derive(Debug, Clone)]
struct Seen {
    sent: Instant,
    status: Option<u16>,
    code: Option<String>,
}

/// GETs `path` on `addr` back to back until `stop` (at most 5,000 requests or 60 s).
fn poll(
    addr: String,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && seen.len() < 5_000 && Instant::now() < until {
            let sent = Instant::now();
            let r = get(&addr, path).await;
            seen.push(Seen {
                sent,
                status: r.as_ref().map(|r| r.status),
                code: r
                    .as_ref()
                    .and_then(|r| r.header("x-ca-error-code").map(String::from)),
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

/// A voter is removed while a client keeps calling it: from the moment the removal returns,
/// it answers only 503 NodeNotServing, so the ACL change made right after the removal (which
/// it never receives) is never bypassed through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_stops_serving_and_never_serves_a_later_change() {
    let mut c = Cluster::start(binaries!(), 4).await;
    let backend = Server::start("hello").await;
    c.deploy_get_api("g", "a", &format!("http://{}", backend.addr), &[]);
    let (http4, ops4) = (c.http_addr(4), c.ops_addr(4));
    eventually("node 4 to serve the API", SETTLE, || async {
        get(&http4, "/a").await.filter(|r| r.status == 200)
    })
    .await;
    eventually("node 4 to be ready", SETTLE, || async {
        (readyz(&ops4).await == Some(200)).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll(http4.clone(), "/a", stop.clone());
    // Let the poller see node 4 serve first, so that it demonstrably changes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let via = if c.wait_leader(SETTLE).await == 1 {
        2
    } else {
        1
    };
    let out = c.ctl(via, &["cluster", "remove", "--node-id", "4"]);
    assert!(out.success, "remove node 4: {}", out.stderr);
    let removal_returned = Instant::now();
    // A change after the removal: loopback callers are denied from now on.
    // (Retried: if node 4 led, the others elect a new leader first.)
    eventually("the ACL change to be accepted", SETTLE, || async {
        let out = c.ctl(
            via,
            &["group", "set-acl", "--name", "g", "--deny", "127.0.0.0/8"],
        );
        out.success.then_some(())
    })
    .await;
    let http_via = c.http_addr(via);
    eventually("the ACL to be enforced by the members", SETTLE, || async {
        get(&http_via, "/a").await.filter(|r| r.status == 403)
    })
    .await;

    // Within the bound: a log line, /readyz 503, and `cluster status` on node 4 fails.
    let known = eventually("node 4 to know it was removed", REMOVAL_BOUND, || async {
        c.log_tail(4, 200)
            .contains("this node was removed from the cluster")
            .then(Instant::now)
    })
    .await;
    eprintln!(
        "node 4 knew it was removed {:?} after the removal returned",
        known - removal_returned
    );
    eventually("a removed node to be not ready", REMOVAL_BOUND, || async {
        (readyz(&ops4).await == Some(503)).then_some(())
    })
    .await;
    let status = c.ctl(4, &["cluster", "status"]);
    assert!(
        !status.success,
        "cluster status on a removed node must fail"
    );
    assert!(
        status.stderr.contains("does not serve API traffic")
            && status.stderr.contains("removed from the cluster"),
        "{}",
        status.stderr
    );
    // It keeps running (no --exit-when-removed) and keeps refusing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.nodes.get_mut(&4).unwrap().is_running());
    stop.store(true, Ordering::Relaxed);
    let seen = poller.await.unwrap();

    let before: Vec<&Seen> = seen.iter().filter(|s| s.sent < removal_returned).collect();
    assert!(
        before.iter().any(|s| s.status == Some(200)),
        "node 4 served the API before its removal: {before:?}"
    );
    let after: Vec<&Seen> = seen.iter().filter(|s| s.sent >= removal_returned).collect();
    assert!(
        after.len() >= 10,
        "too few requests after the removal: {}",
        after.len()
    );
    for s in &after {
        assert_eq!(
            (s.status, s.code.as_deref()),
            (Some(503), Some("NodeNotServing")),
            "after its removal node 4 answered {s:?}"
        );
    }
    eprintln!(
        "{} requests before the removal returned, {} after: all 503 NodeNotServing",
        before.len(),
        after.len()
    );
}

/// A learner started with `--exit-when-removed` exits with status 0 once its peers confirm
/// its removal (a removed node is sent no more log entries: it learns it from them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_exits_when_asked_to() {
    let mut c = Cluster::start(binaries!(), 3).await;
    c.extra_args = vec!["--exit-when-removed".into()];
    c.add_node(4);
    c.extra_args.clear();
    eventually("node 4 to join", SETTLE, || async {
        let s = c.status(1).await?;
        s.members.iter().any(|m| m.node_id == 4).then_some(())
    })
    .await;
    let ops4 = c.ops_addr(4);
    eventually("node 4 to be ready", SETTLE, || async {
        (readyz(&ops4).await == Some(200)).then_some(())
    })
    .await;
    let out = c.ctl(1, &["cluster", "remove", "--node-id", "4"]);
    assert!(out.success, "remove node 4: {}", out.stderr);
    let removed = Instant::now();
    let node = c.nodes.get_mut(&4).unwrap();
    let deadline = removed + REMOVAL_BOUND;
    let status = loop {
        if let Some(s) = node.exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 still runs {REMOVAL_BOUND:?} after its removal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("node 4 exited {:?} after its removal", removed.elapsed());
    assert!(
        status.success(),
        "a removed node exits with success: {status}"
    );
    let log = c.log_tail(4, 200);
    assert!(log.contains("exiting (--exit-when-removed)"), "{log}");
    assert!(log.contains("membership"), "it says how it knows: {log}");
}

/// A voter paused while it is removed (as by a long GC pause or a stopped VM) misses the log
/// entries that remove it: once it runs again it stops serving (the leader's announcement,
/// delivered late, or its peers) and learns from its peers, whose membership is newer than its
/// own and no longer lists it, that it was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_during_its_removal_learns_it_from_its_peers() {
    let mut c = Cluster::start(binaries!(), 4).await;
    let backend = Server::start("hello").await;
    c.deploy_get_api("g", "a", &format!("http://{}", backend.addr), &[]);
    let http4 = c.http_addr(4);
    eventually("node 4 to serve the API", SETTLE, || async {
        get(&http4, "/a").await.filter(|r| r.status == 200)
    })
    .await;
    if c.wait_leader(SETTLE).await == 4 {
        // Node 4 must not lead: pausing the leader would only elect another first.
        c.kill(4);
        c.wait_leader_other_than(Some(4), SETTLE).await;
        c.spawn(4);
        eventually("node 4 to serve again", SETTLE, || async {
            get(&http4, "/a").await.filter(|r| r.status == 200)
        })
        .await;
    }
    let pid = c.nodes[&4].pid().unwrap();
    testkit::signal(pid, "STOP");
    let out = c.ctl(1, &["cluster", "remove", "--node-id", "4"]);
    assert!(out.success, "remove node 4: {}", out.stderr);
    let log = c.log_tail(1, 400) + &c.log_tail(2, 400) + &c.log_tail(3, 400);
    assert!(
        log.contains("could not tell node 4"),
        "the leader says it could not tell node 4"
    );
    testkit::signal(pid, "CONT");
    let resumed = Instant::now();
    eventually(
        "node 4 to answer 503 NodeNotServing",
        REMOVAL_BOUND,
        || async {
            let r = get(&http4, "/a").await?;
            (r.status == 503 && r.header("x-ca-error-code") == Some("NodeNotServing")).then_some(())
        },
    )
    .await;
    eprintln!(
        "node 4 stopped serving {:?} after it ran again",
        resumed.elapsed()
    );
    // It received no log entry after its pause, so only its peers can tell it.
    let line = eventually("node 4 to know it was removed", REMOVAL_BOUND, || async {
        c.log_tail(4, 400)
            .lines()
            .find(|l| l.contains("this node was removed from the cluster"))
            .map(String::from)
    })
    .await;
    eprintln!(
        "node 4 knew it was removed {:?} after it ran again: {line}",
        resumed.elapsed()
    );
    assert!(line.contains("'s membership (log index"), "{line}");
}

/// A node whose data dir belongs to another cluster refuses to run, naming both ids; so does
/// one whose `--cluster-id` contradicts its data dir. With its own data it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_cluster_is_refused() {
    let mut a = Cluster::start(binaries!(), 3).await;
    let mut b = Cluster::start(binaries!(), 1).await;
    let id_a = cluster_id(&a, 1);
    let id_b = cluster_id(&b, 1);
    assert_eq!(id_a.len(), 32, "a generated id: {id_a:?}");
    assert_ne!(id_a, id_b, "two clusters, two ids");
    for n in 1..=3 {
        let file = a.nodes[&n].dir.join("cluster-id");
        eventually(
            &format!("node {n} to keep the cluster id"),
            SETTLE,
            || async {
                let text = std::fs::read_to_string(&file).ok()?;
                (text.trim() == id_a).then_some(())
            },
        )
        .await;
        assert_eq!(cluster_id(&a, n), id_a);
    }

    // Node 3 of cluster A restarted on the data dir of cluster B's node.
    assert!(a.terminate(3, SETTLE));
    assert!(b.terminate(1, SETTLE));
    let own = a.nodes[&3].dir.clone();
    let kept = own.with_extension("own");
    std::fs::rename(&own, &kept).unwrap();
    copy_dir(&b.nodes[&1].dir, &own);
    a.spawn(3);
    let status = wait_exit(&mut a, 3).await;
    assert!(!status.success(), "it must fail: {status}");
    let log = a.log_tail(3, 100);
    assert!(
        log.contains(&id_a) && log.contains(&id_b) && log.contains("refuses to run"),
        "the log names both clusters: {log}"
    );
    // The cluster was not harmed: it still takes writes.
    a.ctl_json(1, &["group", "create", "--name", "still-fine"]);

    // Its own data dir with a --cluster-id that contradicts it: refused at once.
    std::fs::remove_dir_all(&own).unwrap();
    std::fs::rename(&kept, &own).unwrap();
    a.extra_args = vec!["--cluster-id".into(), "not-this-one".into()];
    a.spawn(3);
    a.extra_args.clear();
    let status = wait_exit(&mut a, 3).await;
    assert!(!status.success());
    let log = a.log_tail(3, 1000);
    assert!(
        log.contains(&id_a) && log.contains("--cluster-id is not-this-one"),
        "{log}"
    );

    // The right id: it rejoins and catches up.
    a.extra_args = vec!["--cluster-id".into(), id_a.clone()];
    a.spawn(3);
    a.extra_args.clear();
    eventually("node 3 to catch up", SETTLE, || async {
        let out = a.ctl(3, &["group", "list", "-o", "json"]);
        (out.success && out.stdout.contains("still-fine")).then_some(())
    })
    .await;
}

async fn wait_exit(c: &mut Cluster, id: u64) -> std::process::ExitStatus {
    let node = c.nodes.get_mut(&id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = node.exit_status() {
            return s;
        }
        assert!(Instant::now() < deadline, "node {id} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success(), "cp -a {} {}", from.display(), to.display());
}

/// A voter whose peers never answer, and a node that is to join them: each says what it
/// waits for, every few seconds, and `cluster status` exits non-zero saying why; once the
/// voters are up it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_without_a_leader_exits_non_zero() {
    let mut c = Cluster::new(binaries!(), 3);
    c.spawn(1);
    let out = eventually("node 1 to name the voters it waits for", SETTLE, || async {
        let out = c.ctl(1, &["cluster", "status"]);
        out.stderr.contains("node 3 at").then_some(out)
    })
    .await;
    assert!(!out.success, "no leader: cluster status must fail");
    assert!(
        out.stderr
            .contains("waiting for every initial voter to answer")
            && out.stderr.contains("node 2 at")
            && out.stderr.contains("node 3 at"),
        "it says what it waits for: {}",
        out.stderr
    );
    assert!(
        out.stdout.contains("leader: none"),
        "it still prints the status: {}",
        out.stdout
    );
    eventually(
        "the log to say what node 1 waits for, twice",
        SETTLE,
        || async {
            let log = c.log_tail(1, 100);
            (log.matches("waiting for every initial voter").count() >= 2).then_some(())
        },
    )
    .await;

    // A node that is to join as a learner, while no voter answers, says so too.
    c.add_node(4);
    let out = eventually("node 4's admin API", SETTLE, || async {
        let out = c.ctl(4, &["cluster", "status"]);
        out.stderr.contains("no leader").then_some(out)
    })
    .await;
    assert!(!out.success);
    eventually("node 4 to say what it waits for", SETTLE, || async {
        let out = c.ctl(4, &["cluster", "status"]);
        out.stderr
            .contains("waiting for a voter to add this node as a learner")
            .then_some(())
    })
    .await;

    c.spawn(2);
    c.spawn(3);
    c.wait_leader(SETTLE).await;
    for id in [1, 4] {
        let out = eventually(&format!("node {id} to know the leader"), SETTLE, || async {
            let out = c.ctl(id, &["cluster", "status"]);
            out.success.then_some(out)
        })
        .await;
        assert!(out.stdout.contains("cluster: "), "{}", out.stdout);
    }

    // A majority of the voters lost: node 1 (leader or not) cannot reach a quorum, and says so.
    c.kill(2);
    c.kill(3);
    let out = eventually("node 1 to report the lost quorum", SETTLE, || async {
        let out = c.ctl(1, &["cluster", "status"]);
        (!out.success && out.stderr.contains("a majority of the voters [1, 2, 3]")).then_some(out)
    })
    .await;
    eprintln!("without a quorum: {}", out.stderr.trim());
}

// ------------------------------------------------------------------------------------------
// --max-stale-config under a partition, in network namespaces

/// Three nodes, each in its own network namespace (`testkit::netns`), with a backend on each
/// namespace's loopback. Everything is removed on drop.
struct Net {
    net: testkit::netns::Net,
    root: tempfile::TempDir,
    gatewayd: Vec<Option<Child>>,
    backends: Vec<Child>,
}

const PEER_PORT: u16 = 9091;
const HTTP_PORT: u16 = 8080;

impl Net {
    /// The network and the backends; `None` (after saying why) where namespaces cannot be
    /// made, except under CI, where that fails the test.
    fn setup(n: usize) -> Option<Net> {
        let net = match testkit::netns::Net::new(n) {
            Ok(net) => net,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set and this test needs network namespaces: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: this test needs network namespaces (root and iproute2): {e}");
                return None;
            }
        };
        let root = tempfile::Builder::new().prefix("gwmem-").tempdir().unwrap();
        let mut backends = Vec::new();
        for i in 0..n {
            let www = root.path().join(format!("www-{i}"));
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("hello"), format!("host {i}")).unwrap();
            let backend = net
                .command(i, Path::new("python3"))
                .args([
                    "-m",
                    "http.server",
                    "8000",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                ])
                .arg(&www)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 for the backend");
            backends.push(backend);
        }
        Some(Net {
            net,
            root,
            gatewayd: (0..n).map(|_| None).collect(),
            backends,
        })
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.root.path().join(format!("node-{i}.log"))
    }

    /// Starts node `i + 1` in host `i`, with `extra` flags.
    fn start(&mut self, i: usize, extra: &[&str]) {
        let peers = self.net.peers_arg(PEER_PORT);
        let log = std::fs::File::create(self.log_path(i)).unwrap();
        let ip = self.net.host(i).ip.clone();
        let mut cmd = self.net.command(i, &binaries!().gatewayd);
        cmd.args(["--node-id", &(i + 1).to_string()])
            .arg("--data-dir")
            .arg(self.root.path().join(format!("data-{i}")))
            .args(["--peers", &peers])
            .args(["--listen-peer", &format!("{ip}:{PEER_PORT}")])
            .arg("--peer-plaintext")
            .args(["--listen-admin", "127.0.0.1:9090"])
            .args(["--listen-http", &format!("0.0.0.0:{HTTP_PORT}")])
            .args(["--listen-ops", "0.0.0.0:9100"])
            .args(extra);
        self.gatewayd[i] = Some(testkit::netns::Net::spawn_node(cmd, log));
    }

    /// `gatewayctl` inside host `i`'s namespace, against its node's loopback admin API.
    fn ctl(&self, i: usize, args: &[&str]) -> testkit::CtlOutput {
        let out = self
            .net
            .command(i, &binaries!().gatewayctl)
            .args(["--endpoint", "http://127.0.0.1:9090"])
            .args(args)
            .env_remove("GATEWAY_ENDPOINT")
            .env_remove("GATEWAY_TOKEN")
            .env_remove("GATEWAY_TOKEN_FILE")
            .env_remove("GATEWAY_TLS_CA")
            .stdin(Stdio::null())
            .output()
            .expect("gatewayctl");
        testkit::CtlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `GET path` on host `i`'s data plane from inside its namespace (reaches a host that is
    /// cut off): status and error code.
    async fn get_inside(&self, i: usize, path: &str) -> Option<(u16, Option<String>)> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{HTTP_PORT} && printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.net.host(i).netns])
            .args(["timeout", "5", "bash", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, _) = text.split_once("\r\n\r\n")?;
        let status = head.lines().next()?.split(' ').nth(1)?.parse().ok()?;
        let code = head
            .lines()
            .find_map(|l| l.strip_prefix("x-ca-error-code: "))
            .map(|c| c.trim().to_string());
        Some((status, code))
    }

    fn partition(&self, i: usize) {
        self.net.unplug(i);
    }

    fn heal(&self, i: usize) {
        self.net.plug(i);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let children = self.gatewayd.iter_mut().filter_map(Option::take);
        for mut c in children.chain(self.backends.drain(..)) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.gatewayd.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "----- node {} log (last 60 lines) -----\n{}",
                    i + 1,
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
        }
    }
}

/// Node 3 runs with `--max-stale-config 3s`, node 2 without. Each in turn is cut off the
/// network: node 3 answers 503 NodeNotServing once it has been out of touch with a quorum for
/// 3 s and serves again once reconnected; node 2 keeps serving its last configuration
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_config_on_and_off_under_a_partition() {
    let Some(mut net) = Net::setup(3) else {
        return;
    };
    const MAX_STALE: Duration = Duration::from_secs(3);
    net.start(0, &[]);
    net.start(1, &[]);
    net.start(2, &["--max-stale-config", "3s"]);
    eventually("a leader", SETTLE, || async {
        let out = net.ctl(0, &["cluster", "status"]);
        out.success.then_some(())
    })
    .await;
    let ok = net.ctl(0, &["group", "create", "--name", "g"]);
    assert!(ok.success, "{}", ok.stderr);
    for args in [
        &[
            "api",
            "create",
            "--group",
            "g",
            "--name",
            "hello",
            "--method",
            "GET",
            "--path",
            "/hello",
            "--backend",
            "http://127.0.0.1:8000",
        ][..],
        &["api", "deploy", "--group", "g", "--name", "hello"][..],
    ] {
        let out = net.ctl(0, args);
        assert!(out.success, "{args:?}: {}", out.stderr);
    }
    for i in 0..3 {
        eventually(
            &format!("node {} to serve the API", i + 1),
            SETTLE,
            || async { (net.get_inside(i, "/hello").await?.0 == 200).then_some(()) },
        )
        .await;
    }

    // On: node 3 cut off stops serving after MAX_STALE, and says why.
    net.partition(2);
    let cut = Instant::now();
    let (at, code) = eventually("node 3 to stop serving", SETTLE, || async {
        let (status, code) = net.get_inside(2, "/hello").await?;
        (status == 503).then(|| (cut.elapsed(), code))
    })
    .await;
    eprintln!("node 3 (--max-stale-config 3s) stopped serving {at:?} after it was cut off");
    assert_eq!(code.as_deref(), Some("NodeNotServing"));
    assert!(
        at >= MAX_STALE - Duration::from_millis(500),
        "not before the bound: {at:?}"
    );
    assert!(
        at <= MAX_STALE + Duration::from_secs(3),
        "soon after the bound: {at:?}"
    );
    assert!(
        net.log(2).contains("no contact with a quorum"),
        "it says why"
    );
    net.heal(2);
    let healed = Instant::now();
    eventually("node 3 to serve again", SETTLE, || async {
        (net.get_inside(2, "/hello").await?.0 == 200).then_some(())
    })
    .await;
    eprintln!(
        "node 3 served again {:?} after it was reconnected",
        healed.elapsed()
    );
    assert!(net.log(2).contains("serving API traffic again"));

    // Off: node 2 cut off for twice as long keeps serving.
    net.partition(1);
    let cut = Instant::now();
    let mut served = 0;
    while cut.elapsed() < MAX_STALE * 2 {
        let r = net.get_inside(1, "/hello").await;
        assert_eq!(
            r.map(|r| r.0),
            Some(200),
            "node 2 without the flag serves on"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10);
    net.heal(1);
}

fn voters(status: &serde_json::Value) -> Vec<u64> {
    let members = status["members"].as_array().expect("members");
    let mut ids: Vec<u64> = (members.iter())
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    ids.sort();
    ids
}

/// The README's procedure for a voter that lost its disk ("A voter that lost its disk"):
/// `cluster remove` from a healthy node, wipe, start it without itself among the voters of
/// `--peers` so that it joins as a learner, `cluster promote` once it caught up. It gets every
/// write, old and new, and once promoted is a voter the cluster needs: with the leader killed,
/// the survivors (it among them) elect a leader and take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_disk_is_removed_wiped_and_added_back() {
    let mut c = Cluster::start(binaries!(), 3).await;
    let instances = |c: &Cluster, id: u64| -> Option<Vec<String>> {
        let out = c.ctl(
            id,
            &["instance", "list", "-o", "json", "--consistency", "local"],
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let mut names: Vec<String> = (v.as_array()?.iter())
            .filter_map(|i| i["name"].as_str().map(String::from))
            .collect();
        names.sort();
        Some(names)
    };
    let create = |c: &Cluster, via: u64, name: &str| {
        let args = [
            "instance",
            "create",
            "--name",
            name,
            "--spec",
            "api.s1.small",
        ];
        let out = c.ctl(via, &[&args[..], &["--region", "cn-hongkong"]].concat());
        // A retry after an unknown outcome may find the first attempt applied.
        out.success || out.stderr.contains("already exists")
    };
    // A follower loses its disk (a leader's is the same once it is deposed).
    let leader = c.wait_leader(SETTLE).await;
    let lost = if leader == 3 { 2 } else { 3 };
    let healthy = (1..=3).find(|n| *n != lost).unwrap();
    assert!(create(&c, healthy, "before"));

    // The disk is gone: the process dies with it.
    c.kill(lost);
    c.wipe(lost);
    let s = c.ctl_json(
        healthy,
        &["cluster", "remove", "--node-id", &lost.to_string()],
    );
    assert!(!voters(&s).contains(&lost), "{s}");
    assert!(create(&c, healthy, "while-gone"));

    // Back as a learner, on an empty data dir.
    c.drop_initial_voter(lost);
    c.spawn(lost);
    let want = vec!["before".to_string(), "while-gone".to_string()];
    eventually("the wiped node to catch up", SETTLE, || async {
        (instances(&c, lost) == Some(want.clone())).then_some(())
    })
    .await;
    let s = c.ctl_json(healthy, &["cluster", "status"]);
    assert!(!voters(&s).contains(&lost), "a learner first: {s}");
    let s = c.ctl_json(
        healthy,
        &["cluster", "promote", "--node-id", &lost.to_string()],
    );
    assert_eq!(voters(&s), vec![1, 2, 3], "{s}");

    // It is a voter the cluster counts on: without the leader, the other two elect one and
    // take writes, and the new write reaches the node that came back.
    let leader = c.wait_leader(SETTLE).await;
    c.kill(leader);
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    eventually("a write without the old leader", SETTLE, || async {
        create(&c, survivor, "after").then_some(())
    })
    .await;
    if lost != leader {
        eventually(
            "the new write on the node that came back",
            SETTLE,
            || async {
                instances(&c, lost)
                    .filter(|names| names.contains(&"after".to_string()))
                    .map(|_| ())
            },
        )
        .await;
    }
}
