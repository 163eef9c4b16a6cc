//! Server side: checking a signed request.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::Mac as _;
use http::StatusCode;

use crate::MAX_SKEW_MS;
use crate::header;
use crate::nonce::{NonceCache, NonceStatus};
use crate::request::{RequestParts, signed_header_names, string_to_sign};
use crate::sign::{HMAC_SHA256, content_md5, mac};

/// The longest nonce accepted, in bytes. A UUID has 36; the bound keeps the replay cache small.
pub const MAX_NONCE_LEN: usize = 128;

/// The longest `X-Ca-Error-Message` value [`Rejection::header_value`] produces, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;

/// Why a request was refused.
///
/// [`Rejection::status`] gives the HTTP status and [`Rejection::header_value`] the value for the
/// `X-Ca-Error-Message` response header. The statuses:
///
/// | status | rejections | meaning |
/// | --- | --- | --- |
/// | 400 Bad Request | [`UnsupportedSignatureMethod`], [`MissingTimestamp`], [`MalformedTimestamp`], [`MissingNonce`], [`MalformedNonce`], [`DuplicateHeader`], [`SignedHeaderMissing`], [`ReplayHeadersNotSigned`], [`ContentMd5Mismatch`] | the request is not a well-formed signed request; the client must change how it builds requests |
/// | 401 Unauthorized | [`MissingAppKey`], [`MissingSignature`], [`UnknownAppKey`], [`SignatureMismatch`] | the credentials are missing or wrong: who sent the request is not established |
/// | 403 Forbidden | [`TimestampExpired`], [`TimestampInFuture`], [`ReplayedNonce`] | the signature is valid, but this request may not be accepted again or at this time |
/// | 429 Too Many Requests | [`NonceCacheFull`] | the replay cache is full; retry later |
///
/// The cloud answers 400 to most of these (its "Invalid Signature" included); this split tells
/// a client whose keys are wrong (401) from one replaying or with a bad clock (403). A 403 is
/// only given once the signature has checked out, so it never reveals anything to a caller
/// without the secret.
///
/// [`UnsupportedSignatureMethod`]: Rejection::UnsupportedSignatureMethod
/// [`MissingTimestamp`]: Rejection::MissingTimestamp
/// [`MalformedTimestamp`]: Rejection::MalformedTimestamp
/// [`MissingNonce`]: Rejection::MissingNonce
/// [`MalformedNonce`]: Rejection::MalformedNonce
/// [`DuplicateHeader`]: Rejection::DuplicateHeader
/// [`SignedHeaderMissing`]: Rejection::SignedHeaderMissing
/// [`ReplayHeadersNotSigned`]: Rejection::ReplayHeadersNotSigned
/// [`ContentMd5Mismatch`]: Rejection::ContentMd5Mismatch
/// [`MissingAppKey`]: Rejection::MissingAppKey
/// [`MissingSignature`]: Rejection::MissingSignature
/// [`UnknownAppKey`]: Rejection::UnknownAppKey
/// [`SignatureMismatch`]: Rejection::SignatureMismatch
/// [`TimestampExpired`]: Rejection::TimestampExpired
/// [`TimestampInFuture`]: Rejection::TimestampInFuture
/// [`ReplayedNonce`]: Rejection::ReplayedNonce
/// [`NonceCacheFull`]: Rejection::NonceCacheFull
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No `X-Ca-Key`, or an empty one.
    #[error("Empty AppKey: the X-Ca-Key header is missing")]
    MissingAppKey,
    /// No `X-Ca-Signature`, or an empty one.
    #[error("Empty Signature: the X-Ca-Signature header is missing")]
    MissingSignature,
    /// `X-Ca-Signature-Method` names another method than `HmacSHA256`.
    #[error("Unsupported Signature Method: `{0}`, only HmacSHA256 is supported")]
    UnsupportedSignatureMethod(String),
    /// No `X-Ca-Timestamp`.
    #[error("Invalid Timestamp: the X-Ca-Timestamp header is missing")]
    MissingTimestamp,
    /// `X-Ca-Timestamp` is not a whole number of milliseconds.
    #[error("Invalid Timestamp: `{0}` is not a number of milliseconds since the Unix epoch")]
    MalformedTimestamp(String),
    /// No `X-Ca-Nonce`, or an empty one.
    #[error("Invalid Nonce: the X-Ca-Nonce header is missing")]
    MissingNonce,
    /// `X-Ca-Nonce` is longer than [`MAX_NONCE_LEN`] bytes.
    #[error("Invalid Nonce: X-Ca-Nonce is longer than {MAX_NONCE_LEN} bytes")]
    MalformedNonce,
    /// One of the `X-Ca-*` headers the scheme reads appears more than once.
    #[error("Duplicate Header: `{0}` appears more than once")]
    DuplicateHeader(&'static str),
    /// A header named in `X-Ca-Signature-Headers` is not in the request.
    #[error("Invalid Signature Headers: `{0}` is listed in X-Ca-Signature-Headers but missing")]
    SignedHeaderMissing(String),
    /// `X-Ca-Signature-Headers` leaves out `x-ca-timestamp` or `x-ca-nonce`, so a captured
    /// request could be replayed with new ones.
    #[error(
        "Invalid Signature Headers: x-ca-timestamp and x-ca-nonce must be listed in X-Ca-Signature-Headers"
    )]
    ReplayHeadersNotSigned,
    /// No secret is known for the AppKey.
    #[error("Invalid AppKey: `{0}` is not known")]
    UnknownAppKey(String),
    /// The signature is not the server's. Carries the server's string to sign so the client can
    /// compare it with its own; the message shows each `\n` as `#`, as the cloud does.
    #[error("Invalid Signature, Server StringToSign:`{}`", string_to_sign.replace('\n', "#"))]
    SignatureMismatch {
        /// The string the server signed.
        string_to_sign: String,
    },
    /// `X-Ca-Timestamp` is older than the allowed skew.
    #[error(
        "Timestamp Expired: X-Ca-Timestamp {timestamp_ms} is more than {max_skew_ms} ms before the server time {now_ms}"
    )]
    TimestampExpired {
        /// The request's timestamp.
        timestamp_ms: u64,
        /// The server's time.
        now_ms: u64,
        /// The allowed skew.
        max_skew_ms: u64,
    },
    /// `X-Ca-Timestamp` is further ahead than the allowed skew.
    #[error(
        "Invalid Timestamp: X-Ca-Timestamp {timestamp_ms} is more than {max_skew_ms} ms after the server time {now_ms}"
    )]
    TimestampInFuture {
        /// The request's timestamp.
        timestamp_ms: u64,
        /// The server's time.
        now_ms: u64,
        /// The allowed skew.
        max_skew_ms: u64,
    },
    /// The nonce was already used with this AppKey within the window.
    #[error("Nonce Used: X-Ca-Nonce `{0}` was already used")]
    ReplayedNonce(String),
    /// The replay cache has no room for the nonce.
    #[error("Too Many Requests: the replay protection cache is full, retry later")]
    NonceCacheFull,
    /// `Content-MD5` does not match the body.
    #[error("Invalid Content-MD5: the header says `{header}` but the body's is `{body}`")]
    ContentMd5Mismatch {
        /// The request's `Content-MD5`.
        header: String,
        /// The body's.
        body: String,
    },
}

