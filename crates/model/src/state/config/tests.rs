use super::super::*;
use crate::ApiSpec;
use crate::config::{ApplyOptions, ApplyReport, ChangeKind, Document};
use catalog::SHARED_INSTANCE;
use proptest::prelude::*;
use serde_json::json;

fn cat() -> &'static Catalog {
    Catalog::builtin()
}

fn run(s: &mut State, ms: Millis, command: Command) -> Applied {
    let before = s.clone();
    let applied = s
        .apply(
            &Proposal {
                at_ms: ms,
                catalog: cat().fingerprint().into(),
                request_id: None,
                command,
            },
            cat(),
        )
        .expect("the same catalog");
    if applied.reply.is_err() {
        assert_eq!(*s, before, "a refused command changed the state");
        assert!(applied.changes.is_empty());
    }
    assert!(s.indexes_consistent(), "indexes out of step");
    applied
}

fn apply_doc(s: &mut State, ms: Millis, doc: &Document, options: ApplyOptions) -> Applied {
    run(
        s,
        ms,
        Command::ApplyConfig {
            desired: doc.clone(),
            options,
        },
    )
}

fn report(a: &Applied) -> &ApplyReport {
    match &a.reply {
        Ok(Reply::ConfigApplied(r)) => r,
        other => panic!("not applied: {other:?}"),
    }
}

fn doc(v: serde_json::Value) -> Document {
    serde_json::from_value(v).expect("a well-formed document")
}

fn prune() -> ApplyOptions {
    ApplyOptions {
        prune: true,
        ..ApplyOptions::default()
    }
}

/// A state with an app, two groups, deployments (one of them pinned to an earlier
/// definition), grants and ACLs, made with the single commands.
fn populated() -> State {
    let mut s = State::default();
    let mut ms = 1;
    let mut ok = |s: &mut State, c: Command| {
        ms += 1;
        let a = run(s, ms, c);
        assert!(a.reply.is_ok(), "{:?}", a.reply);
    };
    ok(
        &mut s,
        Command::CreateApp {
            name: "mobile".into(),
            account: DEFAULT_ACCOUNT.into(),
            key: "key-mobile-01".into(),
            secret: "0123456789abcdef0123".into(),
        },
    );
    for (g, base) in [("shop", "/shop"), ("blog", "/blog")] {
        ok(
            &mut s,
            Command::CreateApiGroup {
                name: g.into(),
                account: DEFAULT_ACCOUNT.into(),
                instance: SHARED_INSTANCE.into(),
                host: None,
                base_path: Some(base.into()),
            },
        );
    }
    let spec = |path: &str, backend: &str| ApiSpec {
        method: "GET".into(),
        path: path.into(),
        backends: backend.into(),
        timeout_ms: 5000,
        auth: crate::AuthType::App,
        backend_location: Default::default(),
    };
    ok(
        &mut s,
        Command::CreateApi {
            group: "shop".into(),
            name: "item".into(),
            spec: spec("/items/{id}", "http://127.0.0.1:9001"),
        },
    );
    for stage in [Stage::Release, Stage::Pre] {
        ok(
            &mut s,
            Command::DeployApi {
                group: "shop".into(),
                name: "item".into(),
                stage,
            },
        );
    }
    // PRE now serves an earlier definition than the API's.
    ok(
        &mut s,
        Command::ModifyApi {
            group: "shop".into(),
            name: "item".into(),
            spec: spec("/items/{id}", "http://127.0.0.1:9002"),
        },
    );
    ok(
        &mut s,
        Command::DeployApi {
            group: "shop".into(),
            name: "item".into(),
            stage: Stage::Release,
        },
    );
    ok(
        &mut s,
        Command::AuthorizeApp {
            group: "shop".into(),
            api: "item".into(),
            app: "mobile".into(),
        },
    );
    ok(
        &mut s,
        Command::SetIpAccessControl {
            group: "shop".into(),
            api: None,
            allow: vec!["198.18.0.0/15".into()],
            deny: vec!["198.18.0.7".into()],
        },
    );
    ok(
        &mut s,
        Command::SetIpAccessControl {
            group: "shop".into(),
            api: Some("item".into()),
            allow: vec![],
            deny: vec!["198.19.0.0/16".into()],
        },
    );
    ok(
        &mut s,
        Command::CreateApi {
            group: "blog".into(),
            name: "posts".into(),
            spec: spec("/posts", "http://127.0.0.1:9003"),
        },
    );
    s
}

