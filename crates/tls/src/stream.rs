//! Accepting TLS connections for tonic, and dialling them for tonic's channels.

use crate::{ClientTls, ServerTls};
use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A server-side TLS connection, ready for tonic.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
}

impl TlsConn {
    /// The client's certificate chain, leaf first, when it presented one.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.inner.get_ref().1.peer_certificates()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// Does the server side of a handshake on `tcp` with the config in force now, within `timeout`.
pub async fn accept(
    tls: &ServerTls,
    tcp: TcpStream,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(done) => done,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// TLS connections accepted on `listener`, for tonic's `serve_with_incoming`.
///
/// Each handshake runs in its own task, bounded by `handshake_timeout`, so a client that
/// stalls mid-handshake holds up no one. Connections whose handshake fails (no client
/// certificate, one from another CA, not TLS at all) are logged and dropped: they never reach
/// the service. `what` names the listener in those logs.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    handshake_timeout: Duration,
    what: &'static str,
) -> impl Stream<Item = io::Result<TlsConn>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        // Out of descriptors or memory: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match accept(&tls, tcp, handshake_timeout).await {
                    Ok(inner) => {
                        let _ = tx.send(TlsConn { inner }).await;
                    }
                    Err(e) => refused(what, peer, &e),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}

fn refused(what: &str, peer: SocketAddr, e: &io::Error) {
    tracing::warn!(listener = what, %peer, error = %e, "TLS handshake refused");
}

/// Dials `host:port` and does the client side of TLS with the config in force now. The
/// server's certificate must chain to the configured CA and name `host` (a DNS name or an IP
/// address; `[::1]` as written in a URI is accepted).
pub async fn connect(
    tls: &ClientTls,
    host: &str,
    port: u16,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} is not a DNS name or IP address: {e}"),
        )
    })?;
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(tls.current())
        .connect(name, tcp)
        .await
}

/// Dials TCP and does the client side of TLS, for tonic's `Endpoint::connect_with_connector`.
///
/// The server's certificate must chain to the configured CA and name the host of the URI
/// (a DNS name or an IP address). The URI's scheme is ignored: TLS is always used.
#[derive(Clone, Debug)]
pub struct Connector {
    tls: ClientTls,
}

impl Connector {
    pub fn new(tls: ClientTls) -> Self {
        Connector { tls }
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URI"))?;
            let port = uri.port_u16().unwrap_or(443);
            Ok(TokioIo::new(connect(&tls, host, port).await?))
        })
    }
}
