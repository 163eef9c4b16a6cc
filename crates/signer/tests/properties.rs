//! Properties: any signed request verifies, any change to what is signed breaks it, and nothing
//! a client sends makes verification panic.

use proptest::prelude::*;
use signer::{NonceCache, Rejection, RequestParts, Signer, Verifier};

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";
const NOW: u64 = 1_700_000_000_000;
const NONCE: &str = "nonce-1";

fn secret_of(app_key: &str) -> Option<&'static str> {
    (app_key == KEY).then_some(SECRET)
}

/// A request before signing, and the names of its custom headers (all signed).
#[derive(Debug, Clone)]
struct Case {
    req: RequestParts,
    custom: Vec<String>,
}

/// A header value with no surrounding whitespace (which the scheme trims) and no control
/// characters.
fn header_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,12}[!-~])?"
}

fn case() -> impl Strategy<Value = Case> {
    (
        "[A-Z]{1,7}",
        "/[A-Za-z0-9._~/%-]{0,16}",
        // Unique keys per source; `q` and `f` prefixes keep query and form keys apart.
        prop::collection::btree_map("q[a-z0-9_]{0,5}", "\\PC{0,8}", 0..5),
        prop::collection::btree_map("f[a-z0-9_]{0,5}", "\\PC{0,8}", 0..4),
        prop::collection::btree_map("x-h[a-z]{0,5}", header_value(), 0..4),
        prop::option::of(header_value()),
        prop::option::of(header_value()),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, query, form, custom, accept, content_type, reverse)| {
                let mut req = RequestParts::new(method, path);
                req.query = query.into_iter().collect();
                if reverse {
                    // The order parameters arrive in must not matter.
                    req.query.reverse();
                }
                req.form = form.into_iter().collect();
                let names = custom.keys().cloned().collect();
                req.headers = custom.into_iter().collect();
                if let Some(accept) = accept {
                    req.headers.push(("Accept".into(), accept));
                }
                if let Some(content_type) = content_type {
                    req.headers.push(("Content-Type".into(), content_type));
                }
                Case { req, custom: names }
            },
        )
}

fn sign(case: &Case, secret: &str) -> RequestParts {
    let signer = case
        .custom
        .iter()
        .fold(Signer::new(KEY, secret), |signer, name| {
            signer.sign_header(name)
        });
    let mut req = case.req.clone();
    signer.sign(&mut req, NOW, NONCE);
    req
}

fn verify(req: &RequestParts) -> Result<String, Rejection> {
    Verifier::new().verify(req, secret_of, NOW, &NonceCache::new(16))
}

fn assert_mismatch(req: &RequestParts) -> Result<(), TestCaseError> {
    let result = verify(req);
    prop_assert!(
        matches!(result, Err(Rejection::SignatureMismatch { .. })),
        "expected a mismatch, got {result:?}"
    );
    Ok(())
}

/// The form as an `application/x-www-form-urlencoded` body.
fn form_body(form: &[(String, String)]) -> String {
    let mut as_query = RequestParts::new("", "");
    as_query.query = form.to_vec();
    as_query.path_and_query().trim_start_matches('?').to_owned()
}

