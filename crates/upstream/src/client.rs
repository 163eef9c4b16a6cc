//! A small HTTP/1.1 client for the gateway's own calls, not for proxied traffic: webhooks
//! (`gatewayd`) and `gatewayctl call`. One request per connection, its answer read whole up to
//! a size limit. It stands apart from the rest of this crate: the proxy's backend legs are
//! pooled and streamed, these calls are neither.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Answers larger than this are refused ([`ClientError::TooLarge`]).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("'{0}' is not an http://HOST:PORT/path URL")]
    BadUrl(String),
    #[error("could not connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("the HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("the request failed: {0}")]
    Request(hyper::Error),
    #[error("reading the answer failed: {0}")]
    Body(crate::BoxError),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("could not resolve {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    #[error("not sent to {authority}: it resolves to {addr}, which is {range}")]
    Refused {
        authority: String,
        addr: IpAddr,
        range: &'static str,
    },
}

/// Names the range an address must not be called in, or `None` to allow it (for example
/// `model::validate::private_range`).
pub type AddressCheck = fn(IpAddr) -> Option<&'static str>;

/// Sends `req` over `io`, a fresh connection (plain or TLS), and reads the whole answer.
pub async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<Answer, ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ClientError::Handshake)?;
    // The connection task ends when the answer has been read and `tx` dropped.
    tokio::spawn(conn);
    let response = tx.send_request(req).await.map_err(ClientError::Request)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(ClientError::Body)?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends `req` to the `http://` URL it names (its URI is sent in origin form, with a `Host`
/// header) and reads the whole answer, all within `timeout`.
pub async fn send(req: Request<Full<Bytes>>, timeout: Duration) -> Result<Answer, ClientError> {
    send_checked(req, timeout, None).await
}

/// Like [`send`], and when `check` is given, refuses unless every address the host resolves
/// to passes it. The connection goes to an address that was checked, never to a second
/// lookup's answer, so a name that resolves differently the next time (DNS rebinding)
/// cannot slip past the check.
pub async fn send_checked(
    mut req: Request<Full<Bytes>>,
    timeout: Duration,
    check: Option<AddressCheck>,
) -> Result<Answer, ClientError> {
    let url = req.uri().to_string();
    let bad = || ClientError::BadUrl(url.clone());
    if req.uri().scheme_str() != Some("http") {
        return Err(bad());
    }
    let authority = req.uri().authority().cloned().ok_or_else(bad)?;
    let port = authority.port_u16().unwrap_or(80);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|_| bad())?;
    *req.uri_mut() = path;
    let host = http::HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
    req.headers_mut().insert(http::header::HOST, host);
    let call = async {
        let addrs = resolve(authority.as_str(), authority.host(), port, check).await?;
        let mut last = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => return exchange(stream, req).await,
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::Connect {
            authority: authority.to_string(),
            source: last.unwrap_or_else(|| std::io::Error::other("no address")),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// The addresses `host` (a name, or an IP literal, IPv6 in brackets or not) resolves to, each
/// passing `check` when one is given.
pub async fn resolve(
    authority: &str,
    host: &str,
    port: u16,
    check: Option<AddressCheck>,
) -> Result<Vec<SocketAddr>, ClientError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ClientError::Resolve {
            authority: authority.to_string(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            authority: authority.to_string(),
            source: std::io::Error::other("no addresses"),
        });
    }
    if let Some(check) = check {
        // All or nothing: a name with one private address among public ones is refused.
        for a in &addrs {
            if let Some(range) = check(a.ip()) {
                return Err(ClientError::Refused {
                    authority: authority.to_string(),
                    addr: a.ip(),
                    range,
                });
            }
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server: reads a request head, answers `answer`, returns what it read.
    async fn one_shot(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0u8; 1024];
            while !read.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its head was complete");
                read.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            String::from_utf8_lossy(&read).into_owned()
        });
        (url, server)
    }

    #[tokio::test]
    async fn posts_in_origin_form_with_a_host_and_reads_the_answer() {
        let (url, server) =
            one_shot(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok").await;
        let req = Request::post(url.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(req, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_eq!(answer.headers["x-a"], "b");
        assert_eq!(&answer.body[..], b"ok");
        let head = server.await.unwrap();
        assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
        let host = url.trim_start_matches("http://").split('/').next().unwrap();
        assert!(
            head.to_ascii_lowercase().contains(&format!("host: {host}")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn refuses_addresses_the_check_refuses_after_resolving_names() {
        let (url, _server) = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
        let no_loopback: AddressCheck = |ip| ip.is_loopback().then_some("loopback");
        for url in [url.clone(), format!("http://localhost:{port}/hook")] {
            let req = Request::post(url.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let err = send_checked(req, Duration::from_secs(5), Some(no_loopback))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ClientError::Refused {
                        range: "loopback",
                        ..
                    }
                ),
                "{url}: {err}"
            );
        }
        // Without a check the same URL is called.
        let req = Request::post(url.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send_checked(req, Duration::from_secs(5), None)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_call() {
        for url in ["https://127.0.0.1:1/", "/relative"] {
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            let err = send(req, Duration::from_secs(1)).await.unwrap_err();
            assert!(matches!(err, ClientError::BadUrl(_)), "{url}: {err}");
        }
    }
}
