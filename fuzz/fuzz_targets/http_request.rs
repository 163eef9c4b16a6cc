//! The data plane's request path, end to end, through its real server (`dataplane::serve`).
//!
//! The fuzz input is the raw byte stream of one client connection (HTTP/1.1, possibly several
//! pipelined requests, or HTTP/2 prior knowledge). It is written to a loopback TCP connection
//! to a gateway served by `dataplane::serve`, the write side is closed, and the answer is read
//! until the gateway closes (bounded by a timeout).
//!
//! Why TCP and not an in-memory pipe: the crate serves connections only from a
//! `tokio::net::TcpListener` (`dataplane::serve`); its per-connection code and the request
//! handler are private (see README.md, "API gaps"). Loopback TCP is the only public way in.
//! The client socket is closed with `SO_LINGER 0` so the fuzzer does not run out of ports.
//!
//! The published configuration (one current-thread tokio runtime and one gateway per process):
//!
//! | host / path | what answers |
//! | --- | --- |
//! | any host, `/v1/items/{id}` GET, `/v1/items` POST, `/v1/files/{*rest}` ANY | an in-process backend (200) |
//! | any host, `/v1/dead` GET | a backend port with nothing listening (502) |
//! | any host, `/v1/private` GET | an API-level IP ACL allowing only 198.18.0.0/15 (403) |
//! | `TEST` stage, `/v1/items/[id]` GET | the backend |
//! | `api.example.com`, `/secure` | APP auth (401/400/403 without a valid signature) |
//! | `api.example.com`, `/public` | the backend |
//! | `acl.example.com`, `/x` | IP ACL denying 127.0.0.0/8 (403) |
//! | any host, `/slow/x` | an instance with a ceiling of 1 rps (429 after the first) |
//! | any host, `/owed/x` | a suspended account (403) |
//! | anything else | 404 from the gateway |
//!
//! A request head carrying the header `X-Fuzz-Sign: 1` is signed by the harness (the header is
//! replaced by valid `X-Ca-*` headers for the app `mobile`, with the current time and a fresh
//! nonce), so the fuzzer also reaches the accepted-signature path.
//!
//! The data plane's clock is a `FakeClock` advanced 250 ms per input, so limiter decisions do
//! not depend on how fast the fuzzer runs.
#![no_main]

use bytes::Bytes;
use dataplane::{
    AppCredential, Dataplane, DataplaneConfig, DataplaneOptions, DeployedApi, FakeClock,
    GroupConfig, InstanceConfig, IpRules, SHARED_INSTANCE, ServerLimits, Stage,
};
use http::Method;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const APP_KEY: &str = "fuzz-key-0001";
const APP_SECRET: &str = "fuzz-secret-0123456789";
/// Wall time one input may take.
const RUN_TIMEOUT: Duration = Duration::from_millis(500);

struct Harness {
    rt: Runtime,
    gateway: SocketAddr,
    clock: Arc<FakeClock>,
    nonce: AtomicU64,
}

