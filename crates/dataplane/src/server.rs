//! The data-plane HTTP server: accepting, connection limits and timeouts, graceful shutdown, and
//! the request handler tying decision and proxy together.

use crate::access_log::{self, AccessLog};
use crate::conn::{
    AwaitingBackend, ConnInfo, ServerLimits, Source, Ticket, TrackedIo, connection_permits,
    ip_header,
};
use crate::sideline::{Next, Side, Sideline};
use crate::spans::{RequestHooks, RequestSpan, RequestSpans};
use decide::trace::{TRACEPARENT, TraceContext};
use decide::wire::{X_CA_KEY, X_CA_STAGE};
use decide::{Access, GatewayError, Stage};
use http::header::{CONTENT_LENGTH, HOST};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use upstream::{Client, Dataplane, ForwardError, RequestBody, ResponseBody, error_response};

fn http_builder(limits: &ServerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper answers heads over its buffer with a bare 431; the handler's own check (at
    // `max_header_bytes`, with a JSON body) comes first for anything up to twice the limit.
    let buf = (limits.max_header_bytes.saturating_mul(2)).max(64 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(buf)
        // A client that shuts down its sending side after its request still gets the answer.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(buf.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(256);
    builder
}

/// Serves the connections of `source` until `shutdown` resolves, then stops taking new ones,
/// asks every connection to finish its in-flight requests, and waits for them up to
/// `drain_timeout`.
pub(crate) async fn accept_loop<H, Fut>(
    mut source: Source,
    limits: Arc<ServerLimits>,
    tls: Option<tls::ServerTls>,
    handler: H,
    open_connections: Option<Dataplane>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = Arc::new(http_builder(&limits));
    let closing = open_connections
        .as_ref()
        .map(|dp| dp.closing_flag())
        .unwrap_or_default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = source.next() => next,
        };
        let Some((stream, peer, ticket)) = next else {
            break;
        };
        let info = Arc::new(ConnInfo {
            peer,
            peer_ip: ip_header(peer.ip()),
            peer_addr: peer.ip(),
            tls: tls.is_some(),
            limits: limits.clone(),
            awaiting_backend: AtomicU32::new(0),
            activity: AtomicU64::new(0),
            waiting_head: AtomicBool::new(false),
            heads: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            closing: closing.clone(),
            sending: std::sync::Mutex::new(None),
        });
        let conn = Connection {
            info,
            builder: builder.clone(),
            handler: handler.clone(),
            stop: stop_rx.clone(),
            _ticket: ticket,
            _open: Open::new(open_connections.clone()),
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => connections.spawn(conn.serve(stream, true)),
            Some(tls) => connections.spawn(conn.serve_tls(stream, tls.clone())),
        };
    }
    drop(source);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "drain deadline passed; dropping connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Counts a connection as open (the `open_connections` gauge) for as long as it lives.
struct Open(Option<Dataplane>);

