//! How the gateway speaks HTTP/1 to its backends, against backends that write raw bytes: the
//! framings a response can have (length, chunks in pieces, until close, none for HEAD, 1xx
//! first), connections the backend closes while they sit in the pool, responses cut short or
//! malformed; and an HTTP/1.0 backend, which must not turn the client's HTTP/1.1 keep-alive
//! connection into an HTTP/1.0 one.

use dataplane::{
    Dataplane, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, ServerLimits, Stage,
    serve,
};
use http::Method;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

/// Answers every request with `HTTP/1.0 200 OK` and a Content-Length, then closes.
async fn http10_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let _ = r
                    .get_mut()
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .await;
            });
        }
    });
    addr
}

async fn gateway(backend: SocketAddr) -> SocketAddr {
    gateway_for(backend, &[(Method::GET, "/old")]).await
}

/// A gateway with an API per (method, path), all on `backend`.
async fn gateway_for(backend: SocketAddr, apis: &[(Method, &str)]) -> SocketAddr {
    let dp = Dataplane::new(1);
    let report = dp.publish(&DataplaneConfig {
        instances: vec![InstanceConfig {
            name: dataplane::SHARED_INSTANCE.into(),
            ceiling_rps: 1_000_000,
            region: "cn-hangzhou".into(),
        }],
        groups: vec![GroupConfig {
            name: "g".into(),
            account: "a".into(),
            instance: dataplane::SHARED_INSTANCE.into(),
            host: None,
            base_path: None,
            deployments: apis
                .iter()
                .enumerate()
                .map(|(i, (method, path))| DeployedApi {
                    stage: Stage::Release,
                    api: format!("api{i}"),
                    method: method.clone(),
                    path: path.to_string(),
                    backend: format!("http://{backend}"),
                    timeout: Duration::from_secs(5),
                    app_auth: false,
                    backend_billed: false,
                })
                .collect(),
            acl: None,
            api_acls: Default::default(),
            grants: Default::default(),
            suspended: false,
            throttles: Default::default(),
        }],
        apps: vec![],
    });
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        dp,
        ServerLimits::default(),
        std::future::pending(),
    ));
    addr
}

/// Sends `request` and reads one response with a Content-Length; returns its head and body.
async fn exchange(r: &mut BufReader<TcpStream>, request: &str) -> (String, String) {
    r.get_mut().write_all(request.as_bytes()).await.unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed after {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn an_http10_backend_does_not_downgrade_the_client() {
    let gw = gateway(http10_backend().await).await;
    let stream = TcpStream::connect(gw).await.unwrap();
    let mut r = BufReader::new(stream);
    tokio::time::timeout(DEADLINE, async {
        // Three requests on one connection: it stays open, and every answer is HTTP/1.1.
        for _ in 0..3 {
            let (head, body) = exchange(&mut r, "GET /old HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
            assert_eq!(body, "hello");
        }
        // An HTTP/1.0 client gets the version the server conforms to (RFC 9110 2.5).
        let stream = TcpStream::connect(gw).await.unwrap();
        let mut r10 = BufReader::new(stream);
        let (head, body) = exchange(&mut r10, "GET /old HTTP/1.0\r\nHost: gw.test\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert_eq!(body, "hello");
    })
    .await
    .expect("within the deadline");
}

/// A backend that writes raw bytes, chosen by the request's path, and counts its connections.
struct ScriptedBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// What the scripted backend writes for a path, piece by piece (flushed and paused between
/// pieces, so that they arrive apart), and whether it then closes the connection.
fn script(method: &str, path: &str) -> (Vec<&'static [u8]>, bool) {
    match path {
        "/length" if method == "HEAD" => {
            (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], false)
        }
        "/length" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
            false,
        ),
        "/chunked" => (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6\r\n world\r\n",
                b"0\r\nX-Trailer: t\r\n\r\n",
            ],
            false,
        ),
        "/pieces" => (
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
                b" wor",
                b"ld",
            ],
            false,
        ),
        "/until-close" => (vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"], true),
        "/continue" => (
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
            false,
        ),
        // Answers, then closes without saying so: the pooled connection is dead.
        "/once" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"],
            true,
        ),
        "/no-content" => (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        "/cut" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
            true,
        ),
        "/bad-chunks" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            true,
        ),
        _ => (vec![b"NOT HTTP AT ALL\r\n\r\n"], true),
    }
}

async fn scripted_backend() -> ScriptedBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    match r.read_line(&mut request_line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let mut words = request_line.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let (pieces, close) = script(method, path);
                    for (i, piece) in pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if r.get_mut().write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    ScriptedBackend { addr, connections }
}

