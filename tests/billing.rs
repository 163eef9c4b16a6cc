//! Metering, billing and the account lifecycle on a real 3-node cluster, with time driven by
//! a development clock file that every node reads (`--dev-mode --dev-clock-file`), so that
//! months of daily cycles pass in seconds.

use serde_json::Value;
use std::time::{Duration, Instant};
use testkit::http::{Server, Traffic};
use testkit::time::{DAY_MS, HOUR_MS, JAN_1};
use testkit::{Cluster, DevClock, binaries, eventually};

const SETTLE: Duration = Duration::from_secs(20);

/// A cluster whose nodes take their time from a file.
async fn cluster_with_clock(start_ms: u64) -> (Cluster, DevClock) {
    let extra = ["--usage-flush-ms", "100", "--shared-region", "cn-hangzhou"];
    Cluster::start_with_clock(binaries!(), 3, start_ms, &extra).await
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
    // The day's bill waits for every node's usage of the day (or --usage-grace-seconds), so
    // the killed node comes back before the day can close.
    c.spawn(leader);
    eventually("the account to be suspended", SETTLE, || async {
        (account(&c, survivor)["state"] == "suspended").then_some(())
    })
    .await;
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

/// `gatewayctl ARGS` through node `via`, which must fail; returns its error output.
fn refused(c: &Cluster, via: u64, args: &[&str]) -> String {
    let out = c.ctl(via, args);
    assert!(!out.success, "{args:?} succeeded: {}", out.stdout);
    out.stderr
}

/// Every event of `acme`, oldest first, read a page at a time.
fn events_of(c: &Cluster, via: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = "0".to_string();
    for _ in 0..100 {
        let page = ok(
            c,
            via,
            &[
                "events",
                "--account",
                "acme",
                "--after",
                &after,
                "--limit",
                "1000",
            ],
        );
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_after_seq"].as_u64() {
            Some(next) => after = next.to_string(),
            None => return all,
        }
    }
    panic!("more than 100 pages of events");
}

/// The details of `acme`'s events of `kind`.
fn events_of_kind(c: &Cluster, via: u64, kind: &str) -> Vec<Value> {
    events_of(c, via)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["detail"].clone())
        .collect()
}

/// The amount of `bill`'s line for instance `name`, if it has one.
fn instance_amount(bill: &Value, name: &str) -> Option<String> {
    bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["instance"] == name)
        .map(|l| l["amount"].as_str().unwrap().to_string())
}

/// The bill of `day` (YYYY-MM-DD), once it has been issued.
async fn bill_of(c: &Cluster, day: &str) -> Value {
    eventually(&format!("the bill of {day}"), SETTLE, || async {
        bills(c, 1).into_iter().find(|b| b["day"] == day)
    })
    .await
}

