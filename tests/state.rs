//! The replicated state's layout, end to end on real gatewayd processes: history kept on disk
//! and equal on every node after restarts and snapshot installs, and a price catalog that every
//! node must share.

use proto::admin::admin_client::AdminClient;
use proto::admin::{
    CreateAccountRequest, CreateInstanceRequest, DescribeAccountsRequest, DescribeBillsRequest,
    DescribeEventsRequest, RechargeRequest,
};
use std::path::PathBuf;
use std::time::Duration;
use testkit::time::{DAY_MS, JAN_1};
use testkit::{Cluster, DevClock, binaries, eventually};
use tonic::transport::Channel;

const SETTLE: Duration = Duration::from_secs(30);

type Admin = AdminClient<Channel>;

/// Three voters on a development clock that snapshot every few entries, so that a node that
/// was down is sent a snapshot rather than the log.
async fn cluster(snapshot_every: u64) -> (Cluster, DevClock) {
    let mut c = Cluster::new(binaries!(), 3);
    let clock = DevClock(c.dir().join("clock"));
    clock.set(JAN_1);
    c.extra_args = clock.node_args();
    c.extra_args.extend([
        "--bill-delay-seconds".into(),
        "0".into(),
        // Days close while a node is down: wait for its usage only a second.
        "--usage-grace-seconds".into(),
        "1".into(),
        "--snapshot-every".into(),
        snapshot_every.to_string(),
    ]);
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    (c, clock)
}

async fn applied_index(c: &Cluster, id: u64) -> Option<u64> {
    c.status(id).await?.applied_index
}

/// Waits until every running node has applied what the leader has.
async fn converge(c: &Cluster, ids: &[u64]) {
    eventually("every node to apply the leader's log", SETTLE, || async {
        let mut first = None;
        for id in ids {
            let a = applied_index(c, *id).await?;
            if first.is_some_and(|f| f != a) {
                return None;
            }
            first = Some(a);
        }
        first
    })
    .await;
}

