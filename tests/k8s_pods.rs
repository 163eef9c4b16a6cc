//! The StatefulSet deployment, simulated without Kubernetes: every "pod" is a real `gatewayd`
//! process in its own network namespace, with its own IP address, the same ports as every other
//! pod, and an `/etc/hosts` that resolves the StatefulSet's DNS names
//! (`gateway-N.gateway-peer.<namespace>.svc.cluster.local`). The pods find each other with
//! `--peers-from-statefulset` exactly as in a cluster: node id from `HOSTNAME`, voters from the
//! DNS names, bootstrap by the lowest id once every voter answers.
//!
//! The network: one bridge in the root namespace, one veth pair per pod, addresses from
//! 198.18.0.0/15 (reserved for network tests), one /24 per test process. The namespaces have
//! no default route and nothing is forwarded or NATed, so nothing leaves the machine. The test
//! process reaches the pods through the bridge, which has the /24's first address. Each pod's
//! namespace also runs a small backend (python3's http.server on its own 127.0.0.1) that
//! answers with the pod's name, so the data plane keeps working when a pod is cut off.
//!
//! One test walks through a StatefulSet's life: the cluster forms; the leader's pod crashes and
//! restarts on its data; a pod loses its volume and rejoins empty; a fourth pod joins as a
//! learner and leaves on scale-down; the leader's pod is cut off the network (the majority stays
//! writable, the cut-off pod serves traffic from its last config and refuses writes) and
//! reconnects; and every pod is restarted in turn under load that, like a Service, only goes to
//! ready pods, without a failed request.
//!
//! Needs root (network namespaces, veth, bridge), iproute2 and python3; without network
//! namespaces the test says it is skipped and passes, except under CI (`CI` set to anything but
//! `false` or `0`, as CI services set it), where it fails: CI must not be green without it. Everything it creates (processes,
//! namespaces, links, /etc/netns entries, temp files) is removed when it ends, panics included,
//! and leftovers of a test process that was killed are swept when the next one starts. After a
//! failure (or with `K8S_PODS_KEEP=1`) the pods' logs and data stay in `$TMPDIR/gwpods-<pid>`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::{Binaries, CtlOutput, KillOnDrop, binaries, eventually};

/// How long any single wait may take.
const SETTLE: Duration = Duration::from_secs(30);
/// The StatefulSet: the first `VOTERS` ordinals are voters, the others learners.
const VOTERS: u32 = 3;
const SERVICE: &str = "gateway-peer";
const DOMAIN: &str = "cluster.local";
/// The ports of every pod, as in deploy/k8s/base/gateway.toml.
const HTTP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9090;
const PEER_PORT: u16 = 9091;
const OPS_PORT: u16 = 9100;
/// The backend inside every pod's namespace, on its own loopback.
const BACKEND: &str = "http://127.0.0.1:8000";
/// The deployed API, routed to that backend.
const API_PATH: &str = "/web/hello";
/// gatewayd keeps serving this long after /readyz turns 503 on SIGTERM.
const SHUTDOWN_DELAY_MS: u64 = 1000;
/// The load client, like a Service: re-reads every pod's readiness this often.
const READINESS_PERIOD: Duration = Duration::from_millis(100);
/// The load client sends one request per tick, bounded in count and time.
const LOAD_TICK: Duration = Duration::from_millis(20);
const LOAD_MAX_TICKS: u64 = 6_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------------
// Running `ip`

/// Runs `ip ARGS`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this runs under CI, which sets `CI` (to `true` on every common service).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("network setup: {e}"))
}