fn instance(c: &Cluster, via: u64, name: &str) -> Value {
    ok(c, via, &["instance", "get", "--name", name])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_stops_the_meter_restoration_resumes_it_and_the_purge_releases_instances() {
    let (c, clock) = cluster_with_clock(JAN_1 + HOUR_MS).await;
    ok(&c, 1, &["account", "create", "--name", "acme"]);
    ok(
        &c,
        2,
        &["account", "recharge", "--name", "acme", "--amount", "30"],
    );
    // Alert settings through the Raft log: what a command does not name is kept, an empty
    // webhook removes it.
    ok(
        &c,
        1,
        &["account", "set-alert", "--name", "acme", "--threshold", "5"],
    );
    let a = ok(
        &c,
        2,
        &[
            "account",
            "set-alert",
            "--name",
            "acme",
            "--webhook",
            "http://127.0.0.1:9/hook",
        ],
    );
    assert_eq!(a["balance_alert"], "5.00", "kept: {a}");
    assert_eq!(a["webhook"], "http://127.0.0.1:9/hook");
    let a = ok(
        &c,
        3,
        &["account", "set-alert", "--name", "acme", "--webhook", ""],
    );
    assert_eq!(a["webhook"], Value::Null, "removed: {a}");
    assert_eq!(a["balance_alert"], "5.00");
    let a = ok(
        &c,
        1,
        &["account", "set-alert", "--name", "acme", "--threshold", ""],
    );
    assert_eq!(a["balance_alert"], Value::Null);
    // Pay-as-you-go api.s1.small in cn-hangzhou: 0.87 an hour, from 01:00 on January 1.
    ok(
        &c,
        3,
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
    // 20.01 (23 hours) and 20.88 leave it owing: suspended when January 2 closes.
    clock.set(JAN_1 + 2 * DAY_MS + HOUR_MS + 1);
    eventually("the suspension", SETTLE, || async {
        (account(&c, 1)["state"] == "suspended").then_some(())
    })
    .await;
    let i = instance(&c, 2, "ded");
    assert_eq!(i["status"], "stopped");
    assert_eq!(i["stopped_reason"], "account_suspended");
    let stopped = events_of_kind(&c, 3, "instance_stopped");
    assert_eq!(stopped.len(), 1, "{stopped:?}");

    // January 3 bills only the hour before the suspension; January 4 nothing.
    clock.set(JAN_1 + 4 * DAY_MS + HOUR_MS + 1);
    let jan3 = bill_of(&c, "2026-01-03").await;
    assert_eq!(instance_amount(&jan3, "ded").as_deref(), Some("0.87"));
    let jan4 = bill_of(&c, "2026-01-04").await;
    assert_eq!(instance_amount(&jan4, "ded"), None, "{jan4}");
    assert_eq!(jan4["total"], "0.00");

    // A recharge at 10:20 on January 5 restores the account and starts the instance: billing
    // resumes with the hour 10:00-11:00 (hours count from its creation at 01:00).
    clock.set(JAN_1 + 4 * DAY_MS + 10 * HOUR_MS + 20 * 60_000);
    ok(
        &c,
        1,
        &["account", "recharge", "--name", "acme", "--amount", "60"],
    );
    assert_eq!(instance(&c, 2, "ded")["status"], "running");
    assert_eq!(events_of_kind(&c, 3, "instance_started").len(), 1);
    clock.set(JAN_1 + 5 * DAY_MS + HOUR_MS + 1);
    let jan5 = bill_of(&c, "2026-01-05").await;
    assert_eq!(instance_amount(&jan5, "ded").as_deref(), Some("12.18")); // 14 x 0.87
    // 30 + 60 - (20.01 + 20.88 + 0.87 + 12.18): whole cents.
    assert_eq!(account(&c, 2)["balance"], "36.06");

    // An operator's debit, retried with its request id, is applied once; an account cannot
    // adjust its own balance.
    let token = ok(&c, 1, &["token", "create", "--account", "acme"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The token is used through node 2: it must have applied its creation.
    c.wait_caught_up(1, &[2]).await;
    let own = c.ctl_with_token(
        2,
        Some(&token),
        &[
            "account", "adjust", "--name", "acme", "--amount", "+100", "--reason", "gift",
        ],
    );
    assert!(
        !own.success && own.stderr.contains("PermissionDenied"),
        "{own:?}"
    );
    let adjust = [
        "account",
        "adjust",
        "--name",
        "acme",
        "--amount",
        "-40",
        "--reason",
        "hours billed short in December",
        "--request-id",
        "adj-1",
    ];
    ok(&c, 1, &adjust);
    let a = ok(&c, 3, &adjust);
    assert_eq!(a["balance"], "-3.94", "applied once");
    assert_eq!(a["state"], "suspended", "a debit can suspend");
    let e = refused(
        &c,
        1,
        &[
            "account", "adjust", "--name", "acme", "--amount", "1.005", "--reason", "x",
        ],
    );
    assert!(e.contains("fractions of a cent"), "{e}");
    assert_eq!(instance(&c, 2, "ded")["status"], "stopped");

    // Six months later the purge: the warning names the instance, the purge releases it.
    let purge_at = account(&c, 2)["purge_at_ms"].as_u64().unwrap();
    clock.set(purge_at - 3 * DAY_MS);
    let warning = eventually("the purge warning", SETTLE, || async {
        events_of_kind(&c, 1, "purge_warning").pop()
    })
    .await;
    assert_eq!(warning["releases_instances"], serde_json::json!(["ded"]));
    assert_eq!(
        instance(&c, 2, "ded")["status"],
        "stopped",
        "not before its time"
    );
    clock.set(purge_at + 8 * DAY_MS);
    eventually("the purge", SETTLE, || async {
        (account(&c, 3)["state"] == "purged").then_some(())
    })
    .await;
    assert!(
        ok(&c, 1, &["instance", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the purge released the instance"
    );
    let released = events_of_kind(&c, 2, "instance_released");
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["reason"], "account_purged");
    // From the debit's suspension on, nothing accrued: only the hour it happened in.
    let closed = (purge_at + 8 * DAY_MS - HOUR_MS) / DAY_MS - JAN_1 / DAY_MS;
    let all = eventually("every cycle to be closed", SETTLE, || async {
        let all = bills(&c, 1);
        (all.len() as u64 == closed).then_some(all)
    })
    .await;
    let after: Vec<&Value> = all
        .iter()
        .filter(|b| b["day"].as_str().unwrap() > "2026-01-06")
        .collect();
    assert!(after.len() > 150, "{} bills", after.len());
    assert!(after.iter().all(|b| b["total"] == "0.00"));

    // The ledger is whole: every entry, exported as CSV.
    let ledger_len = account(&c, 1)["ledger_len"].as_u64().unwrap();
    assert!(ledger_len > 20);
    let out = c.ctl(1, &["account", "ledger", "--name", "acme", "-o", "csv"]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().count() as u64,
        ledger_len + 1,
        "a header and every entry"
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.contains("adjustment: hours billed short in December"))
            .count(),
        1
    );

    // January's statement: the days, the instance's charges, in JSON and CSV.
    let st = ok(
        &c,
        2,
        &[
            "bill",
            "statement",
            "--account",
            "acme",
            "--month",
            "2026-01",
        ],
    );
    assert_eq!(st["days"].as_array().unwrap().len(), 31);
    let ded = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "ded")
        .cloned()
        .unwrap();
    // 20.01 + 20.88 + 0.87 + 12.18 + 0.87 (the hour of January 6 before the debit's
    // suspension at 01:00).
    assert_eq!(ded["amount"], "54.81");
    let sum: f64 = all
        .iter()
        .filter(|b| b["day"].as_str().unwrap().starts_with("2026-01"))
        .map(|b| b["total"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(st["total"], format!("{sum:.2}"));
    let csv = c.ctl(
        2,
        &[
            "bill",
            "statement",
            "--account",
            "acme",
            "--month",
            "2026-01",
            "-o",
            "csv",
        ],
    );
    assert!(csv.success, "{}", csv.stderr);
    assert!(csv.stdout.lines().next().unwrap().contains("section"));
    assert!(csv.stdout.lines().any(|l| l.contains("54.81")));
    let e = refused(&c, 1, &["bill", "get", "--account", "acme", "--day", ""]);
    assert!(e.contains("must not be empty"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_terms_warn_renew_stop_and_release() {
    let (c, clock) = cluster_with_clock(JAN_1 + HOUR_MS).await;
    ok(&c, 1, &["account", "create", "--name", "acme"]);
    ok(
        &c,
        1,
        &["account", "recharge", "--name", "acme", "--amount", "3000"],
    );
    let create = |name: &str, charge: &str, auto: bool| {
        let mut args = vec![
            "instance",
            "create",
            "--name",
            name,
            "--spec",
            "api.s1.small",
            "--region",
            "ap-southeast-1",
            "--account",
            "acme",
            "--charge-type",
            charge,
        ];
        if auto {
            args.push("--auto-renew");
        }
        ok(&c, 2, &args)
    };
    // api.s1.small in Singapore: 560 a month.
    let sub = create("sub", "month", false);
    assert_eq!(sub["term_end"], "2026-02-01T01:00:00Z");
    assert_eq!(sub["term_end_ms"], JAN_1 + 31 * DAY_MS + HOUR_MS);
    assert_eq!(sub["auto_renew"], false);
    assert_eq!(create("auto", "month", true)["auto_renew"], true);
    let table = c.ctl(3, &["instance", "get", "--name", "sub"]);
    assert!(
        table
            .stdout
            .contains("2026-02-01T01:00:00Z (1769907600000)"),
        "{}",
        table.stdout
    );
    create("pay", "postpaid", false);
    let e = refused(
        &c,
        1,
        &["instance", "renew", "--name", "pay", "--months", "1"],
    );
    assert!(e.contains("pay-as-you-go"), "{e}");
    ok(&c, 1, &["instance", "delete", "--name", "pay"]);
    let e = refused(
        &c,
        1,
        &["instance", "renew", "--name", "sub", "--months", "5"],
    );
    assert!(
        e.contains("costs 2800.00") && e.contains("recharge first"),
        "{e}"
    );
    // Renewed before its end, with a request id: the term runs on from its end, paid once.
    let renew = [
        "instance",
        "renew",
        "--name",
        "sub",
        "--months",
        "1",
        "--request-id",
        "renew-1",
    ];
    ok(&c, 1, &renew);
    let sub = ok(&c, 2, &renew);
    assert_eq!(sub["term_end"], "2026-03-01T01:00:00Z");
    // 3000 - 3 x 560 (the hour of the deleted instance is billed when the day closes).
    assert_eq!(account(&c, 1)["balance"], "1320.00");
    ok(
        &c,
        1,
        &[
            "group",
            "create",
            "--name",
            "g",
            "--account",
            "acme",
            "--instance",
            "sub",
        ],
    );

    // February 1: the auto-renewing instance pays its next month at its term's end.
    clock.set(JAN_1 + 31 * DAY_MS + HOUR_MS + 1);
    let renewed = eventually("the automatic renewal", SETTLE, || async {
        events_of_kind(&c, 1, "term_renewed")
            .into_iter()
            .find(|e| e["automatic"] == true)
    })
    .await;
    assert_eq!(renewed["instance"], "auto");
    assert_eq!(instance(&c, 2, "auto")["term_end"], "2026-03-01T01:00:00Z");
    assert_eq!(account(&c, 1)["balance"], "759.07");
    let auto = ok(
        &c,
        3,
        &[
            "instance",
            "set-auto-renew",
            "--name",
            "auto",
            "--auto-renew",
            "false",
        ],
    );
    assert_eq!(auto["auto_renew"], false);

    // Warnings 7 days and 1 day before the end, once each.
    let endings = |c: &Cluster| {
        events_of_kind(c, 1, "term_ending")
            .into_iter()
            .filter(|e| e["instance"] == "sub")
            .count()
    };
    clock.set(JAN_1 + 51 * DAY_MS + HOUR_MS + 1); // February 21
    bill_of(&c, "2026-02-20").await;
    assert_eq!(endings(&c), 0);
    clock.set(JAN_1 + 52 * DAY_MS + HOUR_MS + 1); // February 22: 7 days before
    bill_of(&c, "2026-02-21").await;
    assert_eq!(endings(&c), 1);
    clock.set(JAN_1 + 58 * DAY_MS + HOUR_MS + 1); // February 28: 1 day before
    bill_of(&c, "2026-02-27").await;
    assert_eq!(endings(&c), 2);
    assert_eq!(instance(&c, 1, "sub")["status"], "running");

    // March 1: both terms end unrenewed: stopped, never billed by the hour.
    clock.set(JAN_1 + 59 * DAY_MS + HOUR_MS + 1);
    bill_of(&c, "2026-02-28").await;
    let sub = eventually("sub to stop", SETTLE, || async {
        let i = instance(&c, 2, "sub");
        (i["status"] == "stopped").then_some(i)
    })
    .await;
    assert_eq!(sub["stopped_reason"], "term_ended");
    assert_eq!(sub["release_at"], "2026-03-08T01:00:00Z");
    let stopped = events_of_kind(&c, 3, "instance_stopped");
    assert!(
        stopped
            .iter()
            .any(|e| e["instance"] == "sub" && e["hosted_groups"] == serde_json::json!(["g"])),
        "{stopped:?}"
    );
    // Renewed in the grace period: running again, for a month from now.
    let auto = ok(
        &c,
        1,
        &["instance", "renew", "--name", "auto", "--months", "1"],
    );
    assert_eq!(auto["status"], "running");
    assert_eq!(auto["term_end"], "2026-04-01T01:00:00Z");

    // March 8: the grace is over: sub is released with its group.
    clock.set(JAN_1 + 66 * DAY_MS + HOUR_MS + 1);
    let released = eventually("the release", SETTLE, || async {
        events_of_kind(&c, 1, "instance_released").pop()
    })
    .await;
    assert_eq!(released["instance"], "sub");
    assert_eq!(released["reason"], "term_ended");
    assert_eq!(released["removed_groups"], serde_json::json!(["g"]));
    assert!(ok(&c, 2, &["group", "list"]).as_array().unwrap().is_empty());
    let names: Vec<String> = ok(&c, 2, &["instance", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["auto"]);
    // No bill ever charged a subscription by the hour.
    for b in bills(&c, 3) {
        assert_eq!(instance_amount(&b, "sub"), None, "{b}");
        assert_eq!(instance_amount(&b, "auto"), None, "{b}");
    }
}

/// The pricing document's shared-instance example (12 million calls in a month, the first
/// year's free million, tiers of 10 million), scaled a million times down with a catalog whose
/// tiers count single calls: 12 calls, 1 free, 11 billable: `10 x 0.9 + 1 x 0.6 = 9.60`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_quota_comes_off_first_on_a_cluster() {
    let mut c = Cluster::new(binaries!(), 3);
    let clock = DevClock(c.dir().join("clock"));
    clock.set(JAN_1 + HOUR_MS);
    let builtin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/catalog/data/catalog.toml"),
    )
    .unwrap();
    let scaled = builtin
        .replace("free_calls_per_month = 1000000", "free_calls_per_month = 1")
        .replace("up_to_calls = 10000000\n", "up_to_calls = 10\n")
        .replace("up_to_calls = 100000000\n", "up_to_calls = 100\n")
        .replace(
            "usd_per_million_calls = \"0.9\"",
            "usd_per_million_calls = \"900000\"",
        )
        .replace(
            "usd_per_million_calls = \"0.6\"",
            "usd_per_million_calls = \"600000\"",
        )
        .replace(
            "usd_per_million_calls = \"0.45\"",
            "usd_per_million_calls = \"450000\"",
        );
    assert_ne!(scaled, builtin);
    let catalog = c.dir().join("scaled.toml");
    std::fs::write(&catalog, scaled).unwrap();
    c.extra_args = clock.node_args();
    c.extra_args.extend([
        "--usage-flush-ms".into(),
        "100".into(),
        "--shared-region".into(),
        "cn-hongkong".into(),
        "--catalog".into(),
        catalog.display().to_string(),
    ]);
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    let backend = Server::start("item").await;
    let hook = Server::start("ok").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend, &hook).await;
    eventually("the setup's calls to be metered", SETTLE, || async {
        (metered_calls(&c, 1) == t.sent()).then_some(())
    })
    .await;
    let more = 12usize
        .checked_sub(t.sent() as usize)
        .expect("the setup made at most 12 calls");
    assert_eq!(send(&c, &t, more).await.0, more);
    eventually("12 metered calls", SETTLE, || async {
        (metered_calls(&c, 1) == 12).then_some(())
    })
    .await;
    clock.set(JAN_1 + DAY_MS + HOUR_MS + 1);
    let bill = bill_of(&c, "2026-01-01").await;
    let calls = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"].as_str().unwrap().starts_with("API calls"))
        .cloned()
        .unwrap();
    assert_eq!(calls["amount"], "9.60", "{bill}"); // not 9.30
}

/// Sends `n` GETs of `path` over one connection at once (the last asks to close it) and reads
/// to the end: every byte the client received.
async fn raw_gets(addr: &str, path: &str, n: usize) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut requests = String::new();
    for i in 0..n {
        let close = if i + 1 == n {
            "connection: close\r\n"
        } else {
            ""
        };
        requests.push_str(&format!("GET {path} HTTP/1.1\r\nhost: x\r\n{close}\r\n"));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(SETTLE, s.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection after the last response")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 ").count(), n, "{text}");
    got.len() as u64
}

/// (calls, bytes out, backend bytes) metered for `api` of `acme` (all APIs for `None`).
fn metered(c: &Cluster, api: Option<&str>) -> (u64, u64, u64) {
    let rows = ok(c, 1, &["usage", "--account", "acme"]);
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| api.is_none_or(|a| r["api"] == a))
        .fold((0, 0, 0), |(c, b, k), r| {
            (
                c + r["calls"].as_u64().unwrap(),
                b + r["bytes_out"].as_u64().unwrap(),
                k + r["backend_bytes"].as_u64().unwrap(),
            )
        })
}

fn line_amount(bill: &Value, item: &str) -> Option<String> {
    bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"] == item)
        .map(|l| l["amount"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_metered_at_the_wire_and_backend_traffic_billed_on_its_own_line() {
    let mut c = Cluster::new(binaries!(), 3);
    let clock = DevClock(c.dir().join("clock"));
    clock.set(JAN_1 + HOUR_MS);
    // A GB costs 2^30 USD in Hangzhou: a byte costs a dollar, so bills show bytes exactly.
    let builtin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/catalog/data/catalog.toml"),
    )
    .unwrap();
    let hangzhou =
        "id = \"cn-hangzhou\"\nname = \"China (Hangzhou)\"\ntraffic_usd_per_gb = \"0.113\"";
    assert!(builtin.contains(hangzhou));
    let scaled = builtin.replace(hangzhou, &hangzhou.replace("\"0.113\"", "\"1073741824\""));
    let catalog = c.dir().join("scaled.toml");
    std::fs::write(&catalog, scaled).unwrap();
    c.extra_args = clock.node_args();
    c.extra_args.extend([
        "--usage-flush-ms".into(),
        "100".into(),
        "--shared-region".into(),
        "cn-hangzhou".into(),
        "--catalog".into(),
        catalog.display().to_string(),
    ]);
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    let backend = Server::start("an item, from a backend somewhere").await;
    let hook = Server::start("ok").await;
    let t = Traffic::default();
    setup_api(&c, &t, &backend, &hook).await;
    // The same backend, declared to be in Shanghai: the instance is in Hangzhou.
    let backend_url = format!("http://{}", backend.addr);
    let far = ok(
        &c,
        2,
        &[
            "api",
            "create",
            "--group",
            "shop",
            "--name",
            "far",
            "--method",
            "GET",
            "--path",
            "/far/{id}",
            "--backend",
            &backend_url,
            "--backend-region",
            "cn-shanghai",
        ],
    );
    assert_eq!(
        far["definition"]["backend_location"], "cn-shanghai",
        "{far}"
    );
    let bad = refused(
        &c,
        2,
        &[
            "api",
            "create",
            "--group",
            "shop",
            "--name",
            "bad",
            "--method",
            "GET",
            "--path",
            "/bad",
            "--backend",
            &backend_url,
            "--backend-region",
            "mars-1",
        ],
    );
    assert!(bad.contains("backend_location"), "{bad}");
    ok(
        &c,
        3,
        &["api", "deploy", "--group", "shop", "--name", "far"],
    );
    let item = ok(&c, 1, &["api", "get", "--group", "shop", "--name", "item"]);
    assert_eq!(item["definition"]["backend_location"], "local", "{item}");
    // The declarative export carries the location, and only where it is not local.
    let doc = ok(&c, 1, &["export", "--account", "acme"]);
    let apis = doc["groups"][0]["apis"].as_array().unwrap().clone();
    let of = |name: &str| apis.iter().find(|a| a["name"] == name).unwrap().clone();
    assert_eq!(of("far")["backend_location"], "cn-shanghai", "{doc}");
    assert!(of("item").get("backend_location").is_none(), "{doc}");
    for id in 1..=3 {
        let addr = c.http_addr(id);
        eventually(
            &format!("far to be routable on node {id}"),
            SETTLE,
            || async {
                t.get(&addr, "/shop/far/1")
                    .await
                    .filter(|r| r.status == 200)
            },
        )
        .await;
    }
    eventually("the setup's calls to be metered", SETTLE, || async {
        (metered(&c, None).0 == t.sent()).then_some(())
    })
    .await;
    let before = metered(&c, None);
    // Raw clients on every node: local and remote backends, and 404s the gateway makes.
    let mut received = 0;
    let mut calls = 0;
    for id in 1..=3 {
        let addr = c.http_addr(id);
        received += raw_gets(&addr, "/shop/items/7", 5).await;
        received += raw_gets(&addr, "/shop/far/7", 4).await;
        received += raw_gets(&addr, "/shop/nothing-here", 2).await;
        calls += 11;
    }
    let after = eventually("the raw calls to be metered", SETTLE, || async {
        let m = metered(&c, None);
        (m.0 == before.0 + calls).then_some(m)
    })
    .await;
    // Every byte the raw clients received, heads and all, and nothing else.
    assert_eq!(after.1 - before.1, received);
    let (_, _, item_backend) = metered(&c, Some("item"));
    let (far_calls, _, far_backend) = metered(&c, Some("far"));
    assert_eq!(item_backend, 0, "a local backend's traffic is not billed");
    assert!(far_calls >= 12 && far_backend > 0);
    // Each of far's calls read a whole response (head and body) from the backend.
    assert_eq!(
        far_backend % far_calls,
        0,
        "{far_backend} bytes for {far_calls} calls"
    );
    let day1 = metered(&c, None);

    // Day two: only the local backend is called.
    clock.set(JAN_1 + DAY_MS + 1);
    let day2_bytes = raw_gets(&c.http_addr(2), "/shop/items/8", 3).await;
    eventually("day two's calls to be metered", SETTLE, || async {
        (metered(&c, None).0 == day1.0 + 3).then_some(())
    })
    .await;
    clock.set(JAN_1 + DAY_MS + HOUR_MS + 1);
    let bill = bill_of(&c, "2026-01-01").await;
    assert_eq!(
        line_amount(&bill, "Backend traffic, cn-hangzhou"),
        Some(format!("{far_backend}.00")),
        "{bill}"
    );
    assert_eq!(
        line_amount(&bill, "Outbound traffic, cn-hangzhou"),
        Some(format!("{}.00", day1.1)),
        "{bill}"
    );
    clock.set(JAN_1 + 2 * DAY_MS + HOUR_MS + 1);
    let bill = bill_of(&c, "2026-01-02").await;
    assert_eq!(
        line_amount(&bill, "Backend traffic, cn-hangzhou"),
        None,
        "{bill}"
    );
    assert_eq!(
        line_amount(&bill, "Outbound traffic, cn-hangzhou"),
        Some(format!("{day2_bytes}.00")),
        "{bill}"
    );
}
