//! Admin request validation and the replicated state machine (`model` crate).
//!
//! Two input modes, picked by the first byte:
//!
//! - `[` or `{`: the input is JSON, a list of `model::Proposal`s (or one), exactly as Raft
//!   carries them; seeds in `seeds/admin_validation/`.
//! - anything else: structured input (`arbitrary`): arbitrary strings into every
//!   `model::validate::*` function (and `Usd::parse`, the date parsing the admin API uses), and a
//!   sequence of commands built from a pool of names that exist in the base state plus arbitrary
//!   strings.
//!
//! Commands are applied to a clone of a base `State` that holds accounts, instances, groups,
//! APIs, deployments, an app with a grant, an IP ACL and a token. Checked for every command:
//!
//! - no panic;
//! - a refused command leaves the state unchanged (its JSON serialisation is byte-identical):
//!   the model promises that every check runs before the first mutation;
//! - a second replica applying the same proposal gets the same result (determinism);
//!
//! and after each input, the state survives a JSON snapshot round trip unchanged.
#![no_main]

use arbitrary::Unstructured;
use catalog::{Catalog, SHARED_INSTANCE, Usd};
use libfuzzer_sys::fuzz_target;
use model::{
    ApiSpec, AuthType, ChargeType, Command, DEFAULT_ACCOUNT, GroupChange, Proposal, Stage, State,
    UsageDelta, validate,
};
use std::sync::OnceLock;

/// Names that exist in the base state (or are special), so commands often hit real objects.
const NAMES: &[&str] = &[
    DEFAULT_ACCOUNT,
    "acme",
    "poor",
    SHARED_INSTANCE,
    "prod",
    "sub",
    "g1",
    "g2",
    "g3",
    "items",
    "orders",
    "secure",
    "mobile",
    "web",
    "0123abcd",
    "",
    "x",
];
const SPECS: &[&str] = &["api.s1.small", "api.s1.medium", "api.s2.large", "bogus"];
const REGIONS: &[&str] = &["cn-hongkong", "ap-southeast-1", "nowhere"];
const PATHS: &[&str] = &[
    "/items",
    "/items/{id}",
    "/orders/{*rest}",
    "/secure",
    "/",
    "bad",
    "/a//b",
    "/x/{id}/{id}",
];
const HOSTS: &[&str] = &[
    "api.example.com",
    "api.example.com:8080",
    "other.org",
    "UPPER.org",
];
const BASES: &[&str] = &["/v1", "/v2", "/", "/v1/"];
const BACKENDS: &[&str] = &[
    "http://127.0.0.1:9000",
    "http://svc.ns:80/v1",
    "https://x",
    "http://127.0.0.1:9000@3 http://svc.ns:80/v1",
    "http://a:1 http://a:1@2",
    "http://a:1@0 http://b:2@1001",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "get", "ANY"];
const CIDRS: &[&str] = &[
    "198.18.0.0/15",
    "2001:db8::/32",
    "10.0.0.1",
    "1.2.3.4/33",
    "x",
];

/// A string picked from a pool most of the time, or arbitrary.
fn pick(u: &mut Unstructured<'_>, pool: &[&str]) -> arbitrary::Result<String> {
    let i: u8 = u.arbitrary()?;
    if usize::from(i) < pool.len() * 14 {
        Ok(pool[usize::from(i) % pool.len()].to_string())
    } else {
        u.arbitrary()
    }
}

fn name(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    pick(u, NAMES)
}

/// Keep, clear or set, each a third of the time.
fn update<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<model::Update<T>> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => model::Update::Keep,
        1 => model::Update::Clear,
        _ => model::Update::Set(f(u)?),
    })
}

fn opt<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn usd(u: &mut Unstructured<'_>) -> arbitrary::Result<Usd> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Usd::from_micros(u.int_in_range(-2_000_000i64..=2_000_000_000)?),
        1 => Usd::from_micros(u.arbitrary()?),
        2 => Usd::ZERO,
        _ => Usd::from_micros(1_000_000 * i64::from(u.arbitrary::<u16>()?)),
    })
}

