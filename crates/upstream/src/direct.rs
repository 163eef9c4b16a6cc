//! Requests without a body, exchanged with their backend from the client connection's own task:
//! the request head is written to a pooled socket and the response read back from it, with no
//! connection task, channel or wake-up in between.
//!
//! Most API calls (GET, DELETE, HEAD) carry no body. For them hyper's client costs two task
//! hand-offs and a codec per leg; this path writes the head in one `write` and parses the
//! response with `httparse`, and a small response whose body arrived with its head is handed to
//! the client whole, its connection back in the pool before the client is even answered.
//!
//! A request with a body keeps hyper's client (see [`crate::proxy`]), which streams the request
//! body and the response at once: a backend may answer before it has read the whole body, or
//! echo it as it reads.

use crate::limited::BoxError;
use crate::pool::{BackendStream, HostPool, READ_RESERVE};
use bytes::{Bytes, BytesMut};
use decide::Nanos;
use decide::request_id::RequestId;
use decide::wire::{
    X_CA_REQUEST_ID, connection_options, content_length, is_hop_by_hop, lists, put_header,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Response heads larger than this are refused as invalid (hyper's client allows about as much).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Response headers beyond this many are refused as invalid (as many as hyper's client allows).
const MAX_HEADERS: usize = 100;
/// Chunk-size lines and trailer lines longer than this are refused as invalid.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Why an exchange failed; the message is what the client's 502 says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("could not connect to the backend")]
    Connect,
    #[error("the backend closed the connection or sent an invalid response")]
    Broken,
}

/// How the response body is delimited (RFC 9112 section 6.3), and how much of it is left.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304), or the body has been read.
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Read until the backend closes; the connection is not reused.
    UntilClose,
}

/// Where a chunked body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (trailers are dropped).
    Trailers,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    End,
    NeedMore,
}

/// A response body the backend framed in a way this path does not accept.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent a malformed response body: {0}")]
pub(crate) struct BadBody(&'static str);

/// Takes one line (without its CRLF) off the front of `buf`, if a whole one is there.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, BadBody> {
    match buf.iter().position(|&b| b == b'\n') {
        // The limit holds however the line arrives: whole in one read, or cut in pieces.
        Some(i) if i > MAX_LINE_BYTES => Err(BadBody("line too long")),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE_BYTES => Err(BadBody("line too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, BadBody> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(BadBody("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char)
            .to_digit(16)
            .ok_or(BadBody("invalid chunk size"))?;
        Ok(n * 16 + u64::from(v))
    })
}

impl Framing {
    /// The next piece of body from `buf`.
    fn next(&mut self, buf: &mut BytesMut) -> Result<Step, BadBody> {
        loop {
            match self {
                Framing::Done => return Ok(Step::End),
                Framing::UntilClose if buf.is_empty() => return Ok(Step::NeedMore),
                Framing::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                Framing::Length(0) => *self = Framing::Done,
                Framing::Length(_) if buf.is_empty() => return Ok(Step::NeedMore),
                Framing::Length(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        *self = Framing::Done;
                    }
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Chunked(state) => match state {
                    Chunked::Size => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(Step::NeedMore);
                        };
                        *state = match chunk_size(&line)? {
                            0 => Chunked::Trailers,
                            n => Chunked::Data(n),
                        };
                    }
                    Chunked::Data(_) if buf.is_empty() => return Ok(Step::NeedMore),
                    Chunked::Data(left) => {
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(BadBody("chunk data not followed by CRLF"));
                        }
                        let _ = buf.split_to(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(Step::NeedMore);
                        };
                        if line.is_empty() {
                            *self = Framing::Done;
                        }
                    }
                },
            }
        }
    }

    /// What the end of the stream means here: the end of the body, or a body cut short.
    fn at_eof(&mut self) -> Result<(), BadBody> {
        match self {
            Framing::Done | Framing::UntilClose => {
                *self = Framing::Done;
                Ok(())
            }
            _ => Err(BadBody(
                "the backend closed the connection before the body ended",
            )),
        }
    }

    fn exact_left(&self) -> Option<u64> {
        match self {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }
}

