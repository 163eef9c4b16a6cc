//! Who may call an API: IP access control per group, and apps that sign their requests.
//!
//! Both checks run after routing (they depend on the API) and before the instance limiter,
//! so that refused callers never use up the instance's quota.

use arc_swap::ArcSwap;
use http::StatusCode;
use ipnet::IpNet;
use model::validate::parse_cidr;
use signer::{NonceCache, RequestParts, Verifier};
use std::net::IpAddr;
use std::sync::Arc;

/// A refusal: its status, a stable code, and the message for `X-Ca-Error-Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The IP access control of a group or an API: denied blocks win; with allowed blocks, only
/// they get in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAcl {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpAcl {
    /// Builds the ACL; blocks that do not parse are returned as warnings and left out (the
    /// admin API validates them, so this only happens with a hand-made config).
    pub fn new(allow: &[String], deny: &[String]) -> (IpAcl, Vec<String>) {
        let mut warnings = Vec::new();
        let mut parse = |list: &[String]| {
            list.iter()
                .filter_map(|c| {
                    let parsed = parse_cidr(c);
                    if parsed.is_none() {
                        warnings.push(format!("ignoring invalid CIDR '{c}'"));
                    }
                    parsed
                })
                .collect::<Vec<_>>()
        };
        let acl = IpAcl {
            allow: parse(allow),
            deny: parse(deny),
        };
        (acl, warnings)
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        let denied = self.deny.iter().any(|c| c.contains(&ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|c| c.contains(&ip));
        if denied || !allowed {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                code: "IpDenied",
                message: format!(
                    "Access denied: the client address {} is not allowed",
                    canonical(ip)
                ),
            });
        }
        Ok(())
    }
}

/// An app's credentials, as the data plane needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredential {
    pub name: String,
    pub key: String,
    pub secret: String,
}

/// One app as the signature check sees it.
#[derive(Debug)]
pub(crate) struct AppKey {
    pub(crate) name: String,
    pub(crate) secret: String,
}

/// AppKey -> app. A persistent map: a change clones it in O(1) and edits O(log n) of it.
pub(crate) type AppKeys = imbl::HashMap<String, Arc<AppKey>>;

/// Checks signed requests against the apps' secrets, with one replay cache per node.
///
/// One per data plane, shared by every compiled APP API: routes hold only the names of the
/// apps granted on them, and the secrets are looked up by key at request time in a map that is
/// swapped whole, so an app change (new app, new secret, removal) recompiles no route.
pub(crate) struct AppAuth {
    keys: ArcSwap<AppKeys>,
    /// Shared across config changes, so a replay stays refused after a publish.
    nonces: Arc<NonceCache>,
    verifier: Verifier,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("apps", &self.keys.load().len())
            .finish()
    }
}

impl AppAuth {
    pub(crate) fn new(nonces: Arc<NonceCache>) -> AppAuth {
        AppAuth {
            keys: ArcSwap::from_pointee(AppKeys::default()),
            nonces,
            verifier: Verifier::new(),
        }
    }

    /// The keys in force: clone the map (O(1)), change it, [`set_keys`](Self::set_keys).
    pub(crate) fn keys(&self) -> Arc<AppKeys> {
        self.keys.load_full()
    }

    /// Requests verified from now on see `keys`.
    pub(crate) fn set_keys(&self, keys: AppKeys) {
        self.keys.store(Arc::new(keys));
    }

