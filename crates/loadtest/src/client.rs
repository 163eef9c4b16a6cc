//! One keep-alive HTTP/1.1 connection per worker, over a plain tokio `TcpStream`.

use crate::config::ParsedUrl;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
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

/// A worker's connection; reconnects lazily after an error.
pub(crate) struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, ()> {
    let stream = TcpStream::connect(addr).await.map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Conn {
    pub(crate) fn new() -> Conn {
        Conn { sender: None }
    }

    /// Opens the connection ahead of the run; failure is not an error here (the first
    /// request retries and counts it).
    pub(crate) async fn warm_up(&mut self, ep: &Endpoint, timeout: Duration) -> bool {
        if let Ok(Ok(s)) = tokio::time::timeout(timeout, connect(ep.addr)).await {
            self.sender = Some(s);
            true
        } else {
            false
        }
    }

    /// Sends one request and reads the whole response. Returns the instant the request was
    /// handed to the connection (after any reconnect), the outcome, and when it completed.
    pub(crate) async fn send(&mut self, ep: &Endpoint, timeout: Duration) -> (Instant, Outcome) {
        let start = Instant::now();
        let deadline = start + timeout;
        // A connection the server closed cleanly (e.g. `Connection: close`) is replaced
        // without counting an error; the request has not been sent on it.
        if let Some(s) = &mut self.sender
            && (s.is_closed()
                || !matches!(
                    tokio::time::timeout_at(deadline, s.ready()).await,
                    Ok(Ok(()))
                ))
        {
            self.sender = None;
        }
        if self.sender.is_none() {
            match tokio::time::timeout_at(deadline, connect(ep.addr)).await {
                Ok(Ok(s)) => self.sender = Some(s),
                Ok(Err(())) => return (start, Outcome::ConnError),
                Err(_) => return (start, Outcome::Timeout),
            }
        }
        let Some(sender) = &mut self.sender else {
            return (start, Outcome::ConnError);
        };
        let sent = Instant::now();
        let fut = async {
            let resp = sender.send_request(ep.request()).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        };
        let outcome = match tokio::time::timeout_at(sent + timeout, fut).await {
            Ok(Ok(status)) => return (sent, Outcome::Status(status)),
            Ok(Err(_)) => Outcome::ConnError,
            Err(_) => Outcome::Timeout,
        };
        // After an error or a timeout the connection's state is unknown: start afresh.
        self.sender = None;
        (sent, outcome)
    }
}