/// The backend's response header lines, ready to be copied into the client's HTTP/1 head:
/// `name: value\r\n` each, as the backend wrote them, without the hop-by-hop ones and without
/// the backend's own `X-Ca-Request-Id` (the gateway's replaces it).
///
/// The lean server loop ([`crate::h1`]) writes them as they are; a response served by hyper
/// gets them as a header map first ([`HeaderBlock::into_map`]).
#[derive(Debug)]
pub struct HeaderBlock {
    lines: Bytes,
    /// The lines include a `Content-Length`, a `Date`.
    pub has_length: bool,
    pub has_date: bool,
    pub request_id: RequestId,
}

impl HeaderBlock {
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// Adds the lines, and the request id, to `headers`.
    pub fn into_map(self, headers: &mut HeaderMap) {
        let mut rest = self.lines;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = rest.split_to(end + 1);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            // Well-formed by construction: `name: value\r\n`.
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = HeaderValue::from_maybe_shared(line.slice(colon + 2..line.len() - 2));
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        headers.insert(X_CA_REQUEST_ID, self.request_id.header_value());
    }
}

/// A parsed response head.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    /// The header lines to pass on, with the id of the request they answer.
    pub(crate) block: HeaderBlock,
    framing: Framing,
    /// The backend keeps the connection open for another request.
    pub(crate) keep_alive: bool,
    /// The backend's `Upgrade` (hop-by-hop, so not in `block`): the protocol a 101 switches
    /// to (see [`crate::upgrade`]).
    pub(crate) upgrade: Option<Bytes>,
}

/// Parses a response head off the front of `buf`; `None` until a whole one is there. `kept` is
/// scratch space, for where the lines that go on are.
fn parse_head(
    buf: &mut BytesMut,
    kept: &mut Vec<[u32; 4]>,
    head_request: bool,
    request_id: RequestId,
) -> Result<Option<Head>, ExchangeError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        // The limit holds however the head arrives: whole in one read, or cut in pieces.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Err(ExchangeError::Broken);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(ExchangeError::Broken);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Broken),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Broken)?;
    let http11 = response.version == Some(1);
    // A 1xx, 204 or 304 has no body, and its client gets no `Content-Length` (RFC 9110 8.6).
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // The header slices borrow `buf`: note where they are (a head is at most MAX_HEAD_BYTES),
    // and what each says about framing and whether it goes on.
    let start = buf.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - start) as u32;
    // Where the header lines start: right after the status line.
    let first = response
        .headers
        .first()
        .map_or(len, |h| offset(h.name.as_bytes()) as usize);
    kept.clear();
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = !http11;
    let (mut has_length, mut has_date) = (false, false);
    // Every line that goes on is `name: value\r\n` exactly (backends write them so); then the
    // lines can be moved together in place instead of written out anew.
    let mut canonical = true;
    let mut names_more = false;
    let mut upgrade = None;
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(h.value).ok_or(ExchangeError::Broken)?;
            let repeated = length.is_some();
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Broken);
            }
            length = Some(n);
            if repeated || bodiless_status {
                // Identical lines go on as one (RFC 9110 8.6); none on a bodiless status.
                continue;
            }
            has_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding matters: chunked or not.
            chunked = Some(
                h.value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case(b"connection") {
            if lists(h.value, b"close") {
                close = true;
            } else if !http11 && lists(h.value, b"keep-alive") {
                close = false;
            }
            names_more |= connection_options(h.value).next().is_some();
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = Some(Bytes::copy_from_slice(h.value));
        }
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case(X_CA_REQUEST_ID.as_str().as_bytes()) {
            continue;
        }
        let (n, v) = (offset(name), offset(h.value));
        let (n_end, v_end) = (n + name.len() as u32, v + h.value.len() as u32);
        kept.push([n, n_end, v, v_end]);
        canonical &= v == n_end + 2
            && buf[n_end as usize..v as usize] == *b": "
            && buf.get(v_end as usize..v_end as usize + 2) == Some(b"\r\n");
    }
    if names_more || (chunked.is_some() && has_length) {
        // Rare: `Connection` names more headers of this hop, or a Content-Length came with
        // chunks (it is wrong then, RFC 9112 6.3). Neither goes on.
        let named: Vec<&[u8]> = response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| connection_options(h.value))
            .chain(chunked.is_some().then_some(&b"content-length"[..]))
            .collect();
        kept.retain(|s| !named.iter().any(|n| is_named(buf, s, n)));
        has_length = kept.iter().any(|s| is_named(buf, s, b"content-length"));
        has_date = kept.iter().any(|s| is_named(buf, s, b"date"));
    }
    let mut head = buf.split_to(len);
    let lines = if canonical {
        let mut end = first;
        for &[n, _, _, v_end] in kept.iter() {
            let (from, to) = (n as usize, v_end as usize + 2);
            head.copy_within(from..to, end);
            end += to - from;
        }
        head.freeze().slice(first..end)
    } else {
        let mut lines = Vec::with_capacity(len);
        for &[n, n_end, v, v_end] in kept.iter() {
            let (n, n_end, v, v_end) = (n as usize, n_end as usize, v as usize, v_end as usize);
            put_header(&mut lines, &head[n..n_end], &head[v..v_end]);
        }
        Bytes::from(lines)
    };
    let bodiless = head_request || bodiless_status;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) => Framing::Done,
        (false, Some(true), _) => Framing::Chunked(Chunked::Size),
        (false, Some(false), _) | (false, None, None) => Framing::UntilClose,
        (false, None, Some(n)) => Framing::Length(n),
    };
    // A body delimited by the close, or by chunks after a Content-Length too, ends the
    // connection's use (RFC 9112 6.3).
    let keep_alive =
        !close && framing != Framing::UntilClose && !(chunked.is_some() && length.is_some());
    Ok(Some(Head {
        status,
        block: HeaderBlock {
            lines,
            has_length,
            has_date,
            request_id,
        },
        framing,
        keep_alive,
        upgrade,
    }))
}

