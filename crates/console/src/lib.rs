//! The web console: pages for operators and account owners, served by every node.
//!
//! This crate owns the console's HTTP surface and nothing of the admin API's rules:
//!
//! - the pages ([`assets`]): plain HTML, CSS and JavaScript modules embedded in the binary,
//!   so building the workspace needs no JavaScript toolchain;
//! - `POST /console/api/<Method>` ([`api`]): each RPC of `service Admin` with its request
//!   message as JSON. The call goes through the node's own guarded admin service
//!   ([`admin::Guarded`]), in process, with the caller's `Authorization` header as the gRPC
//!   `authorization` metadata, so validation, authorisation and errors are the admin API's;
//!   a refused call answers `{code, message, field}` ([`reply`]);
//! - `POST /console/live/traffic` ([`traffic`]): every member's per-instance request counters
//!   (the numbers of its `/metrics`, asked over the peer network, each member within half a
//!   second) and their sums over the cluster, for the live charts; limited, on every node's
//!   entry too, to the instances the caller's `DescribeInstances` returns.
//!
//! Every response carries a Content-Security-Policy that allows only the console's own
//! scripts and styles (no inline script) and `X-Content-Type-Options: nosniff`; there are no
//! CORS headers, so other origins cannot read anything. The JSON endpoints take only
//! `POST` with `Content-Type: application/json` (which a cross-site form cannot send), and the
//! console never uses cookies: the token lives in the page's session storage and is sent as a
//! bearer header, so there is nothing for a cross-site request to ride on.
//!
//! [`Console`] is a service for the admin listener's tonic router (its name, `console`,
//! routes `/console/*` to it) or for a listener of its own (`gatewayd --listen-console`).

pub mod api;
pub mod assets;
pub mod reply;
pub mod traffic;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use proto::admin::admin_client::AdminClient;
use proto::admin::admin_server::AdminServer;
use reply::ApiError;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The admin service as the admin listener serves it: behind authentication and the
/// authorisation table.
pub type AdminStack = admin::Guarded<AdminServer<admin::AdminService>>;

pub use traffic::TrafficSource;

/// The largest request body a JSON endpoint reads. Configuration documents larger than this
/// go through `gatewayctl config apply`, which has the gRPC limit.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where the console lives on its listener.
pub const PREFIX: &str = "/console";

/// The policy of every response: the console's own files only, nothing inline, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The web console of one node (see the crate documentation).
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    admin: AdminStack,
    traffic: TrafficSource,
    node_id: u64,
}

impl Console {
    /// A console that calls `admin` (the same guarded service the admin listener serves) and
    /// gathers the live counters of every member from `traffic`.
    pub fn new(admin: AdminStack, traffic: TrafficSource, node_id: u64) -> Console {
        Console {
            inner: Arc::new(Inner {
                admin,
                traffic,
                node_id,
            }),
        }
    }

    /// Adds the console to a gRPC server's routes: `/console`, `/console/` and everything
    /// under it.
    pub fn mount(&self, mut routes: tonic::service::Routes) -> tonic::service::Routes {
        routes = routes.add_service(self.clone());
        // The service name routes `/console/{*rest}` only, which matches no empty rest.
        let router = routes.axum_router_mut();
        *router = std::mem::take(router)
            .route_service(PREFIX, self.clone())
            .route_service("/console/", self.clone());
        routes
    }

    fn client(&self) -> AdminClient<AdminStack> {
        AdminClient::new(self.inner.admin.clone())
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: tonic::codegen::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut resp = self.route(req).await;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        );
        h.insert(
            header::X_FRAME_OPTIONS,
            header::HeaderValue::from_static("DENY"),
        );
        resp
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: tonic::codegen::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return ApiError::not_found(&path).into_response();
        };
        if rest.is_empty() {
            // The page's relative links need the trailing slash.
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(
                header::LOCATION,
                header::HeaderValue::from_static("/console/"),
            );
            return resp;
        }
        if let Some(method) = rest.strip_prefix("/api/") {
            let (auth, body) = match json_body(req).await {
                Ok(v) => v,
                Err(e) => return e.into_response(),
            };
            let mut client = self.client();
            return match api::call(&mut client, method, &body, auth).await {
                Ok(json) => reply::json(StatusCode::OK, json),
                Err(e) => e.into_response(),
            };
        }
        if rest == "/live/traffic" {
            let (auth, _) = match json_body(req).await {
                Ok(v) => v,
                Err(e) => return e.into_response(),
            };
            let mut client = self.client();
            return match traffic::sample(&mut client, auth, &self.inner.traffic, self.inner.node_id)
                .await
            {
                Ok(json) => reply::json(StatusCode::OK, json),
                Err(e) => e.into_response(),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return ApiError::method_not_allowed("GET").into_response();
        }
        match assets::find(rest) {
            Some(asset) => asset.response(),
            None => ApiError::not_found(&path).into_response(),
        }
    }
}

/// The bearer header and the body of a JSON endpoint's request: `POST` with
/// `Content-Type: application/json` only, and at most [`MAX_BODY_BYTES`].
async fn json_body<B>(req: Request<B>) -> Result<(Option<header::HeaderValue>, Bytes), ApiError>
where
    B: tonic::codegen::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::unsupported_media_type());
    }
    let auth = req.headers().get(header::AUTHORIZATION).cloned();
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::too_large(MAX_BODY_BYTES)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    Ok((auth, body))
}

impl<B> tonic::codegen::Service<Request<B>> for Console
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let console = self.clone();
        Box::pin(async move {
            let resp = console.handle(req).await;
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}

impl tonic::server::NamedService for Console {
    /// The admin listener's router sends `/console/*` here.
    const NAME: &'static str = "console";
}
