//! Field checks shared by the admin API (to answer before proposing) and by [`State::apply`]
//! (which must refuse bad commands on its own, whoever proposed them).
//!
//! [`State::apply`]: crate::State::apply

use crate::DomainError;

/// The longest name of an instance, group, API or account.
pub const MAX_NAME_LEN: usize = 64;
/// The longest backend timeout an API may set.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

/// Names: 1 to 64 characters of letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit. They appear in URLs, metrics labels and error messages, so nothing else is allowed.
pub fn name(field: &str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(DomainError::invalid(
            field,
            format!("'{value}' is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok {
        return Err(DomainError::invalid(
            field,
            format!(
                "'{value}' may only hold letters, digits, '-', '_' and '.', and must start with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// The largest limit a throttling policy may set, per unit (a billion calls).
pub const MAX_THROTTLE_LIMIT: u64 = 1_000_000_000;

/// One limit of a throttling policy: 1 to [`MAX_THROTTLE_LIMIT`].
pub fn throttle_limit(field: &str, value: u64) -> Result<(), DomainError> {
    if value == 0 || value > MAX_THROTTLE_LIMIT {
        return Err(DomainError::invalid(
            field,
            format!("{value} is not from 1 to {MAX_THROTTLE_LIMIT}"),
        ));
    }
    Ok(())
}

/// A throttling policy's limits: each in range, the user limit at most the API limit and the
/// app limit at most the user limit (or the API limit, without a user limit).
pub fn throttle_limits(
    api_limit: u64,
    user_limit: Option<u64>,
    app_limit: Option<u64>,
) -> Result<(), DomainError> {
    throttle_limit("api_limit", api_limit)?;
    if let Some(user) = user_limit {
        throttle_limit("user_limit", user)?;
        if user > api_limit {
            return Err(DomainError::invalid(
                "user_limit",
                format!("{user} is more than the API limit {api_limit}; it may be at most that"),
            ));
        }
    }
    if let Some(app) = app_limit {
        throttle_limit("app_limit", app)?;
        let (bound, what) = match user_limit {
            Some(user) => (user, "user"),
            None => (api_limit, "API"),
        };
        if app > bound {
            return Err(DomainError::invalid(
                "app_limit",
                format!("{app} is more than the {what} limit {bound}; it may be at most that"),
            ));
        }
    }
    Ok(())
}

/// A host name a group answers to: lower-case DNS labels, optionally with a port.
pub fn host(value: &str) -> Result<(), DomainError> {
    let (h, port) = match value.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (value, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(DomainError::invalid(
            "host",
            format!("'{value}' has a port that is not a number from 0 to 65535"),
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
        return Err(DomainError::invalid(
            "host",
            format!("'{value}' is not a lower-case DNS name (labels of a-z, 0-9 and '-')"),
        ));
    }
    Ok(())
}

/// A path prefix or an API path: starts with `/`, no `?`, `#`, whitespace, `..` segments or `//`.
fn path_common(field: &str, value: &str) -> Result<(), DomainError> {
    if !value.starts_with('/') {
        return Err(DomainError::invalid(
            field,
            format!("'{value}' must start with '/'"),
        ));
    }
    if value.len() > 1024 {
        return Err(DomainError::invalid(
            field,
            "is longer than 1024 characters",
        ));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
    {
        return Err(DomainError::invalid(
            field,
            format!("'{value}' must not contain whitespace, '?' or '#'"),
        ));
    }
    if value.contains("//") || value.split('/').any(|s| s == ".." || s == ".") {
        return Err(DomainError::invalid(
            field,
            format!("'{value}' must not contain empty, '.' or '..' segments"),
        ));
    }
    Ok(())
}

/// A group's base path, e.g. `/shop`: no parameters, no trailing slash.
pub fn base_path(value: &str) -> Result<(), DomainError> {
    path_common("base_path", value)?;
    if value.len() > 1 && value.ends_with('/') {
        return Err(DomainError::invalid(
            "base_path",
            format!("'{value}' must not end with '/'"),
        ));
    }
    if value.contains(['{', '}', '*']) {
        return Err(DomainError::invalid(
            "base_path",
            format!("'{value}' must not contain parameters"),
        ));
    }
    Ok(())
}

/// An API's path pattern, e.g. `/items/{id}`: each `{param}` a whole segment, named once; a
/// trailing `{*rest}` catches the remainder.
pub fn api_path(value: &str) -> Result<(), DomainError> {
    path_common("path", value)?;
    let segments: Vec<&str> = value.split('/').skip(1).collect();
    let mut seen = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let opens = seg.matches('{').count();
        let closes = seg.matches('}').count();
        if opens == 0 && closes == 0 {
            if seg.contains('*') {
                return Err(DomainError::invalid(
                    "path",
                    format!("'{value}': '*' is only allowed as '{{*name}}' at the end"),
                ));
            }
            continue;
        }
        let inner = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|_| opens == 1 && closes == 1);
        let Some(inner) = inner else {
            return Err(DomainError::invalid(
                "path",
                format!("'{value}': a parameter must be a whole segment like '{{id}}'"),
            ));
        };
        let (catch_all, pname) = match inner.strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, inner),
        };
        if catch_all && i + 1 != segments.len() {
            return Err(DomainError::invalid(
                "path",
                format!("'{value}': '{{*{pname}}}' must be the last segment"),
            ));
        }
        let pname_ok =
            !pname.is_empty() && pname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !pname_ok {
            return Err(DomainError::invalid(
                "path",
                format!("'{value}': parameter names are letters, digits and '_'"),
            ));
        }
        if seen.contains(&pname) {
            return Err(DomainError::invalid(
                "path",
                format!("'{value}': parameter '{pname}' appears twice"),
            ));
        }
        seen.push(pname);
    }
    Ok(())
}

/// The HTTP methods an API may serve.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

pub fn method(value: &str) -> Result<(), DomainError> {
    if METHODS.contains(&value) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "method",
            format!("'{value}' is not one of {}", METHODS.join(", ")),
        ))
    }
}

/// A backend URL: `http://host:port` with an optional path prefix, no query or fragment.
/// Where a backend is: `local`, `external`, or a region of the price catalog.
pub fn backend_location(
    catalog: &catalog::Catalog,
    location: &billing::BackendLocation,
) -> Result<(), DomainError> {
    match location {
        billing::BackendLocation::Region(id) if catalog.region(id).is_err() => {
            Err(DomainError::invalid(
                "backend_location",
                format!(
                    "'{id}' is not a region of the price catalog (one of: {}), local or external",
                    catalog
                        .regions()
                        .iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        _ => Ok(()),
    }
}

pub fn backend(value: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        Err(DomainError::invalid(
            "backend",
            format!("'{value}' {why} (expected http://HOST:PORT[/prefix])"),
        ))
    };
    let Some(rest) = value.strip_prefix("http://") else {
        return bad("must start with http://");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return bad("has no host, or has credentials");
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return bad("has a port that is not a number from 0 to 65535");
    }
    if !authority
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return bad("has a host with characters that are not allowed");
    }
    if path.contains(['?', '#', ' ']) {
        return bad("must not have a query, fragment or spaces");
    }
    Ok(())
}

/// A webhook URL for notifications: `http://HOST:PORT/path`.
pub fn webhook(value: &str) -> Result<(), DomainError> {
    backend(value).map_err(|_| {
        DomainError::invalid(
            "webhook",
            format!("'{value}' is not an http://HOST:PORT/path URL"),
        )
    })
}

/// The host and port a webhook URL (one [`webhook`] accepts) is sent to: an IPv6 literal
/// without its brackets, port 80 when none is given.
pub fn webhook_host_port(value: &str) -> Option<(&str, u16)> {
    let rest = value.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 80)),
    }
}

/// The special-purpose range `ip` is in, named for an error message, or `None` for an
/// ordinary public address. Webhooks are not sent into these ranges unless the operator
/// allows it (`gatewayd --allow-private-webhooks`): an account must not make the gateway
/// call the cloud metadata address (169.254.169.254), the node itself, or the operator's
/// private network. An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
pub fn private_range(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    let in_v4 = |ip: std::net::Ipv4Addr| -> Option<&'static str> {
        let [a, b, ..] = ip.octets();
        Some(match (a, b) {
            (0, _) => "unspecified (0.0.0.0/8)",
            (127, _) => "loopback (127.0.0.0/8)",
            (10, _) => "private (10.0.0.0/8, RFC 1918)",
            (172, 16..=31) => "private (172.16.0.0/12, RFC 1918)",
            (192, 168) => "private (192.168.0.0/16, RFC 1918)",
            (169, 254) => "link-local (169.254.0.0/16)",
            (100, 64..=127) => "shared address space (100.64.0.0/10)",
            (198, 18..=19) => "benchmarking (198.18.0.0/15)",
            (224..=239, _) => "multicast (224.0.0.0/4)",
            (240..=255, _) => "reserved or broadcast (240.0.0.0/4)",
            _ => return None,
        })
    };
    match ip {
        IpAddr::V4(v4) => in_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return in_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified (::)")
            } else if v6.is_loopback() {
                Some("loopback (::1)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (fc00::/7)")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast (ff00::/8)")
            } else {
                None
            }
        }
    }
}

