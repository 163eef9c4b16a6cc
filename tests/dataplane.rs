//! The data plane end to end: three real gatewayd processes on 127.0.0.1, configured through
//! gatewayctl, proxying to a small HTTP/1.1 backend that runs inside the test process.
//!
//! The HTTP client and the backend are hand-rolled over tokio sockets (the root package has no
//! HTTP library among its dev-dependencies), which also lets the tests send bytes no library
//! would (garbage, oversized heads) and see the exact status line the gateway writes.
//!
//! Every request loop is bounded in count and in time; waits poll with deadlines.

use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::{Cluster, binaries, eventually};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SETTLE: Duration = Duration::from_secs(20);
/// Any single request (connect, send, read the whole response).
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long after `api deploy` returns the API must be routable on every node.
const ROUTABLE_WITHIN: Duration = Duration::from_millis(500);

// ------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

/// A response as read off the wire.
#[derive(Debug)]
struct Reply {
    /// The version on the status line, e.g. "HTTP/1.1".
    version: String,
    status: u16,
    /// Names lowercased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?} {:?}", self.text()))
    }

    /// Checks the shape of a response the gateway made itself and returns its JSON body.
    fn assert_gateway_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?} {}", self.text());
        let json = self.json();
        assert_eq!(json["code"], code, "{json}");
        let rid = self.header("x-ca-request-id").expect("X-Ca-Request-Id");
        assert!(!rid.is_empty());
        assert_eq!(json["request_id"], rid, "{json}");
        let message = self
            .header("x-ca-error-message")
            .expect("X-Ca-Error-Message");
        // The header carries the message; for throttling, verbatim as the cloud words it, with
        // the instance's name added in the body only.
        let body_message = json["message"].as_str().unwrap_or_default();
        assert!(body_message.starts_with(message), "{json} vs {message}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self:?}"
        );
        json
    }
}

async fn read_head_line(r: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response; `head` when the request was HEAD (no body follows).
async fn read_reply(r: &mut BufReader<TcpStream>) -> io::Result<Reply> {
    let status_line = read_head_line(r).await?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_head_line(r).await?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut reply = Reply {
        version,
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let length = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if chunked {
        loop {
            let size_line = read_head_line(r).await?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_head_line(r).await?.is_empty() {}
                break;
            }
            let start = reply.body.len();
            reply.body.resize(start + size, 0);
            r.read_exact(&mut reply.body[start..]).await?;
            read_head_line(r).await?;
        }
    } else if let Some(n) = length {
        reply.body.resize(n, 0);
        r.read_exact(&mut reply.body).await?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        r.read_to_end(&mut reply.body).await?;
    }
    Ok(reply)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> io::Result<Conn> {
        let stream = tokio::time::timeout(REQUEST_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr: addr.to_string(),
            r: BufReader::new(stream),
        })
    }

    /// Sends a request with a Host header and `extra` headers (each `Name: value`), and reads
    /// the response.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[&str],
        body: &[u8],
    ) -> io::Result<Reply> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let exchange = async {
            self.r.get_mut().write_all(&bytes).await?;
            read_reply(&mut self.r).await
        };
        tokio::time::timeout(REQUEST_DEADLINE, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
    }

    async fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.request("GET", path, &[], b"").await
    }
}

/// GET on a fresh connection.
async fn get(addr: &str, path: &str) -> io::Result<Reply> {
    Conn::open(addr).await?.get(path).await
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (or the deadline).
async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(REQUEST_DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 backend

/// Answers `200 hello PATH` over keep-alive HTTP/1.1, except:
/// - paths starting with `/slow` answer after 2 s;
/// - paths starting with `/http10` answer `HTTP/1.0 200 OK` and close, as python's
///   http.server does.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = backend_connection(stream, counter).await;
                });
            }
        });
        Backend { addr, hits }
    }

    fn url(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.addr)
    }
}