/// Whether the header at `span` (offsets into `buf`) is named `name`.
fn is_named(buf: &[u8], span: &[u32; 4], name: &[u8]) -> bool {
    buf[span[0] as usize..span[1] as usize].eq_ignore_ascii_case(name)
}

/// Why reading a response head failed.
pub(crate) enum ReadError {
    /// The connection ended before a single byte of response: a reused connection the backend
    /// had closed meanwhile, as far as this side can tell.
    ClosedBeforeResponse,
    Broken,
}

/// Reads the final response head (skipping 1xx ones) from `stream`; with `upgrading` (the
/// request asked for an upgrade, see [`crate::upgrade`]), a 101 is final too.
pub(crate) async fn read_head(
    stream: &mut BackendStream,
    head_request: bool,
    upgrading: bool,
    request_id: RequestId,
) -> Result<Head, ReadError> {
    let mut received = !stream.read.is_empty();
    loop {
        if !stream.read.is_empty() {
            match parse_head(&mut stream.read, &mut stream.kept, head_request, request_id) {
                Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    if upgrading {
                        return Ok(head);
                    }
                    // No upgrade was asked for (`Upgrade` is hop-by-hop and not forwarded).
                    return Err(ReadError::Broken);
                }
                Ok(Some(head)) if head.status.is_informational() => continue,
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(_) => return Err(ReadError::Broken),
            }
        }
        stream.read.reserve(READ_RESERVE);
        match stream.io.read_buf(&mut stream.read).await {
            Ok(0) if !received => return Err(ReadError::ClosedBeforeResponse),
            Err(e) if !received && e.kind() == ErrorKind::ConnectionReset => {
                return Err(ReadError::ClosedBeforeResponse);
            }
            Ok(0) | Err(_) => return Err(ReadError::Broken),
            Ok(n) => {
                received = true;
                stream.received += n as u64;
            }
        }
    }
}

