//! The data plane on a thread per core, as nginx runs a worker per core.
//!
//! Each server thread has its own single-threaded tokio runtime. A connection, its requests and
//! the backend connections they use (see [`crate::pool`]) stay on one thread, so a proxied
//! request costs no cross-thread wake-up and no work stealing. What the threads share is the
//! routing snapshot, the limiters and the counters, which are lock-free, and the connection cap.
//!
//! One more thread accepts, and hands each new connection to the server thread serving the
//! fewest (ties in turn). Why not a `SO_REUSEPORT` socket per thread, where the kernel hashes
//! connections over the sockets: the hash knows nothing of load, and with few long-lived
//! keep-alive connections (a load balancer's, a load tester's) it left threads serving 38 and 27
//! of 65, which showed in the latency tail. Counting is what Envoy's "exact balance" does too.
//! The hand-off costs a wake-up per new connection, nothing per request.

use crate::conn::{Handed, Load, Loads, ServerLimits, Source, Ticket, accept, connection_permits};
use crate::server::serve_one;
use crate::spans::RequestHooks;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};
use upstream::Dataplane;

/// The data plane's listening socket on `addr`.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The data plane's server threads; see [`serve_threads`].
#[derive(Debug)]
pub struct ServerThreads {
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    loads: Arc<Loads>,
}

impl ServerThreads {
    /// Connections open on each server thread.
    pub fn connections_per_thread(&self) -> Vec<usize> {
        self.loads.counts()
    }

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

/// Serves the data plane from `threads` server threads, each with its own single-threaded
/// runtime, and an accepting thread that hands them the connections of `listener` (made with
/// [`bind_listener`]), until `shutdown` turns true, with a line per request in the access log
/// and a span per request to the span sink, when `hooks` has them; then each thread drains its connections (up
/// to `limits.drain_timeout`) and stops. `limits.max_connections` caps the threads together.
pub fn serve_threads(
    listener: std::net::TcpListener,
    threads: usize,
    dataplane: Dataplane,
    limits: ServerLimits,
    tls: Option<tls::ServerTls>,
    hooks: RequestHooks,
    shutdown: watch::Receiver<bool>,
) -> io::Result<ServerThreads> {
    let n = threads.max(1);
    let permits = connection_permits(&limits);
    let limits = Arc::new(limits);
    let loads = Arc::new(Loads::new(n));
    let mut handles = Vec::with_capacity(n + 1);
    let mut hand_to = Vec::with_capacity(n);
    for index in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        hand_to.push(tx);
        let (dp, limits, tls) = (dataplane.clone(), limits.clone(), tls.clone());
        let hooks = hooks.clone();
        let stop = stopped(shutdown.clone());
        handles.push(spawn_runtime_thread(
            format!("gw-http-{index}"),
            move || {
                decide::per_thread::set_slot(index);
                async move { serve_one(Source::Handed(rx), dp, limits, tls, hooks, stop).await }
            },
        )?);
    }
    let acceptor = Acceptor {
        permits,
        loads: loads.clone(),
        hand_to,
    };
    let stop = stopped(shutdown);
    handles.push(spawn_runtime_thread(
        "gw-http-accept".into(),
        move || async move { acceptor.run(listener, stop).await },
    )?);
    Ok(ServerThreads {
        threads: handles,
        loads,
    })
}

/// Resolves when `shutdown` turns true (or its sender goes).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A thread running `task` on its own single-threaded runtime.
fn spawn_runtime_thread<F, Fut>(
    name: String,
    task: F,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name)
        .spawn(move || runtime.block_on(task()))
}

/// Accepts connections and hands each to the least busy server thread.
struct Acceptor {
    permits: Arc<Semaphore>,
    loads: Arc<Loads>,
    hand_to: Vec<mpsc::UnboundedSender<Handed>>,
}

impl Acceptor {
    async fn run(
        self,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::pin!(stop);
        let mut turn = 0;
        loop {
            // A permit first: clients over the cap wait in the listen backlog.
            let permit = tokio::select! {
                biased;
                _ = &mut stop => break,
                permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = &mut stop => break,
                accepted = accept(&listener) => accepted,
            };
            // Registered anew by the thread that serves it.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand over an accepted connection");
                    continue;
                }
            };
            let thread = self.loads.pick(turn);
            turn = (turn + 1) % self.hand_to.len();
            let load = Load::new(self.loads.clone(), thread);
            let handed = Handed {
                stream,
                peer,
                ticket: Ticket::new(permit, Some(load)),
            };
            if self.hand_to[thread].send(handed).is_err() {
                // That thread has stopped: so is the server.
                break;
            }
        }
        // Dropping the senders tells the server threads that no more connections come.
        Ok(())
    }
}
