use super::*;
use proptest::prelude::*;

fn cat() -> &'static Catalog {
    Catalog::builtin()
}

fn at(ms: Millis, command: Command) -> Proposal {
    Proposal { at_ms: ms, command }
}

fn create(name: &str, spec: &str) -> Command {
    Command::CreateInstance {
        name: name.into(),
        spec: spec.into(),
        region: "cn-hongkong".into(),
        charge_type: ChargeType::Postpaid,
        account: DEFAULT_ACCOUNT.into(),
    }
}

fn group(name: &str, instance: &str, base: Option<&str>) -> Command {
    Command::CreateApiGroup {
        name: name.into(),
        account: DEFAULT_ACCOUNT.into(),
        instance: instance.into(),
        host: None,
        base_path: base.map(Into::into),
    }
}

fn api_spec(path: &str) -> ApiSpec {
    ApiSpec {
        method: "GET".into(),
        path: path.into(),
        backend: "http://127.0.0.1:9000".into(),
        timeout_ms: 5000,
        auth: crate::AuthType::Anonymous,
    }
}

/// Applies and asserts that a refused command left the state exactly as it was.
fn apply(s: &mut State, p: Proposal) -> Result<Reply, DomainError> {
    let before = s.clone();
    let r = s.apply(&p, cat());
    if r.is_err() {
        assert_eq!(
            *s,
            before,
            "a refused {} changed the state",
            p.command.kind()
        );
    }
    r
}

#[test]
fn instance_lifecycle() {
    let mut s = State::default();
    let r = apply(&mut s, at(10, create("prod", "api.s1.small"))).unwrap();
    assert!(matches!(r, Reply::Instance(ref i) if i.created_at_ms == 10));
    apply(
        &mut s,
        at(
            20,
            Command::ModifyInstanceSpec {
                name: "prod".into(),
                spec: "api.s1.medium".into(),
            },
        ),
    )
    .unwrap();
    let i = &s.instances["prod"];
    assert_eq!(i.spec, "api.s1.medium");
    assert_eq!(
        i.spec_history,
        vec![
            SpecChange {
                at_ms: 10,
                spec: "api.s1.small".into()
            },
            SpecChange {
                at_ms: 20,
                spec: "api.s1.medium".into()
            },
        ]
    );
    apply(
        &mut s,
        at(
            30,
            Command::DeleteInstance {
                name: "prod".into(),
            },
        ),
    )
    .unwrap();
    assert!(s.instances.is_empty());
}

#[test]
fn bad_instances_are_refused_with_the_field_named() {
    let mut s = State::default();
    apply(&mut s, at(1, create("prod", "api.s1.small"))).unwrap();
    let cases = [
        (
            create("", "api.s1.small"),
            "invalid name: must not be empty",
        ),
        (
            create("x", "api.s9"),
            "invalid spec: unknown spec 'api.s9'; valid specs are: api.s1.small",
        ),
        (
            create("prod", "api.s1.small"),
            "instance 'prod' already exists",
        ),
        (
            create("shared", "api.s1.small"),
            "invalid name: 'shared' is the built-in",
        ),
        (
            Command::CreateInstance {
                name: "y".into(),
                spec: "api.s1.small".into(),
                region: "mars".into(),
                charge_type: ChargeType::Month,
                account: DEFAULT_ACCOUNT.into(),
            },
            "invalid region: unknown region 'mars'; valid regions are: cn-hangzhou",
        ),
        (
            Command::ModifyInstanceSpec {
                name: "nope".into(),
                spec: "api.s1.small".into(),
            },
            "instance 'nope' not found",
        ),
        (
            Command::DeleteInstance {
                name: "nope".into(),
            },
            "instance 'nope' not found",
        ),
    ];
    for (cmd, want) in cases {
        let e = apply(&mut s, at(2, cmd)).unwrap_err().to_string();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
    }
}

