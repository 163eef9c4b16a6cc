//! WebSocket (HTTP/1.1 Upgrade) through real 3-node clusters: echo through every node (text,
//! binary, ping and pong, the close handshake), a tunnel that outlives a spec change and a
//! config publish, tunnel traffic in usage and metrics, upgrades refused like any call (ACL,
//! missing APP signature, throttling) or declined by the backend (a plain 200), and a tunnel
//! kept through the drain period of a TLS node, then closed.

use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Cluster, binaries, eventually};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SETTLE: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(5);

/// A request's headers, as (name, value) pairs.
type Head = Vec<(String, String)>;

/// A WebSocket echo server on 127.0.0.1: every text and binary message comes back; pings are
/// answered by the WebSocket library; a close is answered with a close. It counts the
/// upgrades it accepted and the sessions that have ended, and keeps the request heads.
struct EchoBackend {
    addr: String,
    upgrades: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<Head>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upgrades = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (u, e, h) = (upgrades.clone(), ended.clone(), heads.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (u, e, h) = (u.clone(), e.clone(), h.clone());
                tokio::spawn(async move {
                    // The error type is the library's (a whole HTTP response).
                    #[allow(clippy::result_large_err)]
                    let record = |req: &http::Request<()>, resp| {
                        let head = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        h.lock().unwrap().push(head);
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(sock, record).await else {
                        return;
                    };
                    u.fetch_add(1, SeqCst);
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    e.fetch_add(1, SeqCst);
                });
            }
        });
        EchoBackend {
            addr,
            upgrades,
            ended,
            heads,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next message, within a few seconds.
async fn next<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<Message> {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("a message within 5 s")
        .map(|m| m.expect("a valid message"))
}

/// A text and a binary message echoed, and a ping answered by a pong.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, tag: &str) {
    ws.send(Message::text(format!("hello {tag}")))
        .await
        .unwrap();
    assert_eq!(next(ws).await, Some(Message::text(format!("hello {tag}"))));
    let binary: Vec<u8> = (0..=255u8).chain([0, 255, 13, 10]).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(ws).await, Some(Message::binary(binary)));
    ws.send(Message::Ping(bytes::Bytes::from(tag.to_string())))
        .await
        .unwrap();
    assert_eq!(
        next(ws).await,
        Some(Message::Pong(bytes::Bytes::from(tag.to_string())))
    );
}

/// The close handshake: our close is answered by the backend's, then the stream ends.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    ws.close(None).await.unwrap();
    match next(&mut ws).await {
        Some(Message::Close(_)) => assert!(next_or_end(&mut ws).await),
        None => {}
        other => panic!("expected the close reply, got {other:?}"),
    }
}

/// Whether the stream ends (cleanly or not) within a few seconds.
async fn next_or_end<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> bool {
    matches!(
        tokio::time::timeout(STEP, ws.next()).await,
        Ok(None | Some(Err(_)))
    )
}

