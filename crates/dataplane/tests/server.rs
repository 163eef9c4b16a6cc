//! The data plane over real sockets: a gateway and tiny hyper backends on 127.0.0.1.
//! Every wait is bounded; nothing sleeps in place of synchronising.

use bytes::Bytes;
use dataplane::{
    Dataplane, DataplaneConfig, DataplaneOptions, DeployedApi, FakeClock, GroupConfig,
    InstanceConfig, OpsHooks, ServerLimits, Stage, serve, serve_ops,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- backends

/// Echoes the request as JSON; `/back/sleep/MS` sleeps first; `/back/big` sends 100 KB.
async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix("/back").unwrap_or(&path).to_string();
    if let Some(ms) = rest.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::new(Bytes::from_static(b"slept"))));
    }
    if rest == "/big" {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 100_000]))));
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let request_ids = req.headers().get_all("x-ca-request-id").iter().count();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("?"))))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let echo = serde_json::json!({
        "method": method, "path": path, "query": query, "headers": headers, "body_len": body.len(),
        "request_ids": request_ids,
    });
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
    let h = response.headers_mut();
    h.insert("x-backend", "yes".parse().unwrap());
    // A hop-by-hop header named by Connection: the gateway must not pass it on.
    h.insert("connection", "x-resp-hop".parse().unwrap());
    h.insert("x-resp-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    Ok(response)
}

async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(backend))
                    .await;
            });
        }
    });
    addr
}

/// A backend that accepts and hangs up at once.
async fn start_broken_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------- configuration

fn api(name: &str, method: Method, path: &str, backend: String, timeout_ms: u64) -> DeployedApi {
    DeployedApi {
        stage: Stage::Release,
        api: name.into(),
        method,
        path: path.into(),
        backend,
        timeout: Duration::from_millis(timeout_ms),
        app_auth: false,
        backend_billed: false,
    }
}

fn group(
    name: &str,
    account: &str,
    instance: &str,
    host: Option<&str>,
    deployments: Vec<DeployedApi>,
) -> GroupConfig {
    GroupConfig {
        name: name.into(),
        account: account.into(),
        instance: instance.into(),
        host: host.map(str::to_string),
        base_path: None,
        deployments,
        acl: None,
        api_acls: Default::default(),
        grants: Default::default(),
        suspended: false,
        throttles: Default::default(),
    }
}

fn instance(name: &str, ceiling_rps: u32) -> InstanceConfig {
    InstanceConfig {
        name: name.into(),
        ceiling_rps,
        region: "cn-hangzhou".into(),
    }
}

struct Backends {
    ok: SocketAddr,
    broken: SocketAddr,
    closed: SocketAddr,
}

async fn backends() -> Backends {
    Backends {
        ok: start_backend().await,
        broken: start_broken_backend().await,
        closed: closed_port().await,
    }
}