#[test]
fn groups_apis_and_deployments() {
    let mut s = State::default();
    apply(&mut s, at(1, create("ded", "api.s1.small"))).unwrap();
    apply(&mut s, at(2, group("shop", SHARED_INSTANCE, Some("/shop")))).unwrap();
    apply(
        &mut s,
        at(
            3,
            Command::CreateApi {
                group: "shop".into(),
                name: "item".into(),
                spec: api_spec("/items/{id}"),
            },
        ),
    )
    .unwrap();
    // Same shape, other parameter name: refused.
    let e = apply(
        &mut s,
        at(
            4,
            Command::CreateApi {
                group: "shop".into(),
                name: "item2".into(),
                spec: api_spec("/items/{x}"),
            },
        ),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("already serves GET /items/{x}"),
        "{e}"
    );
    let deploy = |stage| Command::DeployApi {
        group: "shop".into(),
        name: "item".into(),
        stage,
    };
    apply(&mut s, at(5, deploy(Stage::Release))).unwrap();
    assert!(s.groups["shop"].deployments[&Stage::Release].contains_key("item"));
    // A deployed API cannot be deleted, and the instance hosting a group cannot either.
    let e = apply(
        &mut s,
        at(
            6,
            Command::DeleteApi {
                group: "shop".into(),
                name: "item".into(),
            },
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("deployed to RELEASE"), "{e}");
    // Moving the group to the dedicated instance and back.
    let move_to = |inst: &str| Command::ModifyApiGroup {
        name: "shop".into(),
        change: GroupChange {
            instance: Some(inst.into()),
            ..Default::default()
        },
    };
    apply(&mut s, at(7, move_to("ded"))).unwrap();
    let e = apply(
        &mut s,
        at(8, Command::DeleteInstance { name: "ded".into() }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("still hosts API groups shop"), "{e}");
    let e = apply(&mut s, at(8, move_to("nope"))).unwrap_err();
    assert!(e.to_string().starts_with("invalid instance"), "{e}");
    apply(&mut s, at(9, move_to(SHARED_INSTANCE))).unwrap();
    apply(
        &mut s,
        at(
            10,
            Command::AbolishApi {
                group: "shop".into(),
                name: "item".into(),
                stage: Stage::Release,
            },
        ),
    )
    .unwrap();
    assert!(s.groups["shop"].deployments.is_empty());
    let e = apply(
        &mut s,
        at(
            11,
            Command::AbolishApi {
                group: "shop".into(),
                name: "item".into(),
                stage: Stage::Release,
            },
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not deployed to RELEASE"), "{e}");
    // Two groups on the same host and base path are refused.
    let e = apply(
        &mut s,
        at(12, group("shop2", SHARED_INSTANCE, Some("/shop"))),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("already serves host (any) and base path /shop"),
        "{e}"
    );
}

#[test]
fn deployment_is_a_snapshot_of_the_definition() {
    let mut s = State::default();
    apply(&mut s, at(1, group("g", SHARED_INSTANCE, None))).unwrap();
    apply(
        &mut s,
        at(
            2,
            Command::CreateApi {
                group: "g".into(),
                name: "a".into(),
                spec: api_spec("/a"),
            },
        ),
    )
    .unwrap();
    apply(
        &mut s,
        at(
            3,
            Command::DeployApi {
                group: "g".into(),
                name: "a".into(),
                stage: Stage::Test,
            },
        ),
    )
    .unwrap();
    apply(
        &mut s,
        at(
            4,
            Command::ModifyApi {
                group: "g".into(),
                name: "a".into(),
                spec: api_spec("/b"),
            },
        ),
    )
    .unwrap();
    assert_eq!(s.groups["g"].deployments[&Stage::Test]["a"].spec.path, "/a");
    assert_eq!(s.groups["g"].apis["a"].spec.path, "/b");
}

#[test]
fn stage_names() {
    assert_eq!(Stage::parse("release").unwrap(), Stage::Release);
    assert_eq!(Stage::parse("PRE").unwrap(), Stage::Pre);
    assert!(
        Stage::parse("prod")
            .unwrap_err()
            .to_string()
            .contains("RELEASE, PRE, TEST")
    );
}

fn arb_command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(vec!["a", "b", "shared", "", "c-1"]);
    let spec = prop::sample::select(vec!["api.s1.small", "api.s2.large", "bogus"]);
    let inst = prop::sample::select(vec!["a", "b", "shared", "zz"]);
    let path = prop::sample::select(vec!["/x", "/x/{id}", "/y", "bad"]);
    let stage = prop::sample::select(Stage::ALL.to_vec());
    prop_oneof![
        (name.clone(), spec.clone()).prop_map(|(n, s)| create(n, s)),
        (name.clone(), spec).prop_map(|(n, s)| Command::ModifyInstanceSpec {
            name: n.into(),
            spec: s.into()
        }),
        name.clone()
            .prop_map(|n| Command::DeleteInstance { name: n.into() }),
        (name.clone(), inst.clone()).prop_map(|(n, i)| group(n, i, None)),
        (name.clone(), inst).prop_map(|(n, i)| Command::ModifyApiGroup {
            name: n.into(),
            change: GroupChange {
                instance: Some(i.into()),
                ..Default::default()
            }
        }),
        name.clone()
            .prop_map(|n| Command::DeleteApiGroup { name: n.into() }),
        (name.clone(), name.clone(), path).prop_map(|(g, n, p)| Command::CreateApi {
            group: g.into(),
            name: n.into(),
            spec: api_spec(p)
        }),
        (name.clone(), name.clone(), stage.clone()).prop_map(|(g, n, st)| Command::DeployApi {
            group: g.into(),
            name: n.into(),
            stage: st
        }),
        (name.clone(), name, stage).prop_map(|(g, n, st)| Command::AbolishApi {
            group: g.into(),
            name: n.into(),
            stage: st
        }),
    ]
}

proptest! {
    /// Replicas that apply the same log agree, whatever the log holds, and a refused command
    /// never changes anything (checked inside `apply`).
    #[test]
    fn replicas_agree(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut a = State::default();
        let mut b = State::default();
        for (i, c) in cmds.into_iter().enumerate() {
            let p = at(i as u64, c);
            let ra = apply(&mut a, p.clone());
            let rb = b.apply(&p, cat());
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(&a, &b);
        // What a snapshot carries restores the same state.
        let json = serde_json::to_string(&a).unwrap();
        let restored: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(a, restored);
    }
}

#[test]
fn apps_are_authorised_per_api_and_acls_take_cidrs() {
    let mut s = State::default();
    apply(&mut s, at(1, group("g", SHARED_INSTANCE, None))).unwrap();
    apply(
        &mut s,
        at(
            2,
            Command::CreateApi {
                group: "g".into(),
                name: "a".into(),
                spec: api_spec("/a"),
            },
        ),
    )
    .unwrap();
    let app = |name: &str, key: &str| Command::CreateApp {
        name: name.into(),
        account: DEFAULT_ACCOUNT.into(),
        key: key.into(),
        secret: "0123456789abcdef0123".into(),
    };
    apply(&mut s, at(3, app("mobile", "key-00001"))).unwrap();
    let e = apply(&mut s, at(4, app("other", "key-00001"))).unwrap_err();
    assert!(
        e.to_string().contains("app key 'key-00001' already exists"),
        "{e}"
    );
    let grant = |app: &str| Command::AuthorizeApp {
        group: "g".into(),
        api: "a".into(),
        app: app.into(),
    };
    apply(&mut s, at(5, grant("mobile"))).unwrap();
    assert!(s.groups["g"].grants["a"].contains("mobile"));
    let e = apply(&mut s, at(6, grant("nope"))).unwrap_err();
    assert!(e.to_string().contains("app 'nope' not found"), "{e}");
    // Deleting the app takes its authorisations with it.
    apply(
        &mut s,
        at(
            7,
            Command::DeleteApp {
                name: "mobile".into(),
            },
        ),
    )
    .unwrap();
    assert!(s.groups["g"].grants.is_empty());

    let acl_of = |api: Option<&str>, allow: &[&str], deny: &[&str]| Command::SetIpAccessControl {
        group: "g".into(),
        api: api.map(str::to_string),
        allow: allow.iter().map(|c| c.to_string()).collect(),
        deny: deny.iter().map(|c| c.to_string()).collect(),
    };
    let acl = |allow: &[&str], deny: &[&str]| acl_of(None, allow, deny);
    apply(
        &mut s,
        at(8, acl(&["198.18.0.0/15", "2001:db8::/32"], &["198.18.0.7"])),
    )
    .unwrap();
    assert_eq!(s.groups["g"].ip_deny, ["198.18.0.7"]);
    for bad in ["198.18.0.0/33", "nonsense", "2001:db8::/129"] {
        let e = apply(&mut s, at(9, acl(&[bad], &[]))).unwrap_err();
        assert!(e.to_string().starts_with("invalid allow"), "{e}");
    }

    // An API's own rules sit beside the group's; empty lists remove them.
    apply(&mut s, at(10, acl_of(Some("a"), &[], &["198.19.0.0/16"]))).unwrap();
    assert_eq!(s.groups["g"].api_acls["a"].deny, ["198.19.0.0/16"]);
    assert_eq!(
        s.groups["g"].ip_deny,
        ["198.18.0.7"],
        "the group's are untouched"
    );
    let before = s.clone();
    let e = apply(
        &mut s,
        at(11, acl_of(Some("nope"), &[], &["198.19.0.0/16"])),
    )
    .unwrap_err();
    assert!(e.to_string().contains("API 'g/nope' not found"), "{e}");
    let e = apply(&mut s, at(11, acl_of(Some("a"), &[], &["bad"]))).unwrap_err();
    assert!(e.to_string().starts_with("invalid deny"), "{e}");
    assert_eq!(s, before, "refusals change nothing");
    apply(&mut s, at(12, acl_of(Some("a"), &[], &[]))).unwrap();
    assert!(s.groups["g"].api_acls.is_empty());
    // Deleting an API takes its rules and grants with it.
    apply(&mut s, at(13, acl_of(Some("a"), &["198.18.0.0/15"], &[]))).unwrap();
    apply(&mut s, at(14, app("mobile", "key-00002"))).unwrap();
    apply(&mut s, at(14, grant("mobile"))).unwrap();
    apply(
        &mut s,
        at(
            15,
            Command::DeleteApi {
                group: "g".into(),
                name: "a".into(),
            },
        ),
    )
    .unwrap();
    assert!(s.groups["g"].api_acls.is_empty() && s.groups["g"].grants.is_empty());
}
