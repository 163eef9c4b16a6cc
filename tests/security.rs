//! Admin authentication and authorisation on a real cluster: the operator's token, account
//! tokens that only reach their own account, revocation, and that no refusal changes anything.

use std::time::Duration;
use testkit::{Cluster, CtlOutput, binaries};

const SETTLE: Duration = Duration::from_secs(20);
const OPERATOR: &str = "operator-token-0123456789abcdef";

fn refused(out: &CtlOutput, code: &str, text: &str) {
    assert!(!out.success, "should be refused: {}", out.stdout);
    assert!(
        out.stderr.contains(code) && out.stderr.contains(text),
        "expected {code} with {text:?}, got {:?}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_account_tokens_reach_only_their_account() {
    let mut c = Cluster::new(binaries!(), 3);
    let token_file = c.dir().join("operator-token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    c.extra_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    c.admin_token = Some(OPERATOR.into());
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    let op = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        c.ctl_with_token(2, Some(OPERATOR), &a).json()
    };

    // No token, a wrong token: UNAUTHENTICATED.
    refused(
        &c.ctl(1, &["instance", "list"]),
        "Unauthenticated",
        "missing bearer token",
    );
    refused(
        &c.ctl_with_token(1, Some("guess"), &["instance", "list"]),
        "Unauthenticated",
        "invalid bearer token",
    );
    refused(
        &c.ctl_with_token(
            1,
            None,
            &[
                "instance",
                "create",
                "--name",
                "x",
                "--spec",
                "api.s1.small",
                "--region",
                "cn-hongkong",
            ],
        ),
        "Unauthenticated",
        "missing bearer token",
    );

    // The operator sets up two accounts, a resource each, and a token for account a.
    op(&["account", "create", "--name", "a"]);
    op(&["account", "create", "--name", "b"]);
    op(&[
        "instance",
        "create",
        "--name",
        "b-inst",
        "--spec",
        "api.s1.small",
        "--region",
        "cn-hongkong",
        "--account",
        "b",
    ]);
    op(&["group", "create", "--name", "b-group", "--account", "b"]);
    let t = op(&["token", "create", "--account", "a"]);
    let a_token = t["token"].as_str().unwrap().to_string();
    let a_id = t["id"].as_str().unwrap().to_string();
    assert!(a_token.starts_with("gwt_"));
    // Account a's token is used through nodes 3 and 1 next: they must know it.
    c.wait_caught_up(2, &[1, 3]).await;
    let listed = op(&["token", "list"]);
    assert!(
        !listed
            .to_string()
            .contains(a_token.rsplit('_').next().unwrap()),
        "the secret is never shown again"
    );
    let before = op(&["instance", "list"]);

    // Account a works within its own account, through any node.
    let a = |id: u64, args: &[&str]| c.ctl_with_token(id, Some(&a_token), args);
    let out = a(
        3,
        &[
            "instance",
            "create",
            "--name",
            "a-inst",
            "--spec",
            "api.s1.small",
            "--region",
            "cn-hongkong",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        out.json()["account"],
        "a",
        "created in the token's own account"
    );
    c.wait_caught_up(3, &[1, 2]).await;
    let mine = a(1, &["instance", "list", "-o", "json"]).json();
    let names: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-inst"], "an account sees only its own instances");
    assert!(
        a(1, &["group", "list", "-o", "json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // ...and nothing of account b's, nor the operator's business.
    let denied: &[(&[&str], &str)] = &[
        (
            &["instance", "get", "--name", "b-inst"],
            "instance 'b-inst' belongs to another account",
        ),
        (
            &[
                "instance",
                "modify-spec",
                "--name",
                "b-inst",
                "--spec",
                "api.s2.large",
            ],
            "belongs to another account",
        ),
        (
            &["instance", "delete", "--name", "b-inst"],
            "belongs to another account",
        ),
        (
            &[
                "group",
                "modify",
                "--name",
                "b-group",
                "--instance",
                "a-inst",
            ],
            "belongs to another account",
        ),
        (
            &["group", "create", "--name", "g2", "--account", "b"],
            "cannot see or act for account 'b'",
        ),
        (
            &["account", "get", "--name", "b"],
            "cannot see or act for account 'b'",
        ),
        (
            &["account", "recharge", "--name", "b", "--amount", "5"],
            "needs the operator's token",
        ),
        // Not even its own: a tenant cannot add money it never paid.
        (
            &["account", "recharge", "--name", "a", "--amount", "5000"],
            "needs the operator's token",
        ),
        // Nor credit itself with an adjustment.
        (
            &[
                "account", "adjust", "--name", "a", "--amount", "+5000", "--reason", "gift",
            ],
            "needs the operator's token",
        ),
        (
            &["instance", "renew", "--name", "b-inst", "--months", "1"],
            "belongs to another account",
        ),
        (
            &[
                "instance",
                "set-auto-renew",
                "--name",
                "b-inst",
                "--auto-renew",
                "true",
            ],
            "belongs to another account",
        ),
        (
            &["bill", "statement", "--account", "b", "--month", "2026-01"],
            "cannot see or act for account 'b'",
        ),
        (
            &["bill", "list", "--account", "b"],
            "cannot see or act for account 'b'",
        ),
        (
            &["usage", "--account", "b"],
            "cannot see or act for account 'b'",
        ),
        (
            &["account", "create", "--name", "c"],
            "needs the operator's token",
        ),
        (
            &["token", "create", "--account", "a"],
            "needs the operator's token",
        ),
        (&["cluster", "status"], "needs the operator's token"),
        (
            &["cluster", "remove", "--node-id", "3"],
            "needs the operator's token",
        ),
    ];
    for (args, text) in denied {
        refused(&a(2, args), "PermissionDenied", text);
    }
    // None of that changed anything.
    let after = op(&["instance", "list"]);
    let b_after: Vec<_> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["account"] == "b")
        .collect();
    let b_before: Vec<_> = before
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["account"] == "b")
        .collect();
    assert_eq!(b_after, b_before);
    assert_eq!(
        op(&["cluster", "status"])["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(op(&["account", "get", "--name", "b"])["balance"], "0.00");

    // Revoked: the token stops working on every node.
    op(&["token", "revoke", "--id", &a_id]);
    for id in 1..=3 {
        testkit::eventually("the revocation to reach every node", SETTLE, || async {
            let out = a(id, &["instance", "list"]);
            (!out.success && out.stderr.contains("invalid bearer token")).then_some(())
        })
        .await;
    }
}

/// Sends a raw HTTP/1.1 request (one per connection) and returns the status and body.
async fn raw(addr: &str, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}

/// A signed request's head, as a client following the scheme sends it.
fn signed_head(key: &str, secret: &str, path: &str, ts: u64, nonce: &str) -> String {
    let mut req = signer::RequestParts::from_uri("GET", path);
    signer::Signer::new(key, secret).sign(&mut req, ts, nonce);
    let mut head = format!(
        "GET {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n",
        req.path_and_query()
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head + "\r\n"
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_apis_take_only_signed_calls_of_authorised_apps_and_acls_deny_addresses() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = testkit::http::Server::start("secret stuff").await;
    let b = format!("http://{}", backend.addr);
    c.deploy_get_api("g", "a", &b, &["--auth-type", "APP"]);
    let app = c.ctl_json(2, &["app", "create", "--name", "mobile"]);
    let (key, secret) = (
        app["app_key"].as_str().unwrap().to_string(),
        app["app_secret"].as_str().unwrap().to_string(),
    );
    let other = c.ctl_json(2, &["app", "create", "--name", "other"]);
    let (okey, osecret) = (
        other["app_key"].as_str().unwrap().to_string(),
        other["app_secret"].as_str().unwrap().to_string(),
    );
    let addr = c.http_addr(3);
    let unsigned = "GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    // Deployed but nobody authorised: even a correct signature is refused; unsigned too. (Wait
    // for node 3 to serve both the API and the app: it publishes what it applies a moment
    // later, and an unknown app is refused otherwise.)
    testkit::eventually("node 3 to know the API and the app", SETTLE, || async {
        let (status, text) = raw(
            &addr,
            &signed_head(&key, &secret, "/a", now_ms(), &format!("n-0-{}", now_ms())),
        )
        .await;
        (status == 403 && text.contains("AppUnauthorized")).then_some(())
    })
    .await;
    let (status, text) = raw(&addr, unsigned).await;
    assert_eq!(status, 401, "{text}");

    c.ctl_json(
        1,
        &[
            "api",
            "authorize",
            "--group",
            "g",
            "--name",
            "a",
            "--app",
            "mobile",
        ],
    );
    let head = signed_head(&key, &secret, "/a?x=1", now_ms(), "n-1");
    let (status, text) =
        testkit::eventually("the authorisation to reach node 3", SETTLE, || async {
            let r = raw(
                &addr,
                &signed_head(&key, &secret, "/a", now_ms(), &format!("w-{}", now_ms())),
            )
            .await;
            (r.0 == 200).then_some(r)
        })
        .await;
    assert!(text.contains("secret stuff"), "{status} {text}");
    let (status, _) = raw(&addr, &head).await;
    assert_eq!(status, 200, "a signed call of the authorised app");
    // Each rejection says which check failed.
    let cases = [
        (raw(&addr, &head).await, 403, "Nonce"),
        (
            raw(
                &addr,
                &signed_head(&key, "wrong-secret", "/a", now_ms(), "n-2"),
            )
            .await,
            401,
            "Invalid Signature",
        ),
        (
            raw(
                &addr,
                &signed_head(&key, &secret, "/a", now_ms() - 16 * 60_000, "n-3"),
            )
            .await,
            403,
            "imestamp",
        ),
        (
            raw(&addr, &signed_head(&okey, &osecret, "/a", now_ms(), "n-4")).await,
            403,
            "not authorised",
        ),
        (
            raw(
                &addr,
                &signed_head("unknown-key", &secret, "/a", now_ms(), "n-5"),
            )
            .await,
            401,
            "",
        ),
        (raw(&addr, unsigned).await, 401, ""),
    ];
    for ((status, text), want, words) in cases {
        assert_eq!(status, want, "{text}");
        let header = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-ca-error-message"))
            .unwrap_or("");
        assert!(
            header.contains(words),
            "X-Ca-Error-Message should say {words:?}: {header}"
        );
    }
    assert!(gatewayctl_call_works(&c, &key, &secret).await);

    // IP access control: deny the loopback range for the group, then allow it again.
    c.ctl_json(
        2,
        &["group", "set-acl", "--name", "g", "--deny", "127.0.0.0/8"],
    );
    testkit::eventually("the ACL to reach node 3", SETTLE, || async {
        let (status, text) = raw(
            &addr,
            &signed_head(&key, &secret, "/a", now_ms(), &format!("d-{}", now_ms())),
        )
        .await;
        (status == 403 && text.contains("IpDenied")).then_some(())
    })
    .await;
    c.ctl_json(
        2,
        &["group", "set-acl", "--name", "g", "--allow", "127.0.0.0/8"],
    );
    testkit::eventually("the ACL to let loopback in again", SETTLE, || async {
        let (status, _) = raw(
            &addr,
            &signed_head(&key, &secret, "/a", now_ms(), &format!("e-{}", now_ms())),
        )
        .await;
        (status == 200).then_some(())
    })
    .await;
}

/// `gatewayctl call` signs the way clients must.
async fn gatewayctl_call_works(c: &Cluster, key: &str, secret: &str) -> bool {
    let file = c.dir().join("app-secret");
    std::fs::write(&file, secret).unwrap();
    let url = format!("http://{}/a?y=2", c.http_addr(1));
    let out = c.ctl(
        1,
        &[
            "call",
            "--url",
            &url,
            "--app-key",
            key,
            "--app-secret-file",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    out.success && out.json()["status"] == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_access_control_applies_per_group_and_per_api() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = testkit::http::Server::start("ok").await;
    let b = format!("http://{}", backend.addr);
    for api in ["one", "two"] {
        c.deploy_get_api("g", api, &b, &["--auth-type", "ANONYMOUS"]);
    }
    let get = |node: u64, path: &'static str| {
        let addr = c.http_addr(node);
        async move {
            let r = testkit::http::get(&addr, path).await?;
            let denied = r.status == 403 && r.body.contains("IpDenied");
            Some((r.status, denied))
        }
    };
    // Every node sees `one` and `two` as wanted: (status of /one, status of /two).
    let expect = |one: u16, two: u16, what: &'static str| async move {
        for node in 1..=3 {
            testkit::eventually(what, SETTLE, || async {
                let (s1, d1) = get(node, "/one").await?;
                let (s2, d2) = get(node, "/two").await?;
                let denied_right = (s1 != 403 || d1) && (s2 != 403 || d2);
                (s1 == one && s2 == two && denied_right).then_some(())
            })
            .await;
        }
    };
    expect(200, 200, "both APIs open").await;

    // Loopback denied on API `one` only.
    let g = c.ctl_json(
        2,
        &[
            "api",
            "set-acl",
            "--group",
            "g",
            "--name",
            "one",
            "--deny",
            "127.0.0.0/8",
        ],
    );
    assert_eq!(g["api_acls"][0]["api"], "one");
    assert_eq!(g["api_acls"][0]["deny"][0], "127.0.0.0/8");
    expect(403, 200, "API one denying loopback").await;

    // The group's own rules apply to both; an API's allow list does not override them.
    c.ctl_json(
        3,
        &[
            "group",
            "set-acl",
            "--name",
            "g",
            "--allow",
            "198.18.0.0/15",
        ],
    );
    c.ctl_json(
        3,
        &[
            "api",
            "set-acl",
            "--group",
            "g",
            "--name",
            "one",
            "--allow",
            "127.0.0.0/8",
        ],
    );
    expect(403, 403, "the group allowing only 198.18.0.0/15").await;

    // Bad input names the field and changes nothing; an unknown API is NOT_FOUND.
    let before = c.ctl_json(1, &["group", "get", "--name", "g"]);
    for (api, cidr, code, words) in [
        ("one", "300.1.1.1/8", "InvalidArgument", "deny"),
        ("nope", "127.0.0.1", "NotFound", "not found"),
    ] {
        let args = [
            "api", "set-acl", "--group", "g", "--name", api, "--deny", cidr,
        ];
        refused(&c.ctl(1, &args), code, words);
    }
    assert_eq!(c.ctl_json(1, &["group", "get", "--name", "g"]), before);

    // Clearing the group's rules leaves API one's (allowing loopback): both open again.
    c.ctl_json(1, &["group", "set-acl", "--name", "g"]);
    expect(200, 200, "only API one's allow list left").await;
    c.ctl_json(1, &["api", "set-acl", "--group", "g", "--name", "one"]);
    let g = c.ctl_json(1, &["group", "get", "--name", "g"]);
    assert_eq!(g["api_acls"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_keeps_the_auth_type_it_was_deployed_with() {
    let c = Cluster::start(binaries!(), 3).await;
    let backend = testkit::http::Server::start("ok").await;
    let b = format!("http://{}", backend.addr);
    c.ctl_json(1, &["group", "create", "--name", "g"]);
    let def = |auth: &'static str| {
        vec![
            "--group",
            "g",
            "--name",
            "s",
            "--method",
            "GET",
            "--path",
            "/s",
            "--backend",
            &b,
            "--auth-type",
            auth,
        ]
    };
    let mut create = vec!["api", "create"];
    create.extend(def("ANONYMOUS"));
    c.ctl_json(1, &create);
    c.ctl_json(1, &["api", "deploy", "--group", "g", "--name", "s"]);
    // The next version needs signed calls; it goes to TEST first.
    let mut modify = vec!["api", "modify"];
    modify.extend(def("APP"));
    c.ctl_json(2, &modify);
    c.ctl_json(
        2,
        &[
            "api", "deploy", "--group", "g", "--name", "s", "--stage", "TEST",
        ],
    );
    let addr = c.http_addr(3);
    let head = |stage: &str| {
        format!("GET /s HTTP/1.1\r\nhost: x\r\nx-ca-stage: {stage}\r\nconnection: close\r\n\r\n")
    };
    testkit::eventually("TEST to want signatures", SETTLE, || async {
        let (status, _) = raw(&addr, &head("TEST")).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, text) = raw(&addr, &head("RELEASE")).await;
    assert_eq!(
        status, 200,
        "RELEASE still runs the version deployed without auth: {text}"
    );
}
