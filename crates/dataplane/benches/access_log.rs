//! The access log's cost per request on the request's thread: one record begun, routed,
//! answered and ended, as the server does for every request, with the writer thread writing
//! to a rotated file meanwhile.
//!
//! `cargo bench -p dataplane --bench access_log`; the figure is nanoseconds per record.

use criterion::{Criterion, criterion_group, criterion_main};
use dataplane::{AccessLog, AccessLogSettings, AccessLogTarget, Arrived, Routed, Sent};
use std::hint::black_box;

fn record(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let settings = AccessLogSettings {
        target: AccessLogTarget::File(dir.path().join("access.log")),
        // Rotated and dropped whole: the disk the benchmark uses stays bounded.
        max_bytes: 64 * 1024 * 1024,
        keep: 0,
    };
    let (log, writer) = AccessLog::start(settings, 3).expect("the log starts");
    let client = "127.0.0.1:53412".parse().expect("an address");
    let trace = (*b"4bf92f3577b34da6a3ce929d0e0e4736", *b"00f067aa0ba902b7");
    c.bench_function("access log record", |b| {
        b.iter(|| {
            let mut r = log.begin(black_box(&Arrived {
                request_id: b"0000000300000000017f3a2c",
                client,
                method: "GET",
                host: Some("api.example.com"),
                path: "/shop/v1/items/12345",
                bytes_in: 0,
            }));
            r.route(black_box(&Routed {
                group: Some("shop"),
                api: Some("get-item"),
                stage: "RELEASE",
                app_key: Some("204123456"),
                account: Some("acme"),
                trace: Some(trace),
            }));
            r.respond(
                200,
                None,
                Some(&Sent {
                    backend: Some("198.18.0.5:8080"),
                    retried: false,
                    elapsed_ns: 812_345,
                }),
            );
            r.end(black_box(1_234));
        })
    });
    writer.close();
    eprintln!("lines dropped: {}", log.dropped());
}

criterion_group!(benches, record);
criterion_main!(benches);
