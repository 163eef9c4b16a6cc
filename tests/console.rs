//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`) against a real 3-node cluster on a development clock.
//!
//! The operator signs in, creates an account, an instance, a group and an API, deploys it,
//! watches the live chart on node 1 show the traffic this test sends to nodes 2 and 3 (the
//! chart is the cluster's), changes the spec and sees the
//! ceiling line move, and sees the account suspended and restored as days pass on the clock.
//! Then account tokens sign in and see only their own account. Screenshots of each page are
//! written to target/console-screenshots/, and to docs/console/ with
//! `UPDATE_CONSOLE_SCREENSHOTS=1`.
//!
//! Without chromium and chromedriver the test says so and passes, except under CI=true,
//! where it fails: CI installs them (.ci/run).

use fantoccini::{Client, ClientBuilder, Locator};
use proto::admin as pb;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::http::{Server, Traffic};
use testkit::time::{DAY_MS, HOUR_MS, JAN_1};
use testkit::{Cluster, DevClock, KillOnDrop, PortLease, binaries, eventually};
use tonic::Request;

const SETTLE: Duration = Duration::from_secs(30);
const OPERATOR: &str = "operator-token-console-0123456789";

/// A program on the PATH.
fn program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromedriver with a headless Chromium session; `None` (the test skips) only outside CI.
struct Browser {
    client: Client,
    driver: KillOnDrop,
    _port: PortLease,
    /// The browser's temporary files (its profile, its singleton socket), removed on drop.
    _tmp: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser that chromedriver started outlives a killed chromedriver: end its whole
        // process group (chromedriver leads it), so a failing test leaves no browser behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
    }
}

