//! Checks of a request head at the edge, before routing (RFC 9112 section 3.2, RFC 9110
//! sections 7.2 and 8.6): which host the request is for ([`request_host`]), its
//! `Content-Length` lines ([`merge_content_length`]), and header names a backend may read as
//! others ([`has_underscore_names`]).
//!
//! The host decides the route and becomes `X-Forwarded-Host`, so a request that names it in
//! two ways (two `Host` lines, a `Host` that disagrees with an absolute-form target or with
//! HTTP/2's `:authority`) or in a form that is not a host at all (`a b`, `a/b`, `user@a`,
//! `a:port`) is refused: a backend or a cache behind the gateway could pick the other one.

use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderValue, Uri, Version};
use std::net::Ipv6Addr;

/// Why a request's host was refused; the message names what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request must carry a Host header")]
    Missing,
    #[error("a request must carry at most one Host header")]
    Repeated,
    #[error(
        "the Host header must be a host name, an IPv4 address or a bracketed IPv6 address, \
         optionally with ':' and a port from 0 to 65535"
    )]
    InvalidHeader,
    #[error(
        "the request target's authority must be a host, optionally with ':' and a port from \
         0 to 65535, without user information"
    )]
    InvalidAuthority,
    #[error("the request target's authority and the Host header name different hosts")]
    Disagrees,
}

/// The host `uri` and `headers` name, checked: `Some` authority (`host[:port]`, as sent) to
/// route by and pass on as `X-Forwarded-Host`, or `None` for an HTTP/1.0 request that names
/// none.
///
/// - At most one `Host` line, and it must be a valid `uri-host [":" port]`.
/// - An HTTP/1.1 request must carry one (even with an absolute-form target); HTTP/1.0 need not.
/// - An authority in the target (absolute form, or HTTP/2's `:authority`) must be valid,
///   carry no user information, and name the same host and port as `Host` when both are
///   there (host names compare case-insensitively; no port is the scheme's default). It is
///   the one returned, as RFC 9112 section 3.2.2 says.
/// - HTTP/2 needs `:authority` or `Host` (RFC 9113 section 8.3.1).
pub fn request_host<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, HostError> {
    let mut lines = headers.get_all(HOST).iter();
    let header = lines.next();
    if lines.next().is_some() {
        return Err(HostError::Repeated);
    }
    let header = match header {
        Some(value) => {
            let text = header_text(value).ok_or(HostError::InvalidHeader)?;
            Some((text, split_host(text).ok_or(HostError::InvalidHeader)?))
        }
        None => None,
    };
    let authority = match uri.authority() {
        Some(a) => {
            let text = a.as_str();
            if text.contains('@') {
                return Err(HostError::InvalidAuthority);
            }
            Some((text, split_host(text).ok_or(HostError::InvalidAuthority)?))
        }
        None => None,
    };
    if version == Version::HTTP_11 && header.is_none() {
        return Err(HostError::Missing);
    }
    match (authority, header) {
        (Some((text, named)), Some((_, hosted))) => {
            let default = default_port(uri);
            if !named.same_as(&hosted, default) {
                return Err(HostError::Disagrees);
            }
            Ok(Some(text))
        }
        (Some((text, _)), None) | (None, Some((text, _))) => Ok(Some(text)),
        (None, None) if version >= Version::HTTP_2 => Err(HostError::Missing),
        (None, None) => Ok(None),
    }
}

fn header_text(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

/// The port a URI of `uri`'s scheme has when it names none.
fn default_port(uri: &Uri) -> u16 {
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    }
}

/// A host and port as written, checked.
#[derive(Debug, PartialEq, Eq)]
struct HostPort<'a> {
    host: &'a str,
    port: Option<u16>,
}

impl HostPort<'_> {
    fn same_as(&self, other: &HostPort<'_>, default_port: u16) -> bool {
        self.host.eq_ignore_ascii_case(other.host)
            && self.port.unwrap_or(default_port) == other.port.unwrap_or(default_port)
    }
}

/// `uri-host [":" port]` (RFC 3986 section 3.2.2): a bracketed IPv6 address, or a reg-name
/// (which covers IPv4 addresses): unreserved characters, sub-delims and percent escapes, not
/// empty. The port, when the `:` is there, is 1 to 5 digits up to 65535.
fn split_host(text: &str) -> Option<HostPort<'_>> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest.find(']')?;
        rest[..close].parse::<Ipv6Addr>().ok()?;
        let after = &rest[close + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (&text[..close + 2], port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || (!host.starts_with('[') && !is_reg_name(host)) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some(HostPort { host, port })
}

fn is_reg_name(host: &str) -> bool {
    let b = host.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Two `Content-Length` lines or more: identical ones become one (RFC 9110 section 8.6 allows
/// a recipient to merge them), different ones are an error. `Err(())` means the message's
/// length is in doubt: a 400 from a client, a 502 from a backend.
#[allow(clippy::result_unit_err)]
pub fn merge_content_length(headers: &mut HeaderMap) -> Result<(), ()> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return Ok(());
    };
    if headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != first.as_bytes().trim_ascii())
    {
        return Err(());
    }
    let first = first.clone();
    headers.insert(CONTENT_LENGTH, first);
    Ok(())
}

