//! OpenTelemetry export (`gatewayd --otlp-endpoint`): real gatewayd processes send their
//! request and admin-write spans to an OTLP/gRPC receiver of the test kit on 127.0.0.1; a call
//! continuing a client's trace is exported under that trace with the client's span as parent;
//! without the flag nothing is exported; a collector that never answers costs requests
//! nothing, and the spans it cannot take are counted in /metrics.

use std::time::{Duration, Instant};
use testkit::otlp::{OtlpReceiver, ReceivedSpan};
use testkit::{Cluster, binaries, eventually, http};

const SETTLE: Duration = Duration::from_secs(20);
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

/// A single node with an API `ping` (group `obs`) on `backend`, routable.
async fn node_with_api(extra: &[String], backend: &http::Server) -> Cluster {
    let backend = format!("http://{}", backend.addr);
    Cluster::single_with_api(binaries!(), extra, "obs", "ping", &backend).await
}

async fn span_where(
    receiver: &OtlpReceiver,
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> ReceivedSpan {
    eventually(what, SETTLE, || async {
        receiver.spans().into_iter().find(|s| f(s))
    })
    .await
}

async fn metrics(c: &Cluster) -> String {
    http::get(&c.ops_addr(1), "/metrics")
        .await
        .expect("metrics")
        .body
}

fn counter(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_admin_write_spans_reach_the_collector_under_the_clients_trace() {
    let receiver = OtlpReceiver::start().await;
    let backend = http::Server::start("pong").await;
    let c = node_with_api(&["--otlp-endpoint".into(), receiver.endpoint()], &backend).await;
    let addr = c.http_addr(1);

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    let ok = http::get_with(&addr, "/ping", &[("traceparent", &traceparent)])
        .await
        .expect("response");
    assert_eq!(ok.status, 200, "{ok:?}");
    // The gateway's span is the parent the backend was told about.
    let seen = backend.received();
    let forwarded = seen
        .last()
        .and_then(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        })
        .map(|(_, v)| v.clone())
        .expect("the backend got a traceparent");
    let gateway_span = &forwarded[36..52];

    let span = span_where(&receiver, "the call's span", |s| s.trace_id == CLIENT_TRACE).await;
    assert_eq!(span.span_id, gateway_span);
    assert_eq!(span.parent_span_id, CLIENT_PARENT);
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(span.name, "GET obs/ping");
    assert_eq!(span.attr("http.request.method"), Some("GET"));
    assert_eq!(span.attr("url.path"), Some("/ping"));
    assert_eq!(span.attr("http.response.status_code"), Some("200"));
    assert_eq!(span.attr("gateway.group"), Some("obs"));
    assert_eq!(span.attr("gateway.api"), Some("ping"));
    assert_eq!(span.attr("gateway.stage"), Some("RELEASE"));
    assert_eq!(span.attr("gateway.node"), Some("1"));
    assert_eq!(span.attr("gateway.error_code"), None);
    assert_eq!(span.status_code, 0, "unset: not an error");
    assert!(span.start_unix_nano > 0 && span.end_unix_nano >= span.start_unix_nano);
    assert_eq!(
        span.resource.get("service.name").map(String::as_str),
        Some("gatewayd")
    );
    assert_eq!(
        span.resource.get("service.instance.id").map(String::as_str),
        Some("1")
    );

    // A refused call: a new trace (no parent), the gateway's error code, the status.
    let missing = http::get(&addr, "/nowhere").await.expect("response");
    assert_eq!(missing.status, 404);
    let code = missing
        .header("x-ca-error-code")
        .expect("an error code")
        .to_string();
    let refused = span_where(&receiver, "the 404's span", |s| {
        s.attr("url.path") == Some("/nowhere")
    })
    .await;
    assert_eq!(refused.parent_span_id, "");
    assert_eq!(refused.attr("http.response.status_code"), Some("404"));
    assert_eq!(refused.attr("gateway.error_code"), Some(code.as_str()));
    assert_eq!(refused.attr("gateway.api"), None);

    // The admin writes that set the API up, one span each, by RPC.
    for rpc in ["CreateApiGroup", "CreateApi", "DeployApi"] {
        let w = span_where(&receiver, &format!("the {rpc} write's span"), |s| {
            s.attr("rpc.method") == Some(rpc)
        })
        .await;
        assert_eq!(w.name, format!("admin {rpc}"));
        assert_eq!(w.kind, 1, "an internal span");
        assert_eq!(w.attr("gateway.outcome"), Some("committed"));
        assert_eq!(w.attr("rpc.system"), Some("grpc"));
        assert_eq!(w.status_code, 0);
    }

    let m = metrics(&c).await;
    assert!(
        counter(&m, "gateway_otlp_spans_exported_total").unwrap_or(0) >= 5,
        "{m}"
    );
    assert_eq!(
        counter(&m, "gateway_otlp_spans_dropped_total"),
        Some(0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let receiver = OtlpReceiver::start().await;
    let backend = http::Server::start("pong").await;
    let c = node_with_api(&[], &backend).await;
    let addr = c.http_addr(1);
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    for _ in 0..20 {
        let r = http::get_with(&addr, "/ping", &[("traceparent", &traceparent)]).await;
        assert_eq!(r.map(|r| r.status), Some(200));
    }
    let m = metrics(&c).await;
    assert!(!m.contains("gateway_otlp_"), "{m}");
    // Three export intervals: a node exporting anyway would have sent by then.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(receiver.requests(), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_requests_nothing() {
    // Accepts connections and never answers: every export waits for its timeout.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            conns.push(conn);
        }
    });
    let backend = http::Server::start("pong").await;
    let c = node_with_api(&["--otlp-endpoint".into(), endpoint], &backend).await;
    let addr = c.http_addr(1);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..300 {
        let t = Instant::now();
        let r = http::get(&addr, "/ping").await.expect("response");
        assert_eq!(r.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    // Generous for a debug build on a busy machine; an export on the request path would
    // take the 5 s export timeout.
    assert!(slowest < Duration::from_secs(2), "slowest call {slowest:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // The spans the collector never took are counted.
    let m = eventually("a failed export counted", SETTLE, || async {
        let m = metrics(&c).await;
        (counter(&m, "gateway_otlp_export_failures_total").unwrap_or(0) >= 1).then_some(m)
    })
    .await;
    assert!(
        counter(&m, "gateway_otlp_spans_dropped_total").unwrap_or(0) >= 1,
        "{m}"
    );
    assert_eq!(
        counter(&m, "gateway_otlp_spans_exported_total"),
        Some(0),
        "{m}"
    );
    held.abort();
}
