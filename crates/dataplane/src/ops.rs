//! The ops HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use crate::conn::{ServerLimits, Source, connection_permits};
use crate::server::accept_loop;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use upstream::{Dataplane, RequestBody, ResponseBody};

/// Appends metrics (Prometheus text) that the data plane does not own, e.g. Raft role and term.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the lead's code contributes to the ops endpoint.
#[derive(Clone, Default)]
pub struct OpsHooks {
    /// `/readyz` answers 200 while this is set, 503 otherwise.
    pub ready: Arc<AtomicBool>,
    pub extra_metrics: Option<ExtraMetrics>,
}

impl std::fmt::Debug for OpsHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsHooks")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("extra_metrics", &self.extra_metrics.is_some())
            .finish()
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn route<B>(dp: &Dataplane, hooks: &OpsHooks, req: &Request<B>) -> Response<ResponseBody> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            dp.render_metrics(&mut out);
            if let Some(extra) = &hooks.extra_metrics {
                extra(&mut out);
            }
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                out,
            )
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            if hooks.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Serves `/metrics` (the data plane's metrics followed by `hooks.extra_metrics`), `/healthz`
/// (200 while the process runs) and `/readyz` (200 while `hooks.ready` is set, else 503) until
/// `shutdown` resolves.
pub async fn serve_ops(
    listener: TcpListener,
    dataplane: Dataplane,
    hooks: OpsHooks,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = ServerLimits {
        max_body_bytes: 0,
        max_header_bytes: 8 * 1024,
        max_connections: 64,
        drain_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    };
    let handler = move |req: Request<RequestBody>, _info| {
        let response = route(&dataplane, &hooks, &req);
        async move { response }
    };
    let permits = connection_permits(&limits);
    accept_loop(
        Source::Listener(listener, permits),
        Arc::new(limits),
        None,
        handler,
        None,
        shutdown,
    )
    .await
}
