//! HTTP/1.1 upgrades over real sockets, on both HTTP/1 paths of a plain-text connection: the
//! lean loop (a connection's first request) and hyper (after a request with a body handed the
//! connection over). The backend speaks a made-up `echo` protocol after its 101: it greets,
//! then sends back what it reads.

use dataplane::{
    Dataplane, DataplaneConfig, DataplaneOptions, DeployedApi, FakeClock, GroupConfig,
    InstanceConfig, ServerLimits, Stage, serve,
};
use http::Method;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);
const GREETING: &[u8] = b"hello from echo\n";

/// Switches to `echo` when asked (and greets in the same write as its 101), or answers a
/// plain request with `200 plain`; serves one request per connection.
async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                if !head.contains("\r\nupgrade: echo\r\n") || !head.contains("connection: upgrade")
                {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                        .await;
                    return;
                }
                let mut out =
                    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
                        .to_vec();
                out.extend_from_slice(GREETING);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn dataplane(backend: SocketAddr) -> Dataplane {
    let dp = Dataplane::with_options(DataplaneOptions {
        node_id: 7,
        clock: Arc::new(FakeClock::new(1_000_000_000)),
        ..Default::default()
    });
    let api = |name: &str, method: Method| DeployedApi {
        stage: Stage::Release,
        api: name.into(),
        method,
        path: format!("/{name}"),
        backend: format!("http://{backend}"),
        timeout: Duration::from_secs(2),
        app_auth: false,
        backend_billed: false,
    };
    let config = DataplaneConfig {
        instances: vec![InstanceConfig {
            name: dataplane::SHARED_INSTANCE.into(),
            ceiling_rps: 1_000_000,
            region: "cn-hangzhou".into(),
        }],
        groups: vec![GroupConfig {
            name: "g".into(),
            account: "acct".into(),
            instance: dataplane::SHARED_INSTANCE.into(),
            host: None,
            base_path: None,
            deployments: vec![api("ws", Method::GET), api("post", Method::POST)],
            acl: None,
            api_acls: Default::default(),
            grants: Default::default(),
            suspended: false,
            throttles: Default::default(),
        }],
        apps: vec![],
    };
    let report = dp.publish(&config);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    dp
}

async fn start_gateway(dp: Dataplane) -> SocketAddr {
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

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: echo\r\n\r\n";

/// Reads until `want` has been read whole; returns everything read.
async fn read_until(s: &mut TcpStream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !got.windows(want.len()).any(|w| w == want) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} in {:?}", String::from_utf8_lossy(&got)));
    got
}

/// After the 101 (and the greeting): bytes sent come back, and the tunnel's bytes are
/// counted for the API.
async fn tunnel_echoes(dp: &Dataplane, s: &mut TcpStream, got: Vec<u8>) {
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 101 "), "{text}");
    assert!(text.contains("\r\nconnection: upgrade\r\n"), "{text}");
    assert!(text.contains("\r\nupgrade: echo\r\n"), "{text}");
    assert!(text.contains("\r\nx-ca-request-id: "), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    let payload = vec![b'z'; 50_000];
    s.write_all(&payload).await.unwrap();
    let mut echoed = vec![0u8; payload.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut echoed))
        .await
        .expect("the echo within the deadline")
        .unwrap();
    assert_eq!(echoed, payload);
    s.shutdown().await.unwrap();
    // The backend's end comes back as the end of the tunnel.
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("the tunnel ends after the client's end")
        .unwrap();
    let bytes: u64 = dp
        .drain_usage()
        .iter()
        .filter(|d| d.api == "ws")
        .map(|d| d.bytes_out)
        .sum();
    assert!(bytes >= 2 * 50_000, "tunnel bytes both ways: {bytes}");
}

#[tokio::test]
async fn the_lean_loop_switches_a_connection_to_a_tunnel() {
    let dp = dataplane(start_backend().await);
    let addr = start_gateway(dp.clone()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Bytes of the new protocol right behind the request: relayed after the switch.
    let mut first = UPGRADE.to_vec();
    first.extend_from_slice(b"early\n");
    s.write_all(&first).await.unwrap();
    let got = read_until(&mut s, b"early\n").await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains("\r\n\r\nhello from echo\n"), "{text}");
    tunnel_echoes(&dp, &mut s, got).await;
}

#[tokio::test]
async fn hyper_switches_a_connection_it_serves_to_a_tunnel() {
    let dp = dataplane(start_backend().await);
    let addr = start_gateway(dp.clone()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A request with a body hands the connection to hyper for good.
    s.write_all(b"POST /post HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
        .await
        .unwrap();
    read_until(&mut s, b"plain").await;
    // A declined upgrade leaves hyper serving HTTP on the connection.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: something-else\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, b"plain").await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    s.write_all(UPGRADE).await.unwrap();
    let got = read_until(&mut s, GREETING).await;
    tunnel_echoes(&dp, &mut s, got).await;
}

#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_response() {
    let dp = dataplane(start_backend().await);
    let addr = start_gateway(dp.clone()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: something-else\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, b"plain").await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // Still HTTP: another request on the same connection.
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut s, b"plain").await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
}
