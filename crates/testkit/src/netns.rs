//! Test hosts in network namespaces: each host is a namespace with its own address on a bridge
//! in the root namespace, so that tests can cut, and heal, the network between processes.
//!
//! Addresses come from 198.18.0.0/15 (reserved for network tests), one /24 per network: the
//! bridge has the /24's first address (the test process reaches every host through it), host
//! `i` has `.10 + i`. The namespaces have no default route and nothing is forwarded or NATed,
//! so nothing leaves the machine. Faults are iptables rules inside a host's namespace that
//! name the other hosts' addresses only, so the test process always reaches every host.
//!
//! Everything a [`Net`] creates (namespaces, links, the processes left in its namespaces) is
//! removed when it is dropped, panics included; what a killed test process left behind is swept
//! when the next one starts. Needs root, iproute2 and iptables.

use std::path::Path;
use std::process::Command;

/// The prefix of the names of everything a [`Net`] creates: `<prefix><pid>`.
pub const TAG: &str = "gwnet-";

/// A bridge and the hosts on it.
pub struct Net {
    tag: String,
    bridge: String,
    subnet: String,
    hosts: Vec<Host>,
}

/// One host: a network namespace with one interface on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub ip: String,
    /// Its end of the veth pair in the root namespace.
    veth: String,
}

/// Runs `ip ARGS`; the error names the command and what it said.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("network setup: {e}"))
}

/// Whether this machine can make network namespaces and iptables rules in them; the reason
/// when it cannot.
pub fn available() -> Result<(), String> {
    let probe = format!("{TAG}{}-probe", std::process::id());
    ip(&["netns", "add", &probe])?;
    let rules = run("ip", &["netns", "exec", &probe, "iptables", "-S"]);
    let _ = ip(&["netns", "del", &probe]);
    rules.map(|_| ())
}

impl Net {
    /// Makes a bridge and `n` hosts on it; the reason when this machine cannot.
    pub fn new(n: usize) -> Result<Net, String> {
        available()?;
        sweep_stale();
        let pid = std::process::id();
        let tag = format!("{TAG}{pid}");
        let (bridge, subnet) = claim_subnet(pid, &tag)?;
        let mut net = Net {
            tag,
            bridge,
            subnet,
            hosts: Vec::new(),
        };
        for i in 0..n {
            net.add_host(i);
        }
        Ok(net)
    }

    fn add_host(&mut self, i: usize) {
        let idx = self.bridge.trim_start_matches("gk").trim_end_matches("br");
        let host = Host {
            netns: format!("{}-h{i}", self.tag),
            ip: format!("{}.{}", self.subnet, 10 + i),
            veth: format!("gk{idx}v{i}"),
        };
        let inner = format!("gk{idx}c{i}");
        must(ip(&["netns", "add", &host.netns]));
        self.hosts.push(host.clone());
        let (ns, veth) = (host.netns.as_str(), host.veth.as_str());
        must(ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", &inner, "netns", ns,
        ]));
        must(ip(&["link", "set", veth, "alias", &self.tag]));
        must(ip(&["link", "set", veth, "master", &self.bridge]));
        must(ip(&["link", "set", veth, "up"]));
        must(ip(&["-n", ns, "link", "set", &inner, "name", "eth0"]));
        let cidr = format!("{}/24", host.ip);
        must(ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]));
        must(ip(&["-n", ns, "link", "set", "eth0", "up"]));
        must(ip(&["-n", ns, "link", "set", "lo", "up"]));
        let routes = must(ip(&["-n", ns, "route", "show", "default"]));
        assert!(routes.trim().is_empty(), "no way out of {ns}: {routes}");
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The address the test process has on the bridge.
    pub fn gateway_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// `program` to be run inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).arg(program);
        c
    }

    /// `--peers` for one node per host, node `k + 1` in host `k`, each on `port`.
    pub fn peers_arg(&self, port: u16) -> String {
        let peers: Vec<String> = (self.hosts.iter().enumerate())
            .map(|(k, h)| format!("{}={}:{port}", k + 1, h.ip))
            .collect();
        peers.join(",")
    }

    /// Starts `cmd` (a gatewayd from [`Net::command`]) with its output written to `log` and
    /// none of the test environment's `GATEWAY_*` settings.
    pub fn spawn_node(mut cmd: Command, log: std::fs::File) -> std::process::Child {
        cmd.env("RUST_LOG", "info,openraft=warn");
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        let err = log.try_clone().expect("clone a log file handle");
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start gatewayd")
    }

    fn iptables(&self, i: usize, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.hosts[i].netns, "iptables", "-w"];
        full.extend_from_slice(args);
        must(run("ip", &full));
    }

    /// Host `to` no longer receives what host `from` sends (`from` still hears `to`).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        let src = self.hosts[from].ip.clone();
        self.iptables(to, &["-A", "INPUT", "-s", &src, "-j", "DROP"]);
    }

    /// Hosts `a` and `b` no longer hear each other.
    pub fn cut(&self, a: usize, b: usize) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Host `a` hears no other host and no other host hears it; the test process still
    /// reaches it.
    pub fn isolate(&self, a: usize) {
        for b in 0..self.hosts.len() {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Takes host `a` off the network altogether (its link is down): not even the test process
    /// reaches it, as when a machine's cable is pulled.
    pub fn unplug(&self, a: usize) {
        must(ip(&["link", "set", &self.hosts[a].veth, "down"]));
    }

    /// Undoes [`Net::unplug`].
    pub fn plug(&self, a: usize) {
        must(ip(&["link", "set", &self.hosts[a].veth, "up"]));
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for i in 0..self.hosts.len() {
            self.iptables(i, &["-F", "INPUT"]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(&h.netns);
            let _ = ip(&["netns", "del", &h.netns]);
            let _ = ip(&["link", "del", &h.veth]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Claims a /24 of 198.18.0.0/15 that nothing else uses: creating the bridge named after it
/// is atomic, so two test processes never get the same one.
fn claim_subnet(pid: u32, tag: &str) -> Result<(String, String), String> {
    for i in 0..512 {
        let idx = (pid + i) % 512;
        let bridge = format!("gk{idx}br");
        if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
            continue; // Taken by another test process (or a leftover).
        }
        must(ip(&["link", "set", &bridge, "alias", tag]));
        let subnet = if idx < 256 {
            format!("198.18.{idx}")
        } else {
            format!("198.19.{}", idx - 256)
        };
        let route = format!("{subnet}.0/24");
        let used = must(ip(&["-4", "route", "show", "table", "all", "root", &route]));
        if !used.trim().is_empty() {
            let _ = ip(&["link", "del", &bridge]);
            continue;
        }
        let cidr = format!("{subnet}.1/24");
        must(ip(&["addr", "add", &cidr, "dev", &bridge]));
        must(ip(&["link", "set", &bridge, "up"]));
        return Ok((bridge, subnet));
    }
    Err("no free /24 in 198.18.0.0/15".into())
}

/// Kills whatever still runs in network namespace `ns`.
fn kill_all_in(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// The pid in `<TAG><pid>[-...]`, if `name` is one of ours.
fn tagged_pid(name: &str) -> Option<&str> {
    let pid = name.strip_prefix(TAG)?.split('-').next()?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
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
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            let Some(alias) = line.split("alias ").nth(1) else {
                continue;
            };
            if tagged_pid(alias.trim()).is_some_and(|pid| !pid_alive(pid)) {
                let name = line.split(": ").nth(1).unwrap_or("");
                let name = name.split('@').next().unwrap_or("");
                if !name.is_empty() {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}