impl Rejection {
    /// The HTTP status to answer with (see the table on [`Rejection`]).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedSignatureMethod(_)
            | Self::MissingTimestamp
            | Self::MalformedTimestamp(_)
            | Self::MissingNonce
            | Self::MalformedNonce
            | Self::DuplicateHeader(_)
            | Self::SignedHeaderMissing(_)
            | Self::ReplayHeadersNotSigned
            | Self::ContentMd5Mismatch { .. } => StatusCode::BAD_REQUEST,
            Self::MissingAppKey
            | Self::MissingSignature
            | Self::UnknownAppKey(_)
            | Self::SignatureMismatch { .. } => StatusCode::UNAUTHORIZED,
            Self::TimestampExpired { .. }
            | Self::TimestampInFuture { .. }
            | Self::ReplayedNonce(_) => StatusCode::FORBIDDEN,
            Self::NonceCacheFull => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The message for the `X-Ca-Error-Message` response header, as text.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The message as a valid header value: `\n` shown as `#`, other control characters as `?`,
    /// cut to at most [`MAX_ERROR_MESSAGE_LEN`] bytes (ending in `...` when cut).
    pub fn header_value(&self) -> http::HeaderValue {
        let message: String = self
            .message()
            .chars()
            .map(|c| match c {
                '\n' => '#',
                '\t' => '\t',
                c if c.is_control() => '?',
                c => c,
            })
            .collect();
        let message = if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN - 3;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &message[..end])
        } else {
            message
        };
        // Every byte is now a tab, visible ASCII, a space or part of a non-ASCII character, all of
        // which a header value may hold.
        http::HeaderValue::from_str(&message)
            .or_else(|_| http::HeaderValue::from_bytes(message.as_bytes()))
            .unwrap_or_else(|_| http::HeaderValue::from_static("Invalid Request"))
    }
}