/// An upgrade request written by hand, and the response head and body read back; the
/// connection is returned for more.
async fn raw_upgrade(addr: &str, path: &str, extra: &[(String, String)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    raw_upgrade_on(&mut s, path, extra).await
}

async fn raw_upgrade_on(
    s: &mut TcpStream,
    path: &str,
    extra: &[(String, String)],
) -> (u16, String) {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    read_response(s).await
}

/// One response off `s`: its status and its text (head and body, by Content-Length).
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if head.starts_with("http/1.1 101") || got.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                return (status, String::from_utf8_lossy(&got).into_owned());
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn header(text: &str, name: &str) -> Option<String> {
    text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn metrics(c: &Cluster, id: u64) -> Option<String> {
    let r = testkit::http::get(&c.ops_addr(id), "/metrics").await?;
    (r.status == 200).then_some(r.body)
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn wait_metric(c: &Cluster, id: u64, series: &str, ok: impl Fn(f64) -> bool) {
    eventually(&format!("{series} on node {id}"), SETTLE, || async {
        sample(&metrics(c, id).await?, series).filter(|v| ok(*v))
    })
    .await;
}

/// (calls, bytes out) metered for `api` of `acme`.
fn metered(c: &Cluster, api: &str) -> (u64, u64) {
    let rows = c.ctl_json(1, &["usage", "--account", "acme"]);
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["api"] == api)
        .fold((0, 0), |(n, b), r| {
            (
                n + r["calls"].as_u64().unwrap(),
                b + r["bytes_out"].as_u64().unwrap(),
            )
        })
}

/// Waits until `path` is routed (answered by anything but a 404) on every node.
async fn wait_routable(c: &Cluster, path: &str) {
    for id in 1..=3 {
        let addr = c.http_addr(id);
        eventually(&format!("{path} routable on node {id}"), SETTLE, || async {
            let r = testkit::http::get(&addr, path).await?;
            (r.status != 404).then_some(())
        })
        .await;
    }
}

async fn start(extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(binaries!(), 3);
    c.extra_args = extra.iter().map(|s| s.to_string()).collect();
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_on_every_node_survives_changes_and_is_metered() {
    let c = start(&["--usage-flush-ms", "100"]).await;
    let backend = EchoBackend::start().await;
    c.ctl_json(1, &["account", "create", "--name", "acme"]);
    c.ctl_json(
        1,
        &[
            "instance",
            "create",
            "--name",
            "ded",
            "--spec",
            "api.s1.small",
            "--region",
            "cn-hongkong",
            "--account",
            "acme",
        ],
    );
    c.ctl_json(
        1,
        &[
            "group",
            "create",
            "--name",
            "g",
            "--account",
            "acme",
            "--instance",
            "ded",
        ],
    );
    c.deploy_get_api("g", "chat", &backend.url(), &[]);
    wait_routable(&c, "/chat").await;

    // Echo through each node, and a clean close.
    for id in 1..=3 {
        let mut ws = connect_plain(&c.http_addr(id), "/chat").await;
        echo(&mut ws, &format!("node {id}")).await;
        close(ws).await;
    }
    assert_eq!(backend.upgrades.load(SeqCst), 3);
    eventually("the backend to see the sessions end", SETTLE, || async {
        (backend.ended.load(SeqCst) == 3).then_some(())
    })
    .await;
    // The backend got the upgrade with the forwarding headers.
    let heads = backend.heads.lock().unwrap().clone();
    for head in &heads {
        let get = |name: &str| {
            head.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_lowercase())
        };
        assert_eq!(get("upgrade").as_deref(), Some("websocket"), "{head:?}");
        assert_eq!(get("connection").as_deref(), Some("upgrade"), "{head:?}");
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("127.0.0.1"),
            "{head:?}"
        );
        assert!(get("x-ca-request-id").is_some(), "{head:?}");
    }

    // A tunnel stays open through a spec change of its instance and a publish of another API.
    let mut ws = connect_plain(&c.http_addr(2), "/chat").await;
    echo(&mut ws, "before").await;
    wait_metric(&c, 2, "gateway_open_tunnels", |v| v == 1.0).await;
    c.ctl_json(
        1,
        &[
            "instance",
            "modify-spec",
            "--name",
            "ded",
            "--spec",
            "api.s1.medium",
        ],
    );
    c.deploy_get_api("g", "other", &backend.url(), &[]);
    wait_routable(&c, "/other").await;
    wait_metric(
        &c,
        2,
        "gateway_instance_ceiling_rps{instance=\"ded\"}",
        |v| v > 500.0,
    )
    .await;
    echo(&mut ws, "after").await;
    // 64 KiB each way, counted as outbound traffic both ways.
    let big = vec![7u8; 64 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::binary(big)));
    close(ws).await;
    wait_metric(&c, 2, "gateway_open_tunnels", |v| v == 0.0).await;
    for id in 1..=3 {
        wait_metric(&c, id, "gateway_tunnels_total", |v| v >= 1.0).await;
    }
    wait_metric(&c, 2, "gateway_tunnels_total", |v| v == 2.0).await;

    // Each upgrade is one call (with the three plain GETs that found the API routable); the
    // tunnels' bytes, both ways, are the API's outbound traffic.
    let (calls, bytes) = eventually("the tunnels' usage", SETTLE, || async {
        let (calls, bytes) = metered(&c, "chat");
        (calls == 4 + 3 && bytes >= 2 * 64 * 1024).then_some((calls, bytes))
    })
    .await;
    assert!(
        bytes < 2 * 64 * 1024 + 16 * 1024,
        "{calls} calls, {bytes} bytes"
    );
}

