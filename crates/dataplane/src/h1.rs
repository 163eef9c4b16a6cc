//! A lean HTTP/1.x server loop for plain-text connections, for the requests most API calls
//! are: no body.
//!
//! It reads and parses request heads with `httparse` into a buffer of its own, calls the
//! handler, and writes the response head and body itself, usually in one `write`. Per request
//! it sets no timer and takes no task hand-off: the connection's watchdog (see
//! [`crate::server`]) enforces the header-read timeout from the flags this loop keeps in
//! [`ConnInfo`].
//!
//! An upgrade request is a bodiless request like any other; when its response is a 101 with
//! a tunnel ([`crate::tunnel`]), the loop ends after writing it and the connection becomes
//! that tunnel.
//!
//! Anything else goes to hyper, which then serves the connection for the rest of its life,
//! starting with the bytes already read: a request with a body (hyper streams it to the backend
//! while the backend answers) and HTTP/2 with prior knowledge. hyper also keeps TLS connections
//! (their protocol comes from ALPN).

use crate::conn::ConnInfo;
use bytes::{Bytes, BytesMut};
use decide::wire::{X_CA_REQUEST_ID, content_length, lists, put_header};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Body;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use upstream::{RequestBody, ResponseBody};

/// Request headers beyond this many get 431 (hyper's server allows as many).
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// Response bodies up to this size go out in the same `write` as their head.
const COALESCE_BYTES: usize = 16 * 1024;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection's loop ended.
pub(crate) enum Ended<S> {
    /// The connection is done (closed by the client, refused, or not kept alive).
    Closed,
    /// The next request needs hyper: it serves the connection from here, the bytes already
    /// read first.
    HandOff(S, Bytes),
    /// The backend switched protocols and the 101 has been written: the connection is a
    /// tunnel from here ([`crate::tunnel`]), the bytes already read first.
    Upgraded(S, Bytes, crate::tunnel::Pending),
}

/// A parsed request head, or why there is none.
// Made and matched once per request: boxing the head would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Head),
    /// Not a whole head yet.
    Partial,
    /// A body, or HTTP/2: hyper's to serve.
    NeedsHyper,
    /// A head too large for the buffer: a bare 431, then close (as hyper does).
    TooLarge,
    /// A request line too long for the buffer: a bare 414, then close.
    TargetTooLong,
    /// Not HTTP/1: a bare 400, then close (as hyper does).
    Invalid,
}

struct Head {
    request: Request<RequestBody>,
    /// The client keeps the connection open after this exchange.
    keep_alive: bool,
}

