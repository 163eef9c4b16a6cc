//! OpenTelemetry export of the gateway's spans over OTLP/gRPC (`gatewayd --otlp-endpoint`).
//!
//! The data plane and the admin service describe finished work as plain [`SpanRecord`]s; this
//! crate turns them into the SDK's span data and sends them to a collector with the
//! `opentelemetry-otlp` exporter, batched, from a task of its own. Recording a span is a
//! `try_send` on a bounded channel: it never waits. When the channel is full (the collector is
//! slow or gone) the span is dropped and counted (`gateway_otlp_spans_dropped_total`), so that a
//! dead collector costs a request nothing but the attempt.
//!
//! Why not the SDK's tracer and batch processor: the gateway already has its trace context per
//! request ([`decide::trace`]) and knows a span's whole life when it records it; the SDK's
//! processor would add a span object and a lock per request, and counts its drops only in an
//! internal log. The exporter, the wire format and the resource are the SDK's.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// The export's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// Spans waiting for export; past this they are dropped and counted.
    pub queue: usize,
    /// Most spans in one export request.
    pub batch: usize,
    /// How long spans wait for a batch to fill before they are sent anyway.
    pub interval: Duration,
    /// How long one export request may take.
    pub timeout: Duration,
}

impl OtlpSettings {
    /// Production defaults for `endpoint`.
    pub fn new(endpoint: String) -> OtlpSettings {
        OtlpSettings {
            endpoint,
            queue: 8192,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// What kind of work a span covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A call proxied (or refused) by the data plane.
    Server,
    /// A write submitted to Raft by the admin service.
    Internal,
}

/// One finished span, as the gateway describes it.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the work continued a trace.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    /// A failure, with what went wrong.
    pub error: Option<String>,
    pub attributes: Vec<KeyValue>,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_exports: AtomicU64,
}

/// Where spans are recorded. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Spans {
    tx: mpsc::Sender<SpanRecord>,
    counters: Arc<Counters>,
}

/// The export task; [`ExportTask::close`] sends what is queued (bounded by the timeout).
#[derive(Debug)]
pub struct ExportTask {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

impl Spans {
    /// Starts exporting to `settings.endpoint` (lazily: a collector that is not there yet is
    /// not an error), as service `gatewayd` instance `node`. Must run in a Tokio runtime.
    pub fn start(settings: &OtlpSettings, node: u64) -> Result<(Spans, ExportTask), OtlpError> {
        let bad = |reason: String| OtlpError::Endpoint {
            endpoint: settings.endpoint.clone(),
            reason,
        };
        let uri: http::Uri = settings
            .endpoint
            .parse()
            .map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad("must be http://HOST:PORT or https://HOST:PORT".into()));
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name("gatewayd")
                .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
                .build(),
        );
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(export_loop(
            exporter,
            rx,
            counters.clone(),
            stop.clone(),
            settings.batch.max(1),
            settings.interval,
        ));
        Ok((Spans { tx, counters }, ExportTask { task, stop }))
    }

    /// Queues `span` for export, or drops and counts it when the queue is full. Never waits.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Appends the export's counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let _ = write!(
            out,
            "# HELP gateway_otlp_spans_exported_total Spans accepted by the OTLP collector.\n\
             # TYPE gateway_otlp_spans_exported_total counter\n\
             gateway_otlp_spans_exported_total {}\n\
             # HELP gateway_otlp_spans_dropped_total Spans dropped: the export queue was full or the collector refused them.\n\
             # TYPE gateway_otlp_spans_dropped_total counter\n\
             gateway_otlp_spans_dropped_total {}\n\
             # HELP gateway_otlp_export_failures_total OTLP export requests that failed.\n\
             # TYPE gateway_otlp_export_failures_total counter\n\
             gateway_otlp_export_failures_total {}\n",
            c.exported.load(Relaxed),
            c.dropped.load(Relaxed),
            c.failed_exports.load(Relaxed),
        );
    }
}

impl ExportTask {
    /// Sends what is queued (each request bounded by the export timeout) and stops.
    pub async fn close(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanRecord>,
    counters: Arc<Counters>,
    stop: Arc<tokio::sync::Notify>,
    batch_size: usize,
    interval: Duration,
) {
    let scope = InstrumentationScope::builder("gatewayd")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(batch_size);
    let mut stopping = false;
    let mut warned = false;
    loop {
        // Wait for the first span of a batch, then for the batch to fill or the interval to
        // pass, whichever comes first.
        if batch.is_empty() && !stopping {
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { stopping = true },
                () = stop.notified() => stopping = true,
            }
        }
        if !stopping {
            let deadline = tokio::time::Instant::now() + interval;
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { stopping = true; break },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.notified() => { stopping = true; break },
                }
            }
        }
        if stopping {
            // What is queued now goes in the last batches.
            while batch.len() < batch_size {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let data = batch.drain(..).map(|s| span_data(s, &scope)).collect();
        match exporter.export(data).await {
            Ok(()) => {
                counters.exported.fetch_add(n, Relaxed);
                warned = false;
            }
            Err(e) => {
                counters.dropped.fetch_add(n, Relaxed);
                counters.failed_exports.fetch_add(1, Relaxed);
                // Once per failing spell, not per batch.
                if !warned {
                    tracing::warn!(error = %e, "OTLP export failed; dropping spans until it works again");
                    warned = true;
                }
            }
        }
    }
}

fn span_data(s: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let flags = if s.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            flags,
            false,
            TraceState::NONE,
        ),
        parent_span_id: s.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent_id.is_some() && s.kind == Kind::Server,
        span_kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Internal => SpanKind::Internal,
        },
        name: s.name,
        start_time: s.start,
        end_time: s.end,
        attributes: s.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
