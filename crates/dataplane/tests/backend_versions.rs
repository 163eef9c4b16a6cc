//! The gateway answers in the client's HTTP version whatever its backend speaks: a backend that
//! answers `HTTP/1.0` (python's http.server does) must not turn the client's HTTP/1.1
//! keep-alive connection into an HTTP/1.0 one.

use dataplane::{
    Dataplane, DataplaneConfig, DeployedApi, GroupConfig, InstanceConfig, ServerLimits, Stage,
    serve,
};
use http::Method;
use std::net::SocketAddr;
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
            deployments: vec![DeployedApi {
                stage: Stage::Release,
                api: "old".into(),
                method: Method::GET,
                path: "/old".into(),
                backend: format!("http://{backend}"),
                timeout: Duration::from_secs(5),
                app_auth: false,
            }],
        }],
        suspended_accounts: vec![],
        access: Default::default(),
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
        // An HTTP/1.0 client is answered in HTTP/1.0.
        let stream = TcpStream::connect(gw).await.unwrap();
        let mut r10 = BufReader::new(stream);
        let (head, body) = exchange(&mut r10, "GET /old HTTP/1.0\r\nHost: gw.test\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head:?}");
        assert_eq!(body, "hello");
    })
    .await
    .expect("within the deadline");
}
