//! TLS for the gateway's listeners and its connections to peers.
//!
//! This crate owns:
//!
//! - **Configs from PEM files** ([`ServerFiles`], [`ClientFiles`]): a certificate chain and its
//!   key, and optionally a CA bundle. A server given a CA requires every client to present a
//!   certificate that chains to it (mutual TLS, which is how the peer listener admits only
//!   cluster members); a client given an identity presents it.
//! - **Reloading** ([`Reloadable`]): the files are read again every few seconds and, when their
//!   bytes changed and still make a valid config, new connections use the new one. Certificates
//!   are rotated by replacing the files (a Kubernetes Secret update does exactly that), without
//!   a restart and without touching open connections. Files that do not make a valid config
//!   are reported and the last good config stays in use.
//! - **Accepting** ([`incoming`]): TLS handshakes on a listener, each in its own task and bounded
//!   in time, yielding ready streams to tonic's `serve_with_incoming`, and **connecting**
//!   ([`Connector`]): a tonic/hyper connector that dials TCP and does the TLS handshake, checking
//!   the server's certificate against the CA for the host it dialled.
//!
//! rustls runs with the ring provider; no system OpenSSL is involved.

mod files;
mod stream;

pub use files::{ClientFiles, ServerFiles, TlsError};
pub use stream::{Connector, TlsConn, accept, connect, incoming};

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server config that follows its files.
pub type ServerTls = Arc<Reloadable<rustls::ServerConfig>>;
/// A client config that follows its files.
pub type ClientTls = Arc<Reloadable<rustls::ClientConfig>>;

/// How often [`Reloadable::watch`] looks at the files by default.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(5);

type Build<T> = dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync;

/// A value built from files, rebuilt when their contents change.
pub struct Reloadable<T> {
    what: String,
    paths: Vec<PathBuf>,
    build: Box<Build<T>>,
    current: ArcSwap<T>,
    /// The bytes the current value was built from (or last found invalid), to notice changes.
    seen: Mutex<Vec<Vec<u8>>>,
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Reads `paths` and builds the first value; an error here names the file at fault.
    pub fn load(
        what: impl Into<String>,
        paths: Vec<PathBuf>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let contents = files::read_all(&paths)?;
        let first = build(&contents)?;
        Ok(Arc::new(Reloadable {
            what: what.into(),
            paths,
            build: Box::new(build),
            current: ArcSwap::from_pointee(first),
            seen: Mutex::new(contents),
        }))
    }

    /// The value new connections should use.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Reads the files again; if they changed, builds and installs the new value.
    ///
    /// Returns whether a new value was installed. Files that cannot be read or do not build
    /// leave the current value in place and return the error (once per change of contents).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = files::read_all(&self.paths)?;
        let mut seen = self.seen.lock().expect("reload lock");
        if *seen == contents {
            return Ok(false);
        }
        // Remember these bytes even if they are bad, so a bad file is reported once, not on
        // every poll; the next change is tried again.
        *seen = contents;
        let value = (self.build)(&seen)?;
        self.current.store(Arc::new(value));
        Ok(true)
    }

    /// Polls the files every `every` for as long as the returned task runs, logging reloads
    /// and files that would not load.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match this.reload_if_changed() {
                    Ok(true) => tracing::info!(what = %this.what, "TLS files changed; reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        what = %this.what,
                        error = %e,
                        "TLS files changed but do not load; keeping the previous certificate"
                    ),
                }
            }
        })
    }
}

impl ServerFiles {
    /// Loads a server config that follows these files, offering `alpn` protocols.
    pub fn load(&self, what: &str, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let files = self.clone();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        Reloadable::load(what, self.paths(), move |contents| {
            files.build(contents, alpn.clone())
        })
    }
}

impl ClientFiles {
    /// Loads a client config that follows these files, asking for `alpn` protocols.
    pub fn load(&self, what: &str, alpn: &[&[u8]]) -> Result<ClientTls, TlsError> {
        let files = self.clone();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        Reloadable::load(what, self.paths(), move |contents| {
            files.build(contents, alpn.clone())
        })
    }
}