/// Checks signed requests.
///
/// [`Verifier::verify`] checks, in order (the first failure is returned):
///
/// 1. `X-Ca-Key`, `X-Ca-Signature`, `X-Ca-Signature-Method`, `X-Ca-Timestamp` and
///    `X-Ca-Nonce` appear at most once each, and the first two are present;
/// 2. `X-Ca-Signature-Method`, if present, is `HmacSHA256` (ASCII case ignored);
/// 3. `X-Ca-Timestamp` is present and a number; `X-Ca-Nonce` is present and at most
///    [`MAX_NONCE_LEN`] bytes;
/// 4. every header named in `X-Ca-Signature-Headers` is present, and (unless
///    [`Verifier::allow_unsigned_replay_headers`]) the list names `x-ca-timestamp` and
///    `x-ca-nonce`;
/// 5. the AppKey has a secret;
/// 6. the signature matches, compared in constant time;
/// 7. the timestamp is within the skew (15 minutes by default, inclusive) of the server time;
/// 8. the nonce has not been used with this AppKey: it is then remembered until the timestamp
///    leaves the window.
///
/// The nonce is only recorded once everything else passed, so requests without the secret
/// cannot fill the replay cache or burn other clients' nonces.
#[derive(Debug, Clone)]
pub struct Verifier {
    max_skew_ms: u64,
    require_signed_replay_headers: bool,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            max_skew_ms: MAX_SKEW_MS,
            require_signed_replay_headers: true,
        }
    }
}

impl Verifier {
    /// A verifier allowing 15 minutes of skew either way.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the allowed skew between the request's timestamp and the server's time.
    pub fn with_max_skew_ms(mut self, max_skew_ms: u64) -> Self {
        self.max_skew_ms = max_skew_ms;
        self
    }

    /// Accepts signatures that do not cover `X-Ca-Timestamp` and `X-Ca-Nonce` (clients of the
    /// cloud's SDKs always sign them). Such a request can be replayed with a fresh timestamp and
    /// nonce by whoever captures it: only for compatibility with hand-written clients.
    pub fn allow_unsigned_replay_headers(mut self) -> Self {
        self.require_signed_replay_headers = false;
        self
    }

    /// The allowed skew in milliseconds.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// Checks a signed request and returns its AppKey. `secret_of` looks up the AppSecret of an
    /// AppKey; `now_ms` is the server's time in milliseconds since the Unix epoch; `nonces`
    /// remembers the nonces seen (share one cache between every verifier of a server).
    pub fn verify<F, S>(
        &self,
        req: &RequestParts,
        secret_of: F,
        now_ms: u64,
        nonces: &NonceCache,
    ) -> Result<String, Rejection>
    where
        F: FnOnce(&str) -> Option<S>,
        S: AsRef<[u8]>,
    {
        for name in [
            header::CA_KEY,
            header::CA_SIGNATURE,
            header::CA_SIGNATURE_METHOD,
            header::CA_TIMESTAMP,
            header::CA_NONCE,
        ] {
            if req.header_count(name) > 1 {
                return Err(Rejection::DuplicateHeader(name));
            }
        }
        let app_key = non_empty(req, header::CA_KEY).ok_or(Rejection::MissingAppKey)?;
        let signature = non_empty(req, header::CA_SIGNATURE).ok_or(Rejection::MissingSignature)?;
        if let Some(method) = req.header_value(header::CA_SIGNATURE_METHOD)
            && !method.eq_ignore_ascii_case(HMAC_SHA256)
        {
            return Err(Rejection::UnsupportedSignatureMethod(method));
        }
        let timestamp = req
            .header_value(header::CA_TIMESTAMP)
            .ok_or(Rejection::MissingTimestamp)?;
        let timestamp_ms =
            parse_millis(&timestamp).ok_or(Rejection::MalformedTimestamp(timestamp))?;
        let nonce = non_empty(req, header::CA_NONCE).ok_or(Rejection::MissingNonce)?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(Rejection::MalformedNonce);
        }