proptest! {
    #[test]
    fn signed_requests_verify(case in case()) {
        let req = sign(&case, SECRET);
        prop_assert_eq!(verify(&req), Ok(KEY.to_owned()));
    }

    #[test]
    fn signed_requests_verify_after_crossing_the_wire(case in case()) {
        let req = sign(&case, SECRET);
        let mut arrived = RequestParts::from_uri(req.method.clone(), &req.path_and_query())
            .with_form_body(form_body(&req.form).as_bytes());
        arrived.headers = req.headers.clone();
        prop_assert_eq!(&arrived.query, &req.query);
        prop_assert_eq!(&arrived.form, &req.form);
        prop_assert_eq!(verify(&arrived), Ok(KEY.to_owned()));
    }

    #[test]
    fn header_name_case_does_not_matter(case in case(), upper in prop::collection::vec(any::<bool>(), 16)) {
        let mut req = sign(&case, SECRET);
        for ((name, _), upper) in req.headers.iter_mut().zip(upper.iter().cycle()) {
            *name = if *upper { name.to_ascii_uppercase() } else { name.to_ascii_lowercase() };
        }
        prop_assert_eq!(verify(&req), Ok(KEY.to_owned()));
    }

    #[test]
    fn changed_method_fails(case in case(), suffix in "[A-Z]") {
        let mut req = sign(&case, SECRET);
        req.method.push_str(&suffix);
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_path_fails(case in case(), suffix in "[a-z0-9/]") {
        let mut req = sign(&case, SECRET);
        req.path.push_str(&suffix);
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_query_value_fails(case in case(), pick in any::<prop::sample::Index>(), suffix in "\\PC") {
        prop_assume!(!case.req.query.is_empty());
        let mut req = sign(&case, SECRET);
        let at = pick.index(req.query.len());
        req.query[at].1.push_str(&suffix);
        assert_mismatch(&req)?;
    }

    #[test]
    fn added_query_parameter_fails(case in case(), value in "\\PC{0,4}") {
        let mut req = sign(&case, SECRET);
        // `z` sorts after every generated key and is never one of them.
        req.query.push(("z".into(), value));
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_form_value_fails(case in case(), pick in any::<prop::sample::Index>(), suffix in "\\PC") {
        prop_assume!(!case.req.form.is_empty());
        let mut req = sign(&case, SECRET);
        let at = pick.index(req.form.len());
        req.form[at].1.push_str(&suffix);
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_signed_header_value_fails(case in case(), pick in any::<prop::sample::Index>(), suffix in "[!-~]") {
        prop_assume!(!case.custom.is_empty());
        let mut req = sign(&case, SECRET);
        let name = &case.custom[pick.index(case.custom.len())];
        let value = format!("{}{suffix}", req.header(name).unwrap_or_default());
        req.set_header(name, value);
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_standard_header_fails(case in case(), which in prop::sample::select(vec!["Accept", "Content-Type", "Content-MD5", "Date"]), suffix in "[!-~]") {
        let mut req = sign(&case, SECRET);
        let value = format!("{}{suffix}", req.header(which).unwrap_or_default());
        req.set_header(which, value);
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_timestamp_fails(case in case(), delta in 1..1_000u64) {
        let mut req = sign(&case, SECRET);
        req.set_header("X-Ca-Timestamp", (NOW - delta).to_string());
        assert_mismatch(&req)?;
    }

    #[test]
    fn changed_nonce_fails(case in case(), suffix in "[a-z0-9]") {
        let mut req = sign(&case, SECRET);
        req.set_header("X-Ca-Nonce", format!("{NONCE}{suffix}"));
        assert_mismatch(&req)?;
    }

    #[test]
    fn other_secret_fails(case in case(), secret in "\\PC{0,20}") {
        prop_assume!(secret != SECRET);
        let req = sign(&case, &secret);
        assert_mismatch(&req)?;
    }

    /// A valid request with one scheme header replaced by anything at all.
    #[test]
    fn verification_never_panics_on_scheme_headers(
        case in case(),
        name in prop::sample::select(vec![
            "X-Ca-Key", "X-Ca-Signature", "X-Ca-Signature-Method", "X-Ca-Signature-Headers",
            "X-Ca-Timestamp", "X-Ca-Nonce", "Accept", "Content-MD5", "Content-Type", "Date",
        ]),
        value in ".{0,200}",
        duplicate in any::<bool>(),
    ) {
        let mut req = sign(&case, SECRET);
        if duplicate {
            req.headers.push((name.into(), value));
        } else {
            req.set_header(name, value);
        }
        // Any key is "known", to reach the signature check.
        let result = Verifier::new().verify(&req, |_| Some(SECRET), NOW, &NonceCache::new(4));
        if let Err(rejection) = result {
            let _ = rejection.header_value();
            let _ = rejection.status();
        }
    }

    /// Arbitrary headers, methods, paths and targets.
    #[test]
    fn verification_never_panics_on_anything(
        method in ".{0,8}",
        target in ".{0,64}",
        headers in prop::collection::vec((
            prop_oneof![
                prop::sample::select(vec![
                    "x-ca-key", "X-CA-SIGNATURE", "x-ca-signature-method", "x-ca-signature-headers",
                    "x-ca-timestamp", "x-ca-nonce", "content-md5",
                ]).prop_map(str::to_owned),
                ".{0,12}",
            ],
            ".{0,64}",
        ), 0..12),
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<u64>(),
        skew in any::<u64>(),
    ) {
        let mut req = RequestParts::from_uri(method, &target).with_form_body(&body);
        req.headers = headers;
        let _ = signer::string_to_sign(&req);
        let _ = signer::verify_content_md5(&req, &body);
        let verifier = Verifier::new().with_max_skew_ms(skew);
        if let Err(rejection) = verifier.verify(&req, |_| Some(SECRET), now, &NonceCache::new(4)) {
            let _ = rejection.header_value();
        }
    }

    /// Header values that are not UTF-8 arrive through `http`.
    #[test]
    fn verification_never_panics_on_raw_http_headers(
        case in case(),
        raw in prop::collection::vec(
            (prop::sample::select(vec!["x-ca-nonce", "x-ca-timestamp", "x-ca-key", "accept", "x-other"]),
             prop::collection::vec(any::<u8>(), 0..32)),
            0..6,
        ),
    ) {
        let req = sign(&case, SECRET);
        let mut builder = http::Request::builder().method("GET").uri("/p?a=%FF&b");
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let Ok(request) = builder.body(()) else { return Ok(()) };
        let (mut parts, ()) = request.into_parts();
        for (name, bytes) in raw {
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                parts.headers.append(name, value);
            }
        }
        let _ = verify(&RequestParts::from_http(&parts));
    }
}