fn config(b: &Backends, echo_instance: &str) -> DataplaneConfig {
    let ok = format!("http://{}/back", b.ok);
    let mut host_group = group(
        "g-host",
        "acct-b",
        "dedicated",
        Some("api.test"),
        vec![api(
            "host-echo",
            Method::GET,
            "/echo/{id}",
            ok.clone(),
            2000,
        )],
    );
    host_group.base_path = Some("/v1".into());
    let mut suspended_group = group(
        "g-susp",
        "acct-susp",
        "dedicated",
        Some("susp.test"),
        vec![api("s", Method::GET, "/s", ok.clone(), 2000)],
    );
    suspended_group.suspended = true;
    let mut test_stage = api("echo-test", Method::GET, "/staged", ok.clone(), 2000);
    test_stage.stage = Stage::Test;
    DataplaneConfig {
        instances: vec![
            instance(dataplane::SHARED_INSTANCE, 1_000_000),
            instance("dedicated", 1_000_000),
            instance("tiny", 1),
        ],
        groups: vec![
            group(
                "g-any",
                "acct-a",
                echo_instance,
                None,
                vec![
                    api("echo", Method::GET, "/echo/{id}", ok.clone(), 2000),
                    api("echo-post", Method::POST, "/echo/{id}", ok.clone(), 2000),
                    api(
                        "upload",
                        Method::from_bytes(b"ANY").unwrap(),
                        "/upload",
                        ok.clone(),
                        2000,
                    ),
                    api("sleep", Method::GET, "/sleep/{ms}", ok.clone(), 200),
                    api("big", Method::GET, "/big", ok.clone(), 2000),
                    test_stage,
                ],
            ),
            host_group,
            group(
                "g-tiny",
                "acct-c",
                "tiny",
                Some("tiny.test"),
                vec![api("t", Method::GET, "/t", ok.clone(), 2000)],
            ),
            suspended_group,
            group(
                "g-dead",
                "acct-d",
                "dedicated",
                Some("dead.test"),
                vec![
                    api(
                        "refused",
                        Method::GET,
                        "/refused",
                        format!("http://{}", b.closed),
                        2000,
                    ),
                    api(
                        "broken",
                        Method::GET,
                        "/broken",
                        format!("http://{}", b.broken),
                        2000,
                    ),
                ],
            ),
        ],
        apps: vec![],
    }
}

// ---------------------------------------------------------------- gateway and client