    /// Verifies the signature of a request to an APP API that the `allowed` apps (by name) may
    /// call; returns the calling app's name.
    pub(crate) fn check(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        allowed: &[String],
        now_ms: u64,
    ) -> Result<String, Denied> {
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = RequestParts::from_uri(method.as_str(), target);
        for (name, value) in headers {
            req.headers.push((
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        let mut app_name = None;
        let keys = self.keys.load();
        let verified = self.verifier.verify(
            &req,
            |key: &str| {
                keys.get(key).map(|app| {
                    app_name = Some(app.name.clone());
                    app.secret.as_bytes()
                })
            },
            now_ms,
            &self.nonces,
        );
        if let Err(r) = verified {
            return Err(Denied {
                status: r.status(),
                code: "SignatureRejected",
                message: r
                    .header_value()
                    .to_str()
                    .unwrap_or("Invalid signature")
                    .to_string(),
            });
        }
        let app = app_name.unwrap_or_default();
        if !allowed.contains(&app) {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                code: "AppUnauthorized",
                message: format!("Unauthorized: app '{app}' is not authorised to call this API"),
            });
        }
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_by_prefix() {
        let (acl, w) = IpAcl::new(
            &["198.18.0.0/15".into(), "2001:db8::/32".into()],
            &["198.18.0.7".into()],
        );
        assert!(w.is_empty());
        assert!(acl.check(ip("198.19.255.1")).is_ok());
        assert!(
            acl.check(ip("::ffff:198.18.1.1")).is_ok(),
            "IPv4-mapped addresses match as IPv4"
        );
        assert!(acl.check(ip("2001:db8:1::5")).is_ok());
        let e = acl.check(ip("198.18.0.7")).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "IpDenied"));
        assert!(
            acl.check(ip("198.20.0.1")).is_err(),
            "outside every allowed block"
        );
        assert!(acl.check(ip("127.0.0.1")).is_err());
        let (open, _) = IpAcl::new(&[], &[]);
        assert!(open.is_open() && open.check(ip("127.0.0.1")).is_ok());
        let (deny_only, _) = IpAcl::new(&[], &["127.0.0.0/8".into()]);
        assert!(deny_only.check(ip("127.0.0.1")).is_err());
        assert!(deny_only.check(ip("198.18.0.1")).is_ok());
        let (_, w) = IpAcl::new(&["nonsense".into()], &[]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn odd_prefix_lengths() {
        let c = parse_cidr("198.18.0.0/15").unwrap();
        assert!(c.contains(&ip("198.19.0.0")));
        assert!(!c.contains(&ip("198.20.0.0")));
        assert!(
            parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains(&ip("203.0.113.9"))
        );
        assert!(parse_cidr("1.2.3.4/33").is_none());
        // A bare address is a block of one.
        let one = parse_cidr("10.0.0.7").unwrap();
        assert!(one.contains(&ip("10.0.0.7")) && !one.contains(&ip("10.0.0.8")));
    }

    #[test]
    fn signed_requests_from_authorised_apps_pass() {
        let auth = AppAuth::new(Arc::new(NonceCache::new(1024)));
        let mut keys = auth.keys().as_ref().clone();
        keys.insert(
            "key-1".into(),
            Arc::new(AppKey {
                name: "mobile".into(),
                secret: "secret-0123456789".into(),
            }),
        );
        auth.set_keys(keys);
        let now = 1_767_225_600_000;
        let signed = |nonce: &str| {
            let mut req = RequestParts::from_uri("GET", "/a?x=1");
            signer::Signer::new("key-1", "secret-0123456789").sign(&mut req, now, nonce);
            let mut b = http::Request::builder().method("GET").uri("/a?x=1");
            for (k, v) in &req.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            b.body(()).unwrap().into_parts().0
        };
        let check = |p: &http::request::Parts, allowed: &[String]| {
            auth.check(&p.method, &p.uri, &p.headers, allowed, now)
        };
        let mobile = ["mobile".to_string()];
        assert_eq!(check(&signed("n1"), &mobile).unwrap(), "mobile");
        let replay = check(&signed("n1"), &mobile).unwrap_err();
        assert_eq!(replay.status, StatusCode::FORBIDDEN);
        let not_granted = check(&signed("n2"), &[]).unwrap_err();
        assert_eq!(not_granted.code, "AppUnauthorized");
        let unsigned = http::Request::get("/a").body(()).unwrap().into_parts().0;
        let e = check(&unsigned, &mobile).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }
}
