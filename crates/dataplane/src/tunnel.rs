//! Tunnels: a client connection switched to another protocol (WebSocket, or whatever the
//! backend agreed to in its `101 Switching Protocols`), relayed byte for byte to the backend
//! connection that switched with it.
//!
//! The upgrade request itself went through everything a call goes through (routing, access
//! checks, throttling, the instance ceiling) and was counted as one call; what follows is no
//! longer HTTP and is not inspected. Its bytes, both ways, count as the API's outbound
//! traffic, as response bytes do (the bytes read from the backend also as backend traffic,
//! when the backend is billed for); they are counted as each write completes, so a long
//! tunnel's traffic reaches the usage counters as it flows and nothing is left to flush when
//! it closes.
//!
//! A tunnel runs in its client connection's task, so it holds the connection's place under
//! the connection cap and is one of the connections a draining server waits for: on shutdown
//! it is kept for the drain period, then dropped with its task, which closes both sockets.
//! It ends when both sides have closed (each side's end of stream is passed on as a
//! half-close), when either fails, or when no byte has moved either way for the tunnel idle
//! timeout.

use crate::conn::ConnInfo;
use bytes::Bytes;
use decide::UsageHandle;
use http::{Response, StatusCode};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use upstream::{BackendPools, BackendUpgrade, Dataplane, ResponseBody, UpgradedBackend};

/// Bytes read at once from either side.
const RELAY_BUF: usize = 16 * 1024;

/// A tunnel to open once its 101 has been written to the client: in the response's extensions
/// (which must be `Clone`), taken once by whoever serves the connection.
#[derive(Clone)]
pub(crate) struct Pending(Arc<Mutex<Option<Parts>>>);

struct Parts {
    backend: UpgradedBackend,
    usage: Option<UsageHandle<BackendPools>>,
    dataplane: Dataplane,
}

impl Pending {
    fn take(&self) -> Option<Parts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Turns the backend connection of a 101 into a [`Pending`] tunnel counted in the response's
/// usage. Called once the response knows whose usage it counts in.
pub(crate) fn prepare(response: &mut Response<ResponseBody>, dataplane: &Dataplane) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(backend) = response
        .extensions_mut()
        .remove::<BackendUpgrade>()
        .and_then(|upgrade| upgrade.take())
    else {
        return;
    };
    let parts = Parts {
        backend,
        usage: response.body().usage().cloned(),
        dataplane: dataplane.clone(),
    };
    response
        .extensions_mut()
        .insert(Pending(Arc::new(Mutex::new(Some(parts)))));
}

/// The tunnel a response opens, if it is a 101 with its backend connection.
pub(crate) fn pending<B>(response: &Response<B>) -> Option<Pending> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    response.extensions().get::<Pending>().cloned()
}

/// Counts a tunnel as open (the `open_tunnels` gauge) for as long as it lives.
struct Open(Dataplane);

impl Open {
    fn new(dataplane: Dataplane) -> Self {
        dataplane.count_tunnel(true);
        Open(dataplane)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.count_tunnel(false);
    }
}

/// Relays `client` and the tunnel's backend connection to each other until the tunnel ends.
/// `client_read`: what the client sent after its upgrade request that has been read already.
pub(crate) async fn relay<C>(client: C, client_read: Bytes, pending: Pending, info: &ConnInfo)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(Parts {
        backend,
        usage,
        dataplane,
    }) = pending.take()
    else {
        return;
    };
    let _open = Open::new(dataplane);
    let moved = AtomicU64::new(0);
    let (client_rx, client_tx) = tokio::io::split(client);
    let (backend_rx, backend_tx) = backend.io.into_split();
    let up = pump(client_rx, backend_tx, client_read, &moved, |n| {
        if let Some(usage) = &usage {
            usage.add_bytes(n);
        }
    });
    let down = pump(backend_rx, client_tx, backend.pending, &moved, |n| {
        if let Some(usage) = &usage {
            usage.add_bytes(n);
            usage.add_backend_bytes(n);
        }
    });
    tokio::pin!(up, down);
    let idle = info
        .limits
        .tunnel_idle_timeout
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval((idle / 4).max(Duration::from_millis(5)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut up_done, mut down_done) = (false, false);
    let (mut last_seen, mut last_progress) = (0, Instant::now());
    while !(up_done && down_done) {
        tokio::select! {
            ended = &mut up, if !up_done => match ended {
                Ok(()) => up_done = true,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "tunnel: client side failed");
                    break;
                }
            },
            ended = &mut down, if !down_done => match ended {
                Ok(()) => down_done = true,
                Err(e) => {
                    tracing::debug!(peer = %info.peer, error = %e, "tunnel: backend side failed");
                    break;
                }
            },
            _ = ticker.tick() => {
                let seen = moved.load(Relaxed);
                let now = Instant::now();
                if seen != last_seen {
                    (last_seen, last_progress) = (seen, now);
                } else if now.duration_since(last_progress) >= idle {
                    tracing::debug!(peer = %info.peer, "closing idle tunnel");
                    break;
                }
            }
        }
    }
    // Dropping both sides closes both sockets.
}

/// Copies `from` to `to` (after `first`), counting each write in `count` and noting it in
/// `moved`, until `from` ends; then passes the end on (a half-close of `to`).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    first: Bytes,
    moved: &AtomicU64,
    count: impl Fn(u64),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        to.write_all(&first).await?;
        count(first.len() as u64);
        moved.fetch_add(1, Relaxed);
    }
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // The peer may already be gone; its end is all that was left to pass on.
            let _ = to.shutdown().await;
            return Ok(());
        }
        moved.fetch_add(1, Relaxed);
        to.write_all(&buf[..n]).await?;
        count(n as u64);
        moved.fetch_add(1, Relaxed);
    }
}