fn stage(u: &mut Unstructured<'_>) -> arbitrary::Result<Stage> {
    Ok(*u.choose(&Stage::ALL)?)
}

fn api_spec(u: &mut Unstructured<'_>) -> arbitrary::Result<ApiSpec> {
    Ok(ApiSpec {
        method: pick(u, METHODS)?,
        path: pick(u, PATHS)?,
        backends: model::Backends::from_text(&pick(u, BACKENDS)?),
        timeout_ms: match u.int_in_range(0u8..=2)? {
            0 => 5_000,
            1 => u.int_in_range(0..=400_000)?,
            _ => u.arbitrary()?,
        },
        auth: if u.arbitrary()? {
            AuthType::App
        } else {
            AuthType::Anonymous
        },
        backend_location: Default::default(),
    })
}

fn cidrs(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<String>> {
    let n = u.int_in_range(0..=3)?;
    (0..n).map(|_| pick(u, CIDRS)).collect()
}

fn command(u: &mut Unstructured<'_>) -> arbitrary::Result<Command> {
    Ok(match u.int_in_range(0u8..=23)? {
        0 => Command::CreateInstance {
            name: name(u)?,
            spec: pick(u, SPECS)?,
            region: pick(u, REGIONS)?,
            charge_type: *u.choose(&[ChargeType::Postpaid, ChargeType::Month, ChargeType::Year])?,
            account: name(u)?,
        },
        1 => Command::ModifyInstanceSpec {
            name: name(u)?,
            spec: pick(u, SPECS)?,
        },
        2 => Command::DeleteInstance { name: name(u)? },
        3 => Command::CreateApiGroup {
            name: name(u)?,
            account: name(u)?,
            instance: name(u)?,
            host: opt(u, |u| pick(u, HOSTS))?,
            base_path: opt(u, |u| pick(u, BASES))?,
        },
        4 => Command::ModifyApiGroup {
            name: name(u)?,
            change: GroupChange {
                instance: opt(u, name)?,
                host: opt(u, |u| opt(u, |u| pick(u, HOSTS)))?,
                base_path: opt(u, |u| opt(u, |u| pick(u, BASES)))?,
            },
        },
        5 => Command::DeleteApiGroup {
            name: name(u)?,
            force: u.arbitrary()?,
        },
        6 => Command::CreateApi {
            group: name(u)?,
            name: name(u)?,
            spec: api_spec(u)?,
        },
        7 => Command::ModifyApi {
            group: name(u)?,
            name: name(u)?,
            spec: api_spec(u)?,
        },
        8 => Command::DeleteApi {
            group: name(u)?,
            name: name(u)?,
        },
        9 => Command::DeployApi {
            group: name(u)?,
            name: name(u)?,
            stage: stage(u)?,
        },
        10 => Command::AbolishApi {
            group: name(u)?,
            name: name(u)?,
            stage: stage(u)?,
        },
        11 => Command::CreateAccount {
            name: name(u)?,
            webhook: opt(u, |u| pick(u, BACKENDS))?,
            balance_alert: opt(u, usd)?,
        },
        12 => Command::Recharge {
            account: name(u)?,
            amount: usd(u)?,
        },
        13 => Command::SetAccountAlert {
            account: name(u)?,
            threshold: update(u, usd)?,
            webhook: update(u, |u| pick(u, BACKENDS))?,
        },
        14 => {
            let n = u.int_in_range(0..=3)?;
            let deltas = (0..n)
                .map(|_| {
                    Ok(UsageDelta {
                        account: name(u)?,
                        instance: name(u)?,
                        api: name(u)?,
                        region: pick(u, REGIONS)?,
                        calls: u.arbitrary()?,
                        bytes_out: u.arbitrary()?,
                        backend_bytes: u.arbitrary()?,
                    })
                })
                .collect::<arbitrary::Result<Vec<_>>>()?;
            Command::RecordUsage {
                node: u.int_in_range(0..=3)?,
                seq: u.int_in_range(0..=5)?,
                deltas,
            }
        }
        15 => Command::CloseCycle {
            day: match u.int_in_range(0u8..=2)? {
                0 => 20_454 + u.int_in_range(0..=40)?,
                1 => u.int_in_range(0..=40_000)?,
                _ => u.arbitrary()?,
            },
        },
        16 => Command::AckEvents {
            account: name(u)?,
            seq: u.arbitrary()?,
        },
        17 => Command::CreateToken {
            id: name(u)?,
            account: name(u)?,
            secret_sha256: if u.arbitrary()? {
                "ab".repeat(32)
            } else {
                u.arbitrary()?
            },
        },
        18 => Command::RevokeToken { id: name(u)? },
        19 => Command::CreateApp {
            name: name(u)?,
            account: name(u)?,
            key: pick(u, &["key-00000001", "key-00000002", "short"])?,
            secret: pick(u, &["0123456789abcdef0123", "short"])?,
        },
        20 => Command::DeleteApp { name: name(u)? },
        21 => Command::AuthorizeApp {
            group: name(u)?,
            api: name(u)?,
            app: name(u)?,
        },
        22 => Command::RevokeAppAuthorization {
            group: name(u)?,
            api: name(u)?,
            app: name(u)?,
        },
        _ => Command::SetIpAccessControl {
            group: name(u)?,
            api: opt(u, name)?,
            allow: cidrs(u)?,
            deny: cidrs(u)?,
        },
    })
}

/// 2026-01-01T00:00:00Z, in ms.
const T0: u64 = 1_767_225_600_000;

fn base_state() -> &'static State {
    static BASE: OnceLock<State> = OnceLock::new();
    BASE.get_or_init(|| {
        let cat = Catalog::builtin();
        let mut s = State::default();
        let spec = |path: &str, auth| ApiSpec {
            method: "GET".into(),
            path: path.into(),
            backends: "http://127.0.0.1:9000".into(),
            timeout_ms: 5_000,
            auth,
            backend_location: Default::default(),
        };
        let cmds = vec![
            Command::CreateAccount {
                name: "acme".into(),
                webhook: Some("http://127.0.0.1:9100/hook".into()),
                balance_alert: Some(Usd::from_micros(5_000_000)),
            },
            Command::Recharge {
                account: "acme".into(),
                amount: Usd::from_micros(10_000_000_000),
            },
            Command::CreateAccount {
                name: "poor".into(),
                webhook: None,
                balance_alert: None,
            },
            Command::CreateInstance {
                name: "prod".into(),
                spec: "api.s1.small".into(),
                region: "cn-hongkong".into(),
                charge_type: ChargeType::Postpaid,
                account: "acme".into(),
            },
            Command::CreateInstance {
                name: "sub".into(),
                spec: "api.s1.small".into(),
                region: "ap-southeast-1".into(),
                charge_type: ChargeType::Month,
                account: "acme".into(),
            },
            Command::CreateApiGroup {
                name: "g1".into(),
                account: DEFAULT_ACCOUNT.into(),
                instance: SHARED_INSTANCE.into(),
                host: None,
                base_path: Some("/v1".into()),
            },
            Command::CreateApiGroup {
                name: "g2".into(),
                account: "acme".into(),
                instance: "prod".into(),
                host: Some("api.example.com".into()),
                base_path: None,
            },
            Command::CreateApi {
                group: "g1".into(),
                name: "items".into(),
                spec: spec("/items/{id}", AuthType::Anonymous),
            },
            Command::CreateApi {
                group: "g2".into(),
                name: "orders".into(),
                spec: spec("/orders/{*rest}", AuthType::Anonymous),
            },
            Command::CreateApi {
                group: "g2".into(),
                name: "secure".into(),
                spec: spec("/secure", AuthType::App),
            },
            Command::DeployApi {
                group: "g1".into(),
                name: "items".into(),
                stage: Stage::Release,
            },
            Command::DeployApi {
                group: "g2".into(),
                name: "secure".into(),
                stage: Stage::Test,
            },
            Command::CreateApp {
                name: "mobile".into(),
                account: "acme".into(),
                key: "key-00000001".into(),
                secret: "0123456789abcdef0123".into(),
            },
            Command::AuthorizeApp {
                group: "g2".into(),
                api: "secure".into(),
                app: "mobile".into(),
            },
            Command::SetIpAccessControl {
                group: "g2".into(),
                api: None,
                allow: vec!["198.18.0.0/15".into()],
                deny: vec!["198.18.0.7".into()],
            },
            Command::SetIpAccessControl {
                group: "g2".into(),
                api: Some("orders".into()),
                allow: vec![],
                deny: vec!["198.19.0.0/16".into()],
            },
            Command::CreateToken {
                id: "0123abcd".into(),
                account: "acme".into(),
                secret_sha256: "ab".repeat(32),
            },
            Command::RecordUsage {
                node: 1,
                seq: 1,
                deltas: vec![UsageDelta {
                    account: "acme".into(),
                    instance: "prod".into(),
                    api: "orders".into(),
                    region: "cn-hongkong".into(),
                    calls: 10,
                    bytes_out: 1000,
                    backend_bytes: 0,
                }],
            },
        ];
        for (i, command) in cmds.into_iter().enumerate() {
            let p = Proposal {
                at_ms: T0 + i as u64 * 1000,
                catalog: cat.fingerprint().into(),
                request_id: None,
                command,
            };
            if let Err(e) = s.apply(&p, cat).expect("the same catalog").reply {
                panic!("base state: {:?} refused: {e}", p.command.kind());
            }
        }
        s
    })
}

