//! The data plane on a thread per core, as nginx runs a worker per core.
//!
//! Each thread has its own single-threaded tokio runtime and its own listening socket on the
//! same address (`SO_REUSEPORT`: the kernel spreads new connections over the sockets). A
//! connection, its requests and the backend connections they use (see [`crate::pool`]) stay
//! on one thread, so a proxied request costs no cross-thread wake-up and no work stealing.
//! What the threads share is the routing snapshot, the limiters and the counters, which are
//! lock-free, and the connection cap.

use crate::plane::Dataplane;
use crate::server::{ServerLimits, connection_permits, serve_one};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// `n` listening sockets on `addr`, all with `SO_REUSEPORT`. With port 0 the first socket
/// picks the port and the others join it.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The data plane's server threads; see [`serve_threads`].
#[derive(Debug)]
pub struct ServerThreads {
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerThreads {
    /// Waits until every thread has drained and stopped; the first error, if any.
    pub async fn join(self) -> io::Result<()> {
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            let mut first = Ok(());
            for t in threads {
                let r = t
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a data-plane thread panicked")));
                if first.is_ok() {
                    first = r;
                }
            }
            first
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

/// Serves the data plane on each of `listeners` from its own thread and single-threaded
/// runtime, until `shutdown` turns true; then each thread drains its connections (up to
/// `limits.drain_timeout`) and stops. `limits.max_connections` caps the threads together.
pub fn serve_threads(
    listeners: Vec<std::net::TcpListener>,
    dataplane: Dataplane,
    limits: ServerLimits,
    tls: Option<tls::ServerTls>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<ServerThreads> {
    let permits = connection_permits(&limits);
    let limits = Arc::new(limits);
    let mut threads = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (dp, limits, permits, tls) = (
            dataplane.clone(),
            limits.clone(),
            permits.clone(),
            tls.clone(),
        );
        let mut shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gw-http-{index}"))
            .spawn(move || {
                crate::pool::set_shard(index);
                runtime.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let stop = async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    };
                    serve_one(listener, dp, limits, permits, tls, stop).await
                })
            })?;
        threads.push(thread);
    }
    Ok(ServerThreads { threads })
}
