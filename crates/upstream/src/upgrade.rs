//! HTTP/1.1 upgrades (RFC 9110 7.8): WebSocket, and any other protocol a client names in
//! `Upgrade`.
//!
//! `Connection` and `Upgrade` are hop-by-hop: on an ordinary request they stay on the client's
//! hop. A bodiless HTTP/1.1 request whose `Connection` lists `upgrade` keeps them instead, and
//! is sent over a connection of its own (never a pooled one: a backend that switches protocols
//! makes the connection something else, which must never be given to another request). When
//! the backend answers `101 Switching Protocols`, the response carries the backend connection
//! ([`UpgradedBackend`], in the response's extensions through [`BackendUpgrade`]) for the
//! server to relay once it has passed the 101 on; any other answer is an ordinary response,
//! and its connection is closed after it rather than pooled.

use crate::direct::{self, ExchangeError, Exchanged, ReadError, Reply};
use crate::pool::{BackendStream, HostPool};
use bytes::Bytes;
use decide::Nanos;
use decide::request_id::RequestId;
use decide::wire::{lists, put_header};
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The protocols an HTTP/1.1 request asks to upgrade to (its `Upgrade`), when its
/// `Connection` lists `upgrade`. HTTP/1.0 has no upgrades, and HTTP/2 no such headers (RFC
/// 9113 8.2.2).
pub(crate) fn requested(version: Version, headers: &HeaderMap) -> Option<&HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asked = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| lists(v.as_bytes(), b"upgrade"));
    if !asked {
        return None;
    }
    headers.get(UPGRADE).filter(|v| !v.is_empty())
}

/// Adds `Connection: upgrade` and `Upgrade: protocols` to a request head that
/// [`crate::proxy::encode_request_head`] wrote (it ends with the empty line).
pub(crate) fn ask(out: &mut Vec<u8>, protocols: &HeaderValue) {
    debug_assert!(out.ends_with(b"\r\n\r\n"));
    out.truncate(out.len() - 2);
    put_header(out, b"connection", b"upgrade");
    put_header(out, b"upgrade", protocols.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The backend's side of a switched connection: its socket, and what the backend sent after
/// its 101 that has been read already (to be relayed first).
#[derive(Debug)]
pub struct UpgradedBackend {
    pub io: TcpStream,
    pub pending: Bytes,
}

/// The backend connection of a `101 Switching Protocols`, in the response's extensions
/// (which must be `Clone`): whoever relays the tunnel takes it, once.
#[derive(Clone, Debug)]
pub struct BackendUpgrade(Arc<Mutex<Option<UpgradedBackend>>>);

impl BackendUpgrade {
    fn new(backend: UpgradedBackend) -> Self {
        BackendUpgrade(Arc::new(Mutex::new(Some(backend))))
    }

    /// The backend connection; `None` once taken.
    pub fn take(&self) -> Option<UpgradedBackend> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Sends an upgrade request, written by `encode` (with [`ask`]), over a new connection to the
/// backend, and returns its answer: a 101 with the connection in its extensions, or an
/// ordinary response.
pub(crate) async fn exchange(
    pool: &Arc<HostPool>,
    method: &Method,
    encode: impl Fn(&mut Vec<u8>),
    request_id: RequestId,
    now: Nanos,
) -> Result<Response<Exchanged>, ExchangeError> {
    let io = pool.dial().await.map_err(|e| {
        tracing::debug!(error = %e, "backend connect failed");
        ExchangeError::Connect
    })?;
    let mut stream = BackendStream::new(io);
    encode(&mut stream.write);
    let BackendStream { io, write, .. } = &mut stream;
    if let Err(e) = io.write_all(write).await {
        tracing::debug!(error = %e, "writing to the backend failed");
        return Err(ExchangeError::Broken);
    }
    let mut head =
        match direct::read_head(&mut stream, method == Method::HEAD, true, request_id).await {
            Ok(head) => head,
            Err(ReadError::ClosedBeforeResponse | ReadError::Broken) => {
                return Err(ExchangeError::Broken);
            }
        };
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        // Declined: an ordinary answer. The connection was asked to switch, and is not
        // reused whatever the backend says about it.
        head.keep_alive = false;
        return Ok(direct::respond(head, stream, pool, now));
    }
    let Some(protocol) = head
        .upgrade
        .take()
        .and_then(|p| HeaderValue::from_maybe_shared(p).ok())
    else {
        tracing::debug!("the backend switched protocols without saying to which");
        return Err(ExchangeError::Broken);
    };
    let exchanged = Exchanged {
        block: head.block,
        body: Reply::Whole(Bytes::new()),
        received: std::mem::take(&mut stream.received),
    };
    let mut response = Response::new(exchanged);
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
    response
        .extensions_mut()
        .insert(BackendUpgrade::new(UpgradedBackend {
            pending: stream.read.split().freeze(),
            io: stream.io,
        }));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_http11_requests_whose_connection_lists_upgrade_ask_for_one() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(Version::HTTP_11, &ws).unwrap(), "websocket");
        // `Connection` on a line of its own.
        let split = headers(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(requested(Version::HTTP_11, &split).unwrap(), "h2c");
        assert!(
            requested(Version::HTTP_10, &ws).is_none(),
            "no upgrades in HTTP/1.0"
        );
        assert!(requested(Version::HTTP_2, &ws).is_none());
        let unasked = headers(&[("upgrade", "websocket")]);
        assert!(requested(Version::HTTP_11, &unasked).is_none());
        let nothing = headers(&[("connection", "upgrade")]);
        assert!(requested(Version::HTTP_11, &nothing).is_none());
    }

    #[test]
    fn the_upgrade_is_asked_for_at_the_end_of_the_head() {
        let mut out = b"GET /ws HTTP/1.1\r\nhost: b\r\n\r\n".to_vec();
        ask(&mut out, &HeaderValue::from_static("websocket"));
        assert_eq!(
            out,
            b"GET /ws HTTP/1.1\r\nhost: b\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
    }
}