/// Serves requests on `io` until the connection ends or needs hyper.
pub(crate) async fn serve<S, H, Fut>(mut io: S, info: &Arc<ConnInfo>, handler: &H) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> Fut,
    Fut: Future<Output = Response<ResponseBody>>,
{
    let limits = &info.limits;
    // hyper's own guard, which answers a bare 431, is twice the limit: above that no head is
    // read to the end. Between the limit and this, the handler answers with its JSON 431.
    let hard_limit = limits.max_header_bytes.saturating_mul(2).max(64 * 1024);
    let mut buf = BytesMut::with_capacity(READ_RESERVE);
    let mut out = Vec::with_capacity(1024);
    let mut spans = Vec::new();
    let mut first = true;
    loop {
        if first
            && !buf.is_empty()
            && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())])
        {
            if buf.len() >= H2_PREFACE.len() {
                return Ended::HandOff(io, buf.freeze());
            }
        } else if !buf.is_empty() {
            // The limit holds however the head arrives: cut in pieces (still partial past
            // it) or in one read (whole, but longer).
            let parsed = match parse(&mut buf, &mut spans, hard_limit) {
                Parsed::Partial if buf.len() > hard_limit => too_large(&buf, limits),
                Parsed::TooLarge => too_large(&buf, limits),
                parsed => parsed,
            };
            match parsed {
                Parsed::Request(head) => {
                    first = false;
                    info.heads.fetch_add(1, Relaxed);
                    info.waiting_head.store(false, Relaxed);
                    let keep_alive = head.keep_alive;
                    let method_head = head.request.method() == Method::HEAD;
                    let version_10 = head.request.version() == http::Version::HTTP_10;
                    let response = handler(head.request, info.clone()).await;
                    let tunnel = crate::tunnel::pending(&response);
                    let keep_alive =
                        keep_alive && !info.draining.load(Relaxed) && !info.closing.load(Relaxed);
                    let exchange = Exchange {
                        keep_alive,
                        method_head,
                        version_10,
                    };
                    let written = write_response(&mut io, &mut out, response, exchange).await;
                    if let (Ok(_), Some(tunnel)) = (&written, tunnel) {
                        return Ended::Upgraded(io, buf.split().freeze(), tunnel);
                    }
                    match written {
                        Ok(true) => continue,
                        Ok(false) | Err(_) => return Ended::Closed,
                    }
                }
                Parsed::Partial => {}
                Parsed::NeedsHyper => return Ended::HandOff(io, buf.freeze()),
                Parsed::TooLarge => {
                    let _ = io.write_all(BARE_431).await;
                    return Ended::Closed;
                }
                Parsed::TargetTooLong => {
                    let _ = io.write_all(BARE_414).await;
                    return Ended::Closed;
                }
                Parsed::Invalid => {
                    let _ = io.write_all(BARE_400).await;
                    return Ended::Closed;
                }
            }
        }
        // Waiting for (the rest of) a head: the watchdog times this out.
        if buf.is_empty() && info.draining.load(Relaxed) {
            return Ended::Closed;
        }
        info.waiting_head.store(true, Relaxed);
        buf.reserve(READ_RESERVE);
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ended::Closed,
            Ok(_) => {}
        }
    }
}

const BARE_400: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BARE_431: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BARE_414: &[u8] =
    b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What a head over the hard limit gets: 414 when its request line alone is longer than the
/// configured head limit (the target is what is too long), else 431.
fn too_large(buf: &[u8], limits: &crate::conn::ServerLimits) -> Parsed {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > limits.max_header_bytes {
        Parsed::TargetTooLong
    } else {
        Parsed::TooLarge
    }
}

/// Parses a request head off the front of `buf`. `spans` is scratch space, for where the
/// headers are. A whole head longer than `hard_limit` is [`Parsed::TooLarge`], as a partial
/// one is in [`serve`].
fn parse(buf: &mut BytesMut, spans: &mut Vec<[u32; 4]>, hard_limit: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len > hard_limit => return Parsed::TooLarge,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Parsed::Invalid;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Invalid;
    };
    let http11 = version == 1;
    // The header slices borrow `buf`; note where they are (offsets fit: a head this loop
    // accepts is far below 4 GiB), then cut the head off and share it with the header values
    // and the URI instead of copying them.
    let start = buf.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - start) as u32;
    let path_span = (offset(path.as_bytes()), path.len() as u32);
    spans.clear();
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parsed::NeedsHyper;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length(h.value), length) {
                (None, _) => return Parsed::Invalid,
                (Some(n), Some(l)) if n != l => return Parsed::Invalid,
                (Some(n), _) => length = Some(n),
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if lists(h.value, b"close") {
                keep_alive = false;
            } else if !http11 && lists(h.value, b"keep-alive") {
                keep_alive = true;
            }
        }
        let (n, v) = (offset(name), offset(h.value));
        spans.push([n, n + name.len() as u32, v, v + h.value.len() as u32]);
    }
    if length.is_some_and(|n| n > 0) {
        return Parsed::NeedsHyper;
    }
    let head = buf.split_to(len).freeze();
    let (p0, plen) = (path_span.0 as usize, path_span.1 as usize);
    if plen >= usize::from(u16::MAX) - 1 {
        // Longer than a `Uri` holds (possible when the head limit is raised past 32 KiB).
        return Parsed::TargetTooLong;
    }
    let Ok(uri) = Uri::from_maybe_shared(head.slice(p0..p0 + plen)) else {
        return Parsed::Invalid;
    };
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &[n0, n1, v0, v1] in spans.iter() {
        let Ok(name) = HeaderName::from_bytes(&head[n0 as usize..n1 as usize]) else {
            return Parsed::Invalid;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize)) else {
            return Parsed::Invalid;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Parsed::Request(Head {
        request,
        keep_alive,
    })
}

