use super::*;
use crate::command::{GroupChange, UsageDelta};
use crate::entity::{ApiSpec, AuthType};
use catalog::{SHARED_INSTANCE, Usd};
use proptest::prelude::*;

fn cat() -> &'static Catalog {
    Catalog::builtin()
}

fn at(ms: Millis, command: Command) -> Proposal {
    Proposal {
        at_ms: ms,
        catalog: cat().fingerprint().into(),
        request_id: None,
        command,
    }
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
        backends: "http://127.0.0.1:9000".into(),
        timeout_ms: 5000,
        auth: crate::AuthType::Anonymous,
        backend_location: Default::default(),
    }
}

/// Applies and asserts that a refused command left the state exactly as it was, and that the
/// indexes kept in step equal a rebuild.
fn apply(s: &mut State, p: Proposal) -> Result<Reply, DomainError> {
    apply_full(s, &p).reply
}

/// [`apply`], returning everything the command did.
fn apply_full(s: &mut State, p: &Proposal) -> Applied {
    let before = s.clone();
    let applied = s.apply(p, cat()).expect("the same catalog");
    if applied.reply.is_err() {
        assert_eq!(
            *s,
            before,
            "a refused {} changed the state",
            p.command.kind()
        );
    }
    assert!(s.indexes_consistent(), "indexes after {:?}", p.command);
    applied
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
fn a_group_with_deployed_apis_is_deleted_only_with_force() {
    let mut s = State::default();
    apply(&mut s, at(1, group("g", SHARED_INSTANCE, None))).unwrap();
    let create = Command::CreateApi {
        group: "g".into(),
        name: "a".into(),
        spec: api_spec("/a"),
    };
    apply(&mut s, at(2, create)).unwrap();
    let deploy = Command::DeployApi {
        group: "g".into(),
        name: "a".into(),
        stage: Stage::Release,
    };
    apply(&mut s, at(3, deploy)).unwrap();
    let delete = |force| Command::DeleteApiGroup {
        name: "g".into(),
        force,
    };
    let err = apply(&mut s, at(4, delete(false))).unwrap_err();
    assert!(
        matches!(&err, DomainError::FailedPrecondition(m) if m.contains("RELEASE: a") && m.contains("--force")),
        "{err}"
    );
    assert!(s.groups.contains_key("g"), "nothing changed");
    apply(&mut s, at(5, delete(true))).unwrap();
    assert!(!s.groups.contains_key("g"));
    assert!(s.indexes_consistent());
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
    let account = prop::sample::select(vec![DEFAULT_ACCOUNT, "acme", "zz"]);
    let amount = prop::sample::select(vec!["0", "0.01", "5", "3000", "-1"]);
    let cidr = prop::sample::select(vec!["10.0.0.0/8", "198.18.0.1/32", "bogus"]);
    let charge = prop::sample::select(vec![ChargeType::Postpaid, ChargeType::Month]);
    prop_oneof![
        (name.clone(), spec.clone(), charge.clone(), account.clone()).prop_map(|(n, s, c, a)| {
            Command::CreateInstance {
                name: n.into(),
                spec: s.into(),
                region: "cn-hongkong".into(),
                charge_type: c,
                account: a.into(),
            }
        }),
        (
            name.clone(),
            spec.clone(),
            charge,
            account.clone(),
            any::<bool>()
        )
            .prop_map(|(n, s, c, a, auto_renew)| Command::CreateInstanceWith {
                name: n.into(),
                spec: s.into(),
                region: "cn-hongkong".into(),
                charge_type: c,
                account: a.into(),
                options: crate::InstanceOptions { auto_renew },
            }),
        (name.clone(), 0..3u32, any::<bool>()).prop_map(|(n, k, years)| {
            Command::RenewInstance {
                name: n.into(),
                term: if years {
                    billing::Term::Years(k)
                } else {
                    billing::Term::Months(k)
                },
            }
        }),
        (name.clone(), any::<bool>()).prop_map(|(n, auto_renew)| {
            Command::SetInstanceAutoRenew {
                name: n.into(),
                auto_renew,
            }
        }),
        (name.clone(), spec).prop_map(|(n, s)| Command::ModifyInstanceSpec {
            name: n.into(),
            spec: s.into()
        }),
        name.clone()
            .prop_map(|n| Command::DeleteInstance { name: n.into() }),
        (name.clone(), inst.clone(), account.clone()).prop_map(|(n, i, a)| {
            Command::CreateApiGroup {
                name: n.into(),
                account: a.into(),
                instance: i.into(),
                host: None,
                base_path: Some(format!("/{n}")),
            }
        }),
        (name.clone(), inst).prop_map(|(n, i)| Command::ModifyApiGroup {
            name: n.into(),
            change: GroupChange {
                instance: Some(i.into()),
                ..Default::default()
            }
        }),
        name.clone().prop_map(|n| Command::DeleteApiGroup {
            name: n.into(),
            force: true
        }),
        (name.clone(), name.clone(), path.clone(), any::<bool>()).prop_map(|(g, n, p, app)| {
            let mut spec = api_spec(p);
            if app {
                spec.auth = AuthType::App;
            }
            Command::CreateApi {
                group: g.into(),
                name: n.into(),
                spec,
            }
        }),
        (name.clone(), name.clone(), path).prop_map(|(g, n, p)| Command::ModifyApi {
            group: g.into(),
            name: n.into(),
            spec: api_spec(p)
        }),
        (name.clone(), name.clone()).prop_map(|(g, n)| Command::DeleteApi {
            group: g.into(),
            name: n.into(),
        }),
        (name.clone(), name.clone(), stage.clone()).prop_map(|(g, n, st)| Command::DeployApi {
            group: g.into(),
            name: n.into(),
            stage: st
        }),
        (name.clone(), name.clone(), stage).prop_map(|(g, n, st)| Command::AbolishApi {
            group: g.into(),
            name: n.into(),
            stage: st
        }),
        (
            name.clone(),
            prop::option::of(name.clone()),
            cidr.clone(),
            cidr
        )
            .prop_map(|(g, api, allow, deny)| Command::SetIpAccessControl {
                group: g.into(),
                api: api.map(Into::into),
                allow: vec![allow.into()],
                deny: vec![deny.into()],
            }),
        account.clone().prop_map(|a| Command::CreateAccount {
            name: a.into(),
            webhook: None,
            balance_alert: None,
        }),
        (account.clone(), amount.clone()).prop_map(|(a, m)| Command::Recharge {
            account: a.into(),
            amount: Usd::parse(m).unwrap(),
        }),
        (account.clone(), amount.clone(), name.clone()).prop_map(|(a, m, reason)| {
            Command::AdjustBalance {
                account: a.into(),
                amount: Usd::parse(m).unwrap(),
                reason: reason.into(),
            }
        }),
        (account.clone(), amount).prop_map(|(a, m)| Command::SetAccountAlert {
            account: a.into(),
            threshold: crate::Update::Set(Usd::parse(m).unwrap()),
            webhook: crate::Update::Keep,
        }),
        (account.clone(), 0..20u64).prop_map(|(a, seq)| Command::AckEvents {
            account: a.into(),
            seq
        }),
        (1..3u64, 0..6u64, account.clone(), 0..3_000_000u64).prop_map(|(node, seq, a, calls)| {
            Command::RecordUsage {
                node,
                seq,
                deltas: vec![UsageDelta {
                    account: a.into(),
                    instance: SHARED_INSTANCE.into(),
                    api: "x".into(),
                    region: "cn-hongkong".into(),
                    calls,
                    bytes_out: calls * 100,
                    backend_bytes: 0,
                }],
            }
        }),
        (0..3u64).prop_map(|d| Command::CloseCycle { day: d }),
        (name.clone(), account.clone()).prop_map(|(n, a)| Command::CreateApp {
            name: n.into(),
            account: a.into(),
            key: format!("key-{n}-0123456"),
            secret: "0123456789abcdef".into(),
        }),
        name.clone()
            .prop_map(|n| Command::DeleteApp { name: n.into() }),
        (name.clone(), name.clone(), name.clone()).prop_map(|(g, api, app)| {
            Command::AuthorizeApp {
                group: g.into(),
                api: api.into(),
                app: app.into(),
            }
        }),
        (name.clone(), name.clone(), name).prop_map(|(g, api, app)| {
            Command::RevokeAppAuthorization {
                group: g.into(),
                api: api.into(),
                app: app.into(),
            }
        }),
        (
            account,
            prop::sample::select(vec!["0123456789abcdef", "bad"])
        )
            .prop_map(|(a, id)| {
                Command::CreateToken {
                    id: id.into(),
                    account: a.into(),
                    secret_sha256: "ab".repeat(32),
                }
            }),
        // A declarative apply (its own suite is in `config/tests.rs`).
        (
            prop::sample::select(vec!["a", "b", ""]),
            prop::sample::select(vec!["/x", "/x/{id}", "bad"]),
            prop::sample::select(Stage::ALL.to_vec()),
            any::<bool>()
        )
            .prop_map(|(g, p, st, prune)| {
                let doc = serde_json::json!({"version": 1, "groups": [{
                    "name": g, "base_path": "/cfg", "apis": [{"name": "a", "method": "GET",
                    "path": p, "backend": "http://127.0.0.1:9", "stages": [st.as_str()]}]
                }]});
                Command::ApplyConfig {
                    desired: serde_json::from_value(doc).expect("a well-formed document"),
                    options: crate::config::ApplyOptions {
                        prune,
                        force: prune,
                        account: None,
                    },
                }
            }),
    ]
}

/// Proposal times: mostly forward, by up to two days (so cycles close), sometimes backwards
/// (a new leader whose clock is behind).
fn arb_log() -> impl Strategy<Value = Vec<(i64, Command)>> {
    prop::collection::vec((-3_600_000i64..2 * 86_400_000, arb_command()), 0..80)
}

proptest! {
    /// Replicas that apply the same log agree, whatever the log holds; a refused command never
    /// changes anything and the indexes stay equal to a rebuild (checked inside `apply`); time
    /// in the state never goes backwards; and what a snapshot carries (the binary encoding)
    /// restores the same state.
    #[test]
    fn replicas_agree(log in arb_log()) {
        let mut a = State::default();
        let mut b = State::default();
        let mut t: i64 = 1_767_225_600_000;
        let mut history = Vec::new();
        for (dt, c) in log {
            t += dt;
            let p = at(t as u64, c);
            let clock_before = a.clock_ms;
            let ra = apply_full(&mut a, &p);
            prop_assert!(a.clock_ms >= clock_before);
            let rb = b.apply(&p, cat()).unwrap();
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(&a, &b);
            history.extend(rb.history);
        }
        // A snapshot of the final state includes exactly the history written on the way.
        let cut = a.history_cut();
        prop_assert!(history.iter().all(|r| cut.includes(r)));
        let bytes = postcard::to_stdvec(&a).unwrap();
        let restored: State = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&a, &restored);
        let json = serde_json::to_string(&a).unwrap();
        let restored: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(a, restored);
        // Every history record survives the binary encoding too.
        let bytes = postcard::to_stdvec(&history).unwrap();
        let restored: Vec<HistoryRecord> = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(history, restored);
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

#[test]
fn a_proposal_priced_with_another_catalog_is_refused() {
    let mut s = State::default();
    apply(&mut s, at(1, create("prod", "api.s1.small"))).unwrap();
    assert_eq!(s.catalog.as_deref(), Some(cat().fingerprint()));
    let text = include_str!("../../../catalog/data/catalog.toml").replacen("2500", "2600", 1);
    let other = Catalog::from_toml_str(&text).unwrap();
    assert_ne!(other.fingerprint(), cat().fingerprint());
    let before = s.clone();
    // Proposed with the cluster's catalog, applied by a node with another one.
    let e = s
        .apply(&at(2, create("b", "api.s1.small")), &other)
        .unwrap_err();
    assert!(e.to_string().contains("same catalog"), "{e}");
    assert_eq!(s, before);
    assert!(s.check_catalog(&other).is_err());
    assert!(s.check_catalog(cat()).is_ok());
}

#[test]
fn time_never_goes_backwards_across_leaders() {
    let mut s = State::default();
    apply(&mut s, at(5_000, create("a", "api.s1.small"))).unwrap();
    // A new leader whose clock is 4 s behind: the instance is created "at" the latest time.
    let r = apply(&mut s, at(1_000, create("b", "api.s1.small"))).unwrap();
    assert!(matches!(r, Reply::Instance(ref i) if i.created_at_ms == 5_000));
    assert_eq!(s.clock_ms, 5_000);
}

fn with_id(ms: Millis, id: &str, command: Command) -> Proposal {
    Proposal {
        request_id: Some(id.into()),
        ..at(ms, command)
    }
}

#[test]
fn a_repeated_request_gets_its_first_outcome_and_is_applied_once() {
    let mut s = State::default();
    let recharge = Command::Recharge {
        account: DEFAULT_ACCOUNT.into(),
        amount: Usd::parse("1.00").unwrap(),
    };
    let first = s
        .apply(&with_id(1, "n1-a", recharge.clone()), cat())
        .unwrap();
    assert_eq!(first.history.len(), 1, "one ledger entry");
    let after_first = s.clone();
    // The same request again (a retry after a lost reply, or re-proposed by a new leader).
    let again = s
        .apply(&with_id(2, "n1-a", recharge.clone()), cat())
        .unwrap();
    assert_eq!(again.reply, first.reply);
    assert!(again.history.is_empty() && again.changes.is_empty());
    assert_eq!(s, after_first, "nothing applied twice");
    // Another request with the same content is another write.
    s.apply(&with_id(3, "n1-b", recharge), cat()).unwrap();
    assert_eq!(
        s.accounts[DEFAULT_ACCOUNT].billing.balance(),
        Usd::parse("2.00").unwrap()
    );
    // A refused request stays refused, even once it would pass.
    let make = |n: &str| Command::CreateApiGroup {
        name: n.into(),
        account: DEFAULT_ACCOUNT.into(),
        instance: "later".into(),
        host: None,
        base_path: None,
    };
    let refused = s.apply(&with_id(4, "n2-x", make("g")), cat()).unwrap();
    assert!(refused.reply.is_err());
    apply(&mut s, at(5, create("later", "api.s1.small"))).unwrap();
    let retried = s.apply(&with_id(6, "n2-x", make("g")), cat()).unwrap();
    assert_eq!(retried.reply, refused.reply);
    assert!(!s.groups.contains_key("g"));
}

#[test]
fn sessions_remember_a_bounded_number_of_requests() {
    let mut sessions = Sessions::default();
    for i in 0..REMEMBERED_REQUESTS + 10 {
        sessions.remember(&format!("r{i}"), Ok(Reply::Done));
    }
    assert_eq!(sessions.len(), REMEMBERED_REQUESTS);
    assert!(
        sessions.outcome("r9").is_none(),
        "the oldest are forgotten first"
    );
    assert!(sessions.outcome("r10").is_some());
}

mod throttles {
    use super::*;
    use crate::command::SpecialTarget;
    use crate::entity::ThrottleUnit;

    fn create_policy(name: &str, api: u64, user: Option<u64>, app: Option<u64>) -> Command {
        Command::CreateThrottlePolicy {
            name: name.into(),
            account: DEFAULT_ACCOUNT.into(),
            unit: ThrottleUnit::Second,
            api_limit: api,
            user_limit: user,
            app_limit: app,
        }
    }

    fn bind(name: &str, api: &str, stage: Stage) -> Command {
        Command::BindThrottlePolicy {
            name: name.into(),
            group: "g".into(),
            api: api.into(),
            stage,
        }
    }

    fn field_of(r: Result<Reply, DomainError>) -> String {
        match r {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("not an invalid field: {other:?}"),
        }
    }

    fn with_api() -> State {
        let mut s = State::default();
        apply(&mut s, at(1, group("g", SHARED_INSTANCE, Some("/g")))).unwrap();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let c = Command::CreateApi {
                group: "g".into(),
                name: name.into(),
                spec: api_spec(&format!("/{name}")),
            };
            apply(&mut s, at(2 + i as u64, c)).unwrap();
        }
        s
    }

    #[test]
    fn limits_are_validated_naming_the_field() {
        let mut s = with_api();
        let cases = [
            (create_policy("p", 0, None, None), "api_limit"),
            (create_policy("p", 10, Some(11), None), "user_limit"),
            (create_policy("p", 10, Some(5), Some(6)), "app_limit"),
            (create_policy("p", 10, None, Some(11)), "app_limit"),
            (create_policy("p", 10, Some(0), None), "user_limit"),
            (create_policy("bad name", 10, None, None), "name"),
            (create_policy("p", 2_000_000_000, None, None), "api_limit"),
        ];
        for (c, field) in cases {
            assert_eq!(field_of(apply(&mut s, at(10, c))), field);
        }
        let r = apply(&mut s, at(10, create_policy("p", 10, Some(10), Some(5)))).unwrap();
        assert!(matches!(r, Reply::Throttle(ref p) if p.app_limit == Some(5)));
        assert!(matches!(
            apply(&mut s, at(11, create_policy("p", 10, None, None))),
            Err(DomainError::AlreadyExists { .. })
        ));
        // A special over the API limit, and one for an app that does not exist.
        let special = |target, limit| Command::SetThrottleSpecial {
            name: "p".into(),
            target,
            limit,
        };
        assert_eq!(
            field_of(apply(
                &mut s,
                at(
                    12,
                    special(SpecialTarget::Account(DEFAULT_ACCOUNT.into()), Some(11))
                )
            )),
            "limit"
        );
        assert!(matches!(
            apply(
                &mut s,
                at(12, special(SpecialTarget::App("nokey".into()), Some(1)))
            ),
            Err(DomainError::NotFound { .. })
        ));
        apply(
            &mut s,
            at(
                13,
                special(SpecialTarget::Account(DEFAULT_ACCOUNT.into()), Some(7)),
            ),
        )
        .unwrap();
        assert_eq!(s.throttles["p"].special_accounts[DEFAULT_ACCOUNT], 7);
        apply(
            &mut s,
            at(
                14,
                special(SpecialTarget::Account(DEFAULT_ACCOUNT.into()), None),
            ),
        )
        .unwrap();
        assert!(s.throttles["p"].special_accounts.is_empty());
    }

    #[test]
    fn bindings_are_one_per_api_and_stage_and_go_with_their_api() {
        let mut s = with_api();
        apply(&mut s, at(10, create_policy("p", 10, None, None))).unwrap();
        apply(&mut s, at(10, create_policy("q", 10, None, None))).unwrap();
        let applied = apply_full(&mut s, &at(11, bind("p", "a", Stage::Release)));
        assert!(applied.reply.is_ok());
        assert!(applied.changes.groups.contains("g"));
        assert_eq!(s.throttle_of("g", "a", Stage::Release).unwrap().name, "p");
        assert!(s.throttle_of("g", "a", Stage::Test).is_none());
        // One policy per API and stage.
        assert!(matches!(
            apply(&mut s, at(12, bind("q", "a", Stage::Release))),
            Err(DomainError::AlreadyExists { .. })
        ));
        apply(&mut s, at(12, bind("q", "a", Stage::Test))).unwrap();
        assert!(matches!(
            apply(&mut s, at(12, bind("q", "nope", Stage::Test))),
            Err(DomainError::NotFound { .. })
        ));
        // A bound policy is not deleted.
        assert!(matches!(
            apply(
                &mut s,
                at(13, Command::DeleteThrottlePolicy { name: "p".into() })
            ),
            Err(DomainError::FailedPrecondition(_))
        ));
        let unbind = Command::UnbindThrottlePolicy {
            name: "p".into(),
            group: "g".into(),
            api: "a".into(),
            stage: Stage::Release,
        };
        apply(&mut s, at(14, unbind.clone())).unwrap();
        assert!(matches!(
            apply(&mut s, at(15, unbind)),
            Err(DomainError::NotFound { .. })
        ));
        apply(
            &mut s,
            at(16, Command::DeleteThrottlePolicy { name: "p".into() }),
        )
        .unwrap();
        // Deleting the API takes its binding with it; a new API of that name has none.
        let del = Command::DeleteApi {
            group: "g".into(),
            name: "a".into(),
        };
        apply(&mut s, at(17, del)).unwrap();
        assert!(s.throttles["q"].bindings.is_empty());
        assert!(s.throttle_of("g", "a", Stage::Test).is_none());
        // So does deleting the group.
        apply(&mut s, at(18, bind("q", "b", Stage::Pre))).unwrap();
        let del = Command::DeleteApiGroup {
            name: "g".into(),
            force: false,
        };
        apply(&mut s, at(19, del)).unwrap();
        assert!(s.throttles["q"].bindings.is_empty());
    }
}