impl Open {
    fn new(gauge: Option<Dataplane>) -> Self {
        if let Some(dp) = &gauge {
            dp.count_connection(true);
        }
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(dp) = &self.0 {
            dp.count_connection(false);
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection<H> {
    info: Arc<ConnInfo>,
    builder: Arc<Builder<TokioExecutor>>,
    handler: H,
    stop: watch::Receiver<bool>,
    _ticket: Ticket,
    _open: Open,
}

impl<H, Fut> Connection<H>
where
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    /// The TLS handshake first, bounded like a request head (a client that stalls in it is a
    /// slow-loris client too), then HTTP as usual. The connection's permit is held throughout.
    async fn serve_tls(self, stream: TcpStream, tls: tls::ServerTls) {
        let timeout = self.info.limits.header_read_timeout;
        match tls::accept(&tls, stream, timeout).await {
            Ok(stream) => self.serve(stream, false).await,
            Err(e) => {
                tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed");
            }
        }
    }

    /// Serves the connection; `lean`: with [`crate::h1`] first (plain text).
    async fn serve<S>(self, stream: S, lean: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            info,
            builder,
            handler,
            stop,
            ..
        } = self;
        serve_connection(stream, info, builder, handler, stop, lean).await
    }
}

/// Serves one connection: plain-text ones with [`crate::h1`] until a request needs hyper, then
/// (and TLS ones from the start) with hyper. A watchdog closes the connection when no byte moves
/// for the idle timeout while no request waits on a backend, or when [`crate::h1`] waits longer
/// than the header-read timeout for a request head.
async fn serve_connection<S, H, Fut>(
    stream: S,
    info: Arc<ConnInfo>,
    builder: Arc<Builder<TokioExecutor>>,
    handler: H,
    mut stop: watch::Receiver<bool>,
    lean: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let io = TrackedIo::new(stream, info.clone());
    let (mut watchdog, ticker) = Watchdog::new(&info.limits, lean);
    let mut side = Sideline::new(
        async move {
            let _ = stop.changed().await;
        },
        ticker,
    );
    let io = if lean {
        let served = crate::h1::serve(io, &info, &handler);
        tokio::pin!(served);
        let ended = loop {
            match side.next(&mut served).await {
                Next::Done(ended) => break ended,
                Next::Side(Side::Stop) => {
                    info.draining.store(true, Relaxed);
                    // Idle between requests: nothing to finish.
                    if info.waiting_head.load(Relaxed) {
                        return;
                    }
                }
                Next::Side(Side::Tick) => {
                    if watchdog.expired(&info) {
                        return;
                    }
                }
            }
        };
        match ended {
            crate::h1::Ended::Closed => return,
            crate::h1::Ended::Upgraded(io, read, tunnel) => {
                crate::tunnel::relay(io, read, tunnel, &info).await;
                return;
            }
            crate::h1::Ended::HandOff(mut io, read) => {
                io.rewind = read;
                io
            }
        }
    } else {
        io
    };
    let mut io = io;
    io.meter = true;
    let io = TokioIo::new(io);
    let service_info = info.clone();
    // A 101 with a tunnel, and the client connection hyper hands back after writing it.
    let upgraded: UpgradeSlot = Arc::default();
    let service_upgraded = upgraded.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        let info = service_info.clone();
        let upgraded = service_upgraded.clone();
        let on_upgrade = (req.version() == http::Version::HTTP_11
            && req.headers().contains_key(http::header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut req));
        let req = req.map(RequestBody::Incoming);
        let req_version = req.version();
        async move {
            let version = req_version;
            let mut response = handler(req, info.clone()).await;
            // hyper writes heads from the map only.
            if let Some(block) = response.body_mut().take_header_block() {
                block.into_map(response.headers_mut());
            }
            let tunnel = crate::tunnel::pending(&response);
            if let (Some(tunnel), Some(on_upgrade)) = (tunnel, on_upgrade) {
                *upgraded.lock().unwrap_or_else(|e| e.into_inner()) = Some((on_upgrade, tunnel));
            }
            // Leaving: hyper closes an HTTP/1 connection after a response that says so (a 101
            // ends HTTP on it anyway).
            if info.closing.load(Relaxed)
                && version < http::Version::HTTP_2
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            meter_outbound(&mut response, &info, version);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    if side.stopped() {
        // Stopped while the lean loop served: `draining` is set already.
        conn.as_mut().graceful_shutdown();
    }
    loop {
        match side.next(&mut conn).await {
            Next::Done(result) => {
                if let Err(e) = result {
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                }
                break;
            }
            Next::Side(Side::Stop) => {
                info.draining.store(true, Relaxed);
                conn.as_mut().graceful_shutdown();
            }
            Next::Side(Side::Tick) => {
                if watchdog.expired(&info) {
                    break; // dropping the connection closes the socket
                }
            }
        }
    }
    let upgraded = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((on_upgrade, tunnel)) = upgraded {
        // hyper has written the 101 and hands the connection back, with what it had read.
        match on_upgrade.await {
            Ok(client) => {
                // The tunnel counts its own traffic.
                info.now_sending(None);
                crate::tunnel::relay(TokioIo::new(client), bytes::Bytes::new(), tunnel, &info)
                    .await;
            }
            Err(e) => tracing::debug!(peer = %info.peer, error = %e, "upgrade failed"),
        }
    }
}

/// Where hyper's service leaves a tunnel to relay once the connection is handed back.
type UpgradeSlot =
    Arc<std::sync::Mutex<Option<(hyper::upgrade::OnUpgrade, crate::tunnel::Pending)>>>;

/// Arranges for the outbound traffic of a response hyper writes to be counted.
///
/// HTTP/1: the bytes hyper writes to the socket from now until the next response, exactly
/// what the client receives (status line, headers, body, chunk framing). On a pipelined
/// connection whose client reads slowly, the tail of one response may still sit in hyper's
/// buffer when the next is handed over and is then counted with the next: the connection's
/// total stays exact.
///
/// HTTP/2: the head as its HTTP/1 equivalent ([`decide::wire::http1_head_len`], with the
/// `date` and `content-length` headers hyper adds), and the body's data. Not the HPACK-encoded
/// frames: their size depends on what the connection sent before (the dynamic table), so the
/// same response would cost differently depending on the responses, even other tenants',
/// that preceded it on the connection; and connection-level frames (SETTINGS, WINDOW_UPDATE,
/// PING) belong to no response. A response costs the same whichever protocol the client chose.
fn meter_outbound(response: &mut Response<ResponseBody>, info: &ConnInfo, version: http::Version) {
    if version < http::Version::HTTP_2 {
        info.now_sending(response.body().usage().cloned());
        return;
    }
    use hyper::body::Body as _;
    let headers = response.headers();
    let mut head = decide::wire::http1_head_len(response.status(), headers);
    if !headers.contains_key(http::header::DATE) {
        head += DATE_LINE;
    }
    if !headers.contains_key(CONTENT_LENGTH)
        && !response.body().is_end_stream()
        && let Some(n) = response.body().size_hint().exact()
    {
        head += (b"content-length: \r\n".len() + n.to_string().len()) as u64;
    }
    let body = response.body_mut();
    body.add_sent(head);
    body.count_data_as_sent();
}

/// `date: Thu, 03 Dec 2026 08:56:07 GMT\r\n`, which hyper adds to every response.
const DATE_LINE: u64 = 37;

/// The per-connection timer: one tick every half timeout, instead of a timer per request.
struct Watchdog {
    idle: Duration,
    head: Duration,
    last_seen: u64,
    last_progress: Instant,
    last_heads: u64,
    head_wait_since: Option<Instant>,
}

impl Watchdog {
    /// The watchdog, and the ticker that says when to ask it.
    fn new(limits: &ServerLimits, lean: bool) -> (Self, tokio::time::Interval) {
        let idle = limits.idle_timeout.max(Duration::from_millis(1));
        let head = limits.header_read_timeout.max(Duration::from_millis(1));
        let period = if lean { idle.min(head) } else { idle };
        let mut ticker = tokio::time::interval((period / 2).max(Duration::from_millis(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog = Watchdog {
            idle,
            head,
            last_seen: 0,
            last_progress: Instant::now(),
            last_heads: 0,
            head_wait_since: None,
        };
        (watchdog, ticker)
    }

    /// Whether the connection has been idle, or waiting for a request head, for too long.
    fn expired(&mut self, info: &ConnInfo) -> bool {
        let now = Instant::now();
        let seen = info.activity.load(Relaxed);
        if seen != self.last_seen {
            self.last_seen = seen;
            self.last_progress = now;
        } else if info.awaiting_backend.load(Relaxed) == 0
            && now.duration_since(self.last_progress) >= self.idle
        {
            tracing::debug!(peer = %info.peer, "closing idle connection");
            return true;
        }
        // A head is awaited since the first tick that saw the wait with no new head since: the
        // deadline holds to within a tick (half the timeout).
        let heads = info.heads.load(Relaxed);
        if !info.waiting_head.load(Relaxed) || heads != self.last_heads {
            self.last_heads = heads;
            self.head_wait_since = None;
        }
        if info.waiting_head.load(Relaxed) {
            let since = *self.head_wait_since.get_or_insert(now);
            if now.duration_since(since) >= self.head {
                tracing::debug!(peer = %info.peer, "request head not read in time");
                return true;
            }
        }
        false
    }
}

/// Serves the data plane on `listener` until `shutdown` resolves, then drains in-flight
/// requests (up to `limits.drain_timeout`) and returns.
///
/// HTTP/1.1 and HTTP/2 (prior knowledge) are both accepted. The stage is chosen by the
/// `X-Ca-Stage` header (`RELEASE` by default, `PRE`, `TEST`).
///
/// Every response the gateway makes itself is JSON with `X-Ca-Request-Id` (see
/// [`GatewayError`]), except the two hyper makes before a request exists: a bare 400 for bytes
/// that do not parse as HTTP, and a bare 431 for a head larger than hyper's buffer (twice
/// `max_header_bytes`, at least 64 KiB; heads between the limit and that get the JSON 431).
pub async fn serve(
    listener: TcpListener,
    dataplane: Dataplane,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_tls(listener, dataplane, limits, None, shutdown).await
}

/// Like [`serve`], over TLS when `tls` is given (HTTP/2 or HTTP/1.1 by ALPN). The TLS handshake
/// counts against `header_read_timeout`, and the certificate in force when a client connects
/// is the one it gets (see [`tls::Reloadable`]).
pub async fn serve_tls(
    listener: TcpListener,
    dataplane: Dataplane,
    limits: ServerLimits,
    tls: Option<tls::ServerTls>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = connection_permits(&limits);
    serve_one(
        Source::Listener(listener, permits),
        dataplane,
        Arc::new(limits),
        tls,
        RequestHooks::default(),
        shutdown,
    )
    .await
}

/// One accept loop of the data plane; several may share `limits` and a connection cap.
pub(crate) async fn serve_one(
    source: Source,
    dataplane: Dataplane,
    limits: Arc<ServerLimits>,
    tls: Option<tls::ServerTls>,
    hooks: RequestHooks,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let dp = dataplane.clone();
    // This thread's own handle, and its batch handed over every FLUSH_EVERY and at the end.
    let access_log = hooks.access_log.map(|log| log.for_thread());
    let spans = hooks.spans;
    let ticker = access_log.clone().map(|log| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(access_log::FLUSH_EVERY).await;
                log.flush_local();
            }
        })
    });
    let last = access_log.clone();
    let handler = move |req: Request<RequestBody>, info: Arc<ConnInfo>| {
        let dp = dp.clone();
        let log = access_log.clone();
        let spans = spans.clone();
        async move { handle(&dp, &info, log.as_ref(), spans.as_deref(), req).await }
    };
    let served = accept_loop(source, limits, tls, handler, Some(dataplane), shutdown).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(log) = last {
        log.flush_local();
    }
    served
}

/// The host the client asked for: from the URI (HTTP/2, absolute form) or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .host()
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// Size of the request head as sent (close enough for a limit: HTTP/1 framing).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 7);
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn early_rejection<B>(req: &Request<B>, limits: &ServerLimits) -> (Stage, Option<GatewayError>) {
    let stage = match req.headers().get(X_CA_STAGE) {
        None => Ok(Stage::Release),
        Some(v) => Stage::from_header(v.as_bytes()).ok_or(()),
    };
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > limits.max_header_bytes {
        let limit = limits.max_header_bytes;
        return (
            stage.unwrap_or_default(),
            Some(GatewayError::UriTooLong { limit }),
        );
    }
    if head_size(req) > limits.max_header_bytes {
        let limit = limits.max_header_bytes;
        return (
            stage.unwrap_or_default(),
            Some(GatewayError::HeadersTooLarge { limit }),
        );
    }
    let Ok(stage) = stage else {
        return (
            Stage::Release,
            Some(GatewayError::BadRequest(
                "X-Ca-Stage must be RELEASE, PRE or TEST",
            )),
        );
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        let limit = limits.max_body_bytes;
        return (stage, Some(GatewayError::BodyTooLarge { limit }));
    }
    (stage, None)
}

/// Puts the request's path in its canonical form ([`decide::canonical_path`]), keeping its
/// query, so that routing, the access checks and the forwarded request all see one spelling.
///
/// The signature of a signed app call is checked against this canonical path, the one the
/// backend receives: a client must sign the canonical form of its path (the form `signer`
/// produces from any path it would send unchanged). Checking the path as sent and forwarding
/// another would let a signature over `/pub/../admin` authorise what the backend reads as
/// `/admin`; checking the canonical path means that what was signed, what was routed and what
/// is forwarded are always the same bytes. A client that signed a non-canonical spelling gets
/// a signature refusal, never a different resource.
fn canonicalize(req: &mut Request<RequestBody>) -> Result<(), decide::PathError> {
    let uri = req.uri();
    let canonical = match decide::canonical_path(uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(path) => path,
    };
    let mut pq = canonical;
    if let Some(query) = uri.query() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    // The canonical path is made of the characters the original one was: it parses.
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| decide::PathError::BadEscape)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| decide::PathError::BadEscape)?;
    Ok(())
}