/// Applies `p` to both replicas and checks the model's promises.
fn apply(a: &mut State, b: &mut State, p: &Proposal) {
    let cat = Catalog::builtin();
    // `State` and everything in it derive `PartialEq`, so an equal state serialises to the same
    // bytes; the serialised forms are compared (and shown) only when that check fails.
    let before = a.clone();
    // Proposals read from JSON may name no catalog: they are stamped with this one, as a
    // leader would. (Another catalog is refused whole; `model`'s tests cover that.)
    let mut p = p.clone();
    if p.catalog.is_empty() {
        p.catalog = cat.fingerprint().into();
    }
    let p = &p;
    let ra = a.apply(p, cat).map(|applied| applied.reply);
    if debug() {
        eprintln!("{} -> {:?}", p.command.kind(), ra.as_ref().map(|_| ()));
    }
    let refused = match &ra {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(e) = refused {
        // A refusal is remembered under the proposal's request id (the retry of a refused
        // write is refused alike); nothing else may change.
        let mut unchanged = a.clone();
        unchanged.sessions = before.sessions.clone();
        if unchanged != before {
            let (old, new) = (
                serde_json::to_vec(&before).expect("a state serialises"),
                serde_json::to_vec(&*a).expect("a state serialises"),
            );
            panic!(
                "a refused {} ({e}) changed the state\ncommand: {:?}\nbefore: {}\nafter:  {}",
                p.command.kind(),
                p.command,
                String::from_utf8_lossy(&old),
                String::from_utf8_lossy(&new)
            );
        }
        // The error names something; it must print.
        let _ = e.to_string();
    }
    let rb = b.apply(p, cat).map(|applied| applied.reply);
    assert_eq!(ra, rb, "replicas disagree on {:?}", p.command);
}

fn run_proposals(proposals: &[Proposal]) {
    let mut a = base_state().clone();
    let mut b = a.clone();
    for p in proposals.iter().take(64) {
        apply(&mut a, &mut b, p);
    }
    assert_eq!(a, b, "replicas diverged");
    // A snapshot restores the same state.
    let json = serde_json::to_string(&a).expect("a state serialises");
    let restored: State = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("a snapshot does not read back: {e}\n{json}"));
    assert!(restored == a, "a snapshot restores a different state");
}