/// Whether any header name has an underscore. Such names are dropped by default (as nginx
/// does): a backend behind a CGI-style layer maps `-` and `_` to the same variable, so
/// `Content_Length` or `X_Ca_Key` could stand in for the header the gateway checked.
pub fn has_underscore_names(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().contains('_'))
}

/// Removes every header whose name has an underscore.
pub fn drop_underscore_names(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(version: Version, target: &str, hosts: &[&str]) -> Result<Option<String>, HostError> {
        let uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, HeaderValue::from_str(h).unwrap());
        }
        request_host(version, &uri, &headers).map(|h| h.map(str::to_string))
    }

    const V11: Version = Version::HTTP_11;

    #[test]
    fn one_valid_host_is_required_on_http11() {
        assert_eq!(
            host(V11, "/a", &["a.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(host(V11, "/a", &["A.b:8080"]), Ok(Some("A.b:8080".into())));
        assert_eq!(
            host(V11, "/a", &["10.1.2.3:1"]),
            Ok(Some("10.1.2.3:1".into()))
        );
        assert_eq!(host(V11, "/a", &["[::1]"]), Ok(Some("[::1]".into())));
        assert_eq!(
            host(V11, "/a", &["[::1]:443"]),
            Ok(Some("[::1]:443".into()))
        );
        assert_eq!(host(V11, "/a", &["x%41y"]), Ok(Some("x%41y".into())));
        assert_eq!(host(V11, "/a", &[]), Err(HostError::Missing));
        assert_eq!(host(V11, "/a", &["a", "a"]), Err(HostError::Repeated));
        for bad in [
            "", "a b", "a/b", "u@a", "a:", "a:x", "a:65536", "a:123456", "a:1:2", "[::1", "[x]",
            "[::1]x", "[::1]:", "a\\b", "a%4", "a?b", "a#b", ":80",
        ] {
            assert_eq!(
                host(V11, "/a", &[bad]),
                Err(HostError::InvalidHeader),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        let abs = |t: &str, h: &[&str]| host(V11, t, h);
        assert_eq!(abs("http://a/x", &["a"]), Ok(Some("a".into())));
        assert_eq!(abs("http://A:80/x", &["a"]), Ok(Some("A:80".into())));
        assert_eq!(abs("https://a/x", &["a:443"]), Ok(Some("a".into())));
        assert_eq!(abs("http://a/x", &["b"]), Err(HostError::Disagrees));
        assert_eq!(abs("http://a:81/x", &["a"]), Err(HostError::Disagrees));
        assert_eq!(abs("https://a/x", &["a:80"]), Err(HostError::Disagrees));
        assert_eq!(
            abs("http://u@a/x", &["a"]),
            Err(HostError::InvalidAuthority)
        );
        assert_eq!(
            abs("http://u:p@a/x", &["a"]),
            Err(HostError::InvalidAuthority)
        );
        assert_eq!(abs("http://a/x", &[]), Err(HostError::Missing));
    }

    #[test]
    fn http10_may_omit_host_and_http2_uses_authority() {
        let v10 = Version::HTTP_10;
        assert_eq!(host(v10, "/a", &[]), Ok(None));
        assert_eq!(host(v10, "http://a/x", &[]), Ok(Some("a".into())));
        assert_eq!(host(v10, "/a", &["a b"]), Err(HostError::InvalidHeader));
        let v2 = Version::HTTP_2;
        assert_eq!(host(v2, "http://a:1/x", &[]), Ok(Some("a:1".into())));
        assert_eq!(host(v2, "http://a:1/x", &["a:1"]), Ok(Some("a:1".into())));
        assert_eq!(
            host(v2, "http://a:1/x", &["b:1"]),
            Err(HostError::Disagrees)
        );
        assert_eq!(host(v2, "/x", &["b"]), Ok(Some("b".into())));
        assert_eq!(host(v2, "/x", &[]), Err(HostError::Missing));
    }

    #[test]
    fn content_length_lines_merge_only_when_identical() {
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(merge_content_length(&mut h), Ok(()));
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(merge_content_length(&mut h), Ok(()));
        assert_eq!(h.get_all(CONTENT_LENGTH).iter().count(), 1);
        h.append(CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert_eq!(merge_content_length(&mut h), Err(()));
    }

    #[test]
    fn underscore_names_are_found_and_dropped() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        assert!(!has_underscore_names(&h));
        h.append("content_length", HeaderValue::from_static("1"));
        h.append("x_b", HeaderValue::from_static("1"));
        h.append("x_b", HeaderValue::from_static("2"));
        assert!(has_underscore_names(&h));
        drop_underscore_names(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-a"));
    }
}