/// Sends a bodiless request over a pooled connection of `pool` (or a new one) and returns the
/// response, its body streaming from the backend or already whole. `encode` writes the request
/// head (see [`crate::proxy::encode_request_head`]).
///
/// A reused connection that turns out closed is replaced by another when the request cannot
/// have been acted on: when writing it failed, or, for idempotent methods, when the connection
/// ended before any response.
pub(crate) async fn exchange(
    pool: &Arc<HostPool>,
    method: &Method,
    encode: impl Fn(&mut Vec<u8>),
    request_id: RequestId,
    now: Nanos,
) -> Result<Response<Exchanged>, ExchangeError> {
    let head_request = method == Method::HEAD;
    loop {
        let (mut stream, reused) = match pool.checkout_direct(now) {
            Some(stream) => (stream, true),
            None => {
                let io = pool.dial().await.map_err(|e| {
                    tracing::debug!(error = %e, "backend connect failed");
                    ExchangeError::Connect
                })?;
                (BackendStream::new(io), false)
            }
        };
        // Reads of an earlier exchange were reported with it.
        stream.received = 0;
        encode(&mut stream.write);
        let BackendStream { io, write, .. } = &mut stream;
        if let Err(e) = io.write_all(write).await {
            if reused {
                continue;
            }
            tracing::debug!(error = %e, "writing to the backend failed");
            return Err(ExchangeError::Broken);
        }
        match read_head(&mut stream, head_request, false, request_id).await {
            Ok(head) => return Ok(respond(head, stream, pool, now)),
            Err(ReadError::ClosedBeforeResponse) if reused && method.is_idempotent() => continue,
            Err(_) => return Err(ExchangeError::Broken),
        }
    }
}

/// The response for `head`. A body that is already all in the buffer is handed over whole and
/// the connection goes straight back to the pool (as used at `now`, the request's arrival: close
/// enough for aging it, and no clock read).
pub(crate) fn respond(
    head: Head,
    mut stream: BackendStream,
    pool: &Arc<HostPool>,
    now: Nanos,
) -> Response<Exchanged> {
    let Head {
        status,
        block,
        framing,
        keep_alive,
        upgrade: _,
    } = head;
    // Everything read so far: the heads (interim ones too) and what came of the body with them.
    let received = std::mem::take(&mut stream.received);
    let whole = match framing.exact_left() {
        Some(n) if n <= stream.read.len() as u64 => Some(stream.read.split_to(n as usize).freeze()),
        _ => None,
    };
    let body = match whole {
        Some(bytes) => {
            // Bytes past the response were never asked for: the connection is not reused.
            if keep_alive && stream.read.is_empty() {
                pool.put_direct(stream, now);
            }
            Reply::Whole(bytes)
        }
        None => Reply::Stream(DirectBody {
            stream: Some(stream),
            framing,
            pool: pool.clone(),
            keep_alive,
            received: 0,
        }),
    };
    let mut response = Response::new(Exchanged {
        block,
        body,
        received,
    });
    *response.status_mut() = status;
    response
}

/// What an exchange read: the backend's header lines, as they were read (they travel with the
/// body instead of through a header map), and its body.
pub(crate) struct Exchanged {
    pub(crate) block: HeaderBlock,
    pub(crate) body: Reply,
    /// Bytes read from the backend's socket for this response so far, as they were read:
    /// status lines, header lines, body and its framing (backend traffic).
    pub(crate) received: u64,
}

/// A response body: all of it, when it came with the head, or the rest to read.
pub(crate) enum Reply {
    Whole(Bytes),
    Stream(DirectBody),
}

/// A response body read from the backend's socket as the client takes it. The connection goes
/// back to the pool when the body has been read to its end, and is closed otherwise.
pub(crate) struct DirectBody {
    /// `None` once the body has ended (the connection released) or failed (dropped).
    stream: Option<BackendStream>,
    framing: Framing,
    pool: Arc<HostPool>,
    keep_alive: bool,
    /// Bytes read from the socket since [`take_received`](Self::take_received) last asked.
    received: u64,
}

impl DirectBody {
    /// The bytes read from the backend since the last call (backend traffic, framing included).
    pub(crate) fn take_received(&mut self) -> u64 {
        std::mem::take(&mut self.received)
    }