/// Every validation function on arbitrary input: no panic, and the ones with a documented
/// shape are checked against it.
fn validations(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let n = u.int_in_range(0..=8)?;
    for _ in 0..n {
        let s: String = u.arbitrary()?;
        match u.int_in_range(0u8..=12)? {
            0 => {
                if validate::name("name", &s).is_ok() {
                    assert!(!s.is_empty() && s.len() <= validate::MAX_NAME_LEN, "{s:?}");
                }
            }
            1 => {
                let _ = validate::host(&s);
            }
            2 => {
                if validate::base_path(&s).is_ok() {
                    assert!(s.starts_with('/') && !s.contains(['?', '#', '{']), "{s:?}");
                }
            }
            3 => {
                if validate::api_path(&s).is_ok() {
                    assert!(s.starts_with('/') && !s.contains("//"), "{s:?}");
                }
            }
            4 => {
                if validate::method(&s).is_ok() {
                    assert!(validate::METHODS.contains(&s.as_str()));
                }
            }
            5 => {
                if validate::backend(&s).is_ok() {
                    assert!(s.starts_with("http://"), "{s:?}");
                }
            }
            6 => {
                let _ = validate::webhook(&s);
            }
            7 => {
                let ok = validate::cidr("allow", &s).is_ok();
                assert_eq!(ok, validate::parse_cidr(&s).is_some());
            }
            8 => {
                let _ = validate::timeout_ms(u.arbitrary()?);
            }
            9 => {
                // What the admin API's `parse_usd` wraps; a parsed amount prints and reads back.
                if let Ok(v) = Usd::parse(&s) {
                    let back = Usd::parse(&v.to_string());
                    assert_eq!(back, Ok(v), "{s:?} -> {v}");
                }
            }
            10 => {
                let _ = Stage::parse(&s);
                let _ = AuthType::parse(&s);
            }
            11 => {
                // What the admin API's `parse_day` does with `YYYY-MM-DD`.
                let (y, m, d): (i32, u8, u8) = u.arbitrary()?;
                if let Some(t) = billing::Timestamp::from_utc(y, m, d, 0, 0, 0) {
                    let _ = t.day().index();
                    let _ = t.day().to_string();
                }
            }
            _ => {
                // An arbitrary amount prints and parses back (`Usd`'s serde form).
                let v = Usd::from_micros(u.arbitrary()?);
                assert_eq!(Usd::parse(&v.to_string()), Ok(v), "{v:?}");
            }
        }
    }
    Ok(())
}

