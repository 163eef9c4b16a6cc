//! Prometheus metrics: counters and a fixed-bucket latency histogram made of atomics, and the
//! text exposition format.
//!
//! Like usage cells, the counters are reached from the compiled routes through an `Arc`, and
//! kept per thread (see [`crate::per_thread`]), so recording costs a relaxed `fetch_add` or two
//! on the thread's own cache line; rendering (on a scrape) walks the registry and sums.

use crate::per_thread::{Counter, PerThread};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (an implicit `+Inf` follows).
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in microseconds, for integer comparison on the hot path.
const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by status class.
#[derive(Debug, Default)]
pub(crate) struct StatusCounters(PerThread<[AtomicU64; 5]>);

impl StatusCounters {
    #[inline]
    pub(crate) fn record(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0.local()[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn get(&self, class: usize) -> u64 {
        self.0.all().map(|c| c[class].load(Relaxed)).sum()
    }
}

/// One thread's part of a histogram.
#[derive(Debug, Default)]
struct HistogramSlot {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub(crate) struct Histogram(PerThread<HistogramSlot>);

impl Histogram {
    #[inline]
    pub(crate) fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_US.partition_point(|b| *b < us);
        let slot = self.0.local();
        slot.buckets[i].fetch_add(1, Relaxed);
        slot.sum_us.fetch_add(us, Relaxed);
    }

    fn bucket(&self, i: usize) -> u64 {
        self.0.all().map(|s| s.buckets[i].load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.bucket(i);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.bucket(LATENCY_BUCKETS.len());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.0.all().map(|s| s.sum_us.load(Relaxed)).sum::<u64>() as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Per-instance counters that are not per API.
#[derive(Debug, Default)]
pub(crate) struct InstanceStats {
    pub(crate) throttled: Counter,
    pub(crate) backend_errors: Counter,
    pub(crate) backend_timeouts: Counter,
    pub(crate) latency: Histogram,
}

/// Counters of requests no group could be found for.
#[derive(Debug, Default)]
pub(crate) struct GlobalStats {
    pub(crate) unrouted: StatusCounters,
    pub(crate) open_connections: AtomicU64,
    /// Upgraded connections (WebSocket and others) being relayed, and all ever opened.
    pub(crate) open_tunnels: AtomicU64,
    pub(crate) tunnels: AtomicU64,
}

/// Escapes a label value (backslash, double quote, newline).
pub(crate) fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut s = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.into()
}

/// What [`render`] needs of one instance.
pub(crate) struct InstanceView<'a> {
    pub(crate) name: &'a str,
    pub(crate) ceiling_rps: u32,
    pub(crate) share: f64,
    pub(crate) limit_rps: f64,
    pub(crate) offered_rps: f64,
    pub(crate) stats: &'a InstanceStats,
}

/// One instance's request counters on this node, as [`render`] writes them: what the
/// console's live chart sums over the cluster ([`crate::Dataplane::instance_traffic`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceTraffic {
    pub instance: String,
    /// The cluster-wide ceiling (`gateway_instance_ceiling_rps`); 0 for an instance that is
    /// no longer configured but whose last counts are still kept.
    pub ceiling_rps: u32,
    /// What this node's limiter admits (`gateway_instance_limit_rps`).
    pub limit_rps: f64,
    /// Requests answered, throttled ones included (`gateway_requests_total`).
    pub requests: u64,
    /// Requests the instance limiter refused (`gateway_throttled_total`).
    pub throttled: u64,
    /// Requests answered with a 5xx status (`gateway_requests_total`, class `5xx`).
    pub failed: u64,
}

/// The counters [`render`] would write for `instances` and `routes`, summed per instance
/// (routes of no instance, and the unrouted counters, left out), by instance name.
pub(crate) fn traffic<'a>(
    instances: &[InstanceView<'a>],
    routes: &[(&'a str, &'a str, &'a StatusCounters)],
) -> Vec<InstanceTraffic> {
    let mut out: std::collections::BTreeMap<&str, InstanceTraffic> = instances
        .iter()
        .map(|v| {
            let t = InstanceTraffic {
                instance: v.name.to_string(),
                ceiling_rps: v.ceiling_rps,
                limit_rps: v.limit_rps,
                throttled: v.stats.throttled.get(),
                ..Default::default()
            };
            (v.name, t)
        })
        .collect();
    for (instance, _, counters) in routes {
        if instance.is_empty() {
            continue;
        }
        let t = out.entry(instance).or_insert_with(|| InstanceTraffic {
            instance: instance.to_string(),
            ..Default::default()
        });
        for i in 0..CLASSES.len() {
            t.requests += counters.get(i);
        }
        t.failed += counters.get(CLASSES.len() - 1);
    }
    out.into_values().collect()
}

/// A per-instance metric: name, type, help, and how to read it.
type PerInstance = (
    &'static str,
    &'static str,
    &'static str,
    fn(&InstanceView) -> String,
);

/// Writes the data plane's metrics in the Prometheus text format.
pub(crate) fn render<'a>(
    out: &mut String,
    instances: &[InstanceView<'a>],
    routes: &[(&'a str, &'a str, &'a StatusCounters)],
    per_api: &[(&'a str, &'a str, &'a str, &'a Histogram)],
    global: &GlobalStats,
) {
    out.push_str(
        "# HELP gateway_requests_total Requests received, by instance, API and response status class.\n\
         # TYPE gateway_requests_total counter\n",
    );
    for (instance, api, counters) in routes {
        let (instance, api) = (escape(instance), escape(api));
        for (i, class) in CLASSES.iter().enumerate() {
            let n = counters.get(i);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "gateway_requests_total{{instance=\"{instance}\",api=\"{api}\",class=\"{class}\"}} {n}"
                );
            }
        }
    }
    for (i, class) in CLASSES.iter().enumerate() {
        let n = global.unrouted.get(i);
        if n > 0 {
            let _ = writeln!(
                out,
                "gateway_requests_total{{instance=\"\",api=\"\",class=\"{class}\"}} {n}"
            );
        }
    }

    let per_instance: [PerInstance; 7] = [
        (
            "gateway_throttled_total",
            "counter",
            "Requests refused by the instance limiter on this node.",
            |v| v.stats.throttled.get().to_string(),
        ),
        (
            "gateway_backend_errors_total",
            "counter",
            "Backend failures answered with 502.",
            |v| v.stats.backend_errors.get().to_string(),
        ),
        (
            "gateway_backend_timeouts_total",
            "counter",
            "Backend timeouts answered with 504.",
            |v| v.stats.backend_timeouts.get().to_string(),
        ),
        (
            "gateway_instance_ceiling_rps",
            "gauge",
            "The instance's cluster-wide ceiling.",
            |v| v.ceiling_rps.to_string(),
        ),
        (
            "gateway_instance_share",
            "gauge",
            "This node's share of the instance's ceiling.",
            |v| v.share.to_string(),
        ),
        (
            "gateway_instance_limit_rps",
            "gauge",
            "The rate this node's limiter admits for the instance (ceiling * share).",
            |v| v.limit_rps.to_string(),
        ),
        (
            "gateway_instance_offered_rps",
            "gauge",
            "The rate at which requests arrived at the instance's limiter on this node.",
            |v| v.offered_rps.to_string(),
        ),
    ];
    for (name, kind, help, value) in per_instance {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for v in instances {
            let _ = writeln!(
                out,
                "{name}{{instance=\"{}\"}} {}",
                escape(v.name),
                value(v)
            );
        }
    }

    out.push_str(
        "# HELP gateway_request_duration_seconds Time to the response head, by instance.\n\
         # TYPE gateway_request_duration_seconds histogram\n",
    );
    for v in instances {
        let labels = format!("instance=\"{}\"", escape(v.name));
        v.stats
            .latency
            .render(out, "gateway_request_duration_seconds", &labels);
    }

    out.push_str(
        "# HELP gateway_api_request_duration_seconds Time to the backend's response head, by \
         group, API and stage.\n\
         # TYPE gateway_api_request_duration_seconds histogram\n",
    );
    for (group, api, stage, histogram) in per_api {
        let labels = format!(
            "group=\"{}\",api=\"{}\",stage=\"{stage}\"",
            escape(group),
            escape(api)
        );
        histogram.render(out, "gateway_api_request_duration_seconds", &labels);
    }

    let _ = writeln!(
        out,
        "# HELP gateway_open_connections Client connections open on the data-plane port.\n\
         # TYPE gateway_open_connections gauge\n\
         gateway_open_connections {}",
        global.open_connections.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP gateway_open_tunnels Upgraded connections (WebSocket and others) being relayed.\n\
         # TYPE gateway_open_tunnels gauge\n\
         gateway_open_tunnels {}\n\
         # HELP gateway_tunnels_total Upgraded connections opened since the node started.\n\
         # TYPE gateway_tunnels_total counter\n\
         gateway_tunnels_total {}",
        global.open_tunnels.load(Relaxed),
        global.tunnels.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "i=\"a\"");
        assert!(out.contains("x_bucket{i=\"a\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_bucket{i=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{i=\"a\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{i=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{i=\"a\"} 3\n"));
    }

    #[test]
    fn status_classes() {
        let s = StatusCounters::default();
        for code in [100, 200, 204, 302, 404, 429, 502, 999, 0] {
            s.record(code);
        }
        assert_eq!(
            (0..5).map(|i| s.get(i)).collect::<Vec<_>>(),
            vec![2, 2, 1, 2, 2]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
