//! The APP request signature scheme (`X-Ca-Signature`, HMAC-SHA256), modelled on Alibaba Cloud
//! API Gateway: signing on the client, verification on the server.
//!
//! A client holds an AppKey and an AppSecret. It signs each request by adding headers:
//!
//! | header | value |
//! | --- | --- |
//! | `X-Ca-Key` | the AppKey |
//! | `X-Ca-Timestamp` | the time, in milliseconds since the Unix epoch; accepted within 15 minutes of the server's clock |
//! | `X-Ca-Nonce` | a value never used twice (a UUID); the same nonce is refused within the window |
//! | `X-Ca-Signature-Method` | `HmacSHA256` |
//! | `X-Ca-Signature-Headers` | the lower-case names of the headers signed, comma-separated: `x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp` |
//! | `X-Ca-Signature` | base64 of HMAC-SHA256, keyed with the AppSecret, of the string to sign |
//!
//! The string to sign ([`string_to_sign`]) is
//!
//! ```text
//! HTTPMethod + "\n"
//! + Accept + "\n"          (the header's value, or empty)
//! + Content-MD5 + "\n"     (likewise)
//! + Content-Type + "\n"    (likewise)
//! + Date + "\n"            (likewise)
//! + Headers                "name:value\n" for each name in X-Ca-Signature-Headers, sorted
//! + PathAndParameters      path, then "?" and the query and form parameters sorted by key,
//!                          "k=v" (just "k" when the value is empty) joined with "&"
//! ```
//!
//! Details, where the cloud's documentation leaves room:
//!
//! - Header names are matched without regard to case and written in lower case. A header value
//!   is trimmed of surrounding spaces and tabs; a header sent more than once has its values
//!   joined with `,`. `X-Ca-Signature` and `X-Ca-Signature-Headers` are never signed.
//! - Parameters are signed decoded (`a b`, not `a%20b`) and not escaped in the string to sign.
//!   Parameters of an `application/x-www-form-urlencoded` body are merged with the query's. When
//!   a key appears more than once only its first value is signed (query before form), as the
//!   cloud does: a server must then read only the first value of a repeated parameter, or
//!   refuse such requests, since later values are not protected.
//! - The path is signed as it appears in the request line, percent-escapes and all.
//! - The body is not signed; `Content-MD5` is ([`content_md5`], [`verify_content_md5`]).
//!
//! # Example
//!
//! ```
//! use signer::{NonceCache, Rejection, RequestParts, Signer, Verifier};
//!
//! // Client: build the request and sign it.
//! let signer = Signer::new("203753125", "the-app-secret");
//! let mut req = RequestParts::new("POST", "/v1/orders")
//!     .with_query("region", "cn-hangzhou")
//!     .with_header("Accept", "application/json")
//!     .with_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
//!     .with_form("item", "book");
//! let now_ms = 1_700_000_000_000;
//! signer.sign(&mut req, now_ms, "0d3d3d3a-5b4c-4f64-9e3a-0c6e4c2a1f00");
//! assert_eq!(
//!     req.header("X-Ca-Signature-Headers"),
//!     Some("x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp"),
//! );
//! assert_eq!(
//!     signer::string_to_sign(&req),
//!     "POST\n\
//!      application/json\n\
//!      \n\
//!      application/x-www-form-urlencoded; charset=utf-8\n\
//!      \n\
//!      x-ca-key:203753125\n\
//!      x-ca-nonce:0d3d3d3a-5b4c-4f64-9e3a-0c6e4c2a1f00\n\
//!      x-ca-signature-method:HmacSHA256\n\
//!      x-ca-timestamp:1700000000000\n\
//!      /v1/orders?item=book&region=cn-hangzhou",
//! );
//! // Send `req.path_and_query()` with `req.headers` and the form body `item=book`.
//!
//! // Server: rebuild the parts from what arrived, then verify.
//! let mut arrived = RequestParts::from_uri("POST", &req.path_and_query()).with_form_body(b"item=book");
//! arrived.headers = req.headers.clone();
//! let secret_of = |app_key: &str| (app_key == "203753125").then_some("the-app-secret");
//! let nonces = NonceCache::default();
//! let verifier = Verifier::new();
//! assert_eq!(verifier.verify(&arrived, secret_of, now_ms + 1_000, &nonces).as_deref(), Ok("203753125"));
//!
//! // The same request again is a replay.
//! let replay = verifier.verify(&arrived, secret_of, now_ms + 2_000, &nonces).unwrap_err();
//! assert!(matches!(replay, Rejection::ReplayedNonce(_)));
//! assert_eq!(replay.status(), http::StatusCode::FORBIDDEN);
//!
//! // A tampered request fails, and the message shows the server's string to sign.
//! let mut tampered = arrived.clone();
//! tampered.query[0].1 = "us-west-1".into();
//! let rejection = verifier.verify(&tampered, secret_of, now_ms, &nonces).unwrap_err();
//! assert_eq!(rejection.status(), http::StatusCode::UNAUTHORIZED);
//! assert!(rejection.message().ends_with("x-ca-timestamp:1700000000000#/v1/orders?item=book&region=us-west-1`"));
//! ```
//!
//! With the [`http`] crate, [`Signer::sign_http`] signs a `http::request::Parts` in place and
//! [`RequestParts::from_http`] reads one for [`Verifier::verify`]. On refusal, answer with
//! [`Rejection::status`] and put [`Rejection::header_value`] in the [`ERROR_MESSAGE_HEADER`]
//! response header.

mod nonce;
mod request;
mod sign;
mod verify;

pub use nonce::{NonceCache, NonceStatus};
pub use request::{RequestParts, parse_urlencoded, signed_header_names, string_to_sign};
pub use sign::{HMAC_SHA256, Signer, content_md5, signature};
pub use verify::{MAX_ERROR_MESSAGE_LEN, MAX_NONCE_LEN, Rejection, Verifier, verify_content_md5};

/// The default allowed skew between a request's timestamp and the server's clock: 15 minutes.
pub const MAX_SKEW_MS: u64 = 15 * 60 * 1000;

/// The response header that carries a [`Rejection`]'s message.
pub const ERROR_MESSAGE_HEADER: &str = "x-ca-error-message";

/// The names of the scheme's headers, in lower case.
pub mod header {
    /// The AppKey.
    pub const CA_KEY: &str = "x-ca-key";
    /// The signature, base64.
    pub const CA_SIGNATURE: &str = "x-ca-signature";
    /// The signature method, `HmacSHA256`.
    pub const CA_SIGNATURE_METHOD: &str = "x-ca-signature-method";
    /// The names of the signed headers, comma-separated.
    pub const CA_SIGNATURE_HEADERS: &str = "x-ca-signature-headers";
    /// The client's time in milliseconds since the Unix epoch.
    pub const CA_TIMESTAMP: &str = "x-ca-timestamp";
    /// A value used once.
    pub const CA_NONCE: &str = "x-ca-nonce";
}