/// Sends a bodiless request on `r`'s connection and reads the response to the end, whatever its
/// framing: (status line and headers, body). `None` if the connection ended before a whole
/// response.
async fn call(r: &mut BufReader<TcpStream>, method: &str, path: &str) -> Option<(String, Vec<u8>)> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    r.get_mut().write_all(request.as_bytes()).await.ok()?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let mut body = Vec::new();
    if method == "HEAD" || head.starts_with("http/1.1 204") {
        return Some((head, body));
    }
    if let Some(len) = header("content-length:") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).await.ok()?;
    } else if header("transfer-encoding:").as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await.ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        r.read_to_end(&mut body).await.ok()?;
    }
    Some((head, body))
}

async fn connect(gw: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(gw).await.unwrap())
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_and_keeps_the_connection() {
    let backend = scripted_backend().await;
    let gw = gateway_for(
        backend.addr,
        &[
            (Method::GET, "/length"),
            (Method::HEAD, "/length"),
            (Method::GET, "/chunked"),
            (Method::GET, "/pieces"),
            (Method::GET, "/continue"),
            (Method::DELETE, "/no-content"),
        ],
    )
    .await;
    tokio::time::timeout(DEADLINE, async {
        let mut r = connect(gw).await;
        for round in 0..2 {
            let (head, body) = call(&mut r, "GET", "/length").await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, b"hello");
            let (head, body) = call(&mut r, "HEAD", "/length").await.unwrap();
            assert!(head.contains("content-length: 5"), "{head}");
            assert!(body.is_empty());
            let (head, body) = call(&mut r, "GET", "/chunked").await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, b"hello world", "round {round}");
            let (_, body) = call(&mut r, "GET", "/pieces").await.unwrap();
            assert_eq!(body, b"hello world");
            let (head, body) = call(&mut r, "GET", "/continue").await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, b"ok");
            let (head, _) = call(&mut r, "DELETE", "/no-content").await.unwrap();
            assert!(head.starts_with("http/1.1 204"), "{head}");
        }
    })
    .await
    .expect("within the deadline");
    // Twelve exchanges one after another, each over the connection the previous one returned.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_delimited_by_the_close_is_read_to_the_end_and_the_connection_not_reused() {
    let backend = scripted_backend().await;
    let gw = gateway_for(backend.addr, &[(Method::GET, "/until-close")]).await;
    tokio::time::timeout(DEADLINE, async {
        let mut r = connect(gw).await;
        for _ in 0..3 {
            let (head, body) = call(&mut r, "GET", "/until-close").await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, b"until close");
        }
    })
    .await
    .expect("within the deadline");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connections_the_backend_closed_in_the_pool_are_not_used() {
    let backend = scripted_backend().await;
    let gw = gateway_for(
        backend.addr,
        &[(Method::GET, "/once"), (Method::POST, "/once")],
    )
    .await;
    tokio::time::timeout(DEADLINE, async {
        let mut r = connect(gw).await;
        // The backend closes each connection after its answer, without saying so; no request
        // may fail for it, not even a POST, which is never sent twice.
        for method in ["GET", "POST", "GET", "POST", "POST"] {
            let (head, body) = call(&mut r, method, "/once").await.unwrap();
            assert!(head.starts_with("http/1.1 200"), "{method}: {head}");
            assert_eq!(body, b"once");
        }
    })
    .await
    .expect("within the deadline");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn malformed_or_cut_responses_fail_cleanly() {
    let backend = scripted_backend().await;
    let gw = gateway_for(
        backend.addr,
        &[
            (Method::GET, "/garbage"),
            (Method::GET, "/cut"),
            (Method::GET, "/bad-chunks"),
            (Method::GET, "/length"),
        ],
    )
    .await;
    tokio::time::timeout(DEADLINE, async {
        let mut r = connect(gw).await;
        let (head, body) = call(&mut r, "GET", "/garbage").await.unwrap();
        assert!(head.starts_with("http/1.1 502"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("invalid response"));

        // The head went out before the body was cut: the client sees its connection end
        // before the promised 10 bytes, never a complete response.
        let mut r = connect(gw).await;
        assert!(call(&mut r, "GET", "/cut").await.is_none());
        let mut r = connect(gw).await;
        assert!(call(&mut r, "GET", "/bad-chunks").await.is_none());

        // The gateway is none the worse for it.
        let mut r = connect(gw).await;
        let (_, body) = call(&mut r, "GET", "/length").await.unwrap();
        assert_eq!(body, b"hello");
    })
    .await
    .expect("within the deadline");
}