struct Gateway {
    addr: SocketAddr,
    dp: Dataplane,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    async fn start(dp: Dataplane, limits: ServerLimits) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, dp.clone(), limits, async move {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            dp,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

/// A data plane on a frozen fake clock (so limiter outcomes are exact) with `config`.
fn dataplane(config: &DataplaneConfig) -> Dataplane {
    let dp = Dataplane::with_options(DataplaneOptions {
        node_id: 7,
        clock: Arc::new(FakeClock::new(1_000_000_000)),
        ..Default::default()
    });
    let report = dp.publish(config);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    dp
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Checks the shape of a response the gateway made itself.
    fn assert_gateway_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        let json = self.json();
        assert_eq!(json["code"], code);
        let rid = self.headers["x-ca-request-id"].to_str().unwrap();
        assert_eq!(json["request_id"], rid);
        let header = self.headers["x-ca-error-message"].to_str().unwrap();
        let message = json["message"].as_str().unwrap();
        if code == "Throttled" {
            // Verbatim as the cloud words it; the body adds the instance's name.
            assert_eq!(header, dataplane::THROTTLED_MESSAGE);
            assert!(message.starts_with(header), "{message}");
        } else {
            assert_eq!(header, message);
        }
        assert_eq!(
            self.headers["content-type"],
            "application/json; charset=utf-8"
        );
        json
    }
}

async fn send(
    client: &TestClient,
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("response within the deadline")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body within the deadline")
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(client: &TestClient, addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(client, addr, Method::GET, host, path, &[], Bytes::new()).await
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (or the deadline).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn total_calls(dp: &Dataplane, api: &str) -> u64 {
    dp.drain_usage()
        .iter()
        .filter(|d| d.api == api)
        .map(|d| d.calls)
        .sum()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn proxies_with_forwarding_headers_and_strips_hop_by_hop() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c = client();
    let reply = send(
        &c,
        gw.addr,
        Method::GET,
        "api.test",
        "/v1/echo/42?x=1&y=2",
        &[
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=3"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-custom", "kept"),
            ("x-ca-request-id", "chosen-by-the-client"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    // Base path stripped, backend prefix prepended, query kept.
    assert_eq!(echo["path"], "/back/echo/42");
    assert_eq!(echo["query"], "x=1&y=2");
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.test");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["host"], gw_backend_host(&b));
    for hop in ["x-drop-me", "keep-alive", "proxy-authorization", "te"] {
        assert!(h.get(hop).is_none(), "{hop} was forwarded: {h}");
    }
    // The gateway's request id replaces any the client sent.
    let rid = reply.headers["x-ca-request-id"].to_str().unwrap();
    assert_eq!(h["x-ca-request-id"], rid);
    assert_eq!(echo["request_ids"], 1);
    assert_eq!(rid.len(), 24);
    assert_eq!(reply.headers["x-backend"], "yes");
    assert!(!reply.headers.contains_key("x-resp-hop"));
    assert!(!reply.headers.contains_key("keep-alive"));

    // Request ids differ per request.
    let again = get(&c, gw.addr, "api.test", "/v1/echo/42").await;
    assert_ne!(
        again.headers["x-ca-request-id"],
        reply.headers["x-ca-request-id"]
    );

    // The any-host group takes other hosts, and POST bodies go through.
    let post = send(
        &c,
        gw.addr,
        Method::POST,
        "whatever.example",
        "/echo/1",
        &[],
        vec![b'a'; 5000],
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(post.json()["body_len"], 5000);
    gw.shutdown().await;
}

fn gw_backend_host(b: &Backends) -> String {
    b.ok.to_string()
}

#[tokio::test]
async fn throttled_requests_get_429_with_retry_after() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c = client();
    // Ceiling 1/s, clock frozen: the first request is admitted, the rest are throttled.
    assert_eq!(get(&c, gw.addr, "tiny.test", "/t").await.status, 200);
    for _ in 0..3 {
        let r = get(&c, gw.addr, "tiny.test", "/t").await;
        let json = r.assert_gateway_error(429, "Throttled");
        assert_eq!(r.headers["retry-after"], "1");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains("Throttled by INSTANCE Flow Control"),
            "{message}"
        );
        assert!(message.contains("tiny"), "{message}");
    }
    // Throttled calls are billed calls too.
    assert_eq!(total_calls(&gw.dp, "t"), 4);
    let mut metrics = String::new();
    gw.dp.render_metrics(&mut metrics);
    assert!(
        metrics.contains("gateway_throttled_total{instance=\"tiny\"} 3"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /echo/7 HTTP/1.1\r\nhost: x.test\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn unknown_apis_get_404_and_stages_are_separate() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c = client();
    get(&c, gw.addr, "x.test", "/nope")
        .await
        .assert_gateway_error(404, "ApiNotFound");
    send(
        &c,
        gw.addr,
        Method::DELETE,
        "x.test",
        "/echo/1",
        &[],
        Bytes::new(),
    )
    .await
    .assert_gateway_error(404, "ApiNotFound");
    // Deployed to TEST only.
    get(&c, gw.addr, "x.test", "/staged")
        .await
        .assert_gateway_error(404, "ApiNotFound");
    let r = send(
        &c,
        gw.addr,
        Method::GET,
        "x.test",
        "/staged",
        &[("x-ca-stage", "test")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    send(
        &c,
        gw.addr,
        Method::GET,
        "x.test",
        "/staged",
        &[("x-ca-stage", "PROD")],
        Bytes::new(),
    )
    .await
    .assert_gateway_error(400, "BadRequest");
    // Unmatched requests that fall in a group are billed to it as "unmatched" (the bad-stage
    // one was resolved in RELEASE, where /staged is not deployed).
    let usage = gw.dp.drain_usage();
    let unmatched: u64 = usage
        .iter()
        .filter(|d| d.api == dataplane::UNMATCHED_API && d.account == "acct-a")
        .map(|d| d.calls)
        .sum();
    assert_eq!(unmatched, 4, "{usage:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn backend_failures_get_502_and_timeouts_504() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c = client();
    get(&c, gw.addr, "dead.test", "/refused")
        .await
        .assert_gateway_error(502, "BackendUnavailable");
    get(&c, gw.addr, "dead.test", "/broken")
        .await
        .assert_gateway_error(502, "BackendUnavailable");
    let started = Instant::now();
    // The API's timeout is 200 ms; the backend would take 5 s.
    get(&c, gw.addr, "x.test", "/sleep/5000")
        .await
        .assert_gateway_error(504, "BackendTimeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(get(&c, gw.addr, "x.test", "/sleep/1").await.status, 200);
    let mut metrics = String::new();
    gw.dp.render_metrics(&mut metrics);
    assert!(
        metrics.contains("gateway_backend_errors_total{instance=\"dedicated\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_backend_timeouts_total{instance=\"shared\"} 1"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let b = backends().await;
    let limits = ServerLimits {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let gw = Gateway::start(dataplane(&config(&b, "shared")), limits).await;
    let c = client();
    // Declared length over the limit: refused before the body is read.
    send(
        &c,
        gw.addr,
        Method::POST,
        "x.test",
        "/upload",
        &[],
        vec![0u8; 2048],
    )
    .await
    .assert_gateway_error(413, "RequestBodyTooLarge");
    // Within the limit: fine.
    let ok = send(
        &c,
        gw.addr,
        Method::POST,
        "x.test",
        "/upload",
        &[],
        vec![0u8; 1024],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body_len"], 1024);
    // Chunked, no length: cut off while streaming.
    let mut req =
        b"POST /upload HTTP/1.1\r\nhost: x.test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'z'; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let response = raw(gw.addr, &req).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("RequestBodyTooLarge"), "{response}");
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c = client();
    let big = "v".repeat(20 * 1024);
    send(
        &c,
        gw.addr,
        Method::GET,
        "x.test",
        "/echo/1",
        &[("x-big", &big)],
        Bytes::new(),
    )
    .await
    .assert_gateway_error(431, "RequestHeaderFieldsTooLarge");
    // Far over the limit, hyper's own guard answers (without a body) before parsing ends.
    let huge = format!(
        "GET /echo/1 HTTP/1.1\r\nhost: x.test\r\nx-huge: {}\r\n\r\n",
        "v".repeat(200 * 1024)
    );
    let response = raw(gw.addr, huge.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        &response[..response.len().min(200)]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_do_not_hurt_the_server() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n",
        b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\r\n\r\n",
    ] {
        let response = raw(gw.addr, garbage).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{garbage:?} -> {response:?}"
        );
    }
    // Still serving.
    assert_eq!(
        get(&client(), gw.addr, "x.test", "/echo/1").await.status,
        200
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn suspended_accounts_get_403() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let r = get(&client(), gw.addr, "susp.test", "/s").await;
    let json = r.assert_gateway_error(403, "AccountSuspended");
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains("suspended for overdue payment"),
        "{message}"
    );
    assert!(
        message.contains("management operations still work"),
        "{message}"
    );
    gw.shutdown().await;
}

// Two workers: the publisher runs beside the traffic, not in lockstep with it (on one thread,
// the order of tasks in a tick could route every request between the same two publishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_under_traffic_fails_no_request_and_loses_no_count() {
    let b = backends().await;
    let on_shared = config(&b, "shared");
    let on_dedicated = config(&b, "dedicated");
    let gw = Gateway::start(dataplane(&on_shared), ServerLimits::default()).await;
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let c = client();
                let mut statuses = Vec::new();
                for n in 0..150 {
                    let r = get(&c, addr, "any.test", &format!("/echo/{i}-{n}")).await;
                    statuses.push(r.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let publisher = {
        let dp = gw.dp.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut publishes = 0u32;
            while !done.load(Ordering::Relaxed) && publishes < 1_000_000 {
                let config = if publishes.is_multiple_of(2) {
                    &on_dedicated
                } else {
                    &on_shared
                };
                assert!(dp.publish(config).warnings.is_empty());
                publishes += 1;
                tokio::task::yield_now().await;
            }
            publishes
        })
    };
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let publishes = publisher.await.unwrap();
    assert!(
        publishes > 10,
        "only {publishes} publishes happened during the traffic"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let usage = gw.dp.drain_usage();
    let calls: u64 = usage
        .iter()
        .filter(|d| d.api == "echo")
        .map(|d| d.calls)
        .sum();
    assert_eq!(calls, 600, "{usage:?}");
    // Both instances carried some of it.
    assert_eq!(
        usage.iter().filter(|d| d.api == "echo").count(),
        2,
        "{usage:?}"
    );
    gw.shutdown().await;
}

/// Sends `requests` over one connection at once (the last asks to close it) and reads to the
/// end: every byte the client received.
async fn raw_exchange(addr: SocketAddr, requests: &[String]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(requests.concat().as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection after the last response")
        .unwrap();
    got
}

/// `n` requests for `host` and `path`, the last with `Connection: close`; `body` makes them
/// POSTs (served by hyper rather than the lean loop).
fn requests(n: usize, host: &str, path: &str, body: Option<&str>) -> Vec<String> {
    (0..n)
        .map(|i| {
            let close = if i + 1 == n {
                "connection: close\r\n"
            } else {
                ""
            };
            match body {
                None => format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{close}\r\n"),
                Some(b) => format!(
                    "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n{close}\r\n{b}",
                    b.len()
                ),
            }
        })
        .collect()
}

/// What the chunked backend answers to every request head, written raw so that its size on
/// the wire is known.
const CHUNKED_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-b: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

async fn start_chunked_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(CHUNKED_REPLY).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn usage_counts_every_request_and_the_bytes_on_the_wire() {
    let b = backends().await;
    let chunked = start_chunked_backend().await;
    let mut config = config(&b, "shared");
    let mut chunked_api = api(
        "chunked",
        Method::GET,
        "/chunked",
        format!("http://{chunked}"),
        2000,
    );
    chunked_api.backend_billed = true;
    let g_any = &mut config.groups[0];
    g_any.deployments.push(chunked_api);
    for d in &mut g_any.deployments {
        if d.api == "big" {
            d.backend_billed = true;
        }
    }
    let gw = Gateway::start(dataplane(&config), ServerLimits::default()).await;
    // The lean loop: whole bodies, pipelined on one connection.
    let big_wire = raw_exchange(gw.addr, &requests(7, "x.test", "/big", None)).await;
    let echo_wire = raw_exchange(gw.addr, &requests(5, "x.test", "/echo/1", None)).await;
    // Chunked bodies, streamed from the backend's socket.
    let chunked_wire = raw_exchange(gw.addr, &requests(3, "x.test", "/chunked", None)).await;
    // hyper: requests with a body.
    let post_wire = raw_exchange(gw.addr, &requests(4, "x.test", "/echo/2", Some("hello"))).await;
    // The gateway's own answers: one request a second on `tiny`, so two 429s.
    let tiny_wire = raw_exchange(gw.addr, &requests(3, "tiny.test", "/t", None)).await;
    // Nobody's: no usage.
    raw_exchange(gw.addr, &requests(1, "x.test", "/v1/zzz", None)).await; // any-host group: "unmatched"
    let usage = gw.dp.drain_usage();
    let find = |api: &str| usage.iter().find(|d| d.api == api).cloned().unwrap();
    let (big, echo, t, post, ch) = (
        find("big"),
        find("echo"),
        find("t"),
        find("echo-post"),
        find("chunked"),
    );
    assert_eq!(
        (big.calls, echo.calls, t.calls, post.calls, ch.calls),
        (7, 5, 3, 4, 3)
    );
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(text(&tiny_wire).matches("HTTP/1.1 429 ").count(), 2);
    assert_eq!(text(&chunked_wire).matches("\r\n0\r\n\r\n").count(), 3);
    // Every byte the client received, and no other, is outbound traffic.
    assert_eq!(big.bytes_out, big_wire.len() as u64);
    assert_eq!(echo.bytes_out, echo_wire.len() as u64);
    assert_eq!(ch.bytes_out, chunked_wire.len() as u64);
    assert_eq!(post.bytes_out, post_wire.len() as u64);
    assert_eq!(t.bytes_out, tiny_wire.len() as u64);
    // Backend traffic: what was read from billed backends, heads and framing included (the
    // hyper backend's head: status line, content-length, date, blank line: 80 bytes).
    assert_eq!(big.backend_bytes, 7 * (100_000 + 80));
    assert_eq!(ch.backend_bytes, 3 * CHUNKED_REPLY.len() as u64);
    assert_eq!((echo.backend_bytes, post.backend_bytes), (0, 0));
    assert_eq!(
        (
            big.account.as_str(),
            big.instance.as_str(),
            big.region.as_str()
        ),
        ("acct-a", "shared", "cn-hangzhou")
    );
    assert_eq!(find(dataplane::UNMATCHED_API).calls, 1);
    assert!(gw.dp.drain_usage().is_empty());

    let mut metrics = String::new();
    gw.dp.render_metrics(&mut metrics);
    for line in [
        "gateway_requests_total{instance=\"shared\",api=\"big\",class=\"2xx\"} 7",
        "gateway_requests_total{instance=\"tiny\",api=\"t\",class=\"4xx\"} 2",
        "gateway_instance_ceiling_rps{instance=\"tiny\"} 1",
        "gateway_instance_share{instance=\"shared\"} 1",
        "gateway_request_duration_seconds_count{instance=\"shared\"} 19",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_proxied() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    let c: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // (HTTP/2 clients name the host in :authority, here the gateway's address: any-host group.
    // A Host header beside it must name the same host.)
    let r = get(&c, gw.addr, "other.test", "/echo/2").await;
    assert_eq!(r.status, 400, "a Host that disagrees with :authority");
    let r = get(&c, gw.addr, &gw.addr.to_string(), "/echo/2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/back/echo/2");
    assert_eq!(r.json()["headers"]["x-forwarded-host"], gw.addr.to_string());
    assert!(r.headers.contains_key("x-ca-request-id"));
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let b = backends().await;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let gw = Gateway::start(dataplane(&config(&b, "shared")), limits).await;
    for opening in [&b""[..], b"G", b"GET /echo/1 HTTP/1.1\r\nhost: x"] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "{opening:?}: connection still open after {DEADLINE:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{opening:?}");
    }
    // A keep-alive connection left idle after a request is closed too.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /echo/1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "idle keep-alive connection still open");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let b = backends().await;
    let mut cfg = config(&b, "shared");
    cfg.groups[0].deployments[3].timeout = Duration::from_secs(5); // sleep API
    let gw = Gateway::start(dataplane(&cfg), ServerLimits::default()).await;
    let addr = gw.addr;
    let dp = gw.dp.clone();
    let in_flight = tokio::spawn(async move { get(&client(), addr, "x.test", "/sleep/300").await });
    // Wait until the request is at the backend (it is counted before it is forwarded).
    let deadline = Instant::now() + DEADLINE;
    let mut seen = 0;
    while seen == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        seen = total_calls(&dp, "sleep");
        tokio::task::yield_now().await;
    }
    gw.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"slept");
    // The listener is gone.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn ops_endpoint_serves_health_readiness_and_metrics() {
    let b = backends().await;
    let dp = dataplane(&config(&b, "shared"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hooks = OpsHooks {
        ready: Arc::new(AtomicBool::new(false)),
        extra_metrics: Some(Arc::new(|out: &mut String| {
            out.push_str("raft_term 3\n");
        })),
    };
    let ready = hooks.ready.clone();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_ops(listener, dp.clone(), hooks, async move {
        let _ = rx.await;
    }));
    let c = client();
    assert_eq!(get(&c, addr, "ops", "/healthz").await.status, 200);
    assert_eq!(get(&c, addr, "ops", "/readyz").await.status, 503);
    ready.store(true, Ordering::Release);
    assert_eq!(get(&c, addr, "ops", "/readyz").await.status, 200);
    let metrics = get(&c, addr, "ops", "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("# TYPE gateway_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("gateway_instance_ceiling_rps{instance=\"shared\"} 1000000"),
        "{text}"
    );
    assert!(text.ends_with("raft_term 3\n"), "{text}");
    assert_eq!(get(&c, addr, "ops", "/nope").await.status, 404);
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Reads one small response from a keep-alive connection.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let b = backends().await;
    let limits = ServerLimits {
        max_connections: 1,
        ..Default::default()
    };
    let gw = Gateway::start(dataplane(&config(&b, "shared")), limits).await;
    // Connection A holds the only slot (keep-alive).
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let request = b"GET /echo/a HTTP/1.1\r\nhost: x.test\r\n\r\n";
    a.write_all(request).await.unwrap();
    assert!(read_head(&mut a).await.starts_with("HTTP/1.1 200"));
    // B connects (the kernel's backlog takes it) but is not served while A is open...
    let addr = gw.addr;
    let b_request = tokio::spawn(async move { get(&client(), addr, "x.test", "/echo/b").await });
    for _ in 0..3 {
        a.write_all(request).await.unwrap();
        assert!(read_head(&mut a).await.starts_with("HTTP/1.1 200"));
        assert!(!b_request.is_finished(), "a second connection was served");
    }
    // ...and is once A goes.
    drop(a);
    let r = tokio::time::timeout(DEADLINE, b_request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

/// Polls `f` until it holds, within the deadline.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "not within the deadline: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` connections, each answered once (so surely handed to a server thread), left open.
async fn answered_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /echo/t HTTP/1.1\r\nhost: x.test\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut c).await.starts_with("HTTP/1.1 200"));
        open.push(c);
    }
    open
}

#[tokio::test]
async fn server_threads_share_connections_evenly_and_stop_on_shutdown() {
    let b = backends().await;
    let dp = dataplane(&config(&b, "shared"));
    let listener = dataplane::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let threads = dataplane::serve_threads(
        listener,
        2,
        dp,
        ServerLimits::default(),
        None,
        dataplane::RequestHooks::default(),
        stopped,
    )
    .unwrap();
    let mut open = answered_connections(addr, 10).await;
    // Whatever the ports, five each (a SO_REUSEPORT hash would split them at random).
    assert_eq!(threads.connections_per_thread(), [5, 5]);
    // Connections that end are no longer counted; new ones fill the emptier thread.
    open.truncate(4);
    eventually("6 connections closed", || {
        threads.connections_per_thread().iter().sum::<usize>() == 4
    })
    .await;
    open.extend(answered_connections(addr, 6).await);
    assert_eq!(threads.connections_per_thread(), [5, 5]);
    drop(open);
    stop.send(true).unwrap();
    tokio::time::timeout(DEADLINE, threads.join())
        .await
        .expect("the threads stop within the deadline")
        .unwrap();
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over_to_hyper() {
    let b = backends().await;
    let gw = Gateway::start(dataplane(&config(&b, "shared")), ServerLimits::default()).await;
    // Two bodiless requests (the lean loop's), one with a body (hyper's from there on), one
    // more, then close: all in one write.
    let requests = b"GET /echo/1 HTTP/1.1\r\nhost: x.test\r\n\r\n\
        GET /echo/2 HTTP/1.1\r\nhost: x.test\r\n\r\n\
        POST /echo/3 HTTP/1.1\r\nhost: x.test\r\ncontent-length: 5\r\n\r\nhello\
        GET /echo/4 HTTP/1.1\r\nhost: x.test\r\nconnection: close\r\n\r\n";
    let answers = raw(gw.addr, requests).await;
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        4,
        "{answers}"
    );
    let positions: Vec<usize> = (1..=4)
        .map(|i| {
            answers
                .find(&format!("\"path\":\"/back/echo/{i}\""))
                .unwrap_or_else(|| panic!("no answer for /echo/{i}: {answers}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{answers}");
    assert!(answers.contains("\"body_len\":5"), "{answers}");

    // An HTTP/1.0 client is answered with an HTTP/1.1 status line (RFC 9110 2.5) and, unless
    // it asks to keep the connection, the connection closes after the answer (raw() reads to
    // the end).
    let answer = raw(gw.addr, b"GET /echo/5 HTTP/1.0\r\nhost: x.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"path\":\"/back/echo/5\""), "{answer}");
    gw.shutdown().await;
}