/// A backend that reads the request body (up to 1 MiB) and answers 200 with a small body.
async fn backend(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let path = req.uri().path().to_string();
                let n = match Limited::new(req.into_body(), 1 << 20).collect().await {
                    Ok(b) => b.to_bytes().len(),
                    Err(_) => 0,
                };
                let body = Bytes::from(format!("{{\"path\":{path:?},\"body\":{n}}}"));
                let mut resp = http::Response::new(Full::new(body));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn deployed(stage: Stage, api: &str, method: Method, path: &str, backend: &str) -> DeployedApi {
    DeployedApi {
        stage,
        api: api.into(),
        method,
        path: path.into(),
        backend: backend.into(),
        timeout: Duration::from_millis(200),
        app_auth: api == "secure",
        backend_billed: false,
    }
}

fn config(backend: SocketAddr) -> DataplaneConfig {
    let be = format!("http://{backend}");
    let be_prefixed = format!("http://{backend}/prefix/");
    let dead = "http://127.0.0.1:1".to_string();
    let any = Method::from_bytes(b"ANY").unwrap();
    let group =
        |name: &str, account: &str, instance: &str, host: Option<&str>, base: Option<&str>| {
            GroupConfig {
                host: host.map(Into::into),
                base_path: base.map(Into::into),
                ..GroupConfig::new(name, account, instance)
            }
        };
    let mut open = group("open", "default", SHARED_INSTANCE, None, Some("/v1"));
    open.deployments = vec![
        deployed(Stage::Release, "get-item", Method::GET, "/items/{id}", &be),
        deployed(
            Stage::Release,
            "post-item",
            Method::POST,
            "/items",
            &be_prefixed,
        ),
        deployed(Stage::Release, "files", any.clone(), "/files/{*rest}", &be),
        deployed(Stage::Release, "dead", Method::GET, "/dead", &dead),
        deployed(Stage::Release, "private", Method::GET, "/private", &be),
        deployed(Stage::Test, "test-item", Method::GET, "/items/[id]", &be),
    ];
    open.api_acls.insert(
        "private".into(),
        IpRules {
            allow: vec!["198.18.0.0/15".into()],
            deny: vec![],
        },
    );
    let mut signed = group(
        "signed",
        "acme",
        SHARED_INSTANCE,
        Some("api.example.com"),
        None,
    );
    signed.deployments = vec![
        deployed(Stage::Release, "secure", any.clone(), "/secure", &be),
        deployed(Stage::Release, "public", Method::GET, "/public", &be),
    ];
    signed.grants.insert("secure".into(), vec!["mobile".into()]);
    let mut acl = group(
        "acl",
        "acme",
        SHARED_INSTANCE,
        Some("acl.example.com"),
        None,
    );
    acl.deployments = vec![deployed(Stage::Release, "acl-x", any.clone(), "/x", &be)];
    acl.acl = Some(IpRules {
        allow: vec![],
        deny: vec!["127.0.0.0/8".into()],
    });
    let mut slow = group("slow", "acme", "tiny", None, Some("/slow"));
    slow.deployments = vec![deployed(Stage::Release, "slow-x", Method::GET, "/x", &be)];
    let mut owed = group("owed", "broke", SHARED_INSTANCE, None, Some("/owed"));
    owed.deployments = vec![deployed(Stage::Release, "owed-x", Method::GET, "/x", &be)];
    owed.suspended = true;
    DataplaneConfig {
        instances: vec![
            InstanceConfig {
                name: SHARED_INSTANCE.into(),
                ceiling_rps: 1_000_000,
                region: "cn-hongkong".into(),
            },
            InstanceConfig {
                name: "tiny".into(),
                ceiling_rps: 1,
                region: "cn-hongkong".into(),
            },
        ],
        groups: vec![open, signed, acl, slow, owed],
        apps: vec![AppCredential {
            name: "mobile".into(),
            key: APP_KEY.into(),
            secret: APP_SECRET.into(),
        }],
    }
}

fn harness() -> &'static Harness {
    static H: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        // As in any Rust binary (std ignores SIGPIPE before `main`; libFuzzer's `main` does
        // not): a write to a socket its peer has closed must fail with EPIPE, not kill the
        // process. Here both sides of every connection share the process, and either may
        // close first.
        // SAFETY: called once, before any other thread of this process could be writing.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let clock = Arc::new(FakeClock::new(1_000_000_000));
        let gateway = rt.block_on(async {
            let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend_addr = backend_listener.local_addr().unwrap();
            tokio::spawn(backend(backend_listener));

            let dp = Dataplane::with_options(DataplaneOptions {
                clock: clock.clone(),
                backend_connect_timeout: Duration::from_millis(100),
                ..Default::default()
            });
            let report = dp.publish(&config(backend_addr));
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            let limits = ServerLimits {
                max_body_bytes: 64 * 1024,
                max_header_bytes: 4 * 1024,
                header_read_timeout: Duration::from_millis(300),
                idle_timeout: Duration::from_millis(400),
                max_connections: 1024,
                drain_timeout: Duration::from_millis(100),
                tunnel_idle_timeout: Duration::from_millis(400),
                allow_underscore_headers: false,
            };
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(dataplane::serve(
                listener,
                dp,
                limits,
                std::future::pending(),
            ));
            addr
        });
        Harness {
            rt,
            gateway,
            clock,
            nonce: AtomicU64::new(0),
        }
    })
}

