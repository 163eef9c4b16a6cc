//! The parts of a request that the signature covers, and the canonical string to sign.

use std::collections::BTreeSet;

use crate::header;

/// The parts of an HTTP request that the signature covers.
///
/// Query and form parameters are held **decoded** (`a b`, not `a%20b` or `a+b`): the scheme signs
/// parameter values as they are, not as they are escaped on the wire. The path is held exactly as
/// it appears in the request line (not decoded), so a client signs the path it sends.
///
/// Header names are matched without regard to ASCII case; the list keeps whatever case it was
/// given. A name may appear more than once (see [`RequestParts::header_value`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    /// The HTTP method, used verbatim (the scheme expects upper case: `GET`, `POST`).
    pub method: String,
    /// The path as it appears in the request line, without the query: `/v1/items`.
    pub path: String,
    /// Decoded query parameters in request order. A parameter without a value (`?flag`) has an
    /// empty value.
    pub query: Vec<(String, String)>,
    /// Header names and values in request order.
    pub headers: Vec<(String, String)>,
    /// Decoded parameters of an `application/x-www-form-urlencoded` body; empty for any other
    /// body. They are merged with the query parameters in the string to sign.
    pub form: Vec<(String, String)>,
}

impl RequestParts {
    /// A request with the given method and path and nothing else.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// A request from a method and a request target: `/path?a=1&b=x%20y` (origin form) or
    /// `https://host/path?a=1` (absolute form; scheme and authority are dropped). A `#fragment`
    /// is dropped; an empty path becomes `/`. Query parameters are percent-decoded, `+` as a
    /// space.
    pub fn from_uri(method: impl Into<String>, target: &str) -> Self {
        let target = target.split_once('#').map_or(target, |(before, _)| before);
        let origin = match target.find("://") {
            Some(at) if !target.starts_with('/') => {
                let after_authority = &target[at + 3..];
                match after_authority.find(['/', '?']) {
                    Some(start) => &after_authority[start..],
                    None => "",
                }
            }
            _ => target,
        };
        let (path, query) = match origin.split_once('?') {
            Some((path, query)) => (path, parse_urlencoded(query)),
            None => (origin, Vec::new()),
        };
        Self {
            method: method.into(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            query,
            ..Self::default()
        }
    }

    /// A request from [`http::request::Parts`]: method, path, decoded query and headers. A header
    /// value that is not UTF-8 is converted lossily (invalid bytes become U+FFFD) on both the
    /// signing and the verifying side. Form parameters are not in `Parts`: add them with
    /// [`RequestParts::with_form_body`].
    pub fn from_http(parts: &http::request::Parts) -> Self {
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        Self {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(parse_urlencoded).unwrap_or_default(),
            headers,
            form: Vec::new(),
        }
    }

    /// Adds a (decoded) query parameter.
    pub fn with_query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a (decoded) form parameter.
    pub fn with_form(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.form.push((key.into(), value.into()));
        self
    }

    /// Adds the parameters of an `application/x-www-form-urlencoded` body.
    pub fn with_form_body(mut self, body: &[u8]) -> Self {
        self.form
            .extend(parse_urlencoded(&String::from_utf8_lossy(body)));
        self
    }

    /// The first value of the named header, matched without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).next()
    }

    /// How many times the named header appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers_named(name).count()
    }

    /// The value of the named header as the signature covers it: each occurrence trimmed of
    /// spaces and tabs, occurrences joined with `,`. `None` if the header is absent.
    pub fn header_value(&self, name: &str) -> Option<String> {
        let mut values = self.headers_named(name).map(trim_ows);
        let first = values.next()?;
        Some(values.fold(first.to_owned(), |mut joined, value| {
            joined.push(',');
            joined.push_str(value);
            joined
        }))
    }

    /// Replaces every occurrence of the named header with one of the given value.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_owned(), value.into()));
    }

    /// Removes every occurrence of the named header.
    pub fn remove_header(&mut self, name: &str) {
        self.headers
            .retain(|(have, _)| !have.eq_ignore_ascii_case(name));
    }

    /// The path and the query, percent-encoded for the request line: every byte but
    /// `A-Z a-z 0-9 - _ . ~` of a key or value is escaped, so [`RequestParts::from_uri`] reads
    /// the same parameters back.
    pub fn path_and_query(&self) -> String {
        let mut out = self.path.clone();
        for (index, (key, value)) in self.query.iter().enumerate() {
            out.push(if index == 0 { '?' } else { '&' });
            percent_encode_into(&mut out, key);
            if !value.is_empty() {
                out.push('=');
                percent_encode_into(&mut out, value);
            }
        }
        out
    }

    fn headers_named<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(have, _)| have.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The names listed in `X-Ca-Signature-Headers`, as the signature uses them: trimmed, lower
