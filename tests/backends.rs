//! Several backends per API, end to end: real gatewayd processes, real backend sockets on
//! 127.0.0.1 that the test opens, closes and opens again.
//!
//! Traffic goes through node 1 only: passive health is per node, and its `/metrics` say what
//! that node thinks of each backend. Every request loop is bounded in count and time; waits
//! poll with deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use testkit::ports::PortLease;
use testkit::{Cluster, binaries, eventually, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const ROUTABLE: Duration = Duration::from_secs(10);
/// Long enough for a few back-off periods (1 s, 2 s, 4 s) to pass on a loaded machine.
const COMES_BACK: Duration = Duration::from_secs(40);

/// A backend that answers every request `200` with its name, counts them, and can be killed
/// (listener and every connection closed) and started again on the same port.
struct Backend {
    port: u16,
    name: &'static str,
    hits: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The connections' tasks, ended (and waited for) by [`kill`](Self::kill).
    conns: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let lease = PortLease::take();
        let mut b = Backend {
            port: lease.port(),
            name,
            hits: Arc::new(AtomicU64::new(0)),
            task: None,
            conns: Arc::default(),
        };
        b.revive().await;
        b
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Closes the listener and every connection, and waits until they are closed: the
    /// gateway's next connect is refused (not accepted into a backlog that is about to go).
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.conns.lock().await.shutdown().await;
    }

    async fn revive(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind backend");
        let (hits, name, conns) = (self.hits.clone(), self.name, self.conns.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                conns.lock().await.spawn(serve(sock, name, hits.clone()));
            }
        }));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Ok(mut conns) = self.conns.try_lock() {
            conns.abort_all();
        }
    }
}