/// The checks of a request head before routing ([`decide::head`]): one valid host, agreeing
/// with the target's authority; `Content-Length` lines merged when identical (different ones
/// are refused by both HTTP/1 parsers already, and again here); header names with underscores
/// dropped unless allowed. What is forwarded afterwards (`X-Forwarded-Host` included) comes
/// from the checked head only.
fn check_head(req: &mut Request<RequestBody>, limits: &ServerLimits) -> Result<(), GatewayError> {
    decide::head::request_host(req.version(), req.uri(), req.headers())
        .map_err(GatewayError::InvalidHost)?;
    decide::head::merge_content_length(req.headers_mut()).map_err(|()| {
        GatewayError::BadRequest("the request has Content-Length lines that disagree")
    })?;
    if !limits.allow_underscore_headers && decide::head::has_underscore_names(req.headers()) {
        decide::head::drop_underscore_names(req.headers_mut());
    }
    Ok(())
}

/// One request: decide, then forward or answer; and its access log line, when there is a log.
async fn handle(
    dp: &Dataplane,
    conn: &ConnInfo,
    access_log: Option<&AccessLog>,
    spans: Option<&dyn RequestSpans>,
    mut req: Request<RequestBody>,
) -> Response<ResponseBody> {
    let now = dp.now();
    let started = spans.map(|_| std::time::SystemTime::now());
    let request_id = dp.next_request_id();
    let mut entry = access_log.map(|log| Entry::begin(log, conn, &req, &request_id));
    if let Err(error) = check_head(&mut req, &conn.limits) {
        let mut response = error_response(&error, &request_id.header_value());
        dp.record_unrouted_status(response.status());
        if let Some(entry) = entry {
            entry.finish(&mut response, None);
        }
        return response;
    }
    if let Err(e) = canonicalize(&mut req) {
        // Refused before routing: which API such a path would reach is exactly what is in
        // doubt, so no API's counters see it.
        let mut response =
            error_response(&GatewayError::InvalidPath(e), &request_id.header_value());
        dp.record_unrouted_status(response.status());
        if let Some(entry) = entry {
            entry.finish(&mut response, None);
        }
        return response;
    }
    let limits = &*conn.limits;
    let (stage, early) = early_rejection(&req, limits);
    let access = Access {
        peer: Some(conn.peer_addr),
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
    };
    let verdict = dp.decide_with(
        request_host(&req),
        stage,
        req.method(),
        req.uri().path(),
        early,
        Some(&access),
        now,
    );
    let admitted = verdict.admitted_api().is_some();
    // The client's trace continued with a span of this hop's, or a new one: what the backend
    // gets, and what the access log says.
    let trace = (admitted || entry.is_some() || spans.is_some()).then(|| {
        TraceContext::continue_or_start(req.headers().get(TRACEPARENT).map(|v| v.as_bytes()))
    });
    if let Some(entry) = &mut entry {
        entry.route(&verdict, stage, &req, trace.as_ref());
    }
    // The span's part of the request, taken before the request goes to the backend.
    let span = match (spans, started, trace) {
        (Some(_), Some(start), Some(trace)) => Some(RequestSpan {
            trace,
            start,
            end: start,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            group: verdict.group().map(str::to_owned),
            api: verdict.api().map(str::to_owned),
            stage: stage.as_str(),
            status: 0,
            error_code: None,
        }),
        _ => None,
    };
    let client_version = req.version();
    // For the access log: the backend's authority (only when there is a log line to write),
    // whether the request was sent twice, and the time to the answer.
    let mut sent: Option<(Option<http::uri::Authority>, bool, u64)> = None;
    let mut response = match verdict.admitted_api() {
        Some(api) => {
            if let Some(trace) = &trace {
                req.headers_mut().insert(TRACEPARENT, trace.header_value());
            }
            let forwarded = {
                let _waiting = AwaitingBackend::new(&conn.awaiting_backend);
                let client = Client {
                    ip: &conn.peer_ip,
                    tls: conn.tls,
                };
                upstream::forward_spread(
                    api.spread(),
                    api.timeout(),
                    req,
                    verdict.base_len(),
                    client,
                    request_id,
                    limits.max_body_bytes,
                    now,
                )
                .await
            };
            let elapsed = dp.now().saturating_sub(now);
            let backend = entry
                .as_ref()
                .and(forwarded.backend)
                .map(|i| api.spread().backend(i).authority().clone());
            sent = Some((backend, forwarded.retried, elapsed));
            let forwarded = forwarded.result;
            match forwarded {
                Ok(response) => {
                    api.record_latency(Duration::from_nanos(elapsed));
                    response
                }
                Err(e) => {
                    match e {
                        ForwardError::Timeout(_) => api.count_backend_timeout(),
                        ForwardError::Broken(_) | ForwardError::Connect => {
                            api.count_backend_error()
                        }
                        // The client's doing: the backend is not counted as failing.
                        ForwardError::BodyTooLarge | ForwardError::ClientBody => {}
                    }
                    let close = matches!(e, ForwardError::ClientBody);
                    let error = e.into_gateway_error(limits.max_body_bytes);
                    let mut response = error_response(&error, &request_id.header_value());
                    // After broken framing the rest of the connection cannot be read as
                    // requests: close it (HTTP/1; an HTTP/2 stream ends on its own).
                    if close && client_version < http::Version::HTTP_2 {
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    response
                }
            }
        }
        None => {
            let rejection = verdict.rejection();
            let error = rejection.unwrap_or(&GatewayError::BadRequest("no route"));
            error_response(error, &request_id.header_value())
        }
    };
    verdict.record_status(dp, response.status());
    if let (Some(spans), Some(mut span)) = (spans, span) {
        span.end = std::time::SystemTime::now();
        span.status = response.status().as_u16();
        span.error_code = response
            .headers()
            .get(decide::wire::X_CA_ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        spans.record(span);
    }
    response.body_mut().count_into(verdict.into_usage());
    crate::tunnel::prepare(&mut response, dp);
    if let Some(entry) = entry {
        let sent = sent
            .as_ref()
            .map(|(backend, retried, elapsed_ns)| access_log::Sent {
                backend: backend.as_ref().map(|a| a.as_str()),
                retried: *retried,
                elapsed_ns: *elapsed_ns,
            });
        entry.finish(&mut response, sent.as_ref());
    }
    response
}

/// A request's access log line while the request is served ([`access_log::Record`]).
struct Entry(access_log::Record);

impl Entry {
    fn begin(
        log: &AccessLog,
        conn: &ConnInfo,
        req: &Request<RequestBody>,
        request_id: &decide::request_id::RequestId,
    ) -> Entry {
        let bytes_in = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Entry(log.begin(&access_log::Arrived {
            request_id: request_id.as_bytes(),
            client: conn.peer,
            method: req.method().as_str(),
            host: request_host(req),
            path: req.uri().path(),
            bytes_in,
        }))
    }

    /// What the request was routed to, and who called.
    fn route(
        &mut self,
        verdict: &upstream::Verdict,
        stage: Stage,
        req: &Request<RequestBody>,
        trace: Option<&TraceContext>,
    ) {
        self.0.route(&access_log::Routed {
            group: verdict.group(),
            api: verdict.api(),
            stage: stage.as_str(),
            app_key: req.headers().get(X_CA_KEY).and_then(|v| v.to_str().ok()),
            account: verdict.account(),
            trace: trace.map(|t| (t.trace_id_hex(), t.span_id_hex())),
        });
    }

    /// The response's part; the line is written when the response body is done with.
    fn finish(
        mut self,
        response: &mut Response<ResponseBody>,
        sent: Option<&access_log::Sent<'_>>,
    ) {
        let code = response
            .headers()
            .get(decide::wire::X_CA_ERROR_CODE)
            .and_then(|v| v.to_str().ok());
        self.0.respond(response.status().as_u16(), code, sent);
        let record = self.0;
        response
            .body_mut()
            .on_end(Box::new(move |sent| record.end(sent)));
    }
}
