//! The APP signature scheme (`signer` crate).
//!
//! 1. Arbitrary requests (method, path, query, form, headers, and arbitrary `X-Ca-*` values)
//!    go through `Verifier::verify` with a known secret: it must not panic, every rejection must
//!    give a header-safe message, and an `Ok` must name the known AppKey.
//! 2. Round trip: the same request signed by `Signer::sign` with the known secret must verify,
//!    and verifying it again must be refused as a replay.
//! 3. Round trip over the wire, as the gateway sees it: signed with `Signer::sign_http`, then
//!    rebuilt from the request target and headers the way the data plane does
//!    (`RequestParts::from_uri(method, path_and_query)` plus every header), it must verify.
//! 4. Helpers: `from_uri`, `parse_urlencoded`, `path_and_query` (round trip), `string_to_sign`,
//!    `signed_header_names`, `verify_content_md5`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use signer::{
    NonceCache, Rejection, RequestParts, Signer, Verifier, content_md5, header, parse_urlencoded,
    signed_header_names, string_to_sign, verify_content_md5,
};

const KEY: &str = "fuzz-app-key";
const SECRET: &str = "fuzz-app-secret-0123456789";

#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    path: String,
    /// A raw request target for `from_uri`.
    target: String,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    // The scheme's headers, when present (for the arbitrary-verify half).
    ca_key: Option<String>,
    ca_signature: Option<String>,
    ca_method: Option<String>,
    ca_timestamp: Option<String>,
    ca_nonce: Option<String>,
    ca_signed_headers: Option<String>,
    /// Use the key the verifier knows instead of `ca_key`.
    known_key: bool,
    /// Sign with the real signer first, then let `tamper` change one thing.
    presign: bool,
    tamper: Option<Tamper>,
    // Round trip.
    app_key: String,
    secret: String,
    nonce: String,
    extra_signed: Vec<String>,
    now_ms: u64,
    delay_ms: u16,
    skew_ms: Option<u64>,
    allow_unsigned_replay_headers: bool,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    Method(String),
    Path(String),
    AddQuery(String, String),
    AddHeader(String, String),
    RemoveHeader(String),
    SetHeader(String, String),
}

fn verifier(input: &Input) -> Verifier {
    let mut v = Verifier::new();
    if let Some(skew) = input.skew_ms {
        v = v.with_max_skew_ms(skew);
    }
    if input.allow_unsigned_replay_headers {
        v = v.allow_unsigned_replay_headers();
    }
    v
}

fn parts(input: &Input) -> RequestParts {
    let mut req = RequestParts::new(input.method.clone(), input.path.clone());
    req.query = input.query.clone();
    req.form = input.form.clone();
    req.headers = input.headers.clone();
    req
}

fn check_rejection(r: &Rejection) {
    // Always a valid header value, bounded.
    let v = r.header_value();
    assert!(v.len() <= signer::MAX_ERROR_MESSAGE_LEN, "{r:?}");
    let s = r.status().as_u16();
    assert!(matches!(s, 400 | 401 | 403 | 429), "{r:?} -> {s}");
}

/// Half 1: whatever arrives, the verifier answers without panicking.
fn arbitrary_verify(input: &Input) {
    let mut req = parts(input);
    if input.presign {
        Signer::new(KEY, SECRET).sign(&mut req, input.now_ms, &input.nonce);
    }
    let ca = [
        (header::CA_KEY, &input.ca_key),
        (header::CA_SIGNATURE, &input.ca_signature),
        (header::CA_SIGNATURE_METHOD, &input.ca_method),
        (header::CA_TIMESTAMP, &input.ca_timestamp),
        (header::CA_NONCE, &input.ca_nonce),
        (header::CA_SIGNATURE_HEADERS, &input.ca_signed_headers),
    ];
    if !input.presign {
        for (name, value) in ca {
            if let Some(v) = value {
                req.headers.push((name.to_string(), v.clone()));
            }
        }
        if input.known_key {
            req.set_header(header::CA_KEY, KEY);
        }
    }
    match &input.tamper {
        Some(Tamper::Method(m)) => req.method = m.clone(),
        Some(Tamper::Path(p)) => req.path = p.clone(),
        Some(Tamper::AddQuery(k, v)) => req.query.push((k.clone(), v.clone())),
        Some(Tamper::AddHeader(k, v)) => req.headers.push((k.clone(), v.clone())),
        Some(Tamper::RemoveHeader(k)) => req.remove_header(k),
        Some(Tamper::SetHeader(k, v)) => req.set_header(k, v.clone()),
        None => {}
    }
    let _ = string_to_sign(&req);
    let _ = signed_header_names(&req);
    let nonces = NonceCache::new(64);
    let now = input.now_ms.saturating_add(u64::from(input.delay_ms));
    let v = verifier(input);
    match v.verify(&req, |k: &str| (k == KEY).then_some(SECRET), now, &nonces) {
        Ok(key) => assert_eq!(key, KEY),
        Err(r) => check_rejection(&r),
    }
    if let Err(r) = verify_content_md5(&req, &input.body) {
        check_rejection(&r);
    }
}

