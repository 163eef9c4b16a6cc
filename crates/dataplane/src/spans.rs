//! Request spans: what the data plane tells a tracing exporter about each call it served.
//!
//! The data plane knows nothing of OpenTelemetry: when spans are wanted (`gatewayd
//! --otlp-endpoint`), it hands a [`RequestSpan`] per call to a [`RequestSpans`] sink, which must
//! not wait (the `otel` crate's queues it with `try_send`).

use decide::trace::TraceContext;
use std::sync::Arc;
use std::time::SystemTime;

/// One call as served: its trace context (this hop's span, and the client's as the parent),
/// what it was routed to and how it was answered.
#[derive(Clone, Debug)]
pub struct RequestSpan {
    pub trace: TraceContext,
    pub start: SystemTime,
    /// When the response head was ready (the body may still be streaming).
    pub end: SystemTime,
    pub method: http::Method,
    /// The canonical path, without the query.
    pub path: String,
    pub group: Option<String>,
    pub api: Option<String>,
    pub stage: &'static str,
    pub status: u16,
    /// The gateway's `X-Ca-Error-Code`, when it refused or failed the call.
    pub error_code: Option<String>,
}

/// Where request spans go. `record` is called on the request's thread and must not block.
pub trait RequestSpans: Send + Sync {
    fn record(&self, span: RequestSpan);
}

/// What the servers do besides serving, per request: the access log and the span export.
#[derive(Clone, Default)]
pub struct RequestHooks {
    pub access_log: Option<crate::AccessLog>,
    pub spans: Option<Arc<dyn RequestSpans>>,
}

impl std::fmt::Debug for RequestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHooks")
            .field("access_log", &self.access_log)
            .field("spans", &self.spans.is_some())
            .finish()
    }
}

impl From<Option<crate::AccessLog>> for RequestHooks {
    fn from(access_log: Option<crate::AccessLog>) -> Self {
        RequestHooks {
            access_log,
            spans: None,
        }
    }
}