/// A CIDR block, `198.18.0.0/15` or `2001:db8::/32` (a bare address is a /32 or /128).
pub fn cidr(field: &str, value: &str) -> Result<(), DomainError> {
    parse_cidr(value).map(|_| ()).ok_or_else(|| {
        DomainError::invalid(
            field,
            format!("'{value}' is not a CIDR block like 198.18.0.0/15 or 2001:db8::/32"),
        )
    })
}

/// Parses a CIDR block, `198.18.0.0/15` or `2001:db8::/32`; a bare address is a block of one
/// (/32 or /128). The one CIDR parser: validation and the data plane's IP access control both
/// use it.
pub fn parse_cidr(value: &str) -> Option<ipnet::IpNet> {
    if value.contains('/') {
        value.parse().ok()
    } else {
        value
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    }
}

pub fn timeout_ms(value: u64) -> Result<(), DomainError> {
    if value == 0 || value > MAX_TIMEOUT_MS {
        return Err(DomainError::invalid(
            "timeout",
            format!("{value} ms is not between 1 ms and {MAX_TIMEOUT_MS} ms"),
        ));
    }
    Ok(())
}

/// A client's request id: 1 to 64 of `A-Z a-z 0-9 . _ : -`.
/// An amount of money that moves a balance: whole cents, as every balance is.
pub fn whole_cents(field: &str, amount: catalog::Usd) -> Result<(), DomainError> {
    if amount.is_whole_cents() {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{amount} has fractions of a cent; give at most 2 decimals, like 12.34"),
        ))
    }
}