/// Everything a node shows of an account's history: its bills, its events, its balance and
/// ledger tail.
async fn history_of(admin: &mut Admin, account: &str) -> String {
    let bills = admin
        .describe_bills(DescribeBillsRequest {
            account: account.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let events = admin
        .describe_events(DescribeEventsRequest {
            account: account.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let accounts = admin
        .describe_accounts(DescribeAccountsRequest {
            name: account.into(),
        })
        .await
        .unwrap()
        .into_inner();
    format!("{bills:?}\n{events:?}\n{accounts:?}")
}

async fn days_closed(admin: &mut Admin, account: &str) -> Option<String> {
    let a = admin
        .describe_accounts(DescribeAccountsRequest {
            name: account.into(),
        })
        .await
        .ok()?
        .into_inner();
    a.accounts.first()?.last_cycle.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_has_the_same_history_as_the_others() {
    let (mut c, clock) = cluster(20).await;
    let mut admin = c.admin(1).await;
    for account in ["acme", "globex"] {
        admin
            .create_account(CreateAccountRequest {
                name: account.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        admin
            .create_instance(CreateInstanceRequest {
                name: format!("{account}-inst"),
                spec: "api.s1.small".into(),
                region: "cn-hongkong".into(),
                account: account.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let recharge = |account: &str, amount: &str| RechargeRequest {
        account: account.into(),
        amount: amount.into(),
        ..Default::default()
    };
    // Days pass: every day bills both accounts' pay-as-you-go instance.
    let mut day = 0;
    let mut advance = async |admin: &mut Admin, days: u64| {
        for _ in 0..days {
            day += 1;
            clock.set(JAN_1 + day * DAY_MS + 1000);
            let want = format!("2026-01-{:02}", day);
            eventually(&format!("day {want} to close"), SETTLE, || async {
                let mut a = admin.clone();
                days_closed(&mut a, "acme").await.filter(|d| *d == want)
            })
            .await;
        }
    };
    admin.recharge(recharge("acme", "100")).await.unwrap();
    advance(&mut admin, 3).await;
    c.kill(2);
    // Node 2 misses recharges, bills, events (a suspension: globex never paid) and enough log
    // entries that the others snapshot and purge what it lacks.
    for i in 0..25 {
        admin
            .recharge(recharge("acme", &format!("1.{i:02}")))
            .await
            .unwrap();
    }
    advance(&mut admin, 4).await;
    c.spawn(2);
    c.wait_leader(SETTLE).await;
    converge(&c, &[1, 2, 3]).await;
    let mut views = Vec::new();
    for id in 1..=3 {
        let mut a = c.admin(id).await;
        views.push((
            history_of(&mut a, "acme").await,
            history_of(&mut a, "globex").await,
        ));
    }
    assert!(views[0].0.contains("2026-01-07"), "{}", views[0].0);
    assert_eq!(views[1], views[0], "node 2 after its restart");
    assert_eq!(views[2], views[0]);
    // And after a restart of every node, from their own disks.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    converge(&c, &[1, 2, 3]).await;
    for id in 1..=3 {
        let mut a = c.admin(id).await;
        let view = (
            history_of(&mut a, "acme").await,
            history_of(&mut a, "globex").await,
        );
        assert_eq!(view, views[0], "node {id} after a full restart");
    }
}

/// A copy of the built-in catalog with one price changed.
fn other_catalog(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/catalog/data/catalog.toml"),
    )
    .unwrap();
    let changed = text.replacen("max_rps = 2500", "max_rps = 2600", 1);
    assert_ne!(changed, text);
    let path = dir.join("other-catalog.toml");
    std::fs::write(&path, changed).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_catalog_refuses_to_apply_and_says_why() {
    let mut c = Cluster::start(binaries!(), 3).await;
    let mut admin = c.admin(1).await;
    admin
        .create_instance(CreateInstanceRequest {
            name: "a".into(),
            spec: "api.s1.small".into(),
            region: "cn-hongkong".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    converge(&c, &[1, 2, 3]).await;
    c.kill(3);
    // Node 3 comes back pricing with another catalog: its first entry to apply is refused.
    let catalog = other_catalog(c.dir());
    let saved = std::mem::take(&mut c.extra_args);
    c.extra_args = vec!["--catalog".into(), catalog.display().to_string()];
    c.spawn(3);
    c.extra_args = saved;
    eventually("node 3 to stop", SETTLE, || {
        let running = c.nodes.get_mut(&3).unwrap().is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    // Its last lines may be a backtrace (RUST_BACKTRACE in the tests' environment).
    let log = c.log_tail(3, 300);
    assert!(
        log.contains("same catalog") && log.contains("--catalog"),
        "node 3's log says why it stopped:\n{log}"
    );
    // The others never saw a difference; with the right catalog node 3 serves again.
    admin
        .create_instance(CreateInstanceRequest {
            name: "b".into(),
            spec: "api.s1.small".into(),
            region: "cn-hongkong".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.spawn(3);
    converge(&c, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recharge_retried_with_its_request_id_is_applied_once() {
    let c = Cluster::start(binaries!(), 3).await;
    c.ctl_json(1, &["account", "create", "--name", "acme"]);
    let recharge = |via: u64, id: &str| {
        c.ctl_json(
            via,
            &[
                "account",
                "recharge",
                "--name",
                "acme",
                "--amount",
                "1.00",
                "--request-id",
                id,
            ],
        )
    };
    let first = recharge(1, "pay-1");
    assert_eq!(first["balance"], "1.00", "{first}");
    // The same request again, through other nodes (as a client retrying after a lost reply):
    // answered with the first outcome, credited once.
    for via in [2, 3, 1] {
        let again = recharge(via, "pay-1");
        assert_eq!(again["balance"], "1.00", "{again}");
    }
    let second = recharge(2, "pay-2");
    assert_eq!(second["balance"], "2.00", "{second}");
    let out = c.ctl(
        1,
        &[
            "account",
            "recharge",
            "--name",
            "acme",
            "--amount",
            "1",
            "--request-id",
            "a b",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("request_id"),
        "{}",
        out.stderr
    );
}
