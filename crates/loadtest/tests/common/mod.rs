//! A tiny in-process hyper server on 127.0.0.1 with an ephemeral port, for the load tests.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the server does with each request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 at once.
    Ok,
    /// 200 at once, except that request number `at` (0-based) freezes every response for
    /// `stall`: requests arriving during the stall are answered when it ends.
    StallOnce { at: u64, stall: Duration },
    /// A token bucket of `rate` per second holding `burst` tokens: 200 with a token, else 429.
    /// The rate can be changed while running ([`TestServer::set_rate`]).
    Throttle { rate: f64, burst: f64 },
    /// Reads the request and never answers.
    Hang,
    /// 200 with `Connection: close`: every connection carries one request.
    CloseEach,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct State {
    behaviour: Behaviour,
    hits: AtomicU64,
    connections: AtomicU64,
    arrivals: Mutex<Vec<Instant>>,
    stall_until: Mutex<Option<Instant>>,
    bucket: Mutex<Bucket>,
}

/// A running server; stops accepting when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TestServer {
    pub async fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (rate, burst) = match behaviour {
            Behaviour::Throttle { rate, burst } => (rate, burst),
            _ => (0.0, 0.0),
        };
        let state = Arc::new(State {
            behaviour,
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
            stall_until: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                rate,
                burst,
                tokens: burst,
                last: Instant::now(),
            }),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            state,
            accept,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Arrival instants of every request, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// Changes the token bucket's rate (a spec change).
    pub fn set_rate(&self, rate: f64) {
        Self::set_rate_of(&self.state, rate);
    }

    fn set_rate_of(state: &State, rate: f64) {
        let mut b = state.bucket.lock().unwrap();
        refill(&mut b);
        b.rate = rate;
    }

    /// A handle that can change the rate from another task.
    pub fn rate_setter(&self) -> impl Fn(f64) + Send + Sync + 'static {
        let state = self.state.clone();
        move |r| Self::set_rate_of(&state, r)
    }
}

fn refill(b: &mut Bucket) {
    let now = Instant::now();
    let dt = now.duration_since(b.last).as_secs_f64();
    b.tokens = (b.tokens + dt * b.rate).min(b.burst);
    b.last = now;
}

async fn handle(
    st: Arc<State>,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = Instant::now();
    let n = st.hits.fetch_add(1, Ordering::Relaxed);
    st.arrivals.lock().unwrap().push(now);
    let status = match &st.behaviour {
        Behaviour::Ok => StatusCode::OK,
        Behaviour::StallOnce { at, stall } => {
            let until = {
                let mut s = st.stall_until.lock().unwrap();
                if n == *at {
                    *s = Some(now + *stall);
                }
                *s
            };
            if let Some(u) = until
                && now < u
            {
                tokio::time::sleep_until(u).await;
            }
            StatusCode::OK
        }
        Behaviour::Throttle { .. } => {
            let mut b = st.bucket.lock().unwrap();
            refill(&mut b);
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
        Behaviour::CloseEach => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Ok(resp);
        }
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    *resp.status_mut() = status;
    Ok(resp)
}
