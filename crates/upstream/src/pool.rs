//! Keep-alive connections to the backends, per backend authority: sockets for the direct
//! exchange of bodiless requests ([`crate::direct`]) and hyper HTTP/1.1 connections
//! (`hyper::client::conn::http1`) for requests with a body.
//!
//! The compiled routes hold their backend's [`HostPool`], so the request path does no lookup.
//! A connection is checked out for one request and comes back when its response body has been
//! read to the end (see [`crate::body::ResponseBody`]); one whose response was cut short, or that
//! failed, is dropped, which closes it. Checkout takes the most recently returned connection
//! that is ready for a new request (LIFO, so the hot connections stay warm and the others age
//! out); connections idle for longer than the idle timeout are closed, at the latest by a
//! reaper that runs every half timeout while the pool has connections.

use crate::limited::LimitedBody;
use bytes::BytesMut;
use decide::per_thread::PerThread;
use decide::{Clock, DataplaneOptions, Nanos, Upstreams};
use http::uri::Authority;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;

/// Room made in a backend connection's read buffer before each read.
pub(crate) const READ_RESERVE: usize = 8 * 1024;

pub(crate) type Sender = SendRequest<LimitedBody>;

/// How the pools connect and keep connections.
#[derive(Clone)]
pub(crate) struct PoolOptions {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

/// The pools of all backends, by authority. Touched at publish (and scrape) only.
pub struct BackendPools {
    options: PoolOptions,
    pools: Mutex<HashMap<Authority, Arc<HostPool>>>,
}

/// The data plane's backends: routes hold their backend's [`HostPool`].
impl Upstreams for BackendPools {
    type Pool = Arc<HostPool>;

    fn new(options: &DataplaneOptions) -> Self {
        BackendPools::new(PoolOptions {
            clock: options.clock.clone(),
            connect_timeout: options.backend_connect_timeout,
            idle_timeout: options.backend_pool_idle_timeout,
            max_idle: options.backend_pool_max_idle_per_host,
        })
    }

    fn pool(&self, authority: &Authority) -> Arc<HostPool> {
        self.get(authority)
    }

    fn release(&self, authorities: &[Authority]) {
        BackendPools::release(self, authorities);
    }

    fn retain_used(&self) {
        BackendPools::retain_used(self);
    }

