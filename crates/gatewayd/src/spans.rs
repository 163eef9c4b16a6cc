//! The node's spans, exported over OTLP when `--otlp-endpoint` is given: the data plane's
//! request spans and the admin service's write spans, turned into [`otel::SpanRecord`]s.

use opentelemetry::KeyValue;
use otel::{Kind, SpanRecord, Spans};
use std::borrow::Cow;

/// The sink both the data plane and the admin service record into.
pub(crate) struct Export {
    pub(crate) spans: Spans,
    pub(crate) node: i64,
}

impl dataplane::RequestSpans for Export {
    fn record(&self, s: dataplane::RequestSpan) {
        let name = match (&s.group, &s.api) {
            (Some(group), Some(api)) => Cow::Owned(format!("{} {group}/{api}", s.method)),
            _ => Cow::Owned(s.method.to_string()),
        };
        let mut attributes = Vec::with_capacity(9);
        attributes.push(KeyValue::new("http.request.method", s.method.to_string()));
        attributes.push(KeyValue::new("url.path", s.path));
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(s.status),
        ));
        attributes.push(KeyValue::new("gateway.stage", s.stage));
        attributes.push(KeyValue::new("gateway.node", self.node));
        if let Some(group) = s.group {
            attributes.push(KeyValue::new("gateway.group", group));
        }
        if let Some(api) = s.api {
            attributes.push(KeyValue::new("gateway.api", api));
        }
        // A server span is an error for a 5xx only (OpenTelemetry's HTTP conventions).
        let error = (s.status >= 500).then(|| {
            s.error_code
                .clone()
                .unwrap_or_else(|| format!("status {}", s.status))
        });
        if let Some(code) = s.error_code {
            attributes.push(KeyValue::new("gateway.error_code", code));
        }
        self.spans.record(SpanRecord {
            name,
            kind: Kind::Server,
            trace_id: s.trace.trace_id,
            span_id: s.trace.span_id,
            parent_id: s.trace.parent_id,
            sampled: s.trace.flags & 1 == 1,
            start: s.start,
            end: s.end,
            error,
            attributes,
        });
    }
}

impl admin::WriteSpans for Export {
    fn record(&self, w: admin::AdminWrite) {
        // The caller's trace when its metadata carried one, else a new trace.
        let trace = dataplane::TraceContext::continue_or_start(w.traceparent.as_deref());
        let rpc = if w.rpc.is_empty() { w.command } else { w.rpc };
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "gateway.admin.v1.Admin"),
            KeyValue::new("rpc.method", rpc),
            KeyValue::new("gateway.command", w.command),
            KeyValue::new("gateway.node", self.node),
        ];
        let error = match w.error {
            None => {
                attributes.push(KeyValue::new("gateway.outcome", "committed"));
                None
            }
            Some((code, message)) => {
                attributes.push(KeyValue::new("gateway.outcome", code.clone()));
                Some(format!("{code}: {message}"))
            }
        };
        self.spans.record(SpanRecord {
            name: Cow::Owned(format!("admin {rpc}")),
            kind: Kind::Internal,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_id: trace.parent_id,
            sampled: trace.flags & 1 == 1,
            start: w.start,
            end: w.end,
            error,
            attributes,
        });
    }
}