async fn backend_connection(stream: TcpStream, hits: Arc<AtomicU64>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut r = BufReader::new(stream);
    loop {
        let line = match read_head_line(&mut r).await {
            Ok(l) => l,
            Err(_) => return Ok(()), // the gateway closed a pooled connection
        };
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let h = read_head_line(&mut r).await?;
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0; length.min(1 << 20)];
        r.read_exact(&mut body).await?;
        hits.fetch_add(1, Ordering::Relaxed);
        let text = format!("hello {path}");
        if path.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if path.starts_with("/http10") {
            let out = format!(
                "HTTP/1.0 200 OK\r\nServer: tiny/1.0\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{text}",
                text.len()
            );
            r.get_mut().write_all(out.as_bytes()).await?;
            return Ok(());
        }
        let out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        r.get_mut().write_all(out.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Cluster helpers

/// Starts three voters with `args` added to every node's command line.
async fn start_cluster(args: &[String]) -> Cluster {
    let mut c = Cluster::new(binaries!(), 3);
    c.extra_args = args.to_vec();
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    c
}

/// Runs gatewayctl without stalling the other tasks of this runtime.
fn ctl_ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    tokio::task::block_in_place(|| c.ctl_json(via, args))
}

/// Creates group `group` on `instance` with one GET API `api` at `path`, deployed to RELEASE.
fn deploy(c: &Cluster, group: &str, instance: &str, api: &str, path: &str, backend: &str) {
    ctl_ok(
        c,
        1,
        &["group", "create", "--name", group, "--instance", instance],
    );
    create_api(c, group, api, path, backend, "5s");
    ctl_ok(c, 2, &["api", "deploy", "--group", group, "--name", api]);
}

fn create_api(c: &Cluster, group: &str, api: &str, path: &str, backend: &str, timeout: &str) {
    ctl_ok(
        c,
        3,
        &[
            "api",
            "create",
            "--group",
            group,
            "--name",
            api,
            "--method",
            "GET",
            "--path",
            path,
            "--backend",
            backend,
            "--timeout",
            timeout,
        ],
    );
}

fn create_instance(c: &Cluster, name: &str, spec: &str) {
    ctl_ok(
        c,
        1,
        &[
            "instance",
            "create",
            "--name",
            name,
            "--spec",
            spec,
            "--region",
            "cn-hongkong",
        ],
    );
}

/// Waits until `path` is routed (answered by anything but a 404) on every node.
async fn wait_routable(c: &Cluster, path: &str) {
    for id in 1..=3 {
        let addr = c.http_addr(id);
        eventually(&format!("{path} routable on node {id}"), SETTLE, || async {
            let r = get(&addr, path).await.ok()?;
            (r.status != 404).then_some(())
        })
        .await;
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in a Prometheus
/// text exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn metrics(c: &Cluster, id: u64) -> Option<String> {
    let r = get(&c.ops_addr(id), "/metrics").await.ok()?;
    (r.status == 200).then(|| r.text())
}

/// Waits until `series` is at least `min` on every node.
async fn wait_metric_on_all(c: &Cluster, series: &str, min: f64) {
    for id in 1..=3 {
        wait_metric_on_node(c, id, series, min).await;
    }
}

async fn wait_metric_on_node(c: &Cluster, id: u64, series: &str, min: f64) {
    eventually(
        &format!("{series} >= {min} on node {id}"),
        SETTLE,
        || async { sample(&metrics(c, id).await?, series).filter(|v| *v >= min) },
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// Paced load

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    ok: u64,
    throttled: u64,
    other: u64,
    errors: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.throttled += o.throttled;
        self.other += o.other;
        self.errors += o.errors;
    }
}

/// Sends GET `path` to `addr` every `1/rps` over one keep-alive connection (reopened after an
/// error) for `duration`, and counts the outcomes. A sender that falls behind (slow responses
/// on a busy machine) catches up with back-to-back requests.
async fn paced(addr: String, path: String, rps: f64, duration: Duration) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut conn: Option<Conn> = None;
    let max = (rps * duration.as_secs_f64()).ceil() as u64 + 1;
    while tally.sent < max {
        tick.tick().await;
        if start.elapsed() >= duration {
            break;
        }
        tally.sent += 1;
        if conn.is_none() {
            conn = Conn::open(&addr).await.ok();
        }
        let Some(cn) = conn.as_mut() else {
            tally.errors += 1;
            continue;
        };
        match cn.get(&path).await {
            Ok(r) if r.status == 200 => tally.ok += 1,
            Ok(r) if r.status == 429 => tally.throttled += 1,
            Ok(_) => tally.other += 1,
            Err(_) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
    tally
}

/// Offers `rps` in all, split evenly over the three nodes, for `duration`.
async fn offer_evenly(c: &Cluster, path: &str, rps: f64, duration: Duration) -> Tally {
    let tasks: Vec<_> = (1..=3)
        .map(|id| {
            tokio::spawn(paced(
                c.http_addr(id),
                path.to_string(),
                rps / 3.0,
                duration,
            ))
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total += t.await.expect("load task");
    }
    total
}

// ------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_api_is_routable_on_every_node_within_500ms() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = Backend::start().await;
    ctl_ok(
        &c,
        1,
        &["group", "create", "--name", "shop", "--instance", "shared"],
    );
    create_api(&c, "shop", "item", "/items/{id}", &backend.url(""), "5s");

    // Created but not deployed: not routed anywhere.
    for id in 1..=3 {
        let r = get(&c.http_addr(id), "/items/7").await.expect("request");
        r.assert_gateway_error(404, "ApiNotFound");
    }

    // Deploy through a node, then poll every node over keep-alive connections.
    let mut conns = Vec::new();
    for id in 1..=3 {
        conns.push(Conn::open(&c.http_addr(id)).await.expect("connect"));
    }
    ctl_ok(
        &c,
        2,
        &["api", "deploy", "--group", "shop", "--name", "item"],
    );
    let deployed = Instant::now();
    let mut routable_after: [Option<Duration>; 3] = [None; 3];
    let poll_deadline = deployed + Duration::from_secs(5);
    for _ in 0..5_000 {
        if routable_after.iter().all(Option::is_some) || Instant::now() >= poll_deadline {
            break;
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            if routable_after[i].is_some() {
                continue;
            }
            let r = conn.get("/items/7").await.expect("request");
            if r.status == 200 {
                routable_after[i] = Some(deployed.elapsed());
                assert_eq!(r.text(), "hello /items/7");
            } else {
                assert_eq!(r.status, 404, "{r:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("routable after api deploy returned: {routable_after:?}");
    for (i, t) in routable_after.iter().enumerate() {
        let t = t.unwrap_or_else(|| panic!("node {} never routed the API", i + 1));
        assert!(
            t <= ROUTABLE_WITHIN,
            "node {} routed the API {t:?} after deploy returned (limit {ROUTABLE_WITHIN:?})",
            i + 1
        );
    }

    // Through every node: the backend's answer, the request id, HTTP/1.1, keep-alive.
    for id in 1..=3 {
        let mut conn = Conn::open(&c.http_addr(id)).await.expect("connect");
        for n in 0..3 {
            let r = conn
                .get(&format!("/items/{id}{n}?q=1"))
                .await
                .expect("request");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.version, "HTTP/1.1");
            assert_eq!(r.text(), format!("hello /items/{id}{n}?q=1"));
            assert!(r.header("x-ca-request-id").is_some_and(|v| !v.is_empty()));
        }
    }
    assert!(backend.hits.load(Ordering::Relaxed) >= 9 + 3);

    // Ready once applied, and the metrics carry Raft's and the instances' view.
    for id in 1..=3 {
        // (Readiness is re-evaluated every 100 ms and, while writes such as usage records are in
        // flight, reads "not ready" for the moments a node's log is ahead of what it applied.)
        let ops = c.ops_addr(id);
        eventually(&format!("node {id} /readyz 200"), SETTLE, || async {
            let r = get(&ops, "/readyz").await.ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        let r = get(&c.ops_addr(id), "/healthz").await.expect("healthz");
        assert_eq!(r.status, 200);
        let m = metrics(&c, id).await.expect("metrics");
        for series in [
            "gateway_raft_term",
            "gateway_raft_applied_index",
            "gateway_raft_last_log_index",
            "gateway_raft_leader_id",
            "gateway_instance_ceiling_rps{instance=\"shared\"}",
            "gateway_instance_share{instance=\"shared\"}",
            "gateway_instance_limit_rps{instance=\"shared\"}",
            "gateway_throttled_total{instance=\"shared\"}",
            "gateway_open_connections",
        ] {
            assert!(
                sample(&m, series).is_some(),
                "node {id} lacks {series}:\n{m}"
            );
        }
        assert!(sample(&m, "gateway_raft_term").unwrap() >= 1.0);
        assert!(sample(&m, "gateway_raft_applied_index").unwrap() >= 3.0);
        assert_eq!(
            sample(&m, "gateway_instance_ceiling_rps{instance=\"shared\"}"),
            Some(5000.0)
        );
        let leaders: f64 = ["leader", "follower"]
            .iter()
            .filter_map(|r| sample(&m, &format!("gateway_raft_role{{role=\"{r}\"}}")))
            .sum();
        assert_eq!(leaders, 1.0, "node {id} is leader or follower:\n{m}");
        assert!(
            sample(
                &m,
                "gateway_requests_total{instance=\"shared\",api=\"item\",class=\"2xx\"}"
            )
            .is_some_and(|v| v >= 3.0),
            "node {id}:\n{m}"
        );
    }
}

/// A backend speaking HTTP/1.0 (as python's http.server does) must not make the gateway answer
/// its HTTP/1.1 clients in HTTP/1.0 (nor drop their keep-alive connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_the_clients_http_version_whatever_the_backend_speaks() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = Backend::start().await;
    deploy(
        &c,
        "legacy",
        "shared",
        "old",
        "/old/{id}",
        &backend.url("/http10"),
    );
    wait_routable(&c, "/old/1").await;
    for id in 1..=3 {
        let mut conn = Conn::open(&c.http_addr(id)).await.expect("connect");
        for n in 0..3 {
            let r = conn
                .get(&format!("/old/{n}"))
                .await
                .expect("same connection");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.version, "HTTP/1.1", "node {id}: {r:?}");
            assert_eq!(r.text(), format!("hello /http10/old/{n}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_requests_get_429_with_retry_after_and_a_json_body() {
    // 30 requests/s for the whole cluster: 10/s per node at first.
    let c = start_cluster(&["--shared-ceiling-rps".into(), "30".into()]).await;
    let backend = Backend::start().await;
    deploy(&c, "tight", "shared", "ping", "/ping", &backend.url(""));
    wait_routable(&c, "/ping").await;

    let mut conn = Conn::open(&c.http_addr(1)).await.expect("connect");
    let (mut ok, mut throttled) = (0, Vec::new());
    for _ in 0..60 {
        let r = conn.get("/ping").await.expect("request");
        match r.status {
            200 => ok += 1,
            429 => throttled.push(r),
            _ => panic!("unexpected {r:?} {}", r.text()),
        }
    }
    assert!(
        throttled.len() >= 40,
        "60 back-to-back requests against 10/s: {ok} admitted, {} throttled",
        throttled.len()
    );
    let r = &throttled[0];
    let json = r.assert_gateway_error(429, "Throttled");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let message = r.header("x-ca-error-message").unwrap();
    assert_eq!(message, "Throttled by INSTANCE Flow Control");
    assert!(
        json["message"].as_str().unwrap().contains("shared"),
        "{json}"
    );
    // Every request got its own id.
    let ids: std::collections::HashSet<&str> = throttled
        .iter()
        .map(|r| r.header("x-ca-request-id").unwrap())
        .collect();
    assert_eq!(ids.len(), throttled.len());
    // The connection stays usable after throttling, and the node counts what it refused.
    let m = metrics(&c, 1).await.expect("metrics");
    assert!(
        sample(&m, "gateway_throttled_total{instance=\"shared\"}")
            .is_some_and(|v| v >= throttled.len() as f64),
        "{m}"
    );
}

/// A catalog whose small and medium specs are tiny, so that the spec change can be measured
/// with a cheap load: api.s1.small 60/s, api.s1.medium 180/s (cluster-wide). (Much lower, and
/// per-node limiter intervals approach the 100 ms between share updates, which blurs 1 s counts.)
const SMALL_RPS: f64 = 60.0;
const MEDIUM_RPS: f64 = 180.0;

fn tiny_catalog() -> String {
    let builtin = include_str!("../crates/catalog/data/catalog.toml");
    let tiny = builtin
        .replace("max_rps = 2500\n", "max_rps = 60\n")
        .replace("max_rps = 5000\n", "max_rps = 180\n");
    assert_ne!(
        tiny, builtin,
        "the catalog's specs changed; update this test"
    );
    tiny
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_raises_the_admitted_rate() {
    let mut c = Cluster::new(binaries!(), 3);
    let catalog = c.dir().join("tiny-catalog.toml");
    std::fs::write(&catalog, tiny_catalog()).unwrap();
    c.extra_args = vec!["--catalog".into(), catalog.display().to_string()];
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    let backend = Backend::start().await;
    create_instance(&c, "ded", "api.s1.small");
    deploy(&c, "g", "ded", "ping", "/ping", &backend.url(""));
    wait_routable(&c, "/ping").await;

    // 300 requests/s offered evenly, above both ceilings; 1 s windows.
    let offered = 300.0;
    let window = Duration::from_secs(1);
    // Let the nodes learn each other's demand first.
    offer_evenly(&c, "/ping", offered, Duration::from_millis(400)).await;
    let before = offer_evenly(&c, "/ping", offered, window).await;

    let changed = Instant::now();
    ctl_ok(
        &c,
        2,
        &[
            "instance",
            "modify-spec",
            "--name",
            "ded",
            "--spec",
            "api.s1.medium",
        ],
    );
    wait_metric_on_all(
        &c,
        "gateway_instance_ceiling_rps{instance=\"ded\"}",
        MEDIUM_RPS,
    )
    .await;
    eprintln!(
        "new ceiling on every node {:?} after the change",
        changed.elapsed()
    );
    let after = offer_evenly(&c, "/ping", offered, window).await;
    eprintln!("before {before:?}\nafter  {after:?}");

    for (t, ceiling) in [(&before, SMALL_RPS), (&after, MEDIUM_RPS)] {
        assert_eq!(t.errors + t.other, 0, "{t:?}");
        // Overload, even if a busy machine slowed the senders down.
        assert!(
            t.sent as f64 >= 1.3 * ceiling,
            "the load was not offered: {t:?}"
        );
    }
    let (b, a) = (before.ok as f64, after.ok as f64);
    assert!(
        (0.6 * SMALL_RPS..=1.3 * SMALL_RPS).contains(&b),
        "admitted {b}/s on api.s1.small (ceiling {SMALL_RPS})"
    );
    assert!(
        (0.6 * MEDIUM_RPS..=1.25 * MEDIUM_RPS).contains(&a),
        "admitted {a}/s on api.s1.medium (ceiling {MEDIUM_RPS})"
    );
    assert!(a >= 2.0 * b, "the spec change raised {b}/s to only {a}/s");
}

/// A SIGKILLed node's share of a ceiling goes to the survivors at once: the watch stream each
/// node holds open to it breaks (and a demand report to it is refused within a report period),
/// which says that its process is gone. (A node that is
/// merely silent, cut off or paused, counts as gone only after `shares::GONE_AFTER`, a second;
/// until then its share is unused, which with per-second limits is a whole second's shortfall.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_share_goes_to_the_survivors_at_once() {
    let mut c = start_cluster(&["--shared-ceiling-rps".into(), "60".into()]).await;
    let backend = Backend::start().await;
    deploy(&c, "busy", "shared", "ping", "/ping", &backend.url(""));
    wait_routable(&c, "/ping").await;

    // Skewed demand, all of it over the ceiling: 200/s at node 1, 40/s at node 2, 20/s at 3.
    let load: Vec<_> = [(1, 200.0), (2, 40.0), (3, 20.0)]
        .into_iter()
        .map(|(id, rps)| {
            tokio::spawn(paced(
                c.http_addr(id),
                "/ping".into(),
                rps,
                Duration::from_secs(30),
            ))
        })
        .collect();
    let share = "gateway_instance_share{instance=\"shared\"}";
    // Node 2's share follows the skew, steadily: about 40/260 (an even share would be 1/3) in
    // five samples in a row, so that every node's demand is known before the kill.
    let mut steady = 0;
    let deadline = Instant::now() + SETTLE;
    while steady < 5 {
        let s = metrics(&c, 2).await.and_then(|m| sample(&m, share));
        steady = if s.is_some_and(|s| s < 0.25) {
            steady + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "node 2's share never settled: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    c.kill(1);
    let killed = Instant::now();
    // Two nodes left, node 2 with 2/3 of their demand: its share becomes about 0.66. While
    // node 1 only counts as silent (its last report stale, assumed to take 1/3) it is at most
    // 2/3 of that, 0.44.
    let mut last = None;
    let took = loop {
        let s = metrics(&c, 2).await.and_then(|m| sample(&m, share));
        if s.is_some_and(|s| s >= 0.55) {
            break killed.elapsed();
        }
        last = s;
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "node 2's share stayed at {last:?} after node 1 was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for l in load {
        l.abort();
    }
    eprintln!("node 2 took node 1's share {took:?} after the kill (it was {last:?})");
    // The watch stream breaks within a few ms of the kill; the next demand report, refused,
    // says the same within a report period. A silent node is counted gone only after 1 s.
    assert!(
        took < Duration::from_millis(300),
        "node 2 took node 1's share only {took:?} after the kill: as late as a silent node's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_map_to_502_and_504() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = Backend::start().await;
    // Nothing listens on a leased port until its holder binds it: connections are refused.
    let closed = format!("http://127.0.0.1:{}", testkit::free_port());
    ctl_ok(
        &c,
        1,
        &["group", "create", "--name", "b", "--instance", "shared"],
    );
    create_api(&c, "b", "down", "/down", &closed, "5s");
    create_api(&c, "b", "slow", "/slow", &backend.url(""), "300ms");
    create_api(&c, "b", "fine", "/fine", &backend.url(""), "300ms");
    for api in ["down", "slow", "fine"] {
        ctl_ok(&c, 1, &["api", "deploy", "--group", "b", "--name", api]);
    }
    wait_routable(&c, "/fine").await;

    for id in 1..=3 {
        let addr = c.http_addr(id);
        let r = get(&addr, "/down").await.expect("request");
        let json = r.assert_gateway_error(502, "BackendUnavailable");
        assert!(
            json["message"].as_str().unwrap().contains("connect"),
            "{json}"
        );

        let started = Instant::now();
        let r = get(&addr, "/slow").await.expect("request");
        let took = started.elapsed();
        r.assert_gateway_error(504, "BackendTimeout");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "504 after {took:?} with a 300 ms timeout"
        );

        let r = get(&addr, "/fine").await.expect("request");
        assert_eq!(r.status, 200);
    }
    let m = metrics(&c, 1).await.expect("metrics");
    assert!(sample(&m, "gateway_backend_errors_total{instance=\"shared\"}").unwrap() >= 1.0);
    assert!(sample(&m, "gateway_backend_timeouts_total{instance=\"shared\"}").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_413_and_431() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = Backend::start().await;
    deploy(&c, "g", "shared", "up", "/up", &backend.url(""));
    wait_routable(&c, "/up").await;
    let addr = c.http_addr(3);

    // Bytes that are not HTTP: a bare 400 from the HTTP parser, then the connection closes.
    let r = raw(
        &addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let r = raw(&addr, b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");

    // A declared body over the limit (8 MiB) is refused before any of it is sent.
    let hits = backend.hits.load(Ordering::Relaxed);
    let mut conn = Conn::open(&addr).await.expect("connect");
    let r = conn
        .request("GET", "/up", &["Content-Length: 9000000"], b"")
        .await
        .expect("413");
    let json = r.assert_gateway_error(413, "RequestBodyTooLarge");
    assert!(
        json["message"].as_str().unwrap().contains("8388608"),
        "{json}"
    );

    // A head over the limit (16 KiB).
    let big = format!("X-Big: {}", "a".repeat(20 * 1024));
    let mut conn = Conn::open(&addr).await.expect("connect");
    let r = conn.request("GET", "/up", &[&big], b"").await.expect("431");
    r.assert_gateway_error(431, "RequestHeaderFieldsTooLarge");
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        hits,
        "refused requests never reach the backend"
    );

    // The node still serves, on every node.
    for id in 1..=3 {
        let r = get(&c.http_addr(id), "/up").await.expect("request");
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_group_between_shared_and_dedicated_under_traffic_fails_no_request() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = Backend::start().await;
    create_instance(&c, "ded", "api.s1.small");
    deploy(&c, "mover", "shared", "ping", "/ping/{n}", &backend.url(""));
    wait_routable(&c, "/ping/0").await;

    // Four keep-alive clients (nodes 1, 2, 3, 1), each at most 150 requests/s (600/s in all,
    // well under both instances' ceilings), for ~2 s or until both moves are seen, whichever
    // is later; at most 8 s and 1200 requests each.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Instant::now();
    let clients: Vec<_> = (0..4u64)
        .map(|i| {
            let addr = c.http_addr(1 + i % 3);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await.expect("connect");
                let mut tick = tokio::time::interval(Duration::from_millis(7));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let started = Instant::now();
                let mut outcomes = Vec::new();
                for n in 0..1200u64 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(8) {
                        break;
                    }
                    tick.tick().await;
                    let outcome = match conn.get(&format!("/ping/{n}")).await {
                        Ok(r) if r.status == 200 => Ok(()),
                        Ok(r) => Err(format!("{} {}", r.status, r.text())),
                        Err(e) => Err(e.to_string()),
                    };
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();

    // Requests forwarded through each instance, per node (kept across configuration changes,
    // unlike the per-API counters of an API that moved away).
    let series = |instance: &str| {
        format!("gateway_request_duration_seconds_count{{instance=\"{instance}\"}}")
    };
    // Traffic flows through the shared instance on every node.
    wait_metric_on_all(&c, &series("shared"), 20.0).await;

    let t0 = Instant::now();
    ctl_ok(
        &c,
        1,
        &["group", "modify", "--name", "mover", "--instance", "ded"],
    );
    wait_metric_on_all(&c, &series("ded"), 20.0).await;
    let moved = t0.elapsed();

    // And back: the shared counts grow again on every node.
    let mut shared_before = Vec::new();
    for id in 1..=3 {
        let m = metrics(&c, id).await.expect("metrics");
        shared_before.push(sample(&m, &series("shared")).unwrap_or(0.0));
    }
    ctl_ok(
        &c,
        3,
        &["group", "modify", "--name", "mover", "--instance", "shared"],
    );
    for id in 1..=3 {
        let floor = shared_before[id as usize - 1] + 20.0;
        wait_metric_on_node(&c, id, &series("shared"), floor).await;
    }
    let back = t0.elapsed();
    // Traffic goes on after the move back too: about 2 s of it in all.
    if let Some(rest) = Duration::from_secs(2).checked_sub(traffic.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut failures = Vec::new();
    for client in clients {
        for outcome in client.await.expect("client task") {
            total += 1;
            if let Err(e) = outcome {
                failures.push(e);
            }
        }
    }
    eprintln!("{total} requests; on the dedicated instance after {moved:?}, back after {back:?}");
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= 200, "only {total} requests were sent");
    let m = metrics(&c, 2).await.expect("metrics");
    assert_eq!(
        sample(&m, "gateway_throttled_total{instance=\"ded\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "gateway_throttled_total{instance=\"shared\"}"),
        Some(0.0)
    );
}
