//! Usage journalling on a real 3-node cluster with the development clock: calls are billed on
//! the day they arrived, and calls a node answered survive its SIGKILL and reach the bill
//! exactly once.

use serde_json::Value;
use std::time::Duration;
use testkit::http::{Server, Traffic};
use testkit::time::{DAY_MS, HOUR_MS, JAN_1};
use testkit::{Cluster, DevClock, binaries, eventually};

const SETTLE: Duration = Duration::from_secs(30);

async fn cluster_with_clock(start_ms: u64, extra: &[&str]) -> (Cluster, DevClock) {
    Cluster::start_with_clock(binaries!(), 3, start_ms, extra).await
}

/// Account `acme` with API `GET /shop/items/{id}` on the shared instance, routable on every
/// node; then waits until the calls this made are metered.
async fn setup_api(c: &Cluster, t: &Traffic, backend: &Server) {
    c.ctl_json(1, &["account", "create", "--name", "acme"]);
    c.ctl_json(
        1,
        &[
            "group",
            "create",
            "--name",
            "shop",
            "--account",
            "acme",
            "--base-path",
            "/shop",
        ],
    );
    let backend_url = format!("http://{}", backend.addr);
    c.ctl_json(
        1,
        &[
            "api",
            "create",
            "--group",
            "shop",
            "--name",
            "item",
            "--method",
            "GET",
            "--path",
            "/items/{id}",
            "--backend",
            &backend_url,
        ],
    );
    c.ctl_json(1, &["api", "deploy", "--group", "shop", "--name", "item"]);
    for id in 1..=3 {
        let addr = c.http_addr(id);
        eventually(
            &format!("the API to be routable on node {id}"),
            SETTLE,
            || async {
                t.get(&addr, "/shop/items/1")
                    .await
                    .filter(|r| r.status == 200)
            },
        )
        .await;
    }
    eventually("the setup's calls to be metered", SETTLE, || async {
        (metered_calls(c) == t.sent()).then_some(())
    })
    .await;
}

/// Sends `n` calls to each of `nodes` in turn; every one must be answered 200.
async fn send(c: &Cluster, t: &Traffic, nodes: &[u64], n: usize) {
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let r = t.get(&c.http_addr(node), &format!("/shop/items/{i}")).await;
        assert_eq!(
            r.map(|r| r.status),
            Some(200),
            "call {i} through node {node}"
        );
    }
}

/// Calls metered on the days not billed yet.
fn metered_calls(c: &Cluster) -> u64 {
    c.ctl_json(1, &["usage", "--account", "acme"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["calls"].as_u64().unwrap())
        .sum()
}

/// The calls billed on `acme`'s bill of `day` (YYYY-MM-DD), once the bill is issued.
async fn billed_calls(c: &Cluster, day: &str) -> u64 {
    let bill: Value = eventually(&format!("the bill of {day}"), SETTLE, || async {
        let page = c.ctl_json(1, &["bill", "list", "--account", "acme", "--limit", "100"]);
        page["bills"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["day"] == day)
            .cloned()
    })
    .await;
    let lines = bill["lines"].as_array().unwrap();
    let Some(line) = lines
        .iter()
        .find(|l| l["item"].as_str().unwrap().starts_with("API calls"))
    else {
        return 0;
    };
    // "N calls (M earlier this month)".
    let quantity = line["quantity"].as_str().unwrap();
    quantity
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count in {quantity:?}"))
}

/// A counter of node `id`'s `/metrics`.
async fn metric(c: &Cluster, id: u64, name: &str) -> Option<u64> {
    let r = testkit::http::get(&c.ops_addr(id), "/metrics").await?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_at_23_59_59_9_is_billed_on_that_day() {
    // Commits only every 2 s: calls made just before midnight are committed after it.
    let (c, clock) = cluster_with_clock(JAN_1 + HOUR_MS, &["--usage-flush-ms", "2000"]).await;
    let backend = Server::start("item").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend).await;
    let before = t.sent();
    // 2026-01-01T23:59:59.900Z: six calls, two through each node; then midnight passes.
    clock.set(JAN_1 + DAY_MS - 100);
    send(&c, &t, &[1, 2, 3], 6).await;
    clock.set(JAN_1 + DAY_MS + 500);
    send(&c, &t, &[1, 2, 3], 4).await;
    // Both days end and their bill delay (an hour) passes.
    clock.set(JAN_1 + 2 * DAY_MS + HOUR_MS + 1);
    assert_eq!(billed_calls(&c, "2026-01-01").await, before + 6);
    assert_eq!(billed_calls(&c, "2026-01-02").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_node_answered_before_its_sigkill_are_billed_once_after_its_restart() {
    let (mut c, clock) = cluster_with_clock(JAN_1 + HOUR_MS, &["--usage-flush-ms", "3000"]).await;
    let backend = Server::start("item").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend).await;
    let leader = c.wait_leader(SETTLE).await;
    let victim = if leader == 2 { 3 } else { 2 };
    // Calls through the victim until it is killed with some of them journalled but not yet
    // committed (it commits every 3 s; a round takes well under a second).
    let mut killed = false;
    for _round in 0..5 {
        let journalled = "gateway_usage_journalled_calls_total";
        let start = metric(&c, victim, journalled).await.expect("metrics");
        send(&c, &t, &[victim], 20).await;
        eventually("the calls to be journalled", SETTLE, || async {
            (metric(&c, victim, journalled).await? >= start + 20).then_some(())
        })
        .await;
        let committed = metric(&c, victim, "gateway_usage_committed_calls_total")
            .await
            .expect("metrics");
        if committed < start + 20 {
            c.kill(victim);
            killed = true;
            break;
        }
    }
    assert!(killed, "never caught node {victim} with uncommitted calls");
    // The day ends and its bill is due, but it waits for the node that is down.
    clock.set(JAN_1 + DAY_MS + HOUR_MS + 1);
    let live: Vec<u64> = (1..=3).filter(|n| *n != victim).collect();
    eventually(
        "the leader to wait for the killed node's usage",
        SETTLE,
        || async {
            live.iter()
                .any(|n| {
                    c.log_tail(*n, 200).lines().any(|l| {
                        l.contains("the day's bill waits for these nodes' usage")
                            && l.contains(&format!("missing=[{victim}]"))
                    })
                })
                .then_some(())
        },
    )
    .await;
    c.spawn(victim);
    // Every call answered is on the day's bill, once.
    assert_eq!(billed_calls(&c, "2026-01-01").await, t.sent());
}
