//! Plain HTTP/1.1 for tests, over tokio sockets: a recording server (a backend or a webhook
//! receiver) and a one-request-per-connection client. Small on purpose: tests should see
//! exactly what crosses the wire.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 that answers every request `200` with a fixed body and records
/// what it received. Stops when dropped.
pub struct Server {
    pub addr: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(body: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(sock, body, rec).await;
                });
            }
        });
        Server {
            addr,
            received,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    body: &'static str,
    rec: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some((req, used)) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        buf.drain(..used);
        let close = req
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        rec.lock().unwrap().push(req);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request (head and `content-length` body) from `sock`, buffering in `buf`.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Received, usize)>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or("").split(' ');
            let method = first.next().unwrap_or("").to_string();
            let path = first.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                if read_more(sock, buf).await? == 0 {
                    return Ok(None);
                }
            }
            let body = buf[end + 4..total].to_vec();
            return Ok(Some((
                Received {
                    method,
                    path,
                    headers,
                    body,
                },
                total,
            )));
        }
        if read_more(sock, buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = sock.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET http://addr{path}` on a fresh connection; `None` if the connection failed or no
/// response came within 5 s.
pub async fn get(addr: &str, path: &str) -> Option<Response> {
    get_with(addr, path, &[]).await
}

/// [`get`] with more request headers.
pub async fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
    let fut = async {
        let sock = TcpStream::connect(addr).await.ok()?;
        exchange_with(sock, addr, path, headers).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// `POST http://addr{path}` with a JSON body and more request headers, on a fresh connection;
/// `None` if the connection failed or no response came within 5 s.
pub async fn post_json(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Response> {
    let fut = async {
        let mut sock = TcpStream::connect(addr).await.ok()?;
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let _ = sock.read_to_end(&mut raw).await;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// `GET https://addr{path}` on a fresh connection, trusting what `tls` trusts and checking the
/// server's certificate names `server_name`; `None` if the connection or the handshake failed
/// or no response came within 5 s.
pub async fn get_tls(
    addr: &str,
    server_name: &str,
    tls: &tls::ClientTls,
    path: &str,
) -> Option<Response> {
    let fut = async {
        let sock = handshake(addr, server_name, tls).await.ok()?;
        exchange(sock, addr, path).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// A TLS handshake with `addr`, checking the server's certificate names `server_name`.
pub async fn handshake(
    addr: &str,
    server_name: &str,
    tls: &tls::ClientTls,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let sock = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(tls.current())
        .connect(name, sock)
        .await
}

/// The leaf certificate (DER) `addr` presents in a TLS handshake.
pub async fn served_certificate(
    addr: &str,
    server_name: &str,
    tls: &tls::ClientTls,
) -> std::io::Result<Vec<u8>> {
    let stream = handshake(addr, server_name, tls).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    leaf.ok_or_else(|| std::io::Error::other("the server presented no certificate"))
}

async fn exchange<S>(sock: S, addr: &str, path: &str) -> Option<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    exchange_with(sock, addr, path, &[]).await
}

async fn exchange_with<S>(
    mut sock: S,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{extra}\r\n");
    sock.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify once it has sent everything.
    let _ = sock.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    })
}

/// A client that counts the requests that got a response: each is a call the gateway
/// received (and so one it must bill).
#[derive(Debug, Default)]
pub struct Traffic(std::sync::atomic::AtomicU64);

impl Traffic {
    /// [`get`], counted when a response came back.
    pub async fn get(&self, addr: &str, path: &str) -> Option<Response> {
        let r = get(addr, path).await;
        if r.is_some() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// How many requests got a response.
    pub fn sent(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
