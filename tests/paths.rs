//! Path confusion and request framing, on a real node: the gateway routes, checks and forwards
//! one canonical path, over HTTP/1.1 and h2c alike, and a malformed request body is the
//! client's error, not the backend's.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use testkit::http::{Server, get};
use testkit::{Cluster, binaries, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SETTLE: Duration = Duration::from_secs(20);

/// One node with group `s` (base path `/s`): `files/{*rest}` open, `admin/{id}` denying
/// loopback (the test's own address), `pub/{name}` open, `up` taking POST; all on `backend`.
async fn node(backend: &Server) -> Cluster {
    node_with(backend, false).await
}

/// A request over TLS (`tls`) or plain HTTP/1.1 to node 1's data plane.
async fn fetch(c: &Cluster, tls: bool, path: &str) -> Option<testkit::http::Response> {
    let addr = c.http_addr(1);
    if tls {
        testkit::http::get_tls(&addr, "127.0.0.1", &c.client_tls(), path).await
    } else {
        get(&addr, path).await
    }
}

/// As [`node`]; its data plane serves TLS when `tls`.
async fn node_with(backend: &Server, tls: bool) -> Cluster {
    let mut c = if tls {
        Cluster::new_tls(binaries!(), 1)
    } else {
        Cluster::new(binaries!(), 1)
    };
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let b = format!("http://{}", backend.addr);
    c.ctl_json(1, &["group", "create", "--name", "s", "--base-path", "/s"]);
    for (name, method, path) in [
        ("files", "GET", "/files/{*rest}"),
        ("admin", "GET", "/admin/{id}"),
        ("pub", "GET", "/pub/{name}"),
        ("up", "POST", "/up"),
    ] {
        c.ctl_json(
            1,
            &[
                "api",
                "create",
                "--group",
                "s",
                "--name",
                name,
                "--method",
                method,
                "--path",
                path,
                "--backend",
                &b,
            ],
        );
        c.ctl_json(1, &["api", "deploy", "--group", "s", "--name", name]);
    }
    c.ctl_json(
        1,
        &[
            "api",
            "set-acl",
            "--group",
            "s",
            "--name",
            "admin",
            "--deny",
            "127.0.0.0/8",
        ],
    );
    eventually(
        "the APIs to be routable and admin denied",
        SETTLE,
        || async {
            let open = fetch(&c, tls, "/s/files/x").await?.status == 200;
            let denied = fetch(&c, tls, "/s/admin/1").await?.status == 403;
            (open && denied).then_some(())
        },
    )
    .await;
    c
}

/// What the gateway answers each confusing path with: (path, status, error code or body).
const CASES: &[(&str, u16, &str)] = &[
    // Dot segments are removed before routing: this is the admin API, and it is denied.
    ("/s/files/../admin/1", 403, "IpDenied"),
    ("/s/pub/./../admin/1", 403, "IpDenied"),
    // Encoded dot segments, encoded slashes, backslashes, NUL: refused outright.
    ("/s/files/%2e%2e/admin/1", 400, "InvalidPath"),
    ("/s/files/%2E./admin/1", 400, "InvalidPath"),
    ("/s/pub/..%2fadmin%2f1", 400, "InvalidPath"),
    ("/s/pub/..%2Fadmin", 400, "InvalidPath"),
    ("/s/files/..%5cadmin%5c1", 400, "InvalidPath"),
    ("/s/files/a%00", 400, "InvalidPath"),
    ("/s/../../etc/passwd", 400, "InvalidPath"),
    // Canonical spellings of an open API still work, and reach it in canonical form.
    ("/s/files/./a%62c/%7Ex", 200, "ok"),
];

fn check_backend(backend: &Server) {
    let received = backend.received();
    assert!(!received.is_empty());
    for r in &received {
        let lower = r.path.to_ascii_lowercase();
        assert!(
            !lower.contains("..") && !lower.contains("%2f") && !lower.contains("%2e"),
            "the backend received an unnormalised path: {}",
            r.path
        );
        assert!(
            !lower.contains("/admin"),
            "a denied API reached the backend: {}",
            r.path
        );
    }
    assert!(
        received.iter().any(|r| r.path == "/files/abc/~x"),
        "the canonical path was not forwarded: {received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusing_paths_are_canonicalised_or_refused_over_http1() {
    http1_cases(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusing_paths_are_canonicalised_or_refused_over_tls() {
    http1_cases(true).await;
}

async fn http1_cases(tls: bool) {
    let backend = Server::start("ok").await;
    let c = node_with(&backend, tls).await;
    let before = backend.count();
    for &(path, status, what) in CASES {
        let r = fetch(&c, tls, path).await.expect("a response");
        assert_eq!(r.status, status, "{path}: {r:?}");
        let code = r.header("x-ca-error-code").unwrap_or("");
        assert!(code == what || r.body.contains(what), "{path}: {r:?}");
    }
    assert_eq!(
        backend.count(),
        before + 1,
        "only the canonical open call is forwarded"
    );
    check_backend(&backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusing_paths_are_canonicalised_or_refused_over_h2c() {
    let backend = Server::start("ok").await;
    let c = node(&backend).await;
    let addr = c.http_addr(1);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let before = backend.count();
    for &(path, status, what) in CASES {
        let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
            .await
            .expect("an answer in time")
            .expect("a response");
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.status().as_u16(), status, "{path}");
        let code = r
            .headers()
            .get("x-ca-error-code")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(code == what || body.contains(what), "{path}: {code} {body}");
    }
    assert_eq!(
        backend.count(),
        before + 1,
        "only the canonical open call is forwarded"
    );
    check_backend(&backend);
}

/// Sends `request` on a fresh connection and reads until the server closes it.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The sum of every `gateway_backend_errors_total` sample on the node's ops endpoint.
async fn backend_errors(c: &Cluster) -> u64 {
    let r = get(&c.ops_addr(1), "/metrics").await.expect("metrics");
    r.body
        .lines()
        .filter(|l| l.starts_with("gateway_backend_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_and_not_a_backend_error() {
    let backend = Server::start("ok").await;
    let c = node(&backend).await;
    let addr = c.http_addr(1);
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..], // not a chunk size
        &b"5\r\nhelloXX0\r\n\r\n"[..],    // no CRLF after the chunk
        &b"ffffffffffffffffff\r\n"[..],   // a size that overflows
    ] {
        let mut request =
            b"POST /s/up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let answer = raw(&addr, &request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?}: {answer}",
            String::from_utf8_lossy(body)
        );
        assert!(answer.contains("BadRequest"), "{answer}");
        assert!(!answer.contains("BackendUnavailable"), "{answer}");
    }
    assert_eq!(
        backend_errors(&c).await,
        0,
        "the backend was counted as failing"
    );
    // The backend is as healthy as before: a well-formed call goes through.
    let ok = raw(
        &addr,
        b"POST /s/up HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// A signed request's head for `sent`, with the signature computed over `signed`.
fn signed_head(key: &str, secret: &str, signed: &str, sent: &str, nonce: &str) -> Vec<u8> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut req = signer::RequestParts::from_uri("GET", signed);
    signer::Signer::new(key, secret).sign(&mut req, ts, nonce);
    let mut head = format!("GET {sent} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    (head + "\r\n").into_bytes()
}

/// The signature is checked over the canonical path, the one the backend receives: a
/// signature over a non-canonical spelling does not verify, and what was signed is always
/// what is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_over_the_canonical_path() {
    let backend = Server::start("ok").await;
    let mut c = Cluster::new(binaries!(), 1);
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let b = format!("http://{}", backend.addr);
    c.ctl_json(1, &["group", "create", "--name", "g"]);
    c.ctl_json(
        1,
        &[
            "api",
            "create",
            "--group",
            "g",
            "--name",
            "sig",
            "--method",
            "GET",
            "--path",
            "/sig/{*rest}",
            "--backend",
            &b,
            "--auth-type",
            "APP",
        ],
    );
    c.ctl_json(1, &["api", "deploy", "--group", "g", "--name", "sig"]);
    let app = c.ctl_json(1, &["app", "create", "--name", "mobile"]);
    let (key, secret) = (
        app["app_key"].as_str().unwrap().to_string(),
        app["app_secret"].as_str().unwrap().to_string(),
    );
    c.ctl_json(
        1,
        &[
            "api",
            "authorize",
            "--group",
            "g",
            "--name",
            "sig",
            "--app",
            "mobile",
        ],
    );
    let addr = c.http_addr(1);
    let mut n = 0;
    let mut call = |signed: &'static str, sent: &'static str| {
        n += 1;
        let head = signed_head(&key, &secret, signed, sent, &format!("n-{n}"));
        let addr = addr.clone();
        async move { raw(&addr, &head).await }
    };
    eventually("a signed canonical call to pass", SETTLE, || {
        let r = call("/sig/x", "/sig/x");
        async move { r.await.starts_with("HTTP/1.1 200").then_some(()) }
    })
    .await;

    // Signed as sent, but not canonical: the gateway checks /sig/y, which was not signed.
    let r = call("/sig/./y", "/sig/./y").await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(r.contains("SignatureRejected"), "{r}");
    // Signed over the canonical form: passes, and the backend gets exactly that path.
    let r = call("/sig/y", "/sig/z/../y").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let paths: Vec<String> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths.last().map(String::as_str),
        Some("/sig/y"),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .all(|p| !p.contains("..") && !p.contains("/./")),
        "{paths:?}"
    );
}
