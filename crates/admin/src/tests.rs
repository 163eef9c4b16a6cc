//! The history reads against a real single-node cluster, on a clock the test drives: pages
//! cover each record exactly once, usage merges closed days (history) with open ones (state),
//! limits are checked, and an account token reads only its own account.

use super::*;
use cluster::NodeConfig;
use model::{FakeClock, UsageDelta};
use proto::admin::admin_server::Admin;
use std::time::Duration;
use tonic::Code;

/// 2026-01-01 00:00 UTC.
const JAN_1: u64 = 1_767_225_600_000;
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// A [`FakeClock`] reads its nanoseconds as Unix time.
fn ms_to_nanos(ms: u64) -> u64 {
    ms * 1_000_000
}

struct Fixture {
    svc: AdminService,
    clock: Arc<FakeClock>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new(ms_to_nanos(JAN_1 + HOUR_MS)));
        let mut cfg = NodeConfig::new(1, dir.path().to_path_buf(), "127.0.0.1:1".into());
        cfg.clock = clock.clone();
        cfg.election_timeout = (Duration::from_millis(150), Duration::from_millis(300));
        cfg.heartbeat = Duration::from_millis(50);
        let node = Node::start(cfg).await.unwrap();
        let svc = AdminService {
            node,
            catalog: Arc::new(Catalog::builtin().clone()),
            allow_private_webhooks: false,
            spans: None,
        };
        Fixture {
            svc,
            clock,
            _dir: dir,
        }
    }

    async fn write(&self, cmd: Command) {
        self.svc.node.write(cmd).await.unwrap();
    }

    async fn usage(&self, seq: u64, deltas: &[(&str, &str, u64)]) {
        let deltas = deltas
            .iter()
            .map(|(account, api, calls)| UsageDelta {
                account: account.to_string(),
                instance: SHARED_INSTANCE.into(),
                api: api.to_string(),
                region: "cn-hangzhou".into(),
                calls: *calls,
                bytes_out: 0,
                backend_bytes: 0,
            })
            .collect();
        self.write(Command::RecordUsage {
            node: 1,
            seq,
            deltas,
        })
        .await;
    }

    /// Moves the clock into the next day and closes the day before it.
    async fn close_day(&self, day: u64) {
        self.clock.set(ms_to_nanos((day + 1) * DAY_MS + HOUR_MS));
        self.write(Command::CloseCycle { day }).await;
    }
}

/// The error of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Status {
    r.unwrap_err()
}

fn as_account<T>(account: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.extensions_mut()
        .insert(Principal::Account(account.to_string()));
    req
}

/// Day 0 and day 1 closed, day 2 open; `acme` and `beta` with usage on them, ledger entries
/// from recharges and bills, events from a balance alert.
async fn busy_cluster() -> (Fixture, u64) {
    let f = Fixture::start().await;
    let d0 = JAN_1 / DAY_MS;
    for name in ["acme", "beta"] {
        f.write(Command::CreateAccount {
            name: name.into(),
            webhook: None,
            balance_alert: None,
        })
        .await;
    }
    for name in ["acme", "beta"] {
        f.write(Command::SetAccountAlert {
            account: name.into(),
            threshold: model::Update::Set(catalog::Usd::parse("100").unwrap()),
            webhook: model::Update::Keep,
        })
        .await;
    }
    for _ in 0..5 {
        f.write(Command::Recharge {
            account: "acme".into(),
            amount: catalog::Usd::parse("1.25").unwrap(),
        })
        .await;
    }
    f.usage(
        1,
        &[("acme", "a1", 5), ("acme", "a2", 3), ("beta", "b1", 7)],
    )
    .await;
    f.close_day(d0).await;
    f.usage(2, &[("acme", "a1", 2), ("beta", "b1", 1)]).await;
    f.close_day(d0 + 1).await;
    f.usage(3, &[("acme", "a1", 4)]).await;
    (f, d0)
}

