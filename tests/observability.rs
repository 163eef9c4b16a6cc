//! What an operator sees of a running node: the access log (its fields for a 200, a 404 and a
//! 429, and its rotation), the W3C trace context passed to backends, per-API latency
//! histograms, and a node log without warnings on a clean start and without a flood while a
//! peer is down. Real gatewayd processes on 127.0.0.1.

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::{Cluster, binaries, eventually, http};

const SETTLE: Duration = Duration::from_secs(20);
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

/// The access log's lines so far (the current file only).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The line of request `id`, waited for (the writer flushes every 100 ms).
async fn line_of(path: &Path, id: &str) -> Value {
    eventually(&format!("access log line of {id}"), SETTLE, || async {
        lines(path).into_iter().find(|l| l["request_id"] == id)
    })
    .await
}

/// A single node with an API `ping` (group `obs`) on `backend`, routable.
async fn node_with_api(extra: &[&str], backend: &http::Server) -> Cluster {
    let backend = format!("http://{}", backend.addr);
    Cluster::single_with_api(
        binaries!(),
        &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "obs",
        "ping",
        &backend,
    )
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_for_a_200_a_404_and_a_429_and_the_trace_reaches_the_backend() {
    let backend = http::Server::start("pong").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let c = node_with_api(
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--shared-ceiling-rps",
            "3",
        ],
        &backend,
    )
    .await;
    let addr = c.http_addr(1);
    let account = c.ctl_json(1, &["group", "get", "--name", "obs"])["account"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Let the limiter refill after the routability probes.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A 200, with the client's trace.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    let before = SystemTime::now();
    let ok = http::get_with(&addr, "/ping", &[("traceparent", &traceparent)])
        .await
        .expect("response");
    assert_eq!(ok.status, 200, "{ok:?}");
    let id = ok
        .header("x-ca-request-id")
        .expect("request id")
        .to_string();
    let l = line_of(&log, &id).await;
    assert_eq!(l["node"], 1);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/ping");
    assert_eq!(l["host"], addr.as_str());
    assert_eq!(l["group"], "obs");
    assert_eq!(l["api"], "ping");
    assert_eq!(l["stage"], "RELEASE");
    assert_eq!(l["account"], account.as_str());
    assert_eq!(l["app_key"], Value::Null);
    assert_eq!(l["status"], 200);
    assert_eq!(l["error_code"], Value::Null);
    assert_eq!(l["bytes_in"], 0);
    assert_eq!(l["bytes_out"], 4, "the body 'pong'");
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    let (backend_ms, total_ms) = (
        l["backend_ms"].as_f64().expect("backend_ms"),
        l["total_ms"].as_f64().expect("total_ms"),
    );
    assert!(backend_ms >= 0.0 && total_ms >= backend_ms, "{l}");
    // Which backend answered, and that it was the first one tried.
    assert_eq!(l["backend"], backend.addr.as_str());
    assert_eq!(l["backend_retried"], false);
    let time = l["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == 24,
        "RFC 3339 UTC with ms: {time}"
    );
    let since_epoch = before.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (y, rest) = time.split_at(4);
    assert!(
        y.parse::<u64>().unwrap() >= 1970 + since_epoch / 31_557_600 - 1,
        "{rest}"
    );
    // The trace: the client's trace id, this hop's own span id, which the backend sees as its
    // parent.
    assert_eq!(l["trace_id"], CLIENT_TRACE);
    let span = l["span_id"].as_str().unwrap().to_string();
    assert_ne!(span, CLIENT_PARENT);
    let seen = backend.received();
    let last = seen.last().expect("the backend got the request");
    assert_eq!(
        header(&last.headers, "traceparent"),
        Some(format!("00-{CLIENT_TRACE}-{span}-01").as_str())
    );
    // Without a traceparent, the gateway starts a trace.
    let fresh = http::get(&addr, "/ping").await.expect("response");
    if fresh.status == 200 {
        let seen = backend.received();
        let tp = header(&seen.last().unwrap().headers, "traceparent").expect("traceparent");
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(!tp.contains(CLIENT_TRACE));
    }

    // A 404.
    let missing = http::get(&addr, "/nope").await.expect("response");
    assert_eq!(missing.status, 404);
    let l = line_of(&log, missing.header("x-ca-request-id").unwrap()).await;
    assert_eq!(l["status"], 404);
    assert_eq!(l["error_code"], "ApiNotFound");
    assert_eq!(l["api"], Value::Null);
    assert_eq!(l["backend_ms"], Value::Null);
    assert_eq!(l["backend"], Value::Null);
    assert_eq!(l["path"], "/nope");
    assert!(
        l["bytes_out"].as_u64().unwrap() > 0,
        "the JSON error body: {l}"
    );

    // A 429: at 3 requests/s, a quick run of 20 is throttled.
    let mut throttled = None;
    for _ in 0..20 {
        let r = http::get(&addr, "/ping").await.expect("response");
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
    }
    let throttled = throttled.expect("a 429 among 20 requests at 3/s");
    let l = line_of(&log, throttled.header("x-ca-request-id").unwrap()).await;
    assert_eq!(l["status"], 429);
    assert_eq!(l["error_code"], "Throttled");
    assert_eq!(l["api"], "ping");
    assert_eq!(l["group"], "obs");
    assert_eq!(l["backend_ms"], Value::Null);

    // Metrics: nothing dropped, and the API's own latency histogram.
    let metrics = http::get(&c.ops_addr(1), "/metrics")
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("gateway_access_log_dropped_total 0"),
        "{metrics}"
    );
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "gateway_api_request_duration_seconds_count{group=\"obs\",api=\"ping\",stage=\"RELEASE\"}",
            )
        })
        .unwrap_or_else(|| panic!("no per-API histogram: {metrics}"));
    let n: f64 = count.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_files_rotate_at_the_size_limit_and_keep_n() {
    let backend = http::Server::start("pong").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let c = node_with_api(
        &[
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-max-bytes",
            "4096",
            "--access-log-keep",
            "2",
        ],
        &backend,
    )
    .await;
    let addr = c.http_addr(1);
    // ~450-byte lines: 60 requests fill several 4 KiB files.
    for _ in 0..60 {
        let r = http::get(&addr, "/ping").await.expect("response");
        assert_eq!(r.status, 200);
    }
    // The server threads' buffers are written one after the other (so lines of different
    // threads are in batches, not in time order): one more request after the writer's
    // interval is the current file's last line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http::get(&addr, "/ping").await.expect("response");
    let last = line_of(&log, r.header("x-ca-request-id").unwrap()).await;
    assert_eq!(last["status"], 200);
    let numbered = |n: usize| dir.path().join(format!("access.log.{n}"));
    for path in [log.clone(), numbered(1), numbered(2)] {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.len() <= 4096,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "whole lines only");
        for l in text.lines() {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
    }
    assert!(!numbered(3).exists(), "only 2 rotated files are kept");
    // The rotated files are full: each holds lines until the next would not fit.
    let first_rotated = std::fs::read_to_string(numbered(2)).unwrap();
    assert!(first_rotated.len() > 4096 - 600, "{}", first_rotated.len());
}

