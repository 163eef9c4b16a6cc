//! Routing and admission (`dataplane::Dataplane::publish` + `decide_at`).
//!
//! Structured input: requests (host, method, path, `X-Ca-Stage` value), resolved against a
//! fixed published configuration and, when the input carries one, against a configuration of
//! fuzzed groups (hosts, base paths, path patterns, methods) published on a fresh data plane.
//!
//! Checked: no panic in publish or lookup; a matched API is one that is configured; the
//! decision is the same when asked twice (routing is a pure function of the snapshot); and,
//! for a fuzzed configuration published without warnings, every static route (no parameters)
//! is reachable at host + base path + path with its method.
#![no_main]

use arbitrary::Arbitrary;
use dataplane::{
    Dataplane, DataplaneConfig, DataplaneOptions, DeployedApi, FakeClock, GroupConfig,
    InstanceConfig, IpRules, SHARED_INSTANCE, Stage,
};
use http::Method;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Request {
    host: Option<String>,
    method: FuzzMethod,
    path: String,
    stage: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
enum FuzzMethod {
    Get,
    Post,
    Put,
    Delete,
    Any,
    Other(String),
}

impl FuzzMethod {
    fn to_method(&self) -> Option<Method> {
        Some(match self {
            FuzzMethod::Get => Method::GET,
            FuzzMethod::Post => Method::POST,
            FuzzMethod::Put => Method::PUT,
            FuzzMethod::Delete => Method::DELETE,
            FuzzMethod::Any => Method::from_bytes(b"ANY").ok()?,
            FuzzMethod::Other(s) => Method::from_bytes(s.as_bytes()).ok()?,
        })
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzGroup {
    host: Option<String>,
    base_path: Option<String>,
    dedicated: bool,
    suspended: bool,
    acl: Option<(Vec<String>, Vec<String>)>,
    /// (API index, allow, deny): an API's own ACL.
    api_acls: Vec<(u8, Vec<String>, Vec<String>)>,
    apis: Vec<FuzzApi>,
}

#[derive(Arbitrary, Debug)]
struct FuzzApi {
    stage: u8,
    method: FuzzMethod,
    path: String,
    bad_backend: bool,
    app_auth: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    groups: Option<Vec<FuzzGroup>>,
    requests: Vec<Request>,
}

fn stage_of(i: u8) -> Stage {
    Stage::ALL[usize::from(i) % 3]
}

fn instances() -> Vec<InstanceConfig> {
    vec![
        InstanceConfig {
            name: SHARED_INSTANCE.into(),
            ceiling_rps: 1_000_000,
            region: "cn-hongkong".into(),
        },
        InstanceConfig {
            name: "tiny".into(),
            ceiling_rps: 1,
            region: "cn-hongkong".into(),
        },
    ]
}

fn api(stage: Stage, name: &str, method: Method, path: &str) -> DeployedApi {
    DeployedApi {
        stage,
        api: name.into(),
        method,
        path: path.into(),
        backend: "http://127.0.0.1:1".into(),
        timeout: Duration::from_millis(100),
        app_auth: name == "secure",
        backend_billed: false,
    }
}

fn fixed_config() -> DataplaneConfig {
    let any = Method::from_bytes(b"ANY").unwrap();
    DataplaneConfig {
        instances: instances(),
        groups: vec![
            GroupConfig {
                name: "open".into(),
                account: "default".into(),
                instance: SHARED_INSTANCE.into(),
                host: None,
                base_path: Some("/v1".into()),
                deployments: vec![
                    api(Stage::Release, "get-item", Method::GET, "/items/{id}"),
                    api(Stage::Release, "post-item", Method::POST, "/items"),
                    api(Stage::Release, "files", any.clone(), "/files/{*rest}"),
                    api(Stage::Test, "test-item", Method::GET, "/items/[id]"),
                    api(Stage::Pre, "root", Method::GET, "/"),
                ],
                api_acls: [(
                    "files".to_string(),
                    IpRules {
                        allow: vec![],
                        deny: vec!["10.0.0.0/8".into()],
                    },
                )]
                .into(),
                ..GroupConfig::new("open", "default", SHARED_INSTANCE)
            },
            GroupConfig {
                name: "hosted".into(),
                account: "acme".into(),
                instance: "tiny".into(),
                host: Some("API.Example.com:8080".into()),
                base_path: None,
                deployments: vec![
                    api(Stage::Release, "secure", Method::GET, "/secure"),
                    api(Stage::Release, "p", Method::GET, "/p/{id}/q/{rest}"),
                    api(Stage::Release, "any", any, "/any"),
                ],
                acl: Some(IpRules {
                    allow: vec!["198.18.0.0/15".into()],
                    deny: vec![],
                }),
                ..GroupConfig::new("hosted", "acme", "tiny")
            },
            GroupConfig {
                name: "owed".into(),
                account: "broke".into(),
                instance: SHARED_INSTANCE.into(),
                host: None,
                base_path: Some("owed/".into()),
                deployments: vec![api(Stage::Release, "owed", Method::GET, "/x")],
                suspended: true,
                throttles: Default::default(),
                ..GroupConfig::new("owed", "broke", SHARED_INSTANCE)
            },
        ],
        apps: vec![],
    }
}

fn new_dataplane(clock: Arc<FakeClock>) -> Dataplane {
    Dataplane::with_options(DataplaneOptions {
        clock,
        ..Default::default()
    })
}

struct Fixed {
    dp: Dataplane,
    clock: Arc<FakeClock>,
    names: HashSet<String>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let clock = Arc::new(FakeClock::new(1_000_000_000));
        let dp = new_dataplane(clock.clone());
        let config = fixed_config();
        let report = dp.publish(&config);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let names = config
            .groups
            .iter()
            .flat_map(|g| g.deployments.iter().map(|d| d.api.clone()))
            .collect();
        Fixed { dp, clock, names }
    })
}

fn resolve(dp: &Dataplane, names: &HashSet<String>, r: &Request, now: u64) {
    let Some(method) = r.method.to_method() else {
        return;
    };
    let stage = match &r.stage {
        None => Stage::Release,
        Some(v) => match Stage::from_header(v) {
            Some(s) => s,
            None => return, // the server answers 400 before resolving
        },
    };
    let host = r.host.as_deref();
    let v1 = dp.decide_at(host, stage, &method, &r.path, now);
    let v2 = dp.decide_at(host, stage, &method, &r.path, now);
    assert_eq!(
        v1.api(),
        v2.api(),
        "routing is not a function of its inputs"
    );
    if let Some(api) = v1.api() {
        assert!(names.contains(api), "matched unknown API {api}");
    }
    if v1.is_admitted() {
        assert!(v1.rejection().is_none());
    } else if let Some(rej) = v1.rejection() {
        let _ = (rej.status(), rej.code(), rej.to_string());
    }
}

/// A path pattern with no parameters, escapes or catch-alls, and its method is a real one.
fn is_static(path: &str) -> bool {
    !path.contains(['{', '}', '[', ']', '*'])
}

fn fuzzed(groups: &[FuzzGroup], requests: &[Request]) {
    let clock = Arc::new(FakeClock::new(1_000_000_000));
    let dp = new_dataplane(clock.clone());
    let mut config = DataplaneConfig {
        instances: instances(),
        ..Default::default()
    };
    let mut names = HashSet::new();
    for (gi, g) in groups.iter().take(8).enumerate() {
        let name = format!("g{gi}");
        let account = format!("acct{gi}");
        let acl = g.acl.as_ref().map(|(allow, deny)| IpRules {
            allow: allow.clone(),
            deny: deny.clone(),
        });
        let api_acls = g
            .api_acls
            .iter()
            .take(4)
            .map(|(ai, allow, deny)| {
                let rules = IpRules {
                    allow: allow.clone(),
                    deny: deny.clone(),
                };
                (format!("{name}-a{}", ai % 8), rules)
            })
            .collect();
        let deployments = g
            .apis
            .iter()
            .take(8)
            .enumerate()
            .filter_map(|(ai, a)| {
                let api_name = format!("{name}-a{ai}");
                names.insert(api_name.clone());
                Some(DeployedApi {
                    stage: stage_of(a.stage),
                    api: api_name,
                    method: a.method.to_method()?,
                    path: a.path.clone(),
                    backend: if a.bad_backend {
                        "ftp://nowhere".into()
                    } else {
                        "http://127.0.0.1:1/prefix".into()
                    },
                    timeout: Duration::from_millis(100),
                    app_auth: a.app_auth,
                    backend_billed: false,
                })
            })
            .collect();
        config.groups.push(GroupConfig {
            host: g.host.clone(),
            base_path: g.base_path.clone(),
            deployments,
            acl,
            api_acls,
            suspended: g.suspended,
            throttles: Default::default(),
            ..GroupConfig::new(
                name,
                account,
                if g.dedicated { "tiny" } else { SHARED_INSTANCE },
            )
        });
    }
    let report = dp.publish(&config);
    let now = clock_now(&clock);
    for r in requests.iter().take(16) {
        resolve(&dp, &names, r, now);
    }
    // Publishing the same configuration again changes nothing and compiles nothing (a publish
    // is a diff against what is loaded).
    let again = dp.publish(&config);
    assert_eq!(
        report.routes, again.routes,
        "publishing twice changes the routes"
    );
    assert_eq!(
        again.groups_compiled, 0,
        "an unchanged configuration was recompiled"
    );
    if !report.warnings.is_empty() {
        return;
    }
    // Every static route is reachable.
    for g in &config.groups {
        let host_ok = g.host.as_deref().is_none_or(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !h.ends_with('.')
        });
        if !host_ok {
            continue;
        }
        let base = match g.base_path.as_deref().map(str::trim) {
            None => String::new(),
            Some(b) => {
                let b = b.trim_end_matches('/');
                if b.is_empty() {
                    String::new()
                } else if b.starts_with('/') {
                    b.to_string()
                } else {
                    format!("/{b}")
                }
            }
        };
        for d in &g.deployments {
            let p = d.path.trim();
            if !is_static(p) {
                continue;
            }
            let path = if p.starts_with('/') {
                format!("{base}{p}")
            } else {
                format!("{base}/{p}")
            };
            let method = if d.method.as_str().eq_ignore_ascii_case("ANY") {
                Method::PATCH
            } else {
                d.method.clone()
            };
            let v = dp.decide_at(g.host.as_deref(), d.stage, &method, &path, now);
            assert!(
                v.api().is_some(),
                "deployed route not reachable: {} {} {path} (stage {}) -> {v:?}\nconfig: {config:#?}",
                g.host.as_deref().unwrap_or("(any host)"),
                method,
                d.stage
            );
        }
    }
}

fn clock_now(clock: &FakeClock) -> u64 {
    use dataplane::Clock;
    clock.now()
}

fuzz_target!(|input: Input| {
    let f = fixed();
    f.clock.advance(Duration::from_millis(100));
    let now = clock_now(&f.clock);
    for r in input.requests.iter().take(32) {
        resolve(&f.dp, &f.names, r, now);
    }
    if let Some(groups) = &input.groups {
        fuzzed(groups, &input.requests);
    }
});