    fn finish(&mut self) {
        if let Some(stream) = self.stream.take()
            && self.keep_alive
            && stream.read.is_empty()
        {
            let now = self.pool.now();
            self.pool.put_direct(stream, now);
        }
    }

    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.next(&mut stream.read) {
                Err(e) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Step::Data(bytes)) => {
                    if self.framing == Framing::Done {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
            }
            stream.read.reserve(READ_RESERVE);
            let read = loop {
                if let Err(e) = ready!(stream.io.poll_read_ready(cx)) {
                    break Err(e);
                }
                match stream.io.try_read_buf(&mut stream.read) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            };
            match read {
                Ok(0) => {
                    self.stream = None;
                    if let Err(e) = self.framing.at_eof() {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    return Poll::Ready(None);
                }
                Ok(n) => self.received += n as u64,
                Err(e) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }

    pub(crate) fn exact_left(&self) -> Option<u64> {
        if self.stream.is_none() {
            return Some(0);
        }
        self.framing.exact_left()
    }
}

impl std::fmt::Debug for DirectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

/// The response parser without a socket, for the fuzz target `backend_response`
/// (`fuzz/`): a response as it would be read off a backend connection, in reads of the given
/// sizes.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// What the parser made of a response.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Parsed {
        pub status: u16,
        /// The header lines that go on to the client.
        pub lines: Bytes,
        pub has_length: bool,
        pub has_date: bool,
        pub keep_alive: bool,
        /// The lines as hyper's server gets them (less the gateway's request id, which differs
        /// from run to run).
        pub map: HeaderMap,
        /// The body, all of it as decoded.
        pub body: Vec<u8>,
        pub end: BodyEnd,
    }

    /// How the body ended.
    #[derive(Debug, PartialEq, Eq)]
    pub enum BodyEnd {
        Complete,
        /// Malformed framing (a bad chunk size, a line too long, no CRLF after a chunk).
        Malformed,
        /// The input ended before the body did.
        CutShort,
    }

    /// Why there is no response.
    #[derive(Debug, PartialEq, Eq)]
    pub enum NoResponse {
        /// Refused: not HTTP, a head too large, bad lengths...
        Broken,
        /// A 101 that was not asked for.
        Switching,
        /// The input ended inside a head.
        Incomplete,
    }