/// WARN lines in a node's log (ANSI-free: the log is not a terminal).
fn warnings(c: &Cluster, id: u64) -> Vec<String> {
    std::fs::read_to_string(c.nodes[&id].log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_logs_no_warning_and_a_dead_peer_is_logged_once_per_period() {
    // A single node.
    let mut one = Cluster::new(binaries!(), 1);
    one.spawn(1);
    one.wait_leader(SETTLE).await;
    // Three nodes.
    let mut three = Cluster::new(binaries!(), 3);
    for id in 1..=3 {
        three.spawn(id);
    }
    let leader = three.wait_leader(SETTLE).await;
    three.wait_caught_up(leader, &[1, 2, 3]).await;
    // What a node logs just after starting (the config publisher, the first demand reports)
    // has had time to appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(warnings(&one, 1), Vec::<String>::new());
    for id in 1..=3 {
        assert_eq!(warnings(&three, id), Vec::<String>::new(), "node {id}");
    }

    // A follower dies: the leader retries it several times a second, and logs it once.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    three.kill(follower);
    let started = Instant::now();
    let path = three.nodes[&leader].log_path();
    eventually("the leader to log the dead peer", SETTLE, || async {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("cannot reach peer")
            .then_some(())
    })
    .await;
    // A few seconds of retries (openraft backs off to ~2 a second) add no line.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_secs(1),
    )
    .await;
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("peer {follower}")))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("logged at most every 30 s"),
        "{}",
        lines[0]
    );
    assert!(!log.contains("openraft::replication"), "{log}");
}