/// If the first request head carries `X-Fuzz-Sign`, replaces that header line with a valid
/// signature of the request (method, target, headers) for the app `mobile`.
fn sign_marked(data: &[u8], nonce: u64) -> Option<Vec<u8>> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&data[..end]), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let marker = req
        .headers
        .iter()
        .position(|h| h.name.eq_ignore_ascii_case("x-fuzz-sign"))?;
    let method = req.method?;
    let target = req.path?;
    // What the gateway verifies: the request target and every header it receives.
    let mut parts = signer::RequestParts::from_uri(method, target);
    for (i, h) in req.headers.iter().enumerate() {
        if i != marker {
            parts.headers.push((
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            ));
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    signer::Signer::new(APP_KEY, APP_SECRET).sign(&mut parts, now_ms, &format!("n-{nonce}"));
    let mut signed = String::new();
    for name in [
        signer::header::CA_KEY,
        signer::header::CA_TIMESTAMP,
        signer::header::CA_NONCE,
        signer::header::CA_SIGNATURE_METHOD,
        signer::header::CA_SIGNATURE_HEADERS,
        signer::header::CA_SIGNATURE,
    ] {
        signed.push_str(&format!("{name}: {}\r\n", parts.header(name).unwrap_or("")));
    }
    // Find the marker line in the raw head and replace it.
    let head = &data[..end];
    let lower: Vec<u8> = head.to_ascii_lowercase();
    let at = lower.windows(13).position(|w| w == b"\nx-fuzz-sign:")? + 1;
    let line_end = at + head[at..].windows(2).position(|w| w == b"\r\n")? + 2;
    let mut out = Vec::with_capacity(data.len() + signed.len());
    out.extend_from_slice(&data[..at]);
    out.extend_from_slice(signed.as_bytes());
    out.extend_from_slice(&data[line_end..]);
    Some(out)
}

/// Sent after the input: completes a head left open, then asks the gateway to close the
/// connection once every request before it is answered (a 404 from the gateway itself).
const TERMINATOR: &[u8] =
    b"\r\n\r\nGET /__fuzz_end HTTP/1.1\r\nHost: end\r\nConnection: close\r\n\r\n";
/// With no byte from the gateway for this long, the client closes its write side.
const QUIET: Duration = Duration::from_millis(25);

async fn exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    // Reset on close: no TIME_WAIT, so a long run does not exhaust the ephemeral ports.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    // The gateway does not support half-closed connections (hyper's default): a client that
    // shuts down its write side right after a request loses the response. So the input is
    // followed by a `Connection: close` request, and the write side is only shut down once
    // the gateway has been quiet for a while (a request left incomplete by the input).
    let write = async {
        // The gateway may close early (a 400, a 413 refused up front): that is fine.
        if wr.write_all(data).await.is_ok() {
            let _ = wr.write_all(TERMINATOR).await;
        }
        wr
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(QUIET, rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (out, false),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, true),
            }
        }
    };
    let (mut wr, (mut out, quiet)) = tokio::join!(write, read);
    if quiet {
        let _ = wr.shutdown().await;
        let _ = rd.read_to_end(&mut out).await;
    }
    Ok(out)
}

/// `FUZZ_DEBUG=1`: print each exchange (to check seeds).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.clock.advance(Duration::from_millis(250));
    let signed;
    let data = match sign_marked(data, h.nonce.fetch_add(1, Ordering::Relaxed)) {
        Some(s) => {
            signed = s;
            &signed[..]
        }
        None => data,
    };
    let response =
        h.rt.block_on(async { tokio::time::timeout(RUN_TIMEOUT, exchange(h.gateway, data)).await });
    if debug() {
        eprintln!("--> {}", String::from_utf8_lossy(data));
        match &response {
            Ok(Ok(out)) => eprintln!("<-- {}", String::from_utf8_lossy(out)),
            Ok(Err(e)) => eprintln!("<-- error: {e}"),
            Err(_) => eprintln!("<-- timed out"),
        }
    }
    if let Ok(Ok(out)) = response {
        // Whatever the gateway says on HTTP/1 starts with a status line.
        if !out.is_empty() && !data.starts_with(b"PRI") {
            assert!(
                out.starts_with(b"HTTP/1."),
                "not an HTTP/1 response: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            );
        }
    }
});
