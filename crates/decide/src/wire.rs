//! The wire: the header names the gateway reads and sets, and the byte-level helpers both HTTP/1
//! legs (the lean server loop and the direct backend exchange) parse and write heads with.
//!
//! A leaf: it uses nothing else of this crate, so that any layer may use it.

use http::header::{CONNECTION, HeaderMap, HeaderName};

/// The request id the gateway gives every request, sent to the backend and the client.
pub const X_CA_REQUEST_ID: HeaderName = HeaderName::from_static("x-ca-request-id");
/// The message of an answer the gateway made itself.
pub const X_CA_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-ca-error-message");
/// The stable code of an answer the gateway made itself.
pub const X_CA_ERROR_CODE: HeaderName = HeaderName::from_static("x-ca-error-code");
/// The stage a client calls: `RELEASE` (the default), `PRE` or `TEST`.
pub const X_CA_STAGE: HeaderName = HeaderName::from_static("x-ca-stage");
/// The AppKey of a signed app call.
pub const X_CA_KEY: HeaderName = HeaderName::from_static("x-ca-key");
/// Appended to (or started) on the way to the backend.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// This hop's scheme, set on the way to the backend.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client asked for, set on the way to the backend.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `X-Ca-Error-Message` of a throttled request, as the cloud words it.
pub const THROTTLED_MESSAGE: &str = "Throttled by INSTANCE Flow Control";

/// Whether a header is hop-by-hop whatever `Connection` lists (RFC 9110 7.6.1): `Connection`,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` or `Upgrade`, in any case.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|f| name.eq_ignore_ascii_case(f))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// The header names a `Connection` value lists as this hop's: its options other than
/// `keep-alive` and `close`.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"close")
        })
}

/// Removes the hop-by-hop headers: those of [`is_hop_by_hop`] and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = |k: &HeaderName| is_hop_by_hop(k.as_str().as_bytes());
    // Most messages have none, or only `Connection: keep-alive`: one pass tells.
    if !headers.keys().any(hop) {
        return;
    }
    let mut remove: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| connection_options(v.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    remove.extend(headers.keys().filter(|k| hop(k)).cloned());
    for name in remove {
        headers.remove(name);
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A Content-Length value: digits only (RFC 9110 8.6; no sign, no list), without overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Appends one header line, `name: value\r\n`, to a head being written.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The size of a response head as HTTP/1.1 writes it: `HTTP/1.1 200 OK\r\n`, a
/// `name: value\r\n` line per header, and the empty line. It is how the head of a response
/// sent some other way (HTTP/2, whose HPACK-compressed size depends on what the connection
/// sent before) or read through a header map is metered.
pub fn http1_head_len(status: http::StatusCode, headers: &HeaderMap) -> u64 {
    let status_line = b"HTTP/1.1 200 \r\n".len() + status.canonical_reason().map_or(0, str::len);
    let lines: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (status_line + lines + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_head_lengths_are_what_http1_writes() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", http::HeaderValue::from_static("5"));
        headers.append("x-a", http::HeaderValue::from_static("1"));
        let mut out = b"HTTP/1.1 429 Too Many Requests\r\n".to_vec();
        for (n, v) in &headers {
            put_header(&mut out, n.as_str().as_bytes(), v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        assert_eq!(
            http1_head_len(http::StatusCode::TOO_MANY_REQUESTS, &headers),
            out.len() as u64
        );
        assert_eq!(
            http1_head_len(http::StatusCode::OK, &HeaderMap::new()),
            b"HTTP/1.1 200 OK\r\n\r\n".len() as u64
        );
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5, 5",
            b" 5",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