/// Every usage row, read `limit` rows a page.
async fn all_usage(svc: &AdminService, account: &str, limit: u32) -> Vec<pb::UsageRow> {
    let mut rows = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let r = svc
            .describe_usage(Request::new(pb::DescribeUsageRequest {
                account: account.into(),
                after: after.clone(),
                limit,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.rows.len() <= limit as usize
                || r.rows
                    .iter()
                    .all(|x| (&x.account, &x.day) == (&r.rows[0].account, &r.rows[0].day)),
            "a page holds more than the limit only for one account-day"
        );
        rows.extend(r.rows);
        match r.next_after {
            Some(n) => after = n,
            None => return rows,
        }
    }
    panic!("usage pages never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_page_through_everything_once() {
    let (f, d0) = busy_cluster().await;
    let svc = &f.svc;
    let day = |d: u64| accounts::day_name(d);

    // Usage: by account, then day; closed days from history, the open day from the state.
    let whole = all_usage(svc, "", 1000).await;
    let got: Vec<(String, String, String, u64)> = whole
        .iter()
        .map(|r| (r.account.clone(), r.day.clone(), r.api.clone(), r.calls))
        .collect();
    let want = [
        ("acme", day(d0), "a1", 5),
        ("acme", day(d0), "a2", 3),
        ("acme", day(d0 + 1), "a1", 2),
        ("acme", day(d0 + 2), "a1", 4),
        ("beta", day(d0), "b1", 7),
        ("beta", day(d0 + 1), "b1", 1),
    ]
    .map(|(a, d, api, c)| (a.to_string(), d, api.to_string(), c));
    assert_eq!(got, want);
    for limit in [1, 2, 3] {
        assert_eq!(all_usage(svc, "", limit).await, whole, "limit {limit}");
    }
    let acme: Vec<_> = whole
        .iter()
        .filter(|r| r.account == "acme")
        .cloned()
        .collect();
    assert_eq!(all_usage(svc, "acme", 1).await, acme);
    // One day, every account: a closed day and the open one.
    for d in [d0, d0 + 2] {
        let r = svc
            .describe_usage(Request::new(pb::DescribeUsageRequest {
                day: day(d),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let want: Vec<_> = whole.iter().filter(|r| r.day == day(d)).cloned().collect();
        assert_eq!(r.rows, want);
        assert_eq!(r.next_after, None);
    }

    // Bills: one a day per account, a page at a time.
    let first = svc
        .describe_bills(Request::new(pb::DescribeBillsRequest {
            account: "acme".into(),
            limit: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.bills.len(), 1);
    assert_eq!(first.bills[0].day, day(d0));
    assert_eq!(first.next_after_day, Some(day(d0)));
    let second = svc
        .describe_bills(Request::new(pb::DescribeBillsRequest {
            account: "acme".into(),
            after_day: day(d0),
            limit: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.bills[0].day, day(d0 + 1));
    assert_eq!(second.next_after_day, None);
    let one = svc
        .describe_bills(Request::new(pb::DescribeBillsRequest {
            account: "acme".into(),
            day: Some(day(d0 + 1)),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.bills, second.bills);

    // The ledger: 5 recharges and 2 bills, the tail on the account, all of it page by page.
    let account = svc
        .describe_accounts(Request::new(pb::DescribeAccountsRequest {
            name: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .accounts
        .pop()
        .unwrap();
    assert_eq!(account.ledger_len, 7);
    let seqs: Vec<u64> = account.ledger.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let mut entries = Vec::new();
    let mut after_seq = 0;
    loop {
        let r = svc
            .describe_ledger(Request::new(pb::DescribeLedgerRequest {
                account: "acme".into(),
                after_seq,
                limit: 3,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 3);
        entries.extend(r.entries);
        match r.next_after_seq {
            Some(n) => after_seq = n,
            None => break,
        }
    }
    assert_eq!(entries, account.ledger);

    // Events, of one account and of all, a page at a time.
    let everything = svc
        .describe_events(Request::new(pb::DescribeEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(everything.events.len() >= 2, "{everything:?}");
    assert_eq!(everything.next_after_seq, None);
    let mut paged = Vec::new();
    let mut after_seq = 0;
    loop {
        let r = svc
            .describe_events(Request::new(pb::DescribeEventsRequest {
                after_seq,
                limit: 1,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        paged.extend(r.events);
        match r.next_after_seq {
            Some(n) => after_seq = n,
            None => break,
        }
    }
    assert_eq!(paged, everything.events);
    let betas = svc
        .describe_events(Request::new(pb::DescribeEventsRequest {
            account: "beta".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    let want: Vec<_> = everything
        .events
        .iter()
        .filter(|e| e.account == "beta")
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(betas, want);

    f.svc.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paging_input_and_other_accounts_are_refused() {
    let (f, d0) = busy_cluster().await;
    let svc = &f.svc;

    let e = code(
        svc.describe_ledger(Request::new(pb::DescribeLedgerRequest {
            account: "acme".into(),
            limit: 1001,
            ..Default::default()
        }))
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit") && e.message().contains("1 to 1000"));
    let e = code(
        svc.describe_bills(Request::new(pb::DescribeBillsRequest {
            account: "acme".into(),
            day: Some(accounts::day_name(d0)),
            after_day: accounts::day_name(d0),
            ..Default::default()
        }))
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("invalid after_day"),
        "{}",
        e.message()
    );
    let e = code(
        svc.describe_bills(Request::new(pb::DescribeBillsRequest {
            account: "acme".into(),
            after_day: "yesterday".into(),
            ..Default::default()
        }))
        .await,
    );
    assert!(
        e.message().starts_with("invalid after_day"),
        "{}",
        e.message()
    );
    let e = code(
        svc.describe_usage(Request::new(pb::DescribeUsageRequest {
            account: "acme".into(),
            after: format!("beta/{}", accounts::day_name(d0)),
            ..Default::default()
        }))
        .await,
    );
    assert!(e.message().starts_with("invalid after"), "{}", e.message());
    let e = code(
        svc.describe_ledger(Request::new(pb::DescribeLedgerRequest::default()))
            .await,
    );
    assert!(
        e.message().starts_with("invalid account"),
        "{}",
        e.message()
    );

    // An account token reads its own ledger (naming it or not) and no other.
    let own = svc
        .describe_ledger(as_account("acme", pb::DescribeLedgerRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.entries.len(), 7);
    let e = code(
        svc.describe_ledger(as_account(
            "acme",
            pb::DescribeLedgerRequest {
                account: "beta".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = code(
        svc.describe_bills(as_account(
            "acme",
            pb::DescribeBillsRequest {
                account: "beta".into(),
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(e.code(), Code::PermissionDenied);
    let mine = svc
        .describe_usage(as_account("acme", pb::DescribeUsageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.rows.iter().all(|r| r.account == "acme"));

    f.svc.node.shutdown().await;
}