        let signed = signed_header_names(req);
        if let Some(missing) = signed.iter().find(|name| req.header_count(name) == 0) {
            return Err(Rejection::SignedHeaderMissing(missing.clone()));
        }
        if self.require_signed_replay_headers
            && !(signed.iter().any(|name| name == header::CA_TIMESTAMP)
                && signed.iter().any(|name| name == header::CA_NONCE))
        {
            return Err(Rejection::ReplayHeadersNotSigned);
        }

        let secret =
            secret_of(&app_key).ok_or_else(|| Rejection::UnknownAppKey(app_key.clone()))?;
        let string_to_sign = string_to_sign(req);
        let matches = BASE64.decode(signature.as_bytes()).is_ok_and(|claimed| {
            mac(secret.as_ref(), &string_to_sign)
                .verify_slice(&claimed)
                .is_ok()
        });
        if !matches {
            return Err(Rejection::SignatureMismatch { string_to_sign });
        }

        if timestamp_ms < now_ms.saturating_sub(self.max_skew_ms) {
            return Err(Rejection::TimestampExpired {
                timestamp_ms,
                now_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        if timestamp_ms > now_ms.saturating_add(self.max_skew_ms) {
            return Err(Rejection::TimestampInFuture {
                timestamp_ms,
                now_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        // After `timestamp + skew` the timestamp check alone refuses a replay.
        let forget_at = timestamp_ms.saturating_add(self.max_skew_ms);
        match nonces.insert_until(&app_key, &nonce, now_ms, forget_at) {
            NonceStatus::Fresh => Ok(app_key),
            NonceStatus::Replayed => Err(Rejection::ReplayedNonce(nonce)),
            NonceStatus::Full => Err(Rejection::NonceCacheFull),
        }
    }
}

/// Checks a request's `Content-MD5`, if it has one, against its body. The signature covers the
/// header, so after [`Verifier::verify`] this makes it cover the body too.
pub fn verify_content_md5(req: &RequestParts, body: &[u8]) -> Result<(), Rejection> {
    match req.header_value("content-md5") {
        Some(header) => {
            let body = content_md5(body);
            if header == body {
                Ok(())
            } else {
                Err(Rejection::ContentMd5Mismatch { header, body })
            }
        }
        None => Ok(()),
    }
}

fn non_empty(req: &RequestParts, name: &str) -> Option<String> {
    req.header_value(name).filter(|value| !value.is_empty())
}

/// Milliseconds as ASCII digits only (no sign, no spaces), fitting in a `u64`.
fn parse_millis(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_parsing() {
        assert_eq!(parse_millis("1525872629832"), Some(1_525_872_629_832));
        assert_eq!(parse_millis("0"), Some(0));
        for bad in [
            "",
            "+1",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_value_is_sanitised_and_bounded() {
        let rejection = Rejection::SignatureMismatch {
            string_to_sign: "GET\n\u{7}\r中\n".repeat(2_000),
        };
        let value = rejection.header_value();
        assert!(value.len() <= MAX_ERROR_MESSAGE_LEN);
        let text = String::from_utf8(value.as_bytes().to_vec()).unwrap();
        assert!(text.starts_with("Invalid Signature, Server StringToSign:`GET#??中#GET"));
        assert!(text.ends_with("..."));
    }
}
