//! Metering, billing and the account lifecycle on a real 3-node cluster, with time driven by
//! a development clock file that every node reads (`--dev-mode --dev-clock-file`), so that
//! months of daily cycles pass in seconds.

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::http::{Response, Server};
use testkit::{Cluster, DevClock, binaries, eventually};

const SETTLE: Duration = Duration::from_secs(20);
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// 2026-01-01T00:00:00Z.
const JAN_1: u64 = 1_767_225_600_000;

/// Requests sent through the gateway that got a response: each is a call the gateway received.
#[derive(Default)]
struct Traffic(AtomicU64);

impl Traffic {
    async fn get(&self, addr: &str, path: &str) -> Option<Response> {
        let r = testkit::http::get(addr, path).await;
        if r.is_some() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn sent(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A cluster whose nodes take their time from a file.
async fn cluster_with_clock(start_ms: u64) -> (Cluster, DevClock) {
    let mut c = Cluster::new(binaries!(), 3);
    let clock = DevClock(c.dir().join("clock"));
    clock.set(start_ms);
    c.extra_args = clock.node_args();
    c.extra_args.extend([
        "--usage-flush-ms".into(),
        "100".into(),
        "--shared-region".into(),
        "cn-hangzhou".into(),
    ]);
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    (c, clock)
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    c.ctl_json(via, args)
}

/// Sets up account `acme` with a webhook, a group on the shared instance with one deployed API.
async fn setup_api(c: &Cluster, t: &Traffic, backend: &Server, webhook: &Server) {
    let hook = format!("http://{}/hook", webhook.addr);
    ok(
        c,
        1,
        &["account", "create", "--name", "acme", "--webhook", &hook],
    );
    ok(
        c,
        2,
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
    ok(
        c,
        3,
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
    ok(
        c,
        1,
        &["api", "deploy", "--group", "shop", "--name", "item"],
    );
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
}

/// Sends `n` requests spread over the nodes; returns how many of each status came back.
async fn send(c: &Cluster, t: &Traffic, n: usize) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for i in 0..n {
        let r = t
            .get(
                &c.http_addr(1 + (i as u64 % 3)),
                &format!("/shop/items/{i}"),
            )
            .await;
        match r.map(|r| r.status) {
            Some(200) => ok += 1,
            Some(_) => refused += 1,
            None => panic!("request {i} got no response"),
        }
    }
    (ok, refused)
}

fn account(c: &Cluster, via: u64) -> Value {
    ok(c, via, &["account", "get", "--name", "acme"])
}

fn metered_calls(c: &Cluster, via: u64) -> u64 {
    let rows = ok(c, via, &["usage", "--account", "acme"]);
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["calls"].as_u64().unwrap())
        .sum()
}

/// Every bill of `acme`, read a page at a time.
fn bills(c: &Cluster, via: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let mut args = vec!["bill", "list", "--account", "acme", "--limit", "50"];
        if !after.is_empty() {
            args.extend(["--after", after.as_str()]);
        }
        let page = ok(c, via, &args);
        all.extend(page["bills"].as_array().unwrap().iter().cloned());
        match page["next_after_day"].as_str() {
            Some(next) => after = next.to_string(),
            None => return all,
        }
    }
}

/// The kinds of event the webhook has received, in order.
fn webhook_kinds(hook: &Server) -> Vec<String> {
    let mut kinds = Vec::new();
    for r in hook.received() {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        for e in v["events"].as_array().unwrap() {
            kinds.push(e["event"]["event"].as_str().unwrap().to_string());
        }
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_cycles_bills_suspends_restores_and_purges() {
    let (mut c, clock) = cluster_with_clock(JAN_1 + HOUR_MS).await;
    let backend = Server::start("item").await;
    let hook = Server::start("ok").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend, &hook).await;
    // A pay-as-you-go api.s1.small in cn-hangzhou: 0.87 an hour, 20.88 a full day.
    ok(
        &c,
        1,
        &["account", "recharge", "--name", "acme", "--amount", "30"],
    );
    ok(
        &c,
        2,
        &[
            "instance",
            "create",
            "--name",
            "ded",
            "--spec",
            "api.s1.small",
            "--region",
            "cn-hangzhou",
            "--account",
            "acme",
        ],
    );

    // Day 1: traffic is metered.
    let (sent_ok, _) = send(&c, &t, 90).await;
    assert_eq!(sent_ok, 90);
    eventually("usage to be metered", SETTLE, || async {
        (metered_calls(&c, 2) == t.sent()).then_some(())
    })
    .await;

    // Day 1 closes at 01:00 on day 2: 23 started hours (the instance came at 01:00) = 20.01.
    clock.set(JAN_1 + DAY_MS + HOUR_MS + 1);
    let b = eventually("the first bill", SETTLE, || async {
        bills(&c, 3).first().cloned()
    })
    .await;
    assert_eq!(b["day"], "2026-01-01");
    let instance_line = b["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"].as_str().unwrap().starts_with("Instance ded"))
        .cloned()
        .unwrap();
    assert_eq!(instance_line["amount"], "20.01");
    // The balance (about 10) will not cover seven more days: the overdue alert goes out.
    eventually("the overdue alert on the webhook", SETTLE, || async {
        webhook_kinds(&hook)
            .contains(&"overdue_alert".to_string())
            .then_some(())
    })
    .await;
    // The leader sent the alert once it had applied the bill; node 1 may be a follower.
    let leader = c.wait_leader(SETTLE).await;
    c.wait_caught_up(leader, &[1]).await;
    assert_eq!(account(&c, 1)["state"], "overdue");

    // Day 2 closes, and the leader is killed as it happens: the new leader bills nothing twice.
    let leader = c.wait_leader(SETTLE).await;
    clock.set(JAN_1 + 2 * DAY_MS + HOUR_MS + 1);
    c.kill(leader);
    let survivor = if leader == 1 { 2 } else { 1 };
    eventually("the account to be suspended", SETTLE, || async {
        (account(&c, survivor)["state"] == "suspended").then_some(())
    })
    .await;
    c.spawn(leader);
    c.wait_leader(SETTLE).await;
    let all = bills(&c, survivor);
    let days: Vec<&str> = all.iter().map(|b| b["day"].as_str().unwrap()).collect();
    assert_eq!(
        days,
        ["2026-01-01", "2026-01-02"],
        "each day billed exactly once"
    );
    let total: f64 = all
        .iter()
        .map(|b| b["total"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    let balance: f64 = account(&c, survivor)["balance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (30.0 - total - balance).abs() < 1e-9,
        "balance {balance} = 30 - bills {total}"
    );

    // Suspended: API calls fail with the account's own error, not a 5xx; management works.
    for id in 1..=3 {
        let addr = c.http_addr(id);
        let r = eventually(
            &format!("node {id} to refuse the suspended account"),
            SETTLE,
            || async {
                t.get(&addr, "/shop/items/7")
                    .await
                    .filter(|r| r.status == 403)
            },
        )
        .await;
        assert!(r.body.contains("AccountSuspended"), "{}", r.body);
        assert!(
            r.header("x-ca-error-message")
                .unwrap()
                .contains("suspended")
        );
    }
    ok(
        &c,
        3,
        &[
            "api",
            "create",
            "--group",
            "shop",
            "--name",
            "other",
            "--method",
            "GET",
            "--path",
            "/other",
            "--backend",
            &format!("http://{}", backend.addr),
        ],
    );

    // A recharge that covers what is owed restores service on every node within a second.
    let recharged = Instant::now();
    ok(
        &c,
        1,
        &["account", "recharge", "--name", "acme", "--amount", "25"],
    );
    for id in 1..=3 {
        let addr = c.http_addr(id);
        eventually(
            &format!("node {id} to serve again"),
            Duration::from_secs(1),
            || async {
                t.get(&addr, "/shop/items/8")
                    .await
                    .filter(|r| r.status == 200)
            },
        )
        .await;
    }
    eprintln!(
        "restored on every node {:?} after the recharge returned",
        recharged.elapsed()
    );
    assert!(webhook_kinds(&hook).contains(&"suspended".to_string()));

    // Every request sent was metered (the refused ones too), across nodes, and none twice.
    eventually("all calls metered", SETTLE, || async {
        let m = metered_calls(&c, 2);
        assert!(m <= t.sent(), "metered {m} calls, sent {}", t.sent());
        (m == t.sent()).then_some(m)
    })
    .await;

    // Two more days suspend it again; six months later the configuration is purged, after a
    // warning.
    clock.set(JAN_1 + 4 * DAY_MS + HOUR_MS + 1);
    let suspended_at = eventually("a second suspension", SETTLE, || async {
        let a = account(&c, 2);
        (a["state"] == "suspended").then(|| a["suspended_at_ms"].as_u64().unwrap())
    })
    .await;
    let purge_at = account(&c, 2)["purge_at_ms"].as_u64().unwrap();
    assert!(purge_at >= suspended_at + 180 * DAY_MS);
    clock.set(purge_at - 3 * DAY_MS);
    eventually("the purge warning", SETTLE, || async {
        webhook_kinds(&hook)
            .contains(&"purge_warning".to_string())
            .then_some(())
    })
    .await;
    assert_eq!(
        ok(&c, 1, &["group", "list"]).as_array().unwrap().len(),
        1,
        "not purged before its time"
    );
    clock.set(purge_at + 8 * DAY_MS);
    eventually("the purge", SETTLE, || async {
        (account(&c, 3)["state"] == "purged").then_some(())
    })
    .await;
    assert!(
        ok(&c, 3, &["group", "list"]).as_array().unwrap().is_empty(),
        "the API configuration is gone"
    );
    eventually("the purge notification", SETTLE, || async {
        webhook_kinds(&hook)
            .contains(&"purged".to_string())
            .then_some(())
    })
    .await;
    let kinds = webhook_kinds(&hook);
    let warn = kinds.iter().position(|k| k == "purge_warning").unwrap();
    let purged = kinds.iter().position(|k| k == "purged").unwrap();
    assert!(warn < purged);
    // The leader catches up on every cycle since, one day at a time and none twice.
    let days: Vec<String> = eventually("every cycle to be closed", SETTLE, || async {
        let days: Vec<String> = bills(&c, 1)
            .iter()
            .map(|b| b["day"].as_str().unwrap().to_string())
            .collect();
        (days.len() as u64 == (purge_at + 8 * DAY_MS - HOUR_MS) / DAY_MS - JAN_1 / DAY_MS)
            .then_some(days)
    })
    .await;
    let mut unique = days.clone();
    unique.dedup();
    assert_eq!(days, unique);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_calls_equal_requests_sent_across_a_sigterm_restart() {
    let (mut c, _clock) = cluster_with_clock(JAN_1 + HOUR_MS).await;
    let backend = Server::start("item").await;
    let hook = Server::start("ok").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend, &hook).await;
    assert_eq!(send(&c, &t, 60).await.0, 60);
    // Node 2 leaves with SIGTERM: it flushes what it counted before exiting.
    assert!(
        c.terminate(2, Duration::from_secs(20)),
        "node 2 exits cleanly on SIGTERM"
    );
    c.spawn(2);
    c.wait_leader(SETTLE).await;
    let addr = c.http_addr(2);
    eventually("node 2 to serve again", SETTLE, || async {
        t.get(&addr, "/shop/items/1")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(send(&c, &t, 60).await.0, 60);
    assert!(c.terminate(2, Duration::from_secs(20)));
    let want = t.sent();
    eventually(&format!("{want} metered calls"), SETTLE, || async {
        let m = metered_calls(&c, 1);
        assert!(m <= want, "metered {m} calls but sent only {want}");
        (m == want).then_some(())
    })
    .await;
}
