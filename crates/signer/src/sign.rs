//! Client side: adding the `X-Ca-*` headers and the signature to a request.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::header;
use crate::request::{RequestParts, string_to_sign};

/// The only signature method supported, the value of `X-Ca-Signature-Method`.
pub const HMAC_SHA256: &str = "HmacSHA256";

/// The `X-Ca-*` headers every signature covers, in the order they appear in the string to sign.
const ALWAYS_SIGNED: [&str; 4] = [
    header::CA_KEY,
    header::CA_NONCE,
    header::CA_SIGNATURE_METHOD,
    header::CA_TIMESTAMP,
];

/// Signs requests with one AppKey and AppSecret.
///
/// [`Signer::sign`] sets `X-Ca-Key`, `X-Ca-Timestamp`, `X-Ca-Nonce`, `X-Ca-Signature-Method`,
/// `X-Ca-Signature-Headers` and `X-Ca-Signature`, replacing any already there. The signature
/// always covers the four `X-Ca-Key`, `X-Ca-Nonce`, `X-Ca-Signature-Method` and `X-Ca-Timestamp`
/// headers, plus those named with [`Signer::sign_header`] that the request carries, plus (as
/// the scheme always does) `Accept`, `Content-MD5`, `Content-Type`, `Date`, the method, the path
/// and the query and form parameters.
///
/// Its `Debug` output leaves the secret out.
#[derive(Clone)]
pub struct Signer {
    app_key: String,
    app_secret: String,
    extra_signed: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("app_key", &self.app_key)
            .field("app_secret", &"<redacted>")
            .field("extra_signed", &self.extra_signed)
            .finish()
    }
}

impl Signer {
    /// A signer for the given AppKey and AppSecret.
    pub fn new(app_key: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            app_key: app_key.into(),
            app_secret: app_secret.into(),
            extra_signed: Vec::new(),
        }
    }

    /// Also signs the named header whenever a request carries it.
    pub fn sign_header(mut self, name: &str) -> Self {
        let name = name.trim().to_ascii_lowercase();
        if !self.extra_signed.contains(&name) {
            self.extra_signed.push(name);
        }
        self
    }

    /// The AppKey.
    pub fn app_key(&self) -> &str {
        &self.app_key
    }

    /// Adds the `X-Ca-*` headers to `req` and signs it, with the time in milliseconds since the
    /// Unix epoch and a nonce that is never reused (a UUID, say). Any header the signature
    /// covers must not change afterwards.
    pub fn sign(&self, req: &mut RequestParts, now_ms: u64, nonce: &str) {
        req.set_header(header::CA_KEY, self.app_key.as_str());
        req.set_header(header::CA_TIMESTAMP, now_ms.to_string());
        req.set_header(header::CA_NONCE, nonce);
        req.set_header(header::CA_SIGNATURE_METHOD, HMAC_SHA256);
        req.remove_header(header::CA_SIGNATURE);
        let mut names: Vec<&str> = ALWAYS_SIGNED.to_vec();
        names.extend(
            self.extra_signed
                .iter()
                .map(String::as_str)
                .filter(|name| req.header_count(name) > 0),
        );
        names.sort_unstable();
        names.dedup();
        req.set_header(header::CA_SIGNATURE_HEADERS, names.join(","));
        let signature = signature(self.app_secret.as_bytes(), &string_to_sign(req));
        req.set_header(header::CA_SIGNATURE, signature);
    }

    /// Signs an [`http`] request in place: reads it as [`RequestParts::from_http`] does, with
    /// the decoded parameters of its `application/x-www-form-urlencoded` body (if any) in
    /// `form`, and sets the same headers as [`Signer::sign`]. Fails, changing nothing, if the
    /// AppKey or the nonce cannot be a header value (a control character, say).
    pub fn sign_http(
        &self,
        parts: &mut http::request::Parts,
        form: &[(String, String)],
        now_ms: u64,
        nonce: &str,
    ) -> Result<(), http::header::InvalidHeaderValue> {
        let mut req = RequestParts::from_http(parts);
        req.form = form.to_vec();
        self.sign(&mut req, now_ms, nonce);
        let mut values = Vec::with_capacity(6);
        for name in [
            header::CA_KEY,
            header::CA_TIMESTAMP,
            header::CA_NONCE,
            header::CA_SIGNATURE_METHOD,
            header::CA_SIGNATURE_HEADERS,
            header::CA_SIGNATURE,
        ] {
            let value = req.header(name).unwrap_or_default();
            values.push((name, http::HeaderValue::from_str(value)?));
        }
        for (name, value) in values {
            parts
                .headers
                .insert(http::HeaderName::from_static(name), value);
        }
        Ok(())
    }
}

/// The signature of a string to sign: base64 of its HMAC-SHA256 under the secret.
pub fn signature(secret: &[u8], string_to_sign: &str) -> String {
    BASE64.encode(mac(secret, string_to_sign).finalize().into_bytes())
}

/// The HMAC-SHA256 state over a string to sign, for verification in constant time.
pub(crate) fn mac(secret: &[u8], string_to_sign: &str) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts a key of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// The `Content-MD5` header value for a body: base64 of its MD5 digest. The scheme signs the
/// header, not the body; a client that wants the body covered sets this header (for a body
/// that is not a form) and the server checks it with [`crate::verify_content_md5`].
pub fn content_md5(body: &[u8]) -> String {
    BASE64.encode(Md5::digest(body))
}
