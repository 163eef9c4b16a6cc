//! A client connection as the servers keep it: the limits it is served under, what a request
//! handler knows of it ([`ConnInfo`]), its socket with activity tracking, its place under the
//! connection cap and in its thread's load, and where accepted connections come from.

use decide::UsageHandle;
use http::HeaderValue;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use upstream::BackendPools;

/// Limits protecting the server from large and slow clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Larger request bodies get 413: refused up front when `Content-Length` says so, cut off
    /// when a streamed body grows past it.
    pub max_body_bytes: u64,
    /// Larger request heads (request line and headers) get 431.
    pub max_header_bytes: usize,
    /// A request head must arrive within this time (HTTP/1); otherwise the connection is closed.
    /// hyper starts this timer as soon as a connection waits for a request, so it also bounds
    /// how long an idle HTTP/1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves for this long, while no request waits on a backend,
    /// is closed (idle keep-alive connections, clients that stop reading, stalled handshakes).
    pub idle_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take before their connections are dropped.
    pub drain_timeout: Duration,
    /// Request headers whose names have an underscore are passed on instead of dropped (see
    /// [`decide::head::has_underscore_names`]).
    pub allow_underscore_headers: bool,
    /// A tunnel (an upgraded connection, e.g. a WebSocket) on which no byte moves either way
    /// for this long is closed. It replaces `idle_timeout` once the connection is upgraded:
    /// WebSocket clients often go quiet for minutes between messages.
    pub tunnel_idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 8 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            allow_underscore_headers: false,
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// What a request handler knows about its connection.
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The peer's IP address as a header value (for `X-Forwarded-For`).
    pub(crate) peer_ip: HeaderValue,
    /// The client's address, for IP access control.
    pub(crate) peer_addr: std::net::IpAddr,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    pub(crate) limits: Arc<ServerLimits>,
    /// Requests of this connection waiting on a backend; the idle timer leaves them alone
    /// (the backend timeout bounds them).
    pub(crate) awaiting_backend: AtomicU32,
    /// Bumped whenever bytes move on the socket.
    pub(crate) activity: AtomicU64,
    /// Set by [`crate::h1`] while it waits for a request head, and the heads it has read: the
    /// watchdog times the wait out (hyper times its own).
    pub(crate) waiting_head: AtomicBool,
    pub(crate) heads: AtomicU64,
    /// The server is shutting down: finish the request in hand, then close.
    pub(crate) draining: AtomicBool,
    /// The node is leaving ([`decide::Dataplane::begin_closing`]): answer HTTP/1 requests
    /// with `Connection: close`, so clients reconnect elsewhere while this node still serves.
    pub(crate) closing: Arc<AtomicBool>,
    /// On an HTTP/1 connection served by hyper: whose response is being written, so that
    /// the socket's writes ([`TrackedIo`]) are counted as that response's outbound traffic.
    /// hyper writes HTTP/1 responses one after another, and the next is handed to it only
    /// once the previous has been encoded.
    pub(crate) sending: Mutex<Option<UsageHandle<BackendPools>>>,
}

impl ConnInfo {
    /// The response hyper is about to write is counted in `usage`.
    pub(crate) fn now_sending(&self, usage: Option<UsageHandle<BackendPools>>) {
        *self.sending.lock().unwrap_or_else(|e| e.into_inner()) = usage;
    }

    fn count_sent(&self, n: usize) {
        if let Some(usage) = &*self.sending.lock().unwrap_or_else(|e| e.into_inner()) {
            usage.add_bytes(n as u64);
        }
    }
}

pub(crate) struct AwaitingBackend<'a>(&'a AtomicU32);

impl<'a> AwaitingBackend<'a> {
    pub(crate) fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Relaxed);
        AwaitingBackend(counter)
    }
}

impl Drop for AwaitingBackend<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A socket that notes when bytes move, for the idle timer, and, once `meter` is set, counts
/// what is written to it as outbound traffic of the response being sent
/// ([`ConnInfo::sending`]). Over TLS it wraps the TLS stream: it sees the plaintext HTTP
/// bytes. Only the connection's own task polls it, so a relaxed store of a private count is
/// enough.
pub(crate) struct TrackedIo<S> {
    inner: S,
    info: Arc<ConnInfo>,
    moved: u64,
    /// Writes are counted in [`ConnInfo::sending`] (set when hyper serves the connection; the
    /// lean loop counts what it writes itself).
    pub(crate) meter: bool,
    /// Bytes already read from `inner` and to be read again first: what `crate::h1` had read
    /// when it handed the connection to hyper.
    pub(crate) rewind: bytes::Bytes,
}