#[test]
fn export_writes_everything_and_a_wipe_and_apply_brings_it_back() {
    let mut s = populated();
    let exported = s.export_config(None);
    let text = serde_json::to_value(&exported).unwrap();
    assert_eq!(
        text["groups"][1]["apis"][0],
        json!({
            "name": "item", "method": "GET", "path": "/items/{id}",
            "backend": "http://127.0.0.1:9002", "timeout_ms": 5000, "auth": "APP",
            "apps": ["mobile"], "ip_deny": ["198.19.0.0/16"], "stages": ["RELEASE"],
            "pinned": {"PRE": {"method": "GET", "path": "/items/{id}",
                "backend": "http://127.0.0.1:9001", "timeout_ms": 5000, "auth": "APP"}}
        }),
        "{text:#}"
    );
    assert_eq!(text["groups"][1]["ip_allow"], json!(["198.18.0.0/15"]));

    // Applying what is there changes nothing and names no group.
    let a = apply_doc(&mut s, 100, &exported, prune());
    assert_eq!(report(&a).changes, vec![]);
    assert!(a.changes.is_empty());

    for g in ["shop", "blog"] {
        run(
            &mut s,
            101,
            Command::DeleteApiGroup {
                name: g.into(),
                force: true,
            },
        );
    }
    assert!(s.export_config(None).groups.is_empty());
    let a = apply_doc(&mut s, 102, &exported, ApplyOptions::default());
    let r = report(&a);
    assert!(
        r.changes
            .iter()
            .all(|c| c.kind == ChangeKind::Add && !c.details.is_empty()),
        "{r:?}"
    );
    assert_eq!(r.changes.len(), 4, "two groups, two APIs: {r:?}");
    assert_eq!(
        a.changes.groups.iter().collect::<Vec<_>>(),
        ["blog", "shop"]
    );
    assert_eq!(s.export_config(None), exported);
}

#[test]
fn a_refused_document_lists_every_problem_and_changes_nothing() {
    let mut s = populated();
    let before = s.clone();
    let bad = doc(json!({"version": 1, "groups": [
        {"name": "shop", "base_path": "/shop", "host": "Not A Host",
         "ip_allow": ["10.0.0.0/33"], "apis": [
            {"name": "item", "method": "FETCH", "path": "items", "backend": "ftp://x",
             "timeout_ms": 0, "auth": "MAYBE", "stages": ["PROD"], "apps": ["ghost"]},
            {"name": "item", "method": "GET", "path": "/x", "backend": "http://127.0.0.1:1"}
        ]},
        {"name": "new-one", "account": "nobody", "instance": "nowhere"},
        {"name": "ok", "base_path": "/ok", "apis": [
            {"name": "a", "method": "GET", "path": "/a", "backend": "http://127.0.0.1:1"}]}
    ]}));
    let a = apply_doc(&mut s, 100, &bad, ApplyOptions::default());
    let e = a.reply.unwrap_err().to_string();
    for expected in [
        "group shop: invalid host",
        "group shop: invalid ip_allow",
        "api shop/item: invalid method",
        "api shop/item: invalid path",
        "api shop/item: invalid backend",
        "api shop/item: invalid timeout_ms",
        "api shop/item: invalid auth",
        "api shop/item: invalid stages",
        "api shop/item: invalid apps: 'ghost' is not an existing app",
        "api shop/item: invalid name: the group names this API more than once",
        "group new-one: invalid account: 'nobody' is not an existing account",
        "group new-one: invalid instance",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    assert!(e.starts_with("invalid document: 12 problems"), "{e}");
    assert!(!e.contains("group ok"), "{e}");
    assert_eq!(s, before);
    // The dry run says the same, and changes nothing either.
    let dry = s.dry_run_config(&bad, &ApplyOptions::default(), 100, cat());
    assert_eq!(dry.unwrap_err().to_string(), e);
}

#[test]
fn prune_removes_what_the_document_does_not_name_and_deployed_only_with_force() {
    let mut s = populated();
    // Only blog, with its API under another name.
    let only_blog = doc(json!({"version": 1, "groups": [
        {"name": "blog", "account": "default", "instance": "shared", "base_path": "/blog",
         "apis": [{"name": "articles", "method": "GET", "path": "/posts",
                   "backend": "http://127.0.0.1:9003"}]}
    ]}));
    // Without prune, nothing the document does not name goes; the new API clashes with the
    // old one's route.
    let a = apply_doc(&mut s, 100, &only_blog, ApplyOptions::default());
    let e = a.reply.unwrap_err().to_string();
    assert!(e.contains("already serves GET /posts"), "{e}");

    // With prune, shop is deployed: refused, naming it.
    let a = apply_doc(&mut s, 100, &only_blog, prune());
    let e = a.reply.unwrap_err().to_string();
    assert!(
        e.contains("group shop: not in the document") && e.contains("RELEASE: item"),
        "{e}"
    );
    let dry = s
        .dry_run_config(
            &only_blog,
            &ApplyOptions {
                prune: true,
                force: true,
                account: None,
            },
            100,
            cat(),
        )
        .unwrap();
    let a = apply_doc(
        &mut s,
        100,
        &only_blog,
        ApplyOptions {
            prune: true,
            force: true,
            account: None,
        },
    );
    assert_eq!(report(&a), &dry, "the dry run foretold it");
    let kinds: Vec<(ChangeKind, &str)> = report(&a)
        .changes
        .iter()
        .map(|c| (c.kind, c.object.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Add, "api blog/articles"),
            (ChangeKind::Remove, "api blog/posts"),
            (ChangeKind::Remove, "group shop"),
            (ChangeKind::Remove, "api shop/item"),
        ]
    );
    assert_eq!(
        a.changes.groups.iter().collect::<Vec<_>>(),
        ["blog", "shop"]
    );
    assert!(!s.groups.contains_key("shop"));
    assert!(s.index.grants_by_app.is_empty());
}

