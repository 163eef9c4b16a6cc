//! Throttling policies on a real 3-node cluster: validation of limits and bindings, skewed
//! load against a per-second API limit and a per-minute user limit (admitted within the limit
//! cluster-wide), a special app's own limit, the three messages, and bind/unbind taking effect
//! on every node while traffic flows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::{Cluster, CtlOutput, binaries};

const SETTLE: Duration = Duration::from_secs(20);

fn refused(out: &CtlOutput, text: &str) {
    assert!(!out.success, "should be refused: {}", out.stdout);
    assert!(
        out.stderr.contains(text),
        "expected {text:?}, got {:?}",
        out.stderr
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One request (its own connection): the status, `X-Ca-Error-Message` and `Retry-After`.
async fn call(addr: &str, head: &str) -> (u16, String, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    (
        status,
        header("x-ca-error-message").unwrap_or_default(),
        header("retry-after"),
    )
}

fn unsigned(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
}

fn signed(key: &str, secret: &str, path: &str, nonce: &str) -> String {
    let mut req = signer::RequestParts::from_uri("GET", path);
    signer::Signer::new(key, secret).sign(&mut req, now_ms(), nonce);
    let mut head = format!(
        "GET {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n",
        req.path_and_query()
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "\r\n"
}

/// Offers calls at `rps` per node (80/10/10 of the total on nodes 1/2/3) for `for_how_long`,
/// and returns (window start -> admitted, refusal messages seen with their Retry-After).
async fn skewed(
    c: &Cluster,
    total_rps: f64,
    for_how_long: Duration,
    window_ms: u64,
    head: impl Fn(u64, u64) -> String + Send + Sync + Clone + 'static,
) -> (BTreeMap<u64, u64>, Vec<(String, Option<String>)>) {
    let mut tasks = Vec::new();
    for (node, part) in [(1u64, 0.8), (2, 0.1), (3, 0.1)] {
        let addr = c.http_addr(node);
        let head = head.clone();
        let period = Duration::from_secs_f64(1.0 / (total_rps * part));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let end = Instant::now() + for_how_long;
            let mut calls = Vec::new();
            let mut n = 0;
            let mut inflight = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let (addr, h) = (addr.clone(), head(node, n));
                inflight.spawn(async move {
                    let at = now_ms();
                    (at, call(&addr, &h).await)
                });
            }
            while let Some(r) = inflight.join_next().await {
                calls.push(r.unwrap());
            }
            calls
        }));
    }
    let mut admitted = BTreeMap::new();
    let mut refusals = Vec::new();
    for t in tasks {
        for (at, (status, message, retry)) in t.await.unwrap() {
            match status {
                200 => *admitted.entry(at / window_ms * window_ms).or_default() += 1,
                429 => refusals.push((message, retry)),
                other => panic!("unexpected status {other}"),
            }
        }
    }
    (admitted, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_limit_skewed_load_cluster_wide_and_bindings_change_live() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = testkit::http::Server::start("ok").await;
    let b = format!("http://{}", backend.addr);
    c.deploy_get_api("g", "open", &b, &[]);
    c.deploy_get_api("g", "signed", &b, &["--auth-type", "APP"]);
    let app = c.ctl_json(1, &["app", "create", "--name", "mobile"]);
    let key = app["app_key"].as_str().unwrap().to_string();
    let secret = app["app_secret"].as_str().unwrap().to_string();
    let authorize = [
        "api",
        "authorize",
        "--group",
        "g",
        "--name",
        "signed",
        "--app",
        "mobile",
    ];
    c.ctl_json(1, &authorize);

    // Validation names the field at fault; nothing is created.
    let create = |name: &str, extra: &[&str]| {
        let mut a = vec!["throttle", "create", "--name", name, "--unit", "second"];
        a.extend_from_slice(extra);
        c.ctl(1, &a)
    };
    refused(
        &create("bad", &["--api-limit", "10", "--user-limit", "20"]),
        "invalid user_limit",
    );
    refused(
        &create("bad", &["--api-limit", "10", "--app-limit", "11"]),
        "invalid app_limit",
    );
    refused(&create("bad", &["--api-limit", "0"]), "invalid api_limit");
    refused(
        &c.ctl(
            1,
            &[
                "throttle",
                "create",
                "--name",
                "bad",
                "--unit",
                "week",
                "--api-limit",
                "1",
            ],
        ),
        "week",
    );
    assert!(!c.ctl(1, &["throttle", "get", "--name", "bad"]).success);

    // A per-second API limit on the anonymous API, a per-minute user limit on the signed one.
    c.ctl_json(
        1,
        &[
            "throttle",
            "create",
            "--name",
            "persec",
            "--unit",
            "second",
            "--api-limit",
            "40",
        ],
    );
    let bind = |name: &str, api: &str| {
        c.ctl(
            1,
            &[
                "throttle", "bind", "--name", name, "--group", "g", "--api", api,
            ],
        )
    };
    refused(&bind("persec", "missing"), "not found");
    assert!(bind("persec", "open").success);
    refused(&bind("persec", "open"), "already exists");
    c.ctl_json(
        1,
        &[
            "throttle",
            "create",
            "--name",
            "permin",
            "--unit",
            "minute",
            "--api-limit",
            "1000",
            "--user-limit",
            "60",
        ],
    );
    assert!(bind("permin", "signed").success);
    let listed = c.ctl_json(3, &["throttle", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    refused(
        &c.ctl(1, &["throttle", "delete", "--name", "persec"]),
        "unbind them first",
    );

    // Every node enforces the binding before the load starts.
    for node in 1..=3 {
        let addr = c.http_addr(node);
        testkit::eventually("every node to throttle /open", SETTLE, || async {
            for _ in 0..200 {
                let (status, message, retry) = call(&addr, &unsigned("/open")).await;
                if status == 429 {
                    assert_eq!(message, "Throttled by API Flow Control");
                    assert!(retry.is_some(), "Retry-After on a 429");
                    return Some(());
                }
            }
            None
        })
        .await;
    }

    // 2x overload, 80/10/10: per second, the cluster admits about 40.
    let (admitted, refusals) = skewed(&c, 80.0, Duration::from_secs(6), 1000, |_, _| {
        unsigned("/open")
    })
    .await;
    let inner: Vec<u64> = admitted.values().copied().collect();
    // The first and last seconds are partial.
    let full = &inner[1..inner.len() - 1];
    assert!(!full.is_empty(), "{admitted:?}");
    for n in full {
        // The limit, with the burst tolerance of 3 nodes (50 ms of quota each) as slack.
        assert!(*n <= 40 + 6, "admitted {n} in a second: {admitted:?}");
    }
    let mean = full.iter().sum::<u64>() as f64 / full.len() as f64;
    assert!(mean >= 30.0, "the limit is used: {admitted:?}");
    assert!(
        refusals
            .iter()
            .all(|(m, _)| m == "Throttled by API Flow Control")
    );

    // The per-minute user limit: at most 60 signed calls admitted in a minute, whatever the
    // node; the refusals name the user limit.
    let (key2, secret2) = (key.clone(), secret.clone());
    let (admitted, refusals) = skewed(&c, 40.0, Duration::from_secs(4), 60_000, move |node, n| {
        signed(
            &key2,
            &secret2,
            "/signed",
            &format!("u-{node}-{n}-{}", now_ms()),
        )
    })
    .await;
    for (window, n) in &admitted {
        assert!(
            *n <= 60,
            "admitted {n} in the minute from {window}: {admitted:?}"
        );
    }
    assert!(admitted.values().sum::<u64>() >= 30, "{admitted:?}");
    assert!(
        refusals
            .iter()
            .any(|(m, r)| m == "Throttled by USER Flow Control" && r.is_some()),
        "{refusals:?}"
    );

    // A special app limit: the app limit is 1 a minute, this app's own is 5.
    c.ctl_json(
        1,
        &[
            "throttle",
            "create",
            "--name",
            "apps",
            "--unit",
            "minute",
            "--api-limit",
            "100",
            "--app-limit",
            "1",
        ],
    );
    c.ctl_json(
        1,
        &[
            "throttle", "special", "--name", "apps", "--app", &key, "--limit", "5",
        ],
    );
    c.ctl_json(
        1,
        &[
            "throttle", "unbind", "--name", "permin", "--group", "g", "--api", "signed",
        ],
    );
    assert!(bind("apps", "signed").success);
    let got = c.ctl_json(2, &["throttle", "get", "--name", "apps"]);
    assert_eq!(got["specials"][0]["limit"], 5, "{got}");
    let addr = c.http_addr(1);
    let mut by_window: BTreeMap<u64, u64> = BTreeMap::new();
    let mut app_refusal = false;
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline && !(app_refusal && by_window.values().any(|n| *n >= 2)) {
        let at = now_ms();
        let (status, message, _) =
            call(&addr, &signed(&key, &secret, "/signed", &format!("s-{at}"))).await;
        match status {
            200 => *by_window.entry(at / 60_000).or_default() += 1,
            429 => app_refusal |= message == "Throttled by APP Flow Control",
            other => panic!("status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app_refusal, "the app limit refused a call");
    assert!(by_window.values().all(|n| *n <= 5), "{by_window:?}");
    assert!(
        by_window.values().any(|n| *n >= 2),
        "more than the plain app limit: {by_window:?}"
    );

    // Unbinding takes effect on every node: no more refusals.
    c.ctl_json(
        1,
        &[
            "throttle", "unbind", "--name", "persec", "--group", "g", "--api", "open",
        ],
    );
    for node in 1..=3 {
        let addr = c.http_addr(node);
        testkit::eventually("every node to stop throttling /open", SETTLE, || async {
            for _ in 0..100 {
                if call(&addr, &unsigned("/open")).await.0 != 200 {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
    c.ctl_json(1, &["throttle", "delete", "--name", "persec"]);
    assert!(!c.ctl(1, &["throttle", "get", "--name", "persec"]).success);
}

/// Keep-alive GETs at `rps` to `addr` until `stop`; counts the 200s into `admitted`.
fn drive(
    addr: String,
    path: &'static str,
    rps: f64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    admitted: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
        let mut inflight = tokio::task::JoinSet::new();
        // Bounded however long the caller takes to say stop.
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Relaxed) && Instant::now() < end {
            tick.tick().await;
            let (client, admitted) = (client.clone(), admitted.clone());
            let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
            inflight.spawn(async move {
                let call = client.get(uri);
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), call).await
                    && r.status() == 200
                {
                    admitted.fetch_add(1, Relaxed);
                }
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    })
}

/// A node holding a lease of a minute window's budget is SIGKILLed: the survivors get its
/// unused lease back within the window (after `RECLAIM_AFTER_MS`), so the window's total
/// reaches the limit, and exceeds it by no more than what the dead node admitted after its
/// last report reached the coordinator (at most a report period of its demand).
///
/// The development clock is frozen inside one minute, so every call falls in the same window
/// however slow the machine; leases, reports and the reclaim run on the monotonic clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_lease_comes_back_within_the_window() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    const LIMIT: u64 = 1500;
    /// Node 3's offered rate: its lease is 0.5 to 1 s of it (LEASE_HORIZON_MS).
    const NODE3_RPS: f64 = 200.0;
    /// What node 3 may have admitted after its last report reached the coordinator: a report
    /// period (100 ms) of its demand, doubled for a late report on a busy machine.
    const SLACK: u64 = 40;

    let start = testkit::time::JAN_1 + 30_000;
    let (mut c, _clock) = Cluster::start_with_clock(binaries!(), 3, start, &[]).await;
    let backend = testkit::http::Server::start("ok").await;
    c.deploy_get_api("g", "m", &format!("http://{}", backend.addr), &[]);
    let limit = LIMIT.to_string();
    let create = [
        "throttle",
        "create",
        "--name",
        "permin",
        "--unit",
        "minute",
        "--api-limit",
        &limit,
    ];
    c.ctl_json(1, &create);
    let bind = [
        "throttle", "bind", "--name", "permin", "--group", "g", "--api", "m",
    ];
    assert!(c.ctl(1, &bind).success);
    c.wait_caught_up(1, &[2, 3]).await;
    // Bound on every node: the limit shows in each node's /metrics.
    for node in 1..=3 {
        let ops = c.ops_addr(node);
        testkit::eventually("the policy bound on every node", SETTLE, || async {
            let m = testkit::http::get(&ops, "/metrics").await?;
            m.body
                .contains(&format!("limit=\"api\",of=\"\"}} {LIMIT}"))
                .then_some(())
        })
        .await;
    }

    // Node 3 alone takes calls for 2 s: it holds a lease of about a second of its demand.
    let admitted = Arc::new(AtomicU64::new(0));
    let stop3 = Arc::new(AtomicBool::new(false));
    let node3 = drive(
        c.http_addr(3),
        "/m",
        NODE3_RPS,
        stop3.clone(),
        admitted.clone(),
    );
    testkit::eventually("node 3 to be granted a lease", SETTLE, || async {
        (admitted.load(Relaxed) >= 2 * NODE3_RPS as u64).then_some(())
    })
    .await;
    let before_kill = admitted.load(Relaxed);
    assert!(before_kill < LIMIT / 2, "{before_kill}");
    c.kill(3);
    let killed = Instant::now();
    stop3.store(true, Relaxed);
    node3.await.unwrap();

    // The survivors ask for twice what is left.
    let stop = Arc::new(AtomicBool::new(false));
    let survivors =
        [1, 2].map(|n| drive(c.http_addr(n), "/m", 200.0, stop.clone(), admitted.clone()));
    let deadline = killed + Duration::from_secs(15);
    while admitted.load(Relaxed) < LIMIT - 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reached_after = killed.elapsed();
    // Keep asking for a while: nothing more may be admitted beyond the slack.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    for s in survivors {
        s.await.unwrap();
    }
    let total = admitted.load(Relaxed);
    eprintln!(
        "admitted {total} of {LIMIT} ({before_kill} before the kill); {} after the kill in {reached_after:?}",
        total - before_kill
    );
    assert!(
        total >= LIMIT - 2,
        "the window admitted {total} of {LIMIT} ({before_kill} before the kill): the dead node's \
         lease did not come back within {reached_after:?}"
    );
    assert!(
        total <= LIMIT + SLACK,
        "the window admitted {total} of {LIMIT}: more than the dead node's unreported calls"
    );
    assert!(
        reached_after < Duration::from_secs(10),
        "the lease came back only after {reached_after:?}"
    );
}
