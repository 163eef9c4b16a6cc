//! The scheme end to end: known answers, sign then verify, and every rejection.

use http::StatusCode;
use signer::{
    MAX_NONCE_LEN, MAX_SKEW_MS, NonceCache, Rejection, RequestParts, Signer, Verifier, content_md5,
    signature, string_to_sign, verify_content_md5,
};

const KEY: &str = "203753125";
const SECRET: &str = "secret-for-tests";
const NOW: u64 = 1_525_872_629_832;
const NONCE: &str = "c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44";

fn secret_of(app_key: &str) -> Option<&'static str> {
    (app_key == KEY).then_some(SECRET)
}

fn kat_request() -> RequestParts {
    RequestParts::new("POST", "/demo/post")
        .with_query("b", "2")
        .with_query("a", "1")
        .with_query("flag", "")
        .with_form("name", "value")
        .with_header("Accept", "application/json")
        .with_header(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .with_header("Date", "Wed, 09 May 2018 13:30:29 GMT")
        .with_header("X-Custom", "hello world")
        .with_header("X-Unsigned", "anything")
}

/// A request signed at `NOW` with `NONCE`.
fn signed() -> RequestParts {
    let mut req = kat_request();
    Signer::new(KEY, SECRET)
        .sign_header("X-Custom")
        .sign(&mut req, NOW, NONCE);
    req
}

fn verify(req: &RequestParts) -> Result<String, Rejection> {
    Verifier::new().verify(req, secret_of, NOW, &NonceCache::default())
}

fn rejection(req: &RequestParts) -> Rejection {
    verify(req).expect_err("the request must be refused")
}

// ---- Known answers ----

/// The expected signatures were computed independently with Python's standard library:
///
/// ```text
/// python3 -c 'import hmac, hashlib, base64, sys
/// s = sys.argv[1].encode().decode("unicode_escape").encode()
/// print(base64.b64encode(hmac.new(b"secret-for-tests", s, hashlib.sha256).digest()).decode())' \
///   'POST\napplication/json\n\napplication/x-www-form-urlencoded; charset=UTF-8\nWed, 09 May 2018 13:30:29 GMT\nx-ca-key:203753125\nx-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44\nx-ca-signature-method:HmacSHA256\nx-ca-timestamp:1525872629832\nx-custom:hello world\n/demo/post?a=1&b=2&flag&name=value'
/// ```
#[test]
fn known_answer() {
    let req = signed();
    let expected_string_to_sign = "POST\n\
        application/json\n\
        \n\
        application/x-www-form-urlencoded; charset=UTF-8\n\
        Wed, 09 May 2018 13:30:29 GMT\n\
        x-ca-key:203753125\n\
        x-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44\n\
        x-ca-signature-method:HmacSHA256\n\
        x-ca-timestamp:1525872629832\n\
        x-custom:hello world\n\
        /demo/post?a=1&b=2&flag&name=value";
    assert_eq!(string_to_sign(&req), expected_string_to_sign);
    assert_eq!(
        req.header("x-ca-signature-headers"),
        Some("x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp,x-custom")
    );
    assert_eq!(req.header("x-ca-key"), Some(KEY));
    assert_eq!(req.header("x-ca-timestamp"), Some("1525872629832"));
    assert_eq!(req.header("x-ca-nonce"), Some(NONCE));
    assert_eq!(req.header("x-ca-signature-method"), Some("HmacSHA256"));
    assert_eq!(
        req.header("x-ca-signature"),
        Some("s+snMkx+/rFAju25ZXZK6Khg7DytcQ6keH2+K5+TjWo=")
    );
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

/// `python3 -c 'import hmac, hashlib, base64; print(base64.b64encode(hmac.new("密钥".encode(),
/// "GET\n\n\n\n\nx-ca-key:k\n/中?q=值".encode(), hashlib.sha256).digest()).decode())'`
/// and `python3 -c 'import hashlib, base64; print(base64.b64encode(hashlib.md5(b"hello").digest()).decode())'`
#[test]
fn known_answers_for_utf8_and_content_md5() {
    assert_eq!(
        signature("密钥".as_bytes(), "GET\n\n\n\n\nx-ca-key:k\n/中?q=值"),
        "ocjT5bWgouQ3vBZRgmgH9UHumaPBYPM4/pFD4d1ZBTY="
    );
    assert_eq!(content_md5(b"hello"), "XUFAKrxLKna5cZ2REBfFkg==");
}

// ---- Round trips ----

#[test]
fn round_trip_through_the_wire() {
    let req = signed();
    let target = req.path_and_query();
    assert_eq!(target, "/demo/post?b=2&a=1&flag");
    let mut arrived = RequestParts::from_uri("POST", &target).with_form_body(b"name=value");
    arrived.headers = req.headers.clone();
    assert_eq!(verify(&arrived).as_deref(), Ok(KEY));
}

#[test]
fn round_trip_with_http_parts() {
    let signer = Signer::new(KEY, SECRET).sign_header("x-custom");
    let (mut parts, ()) = http::Request::post("https://api.example.com/demo/post?b=2&a=1&flag")
        .header("accept", "application/json")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header("date", "Wed, 09 May 2018 13:30:29 GMT")
        .header("x-custom", "hello world")
        .body(())
        .unwrap()
        .into_parts();
    let form = [("name".to_owned(), "value".to_owned())];
    signer.sign_http(&mut parts, &form, NOW, NONCE).unwrap();
    assert_eq!(
        parts.headers["x-ca-signature"], "s+snMkx+/rFAju25ZXZK6Khg7DytcQ6keH2+K5+TjWo=",
        "the same request as the known answer"
    );
    let arrived = RequestParts::from_http(&parts).with_form_body(b"name=value");
    assert_eq!(verify(&arrived).as_deref(), Ok(KEY));
}

#[test]
fn sign_http_refuses_a_nonce_that_cannot_be_a_header() {
    let (mut parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
    let signer = Signer::new(KEY, SECRET);
    assert!(
        signer
            .sign_http(&mut parts, &[], NOW, "bad\nnonce")
            .is_err()
    );
    assert!(parts.headers.is_empty(), "nothing changed");
}

#[test]
fn resigning_replaces_the_previous_headers() {
    let mut req = signed();
    Signer::new(KEY, SECRET).sign(&mut req, NOW + 1, "second");
    assert_eq!(req.header_count("x-ca-signature"), 1);
    assert_eq!(req.header_count("x-ca-nonce"), 1);
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn signer_debug_hides_the_secret() {
    let shown = format!("{:?}", Signer::new(KEY, SECRET));
    assert!(shown.contains(KEY));
    assert!(!shown.contains(SECRET));
}

// ---- Canonicalisation ----

#[test]
fn header_names_are_case_insensitive() {
    let mut req = signed();
    for (name, _) in &mut req.headers {
        *name = name.to_ascii_uppercase();
    }
    assert_eq!(verify(&req).as_deref(), Ok(KEY));

    // The list of signed names, too: any case, spaces around the commas, repeats.
    let mut req = signed();
    req.set_header(
        "X-CA-SIGNATURE-HEADERS",
        " X-Ca-Timestamp,x-custom , X-CA-KEY,x-ca-nonce,,X-Ca-Signature-Method,x-ca-key",
    );
    assert_eq!(verify(&req).as_deref(), Ok(KEY));

    // Header names signed by a signer configured in upper case come out lower case.
    let mut req = kat_request();
    Signer::new(KEY, SECRET)
        .sign_header("X-CUSTOM")
        .sign(&mut req, NOW, NONCE);
    assert_eq!(
        req.header("X-Ca-Signature"),
        Some("s+snMkx+/rFAju25ZXZK6Khg7DytcQ6keH2+K5+TjWo=")
    );
}

#[test]
fn signature_and_signature_headers_are_never_signed() {
    let mut req = signed();
    req.set_header(
        "x-ca-signature-headers",
        "x-ca-key,x-ca-nonce,x-ca-signature,x-ca-signature-headers,x-ca-signature-method,x-ca-timestamp,x-custom",
    );
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn header_values_are_trimmed() {
    let mut req = signed();
    req.set_header("X-Custom", " \thello world\t ");
    req.set_header("Accept", "  application/json");
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn repeated_header_values_are_joined() {
    let mut req = RequestParts::new("GET", "/")
        .with_header("x-multi", "a")
        .with_header("X-Multi", "b");
    Signer::new(KEY, SECRET)
        .sign_header("x-multi")
        .sign(&mut req, NOW, NONCE);
    assert!(string_to_sign(&req).contains("\nx-multi:a,b\n"));
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
    // Dropping one of the values breaks the signature.
    req.headers
        .retain(|(name, value)| !(name == "X-Multi" && value == "b"));
    assert!(matches!(
        rejection(&req),
        Rejection::SignatureMismatch { .. }
    ));
}

#[test]
fn query_is_sorted_by_key() {
    let req = RequestParts::new("GET", "/p")
        .with_query("zeta", "1")
        .with_query("Alpha", "2")
        .with_query("alpha", "3")
        .with_query("b", "")
        .with_query("a_b", "x y");
    assert_eq!(
        string_to_sign(&req),
        "GET\n\n\n\n\n/p?Alpha=2&a_b=x y&alpha=3&b&zeta=1",
        "byte order: upper case before lower case, `_` before letters"
    );
    // Order in the request does not matter.
    let mut reordered = req.clone();
    reordered.query.reverse();
    assert_eq!(string_to_sign(&reordered), string_to_sign(&req));
}

#[test]
fn key_without_value_and_key_with_empty_value_sign_alike() {
    let bare = RequestParts::from_uri("GET", "/p?flag");
    let empty = RequestParts::from_uri("GET", "/p?flag=");
    assert_eq!(string_to_sign(&bare), "GET\n\n\n\n\n/p?flag");
    assert_eq!(string_to_sign(&bare), string_to_sign(&empty));
}

#[test]
fn no_parameters_means_no_question_mark() {
    assert_eq!(
        string_to_sign(&RequestParts::from_uri("DELETE", "/items/7?")),
        "DELETE\n\n\n\n\n/items/7"
    );
}

#[test]
fn query_values_are_signed_decoded() {
    let req = RequestParts::from_uri("GET", "/s?q=a%20b+c&e=%E4%B8%AD%26&x=%3D");
    assert_eq!(string_to_sign(&req), "GET\n\n\n\n\n/s?e=中&&q=a b c&x==");
}

#[test]
fn path_is_signed_as_sent() {
    let req = RequestParts::from_uri("GET", "/a%20b/c+d");
    assert_eq!(string_to_sign(&req), "GET\n\n\n\n\n/a%20b/c+d");
}

#[test]
fn form_parameters_are_merged_into_the_sorted_parameters() {
    let req = RequestParts::new("POST", "/f")
        .with_header("Content-Type", "application/x-www-form-urlencoded")
        .with_query("m", "q")
        .with_form_body(b"z=1&a=hello+world&n");
    assert_eq!(
        string_to_sign(&req),
        "POST\n\n\napplication/x-www-form-urlencoded\n\n/f?a=hello world&m=q&n&z=1"
    );

    // A changed form value breaks the signature.
    let mut req = signed();
    req.form[0].1 = "other".into();
    assert!(matches!(
        rejection(&req),
        Rejection::SignatureMismatch { .. }
    ));
}

#[test]
fn repeated_keys_sign_their_first_value() {
    let req = RequestParts::new("GET", "/r")
        .with_query("k", "first")
        .with_query("a", "1")
        .with_query("k", "second")
        .with_form("k", "form")
        .with_form("a", "form");
    assert_eq!(string_to_sign(&req), "GET\n\n\n\n\n/r?a=1&k=first");
}

#[test]
fn method_is_case_sensitive() {
    let mut req = signed();
    req.method = "post".into();
    assert!(matches!(
        rejection(&req),
        Rejection::SignatureMismatch { .. }
    ));
}

// ---- Every rejection ----

#[test]
fn missing_app_key() {
    let mut req = signed();
    req.remove_header("x-ca-key");
    assert_eq!(rejection(&req), Rejection::MissingAppKey);
    req.set_header("X-Ca-Key", "");
    assert_eq!(rejection(&req), Rejection::MissingAppKey);
    assert_eq!(Rejection::MissingAppKey.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn missing_signature() {
    let mut req = signed();
    req.remove_header("X-Ca-Signature");
    assert_eq!(rejection(&req), Rejection::MissingSignature);
    assert_eq!(
        Rejection::MissingSignature.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn unknown_app_key() {
    let mut req = kat_request();
    Signer::new("someone-else", SECRET).sign(&mut req, NOW, NONCE);
    let refused = rejection(&req);
    assert_eq!(refused, Rejection::UnknownAppKey("someone-else".into()));
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.message(),
        "Invalid AppKey: `someone-else` is not known"
    );
}

#[test]
fn missing_or_malformed_timestamp() {
    let mut req = signed();
    req.remove_header("x-ca-timestamp");
    assert_eq!(rejection(&req), Rejection::MissingTimestamp);
    assert_eq!(
        Rejection::MissingTimestamp.status(),
        StatusCode::BAD_REQUEST
    );
    for bad in [
        "",
        "soon",
        "-1",
        "+1525872629832",
        "1525872629.832",
        "99999999999999999999",
    ] {
        req.set_header("X-Ca-Timestamp", bad);
        let refused = rejection(&req);
        assert_eq!(refused, Rejection::MalformedTimestamp(bad.into()));
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn timestamp_skew_boundaries() {
    let cache = NonceCache::default();
    let verifier = Verifier::new();
    let at = |ts: u64, nonce: &str| {
        let mut req = kat_request();
        Signer::new(KEY, SECRET).sign(&mut req, ts, nonce);
        verifier.verify(&req, secret_of, NOW, &cache)
    };
    // Exactly 15 minutes either way is accepted.
    assert_eq!(at(NOW - MAX_SKEW_MS, "past-ok").as_deref(), Ok(KEY));
    assert_eq!(at(NOW + MAX_SKEW_MS, "future-ok").as_deref(), Ok(KEY));
    assert_eq!(at(NOW, "now-ok").as_deref(), Ok(KEY));
    // One millisecond more is not.
    let expired = at(NOW - MAX_SKEW_MS - 1, "past-bad").unwrap_err();
    assert_eq!(
        expired,
        Rejection::TimestampExpired {
            timestamp_ms: NOW - MAX_SKEW_MS - 1,
            now_ms: NOW,
            max_skew_ms: MAX_SKEW_MS
        }
    );
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    let ahead = at(NOW + MAX_SKEW_MS + 1, "future-bad").unwrap_err();
    assert!(matches!(ahead, Rejection::TimestampInFuture { .. }));
    assert_eq!(ahead.status(), StatusCode::FORBIDDEN);
    // Near the epoch the window does not underflow.
    let mut req = kat_request();
    Signer::new(KEY, SECRET).sign(&mut req, 0, "epoch");
    assert_eq!(
        verifier.verify(&req, secret_of, 1, &cache).as_deref(),
        Ok(KEY)
    );
}

#[test]
fn configurable_skew() {
    let verifier = Verifier::new().with_max_skew_ms(1_000);
    assert_eq!(verifier.max_skew_ms(), 1_000);
    let req = signed();
    let cache = NonceCache::default();
    assert!(matches!(
        verifier.verify(&req, secret_of, NOW + 1_001, &cache),
        Err(Rejection::TimestampExpired {
            max_skew_ms: 1_000,
            ..
        })
    ));
    assert_eq!(
        verifier
            .verify(&req, secret_of, NOW + 1_000, &cache)
            .as_deref(),
        Ok(KEY)
    );
}

#[test]
fn missing_or_malformed_nonce() {
    let mut req = signed();
    req.remove_header("x-ca-nonce");
    assert_eq!(rejection(&req), Rejection::MissingNonce);
    req.set_header("X-Ca-Nonce", "  ");
    assert_eq!(rejection(&req), Rejection::MissingNonce);
    assert_eq!(Rejection::MissingNonce.status(), StatusCode::BAD_REQUEST);
    req.set_header("X-Ca-Nonce", "n".repeat(MAX_NONCE_LEN + 1));
    assert_eq!(rejection(&req), Rejection::MalformedNonce);
    assert_eq!(Rejection::MalformedNonce.status(), StatusCode::BAD_REQUEST);

    // The longest nonce allowed is fine.
    let mut req = kat_request();
    Signer::new(KEY, SECRET).sign(&mut req, NOW, &"n".repeat(MAX_NONCE_LEN));
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn replayed_nonce() {
    let cache = NonceCache::default();
    let verifier = Verifier::new();
    let req = signed();
    assert_eq!(
        verifier.verify(&req, secret_of, NOW, &cache).as_deref(),
        Ok(KEY)
    );
    let refused = verifier
        .verify(&req, secret_of, NOW + 60_000, &cache)
        .unwrap_err();
    assert_eq!(refused, Rejection::ReplayedNonce(NONCE.into()));
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.message(),
        format!("Nonce Used: X-Ca-Nonce `{NONCE}` was already used")
    );
    // The same nonce with a new timestamp is still a replay.
    let mut again = kat_request();
    Signer::new(KEY, SECRET).sign(&mut again, NOW + 5_000, NONCE);
    assert!(matches!(
        verifier.verify(&again, secret_of, NOW + 5_000, &cache),
        Err(Rejection::ReplayedNonce(_))
    ));
    // After the window the timestamp check refuses the replay.
    assert!(matches!(
        verifier.verify(&req, secret_of, NOW + MAX_SKEW_MS + 1, &cache),
        Err(Rejection::TimestampExpired { .. })
    ));
}

#[test]
fn nonce_is_remembered_as_long_as_the_timestamp_is_accepted() {
    // A client clock 15 minutes ahead: its request stays acceptable for 30 minutes of server
    // time, so the nonce must be remembered that long.
    let cache = NonceCache::default();
    let verifier = Verifier::new();
    let mut req = kat_request();
    Signer::new(KEY, SECRET).sign(&mut req, NOW + MAX_SKEW_MS, NONCE);
    assert_eq!(
        verifier.verify(&req, secret_of, NOW, &cache).as_deref(),
        Ok(KEY)
    );
    let later = NOW + 2 * MAX_SKEW_MS;
    assert!(matches!(
        verifier.verify(&req, secret_of, later, &cache),
        Err(Rejection::ReplayedNonce(_))
    ));
    assert!(matches!(
        verifier.verify(&req, secret_of, later + 1, &cache),
        Err(Rejection::TimestampExpired { .. })
    ));
}

#[test]
fn nonces_are_per_app_key() {
    let secrets = |key: &str| match key {
        "a" => Some("sa"),
        "b" => Some("sb"),
        _ => None,
    };
    let cache = NonceCache::default();
    for (key, secret) in [("a", "sa"), ("b", "sb")] {
        let mut req = kat_request();
        Signer::new(key, secret).sign(&mut req, NOW, "shared-nonce");
        assert_eq!(
            Verifier::new()
                .verify(&req, secrets, NOW, &cache)
                .as_deref(),
            Ok(key)
        );
    }
}

#[test]
fn a_refused_request_does_not_use_up_its_nonce() {
    let cache = NonceCache::default();
    let verifier = Verifier::new();
    let mut forged = signed();
    forged.set_header("X-Ca-Signature", "AAAA");
    assert!(verifier.verify(&forged, secret_of, NOW, &cache).is_err());
    let too_late = signed();
    assert!(
        verifier
            .verify(&too_late, secret_of, NOW + MAX_SKEW_MS + 1, &cache)
            .is_err()
    );
    assert!(cache.is_empty());
    assert_eq!(
        verifier
            .verify(&signed(), secret_of, NOW, &cache)
            .as_deref(),
        Ok(KEY)
    );
}

#[test]
fn full_nonce_cache() {
    let cache = NonceCache::new(1);
    let verifier = Verifier::new();
    assert_eq!(
        verifier
            .verify(&signed(), secret_of, NOW, &cache)
            .as_deref(),
        Ok(KEY)
    );
    let mut other = kat_request();
    Signer::new(KEY, SECRET).sign(&mut other, NOW, "another");
    let refused = verifier.verify(&other, secret_of, NOW, &cache).unwrap_err();
    assert_eq!(refused, Rejection::NonceCacheFull);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Once the first nonce expires there is room again.
    let mut later = kat_request();
    let then = NOW + MAX_SKEW_MS + 1;
    Signer::new(KEY, SECRET).sign(&mut later, then, "another");
    assert_eq!(
        verifier.verify(&later, secret_of, then, &cache).as_deref(),
        Ok(KEY)
    );
}

#[test]
fn unsupported_signature_method() {
    let mut req = signed();
    req.set_header("X-Ca-Signature-Method", "HmacSHA1");
    let refused = rejection(&req);
    assert_eq!(
        refused,
        Rejection::UnsupportedSignatureMethod("HmacSHA1".into())
    );
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    // Absent means HmacSHA256 (when the client did not sign the header).
    let mut req = signed();
    req.remove_header("X-Ca-Signature-Method");
    req.set_header(
        "X-Ca-Signature-Headers",
        "x-ca-key,x-ca-nonce,x-ca-timestamp,x-custom",
    );
    let secret = SECRET.as_bytes();
    let sig = signature(secret, &string_to_sign(&req));
    req.set_header("X-Ca-Signature", sig);
    assert_eq!(verify(&req).as_deref(), Ok(KEY));

    // Letter case is ignored. (The header is signed, so sign the string with the value sent.)
    let mut req = signed();
    req.set_header("X-Ca-Signature-Method", "HMACSHA256");
    let sig = signature(SECRET.as_bytes(), &string_to_sign(&req));
    req.set_header("X-Ca-Signature", sig);
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn signature_mismatch_shows_the_server_string_to_sign() {
    let mut req = signed();
    req.set_header("X-Custom", "tampered");
    let refused = rejection(&req);
    let expected = string_to_sign(&req);
    assert_eq!(
        refused,
        Rejection::SignatureMismatch {
            string_to_sign: expected.clone()
        }
    );
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.message(),
        format!(
            "Invalid Signature, Server StringToSign:`{}`",
            expected.replace('\n', "#")
        )
    );
    assert_eq!(
        refused.header_value(),
        "Invalid Signature, Server StringToSign:`POST#application/json##application/x-www-form-urlencoded; charset=UTF-8#Wed, 09 May 2018 13:30:29 GMT#x-ca-key:203753125#x-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44#x-ca-signature-method:HmacSHA256#x-ca-timestamp:1525872629832#x-custom:tampered#/demo/post?a=1&b=2&flag&name=value`"
    );
}

#[test]
fn wrong_secret_or_garbage_signature_is_a_mismatch() {
    let mut req = kat_request();
    Signer::new(KEY, "wrong").sign(&mut req, NOW, NONCE);
    assert!(matches!(
        rejection(&req),
        Rejection::SignatureMismatch { .. }
    ));
    for garbage in [
        "not base64!",
        "AAAA",
        "s+snMkx+/rFAju25ZXZK6Khg7DytcQ6keH2+K5+TjW",
        "==",
    ] {
        let mut req = signed();
        req.set_header("X-Ca-Signature", garbage);
        assert!(
            matches!(rejection(&req), Rejection::SignatureMismatch { .. }),
            "{garbage}"
        );
    }
}

#[test]
fn unsigned_headers_may_change() {
    let mut req = signed();
    req.set_header("X-Unsigned", "changed");
    req.headers.push(("X-Added".into(), "new".into()));
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn signed_header_missing() {
    let mut req = signed();
    req.remove_header("X-Custom");
    let refused = rejection(&req);
    assert_eq!(refused, Rejection::SignedHeaderMissing("x-custom".into()));
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn signer_skips_configured_headers_the_request_lacks() {
    let mut req = RequestParts::new("GET", "/");
    Signer::new(KEY, SECRET)
        .sign_header("x-absent")
        .sign(&mut req, NOW, NONCE);
    assert_eq!(
        req.header("x-ca-signature-headers"),
        Some("x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp")
    );
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
}

#[test]
fn timestamp_and_nonce_must_be_signed() {
    for list in ["x-ca-key,x-ca-nonce", "x-ca-key,x-ca-timestamp", ""] {
        let mut req = signed();
        req.set_header("X-Ca-Signature-Headers", list);
        let refused = rejection(&req);
        assert_eq!(refused, Rejection::ReplayHeadersNotSigned, "{list:?}");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    let mut req = signed();
    req.remove_header("X-Ca-Signature-Headers");
    assert_eq!(rejection(&req), Rejection::ReplayHeadersNotSigned);

    // Unless the verifier is told to allow it.
    let mut req = signed();
    req.set_header("X-Ca-Signature-Headers", "x-ca-key");
    let sig = signature(SECRET.as_bytes(), &string_to_sign(&req));
    req.set_header("X-Ca-Signature", sig);
    let lenient = Verifier::new().allow_unsigned_replay_headers();
    assert_eq!(
        lenient
            .verify(&req, secret_of, NOW, &NonceCache::default())
            .as_deref(),
        Ok(KEY)
    );
}

#[test]
fn duplicate_system_headers() {
    for name in [
        "X-Ca-Key",
        "X-Ca-Signature",
        "X-Ca-Timestamp",
        "X-Ca-Nonce",
        "X-Ca-Signature-Method",
    ] {
        let mut req = signed();
        let value = req.header(name).unwrap().to_owned();
        req.headers.push((name.to_ascii_lowercase(), value));
        let refused = rejection(&req);
        assert!(
            matches!(refused, Rejection::DuplicateHeader(dup) if dup.eq_ignore_ascii_case(name)),
            "{refused:?}"
        );
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn content_md5_covers_the_body() {
    let body = br#"{"item":"book"}"#;
    let mut req = RequestParts::new("POST", "/json")
        .with_header("Content-Type", "application/json")
        .with_header("Content-MD5", signer::content_md5(body));
    Signer::new(KEY, SECRET).sign(&mut req, NOW, NONCE);
    assert_eq!(verify(&req).as_deref(), Ok(KEY));
    assert_eq!(verify_content_md5(&req, body), Ok(()));
    let refused = verify_content_md5(&req, b"{}").unwrap_err();
    assert!(matches!(refused, Rejection::ContentMd5Mismatch { .. }));
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // Without the header there is nothing to check.
    assert_eq!(
        verify_content_md5(&RequestParts::new("POST", "/"), b"x"),
        Ok(())
    );
    // The header is signed: changing it breaks the signature.
    req.set_header("Content-MD5", signer::content_md5(b"{}"));
    assert!(matches!(
        rejection(&req),
        Rejection::SignatureMismatch { .. }
    ));
}

#[test]
fn every_rejection_has_a_header_value() {
    let all = [
        Rejection::MissingAppKey,
        Rejection::MissingSignature,
        Rejection::UnsupportedSignatureMethod("x\r\ny".into()),
        Rejection::MissingTimestamp,
        Rejection::MalformedTimestamp("\u{0}".into()),
        Rejection::MissingNonce,
        Rejection::MalformedNonce,
        Rejection::DuplicateHeader("x-ca-key"),
        Rejection::SignedHeaderMissing("x-a".into()),
        Rejection::ReplayHeadersNotSigned,
        Rejection::UnknownAppKey("é".into()),
        Rejection::SignatureMismatch {
            string_to_sign: "GET\n".into(),
        },
        Rejection::TimestampExpired {
            timestamp_ms: 0,
            now_ms: 1,
            max_skew_ms: 0,
        },
        Rejection::TimestampInFuture {
            timestamp_ms: 2,
            now_ms: 1,
            max_skew_ms: 0,
        },
        Rejection::ReplayedNonce("n".into()),
        Rejection::NonceCacheFull,
        Rejection::ContentMd5Mismatch {
            header: "a".into(),
            body: "b".into(),
        },
    ];
    for rejection in all {
        let value = rejection.header_value();
        assert!(!value.is_empty());
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
        );
        assert!(matches!(rejection.status().as_u16(), 400 | 401 | 403 | 429));
    }
    assert_eq!(signer::ERROR_MESSAGE_HEADER, "x-ca-error-message");
}