/// Prefix of everything this test creates: `gwpods-<pid>` (network namespaces are named
/// `gwpods-<pid>-gateway-<N>`; the bridge and the veths carry it as their alias).
const TAG: &str = "gwpods-";

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// The pid in `gwpods-<pid>[-...]`, if `name` is one of ours.
fn tagged_pid(name: &str) -> Option<&str> {
    let pid = name.strip_prefix(TAG)?.split('-').next()?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

/// Kills whatever still runs in network namespace `ns`.
fn kill_all_in(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// Removes what test processes that no longer run left behind (e.g. killed by a timeout).
fn sweep_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if tagged_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                kill_all_in(name);
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(dirs) = std::fs::read_dir("/etc/netns") {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if tagged_pid(&name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    if let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if tagged_pid(&name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            let Some(alias) = line.split("alias ").nth(1) else {
                continue;
            };
            let Some(pid) = tagged_pid(alias.trim()) else {
                continue;
            };
            if !pid_alive(pid) {
                let name = line.split(": ").nth(1).unwrap_or("");
                let name = name.split('@').next().unwrap_or("");
                if !name.is_empty() {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The pods

struct Pod {
    ordinal: u32,
    /// Network namespace (and /etc/netns/<netns>).
    netns: String,
    /// The host side of the pod's veth pair, on the bridge.
    veth: String,
    ip: String,
    dir: PathBuf,
    gatewayd: Option<KillOnDrop>,
    backend: Option<KillOnDrop>,
}

impl Pod {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("gatewayd.log")
    }

    fn name(&self) -> String {
        format!("gateway-{}", self.ordinal)
    }

    fn is_running(&mut self) -> bool {
        self.gatewayd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A StatefulSet's pods, each in its own network namespace.
struct Pods {
    bins: Binaries,
    /// `gwpods-<pid>`.
    tag: String,
    /// The Kubernetes namespace, in the DNS names.
    namespace: String,
    /// The first three octets of this test's /24.
    subnet: String,
    bridge: Option<String>,
    root: PathBuf,
    token_file: PathBuf,
    /// The Secret gateway-tls: the cluster CA and the pods' certificate (peer mutual TLS and
    /// the admin API), as deploy/k8s/base/gateway.toml uses it.
    ca: PathBuf,
    cert: testkit::pki::CertFiles,
    pods: Vec<Pod>,
}

impl Pods {
    /// Prepares the network and the backends of `n` pods (none started). `None`, after saying
    /// why, when network namespaces cannot be used here.
    fn setup(n: u32) -> Option<Pods> {
        let pid = std::process::id();
        let tag = format!("{TAG}{pid}");
        let probe = format!("{tag}-probe");
        if let Err(e) = ip(&["netns", "add", &probe]) {
            // CI must run this test: there a skip would be a pass that checked nothing.
            assert!(
                !in_ci(),
                "CI is set, and this test needs network namespaces (root and iproute2), but {e}"
            );
            eprintln!(
                "SKIPPED: this test needs network namespaces (root and iproute2), and here {e}"
            );
            return None;
        }
        let _ = ip(&["netns", "del", &probe]);
        sweep_stale();
        if Command::new("python3").arg("--version").output().is_err() {
            panic!("python3 is needed: it is the backend inside every pod's namespace");
        }
        let root = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp dir");
        let token_file = root.join("admin-token");
        std::fs::write(&token_file, format!("k8s-pods-token-{pid}-0123456789\n")).unwrap();
        let mut pods = Pods {
            bins: binaries!(),
            namespace: format!("gateway-test-{pid}"),
            tag,
            subnet: String::new(),
            bridge: None,
            ca: PathBuf::new(),
            cert: testkit::pki::CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            root,
            token_file,
            pods: Vec::new(),
        };
        pods.claim_subnet(pid);
        pods.issue_certificates(n);
        for ordinal in 0..n {
            pods.add_pod(ordinal, n);
        }
        eprintln!(
            "pods in {}.0/24 on bridge {}, namespaces {}-gateway-0..{}",
            pods.subnet,
            pods.bridge.as_deref().unwrap_or("?"),
            pods.tag,
            n - 1
        );
        Some(pods)
    }

    /// Claims a /24 of 198.18.0.0/15 that nothing else uses: creating the bridge named after
    /// it is atomic, so two test processes never get the same one.
    fn claim_subnet(&mut self, pid: u32) {
        for i in 0..512 {
            let idx = (pid + i) % 512;
            let bridge = format!("gk{idx}br");
            if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue; // Taken by another test process (or a leftover).
            }
            must(ip(&["link", "set", &bridge, "alias", &self.tag]));
            self.bridge = Some(bridge.clone());
            let subnet = if idx < 256 {
                format!("198.18.{idx}")
            } else {
                format!("198.19.{}", idx - 256)
            };
            let used = must(ip(&[
                "-4",
                "route",
                "show",
                "table",
                "all",
                "root",
                &format!("{subnet}.0/24"),
            ]));
            if !used.trim().is_empty() {
                let _ = ip(&["link", "del", &bridge]);
                self.bridge = None;
                continue;
            }
            must(ip(&[
                "addr",
                "add",
                &format!("{subnet}.1/24"),
                "dev",
                &bridge,
            ]));
            must(ip(&["link", "set", &bridge, "up"]));
            self.subnet = subnet;
            return;
        }
        panic!("no free /24 in 198.18.0.0/15 for this test");
    }

    /// One certificate for every pod, as deploy/README.md issues it: the peers' DNS names by
    /// wildcard, plus the pods' addresses (the test reaches the admin API by pod IP).
    fn issue_certificates(&mut self, n: u32) {
        let pki = testkit::pki::Pki::new(&self.root.join("tls"), "gateway");
        let mut names = vec![
            format!("*.{SERVICE}.{}.svc.{DOMAIN}", self.namespace),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        names.extend((0..n + 2).map(|o| format!("{}.{}", self.subnet, 10 + o)));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.cert = pki.issue("tls", &names);
        self.ca = pki.ca.clone();
    }

    fn dns_name(&self, ordinal: u32) -> String {
        format!(
            "gateway-{ordinal}.{SERVICE}.{}.svc.{DOMAIN}",
            self.namespace
        )
    }

    fn peer_addr(&self, ordinal: u32) -> String {
        format!("{}:{PEER_PORT}", self.dns_name(ordinal))
    }

    /// A namespace, a veth pair on the bridge, an address, /etc/netns files and a backend.
    fn add_pod(&mut self, ordinal: u32, n: u32) {
        let bridge = self.bridge.clone().expect("bridge");
        let idx = bridge.trim_start_matches("gk").trim_end_matches("br");
        let netns = format!("{}-gateway-{ordinal}", self.tag);
        let veth = format!("gk{idx}v{ordinal}");
        let inner = format!("gk{idx}c{ordinal}");
        let pod_ip = format!("{}.{}", self.subnet, 10 + ordinal);
        let dir = self.root.join(format!("gateway-{ordinal}"));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        must(ip(&["netns", "add", &netns]));
        self.pods.push(Pod {
            ordinal,
            netns: netns.clone(),
            veth: veth.clone(),
            ip: pod_ip.clone(),
            dir: dir.clone(),
            gatewayd: None,
            backend: None,
        });
        must(ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", &inner, "netns", &netns,
        ]));
        must(ip(&["link", "set", &veth, "alias", &self.tag]));
        must(ip(&["link", "set", &veth, "master", &bridge]));
        must(ip(&["link", "set", &veth, "up"]));
        must(ip(&["-n", &netns, "link", "set", &inner, "name", "eth0"]));
        must(ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ]));
        must(ip(&["-n", &netns, "link", "set", "eth0", "up"]));
        must(ip(&["-n", &netns, "link", "set", "lo", "up"]));
        let routes = must(ip(&["-n", &netns, "route", "show", "default"]));
        assert!(routes.trim().is_empty(), "no way out of {netns}: {routes}");

        // What kubelet and CoreDNS provide: the headless Service's names (publishNotReady, so
        // every pod's), and the pod's search path. `ip netns exec` mounts these over /etc.
        let etc = Path::new("/etc/netns").join(&netns);
        std::fs::create_dir_all(&etc).expect("create /etc/netns/<name>");
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for k in 0..n {
            hosts += &format!(
                "{}.{} {} gateway-{k}\n",
                self.subnet,
                10 + k,
                self.dns_name(k)
            );
        }
        std::fs::write(etc.join("hosts"), hosts).unwrap();
        // No name server: a name missing from hosts fails at once instead of leaving the box.
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver 127.0.0.1\nsearch {SERVICE}.{ns}.svc.{DOMAIN} {ns}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\noptions ndots:5 timeout:1 attempts:1\n",
                ns = self.namespace
            ),
        )
        .unwrap();

        // The pod's backend, on its own loopback: it answers with the pod's name.
        std::fs::write(
            dir.join("www").join("hello"),
            format!("pod gateway-{ordinal}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("backend.log")).unwrap();
        let backend = KillOnDrop::spawn(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "python3",
                    "-m",
                    "http.server",
                    "8000",
                ])
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(dir.join("www"))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log)),
        )
        .expect("start the backend");
        self.pods.last_mut().unwrap().backend = Some(backend);
    }

    fn pod(&mut self, ordinal: u32) -> &mut Pod {
        &mut self.pods[ordinal as usize]
    }

    /// Starts (or restarts, on its data) pod `gateway-<ordinal>`, as the StatefulSet would:
    /// same command line and ports in every pod, identity from the hostname.
    fn start(&mut self, ordinal: u32) {
        let namespace = self.namespace.clone();
        let gatewayd = self.bins.gatewayd.clone();
        let token = self.token_file.clone();
        let (ca, cert) = (self.ca.clone(), self.cert.clone());
        let pod = self.pod(ordinal);
        assert!(!pod.is_running(), "{} is already running", pod.name());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pod.log_path())
            .unwrap();
        let _ = writeln!(log, "----- test: starting {} -----", pod.name());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns])
            .arg(&gatewayd)
            .args(["--listen-admin", &format!("0.0.0.0:{ADMIN_PORT}")])
            .args(["--listen-peer", &format!("0.0.0.0:{PEER_PORT}")])
            .args(["--listen-http", &format!("0.0.0.0:{HTTP_PORT}")])
            .args(["--listen-ops", &format!("0.0.0.0:{OPS_PORT}")])
            .arg("--admin-token-file")
            .arg(&token)
            // deploy/k8s/base/gateway.toml: the Secret gateway-tls for peers and admin.
            .arg("--peer-tls-ca")
            .arg(&ca)
            .arg("--peer-tls-cert")
            .arg(&cert.cert)
            .arg("--peer-tls-key")
            .arg(&cert.key)
            .arg("--admin-tls-cert")
            .arg(&cert.cert)
            .arg("--admin-tls-key")
            .arg(&cert.key)
            .arg("--data-dir")
            .arg(pod.data_dir());
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        // The StatefulSet's environment (deploy/k8s/base/statefulset.yaml).
        let name = pod.name();
        cmd.env("HOSTNAME", &name)
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &namespace)
            .env("GATEWAY_PEERS_FROM_STATEFULSET", "true")
            .env("GATEWAY_STATEFULSET_SERVICE", SERVICE)
            .env("GATEWAY_STATEFULSET_VOTERS", VOTERS.to_string())
            .env(
                "GATEWAY_ADVERTISE_PEER",
                format!("{name}.{SERVICE}.{namespace}.svc.{DOMAIN}:{PEER_PORT}"),
            )
            .env("GATEWAY_SHUTDOWN_DELAY_MS", SHUTDOWN_DELAY_MS.to_string())
            .env("RUST_LOG", "info,openraft=warn");
        let child = KillOnDrop::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log)),
        )
        .expect("start gatewayd");
        pod.gatewayd = Some(child);
    }

    /// SIGKILL, as in a node crash or an OOM kill.
    fn kill(&mut self, ordinal: u32) {
        if let Some(mut c) = self.pod(ordinal).gatewayd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Deletes a stopped pod's data, as if its volume were lost.
    fn wipe(&mut self, ordinal: u32) {
        let pod = self.pod(ordinal);
        assert!(pod.gatewayd.is_none(), "stop {} first", pod.name());
        std::fs::remove_dir_all(pod.data_dir()).expect("wipe the data dir");
    }

    /// SIGTERM, as when the pod is deleted; waits for the exit and returns whether it exited
    /// with success (SIGKILL after `within`, as kubelet after the grace period).
    async fn terminate(&mut self, ordinal: u32, within: Duration) -> bool {
        let Some(mut c) = self.pod(ordinal).gatewayd.take() else {
            return false;
        };
        testkit::signal(c.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts the pod off the network: its veth is down, so nothing goes in or out.
    fn partition(&mut self, ordinal: u32) {
        let veth = self.pod(ordinal).veth.clone();
        must(ip(&["link", "set", &veth, "down"]));
    }

    fn heal(&mut self, ordinal: u32) {
        let veth = self.pod(ordinal).veth.clone();
        must(ip(&["link", "set", &veth, "up"]));
    }

    fn http_addr(&self, ordinal: u32) -> String {
        format!("{}:{HTTP_PORT}", self.pods[ordinal as usize].ip)
    }

    fn ops_addr(&self, ordinal: u32) -> String {
        format!("{}:{OPS_PORT}", self.pods[ordinal as usize].ip)
    }

    async fn gatewayctl(&self, inside: Option<&str>, endpoint: &str, args: &[&str]) -> CtlOutput {
        let mut cmd = match inside {
            Some(netns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", netns]).arg(&self.bins.gatewayctl);
                c
            }
            None => tokio::process::Command::new(&self.bins.gatewayctl),
        };
        let out = cmd
            .arg("--endpoint")
            .arg(endpoint)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--tls-ca")
            .arg(&self.ca)
            .args(args)
            .env_remove("GATEWAY_ENDPOINT")
            .env_remove("GATEWAY_TOKEN")
            .env_remove("GATEWAY_TOKEN_FILE")
            .env_remove("GATEWAY_TLS_CA")
            // A wait that gives up (or a panic) drops this future: the process goes with it.
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run gatewayctl");
        CtlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `gatewayctl --endpoint https://<pod ip>:9090 ARGS`, from the test's (root) namespace
    /// through the bridge.
    async fn ctl(&self, ordinal: u32, args: &[&str]) -> CtlOutput {
        let endpoint = format!("https://{}:{ADMIN_PORT}", self.pods[ordinal as usize].ip);
        self.gatewayctl(None, &endpoint, args).await
    }

    /// `gatewayctl` run inside the pod's namespace against its loopback (reaches a pod that is
    /// cut off from the network).
    async fn ctl_inside(&self, ordinal: u32, args: &[&str]) -> CtlOutput {
        let netns = self.pods[ordinal as usize].netns.clone();
        let endpoint = format!("https://127.0.0.1:{ADMIN_PORT}");
        self.gatewayctl(Some(&netns), &endpoint, args).await
    }

    async fn ctl_ok(&self, ordinal: u32, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        self.ctl(ordinal, &a).await.json()
    }

    /// `GET path` on the pod's own loopback from inside its namespace (bash's /dev/tcp, so
    /// that no HTTP client needs to be installed): status and body.
    async fn get_inside(&self, ordinal: u32, port: u16, path: &str) -> Option<(u16, String)> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.pods[ordinal as usize].netns])
            .args(["timeout", "5", "bash", "-c", &script])
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.lines().next()?.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// `cluster status -o json` as pod `ordinal` reports it, if it answers.
    async fn status(&self, ordinal: u32) -> Option<Value> {
        let out = self
            .ctl(ordinal, &["cluster", "status", "-o", "json"])
            .await;
        if !out.success {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    async fn instances(&self, ordinal: u32) -> Option<BTreeSet<String>> {
        let out = self.ctl(ordinal, &["instance", "list", "-o", "json"]).await;
        if !out.success {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect(),
        )
    }

    async fn wait_instances(&self, ordinal: u32, want: &BTreeSet<String>) {
        eventually(
            &format!("gateway-{ordinal} to list the instances {want:?}"),
            SETTLE,
            || async move { self.instances(ordinal).await.filter(|got| got == want) },
        )
        .await;
    }

    /// Creates an instance through pod `via`, retrying while there is no leader (a retried
    /// write that had gone through answers AlreadyExists).
    async fn create_instance(&self, via: u32, name: &str) {
        let args = [
            "instance",
            "create",
            "--name",
            name,
            "--spec",
            "api.s1.small",
            "--region",
            "cn-hongkong",
        ];
        eventually(
            &format!("instance {name} created through gateway-{via}"),
            SETTLE,
            || async move {
                let started = Instant::now();
                let out = self.ctl(via, &args).await;
                let done = out.success || out.stderr.contains("AlreadyExists");
                if !done {
                    eprintln!(
                        "   (creating {name} through gateway-{via} failed after {:?}: {})",
                        started.elapsed(),
                        out.stderr.trim()
                    );
                }
                done.then_some(())
            },
        )
        .await;
    }

    /// Waits until pods `ordinals` all name the same leader, and returns its node id.
    async fn wait_leader(&self, ordinals: &[u32]) -> u64 {
        eventually(
            &format!("a leader that gateway-{ordinals:?} agree on"),
            SETTLE,
            || async move {
                let mut leader = None;
                for &o in ordinals {
                    let l = self.status(o).await?["leader_id"].as_u64()?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                leader
            },
        )
        .await
    }

    async fn ready(&self, ordinal: u32) -> bool {
        readyz(&self.ops_addr(ordinal)).await
    }

    async fn wait_ready(&self, ordinal: u32) {
        eventually(
            &format!("gateway-{ordinal} /readyz 200"),
            SETTLE,
            || async move { self.ready(ordinal).await.then_some(()) },
        )
        .await;
    }

    fn log_tail(&self, ordinal: u32, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.pods[ordinal as usize].log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            for mut child in [pod.gatewayd.take(), pod.backend.take()]
                .into_iter()
                .flatten()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for pod in &self.pods {
                eprintln!(
                    "----- {} log (last 80 lines) -----\n{}",
                    pod.name(),
                    self.log_tail(pod.ordinal, 80)
                );
            }
        }
        for pod in &self.pods {
            kill_all_in(&pod.netns);
            let _ = ip(&["netns", "del", &pod.netns]);
            let _ = ip(&["link", "del", &pod.veth]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        }
        if let Some(bridge) = &self.bridge {
            let _ = ip(&["link", "del", bridge]);
        }
        if std::thread::panicking() || std::env::var_os("K8S_PODS_KEEP").is_some() {
            eprintln!(
                "the pods' logs and data are kept in {}",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

async fn readyz(ops: &str) -> bool {
    tokio::time::timeout(
        Duration::from_millis(500),
        testkit::http::get(ops, "/readyz"),
    )
    .await
    .ok()
    .flatten()
    .is_some_and(|r| r.status == 200)
}

fn voters(status: &Value) -> usize {
    status["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count())
}

// ------------------------------------------------------------------------------------------
// Load through a "Service": only to ready pods

#[derive(Debug, Default)]
struct LoadReport {
    sent: u64,
    ok: u64,
    per_pod: Vec<u64>,
    failures: Vec<String>,
    /// The longest time no pod was ready (the client waited).
    longest_without_endpoints: Duration,
}

struct ServiceLoad {
    stop: Arc<AtomicBool>,
    /// Successful requests per target pod.
    served: Arc<Vec<AtomicU64>>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
    sender: tokio::task::JoinHandle<LoadReport>,
}

impl ServiceLoad {
    /// Polls every pod's /readyz every 100 ms and sends `GET API_PATH` every 20 ms to the next
    /// ready pod in turn, on a new connection each time.
    fn start(pods: &Pods, ordinals: &[u32]) -> ServiceLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<Vec<AtomicU64>> =
            Arc::new(ordinals.iter().map(|_| AtomicU64::new(0)).collect());
        let ready: Arc<Vec<AtomicBool>> =
            Arc::new(ordinals.iter().map(|_| AtomicBool::new(false)).collect());
        let started = Instant::now();
        let pollers = ordinals
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let (ops, ready, stop) = (pods.ops_addr(o), ready.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_MAX_TIME {
                        ready[i].store(readyz(&ops).await, Ordering::Relaxed);
                        tokio::time::sleep(READINESS_PERIOD).await;
                    }
                })
            })
            .collect();
        let targets: Vec<(u32, String)> =
            ordinals.iter().map(|&o| (o, pods.http_addr(o))).collect();
        let (stop2, served2) = (stop.clone(), served.clone());
        let sender = tokio::spawn(async move {
            let mut r = LoadReport {
                per_pod: vec![0; targets.len()],
                ..Default::default()
            };
            let mut tick = tokio::time::interval(LOAD_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut next, mut ticks) = (0, 0u64);
            let mut no_endpoints_since: Option<Instant> = None;
            while !stop2.load(Ordering::Relaxed)
                && ticks < LOAD_MAX_TICKS
                && started.elapsed() < LOAD_MAX_TIME
            {
                tick.tick().await;
                ticks += 1;
                let n = targets.len();
                let Some(i) = (0..n)
                    .map(|k| (next + k) % n)
                    .find(|&i| ready[i].load(Ordering::Relaxed))
                else {
                    let since = *no_endpoints_since.get_or_insert_with(Instant::now);
                    r.longest_without_endpoints = r.longest_without_endpoints.max(since.elapsed());
                    continue;
                };
                no_endpoints_since = None;
                next = i + 1;
                r.sent += 1;
                let (o, addr) = &targets[i];
                let at = started.elapsed();
                match testkit::http::get(addr, API_PATH).await {
                    Some(resp) if resp.status == 200 && resp.body == format!("pod gateway-{o}") => {
                        r.ok += 1;
                        r.per_pod[i] += 1;
                        served2[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Some(resp) => r.failures.push(format!(
                        "at {at:?}, gateway-{o}: {} {}",
                        resp.status, resp.body
                    )),
                    None => r.failures.push(format!(
                        "at {at:?}, gateway-{o}: no response (connection failed or timed out)"
                    )),
                }
            }
            r
        });
        ServiceLoad {
            stop,
            served,
            pollers,
            sender,
        }
    }

    fn served(&self, i: Option<usize>) -> u64 {
        self.served
            .iter()
            .enumerate()
            .filter(|(k, _)| i.is_none_or(|i| i == *k))
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until `more` further requests have succeeded, on target `i` or on any.
    async fn wait_served(&self, i: Option<usize>, more: u64) {
        let target = self.served(i) + more;
        eventually(&format!("{more} more requests served"), SETTLE, || async {
            (self.served(i) >= target).then_some(())
        })
        .await;
    }

    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for p in self.pollers {
            let _ = p.await;
        }
        self.sender.await.expect("load task")
    }
}

// ------------------------------------------------------------------------------------------
// The test

const VOTER_PODS: [u32; 3] = [0, 1, 2];

/// Prints a step with the time since the test started.
struct Steps(Instant);

impl Steps {
    fn say(&self, what: &str) {
        eprintln!("[{:>6.1?}] {what}", self.0.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_bootstrap_recover_scale_partition_and_roll() {
    let Some(mut pods) = Pods::setup(VOTERS + 1) else {
        return;
    };
    let steps = Steps(Instant::now());
    // Every instance created so far: each pod must end up listing exactly these.
    let mut want = BTreeSet::new();
    form_the_cluster(&mut pods, &steps, &mut want).await;
    crash_the_leader_and_restart_it(&mut pods, &steps, &mut want).await;
    lose_a_volume(&mut pods, &steps, &mut want).await;
    scale_up_and_down(&mut pods, &steps, &mut want).await;
    partition_the_leader(&mut pods, &steps, &mut want).await;
    rolling_restart_under_load(&mut pods, &steps, &want).await;
    steps.say("done");
}

/// 1. The three voters start together (podManagementPolicy: Parallel), find each other through
///    the DNS names and bootstrap one cluster.
async fn form_the_cluster(pods: &mut Pods, steps: &Steps, want: &mut BTreeSet<String>) {
    steps.say("1. three pods start and form the cluster");
    for o in VOTER_PODS {
        pods.start(o);
    }
    let leader = pods.wait_leader(&VOTER_PODS).await;
    for o in VOTER_PODS {
        let s = eventually(&format!("gateway-{o} to see 3 voters"), SETTLE, || async {
            let s = pods.status(o).await?;
            (voters(&s) == 3).then_some(s)
        })
        .await;
        assert_eq!(s["node_id"], o + 1, "gateway-{o} is node {}", o + 1);
        assert_eq!(s["leader_id"], leader);
        for m in s["members"].as_array().unwrap() {
            let id = m["node_id"].as_u64().unwrap();
            assert_eq!(
                m["peer_addr"],
                pods.peer_addr(id as u32 - 1),
                "members are known by their StatefulSet DNS names: {s}"
            );
        }
    }
    pods.create_instance(0, "formed").await;
    want.insert("formed".into());
    for o in VOTER_PODS {
        pods.wait_instances(o, want).await;
    }
    steps.say(&format!("   formed, leader node {leader}"));
}

/// 2. The leader's pod is SIGKILLed; the others elect a new leader and take writes; the pod
///    restarts on its data and catches up.
async fn crash_the_leader_and_restart_it(
    pods: &mut Pods,
    steps: &Steps,
    want: &mut BTreeSet<String>,
) {
    let crashed = pods.wait_leader(&VOTER_PODS).await as u32 - 1;
    steps.say(&format!("2. gateway-{crashed} (the leader) SIGKILLed"));
    pods.kill(crashed);
    for o in VOTER_PODS.into_iter().filter(|&o| o != crashed) {
        let name = format!("while-gateway-{crashed}-down-{o}");
        pods.create_instance(o, &name).await;
        want.insert(name);
    }
    pods.start(crashed);
    pods.wait_instances(crashed, want).await;
    pods.wait_ready(crashed).await;
    steps.say(&format!("   gateway-{crashed} restarted and caught up"));
}

/// 3. A follower loses its volume: SIGKILL, data deleted, restarted empty. It must rejoin (not
///    bootstrap a cluster of its own) and receive everything.
async fn lose_a_volume(pods: &mut Pods, steps: &Steps, want: &mut BTreeSet<String>) {
    let leader = pods.wait_leader(&VOTER_PODS).await;
    let lost = VOTER_PODS
        .into_iter()
        .find(|&o| o + 1 != leader as u32)
        .unwrap();
    steps.say(&format!("3. gateway-{lost} loses its data"));
    pods.kill(lost);
    pods.wipe(lost);
    pods.create_instance((lost + 1) % 3, "while-wiped").await;
    want.insert("while-wiped".into());
    pods.start(lost);
    pods.wait_instances(lost, want).await;
    let s = pods.status(lost).await.expect("status");
    assert_eq!(voters(&s), 3, "{s}");
    assert_eq!(s["members"].as_array().unwrap().len(), 3, "{s}");
    steps.say(&format!(
        "   gateway-{lost} rejoined from nothing and caught up"
    ));
}

/// 4. Scale up to 4: gateway-3 is beyond the voters, joins as a learner by itself and receives
///    the state; scale down (SIGTERM): it leaves the membership.
async fn scale_up_and_down(pods: &mut Pods, steps: &Steps, want: &mut BTreeSet<String>) {
    steps.say("4. scale up: gateway-3 joins as a learner");
    pods.start(3);
    pods.wait_instances(3, want).await;
    let learner = eventually("node 4 listed as a learner", SETTLE, || async {
        let s = pods.status(0).await?;
        assert_eq!(voters(&s), 3, "{s}");
        let m = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == 4)?;
        (m["role"] == "learner" && m["voter"] == false).then(|| m.clone())
    })
    .await;
    assert_eq!(learner["peer_addr"], pods.peer_addr(3), "{learner}");
    pods.create_instance(1, "with-learner").await;
    want.insert("with-learner".into());
    pods.wait_instances(3, want).await;
    pods.wait_ready(3).await;
    steps.say("   scale down: SIGTERM to gateway-3");
    assert!(
        pods.terminate(3, SETTLE).await,
        "gateway-3 exits cleanly on SIGTERM"
    );
    for o in VOTER_PODS {
        eventually(
            &format!("gateway-{o} to no longer list node 4"),
            SETTLE,
            || async {
                let s = pods.status(o).await?;
                let m = s["members"].as_array()?;
                (m.len() == 3 && m.iter().all(|m| m["node_id"] != 4)).then_some(())
            },
        )
        .await;
    }
    steps.say("   gateway-3 left the membership");
}

/// 5. An API whose backend runs in every pod's namespace; then the leader's pod is cut off. The
///    majority stays writable, the cut-off pod serves traffic from its last config and refuses
///    writes; once reconnected, every pod converges.
async fn partition_the_leader(pods: &mut Pods, steps: &Steps, want: &mut BTreeSet<String>) {
    steps.say("5. deploy an API, then cut the leader's pod off");
    pods.ctl_ok(
        0,
        &["group", "create", "--name", "web", "--base-path", "/web"],
    )
    .await;
    pods.ctl_ok(
        1,
        &[
            "api",
            "create",
            "--group",
            "web",
            "--name",
            "hello",
            "--method",
            "GET",
            "--path",
            "/hello",
            "--backend",
            BACKEND,
            "--timeout",
            "3s",
        ],
    )
    .await;
    pods.ctl_ok(2, &["api", "deploy", "--group", "web", "--name", "hello"])
        .await;
    for o in VOTER_PODS {
        let addr = pods.http_addr(o);
        let body = format!("pod gateway-{o}");
        eventually(
            &format!("{API_PATH} served by gateway-{o}"),
            SETTLE,
            || async {
                let r = testkit::http::get(&addr, API_PATH).await?;
                (r.status == 200 && r.body == body).then_some(())
            },
        )
        .await;
    }

    let leader = pods.wait_leader(&VOTER_PODS).await;
    let cut = leader as u32 - 1;
    let majority: Vec<u32> = VOTER_PODS.into_iter().filter(|&o| o != cut).collect();
    pods.partition(cut);
    steps.say(&format!("   gateway-{cut} (the leader) cut off"));
    // The majority elects a leader among itself and takes writes.
    pods.create_instance(majority[0], "during-partition").await;
    let new_leader = pods.wait_leader(&majority).await;
    assert_ne!(new_leader, leader, "the majority elected one of its own");
    let mut with_write = want.clone();
    with_write.insert("during-partition".into());
    for &o in &majority {
        pods.wait_instances(o, &with_write).await;
    }
    // The cut-off pod keeps serving the data plane from its last config...
    for _ in 0..5 {
        assert_eq!(
            pods.get_inside(cut, HTTP_PORT, API_PATH).await,
            Some((200, format!("pod gateway-{cut}"))),
            "the cut-off pod serves the data plane from its last config"
        );
    }
    // ...refuses admin writes clearly, within the write timeout...
    let started = Instant::now();
    let out = pods
        .ctl_inside(
            cut,
            &[
                "instance",
                "create",
                "--name",
                "minority-write",
                "--spec",
                "api.s1.small",
                "--region",
                "cn-hongkong",
            ],
        )
        .await;
    let took = started.elapsed();
    eprintln!(
        "   minority write refused after {took:?}: {}",
        out.stderr.trim()
    );
    assert!(!out.success, "a write without quorum must fail");
    assert!(
        out.stderr.contains("Unavailable") && out.stderr.contains("no quorum"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(12), "refused after {took:?}");
    // ...refuses a linearizable read (the default), and answers a local one from its last
    // state (without the majority's write).
    let strict = pods.ctl_inside(cut, &["instance", "list"]).await;
    assert!(
        !strict.success,
        "a cut-off pod cannot serve a linearizable read"
    );
    let listed = pods
        .ctl_inside(
            cut,
            &["--consistency", "local", "instance", "list", "-o", "json"],
        )
        .await
        .json();
    let listed: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str().map(String::from))
        .collect();
    assert_eq!(&listed, want, "the cut-off pod still has its last state");
    let ready = pods.get_inside(cut, OPS_PORT, "/readyz").await;
    eprintln!("   the cut-off pod's /readyz: {ready:?}");

    pods.heal(cut);
    steps.say(&format!("   gateway-{cut} reconnected"));
    // The refused write is gone for good; the majority's is everywhere.
    *want = with_write;
    for o in VOTER_PODS {
        pods.wait_instances(o, want).await;
    }
    let (index, leader) = eventually(
        "every pod at the same applied index under one leader",
        SETTLE,
        || async {
            let mut seen = None;
            for o in VOTER_PODS {
                let s = pods.status(o).await?;
                let here = (s["applied_index"].as_u64()?, s["leader_id"].as_u64()?);
                if seen.is_some_and(|x| x != here) {
                    return None;
                }
                seen = Some(here);
            }
            seen
        },
    )
    .await;
    steps.say(&format!(
        "   converged: applied index {index}, leader node {leader}"
    ));
}

/// 6. Rolling restart (highest ordinal first, as the StatefulSet controller does) under load
///    sent the way a Service does: only to ready pods. No request may fail.
async fn rolling_restart_under_load(pods: &mut Pods, steps: &Steps, want: &BTreeSet<String>) {
    steps.say("6. rolling restart under load");
    for o in VOTER_PODS {
        pods.wait_ready(o).await;
    }
    let load = ServiceLoad::start(pods, &VOTER_PODS);
    load.wait_served(None, 20).await;
    for o in [2, 1, 0] {
        let stopped = Instant::now();
        assert!(
            pods.terminate(o, SETTLE).await,
            "gateway-{o} exits cleanly on SIGTERM"
        );
        let exited = stopped.elapsed();
        pods.start(o);
        pods.wait_ready(o).await;
        steps.say(&format!(
            "   gateway-{o} restarted (exited {exited:?} after SIGTERM, ready {:?} after it)",
            stopped.elapsed()
        ));
        // As with minReadySeconds: traffic is back on this pod before the next one goes.
        load.wait_served(Some(o as usize), 10).await;
    }
    load.wait_served(None, 20).await;
    let report = load.finish().await;
    eprintln!(
        "   load: {} sent, {} ok, per pod {:?}, longest without a ready pod {:?}",
        report.sent, report.ok, report.per_pod, report.longest_without_endpoints
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the rolling restart:\n{}",
        report.failures.len(),
        report.sent,
        report.failures.join("\n")
    );
    assert!(report.ok >= 80, "{report:?}");
    for o in VOTER_PODS {
        pods.wait_instances(o, want).await;
    }
}