async fn connect_plain(addr: &str, path: &str) -> WebSocketStream<TcpStream> {
    let sock = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, sock))
        .await
        .expect("the upgrade within 5 s")
        .expect("the upgrade");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-ca-request-id"));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_the_normal_error_and_declined_ones_a_normal_response() {
    let c = start(&["--tunnel-idle-timeout-ms", "1000"]).await;
    let backend = EchoBackend::start().await;
    let plain = testkit::http::Server::start("not a websocket").await;
    c.ctl_json(1, &["group", "create", "--name", "g"]);
    c.deploy_get_api("g", "open", &backend.url(), &[]);
    c.deploy_get_api("g", "signed", &backend.url(), &["--auth-type", "APP"]);
    c.deploy_get_api("g", "limited", &backend.url(), &[]);
    c.deploy_get_api("g", "idle", &backend.url(), &[]);
    c.deploy_get_api("g", "plain", &format!("http://{}", plain.addr), &[]);
    wait_routable(&c, "/plain").await;
    let addr = c.http_addr(3);

    // A backend that answers 200: a normal response, and the connection stays HTTP.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let (status, text) = raw_upgrade_on(&mut s, "/plain", &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("not a websocket"), "{text}");
    s.write_all(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "the connection is still HTTP: {text}");
    let asked = plain.received();
    assert!(
        asked.iter().any(|r| r
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("upgrade") && v == "websocket")),
        "the upgrade was asked for: {asked:?}"
    );

    // No signature: the APP API's refusal, and no tunnel.
    let (status, text) = raw_upgrade(&addr, "/signed", &[]).await;
    assert_eq!(status, 401, "{text}");
    assert!(header(&text, "x-ca-error-message").is_some(), "{text}");
    // A signed call of an authorised app is let through.
    let app = c.ctl_json(1, &["app", "create", "--name", "mobile"]);
    let key = app["app_key"].as_str().unwrap().to_string();
    let secret = app["app_secret"].as_str().unwrap().to_string();
    c.ctl_json(
        1,
        &[
            "api",
            "authorize",
            "--group",
            "g",
            "--name",
            "signed",
            "--app",
            "mobile",
        ],
    );
    let signed = |nonce: &str| {
        let mut req = signer::RequestParts::from_uri("GET", "/signed");
        signer::Signer::new(&key, &secret).sign(&mut req, now_ms(), nonce);
        req.headers
    };
    let mut n = 0;
    let mut ws = eventually("the app grant to reach node 3", SETTLE, || {
        n += 1;
        let headers = signed(&format!("n-{n}"));
        let addr = addr.clone();
        async move {
            let mut request = format!("ws://{addr}/signed").into_client_request().unwrap();
            for (k, v) in &headers {
                request.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let sock = TcpStream::connect(&addr).await.unwrap();
            tokio_tungstenite::client_async(request, sock)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }
    })
    .await;
    echo(&mut ws, "signed").await;
    close(ws).await;
    assert_eq!(backend.upgrades.load(SeqCst), 1);

    // Denied by an ACL: 403, no tunnel.
    c.ctl_json(
        1,
        &[
            "api",
            "set-acl",
            "--group",
            "g",
            "--name",
            "open",
            "--deny",
            "127.0.0.0/8",
        ],
    );
    // Until it does, an upgrade is still admitted there and reaches the backend: counted.
    let before_acl = AtomicUsize::new(0);
    let text = eventually("the ACL to reach node 3", SETTLE, || async {
        let (status, text) = raw_upgrade(&addr, "/open", &[]).await;
        if status == 101 {
            before_acl.fetch_add(1, SeqCst);
        }
        (status == 403).then_some(text)
    })
    .await;
    assert!(text.contains("IpDenied"), "{text}");
    let before_acl = before_acl.load(SeqCst);

    // Throttled: a minute limit of 1 admits one upgrade, then refuses with 429.
    c.ctl_json(
        1,
        &[
            "throttle",
            "create",
            "--name",
            "one",
            "--unit",
            "minute",
            "--api-limit",
            "1",
        ],
    );
    c.ctl_json(
        1,
        &[
            "throttle", "bind", "--name", "one", "--group", "g", "--api", "limited",
        ],
    );
    let opened = AtomicUsize::new(0);
    let text = eventually("an upgrade to be throttled", SETTLE, || async {
        let (status, text) = raw_upgrade(&addr, "/limited", &[]).await;
        match status {
            101 => {
                opened.fetch_add(1, SeqCst);
                None
            }
            429 => Some(text),
            other => panic!("status {other}: {text}"),
        }
    })
    .await;
    let opened = opened.load(SeqCst);
    assert_eq!(
        header(&text, "x-ca-error-message").as_deref(),
        Some("Throttled by API Flow Control")
    );
    assert!(header(&text, "retry-after").is_some(), "{text}");
    // Only the admitted upgrades reached the backend.
    let admitted = 1 + before_acl + opened;
    eventually("the admitted upgrades at the backend", SETTLE, || async {
        (backend.upgrades.load(SeqCst) == admitted).then_some(())
    })
    .await;
    let m = metrics(&c, 3).await.unwrap();
    assert_eq!(
        sample(&m, "gateway_tunnels_total"),
        Some(admitted as f64),
        "only admitted upgrades open tunnels"
    );

    // A tunnel on which nothing moves is closed after the tunnel idle timeout (1 s here).
    let ended_before = backend.ended.load(SeqCst);
    let mut ws = connect_plain(&addr, "/idle").await;
    let opened_at = Instant::now();
    assert!(next_or_end(&mut ws).await, "the idle tunnel is closed");
    let idle = opened_at.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}");
    eventually(
        "the backend side of the idle tunnel to close",
        SETTLE,
        || async { (backend.ended.load(SeqCst) > ended_before).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_tls_node_keeps_its_tunnels_for_the_drain_period_then_closes_them() {
    let mut c = Cluster::new_tls(binaries!(), 3);
    c.extra_args = ["--drain-seconds", "3", "--shutdown-delay-ms", "200"]
        .map(String::from)
        .to_vec();
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    let backend = EchoBackend::start().await;
    c.ctl_json(1, &["group", "create", "--name", "g"]);
    c.deploy_get_api("g", "chat", &backend.url(), &[]);
    let client_tls = tls::ClientFiles {
        ca: c.pki.as_ref().unwrap().ca.clone(),
        identity: None,
    }
    .load("websocket client", tls::ALPN_HTTP1)
    .unwrap();
    let addr = c.http_addr(3);
    let connect = || async {
        let sock = testkit::http::handshake(&addr, "127.0.0.1", &client_tls)
            .await
            .ok()?;
        tokio_tungstenite::client_async(format!("wss://{addr}/chat"), sock)
            .await
            .ok()
            .map(|(ws, _)| ws)
    };
    let mut ws = eventually("the API over TLS on node 3", SETTLE, connect).await;
    echo(&mut ws, "tls").await;

    // SIGTERM: the tunnel still works during the drain, and is closed after it.
    let terminated = Instant::now();
    testkit::signal(c.nodes[&3].pid().unwrap(), "TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo(&mut ws, "draining").await;
    let ended = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
    let after = terminated.elapsed();
    eprintln!("the tunnel was closed {after:?} after SIGTERM (--drain-seconds 3)");
    assert!(
        matches!(ended, Ok(None | Some(Err(_)))),
        "the tunnel is closed: {ended:?}"
    );
    assert!(
        after >= Duration::from_millis(2900),
        "kept for the drain period: closed after {after:?}"
    );
    eventually("the backend side to be closed", SETTLE, || async {
        (backend.ended.load(SeqCst) == 1).then_some(())
    })
    .await;
    let deadline = Instant::now() + SETTLE;
    let node = c.nodes.get_mut(&3).unwrap();
    let status = loop {
        if let Some(status) = node.exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "node 3 did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