/// A balance alert threshold: not negative.
pub fn threshold(t: catalog::Usd) -> Result<(), DomainError> {
    if t < catalog::Usd::ZERO {
        return Err(DomainError::invalid("threshold", "must not be negative"));
    }
    Ok(())
}

/// Why an operator adjusted a balance: 1 to 200 characters, no control characters.
pub fn reason(r: &str) -> Result<(), DomainError> {
    if r.trim().is_empty() || r.chars().count() > 200 || r.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            "reason",
            "must be 1 to 200 characters without control characters (what the adjustment is for)",
        ));
    }
    Ok(())
}

pub fn request_id(id: &str) -> Result<(), DomainError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "request_id",
            "must be 1 to 64 of A-Z a-z 0-9 . _ : -",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "prod-1", "Team_A.api", &"x".repeat(64)] {
            assert!(name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "ä", &"x".repeat(65)] {
            let e = name("name", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid name"), "{e}");
        }
    }

    #[test]
    fn paths() {
        for ok in ["/", "/a", "/items/{id}", "/a/{x}/b/{y}", "/files/{*rest}"] {
            assert!(api_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a",
            "/a//b",
            "/a/../b",
            "/a?x=1",
            "/x{id}",
            "/{id}/{id}",
            "/{*r}/x",
            "/{}",
            "/a*",
        ] {
            assert!(api_path(bad).is_err(), "{bad}");
        }
        assert!(base_path("/shop").is_ok());
        assert!(base_path("/shop/").is_err());
        assert!(base_path("/{x}").is_err());
    }

    #[test]
    fn hosts_and_backends() {
        assert!(host("api.example.com").is_ok());
        assert!(host("api.example.com:8080").is_ok());
        assert!(host("API.example.com").is_err());
        assert!(host("a..b").is_err());
        assert!(backend("http://127.0.0.1:8000").is_ok());
        assert!(backend("http://svc.ns:80/v1").is_ok());
        assert!(backend("https://x").is_err());
        assert!(backend("http://u:p@x").is_err());
        assert!(backend("http://x:99999").is_err());
        assert!(backend("http://x/a?b").is_err());
        assert!(method("GET").is_ok());
        assert!(method("get").is_err());
        assert!(timeout_ms(0).is_err());
        assert!(timeout_ms(5000).is_ok());
    }
}

#[cfg(test)]
mod webhook_target_tests {
    use super::*;

    #[test]
    fn private_ranges_are_named_and_public_addresses_pass() {
        let refused = [
            ("169.254.169.254", "link-local"),
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "RFC 1918"),
            ("172.31.0.1", "RFC 1918"),
            ("192.168.1.1", "RFC 1918"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("198.19.255.255", "198.18.0.0/15"),
            ("0.0.0.0", "unspecified"),
            ("239.1.1.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local"),
            ("ff02::1", "multicast"),
            ("::ffff:169.254.169.254", "link-local"),
        ];
        for (ip, range) in refused {
            let got = private_range(ip.parse().unwrap());
            assert!(got.is_some_and(|r| r.contains(range)), "{ip}: {got:?}");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "2001:db8::1",
        ] {
            assert_eq!(private_range(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn webhook_host_and_port() {
        assert_eq!(
            webhook_host_port("http://169.254.169.254/x"),
            Some(("169.254.169.254", 80))
        );
        assert_eq!(
            webhook_host_port("http://localhost:8080/h"),
            Some(("localhost", 8080))
        );
        assert_eq!(webhook_host_port("http://[::1]:9/h"), Some(("::1", 9)));
        assert_eq!(webhook_host_port("http://[fe80::1]"), Some(("fe80::1", 80)));
        assert_eq!(webhook_host_port("https://x/"), None);
    }
}
