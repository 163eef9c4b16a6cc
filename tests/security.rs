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
    for id in 1..=3 {
        c.spawn(id);
    }
    // wait_leader uses the unauthenticated status call, so poll with the operator's token.
    testkit::eventually("a leader", SETTLE, || async {
        let out = c.ctl_with_token(1, Some(OPERATOR), &["cluster", "status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        v["leader_id"].as_u64()
    })
    .await;
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
            "cannot create resources for account 'b'",
        ),
        (
            &["account", "get", "--name", "b"],
            "belongs to another account",
        ),
        (
            &["account", "recharge", "--name", "b", "--amount", "5"],
            "belongs to another account",
        ),
        (
            &["bill", "list", "--account", "b"],
            "belongs to another account",
        ),
        (&["usage", "--account", "b"], "cannot see account 'b'"),
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