/// Rejections a correctly signed request may still get because its own inputs are outside
/// the scheme's documented range.
fn allowed_round_trip_failure(input: &Input, r: &Rejection) -> bool {
    let trimmed = |s: &str| s.trim_matches([' ', '\t']).to_string();
    match r {
        Rejection::MissingAppKey => trimmed(&input.app_key).is_empty(),
        Rejection::MissingNonce => trimmed(&input.nonce).is_empty(),
        Rejection::MalformedNonce => trimmed(&input.nonce).len() > signer::MAX_NONCE_LEN,
        Rejection::TimestampExpired { .. } | Rejection::TimestampInFuture { .. } => {
            // Only when the configured skew is smaller than the delay.
            input.skew_ms.is_some_and(|s| s < u64::from(input.delay_ms))
        }
        _ => false,
    }
}

/// An extra signed header name the scheme can carry in `X-Ca-Signature-Headers`: the list is
/// comma-separated and trimmed, so a name with a comma or surrounding blanks cannot be listed.
fn listable(name: &str) -> bool {
    !name.contains(',')
}

/// Half 2: what the signer signs, the verifier accepts (same secret, in the skew window).
fn round_trip(input: &Input) {
    let mut signer = Signer::new(input.app_key.clone(), input.secret.clone());
    for name in input.extra_signed.iter().filter(|n| listable(n)) {
        signer = signer.sign_header(name);
    }
    let mut req = parts(input);
    signer.sign(&mut req, input.now_ms, &input.nonce);
    let now = input.now_ms.saturating_add(u64::from(input.delay_ms));
    let nonces = NonceCache::new(64);
    let v = verifier(input);
    let secret = input.secret.clone();
    match v.verify(&req, |_k: &str| Some(secret.as_str()), now, &nonces) {
        Ok(_) => {
            // The same request again is a replay.
            let again = v.verify(&req, |_k: &str| Some(secret.as_str()), now, &nonces);
            assert!(
                matches!(again, Err(Rejection::ReplayedNonce(_))),
                "a verified request verified twice: {again:?}"
            );
        }
        Err(r) => assert!(
            allowed_round_trip_failure(input, &r),
            "signed request refused: {r:?}\nrequest: {req:#?}\ninput: {input:#?}"
        ),
    }
}

/// Half 3: client signs an `http` request; the server rebuilds it from the request line and
/// headers (as `dataplane`'s access check does) and verifies it.
fn wire_round_trip(input: &Input) {
    // Only what can be sent: a valid method and URI, valid header names and values.
    let Ok(method) = http::Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    if !input.path.starts_with('/') {
        return;
    }
    let mut target = RequestParts::new(input.method.clone(), input.path.clone());
    target.query = input.query.clone();
    let Ok(uri) = target.path_and_query().parse::<http::Uri>() else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (k, v) in &input.headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let signer = Signer::new(input.app_key.clone(), input.secret.clone());
    if signer
        .sign_http(&mut parts, &[], input.now_ms, &input.nonce)
        .is_err()
    {
        return; // the key or nonce cannot be a header value
    }
    // What the data plane does (crates/dataplane/src/access.rs, `AppAuth::check`).
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut arrived = RequestParts::from_uri(parts.method.as_str(), pq);
    for (name, value) in &parts.headers {
        arrived.headers.push((
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    let nonces = NonceCache::new(64);
    let now = input.now_ms.saturating_add(u64::from(input.delay_ms));
    let v = verifier(input);
    let secret = input.secret.clone();
    if let Err(r) = v.verify(&arrived, |_k: &str| Some(secret.as_str()), now, &nonces) {
        assert!(
            allowed_round_trip_failure(input, &r),
            "signed http request refused on arrival: {r:?}\nsent: {parts:#?}\narrived: {arrived:#?}"
        );
    }
}

/// Half 4: the parsing helpers.
fn helpers(input: &Input) {
    let from = RequestParts::from_uri(input.method.clone(), &input.target);
    assert!(
        !from.path.is_empty(),
        "from_uri gives '/' for an empty path"
    );
    let _ = parse_urlencoded(&input.target);
    let _ = content_md5(&input.body);
    // path_and_query is read back by from_uri (documented), for a path without `?`/`#` and
    // parameters that are not both empty (an empty `&&` segment is skipped by design).
    if input.path.starts_with('/')
        && !input.path.contains(['?', '#'])
        && input
            .query
            .iter()
            .all(|(k, v)| !(k.is_empty() && v.is_empty()))
    {
        let mut req = RequestParts::new(input.method.clone(), input.path.clone());
        req.query = input.query.clone();
        let back = RequestParts::from_uri(input.method.clone(), &req.path_and_query());
        assert_eq!(back.path, req.path);
        assert_eq!(back.query, req.query);
    }
}

fuzz_target!(|input: Input| {
    arbitrary_verify(&input);
    round_trip(&input);
    wire_round_trip(&input);
    helpers(&input);
});
