//! Declarative configuration on a real cluster: `gatewayctl export`, `diff`, `apply` (one
//! atomic Raft command, all or nothing) and `import openapi`, through the CLI, with traffic
//! through the data plane to show that what was applied is served.

use std::path::Path;
use std::time::Duration;
use testkit::http::{Server, get};
use testkit::{Cluster, CtlOutput, binaries};

const SETTLE: Duration = Duration::from_secs(20);

fn ok(out: CtlOutput) -> String {
    assert!(out.success, "gatewayctl failed: {}", out.stderr);
    out.stdout
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Waits until `GET path` through node `id`'s data plane answers `status`.
async fn served(c: &Cluster, id: u64, path: &str, status: u16) {
    let addr = c.http_addr(id);
    testkit::eventually(&format!("GET {path} -> {status}"), SETTLE, || async {
        get(&addr, path).await.filter(|r| r.status == status)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_wipe_apply_round_trips_and_a_bad_document_changes_nothing() {
    let mut c = Cluster::start(binaries!(), 3).await;
    c.wait_leader(SETTLE).await;
    let backend = Server::start("from-backend").await;
    let url = format!("http://{}", backend.addr);
    let ctl = |args: &[&str]| ok(c.ctl(2, args));
    let json = |args: &[&str]| c.ctl_json(2, args);

    // Everything the format holds, made with the single commands.
    json(&["app", "create", "--name", "mobile"]);
    json(&["group", "create", "--name", "shop", "--base-path", "/shop"]);
    json(&[
        "group",
        "create",
        "--name",
        "blog",
        "--host",
        "blog.example.com",
    ]);
    let api = |verb: &str, group: &str, name: &str, path: &str, backend: &str| {
        json(&[
            "api",
            verb,
            "--group",
            group,
            "--name",
            name,
            "--method",
            "GET",
            "--path",
            path,
            "--backend",
            backend,
        ])
    };
    api("create", "shop", "item", "/items/{id}", &url);
    api("create", "shop", "list", "/items", &url);
    api("create", "blog", "posts", "/posts", &url);
    for (group, name, stage) in [
        ("shop", "item", "RELEASE"),
        ("shop", "item", "PRE"),
        ("shop", "list", "TEST"),
        ("blog", "posts", "RELEASE"),
    ] {
        json(&[
            "api", "deploy", "--group", group, "--name", name, "--stage", stage,
        ]);
    }
    // PRE keeps serving the first definition of item.
    api(
        "modify",
        "shop",
        "item",
        "/items/{id}",
        &format!("{url}/v2"),
    );
    json(&[
        "api", "deploy", "--group", "shop", "--name", "item", "--stage", "RELEASE",
    ]);
    json(&[
        "api",
        "authorize",
        "--group",
        "shop",
        "--name",
        "item",
        "--app",
        "mobile",
    ]);
    json(&[
        "group",
        "set-acl",
        "--name",
        "shop",
        "--allow",
        "127.0.0.0/8,198.18.0.0/15",
    ]);
    json(&[
        "api",
        "set-acl",
        "--group",
        "blog",
        "--name",
        "posts",
        "--deny",
        "198.19.0.0/16",
    ]);
    served(&c, 1, "/shop/items/7", 200).await;

    let exported = ctl(&["export"]);
    for expected in [
        "version: 1",
        "name: shop",
        "base_path: /shop",
        "host: blog.example.com",
        "- 198.18.0.0/15",
        "path: /items/{id}",
        "- mobile",
        "pinned:",
        "PRE:",
        "- TEST",
        "- 198.19.0.0/16",
    ] {
        assert!(exported.contains(expected), "{expected:?} in:\n{exported}");
    }
    let as_json = c.ctl_json(3, &["export"]);
    assert_eq!(as_json["groups"].as_array().unwrap().len(), 2);
    let file = write(c.dir(), "cluster.yaml", &exported);

    // Wipe, apply, export again: the same document, and the traffic is back.
    for g in ["shop", "blog"] {
        json(&["group", "delete", "--name", g, "--force"]);
    }
    assert_eq!(as_json_groups(&c), 0);
    served(&c, 1, "/shop/items/7", 404).await;
    let applied = ctl(&["apply", "-f", &file]);
    assert!(
        applied.contains("+ group shop") && applied.contains("applied: 5 to add"),
        "{applied}"
    );
    assert_eq!(ok(c.ctl(3, &["export"])), exported);
    served(&c, 1, "/shop/items/7", 200).await;
    // Applying it again changes nothing.
    assert!(ctl(&["apply", "-f", &file]).contains("no changes"));

    // One bad entry among good changes: refused whole, every problem listed, nothing changed.
    let bad = exported
        .replacen("path: /items\n", "path: /things\n", 1)
        .replace(&format!("backend: {url}/v2"), "backend: ftp://nowhere")
        .replace("host: blog.example.com", "host: Not_A_Host");
    assert_ne!(bad, exported);
    let out = c.ctl(2, &["apply", "-f", &write(c.dir(), "bad.yaml", &bad)]);
    assert!(!out.success, "{}", out.stdout);
    for expected in [
        "InvalidArgument",
        "2 problems, nothing was applied",
        "group blog: invalid host",
        "api shop/item: invalid backend: 'ftp://nowhere'",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?} in {}",
            out.stderr
        );
    }
    assert_eq!(ok(c.ctl(3, &["export"])), exported);

    // diff and --dry-run show the change and write nothing; apply writes it.
    let edited = exported.replacen("path: /items\n", "path: /things\n", 1);
    let edited_file = write(c.dir(), "edited.yaml", &edited);
    let diff = ctl(&["diff", "-f", &edited_file]);
    assert!(
        diff.contains("~ api shop/list\n    path: /items => /things\n")
            && diff.contains("dry run, nothing written: 0 to add, 1 to change, 0 to remove"),
        "{diff}"
    );
    let dry = ctl(&["apply", "-f", &edited_file, "--dry-run"]);
    assert_eq!(dry, diff);
    assert_eq!(ok(c.ctl(3, &["export"])), exported);
    ctl(&["apply", "-f", &edited_file]);
    assert_eq!(ok(c.ctl(3, &["export"])), edited);

    // --prune: blog is not in the file. Without --prune it stays; with it, being deployed, it
    // goes only with --force.
    let shop_only = c.ctl_json(2, &["export"]);
    let mut shop_only = shop_only;
    shop_only["groups"]
        .as_array_mut()
        .unwrap()
        .retain(|g| g["name"] == "shop");
    let shop_file = write(c.dir(), "shop.json", &shop_only.to_string());
    assert!(ctl(&["apply", "-f", &shop_file]).contains("no changes"));
    assert_eq!(as_json_groups(&c), 2);
    let out = c.ctl(2, &["apply", "-f", &shop_file, "--prune"]);
    assert!(
        !out.success
            && out
                .stderr
                .contains("group blog: not in the document, and a prune removes it, but it has deployed APIs (RELEASE: posts)"),
        "{}",
        out.stderr
    );
    assert_eq!(as_json_groups(&c), 2);
    let pruned = ctl(&["apply", "-f", &shop_file, "--prune", "--force"]);
    assert!(
        pruned.contains("- group blog\n- api blog/posts\n"),
        "{pruned}"
    );
    assert_eq!(as_json_groups(&c), 1);
}

fn as_json_groups(c: &Cluster) -> usize {
    c.ctl_json(3, &["export"])["groups"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_import_and_account_tokens_apply_only_their_own_groups() {
    let mut c = Cluster::start(binaries!(), 1).await;
    c.wait_leader(SETTLE).await;
    let backend = Server::start("pets").await;
    let url = format!("http://{}", backend.addr);

    // The Petstore: three operations, three APIs, deployed and served.
    c.ctl_json(
        1,
        &["group", "create", "--name", "pets", "--base-path", "/v1"],
    );
    let petstore = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/petstore.yaml");
    let out = ok(c.ctl(
        1,
        &[
            "import",
            "openapi",
            petstore,
            "--group",
            "pets",
            "--backend",
            &url,
            "--stage",
            "RELEASE",
        ],
    ));
    assert!(
        out.contains("+ api pets/listPets\n    method: GET\n    path: /pets\n")
            && out.contains("applied: 3 to add, 0 to change, 0 to remove"),
        "{out}"
    );
    let apis = c.ctl_json(1, &["api", "list", "--group", "pets"]);
    let mut got: Vec<(String, String, String)> = apis
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let d = &a["definition"];
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (s(&a["name"]), s(&d["method"]), s(&d["path"]))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("createPets".into(), "POST".into(), "/pets".into()),
            ("listPets".into(), "GET".into(), "/pets".into()),
            ("showPetById".into(), "GET".into(), "/pets/{petId}".into()),
        ],
        "{apis:#}"
    );
    served(&c, 1, "/v1/pets/7", 200).await;
    assert!(backend.received().iter().any(|r| r.path == "/pets/7"));
    // A second import changes nothing.
    let again = ok(c.ctl(
        1,
        &[
            "import",
            "openapi",
            petstore,
            "--group",
            "pets",
            "--backend",
            &url,
            "--stage",
            "RELEASE",
        ],
    ));
    assert!(again.contains("no changes"), "{again}");
    // Into a group that is not there: a clear error, nothing created.
    let out = c.ctl(
        1,
        &[
            "import",
            "openapi",
            petstore,
            "--group",
            "nope",
            "--backend",
            &url,
        ],
    );
    assert!(
        !out.success && out.stderr.contains("API group 'nope' not found"),
        "{}",
        out.stderr
    );

    // An account token applies only its own account's groups.
    c.ctl_json(1, &["account", "create", "--name", "acme"]);
    let token = c.ctl_json(1, &["token", "create", "--account", "acme"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let acme = |args: &[&str]| c.ctl_with_token(1, Some(&token), args);
    let before = ok(c.ctl(1, &["export"]));
    let theirs = write(
        c.dir(),
        "theirs.yaml",
        "version: 1\ngroups:\n- name: pets\n  base_path: /elsewhere\n- name: other\n  account: default\n  base_path: /other\n- name: mine\n  base_path: /acme\n",
    );
    let out = acme(&["apply", "-f", &theirs]);
    assert!(
        !out.success
            && out.stderr.contains("PermissionDenied")
            && out
                .stderr
                .contains("group pets: belongs to another account than 'acme'")
            && out
                .stderr
                .contains("group other: account 'default' is not 'acme'")
            && !out.stderr.contains("group mine"),
        "{}",
        out.stderr
    );
    assert_eq!(ok(c.ctl(1, &["export"])), before, "nothing changed");
    let mine = write(
        c.dir(),
        "mine.yaml",
        "version: 1\ngroups:\n- name: mine\n  base_path: /acme\n",
    );
    assert!(ok(acme(&["apply", "-f", &mine])).contains("+ group mine"));
    // Its export is its own groups only; its prune removes only its own.
    let exported = ok(acme(&["export", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(v["groups"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["groups"][0]["account"], "acme");
    let empty = write(c.dir(), "empty.yaml", "version: 1\n");
    let pruned = ok(acme(&["apply", "-f", &empty, "--prune"]));
    assert!(
        pruned.contains("- group mine") && !pruned.contains("pets"),
        "{pruned}"
    );
    assert_eq!(ok(c.ctl(1, &["export"])), before);
    let out = acme(&["export", "--account", "default"]);
    assert!(
        !out.success && out.stderr.contains("PermissionDenied"),
        "{}",
        out.stderr
    );
}