/// What the response is written for.
struct Exchange {
    keep_alive: bool,
    method_head: bool,
    version_10: bool,
}

/// How the response body is delimited on the wire.
#[derive(PartialEq, Eq)]
enum Framing {
    None,
    /// As many bytes as the Content-Length says.
    Length,
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, length unknown).
    Close,
}

/// Writes `response`; whether the connection stays open for another request.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    exchange: Exchange,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A 101 keeps its `Connection: upgrade` (and `Upgrade`, which goes on as any header).
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    out.clear();
    // HTTP/1.0 clients too: a server sends the highest version it conforms to (RFC 9110
    // 2.5); what it may use with them (no chunks, keep-alive only when asked) is decided below.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the headers writes them and notes what the framing depends on.
    let (mut has_length, mut has_date) = (false, false);
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || (name == CONNECTION && !upgrade) {
            continue; // this hop's framing and connection are decided here
        }
        if bodiless_status && name == CONTENT_LENGTH {
            continue; // no length on a 1xx, 204 or 304 (RFC 9110 8.6)
        }
        has_length |= name == CONTENT_LENGTH;
        has_date |= name == DATE;
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // The backend's own lines, already without hop-by-hop ones.
    if let Some(block) = body.take_header_block() {
        out.extend_from_slice(block.lines());
        has_length |= block.has_length;
        has_date |= block.has_date;
        put_header(
            out,
            X_CA_REQUEST_ID.as_str().as_bytes(),
            block.request_id.as_bytes(),
        );
    }
    if !has_date {
        put_header(out, b"date", &http_date());
    }
    let exact = body.size_hint().exact();
    let framing = if exchange.method_head || bodiless_status {
        Framing::None
    } else if has_length || exact.is_some() {
        Framing::Length
    } else if exchange.version_10 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    let keep_alive = exchange.keep_alive && framing != Framing::Close;
    match framing {
        Framing::Length if !has_length => {
            let length = exact.unwrap_or(0).to_string();
            put_header(out, b"content-length", length.as_bytes());
        }
        Framing::Chunked => put_header(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    match (keep_alive, exchange.version_10) {
        _ if upgrade => {}
        (false, false) => put_header(out, b"connection", b"close"),
        (true, true) => put_header(out, b"connection", b"keep-alive"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");

    // Outbound traffic is what is written here, head and framing included: each write is
    // counted once it has gone out whole.
    if framing == Framing::None {
        io.write_all(out).await?;
        body.add_sent(out.len() as u64);
        return Ok(keep_alive);
    }
    let mut pending_head = true;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: not sent
            },
        };
        if data.is_empty() {
            continue;
        }
        if framing == Framing::Chunked {
            if !pending_head {
                out.clear();
            }
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            io.write_all(out).await?;
            body.add_sent(out.len() as u64);
        } else if pending_head && data.len() <= COALESCE_BYTES {
            out.extend_from_slice(&data);
            io.write_all(out).await?;
            body.add_sent(out.len() as u64);
        } else {
            if pending_head {
                io.write_all(out).await?;
                body.add_sent(out.len() as u64);
            }
            io.write_all(&data).await?;
            body.add_sent(data.len() as u64);
        }
        pending_head = false;
    }
    if framing == Framing::Chunked {
        if pending_head {
            out.extend_from_slice(b"0\r\n\r\n");
            io.write_all(out).await?;
            body.add_sent(out.len() as u64);
        } else {
            io.write_all(b"0\r\n\r\n").await?;
            body.add_sent(5);
        }
    } else if pending_head {
        io.write_all(out).await?;
        body.add_sent(out.len() as u64);
    }
    if !keep_alive {
        let _ = io.shutdown().await;
    }
    Ok(keep_alive)
}