/// case, sorted, without duplicates or empty names, and without `x-ca-signature` and
/// `x-ca-signature-headers` (which are never signed). Empty if the header is absent.
pub fn signed_header_names(req: &RequestParts) -> Vec<String> {
    let mut names = BTreeSet::new();
    for value in req.headers_named(header::CA_SIGNATURE_HEADERS) {
        for name in value.split(',') {
            let name = trim_ows(name).to_ascii_lowercase();
            if !name.is_empty()
                && name != header::CA_SIGNATURE
                && name != header::CA_SIGNATURE_HEADERS
            {
                names.insert(name);
            }
        }
    }
    names.into_iter().collect()
}

/// The string to sign for a request, built from the headers it carries (the names to sign are
/// read from its `X-Ca-Signature-Headers`):
///
/// ```text
/// Method "\n" Accept "\n" Content-MD5 "\n" Content-Type "\n" Date "\n"
/// { name ":" value "\n" }        for each name in signed_header_names(req)
/// Path [ "?" k1=v1 "&" k2 "&" … ]
/// ```
///
/// Absent headers count as empty values. Query and form parameters are merged and sorted by key
/// (byte order, stable); when a key appears more than once only its first value is signed (query
/// before form), as the cloud does; a parameter with an empty value is written as just its key.
pub fn string_to_sign(req: &RequestParts) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(&req.method);
    out.push('\n');
    for name in ["accept", "content-md5", "content-type", "date"] {
        if let Some(value) = req.header_value(name) {
            out.push_str(&value);
        }
        out.push('\n');
    }
    for name in signed_header_names(req) {
        let value = req.header_value(&name).unwrap_or_default();
        out.push_str(&name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push_str(&path_and_parameters(req));
    out
}

/// The last part of the string to sign: the path, then `?` and the sorted parameters.
fn path_and_parameters(req: &RequestParts) -> String {
    let mut params: Vec<(&str, &str)> = req
        .query
        .iter()
        .chain(&req.form)
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    params.dedup_by(|later, earlier| later.0 == earlier.0);
    let mut out = req.path.clone();
    for (index, (key, value)) in params.iter().enumerate() {
        out.push(if index == 0 { '?' } else { '&' });
        out.push_str(key);
        if !value.is_empty() {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// Parses `a=1&b=x%20y&flag` into decoded pairs: `%XX` escapes and `+` (as a space) are decoded
/// in keys and values; empty segments are skipped; a segment without `=` has an empty value;
/// bytes that do not decode to UTF-8 become U+FFFD; a `%` not followed by two hex digits is kept.
pub fn parse_urlencoded(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            b'%' if at + 2 < bytes.len() => {
                match (hex_value(bytes[at + 1]), hex_value(bytes[at + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        at += 3;
                    }
                    _ => {
                        out.push(b'%');
                        at += 1;
                    }
                }
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) => decoded,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn percent_encode_into(out: &mut String, input: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in input.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// Trims the optional whitespace HTTP allows around a header value (spaces and tabs).
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%E4%B8%AD"), "中");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn urlencoded_parsing() {
        assert_eq!(
            parse_urlencoded("b=2&&a=x%3Dy&flag&e="),
            [
                ("b".into(), "2".into()),
                ("a".into(), "x=y".into()),
                ("flag".into(), String::new()),
                ("e".into(), String::new()),
            ]
        );
    }

    #[test]
    fn uri_forms() {
        let req = RequestParts::from_uri("GET", "https://example.com:8080/a/b?x=1#frag");
        assert_eq!(req.path, "/a/b");
        assert_eq!(req.query, [("x".to_owned(), "1".to_owned())]);
        assert_eq!(
            RequestParts::from_uri("GET", "http://example.com").path,
            "/"
        );
        assert_eq!(RequestParts::from_uri("GET", "http://h?q=1").path, "/");
        assert_eq!(RequestParts::from_uri("GET", "").path, "/");
        // A path that merely contains "://" stays a path.
        assert_eq!(
            RequestParts::from_uri("GET", "/r/http://x").path,
            "/r/http://x"
        );
    }

    #[test]
    fn path_and_query_round_trips() {
        let req = RequestParts::new("GET", "/p")
            .with_query("k y", "a&b=c")
            .with_query("flag", "")
            .with_query("中", "+%");
        let back = RequestParts::from_uri("GET", &req.path_and_query());
        assert_eq!(back.path, "/p");
        assert_eq!(back.query, req.query);
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let req = RequestParts::new("GET", "/")
            .with_header("X-A", " one\t")
            .with_header("x-a", "two");
        assert_eq!(req.header("X-a"), Some(" one\t"));
        assert_eq!(req.header_value("x-A").as_deref(), Some("one,two"));
        assert_eq!(req.header_count("X-A"), 2);
        assert_eq!(req.header_value("x-b"), None);
    }
}