async fn serve(mut sock: TcpStream, name: &'static str, hits: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    loop {
        // Heads only, and bodies by Content-Length.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + len);
        hits.fetch_add(1, Relaxed);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `METHOD path` (a POST with a small body) on a fresh connection (`Connection: close`): the status.
async fn send(addr: &str, method: &str, path: &str) -> Option<u16> {
    let fut = async {
        let mut sock = TcpStream::connect(addr).await.ok()?;
        // A body only where one belongs: a GET with a body is not retried.
        let body = if method == "POST" { "hi" } else { "" };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        sock.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// One per-backend metric of node 1, or `None` if it has no such line.
async fn metric(c: &Cluster, name: &str, group: &str, api: &str, url: &str) -> Option<f64> {
    let m = http::get(&c.ops_addr(1), "/metrics").await?;
    let prefix = format!("{name}{{group=\"{group}\",api=\"{api}\",backend=\"{url}\"}} ");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// `doc` with its `backends:` list emptied.
fn without_backends(doc: &str) -> String {
    let mut out = String::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("- http://127.0.0.1:700") {
            continue;
        }
        out.push_str(line);
        if line.trim_end().ends_with("backends:") {
            out.push_str(" []");
        }
        out.push('\n');
    }
    out
}

/// Deploys `GET /name` in group `g` on `backends`.
fn deploy(c: &Cluster, name: &str, backends: &[String]) {
    let mut extra = Vec::new();
    for b in &backends[1..] {
        extra.push("--backend");
        extra.push(b.as_str());
    }
    c.deploy_get_api("g", name, &backends[0], &extra);
}

async fn routable(c: &Cluster, path: &str) {
    let addr = c.http_addr(1);
    eventually(&format!("{path} routable"), ROUTABLE, || async {
        http::get(&addr, path).await.filter(|r| r.status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_share_by_weight_are_taken_out_and_let_back_in_and_connect_failures_retry() {
    let c = Cluster::start(binaries!(), 3).await;
    let addr = c.http_addr(1);

    // Weights 3:1 over 400 calls (a round is 4 calls on each server thread).
    let heavy = Backend::start("heavy").await;
    let light = Backend::start("light").await;
    deploy(&c, "w", &[format!("{}@3", heavy.url()), light.url()]);
    routable(&c, "/w").await;
    let (h0, l0) = (heavy.hits(), light.hits());
    for _ in 0..400 {
        let r = http::get(&addr, "/w").await.expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let (h, l) = (heavy.hits() - h0, light.hits() - l0);
    eprintln!("weights 3:1 over 400 calls: {h} and {l}");
    assert_eq!(h + l, 400);
    assert!(
        (280..=320).contains(&h),
        "heavy got {h}, light {l}: not 3:1"
    );

    // A backend killed: its calls fail to connect, are retried on the other (the client sees
    // 200 every time), and after 3 failures in a row it is taken out.
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (a_url, b_url) = (a.url(), b.url());
    deploy(&c, "k", &[a_url.clone(), b_url.clone()]);
    routable(&c, "/k").await;
    assert_eq!(
        metric(&c, "gateway_backend_available", "g", "k", &a_url).await,
        Some(1.0)
    );
    a.kill().await;
    for i in 0..40 {
        let r = http::get(&addr, "/k").await.expect("answer");
        assert_eq!((i, r.status, r.body.as_str()), (i, 200, "b"), "{r:?}");
    }
    assert_eq!(
        metric(&c, "gateway_backend_available", "g", "k", &a_url).await,
        Some(0.0)
    );
    assert!(metric(&c, "gateway_backend_ejections_total", "g", "k", &a_url).await >= Some(1.0));
    assert!(metric(&c, "gateway_backend_failures_total", "g", "k", &a_url).await >= Some(3.0));
    let retried = metric(&c, "gateway_backend_retries_total", "g", "k", &b_url)
        .await
        .unwrap();
    assert!(retried >= 1.0, "no retry counted on b");
    // Out: the next calls go to b without trying a (at most a probe per back-off period).
    let b0 = b.hits();
    for _ in 0..20 {
        assert_eq!(http::get(&addr, "/k").await.expect("answer").status, 200);
    }
    assert_eq!(b.hits() - b0, 20);
    let after = metric(&c, "gateway_backend_retries_total", "g", "k", &b_url)
        .await
        .unwrap();
    // Without ejection half of them would have been retries.
    assert!(
        after - retried < 5.0,
        "a was still tried: {retried} -> {after}"
    );

    // Back: after its back-off a probe finds it answering, and it takes calls again.
    a.revive().await;
    let a0 = a.hits();
    eventually("a taking calls again", COMES_BACK, || async {
        let r = http::get(&addr, "/k").await?;
        assert_eq!(r.status, 200);
        (a.hits() > a0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&c, "gateway_backend_available", "g", "k", &a_url).await,
        Some(1.0)
    );
    let a1 = a.hits();
    for _ in 0..20 {
        assert_eq!(http::get(&addr, "/k").await.expect("answer").status, 200);
    }
    assert!(
        a.hits() - a1 >= 8,
        "a is back but got {} of 20",
        a.hits() - a1
    );

    // Nothing listens on `dead`: a GET that picks it is retried on the live one; a POST is not.
    let dead = PortLease::take();
    let dead_url = format!("http://127.0.0.1:{}", dead.port());
    let live = Backend::start("live").await;
    deploy(&c, "r", &[dead_url.clone(), live.url()]);
    routable(&c, "/r").await;
    for _ in 0..10 {
        assert_eq!(send(&addr, "GET", "/r").await, Some(200));
    }
    assert!(metric(&c, "gateway_backend_retries_total", "g", "r", &live.url()).await >= Some(1.0));

    let post = [
        "api",
        "create",
        "--group",
        "g",
        "--name",
        "p",
        "--method",
        "POST",
        "--path",
        "/p",
        "--backend",
        &dead_url,
        "--backend",
        &live.url(),
    ];
    c.ctl_json(1, &post);
    c.ctl_json(1, &["api", "deploy", "--group", "g", "--name", "p"]);
    // Each server thread's first pick is the first backend: some POST meets the dead one.
    let first = eventually("POST /p routable", ROUTABLE, || async {
        send(&addr, "POST", "/p").await.filter(|s| *s != 404)
    })
    .await;
    let mut statuses = vec![first];
    for _ in 0..12 {
        statuses.push(send(&addr, "POST", "/p").await.expect("answer"));
    }
    let (mut bad, mut good) = (0, 0);
    for s in &statuses {
        match s {
            502 => bad += 1,
            200 => good += 1,
            other => panic!("unexpected {other} in {statuses:?}"),
        }
    }
    assert!(
        bad >= 1 && good >= 1,
        "a POST was retried or never sent: {statuses:?}"
    );
    assert_eq!(
        metric(&c, "gateway_backend_retries_total", "g", "p", &live.url()).await,
        Some(0.0),
        "{statuses:?}"
    );
}

/// `--backend-eject-after` and `--backend-eject-min-ms` set when a backend is taken out and
/// for how long (by default: after 3 failures in a row, for 1 s at first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ejection_thresholds_are_flags() {
    let mut c = Cluster::new(binaries!(), 1);
    c.extra_args = [
        "--backend-eject-after",
        "1",
        "--backend-eject-min-ms",
        "600000",
        // One server thread: one round-robin, so the first call goes to the first backend.
        "--http-threads",
        "1",
    ]
    .map(String::from)
    .to_vec();
    c.spawn(1);
    c.wait_leader(ROUTABLE).await;
    let addr = c.http_addr(1);
    let dead = PortLease::take();
    let dead_url = format!("http://127.0.0.1:{}", dead.port());
    let live = Backend::start("live").await;
    deploy(&c, "e", &[dead_url.clone(), live.url()]);
    routable(&c, "/e").await;
    for _ in 0..20 {
        assert_eq!(send(&addr, "GET", "/e").await, Some(200));
    }
    // Out after its first failure (the default needs three), and still out ten minutes' worth
    // of back-off later: every other call went to the live one without trying it.
    let failures = metric(&c, "gateway_backend_failures_total", "g", "e", &dead_url).await;
    let ejections = metric(&c, "gateway_backend_ejections_total", "g", "e", &dead_url).await;
    let available = metric(&c, "gateway_backend_available", "g", "e", &dead_url).await;
    assert_eq!(
        (failures, ejections, available),
        (Some(1.0), Some(1.0), Some(0.0)),
        "failures, ejections, available"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_lists_are_validated_naming_the_field_and_round_trip_through_export_and_apply() {
    let c = Cluster::start(binaries!(), 1).await;
    let _ = c.ctl(1, &["group", "create", "--name", "v"]);
    let create = |backends: &[&str]| {
        let mut args = vec![
            "api", "create", "--group", "v", "--name", "x", "--method", "GET", "--path", "/x",
        ];
        for b in backends {
            args.extend(["--backend", b]);
        }
        c.ctl(1, &args)
    };
    for (backends, expected) in [
        (
            &[
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3@0",
            ][..],
            "invalid backends[2].weight: must be 1..=1000",
        ),
        (
            &["http://127.0.0.1:1@1001", "http://127.0.0.1:2"][..],
            "invalid backends[0].weight: must be 1..=1000",
        ),
        (
            &["http://127.0.0.1:1", "http://127.0.0.1:1@2"][..],
            "invalid backends[1].url: 'http://127.0.0.1:1' is already backends[0]",
        ),
        (
            &["http://127.0.0.1:1", "ftp://x"][..],
            "invalid backends[1].url",
        ),
    ] {
        let out = create(backends);
        assert!(!out.success, "{backends:?} accepted");
        assert!(
            out.stderr.contains(expected),
            "{expected:?} in {}",
            out.stderr
        );
    }
    let out = create(&["http://127.0.0.1:1@heavy"]);
    assert!(
        !out.success && out.stderr.contains("weight after '@' must be a number"),
        "{}",
        out.stderr
    );

    // Created with two, updated (the same checks), exported, applied back.
    assert!(create(&["http://127.0.0.1:7001@3", "http://127.0.0.1:7002"]).success);
    let update = c.ctl(
        1,
        &[
            "api",
            "update",
            "--group",
            "v",
            "--name",
            "x",
            "--method",
            "GET",
            "--path",
            "/x",
            "--backend",
            "http://127.0.0.1:7001",
            "--backend",
            "http://127.0.0.1:7001",
        ],
    );
    assert!(
        !update.success && update.stderr.contains("backends[1].url"),
        "{}",
        update.stderr
    );
    let got = c.ctl_json(1, &["api", "get", "--group", "v", "--name", "x"]);
    let backends = &got["definition"]["backends"];
    assert_eq!(backends[0]["url"], "http://127.0.0.1:7001");
    assert_eq!(backends[0]["weight"], 3);
    assert_eq!(backends[1]["weight"], 1);

    let exported = c.ctl(1, &["export"]).stdout;
    assert!(
        exported.contains("- http://127.0.0.1:7001@3\n")
            && exported.contains("- http://127.0.0.1:7002\n"),
        "{exported}"
    );
    let file = c.dir().join("backends.yaml");
    std::fs::write(&file, &exported).unwrap();
    let file = file.to_str().unwrap();
    let out = c.ctl(1, &["apply", "-f", file]);
    assert!(out.success && out.stdout.contains("no changes"), "{out:?}");

    // Weights changed in the document: applied, and exported as written.
    let edited = exported.replace("7001@3", "7001@5");
    std::fs::write(file, &edited).unwrap();
    let out = c.ctl(1, &["apply", "-f", file]);
    assert!(out.success, "{out:?}");
    assert_eq!(c.ctl(1, &["export"]).stdout, edited);

    // The same checks on apply, named under the API; an empty list too.
    for (doc, expected) in [
        (
            edited.replace("7001@5", "7001@1001"),
            "api v/x: invalid backends[0].weight",
        ),
        (
            edited.replace("7002\n", "7001\n"),
            "api v/x: invalid backends[1].url",
        ),
        (
            without_backends(&edited),
            "api v/x: invalid backends: at least one backend is required",
        ),
    ] {
        std::fs::write(file, &doc).unwrap();
        let out = c.ctl(1, &["apply", "-f", file]);
        assert!(!out.success, "{doc}");
        assert!(
            out.stderr.contains(expected),
            "{expected:?} in {}",
            out.stderr
        );
    }
    assert_eq!(c.ctl(1, &["export"]).stdout, edited);
}