impl<S> TrackedIo<S> {
    pub(crate) fn new(inner: S, info: Arc<ConnInfo>) -> Self {
        TrackedIo {
            inner,
            info,
            moved: 0,
            meter: false,
            rewind: bytes::Bytes::new(),
        }
    }

    fn bump(&mut self) {
        self.moved += 1;
        self.info.activity.store(self.moved, Relaxed);
    }

    fn wrote(&mut self, n: usize) {
        self.bump();
        if self.meter {
            self.info.count_sent(n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.rewind.is_empty() {
            let n = self.rewind.len().min(buf.remaining());
            let head = self.rewind.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.bump();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

/// The connection cap: one permit per connection served, shared by every accept loop of a
/// server.
pub(crate) fn connection_permits(limits: &ServerLimits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_connections.max(1)))
}

/// What a served connection holds until it ends: its place under the connection cap, and its
/// count in its server thread's load (see `crate::threads`).
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    _load: Option<Load>,
}

impl Ticket {
    pub(crate) fn new(permit: OwnedSemaphorePermit, load: Option<Load>) -> Self {
        Ticket {
            _permit: permit,
            _load: load,
        }
    }
}

/// A connection accepted on one thread for another to serve.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) ticket: Ticket,
}

/// Where an accept loop's connections come from.
pub(crate) enum Source {
    /// Accepted here; each first takes a permit, so that clients over the cap wait in the
    /// listen backlog.
    Listener(TcpListener, Arc<Semaphore>),
    /// Accepted elsewhere and handed over, permit and all.
    Handed(mpsc::UnboundedReceiver<Handed>),
}

impl Source {
    /// The next connection; `None` once a handing thread has stopped.
    pub(crate) async fn next(&mut self) -> Option<(TcpStream, SocketAddr, Ticket)> {
        match self {
            Source::Listener(listener, permits) => {
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (stream, peer) = accept(listener).await;
                Some((stream, peer, Ticket::new(permit, None)))
            }
            Source::Handed(handed) => loop {
                let Handed {
                    stream,
                    peer,
                    ticket,
                } = handed.recv().await?;
                match TcpStream::from_std(stream) {
                    Ok(stream) => return Some((stream, peer, ticket)),
                    Err(e) => tracing::warn!(error = %e, "cannot serve a handed connection"),
                }
            },
        }
    }
}

/// Accepts a connection, backing off on errors (out of descriptors or memory) instead of
/// spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Open connections per server thread.
#[derive(Debug)]
pub(crate) struct Loads(Vec<AtomicUsize>);

impl Loads {
    /// No connections yet on any of `n` threads.
    pub(crate) fn new(n: usize) -> Self {
        Loads((0..n).map(|_| AtomicUsize::new(0)).collect())
    }

    /// The thread to serve the next connection: the one serving the fewest, the first from
    /// `start` among equals (so that ties go round in turn).
    /// Each thread's open connections.
    pub(crate) fn counts(&self) -> Vec<usize> {
        self.0.iter().map(|n| n.load(Relaxed)).collect()
    }

    pub(crate) fn pick(&self, start: usize) -> usize {
        let n = self.0.len();
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.0[i].load(Relaxed))
            .unwrap_or(0)
    }
}

/// One connection counted against a server thread while it is served.
pub(crate) struct Load {
    loads: Arc<Loads>,
    thread: usize,
}

impl Load {
    pub(crate) fn new(loads: Arc<Loads>, thread: usize) -> Self {
        loads.0[thread].fetch_add(1, Relaxed);
        Load { loads, thread }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.loads.0[self.thread].fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_thread_and_ties_take_turns() {
        let loads = Arc::new(Loads::new(3));
        let mut held = Vec::new();
        for turn in 0..6 {
            let thread = loads.pick(turn % 3);
            held.push(Load::new(loads.clone(), thread));
        }
        let per_thread = loads.counts();
        assert_eq!(per_thread, [2, 2, 2]);
        // Thread 1's connections close: it gets the next ones, whoever's turn it is.
        held.retain(|l| l.thread != 1);
        assert_eq!(loads.pick(0), 1);
        assert_eq!(loads.pick(2), 1);
        held.push(Load::new(loads.clone(), 1));
        held.push(Load::new(loads.clone(), 1));
        // Equal again: the turn decides.
        assert_eq!((loads.pick(0), loads.pick(1), loads.pick(2)), (0, 1, 2));
        drop(held);
        assert_eq!(loads.counts(), [0, 0, 0]);
    }
}