/// ALPN for gRPC: HTTP/2 only.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for an HTTP/1.1 client.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN for the data plane: HTTP/2 or HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::pki::{CertFiles, Pki};
    use tokio::net::{TcpListener, TcpStream};

    fn server(pki: &Pki, files: &CertFiles, mutual: bool) -> ServerTls {
        ServerFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: mutual.then(|| pki.ca.clone()),
        }
        .load("test server", ALPN_H2)
        .unwrap()
    }

    fn client(ca: &Pki, identity: Option<&CertFiles>) -> ClientTls {
        ClientFiles {
            ca: ca.ca.clone(),
            identity: identity.map(|f| (f.cert.clone(), f.key.clone())),
        }
        .load("test client", ALPN_H2)
        .unwrap()
    }

    /// Handshakes with a server on loopback: whether both sides completed.
    async fn handshake(server: &ServerTls, client: &ClientTls, name: &str) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.clone();
        let accepting = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = accept(&server, tcp, Duration::from_secs(5)).await else {
                return false;
            };
            // Echo one byte, so the client knows the server let it in.
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.is_ok() && s.write_all(&buf).await.is_ok()
        });
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connected = tokio_rustls::TlsConnector::from(client.current())
            .connect(name, tcp)
            .await;
        // TLS 1.3 clients finish before the server has checked their certificate: send a
        // byte and see whether it comes back or the server's verdict closes the connection.
        let client_ok = match connected {
            Ok(mut s) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"x").await;
                let mut buf = [0u8; 1];
                matches!(s.read(&mut buf).await, Ok(1))
            }
            Err(_) => false,
        };
        accepting.await.unwrap() && client_ok
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_certificates_of_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "cluster");
        let rogue = Pki::new(&dir.path().join("rogue"), "rogue");
        let node = pki.issue("node", &["127.0.0.1", "node.local"]);
        let member = pki.issue("member", &["member.local"]);
        let outsider = rogue.issue("outsider", &["outsider.local"]);
        let s = server(&pki, &node, true);

        assert!(handshake(&s, &client(&pki, Some(&member)), "127.0.0.1").await);
        assert!(handshake(&s, &client(&pki, Some(&member)), "node.local").await);
        assert!(!handshake(&s, &client(&pki, None), "127.0.0.1").await);
        assert!(!handshake(&s, &client(&pki, Some(&outsider)), "127.0.0.1").await);
        // The server's certificate must name the host dialled, and chain to the client's CA.
        assert!(!handshake(&s, &client(&pki, Some(&member)), "other.local").await);
        assert!(!handshake(&s, &client(&rogue, Some(&member)), "127.0.0.1").await);
        // Without a client CA, anyone who trusts the server gets in.
        assert!(
            handshake(
                &server(&pki, &node, false),
                &client(&pki, None),
                "127.0.0.1"
            )
            .await
        );
    }

    #[tokio::test]
    async fn changed_files_are_reloaded_and_bad_ones_keep_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "cluster");
        let node = pki.issue("node", &["127.0.0.1"]);
        let s = server(&pki, &node, false);
        let first = s.current();
        assert!(!s.reload_if_changed().unwrap(), "nothing changed yet");
        assert!(Arc::ptr_eq(&first, &s.current()));

        pki.issue_into(&node, &["127.0.0.1"]);
        assert!(s.reload_if_changed().unwrap());
        let second = s.current();
        assert!(!Arc::ptr_eq(&first, &second));

        std::fs::write(
            &node.key,
            "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = s.reload_if_changed().unwrap_err();
        assert!(e.to_string().contains("node-key.pem"), "{e}");
        assert!(
            Arc::ptr_eq(&second, &s.current()),
            "the last good config stays"
        );
        assert!(
            !s.reload_if_changed().unwrap(),
            "a bad file is reported once"
        );
        assert!(handshake(&s, &client(&pki, None), "127.0.0.1").await);

        // A missing file at start is an error naming it.
        let missing = ServerFiles {
            cert: dir.path().join("absent.pem"),
            key: node.key.clone(),
            client_ca: None,
        }
        .load("test", ALPN_H2)
        .unwrap_err();
        assert!(missing.to_string().contains("absent.pem"), "{missing}");
    }
}