    /// Parses `input` as the response to a request (`HEAD` when `head_request`), read in
    /// pieces of the sizes in `reads` (then the rest at once), as `read_head` and
    /// `DirectBody` do: 1xx heads skipped, then the final head, then the body.
    pub fn parse(input: &[u8], head_request: bool, reads: &[usize]) -> Result<Parsed, NoResponse> {
        let mut pieces = Vec::new();
        let mut rest = input;
        for &n in reads {
            let (piece, after) = rest.split_at(n.min(rest.len()));
            pieces.push(piece);
            rest = after;
        }
        pieces.push(rest);
        let mut pieces = pieces.into_iter().filter(|p| !p.is_empty());
        let mut buf = BytesMut::new();
        let mut kept = Vec::new();
        let ids = decide::request_id::RequestIds::new(1);
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&mut buf, &mut kept, head_request, ids.next()) {
                    Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                        return Err(NoResponse::Switching);
                    }
                    Ok(Some(h)) if h.status.is_informational() => continue,
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(_) => return Err(NoResponse::Broken),
                }
            }
            match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Err(NoResponse::Incomplete),
            }
        };
        let Head {
            status,
            block,
            mut framing,
            keep_alive,
            ..
        } = head;
        let mut body = Vec::new();
        let end = loop {
            match framing.next(&mut buf) {
                Err(_) => break BodyEnd::Malformed,
                Ok(Step::Data(b)) => body.extend_from_slice(&b),
                Ok(Step::End) => break BodyEnd::Complete,
                Ok(Step::NeedMore) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => match framing.at_eof() {
                        Ok(()) => break BodyEnd::Complete,
                        Err(_) => break BodyEnd::CutShort,
                    },
                },
            }
        };
        let (lines, has_length, has_date) = (block.lines.clone(), block.has_length, block.has_date);
        let mut map = HeaderMap::new();
        block.into_map(&mut map);
        map.remove(X_CA_REQUEST_ID);
        Ok(Parsed {
            status: status.as_u16(),
            lines,
            has_length,
            has_date,
            keep_alive,
            map,
            body,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: &mut Framing, input: &[u8]) -> Result<(Vec<u8>, bool), BadBody> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match framing.next(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::End => return Ok((out, true)),
                Step::NeedMore => return Ok((out, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        let mut f = Framing::Chunked(Chunked::Size);
        let (out, done) = decode_all(
            &mut f,
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(out, b"hello0123456789");
        assert!(done);

        // Split anywhere: the same bytes come out.
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        for cut in 0..input.len() {
            let mut f = Framing::Chunked(Chunked::Size);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut out = Vec::new();
            let mut done = false;
            for part in [&input[cut..], &[][..]] {
                loop {
                    match f.next(&mut buf).unwrap() {
                        Step::Data(b) => out.extend_from_slice(&b),
                        Step::End => {
                            done = true;
                            break;
                        }
                        Step::NeedMore => break,
                    }
                }
                buf.extend_from_slice(part);
            }
            assert!(done, "cut at {cut}");
            assert_eq!(out, b"abc0123456789abcdef", "cut at {cut}");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"ffffffffffffffff\r\n",
        ] {
            let mut f = Framing::Chunked(Chunked::Size);
            assert!(
                decode_all(&mut f, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut f = Framing::Chunked(Chunked::Size);
        assert!(decode_all(&mut f, &[b'1'; MAX_LINE_BYTES + 1]).is_err());
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let mut f = Framing::Length(5);
        let (out, done) = decode_all(&mut f, b"hel").unwrap();
        assert_eq!((out.as_slice(), done), (&b"hel"[..], false));
        let (out, done) = decode_all(&mut f, b"lo").unwrap();
        assert_eq!((out.as_slice(), done), (&b"lo"[..], true));

        let mut f = Framing::UntilClose;
        let (out, done) = decode_all(&mut f, b"abc").unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], false));
        assert!(f.at_eof().is_ok());
        assert!(Framing::Length(1).at_eof().is_err());
        assert!(Framing::Chunked(Chunked::Size).at_eof().is_err());
    }

    fn head(input: &str, head_request: bool) -> Result<Option<Head>, ExchangeError> {
        parse_head(
            &mut BytesMut::from(input.as_bytes()),
            &mut Vec::new(),
            head_request,
            decide::request_id::RequestIds::new(1).next(),
        )
    }

    #[test]
    fn response_heads_are_framed() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&h.block.lines[..], b"Content-Length: 3\r\nX-A: b\r\n");
        assert!(h.block.has_length && !h.block.has_date);

        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunked::Size));
        assert!(h.keep_alive);

        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);

        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);

        let h = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);

        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Done);
        for status in [204, 304] {
            let h = head(
                &format!("HTTP/1.1 {status} X\r\nContent-Length: 9\r\n\r\n"),
                false,
            )
            .unwrap()
            .unwrap();
            assert_eq!(h.framing, Framing::Done);
        }

        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(
            head(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(head("SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
    }

    fn lines(input: &str) -> String {
        let h = head(input, false).unwrap().unwrap();
        String::from_utf8(h.block.lines.to_vec()).unwrap()
    }

    #[test]
    fn header_lines_go_on_without_this_hops() {
        // Moved together in place: hop-by-hop lines, those `Connection` names and the
        // backend's own request id are left out.
        assert_eq!(
            lines(
                "HTTP/1.1 200 OK\r\nServer: t\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret\r\n\
                 Keep-Alive: timeout=5\r\nContent-Length: 0\r\nX-Ca-Request-Id: b\r\n\
                 Date: Thu, 26 Nov 2026 20:00:00 GMT\r\nProxy-Foo: 1\r\n\r\n"
            ),
            "Server: t\r\nContent-Length: 0\r\nDate: Thu, 26 Nov 2026 20:00:00 GMT\r\n"
        );
        // Lines written otherwise (no space, bare LF, padding) are written anew.
        assert_eq!(
            lines("HTTP/1.1 200 OK\nA:1\nB:   2  \r\nContent-Length: 0\n\n"),
            "A: 1\r\nB: 2\r\nContent-Length: 0\r\n"
        );
        // With chunks, a Content-Length does not go on (RFC 9112 6.3).
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(&h.block.lines[..], b"X: y\r\n");
        assert!(!h.block.has_length);
        assert!(!h.keep_alive);
        // No headers at all.
        assert_eq!(lines("HTTP/1.1 204 No Content\r\n\r\n"), "");
    }

    #[test]
    fn header_blocks_become_maps_for_hyper() {
        let h = head(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty: \r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let block = h.block;
        let id = block.request_id;
        let mut map = HeaderMap::new();
        block.into_map(&mut map);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(map["x-empty"], "");
        assert_eq!(map["content-length"], "0");
        assert_eq!(map[X_CA_REQUEST_ID].as_bytes(), id.as_bytes());
        assert!(!map.contains_key("connection"));
        assert_eq!(map.len(), 5);
    }

    /// A header line as a generated response carries it: how it is written, and whether it
    /// should reach the client.
    #[derive(Debug, Clone)]
    struct Line {
        name: String,
        value: String,
        /// Between the colon and the value.
        gap: &'static str,
        eol: &'static str,
    }

    fn line() -> impl proptest::strategy::Strategy<Value = Line> {
        use proptest::prelude::*;
        // A few names recur, so that `Connection` lines (their values drawn from the same
        // names) name headers the response has.
        let name = prop_oneof![
            "[A-Za-z][A-Za-z0-9-]{0,10}",
            Just("X-A".to_string()),
            Just("x-b".to_string()),
            Just("keep-alive".to_string()),
            Just("Proxy-Thing".to_string()),
            Just("X-Ca-Request-Id".to_string()),
            Just("Date".to_string()),
            Just("TE".to_string()),
        ];
        let gap = prop_oneof![Just(": "), Just(":"), Just(":   ")];
        let eol = prop_oneof![Just("\r\n"), Just("\n")];
        let plain = (name, "[!-~]([ -~]{0,16}[!-~])?", gap.clone(), eol.clone());
        let connection = (
            Just("Connection".to_string()),
            "(close|keep-alive|x-a|X-B|date)(, ?(x-a|X-B|date|close)){0,2}",
            gap,
            eol,
        );
        prop_oneof![3 => plain, 1 => connection].prop_map(|(name, value, gap, eol)| Line {
            name,
            value,
            gap,
            eol,
        })
    }

    proptest::proptest! {
        #[test]
        fn passed_lines_are_the_end_to_end_ones_in_order(
            lines in proptest::collection::vec(line(), 0..12),
        ) {
            let mut input = String::from("HTTP/1.1 200 OK\r\n");
            for l in &lines {
                input.push_str(&format!("{}{}{}{}", l.name, l.gap, l.value, l.eol));
            }
            input.push_str("Content-Length: 0\r\n\r\n");
            let named: Vec<String> = lines
                .iter()
                .filter(|l| l.name.eq_ignore_ascii_case("connection"))
                .flat_map(|l| l.value.split(',').map(|t| t.trim().to_ascii_lowercase()))
                .filter(|t| !t.is_empty() && t != "keep-alive" && t != "close")
                .collect();
            let mut expected: String = lines
                .iter()
                .filter(|l| !is_hop_by_hop(l.name.as_bytes()))
                .filter(|l| !l.name.eq_ignore_ascii_case("x-ca-request-id"))
                .filter(|l| !named.contains(&l.name.to_ascii_lowercase()))
                .map(|l| format!("{}: {}\r\n", l.name, l.value))
                .collect();
            expected.push_str("Content-Length: 0\r\n");
            let h = head(&input, false).unwrap().unwrap();
            proptest::prop_assert_eq!(String::from_utf8(h.block.lines.to_vec()).unwrap(), expected);
            proptest::prop_assert!(h.block.has_length);
            let dated = lines.iter().any(|l| {
                l.name.eq_ignore_ascii_case("date") && !named.iter().any(|n| n == "date")
            });
            proptest::prop_assert_eq!(h.block.has_date, dated);
        }
    }
}