/// Runs gatewayctl with `args` as given (no --endpoint added).
fn ctl_raw(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binaries!().gatewayctl)
        .args(args)
        .env_remove("GATEWAY_ENDPOINT")
        .env_remove("GATEWAY_TOKEN")
        .env_remove("GATEWAY_TOKEN_FILE")
        .env_remove("GATEWAY_TLS_CA")
        .output()
        .expect("run gatewayctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayctl_errors_name_the_endpoint_and_say_what_to_check() {
    let c = Cluster::start(binaries!(), 1).await;
    let node = &c.nodes[&1].ports;
    // Nothing listening.
    let dead = format!("http://127.0.0.1:{}", testkit_free_port());
    let (ok, _, err) = ctl_raw(&["--endpoint", &dead, "group", "list"]);
    assert!(!ok);
    assert!(
        err.contains(&format!("no gatewayd admin API at {dead}")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("is the node running?"), "{err}");
    assert!(!err.contains("transport error"), "{err}");
    // The data-plane port.
    let http = format!("http://127.0.0.1:{}", node.http);
    let (ok, _, err) = ctl_raw(&["--endpoint", &http, "group", "list"]);
    assert!(!ok);
    assert!(
        err.contains(&http) && err.contains("data-plane port"),
        "{err}"
    );
    assert!(!err.contains("compression flag"), "{err}");
    // The peer port.
    let peer = format!("http://127.0.0.1:{}", node.peer);
    let (ok, _, err) = ctl_raw(&["--endpoint", &peer, "group", "list"]);
    assert!(!ok);
    assert!(err.contains(&peer) && err.contains("peer port"), "{err}");

    // A negative amount: a value where it is valid, a clear refusal where it is not.
    let admin = c.admin_endpoint(1);
    c.ctl_json(1, &["account", "create", "--name", "acme"]);
    c.ctl_json(
        1,
        &["account", "recharge", "--name", "acme", "--amount", "10"],
    );
    let adjusted = c.ctl_json(
        1,
        &[
            "account",
            "adjust",
            "--name",
            "acme",
            "--amount",
            "-5",
            "--reason",
            "correction",
        ],
    );
    assert_eq!(adjusted["balance"], "5.00", "{adjusted}");
    let (ok, _, err) = ctl_raw(&[
        "--endpoint",
        &admin,
        "account",
        "recharge",
        "--name",
        "acme",
        "--amount",
        "-5",
    ]);
    assert!(!ok);
    assert!(
        err.contains("invalid --amount -5") && err.contains("account adjust"),
        "{err}"
    );

    // Times are RFC 3339 UTC, in tables and beside the milliseconds in JSON.
    c.ctl_json(1, &["group", "create", "--name", "timed"]);
    let g = c.ctl_json(1, &["group", "get", "--name", "timed"]);
    let human = g["created_at"].as_str().expect("created_at");
    assert!(
        human.len() == 20 && human.ends_with('Z') && human.as_bytes()[10] == b'T',
        "{g}"
    );
    assert!(g["created_at_ms"].as_u64().is_some(), "{g}");
    let tokens = c.ctl(1, &["account", "get", "--name", "acme"]);
    assert!(tokens.success, "{}", tokens.stderr);
    assert!(!tokens.stdout.contains("_ms"), "{}", tokens.stdout);
}

/// A port nothing listens on (bound, then released).
fn testkit_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn pricing_json_gives_money_as_strings_and_counts_hours_in_words() {
    let (ok, out, err) = ctl_raw(&[
        "pricing",
        "estimate",
        "--region",
        "cn-hangzhou",
        "--spec",
        "api.s1.small",
        "--hours",
        "1",
        "-o",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["total_usd"].is_string(), "{v}");
    let line = &v["line_items"][0];
    assert!(
        line["amount_usd"].is_string() && line["unit_price_usd"].is_string(),
        "{v}"
    );
    let description = line["description"].as_str().unwrap();
    assert!(description.contains("1 hour used"), "{description}");
    let (_, out, _) = ctl_raw(&[
        "pricing",
        "estimate",
        "--region",
        "cn-hangzhou",
        "--spec",
        "api.s1.small",
        "--hours",
        "2",
    ]);
    assert!(out.contains("2 hours used"), "{out}");
}