    fn len(&self) -> usize {
        lock(&self.pools).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BackendPools {
    pub(crate) fn new(options: PoolOptions) -> Self {
        BackendPools {
            options,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of `authority`, shared by every route to it.
    pub(crate) fn get(&self, authority: &Authority) -> Arc<HostPool> {
        lock(&self.pools)
            .entry(authority.clone())
            .or_insert_with(|| Arc::new(HostPool::new(authority.clone(), self.options.clone())))
            .clone()
    }

    /// Forgets the pools of `authorities` that no route uses any more (their connections close
    /// when the last in-flight request on them ends). By key, so that a configuration change
    /// costs what it changed: called with the backends of the routes it retired.
    pub(crate) fn release<'a>(&self, authorities: impl IntoIterator<Item = &'a Authority>) {
        let mut pools = lock(&self.pools);
        for a in authorities {
            if pools.get(a).is_some_and(|p| Arc::strong_count(p) == 1) {
                pools.remove(a);
            }
        }
    }

    /// Forgets every pool no route uses any more: the sweep for those [`release`](Self::release)
    /// found still in use by a request in flight. Run at scrapes, which walk everything anyway.
    pub(crate) fn retain_used(&self) {
        lock(&self.pools).retain(|_, p| Arc::strong_count(p) > 1);
    }
}

struct Idle<C> {
    conn: C,
    /// When the connection came back idle.
    used: Nanos,
}

/// One idle list per data-plane thread (see [`crate::per_thread`]); most recently returned at
/// the back. A connection is registered with the runtime of the thread that opened it, so a
/// server thread that reuses only its own connections never wakes another thread for a request.
type Shards<C> = PerThread<Mutex<VecDeque<Idle<C>>>>;

/// This thread's idle list of `shards`.
fn my_shard<C>(shards: &Shards<C>) -> MutexGuard<'_, VecDeque<Idle<C>>> {
    lock(shards.local())
}

/// The idle connections to one backend authority.
pub struct HostPool {
    authority: Authority,
    options: PoolOptions,
    idle_nanos: u64,
    /// hyper connections, for requests with a body.
    idle: Shards<Sender>,
    /// Sockets for the direct exchange of bodiless requests.
    direct: Shards<BackendStream>,
    reaper: AtomicBool,
}

/// Why no connection could be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout,
    Io(io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect timed out"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl HostPool {
    fn new(authority: Authority, options: PoolOptions) -> Self {
        HostPool {
            idle_nanos: u64::try_from(options.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            authority,
            options,
            idle: PerThread::default(),
            direct: PerThread::default(),
            reaper: AtomicBool::new(false),
        }
    }

    /// An idle connection ready for a request, if there is one.
    pub(crate) fn checkout(&self, now: Nanos) -> Option<Sender> {
        let mut idle = my_shard(&self.idle);
        while let Some(oldest) = idle.front() {
            if now.saturating_sub(oldest.used) > self.idle_nanos || oldest.conn.is_closed() {
                idle.pop_front();
            } else {
                break;
            }
        }
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.conn.is_ready() {
                return idle.remove(i).map(|e| e.conn);
            }
            if entry.conn.is_closed() {
                idle.remove(i);
            }
            // Otherwise it is finishing its previous exchange; leave it for the next request.
        }
        None
    }

    /// Returns a connection whose last response has been read to the end.
    pub(crate) fn put(self: &Arc<Self>, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        self.park(&self.idle, tx, self.now());
    }

    /// An idle socket for a direct exchange, if one is there and still open.
    pub(crate) fn checkout_direct(&self, now: Nanos) -> Option<BackendStream> {
        let mut idle = my_shard(&self.direct);
        while let Some(newest) = idle.pop_back() {
            if now.saturating_sub(newest.used) > self.idle_nanos {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if newest.conn.is_alive() {
                return Some(newest.conn);
            }
        }
        None
    }

    /// Returns a socket whose last response has been read to the end, as used at `used`.
    pub(crate) fn put_direct(self: &Arc<Self>, stream: BackendStream, used: Nanos) {
        self.park(&self.direct, stream, used);
    }

    /// The pool's clock.
    pub(crate) fn now(&self) -> Nanos {
        self.options.clock.now()
    }

    fn park<C>(self: &Arc<Self>, shards: &Shards<C>, conn: C, used: Nanos) {
        if self.options.max_idle == 0 {
            return;
        }
        let mut idle = my_shard(shards);
        if idle.len() >= self.options.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, used });
        drop(idle);
        if !self.reaper.load(Relaxed) {
            self.start_reaper();
        }
    }

    fn reap(&self) -> bool {
        let now = self.options.clock.now();
        let fresh = |used: Nanos| now.saturating_sub(used) <= self.idle_nanos;
        let mut any = false;
        for idle in self.idle.all() {
            let mut idle = lock(idle);
            idle.retain(|e| fresh(e.used) && !e.conn.is_closed());
            any |= !idle.is_empty();
        }
        for idle in self.direct.all() {
            let mut idle = lock(idle);
            idle.retain(|e| fresh(e.used) && e.conn.is_alive());
            any |= !idle.is_empty();
        }
        any
    }

    /// A new TCP connection to the backend, within the connect timeout.
    pub(crate) async fn dial(&self) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.options.connect_timeout, self.tcp())
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new hyper connection to the backend, its connection task spawned.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<Sender, ConnectError> {
        let stream = self.dial().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(tx)
    }

    async fn tcp(&self) -> io::Result<TcpStream> {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        // An IP literal needs no resolver (IPv6 ones come bracketed).
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse() {
            return TcpStream::connect(SocketAddr::new(ip, port)).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host((host, port)).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
        }))
    }

    /// Closes connections idle past the timeout even when no request comes to check them.
    /// Runs while the pool has idle connections and any route still uses it.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaper.swap(true, Relaxed) {
            return;
        }
        let weak: Weak<HostPool> = Arc::downgrade(self);
        let every = (self.options.idle_timeout / 2).max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                if !pool.reap() {
                    pool.reaper.store(false, Relaxed);
                    return;
                }
            }
        });
    }
}

/// A keep-alive connection to a backend, with its buffers: bytes read and not yet consumed, and
/// the request head being written (kept to reuse its allocation).
pub(crate) struct BackendStream {
    pub(crate) io: TcpStream,
    pub(crate) read: BytesMut,
    pub(crate) write: Vec<u8>,
    /// Scratch space for parsing response heads.
    pub(crate) kept: Vec<[u32; 4]>,
    /// Bytes read from the backend and not yet reported as backend traffic (see
    /// [`crate::direct`]).
    pub(crate) received: u64,
}

impl BackendStream {
    pub(crate) fn new(io: TcpStream) -> Self {
        BackendStream {
            io,
            read: BytesMut::with_capacity(READ_RESERVE),
            write: Vec::with_capacity(1024),
            kept: Vec::new(),
            received: 0,
        }
    }

    /// Whether an idle connection can take a request: the backend has neither closed it nor
    /// sent anything unasked. Costs a syscall only when the socket has signalled readiness.
    pub(crate) fn is_alive(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last response; a read tells.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        }
    }
}
