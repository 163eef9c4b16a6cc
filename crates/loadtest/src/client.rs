//! One keep-alive HTTP/1.1 connection per worker, over a plain tokio `TcpStream`.

use crate::config::ParsedUrl;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// No complete response within the timeout.
    Timeout,
    /// Connecting, writing or reading failed.
    ConnError,
}

/// Everything needed to send requests to one target.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Endpoint {
    pub(crate) fn new(
        addr: SocketAddr,
        url: &ParsedUrl,
        method: Method,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .path_and_query
            .parse()
            .map_err(|e| format!("bad path '{}': {e}", url.path_and_query))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&url.host_header()).map_err(|e| format!("bad host: {e}"))?,
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("loadtest/", env!("CARGO_PKG_VERSION"))),
        );
        if !body.is_empty() || method == Method::POST || method == Method::PUT {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        for (k, v) in extra {
            headers.insert(k.clone(), v.clone());
        }
        Ok(Endpoint {
            addr,
            method,
            uri,
            headers,
            body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// The connection's driver: polled by the worker itself while a request is in flight (no
/// separate task, so no cross-task wake-up per request).
type Driver = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

struct Live {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
}

/// A worker's connection; reconnects lazily after an error.
pub(crate) struct Conn {
    live: Option<Live>,
}

async fn connect(addr: SocketAddr) -> Result<Live, ()> {
    let stream = TcpStream::connect(addr).await.map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (sender, driver) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    Ok(Live {
        sender,
        driver: Box::pin(driver),
    })
}

/// Polls the driver once without waiting: whether the connection has ended (e.g. the server
/// closed it while it was idle).
async fn has_ended(driver: &mut Driver) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(driver.as_mut().poll(cx).is_ready())).await
}

impl Conn {
    pub(crate) fn new() -> Conn {
        Conn { live: None }
    }

    /// Opens the connection ahead of the run; failure is not an error here (the first
    /// request retries and counts it).
    pub(crate) async fn warm_up(&mut self, ep: &Endpoint, timeout: Duration) -> bool {
        if let Ok(Ok(l)) = tokio::time::timeout(timeout, connect(ep.addr)).await {
            self.live = Some(l);
            true
        } else {
            false
        }
    }

    /// Sends one request and reads the whole response. Returns the instant the request was
    /// handed to the connection (after any reconnect) and the outcome.
    pub(crate) async fn send(&mut self, ep: &Endpoint, timeout: Duration) -> (Instant, Outcome) {
        let start = Instant::now();
        // A connection the server closed while idle (e.g. after `Connection: close`) is
        // replaced without counting an error: no request was sent on it.
        if let Some(l) = &mut self.live
            && (l.sender.is_closed() || has_ended(&mut l.driver).await)
        {
            self.live = None;
        }
        let live = match &mut self.live {
            Some(l) => l,
            None => match tokio::time::timeout_at(start + timeout, connect(ep.addr)).await {
                Ok(Ok(l)) => self.live.insert(l),
                Ok(Err(())) => return (start, Outcome::ConnError),
                Err(_) => return (start, Outcome::Timeout),
            },
        };
        let Live { sender, driver } = live;
        let sent = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(ep.request()).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        };
        let mut ended = false;
        let raced = async {
            tokio::pin!(exchange);
            tokio::select! {
                biased;
                r = &mut exchange => r,
                _ = driver.as_mut() => {
                    // The connection is done; what it delivered before closing is buffered,
                    // so the exchange finishes now, one way or the other.
                    ended = true;
                    (&mut exchange).await
                }
            }
        };
        let outcome = match tokio::time::timeout_at(sent + timeout, raced).await {
            Ok(Ok(status)) => Outcome::Status(status),
            Ok(Err(_)) => Outcome::ConnError,
            Err(_) => Outcome::Timeout,
        };
        // After an error, a timeout or a close the connection is not reused.
        if ended || !matches!(outcome, Outcome::Status(_)) {
            self.live = None;
        }
        (sent, outcome)
    }
}
