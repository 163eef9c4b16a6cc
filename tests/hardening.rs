//! Hardening of the data plane against abusive clients, on a real node.

use std::time::{Duration, Instant};
use testkit::http::{Server, get};
use testkit::{Cluster, binaries, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SETTLE: Duration = Duration::from_secs(20);

/// Hundreds of slow-loris connections, each sending one byte of a request head per second,
/// while legitimate requests keep being served; the slow ones are cut off at the header-read
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_do_not_starve_legitimate_requests() {
    let mut c = Cluster::new(binaries!(), 1);
    c.extra_args = vec!["--header-read-timeout-ms".into(), "3000".into()];
    c.spawn(1);
    c.wait_leader(SETTLE).await;
    let backend = Server::start("fine").await;
    let b = format!("http://{}", backend.addr);
    c.deploy_get_api("g", "a", &b, &[]);
    let addr = c.http_addr(1);
    eventually("the API to be routable", SETTLE, || async {
        get(&addr, "/a").await.filter(|r| r.status == 200)
    })
    .await;

    // 300 slow clients: one byte a second of "GET /a HTTP/1.1\r\n..." for at most 8 s.
    const SLOW: usize = 300;
    let head = b"GET /a HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return None;
            };
            let started = Instant::now();
            for byte in head.iter().take(8) {
                if s.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The server closes the connection: a read returns end of stream (or an error).
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(_)) | Ok(Err(_)) => Some(started.elapsed()),
                Err(_) => None,
            }
        }));
    }

    // Meanwhile, legitimate requests: every one must succeed.
    let (mut ok, mut sent) = (0, 0);
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        sent += 1;
        if get(&addr, "/a")
            .await
            .is_some_and(|r| r.status == 200 && r.body == "fine")
        {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent >= 100, "only {sent} requests sent");
    assert_eq!(
        ok, sent,
        "legitimate requests failed while slow clients held connections"
    );

    let mut cut_off = 0;
    for h in slow {
        if let Some(elapsed) = h.await.unwrap() {
            assert!(
                elapsed < Duration::from_secs(9),
                "a slow client was held for {elapsed:?}"
            );
            cut_off += 1;
        }
    }
    assert_eq!(
        cut_off, SLOW,
        "every slow client is disconnected by the header-read timeout"
    );
}

/// Nonsense flags for the limits are refused before the node starts.
#[test]
fn unreasonable_limits_are_refused() {
    let bins = binaries!();
    let out = std::process::Command::new(&bins.gatewayd)
        .args(["--header-read-timeout-ms", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--header-read-timeout-ms 5 is below the minimum of 100"),
        "{err}"
    );
}