/// The current time as an HTTP date, formatted at most once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        c.set((secs, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &str) -> Parsed {
        parse(
            &mut BytesMut::from(input.as_bytes()),
            &mut Vec::new(),
            64 * 1024,
        )
    }

    #[test]
    fn heads_are_parsed_or_sent_on() {
        let Parsed::Request(head) = parsed("GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n")
        else {
            panic!("not parsed");
        };
        assert_eq!(head.request.uri(), "/a?b=c");
        assert_eq!(head.request.headers()["x-a"], "1");
        assert!(head.keep_alive);
        let Parsed::Request(head) = parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n") else {
            panic!("not parsed");
        };
        assert!(!head.keep_alive);
        let Parsed::Request(head) = parsed("GET / HTTP/1.0\r\n\r\n") else {
            panic!("not parsed");
        };
        assert!(!head.keep_alive);
        let Parsed::Request(head) = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        else {
            panic!("not parsed");
        };
        assert!(head.keep_alive);
        // A zero length is no body.
        assert!(matches!(
            parsed("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Parsed::Request(_)
        ));

        assert!(matches!(
            parsed("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Parsed::NeedsHyper
        ));
        assert!(matches!(
            parsed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::NeedsHyper
        ));
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost: x"),
            Parsed::Partial
        ));
        for bad in [
            "GET / HTTP/1.1\r\nContent-Length: +0\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(matches!(parsed(bad), Parsed::Invalid), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(matches!(
            parsed(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Parsed::TooLarge
        ));
        // A whole head over the hard limit, in one piece.
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(64 * 1024));
        assert!(matches!(parsed(&big), Parsed::TooLarge));
    }

    #[test]
    fn over_long_request_lines_are_414() {
        let limits = crate::conn::ServerLimits::default();
        let line = format!("GET /{} HTTP/1.1", "a".repeat(limits.max_header_bytes));
        assert!(matches!(
            too_large(line.as_bytes(), &limits),
            Parsed::TargetTooLong
        ));
        let head = format!(
            "GET / HTTP/1.1\r\nx: {}",
            "a".repeat(limits.max_header_bytes)
        );
        assert!(matches!(
            too_large(head.as_bytes(), &limits),
            Parsed::TooLarge
        ));
    }

    async fn written(response: Response<ResponseBody>, exchange: Exchange) -> (String, bool) {
        let mut wire = Vec::new();
        let mut out = Vec::new();
        let keep = write_response(&mut wire, &mut out, response, exchange)
            .await
            .unwrap();
        (String::from_utf8(wire).unwrap(), keep)
    }

    fn exchange(keep_alive: bool, method_head: bool, version_10: bool) -> Exchange {
        Exchange {
            keep_alive,
            method_head,
            version_10,
        }
    }

    #[tokio::test]
    async fn responses_are_framed_for_the_client() {
        let ok = || Response::new(ResponseBody::full(Bytes::from_static(b"hello")));
        let (wire, keep) = written(ok(), exchange(true, false, false)).await;
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert!(wire.contains("\r\ncontent-length: 5\r\n"), "{wire}");
        assert!(wire.contains("\r\ndate: "), "{wire}");
        assert!(wire.ends_with("\r\n\r\nhello"), "{wire}");
        assert!(keep);

        let (wire, keep) = written(ok(), exchange(false, false, false)).await;
        assert!(wire.contains("\r\nconnection: close\r\n"), "{wire}");
        assert!(!keep);

        let (wire, keep) = written(ok(), exchange(true, false, true)).await;
        assert!(
            wire.starts_with("HTTP/1.1 200 OK\r\n"),
            "HTTP/1.0 client: {wire}"
        );
        assert!(wire.contains("\r\nconnection: keep-alive\r\n"), "{wire}");
        assert!(keep);

        let (wire, _) = written(ok(), exchange(true, true, false)).await;
        assert!(wire.ends_with("\r\n\r\n"), "HEAD: no body: {wire}");

        let mut no_content = ok();
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        let (wire, _) = written(no_content, exchange(true, false, false)).await;
        assert!(wire.starts_with("HTTP/1.1 204 No Content\r\n"), "{wire}");
        assert!(!wire.contains("content-length"), "{wire}");
        assert!(wire.ends_with("\r\n\r\n"), "{wire}");
    }
}
