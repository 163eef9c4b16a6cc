//! Admin-write spans: what the admin service tells a tracing exporter about each write it
//! submitted to Raft (`gatewayd --otlp-endpoint`).
//!
//! The RPC being served is known to the guard (`access::Guarded`), which runs the handler
//! inside [`with_rpc`]; the write itself happens deep in a handler, which reads it back with
//! [`current_rpc`]. The service knows nothing of OpenTelemetry: a [`WriteSpans`] sink gets an
//! [`AdminWrite`] per write and must not wait.

use std::time::SystemTime;

tokio::task_local! {
    static CALL: Call;
}

/// The RPC being served, and the caller's trace context.
#[derive(Clone, Debug)]
struct Call {
    rpc: &'static str,
    traceparent: Option<Vec<u8>>,
}

/// Runs `f` (a handler's future) as the call of `rpc` (its name), with the caller's `traceparent`.
pub(crate) fn with_rpc<F: Future>(
    rpc: &'static str,
    traceparent: Option<Vec<u8>>,
    f: F,
) -> impl Future<Output = F::Output> {
    let call = Call { rpc, traceparent };
    CALL.scope(call, f)
}

fn current() -> (&'static str, Option<Vec<u8>>) {
    CALL.try_with(|c| (c.rpc, c.traceparent.clone()))
        .unwrap_or(("", None))
}

/// One write submitted to Raft.
#[derive(Clone, Debug)]
pub struct AdminWrite {
    /// The RPC that wrote (`CreateApi`), or empty outside a guarded call.
    pub rpc: &'static str,
    /// The command's kind (`create_api`).
    pub command: &'static str,
    /// The caller's `traceparent` metadata, as sent.
    pub traceparent: Option<Vec<u8>>,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `None` when committed; else the gRPC status code's name and message.
    pub error: Option<(String, String)>,
}

/// Where admin-write spans go. `record` must not block.
pub trait WriteSpans: Send + Sync {
    fn record(&self, write: AdminWrite);
}

/// What [`crate::AdminService`] records around one write.
pub(crate) fn finish(
    sink: &dyn WriteSpans,
    command: &'static str,
    start: SystemTime,
    outcome: Result<(), &tonic::Status>,
) {
    let (rpc, traceparent) = current();
    sink.record(AdminWrite {
        rpc,
        command,
        traceparent,
        start,
        end: SystemTime::now(),
        error: outcome
            .err()
            .map(|s| (format!("{:?}", s.code()), s.message().to_owned())),
    });
}