#[test]
fn two_apis_swap_paths_and_two_groups_swap_base_paths_in_one_apply() {
    let mut s = populated();
    let mut d = s.export_config(None);
    // blog <-> shop base paths.
    let (b, sh) = (d.groups[0].base_path.clone(), d.groups[1].base_path.clone());
    d.groups[0].base_path = sh;
    d.groups[1].base_path = b;
    d.groups[0].apis.push(crate::config::ApiEntry {
        name: "drafts".into(),
        method: "GET".into(),
        path: "/drafts".into(),
        backend: "http://127.0.0.1:9004".into(),
        backends: vec![],
        timeout_ms: 1000,
        auth: String::new(),
        backend_location: String::new(),
        apps: vec![],
        ip_allow: vec![],
        ip_deny: vec![],
        stages: vec!["TEST".into()],
        pinned: Default::default(),
    });
    let a = apply_doc(&mut s, 100, &d, ApplyOptions::default());
    assert!(a.reply.is_ok(), "{:?}", a.reply);
    // posts <-> drafts paths.
    let mut d2 = s.export_config(None);
    let apis = &mut d2.groups[0].apis;
    let (p0, p1) = (apis[0].path.clone(), apis[1].path.clone());
    apis[0].path = p1;
    apis[1].path = p0;
    let a = apply_doc(&mut s, 101, &d2, ApplyOptions::default());
    let r = report(&a);
    assert!(
        r.changes[0]
            .details
            .contains(&"path: /drafts => /posts".to_string())
            && r.changes[0]
                .details
                .contains(&"TEST: GET /drafts -> http://127.0.0.1:9004 (1000 ms, ANONYMOUS) => GET /posts -> http://127.0.0.1:9004 (1000 ms, ANONYMOUS)".to_string()),
        "{r:?}"
    );
    assert_eq!(s.export_config(None), d2);
}

#[test]
fn an_account_scoped_apply_touches_only_its_account() {
    let mut s = populated();
    run(
        &mut s,
        2,
        Command::CreateAccount {
            name: "acme".into(),
            webhook: None,
            balance_alert: None,
        },
    );
    let scoped = |prune| ApplyOptions {
        prune,
        force: true,
        account: Some("acme".into()),
    };
    let d = doc(json!({"version": 1, "groups": [
        {"name": "acme-api", "base_path": "/acme"},
        {"name": "shop", "account": "default", "base_path": "/elsewhere"}
    ]}));
    let e = apply_doc(&mut s, 100, &d, scoped(false))
        .reply
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group shop: invalid account: 'default' is not 'acme'")
            && e.contains("1 problem,"),
        "{e}"
    );
    // An empty document pruned in acme's scope leaves the default account's groups alone.
    let d = doc(json!({"version": 1, "groups": [{"name": "acme-api", "base_path": "/acme"}]}));
    apply_doc(&mut s, 101, &d, scoped(false)).reply.unwrap();
    assert_eq!(s.groups["acme-api"].account, "acme");
    let a = apply_doc(&mut s, 102, &doc(json!({"version": 1})), scoped(true));
    assert_eq!(report(&a).changes.len(), 1);
    assert_eq!(s.groups.len(), 2, "shop and blog stay");
}

#[test]
fn the_command_survives_the_raft_log_encoding() {
    let c = Command::ApplyConfig {
        desired: populated().export_config(None),
        options: prune(),
    };
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
}

