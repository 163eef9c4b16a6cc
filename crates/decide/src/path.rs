//! The one canonical form of a request path, computed before routing: [`canonical_path`].
//!
//! A gateway that routes one spelling of a path while its backend serves another can be
//! walked around: `/s/files/../admin/1` matches an open `/s/files/{name}` API here, and a
//! backend that normalises paths serves `/s/admin/1`, which an IP ACL or an app grant was
//! meant to guard. So every request path, whatever carried it (the lean HTTP/1 loop, hyper's
//! HTTP/1 and HTTP/2, TLS), is brought to one form first, and routing, the access checks, the
//! signature check and the forwarded request all use that form and nothing else.
//!
//! The form (RFC 3986 section 6.2.2, as Envoy's `normalize_path` with escaped slashes refused):
//!
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded; other escapes
//!   stay encoded, with upper-case hex digits;
//! - dot segments are removed (RFC 3986 section 5.2.4);
//! - nothing else changes: empty segments (`//`) are kept, since merging them silently would
//!   make a second spelling of its own.
//!
//! Refused, because a backend or a filesystem behind it may read them as separators or
//! terminators the router never saw: an encoded `/` (`%2F`), a `\` (raw or `%5C`), an encoded
//! NUL (`%00`), a `.` or `..` segment spelled with `%2E`, a malformed escape, and a path that
//! climbs above the root.

use std::borrow::Cow;

/// Why a request path was refused; the message names what is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path must not contain an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("the request path must not contain '\\' or %5C")]
    Backslash,
    #[error("the request path must not contain NUL (%00)")]
    Nul,
    #[error("the request path must not spell a '.' or '..' segment with %2E")]
    EncodedDotSegment,
    #[error("the request path has a malformed percent escape (allowed: '%' and two hex digits)")]
    BadEscape,
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
}

/// `raw` in its canonical form (see the [module docs](self)), borrowed when it already is.
/// `raw` is the path alone, without the query.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case, without allocating: nothing to decode, nothing refused, and no dot
    // segment (one always starts right after a '/'; `/v1/a.json` is not one).
    if !bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | 0))
        && !bytes.windows(2).any(|w| w == b"/.")
    {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out: Vec<String> = Vec::new();
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let (decoded, encoded_dot) = decode_segment(segment)?;
        match decoded.as_str() {
            "." | ".." if encoded_dot => return Err(PathError::EncodedDotSegment),
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => {
                out.push(decoded);
                continue;
            }
        }
        // A dot segment at the end leaves the path ending in '/' (RFC 3986 5.2.4).
        if i == last {
            out.push(String::new());
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(if path == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(path)
    })
}

/// One segment with its unreserved escapes decoded; whether a `.` in it was encoded.
fn decode_segment(segment: &str) -> Result<(String, bool), PathError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|&h| hex(h)),
                    bytes.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = hi << 4 | lo;
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    _ if is_unreserved(c) => {
                        encoded_dot |= c == b'.';
                        out.push(c as char);
                    }
                    _ => {
                        out.push('%');
                        out.push(HEX[usize::from(hi)] as char);
                        out.push(HEX[usize::from(lo)] as char);
                    }
                }
                i += 3;
            }
            _ => {
                // `segment` is a `&str`: copy whole characters, not bytes.
                let len = utf8_len(b);
                out.push_str(&segment[i..i + len]);
                i += len;
            }
        }
    }
    Ok((out, encoded_dot))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> String {
        canonical_path(raw).unwrap().into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a//b",
            "/.well-known/x",
            "/a/b.c",
            "/%20",
        ] {
            assert!(
                matches!(canonical_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/s/files/../admin/1"), "/s/admin/1");
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a//../b"), "/a/b");
        assert_eq!(ok("/a/..b/c.."), "/a/..b/c..");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_case() {
        assert_eq!(ok("/%7Euser/%41%2d%5f"), "/~user/A-_");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/a%3fb%e2%82%ac"), "/a%3Fb%E2%82%AC");
        assert_eq!(ok("/caf\u{e9}/./x"), "/caf\u{e9}/x");
        assert_eq!(ok("/a.%2ejs"), "/a..js");
    }

    #[test]
    fn confusing_paths_are_refused() {
        use PathError::*;
        let cases = [
            ("s/a", NotAbsolute),
            ("", NotAbsolute),
            ("/s/pub/..%2fadmin%2f1", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a\\b", Backslash),
            ("/a%5cb", Backslash),
            ("/a%00", Nul),
            ("/s/files/%2e%2e/admin/1", EncodedDotSegment),
            ("/s/files/.%2E/admin", EncodedDotSegment),
            ("/a/%2e/b", EncodedDotSegment),
            ("/a%2", BadEscape),
            ("/a%zz", BadEscape),
            ("/..", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/../a", AboveRoot),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw), Err(want), "{raw}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2F".to_string()),
            Just("%41".to_string()),
            Just("%7e".to_string()),
            Just("%20".to_string()),
            "[a-zA-Z0-9._~-]{1,6}",
        ]
    }

    proptest! {
        /// A canonical path is a fixed point, holds no dot segment and nothing refused, and
        /// is what a second canonicalisation returns.
        #[test]
        fn canonical_form_is_stable(segs in proptest::collection::vec(segment(), 0..8)) {
            let raw = format!("/{}", segs.join("/"));
            if let Ok(c) = canonical_path(&raw) {
                let again = canonical_path(&c).expect("a canonical path is accepted");
                prop_assert_eq!(&*again, &*c);
                prop_assert!(c.starts_with('/'));
                for s in c[1..].split('/') {
                    prop_assert!(s != "." && s != "..", "dot segment in {}", c);
                }
                let lower = c.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%2e"), "{}", c);
                prop_assert!(!lower.contains("%5c") && !lower.contains("%00"), "{}", c);
            }
        }

        /// Any input at all: no panic, and an accepted path is a fixed point.
        #[test]
        fn any_path_is_canonicalised_or_refused(raw in "/[a-zA-Z0-9%./\\~_é-]{0,24}") {
            if let Ok(c) = canonical_path(&raw) {
                prop_assert_eq!(&*canonical_path(&c).expect("accepted again"), &*c);
            }
        }
    }
}