async fn browser() -> Option<Browser> {
    let (chromium, driver) = match (program("chromium"), program("chromedriver")) {
        (Some(c), Some(d)) => (c, d),
        _ => {
            let why = "chromium and chromedriver are not on the PATH (Debian: apt-get install chromium chromium-driver)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true: {why}; .ci/run installs them");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let port = PortLease::take();
    let tmp = tempfile::Builder::new()
        .prefix("gateway-browser-")
        .tempdir()
        .expect("temp dir");
    let child = KillOnDrop::spawn(
        Command::new(driver)
            .env("TMPDIR", tmp.path())
            .arg(format!("--port={}", port.port()))
            // Its own process group, with the browser it starts (see `Drop for Browser`).
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start chromedriver");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    let url = format!("http://127.0.0.1:{}", port.port());
    let client = eventually("chromedriver to start a session", SETTLE, || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    Some(Browser {
        client,
        driver: child,
        _port: port,
        _tmp: tmp,
    })
}

async fn el(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
}

/// Waits for an element to be there (pages render after their reads).
async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    eventually(&format!("element {css}"), SETTLE, || async {
        c.find(Locator::Css(css)).await.ok()
    })
    .await
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = wait_for(c, css).await;
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn select(c: &Client, css: &str, value: &str) {
    wait_for(c, css).await.select_by_value(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    wait_for(c, css).await.click().await.unwrap();
}

/// Waits until the text of `css` satisfies `ok`; returns it.
async fn text_until(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(what, SETTLE, || async {
        let t = c.find(Locator::Css(css)).await.ok()?.text().await.ok()?;
        ok(&t).then_some(t)
    })
    .await
}

/// Waits until attribute `attr` of `css` satisfies `ok`; returns it.
async fn attr_until(
    c: &Client,
    css: &str,
    attr: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    eventually(what, SETTLE, || async {
        let v = c
            .find(Locator::Css(css))
            .await
            .ok()?
            .attr(attr)
            .await
            .ok()??;
        ok(&v).then_some(v)
    })
    .await
}

async fn go(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}{hash}")).await.unwrap();
}

/// Saves a screenshot of what the browser shows, from the top of the page or of `css`.
async fn screenshot(c: &Client, name: &str) {
    screenshot_at(c, name, None).await
}

async fn screenshot_at(c: &Client, name: &str, css: Option<&str>) {
    let script = match css {
        Some(css) => format!("document.querySelector({css:?}).scrollIntoView()"),
        None => "window.scrollTo(0, 0)".to_string(),
    };
    c.execute(&script, vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("target/console-screenshots")];
    if std::env::var("UPDATE_CONSOLE_SCREENSHOTS").as_deref() == Ok("1") {
        dirs.push(root.join("docs/console"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) -> String {
    go(c, base, "").await;
    fill(c, "#token", token).await;
    click(c, "#sign-in-submit").await;
    text_until(c, "#who-name", "the signed-in banner", |t| {
        t.starts_with("Signed in")
    })
    .await
}

fn with<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {OPERATOR}").parse().unwrap(),
    );
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_a_cluster_in_a_real_browser() {
    let Some(b) = browser().await else {
        return;
    };
    let c = &b.client;

    // Three nodes on a development clock, the admin API behind an operator token.
    let mut cluster = Cluster::new(binaries!(), 3);
    let token_file = cluster.dir().join("operator-token");
    std::fs::write(&token_file, OPERATOR).unwrap();
    let clock = DevClock(cluster.dir().join("clock"));
    clock.set(JAN_1 + HOUR_MS);
    cluster.extra_args = clock.node_args();
    for a in [
        "--usage-flush-ms",
        "100",
        "--shared-region",
        "cn-hangzhou",
        "--admin-token-file",
    ] {
        cluster.extra_args.push(a.into());
    }
    cluster.extra_args.push(token_file.display().to_string());
    cluster.admin_token = Some(OPERATOR.into());
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_leader(SETTLE).await;
    let console_addr = format!("127.0.0.1:{}", cluster.nodes[&1].ports.admin);
    let base = format!("http://{console_addr}/console/");
    let backend = Server::start("item").await;

    // Sign in; the cluster page shows three members and the leader.
    let who = sign_in(c, &base, OPERATOR).await;
    assert_eq!(who, "Signed in as the operator");
    go(c, &base, "#cluster").await;
    eventually("three members on the cluster page", SETTLE, || async {
        let rows = c
            .find_all(Locator::Css("#members tbody tr[data-node]"))
            .await
            .ok()?;
        (rows.len() == 3).then_some(())
    })
    .await;
    let leader = cluster.wait_leader(SETTLE).await;
    text_until(
        c,
        "#cluster-body dl",
        "the leader on the cluster page",
        |t| t.contains(&format!("node {leader}")),
    )
    .await;
    assert!(
        c.find(Locator::Css("#warn-no-leader")).await.is_err(),
        "no warning while there is a leader"
    );
    screenshot(c, "cluster").await;

    // An account with 30 dollars.
    go(c, &base, "#accounts").await;
    fill(c, "#create-account-name", "acme").await;
    click(c, "#create-account-submit").await;
    text_until(c, "#account-title", "the new account's page", |t| {
        t == "Account acme"
    })
    .await;
    fill(c, "#recharge-amount", "30").await;
    click(c, "#recharge-submit").await;
    text_until(c, "#account-balance", "the recharged balance", |t| {
        t == "30.00"
    })
    .await;

    // An instance: a bad name is refused at the name field, as the server words it.
    go(c, &base, "#instances").await;
    fill(c, "#create-instance-name", "Not A Name!").await;
    select(c, "#create-instance-region", "cn-hangzhou").await;
    fill(c, "#create-instance-account", "acme").await;
    click(c, "#create-instance-submit").await;
    let error = text_until(c, "#create-instance-name-error", "the name's error", |t| {
        t.starts_with("invalid name")
    })
    .await;
    assert_eq!(
        el(c, "#create-instance-name")
            .await
            .attr("aria-invalid")
            .await
            .unwrap()
            .as_deref(),
        Some("true"),
        "{error}"
    );
    fill(c, "#create-instance-name", "ded").await;
    select(c, "#create-instance-spec", "api.s1.small").await;
    click(c, "#create-instance-submit").await;
    text_until(c, "#instance-title", "the new instance", |t| {
        t == "Instance ded"
    })
    .await;
    let row = text_until(c, "tr[data-instance='ded']", "the instance row", |t| {
        t.contains("2500")
    })
    .await;
    assert!(
        row.contains("api.s1.small")
            && row.contains("cn-hangzhou")
            && row.contains("pay-as-you-go"),
        "{row}"
    );

    // A group on it, an API, deployed to RELEASE.
    go(c, &base, "#groups").await;
    fill(c, "#create-group-name", "shop").await;
    select(c, "#create-group-instance", "ded").await;
    fill(c, "#create-group-base_path", "/shop").await;
    fill(c, "#create-group-account", "acme").await;
    click(c, "#create-group-submit").await;
    text_until(c, "#group-title", "the new group", |t| t == "Group shop").await;
    fill(c, "#create-api-name", "item").await;
    fill(c, "#create-api-path", "/items/{id}").await;
    fill(
        c,
        "#create-api-backend",
        &format!("http://{}", backend.addr),
    )
    .await;
    click(c, "#create-api-submit").await;
    wait_for(c, "tr[data-api='item']").await;
    click(c, "#deploy-item-RELEASE").await;
    wait_for(c, "#abolish-item-RELEASE").await;
    // A throttling policy: a per-account limit above the API's is refused at its field; one
    // that never throttles this test is created and bound to the API.
    fill(c, "#create-policy-name", "calls").await;
    fill(c, "#create-policy-api_limit", "100000").await;
    fill(c, "#create-policy-user_limit", "200000").await;
    click(c, "#create-policy-submit").await;
    text_until(
        c,
        "#create-policy-user_limit-error",
        "the user_limit error",
        |t| t.starts_with("invalid user_limit"),
    )
    .await;
    el(c, "#create-policy-user_limit")
        .await
        .clear()
        .await
        .unwrap();
    click(c, "#create-policy-submit").await;
    text_until(c, "#policies", "the new policy", |t| t.contains("calls")).await;
    select(c, "#bind-policy-name", "calls").await;
    select(c, "#bind-policy-api", "item").await;
    click(c, "#bind-policy-submit").await;
    text_until(c, "#policies", "the policy's binding", |t| {
        t.contains("shop/item@RELEASE")
    })
    .await;
    // IP access control for the group: loopback only.
    fill(c, "#acl-allow", "127.0.0.0/8").await;
    click(c, "#acl-submit").await;
    text_until(c, "tr[data-group='shop']", "the group's allow list", |t| {
        t.contains("allow 127.0.0.0/8")
    })
    .await;
    wait_for(c, "#abolish-item-RELEASE").await;

    // Edit the API: a weight of 0 is refused at the backends field; a weight of 2 and a 7 s
    // timeout are saved, and deployed again to RELEASE, which then serves them.
    let url = format!("http://{}", backend.addr);
    click(c, "#edit-item").await;
    fill(c, "#edit-api-backends", &format!("{url}@0")).await;
    fill(c, "#edit-api-timeout_ms", "7000").await;
    click(c, "#edit-api-submit").await;
    text_until(
        c,
        "#edit-api-backends-error",
        "the weight error at the backends field",
        |t| t.contains("weight"),
    )
    .await;
    fill(c, "#edit-api-backends", &format!("{url}@2")).await;
    click(c, "#edit-api-submit").await;
    text_until(
        c,
        "tr[data-api='item']",
        "the new weight in the list",
        |t| t.contains(&format!("{url}@2")),
    )
    .await;
    click(c, "#redeploy-item-RELEASE").await;
    let deployed = eventually("the edited API deployed to RELEASE", SETTLE, || async {
        let g = cluster
            .ctl_with_token(
                1,
                Some(OPERATOR),
                &["group", "get", "--name", "shop", "-o", "json"],
            )
            .json();
        let d = g["deployments"]
            .as_array()?
            .iter()
            .find(|d| d["api"] == "item" && d["stage"] == "RELEASE")?
            .clone();
        (d["definition"]["timeout_ms"] == 7000).then_some(d)
    })
    .await;
    assert_eq!(
        deployed["definition"]["backends"][0]["weight"], 2,
        "{deployed}"
    );

    // An app, its secret shown once, and granted the API.
    fill(c, "#create-app-name", "mobile").await;
    click(c, "#create-app-submit").await;
    text_until(c, "#app-secret", "the new app's secret", |t| {
        t.contains("AppSecret")
    })
    .await;
    // The grant form offers it at once.
    select(c, "#grant-app", "mobile").await;
    select(c, "#grant-api", "item").await;
    click(c, "#grant-submit").await;
    text_until(c, "#grants", "the app's grant", |t| t.contains("mobile")).await;
    screenshot(c, "groups").await;

    // Traffic to nodes 2 and 3 only, until told to stop; bounded in time. The browser shows
    // node 1's console, which serves none of it: the chart shows the cluster's traffic.
    let http = [cluster.http_addr(2), cluster.http_addr(3)];
    for addr in &http {
        eventually(
            "the API to be routable on nodes 2 and 3",
            SETTLE,
            || async {
                testkit::http::get(addr, "/shop/items/1")
                    .await
                    .filter(|r| r.status == 200)
            },
        )
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let sender = tokio::spawn({
        let (stop, traffic, http) = (stop.clone(), traffic.clone(), http.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 1_000_000 {
                traffic
                    .get(&http[(i % 2) as usize], &format!("/shop/items/{i}"))
                    .await;
                i += 1;
            }
        }
    });

    // The live chart shows it, against the ceiling of api.s1.small.
    go(c, &base, "#instances/ded").await;
    let admitted = attr_until(
        c,
        "#live-chart",
        "data-admitted",
        "admitted traffic on the live chart",
        |v| v.parse::<f64>().unwrap_or(0.0) > 1.0,
    )
    .await;
    attr_until(
        c,
        "#live-chart",
        "data-ceiling",
        "the ceiling of api.s1.small",
        |v| v == "2500",
    )
    .await;
    let y_before = el(c, "#live-chart line.ceiling")
        .await
        .attr("y1")
        .await
        .unwrap()
        .unwrap();
    let caption = text_until(c, "#live-chart-caption", "the chart's caption", |t| {
        t.contains("admitted")
    })
    .await;
    assert!(caption.contains("ceiling 2500"), "{caption}");
    assert!(traffic.sent() > 0, "admitted {admitted}/s");
    let note = text_until(c, "#live-note", "the chart's note", |t| {
        t.contains("nodes reporting")
    })
    .await;
    assert!(note.contains("3 of 3 nodes reporting"), "{note}");
    // A few seconds of lines for the picture.
    attr_until(
        c,
        "#live-chart",
        "data-samples",
        "five samples on the chart",
        |v| v.parse::<u32>().unwrap_or(0) >= 5,
    )
    .await;
    screenshot(c, "instances").await;

    // Change the spec, confirmed in a dialog: the ceiling line moves to 5000.
    select(c, "#change-spec-spec", "api.s1.medium").await;
    click(c, "#change-spec-submit").await;
    let dialog = text_until(c, "#confirm-text", "the confirmation dialog", |t| {
        t.contains("api.s1.medium")
    })
    .await;
    assert!(dialog.contains("5000 rps"), "{dialog}");
    // By keyboard: the dialog opens on Cancel; Tab reaches Confirm, Enter presses it.
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("confirm-cancel")
    );
    focused.send_keys("\u{E004}").await.unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("confirm-ok")
    );
    focused.send_keys("\u{E007}").await.unwrap();
    attr_until(
        c,
        "#live-chart",
        "data-ceiling",
        "the ceiling line at 5000",
        |v| v == "5000",
    )
    .await;
    let y_after = attr_until(
        c,
        "#live-chart line.ceiling",
        "y1",
        "the ceiling line to move",
        |y| y != y_before,
    )
    .await;
    text_until(c, "tr[data-instance='ded']", "the row's new spec", |t| {
        t.contains("api.s1.medium") && t.contains("5000")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    eprintln!(
        "sent {} requests; ceiling line y {y_before} -> {y_after}",
        traffic.sent()
    );

    // At phone width the page still works (the tables scroll, the forms stack).
    c.set_window_size(390, 844).await.unwrap();
    go(c, &base, "#instances/ded").await;
    wait_for(c, "#live-chart").await;
    let overflow: serde_json::Value = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        serde_json::Value::Bool(true),
        "the page is wider than a phone"
    );
    screenshot(c, "instances-phone").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // Two days pass: 30 dollars do not cover them, the account is suspended; a recharge on
    // its page restores it.
    clock.set(JAN_1 + 2 * DAY_MS + HOUR_MS + 1);
    let mut admin = cluster.admin(1).await;
    eventually("acme to be suspended", SETTLE, || {
        let mut admin = admin.clone();
        async move {
            let a = admin
                .describe_accounts(with(pb::DescribeAccountsRequest {
                    name: "acme".into(),
                }))
                .await
                .ok()?
                .into_inner();
            (a.accounts.first()?.state == "suspended").then_some(())
        }
    })
    .await;
    go(c, &base, "#accounts/acme").await;
    text_until(c, "#account-state", "the suspended state", |t| {
        t == "suspended"
    })
    .await;
    attr_until(
        c,
        "#bills-chart",
        "data-bars",
        "two daily bills on the chart",
        |v| v.parse::<u32>().unwrap_or(0) >= 2,
    )
    .await;
    wait_for(c, "#events tr[data-kind='suspended']").await;
    text_until(c, "#usage", "usage of the API", |t| t.contains("item")).await;
    // Enough for the debt and more than the last bill: active again, not just overdue.
    fill(c, "#recharge-amount", "500").await;
    click(c, "#recharge-submit").await;
    text_until(c, "#account-state", "the restored state", |t| t == "active").await;
    text_until(c, "tr[data-account='acme']", "the restored row", |t| {
        t.contains("active")
    })
    .await;
    screenshot_at(c, "accounts", Some("#account-detail")).await;

    // Account tokens: another account sees none of acme's data, acme sees its own.
    admin
        .create_account(with(pb::CreateAccountRequest {
            name: "other".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let token = |account: &str| {
        let mut admin = admin.clone();
        let req = with(pb::CreateTokenRequest {
            account: account.into(),
        });
        async move {
            admin
                .create_token(req)
                .await
                .unwrap()
                .into_inner()
                .secret_token
        }
    };
    let other = token("other").await;
    let acme = token("acme").await;
    click(c, "#sign-out").await;
    let who = sign_in(c, &base, &other).await;
    assert_eq!(who, "Signed in as account other");
    assert!(
        !el(c, "#nav-cluster").await.is_displayed().await.unwrap(),
        "an account token has no cluster page"
    );
    go(c, &base, "#instances").await;
    let instances = text_until(c, "#instances", "the instance list", |t| {
        t.contains("None yet")
    })
    .await;
    assert!(!instances.contains("ded"), "{instances}");
    go(c, &base, "#accounts").await;
    let accounts = text_until(c, "#accounts", "the account list", |t| t.contains("other")).await;
    assert!(!accounts.contains("acme"), "{accounts}");
    go(c, &base, "#groups").await;
    let groups = text_until(c, "#groups", "the group list", |t| t.contains("None yet")).await;
    assert!(!groups.contains("shop"), "{groups}");
    // The same refusal without the page: the JSON endpoints apply the admin table.
    let bearer = format!("Bearer {other}");
    for (path, body) in [
        ("/console/api/DescribeAccounts", r#"{"name":"acme"}"#),
        ("/console/api/DescribeBills", r#"{"account":"acme"}"#),
        ("/console/api/DescribeInstances", r#"{"name":"ded"}"#),
    ] {
        let r = testkit::http::post_json(&console_addr, path, &[("authorization", &bearer)], body)
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.body.contains("PERMISSION_DENIED"), "{path}: {}", r.body);
    }
    let live = testkit::http::post_json(
        &console_addr,
        "/console/live/traffic",
        &[("authorization", &bearer)],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(live.status, 200, "{}", live.body);
    assert!(!live.body.contains("ded"), "{}", live.body);

    click(c, "#sign-out").await;
    let who = sign_in(c, &base, &acme).await;
    assert_eq!(who, "Signed in as account acme");
    go(c, &base, "#instances").await;
    wait_for(c, "tr[data-instance='ded']").await;
    go(c, &base, "#accounts").await;
    text_until(c, "#account-title", "acme's own account page", |t| {
        t == "Account acme"
    })
    .await;
    assert!(
        c.find(Locator::Css("#recharge")).await.is_err(),
        "recharging is the operator's"
    );
    // A wrong token is refused at sign-in.
    click(c, "#sign-out").await;
    go(c, &base, "").await;
    // Typed and sent with Enter, as from a keyboard.
    fill(c, "#token", "gwt_nope_nope\u{E007}").await;
    text_until(c, "#sign-in-error", "the sign-in error", |t| {
        t.contains("UNAUTHENTICATED")
    })
    .await;
    b.client.clone().close().await.unwrap();
}

/// The cluster page warns while there is no leader (one voter of three up, waiting for the
/// others), and stops once they come and elect one. Signed in without a token: the node has
/// no operator token and listens on loopback (local development).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_warns_without_a_leader() {
    let Some(b) = browser().await else {
        return;
    };
    let c = &b.client;
    let mut cluster = Cluster::new(binaries!(), 3);
    cluster.spawn(1);
    let base = format!(
        "http://127.0.0.1:{}/console/",
        cluster.nodes[&1].ports.admin
    );
    eventually("node 1's console", SETTLE, || async {
        testkit::http::get(
            &format!("127.0.0.1:{}", cluster.nodes[&1].ports.admin),
            "/console/",
        )
        .await
        .filter(|r| r.status == 200)
    })
    .await;
    let who = sign_in(c, &base, "").await;
    assert_eq!(who, "Signed in as the operator");
    go(c, &base, "#cluster").await;
    let warning = text_until(c, "#warn-no-leader", "the no-leader warning", |t| {
        t.starts_with("No leader")
    })
    .await;
    let body = text_until(c, "#cluster-body", "what node 1 waits for", |t| {
        t.contains("Waiting:")
    })
    .await;
    assert!(
        body.contains("Leader\nnone") || body.contains("Leader none"),
        "{warning}\n{body}"
    );
    screenshot(c, "cluster-no-leader").await;
    cluster.spawn(2);
    cluster.spawn(3);
    let leader = cluster.wait_leader(SETTLE).await;
    text_until(c, "#cluster-body", "the elected leader on the page", |t| {
        t.contains(&format!("node {leader}")) && !t.contains("No leader")
    })
    .await;
    b.client.clone().close().await.unwrap();
}

/// The console's HTTP rules, without a browser: headers, methods, media type, body size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_endpoints_refuse_what_they_must() {
    let mut cluster = Cluster::new(binaries!(), 1);
    cluster.spawn(1);
    cluster.wait_leader(SETTLE).await;
    let addr = format!("127.0.0.1:{}", cluster.nodes[&1].ports.admin);
    let page = testkit::http::get(&addr, "/console/").await.unwrap();
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.header("access-control-allow-origin").is_none());
    assert!(page.body.contains("js/app.js") && !page.body.contains("<script>"));
    let redirect = testkit::http::get(&addr, "/console").await.unwrap();
    assert_eq!(
        (redirect.status, redirect.header("location")),
        (308, Some("/console/"))
    );
    // A JSON endpoint: not with GET, not as a form, not from another origin's preflight.
    let get = testkit::http::get(&addr, "/console/api/DescribeSpecs")
        .await
        .unwrap();
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
    let ok = testkit::http::post_json(&addr, "/console/api/DescribeSpecs", &[], "{}")
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("api.s1.small"));
    assert!(ok.header("access-control-allow-origin").is_none());
    // A form or a no-preflight cross-site fetch can send only non-JSON types: refused.
    let r = raw(
        &addr,
        "POST /console/api/DescribeSpecs HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    // Errors name the field, as the admin service words them.
    let bad = testkit::http::post_json(
        &addr,
        "/console/api/CreateInstance",
        &[],
        r#"{"name":"x","spec":"nope","region":"cn-hangzhou"}"#,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    let e: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert_eq!(e["field"], "spec");
    assert!(e["message"].as_str().unwrap().contains("api.s1.small"));
    let unknown = testkit::http::post_json(&addr, "/console/api/Nope", &[], "{}")
        .await
        .unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // The body limit.
    let big = format!(
        r#"{{"document_json":"{}"}}"#,
        "x".repeat(console::MAX_BODY_BYTES + 1)
    );
    let r = testkit::http::post_json(&addr, "/console/api/ApplyConfig", &[], &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
}

/// Sends `request` as it is and returns the response's text.
async fn raw(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A console JSON call as the operator; the reply's JSON.
async fn console_call(addr: &str, method: &str, body: serde_json::Value) -> serde_json::Value {
    let bearer = format!("Bearer {OPERATOR}");
    let r = testkit::http::post_json(
        addr,
        &format!("/console/api/{method}"),
        &[("authorization", &bearer)],
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{method}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// `/console/live/traffic` with `token`.
async fn live_traffic(addr: &str, token: &str) -> serde_json::Value {
    let bearer = format!("Bearer {token}");
    let r = testkit::http::post_json(
        addr,
        "/console/live/traffic",
        &[("authorization", &bearer)],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The `requests` of `instance` in a list of instance counters.
fn requests_of(instances: &serde_json::Value, instance: &str) -> Option<u64> {
    instances
        .as_array()?
        .iter()
        .find(|i| i["instance"] == instance)?["requests"]
        .as_u64()
}

/// The live traffic endpoint without a browser: every node's counters and their sums, a node
/// killed, and what an account token may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_traffic_is_the_whole_clusters() {
    let mut cluster = Cluster::new(binaries!(), 3);
    let token_file = cluster.dir().join("operator-token");
    std::fs::write(&token_file, OPERATOR).unwrap();
    cluster.extra_args = ["--shared-region", "cn-hangzhou", "--admin-token-file"]
        .into_iter()
        .map(String::from)
        .collect();
    cluster.extra_args.push(token_file.display().to_string());
    cluster.admin_token = Some(OPERATOR.into());
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = cluster.wait_leader(SETTLE).await;
    let console = format!("127.0.0.1:{}", cluster.nodes[&1].ports.admin);
    let backend = Server::start("item").await;

    // Two accounts, an instance each; an API on each instance, `ded`'s deployed first.
    for (account, instance, group) in [("acme", "ded", "shop"), ("other", "spare", "probe")] {
        console_call(
            &console,
            "CreateAccount",
            serde_json::json!({"name": account}),
        )
        .await;
        console_call(
            &console,
            "Recharge",
            serde_json::json!({"account": account, "amount": "100", "request_id": format!("r-{account}")}),
        )
        .await;
        console_call(
            &console,
            "CreateInstance",
            serde_json::json!({"name": instance, "spec": "api.s1.small", "region": "cn-hangzhou",
                "charge_type": 1, "account": account}),
        )
        .await;
        console_call(
            &console,
            "CreateApiGroup",
            serde_json::json!({"name": group, "instance": instance, "base_path": format!("/{group}"),
                "account": account}),
        )
        .await;
        console_call(
            &console,
            "CreateApi",
            serde_json::json!({"group": group, "name": "item", "definition": {"method": "GET",
                "path": "/items/{id}", "backend": format!("http://{}", backend.addr)}}),
        )
        .await;
        console_call(
            &console,
            "DeployApi",
            serde_json::json!({"group": group, "name": "item", "stage": "RELEASE"}),
        )
        .await;
    }
    // Routable on every node: probed on `spare`'s API, deployed after `ded`'s, so that
    // `ded` counts only the requests below.
    for id in 1..=3 {
        let http = cluster.http_addr(id);
        eventually("the probe API to be routable", SETTLE, || async {
            testkit::http::get(&http, "/probe/items/1")
                .await
                .filter(|r| r.status == 200)
        })
        .await;
    }
    let token = |account: &'static str| {
        let console = console.clone();
        async move {
            console_call(
                &console,
                "CreateToken",
                serde_json::json!({"account": account}),
            )
            .await["secret_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (acme, other) = (token("acme").await, token("other").await);

    // Known counts on each node; the node that gets 10 is a follower, killed below (a read
    // of the instances goes on without an election).
    let victim = (1..=3).rev().find(|id| *id != leader).unwrap();
    let mut others = (1..=3).filter(|id| *id != victim);
    let counts: std::collections::BTreeMap<u64, u64> = [
        (others.next().unwrap(), 30),
        (others.next().unwrap(), 20),
        (victim, 10),
    ]
    .into();
    for (&id, &n) in &counts {
        let http = cluster.http_addr(id);
        for i in 0..n {
            let r = testkit::http::get(&http, &format!("/shop/items/{i}")).await;
            assert_eq!(r.map(|r| r.status), Some(200), "node {id}, request {i}");
        }
    }
    let node_requests = |live: &serde_json::Value, id: u64| {
        live["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .and_then(|n| requests_of(&n["instances"], "ded"))
    };
    let live = eventually(
        "60 requests of ded summed over the nodes",
        SETTLE,
        || async {
            let live = live_traffic(&console, OPERATOR).await;
            (requests_of(&live["instances"], "ded") == Some(60)).then_some(live)
        },
    )
    .await;
    assert_eq!(
        (live["node_id"].as_u64(), live["reporting"].as_u64()),
        (Some(1), Some(3)),
        "{live}"
    );
    for (&id, &n) in &counts {
        assert_eq!(node_requests(&live, id), Some(n), "node {id}: {live}");
    }
    let sum = live["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "ded")
        .unwrap();
    assert_eq!(sum["ceiling_rps"], 2500, "{live}");
    assert_eq!(
        (sum["throttled"].as_u64(), sum["failed"].as_u64()),
        (Some(0), Some(0))
    );
    // The sum is the nodes' shares added up. (What they add up to is not asserted: each node
    // sets its own from its demand now and its peers' last reports, so while demand moves, as
    // it does here with calls just sent, the sum strays from the ceiling for a report period.)
    let shares = sum["limit_rps"].as_f64().unwrap();
    let each: f64 = live["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["instances"].as_array().unwrap())
        .filter(|i| i["instance"] == "ded")
        .map(|i| i["limit_rps"].as_f64().unwrap())
        .sum();
    assert!(
        shares > 0.0 && (shares - each).abs() < 1e-6,
        "the shares sum to {shares}, the nodes' to {each}: {live}"
    );

    // An account token: its own instance only, in the sums and in every node's entry.
    let mine = live_traffic(&console, &acme).await;
    let text = mine.to_string();
    assert!(!text.contains("spare"), "{text}");
    assert_eq!(requests_of(&mine["instances"], "ded"), Some(60), "{text}");
    for n in mine["nodes"].as_array().unwrap() {
        let names: Vec<&str> = n["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ded"], "{text}");
    }
    let theirs = live_traffic(&console, &other).await.to_string();
    assert!(
        !theirs.contains("ded") && theirs.contains("spare"),
        "{theirs}"
    );

    // A node paused (its connection open, no answer), then killed: the others still answer,
    // within about a second, the silent one marked and why.
    let pid = cluster.nodes[&victim].pid().unwrap();
    for (what, cause) in [("paused", "no answer within 500 ms"), ("killed", "")] {
        if what == "paused" {
            testkit::signal(pid, "STOP");
            // The stop is delivered to each thread on its way back to user space: wait until
            // the process shows as stopped.
            eventually("the node to be stopped", SETTLE, || async {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                (state == 'T').then_some(())
            })
            .await;
        } else {
            cluster.kill(victim);
        }
        let started = Instant::now();
        let live = live_traffic(&console, OPERATOR).await;
        let took = started.elapsed();
        eprintln!("the sample with node {victim} {what} took {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "{what}: {took:?}: {live}"
        );
        let silent = live["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == victim)
            .unwrap();
        assert_eq!(silent["reachable"], false, "{what}: {live}");
        let error = silent["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty() && error.contains(cause), "{what}: {live}");
        assert_eq!(
            (live["members"].as_u64(), live["reporting"].as_u64()),
            (Some(3), Some(2)),
            "{what}: {live}"
        );
        for (&id, &n) in counts.iter().filter(|(id, _)| **id != victim) {
            assert_eq!(
                node_requests(&live, id),
                Some(n),
                "{what}, node {id}: {live}"
            );
        }
        assert_eq!(
            requests_of(&live["instances"], "ded"),
            Some(50),
            "{what}: {live}"
        );
    }
}