/// Small documents over a few names, so that they collide often.
fn arb_doc() -> impl Strategy<Value = Document> {
    let name = prop::sample::select(vec!["a", "b", "c"]);
    let path = prop::sample::select(vec!["/x", "/y", "/{id}", "bad"]);
    let stage = prop::sample::select(vec!["RELEASE", "PRE", "TEST"]);
    let api = (
        name.clone(),
        path,
        prop::collection::vec(stage.clone(), 0..3),
        prop::option::of((stage, "/[xyz]")),
        any::<bool>(),
    )
        .prop_map(|(n, p, stages, pinned, grant)| {
            json!({"name": n, "method": "GET", "path": p, "backend": "http://127.0.0.1:9",
                   "stages": stages, "apps": if grant { vec!["mobile"] } else { vec![] },
                   "pinned": pinned.map(|(s, p)| json!({s: {"method": "GET", "path": p,
                       "backend": "http://127.0.0.1:8"}})).unwrap_or(json!({}))})
        });
    let base = prop::sample::select(vec!["/shop", "/blog", "/p"]);
    let group = (
        prop::sample::select(vec!["shop", "blog", "p"]),
        base,
        prop::collection::vec(api, 0..3),
    )
        .prop_map(|(n, b, apis)| json!({"name": n, "base_path": b, "apis": apis}));
    prop::collection::vec(group, 0..3).prop_map(|gs| doc(json!({"version": 1, "groups": gs})))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the document, an apply keeps the indexes in step (checked by `run`), changes
    /// nothing when refused, names every changed group, and once applied, applying its own
    /// export changes nothing.
    #[test]
    fn applies_are_all_or_nothing_and_reach_a_fixed_point(
        docs in prop::collection::vec((arb_doc(), any::<bool>(), any::<bool>()), 1..5)
    ) {
        let mut s = populated();
        for (i, (d, p, force)) in docs.into_iter().enumerate() {
            let before = s.clone();
            let options = ApplyOptions { prune: p, force, account: None };
            let a = apply_doc(&mut s, 100 + i as u64, &d, options.clone());
            if a.reply.is_ok() {
                for name in before.groups.keys().chain(s.groups.keys()) {
                    let changed = before.groups.get(name) != s.groups.get(name);
                    prop_assert_eq!(changed, a.changes.groups.contains(name), "{}", name);
                }
                let exported = s.export_config(None);
                let again = apply_doc(&mut s, 200, &exported, options);
                prop_assert!(again.changes.is_empty());
                prop_assert_eq!(&report(&again).changes, &vec![]);
            }
        }
    }
}

#[test]
fn policies_round_trip_and_are_validated_as_a_whole() {
    let mut s = populated();
    let mut d = s.export_config(None);
    let group = d.groups[0].name.clone();
    let api = d.groups[0].apis[0].name.clone();
    d.policies = vec![crate::config::PolicyEntry {
        name: "gold".into(),
        account: DEFAULT_ACCOUNT.into(),
        unit: "minute".into(),
        api_limit: 100,
        user_limit: Some(50),
        app_limit: Some(10),
        special_accounts: [(DEFAULT_ACCOUNT.to_string(), 20)].into(),
        bindings: vec![crate::config::BindingEntry {
            group: group.clone(),
            api: api.clone(),
            stage: "RELEASE".into(),
        }],
        ..Default::default()
    }];
    let a = apply_doc(&mut s, 100, &d, ApplyOptions::default());
    assert!(report(&a).changes.iter().any(|c| c.object == "policy gold"));
    assert!(a.changes.groups.contains(&group));
    assert_eq!(
        s.throttle_of(&group, &api, Stage::Release)
            .unwrap()
            .api_limit,
        100
    );
    // Export gives back what was applied; applying it again changes nothing.
    let again = s.export_config(None);
    assert_eq!(again.policies, d.policies);
    let a = apply_doc(&mut s, 101, &again, ApplyOptions::default());
    assert!(report(&a).changes.is_empty(), "{:?}", report(&a));

    // Every problem at once, naming the field; nothing applied.
    let mut bad = again.clone();
    bad.policies[0].unit = "week".into();
    bad.policies[0].user_limit = Some(500);
    bad.policies[0].bindings[0].api = "missing".into();
    let a = apply_doc(&mut s, 102, &bad, ApplyOptions::default());
    let message = a.reply.unwrap_err().to_string();
    for needle in ["invalid unit", "invalid user_limit", "invalid bindings"] {
        assert!(message.contains(needle), "{needle} in {message}");
    }

    // A prune with no policies in the document removes them and their bindings.
    let mut none = again.clone();
    none.policies.clear();
    let a = apply_doc(&mut s, 103, &none, prune());
    assert!(a.reply.is_ok(), "{:?}", a.reply);
    assert!(s.throttles.is_empty());
    assert!(s.throttle_of(&group, &api, Stage::Release).is_none());
}