fn structured(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    validations(&mut u)?;
    let mut at_ms = T0 + 3_600_000;
    let mut proposals = Vec::new();
    while !u.is_empty() && proposals.len() < 32 {
        at_ms += match u.int_in_range(0u8..=3)? {
            0 => 0,
            1 => 1_000,
            2 => 3_600_000,
            _ => u.int_in_range(0..=40 * 86_400_000)?,
        };
        proposals.push(Proposal {
            at_ms,
            catalog: Catalog::builtin().fingerprint().into(),
            request_id: if u.arbitrary::<bool>()? {
                Some(format!("r{}", u.int_in_range(0u8..=3)?))
            } else {
                None
            },
            command: command(&mut u)?,
        });
    }
    run_proposals(&proposals);
    Ok(())
}

/// `FUZZ_DEBUG=1`: say why a JSON input was not read (to check seeds).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fn json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    match serde_json::from_slice(data) {
        Ok(v) => Some(v),
        Err(e) => {
            if debug() {
                eprintln!("not read: {e}");
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(b'[') => {
            if let Some(ps) = json::<Vec<Proposal>>(data) {
                run_proposals(&ps);
            }
        }
        Some(b'{') => {
            if let Some(p) = json::<Proposal>(data) {
                run_proposals(&[p]);
            }
        }
        _ => {
            let _ = structured(data);
        }
    }
});
