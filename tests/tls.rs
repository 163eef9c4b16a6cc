//! TLS on a real cluster: every listener encrypted, peers admitted only with a certificate of
//! the cluster CA, and certificates rotated by replacing their files, without a restart.

use proto::peer::peer_client::PeerClient;
use proto::peer::{InstanceTrafficRequest, ProbeRequest, RaftPayload};
use serde_json::Value;
use std::time::Duration;
use testkit::pki::Pki;
use testkit::{Cluster, binaries, eventually};

const SETTLE: Duration = Duration::from_secs(20);

/// Runs gatewayctl without stalling the other tasks of this runtime.
fn ctl_ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    tokio::task::block_in_place(|| c.ctl_json(via, args))
}

async fn start_tls_cluster(n: u64, args: &[&str]) -> Cluster {
    let mut c = Cluster::new_tls(binaries!(), n);
    c.extra_args = args.iter().map(|a| a.to_string()).collect();
    for id in 1..=n {
        c.spawn(id);
    }
    c.wait_leader(SETTLE).await;
    c
}

/// A peer client dialling node `id`'s peer port over TLS with `identity` (None: no client
/// certificate), trusting the cluster CA.
fn peer_client(
    c: &Cluster,
    id: u64,
    identity: Option<&testkit::pki::CertFiles>,
) -> PeerClient<tonic::transport::Channel> {
    let tls = tls::ClientFiles {
        ca: c.pki.as_ref().unwrap().ca.clone(),
        identity: identity.map(|f| (f.cert.clone(), f.key.clone())),
    }
    .load("test peer", tls::ALPN_H2)
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}", c.nodes[&id].ports.peer);
    let ch = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tls::Connector::new(tls));
    PeerClient::new(ch)
}

/// A vote request for a term far ahead: granted, it would depose the leader.
fn disruptive_vote() -> RaftPayload {
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": 1000, "node_id": 9}, "committed": false},
        "last_log_id": null
    });
    RaftPayload {
        data: serde_json::to_vec(&vote).unwrap(),
    }
}

async fn term(c: &Cluster, id: u64) -> u64 {
    c.status(id).await.expect("status").term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_and_the_data_plane_forwards_https() {
    let backend = testkit::http::Server::start("hello over tls").await;
    let c = start_tls_cluster(3, &[]).await;

    // Admin over TLS: writes through one node, seen on every node.
    ctl_ok(
        &c,
        1,
        &["group", "create", "--name", "g", "--instance", "shared"],
    );
    let backend_url = format!("http://{}", backend.addr);
    ctl_ok(
        &c,
        2,
        &[
            "api",
            "create",
            "--group",
            "g",
            "--name",
            "hello",
            "--method",
            "GET",
            "--path",
            "/hello",
            "--backend",
            &backend_url,
        ],
    );
    ctl_ok(&c, 3, &["api", "deploy", "--group", "g", "--name", "hello"]);

    // HTTPS through every node's data plane.
    let client = c.client_tls();
    for id in 1..=3 {
        let addr = c.http_addr(id);
        let r = eventually("the API over https", SETTLE, || async {
            testkit::http::get_tls(&addr, "127.0.0.1", &client, "/hello")
                .await
                .filter(|r| r.status == 200)
        })
        .await;
        assert_eq!(r.body, "hello over tls");
    }
    let seen = backend.received();
    assert_eq!(seen.len(), 3);
    // (and one more below, through gatewayctl call)
    for req in &seen {
        let proto = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-proto"))
            .map(|(_, v)| v.as_str());
        assert_eq!(proto, Some("https"), "{req:?}");
    }

    // gatewayctl call speaks https too.
    let url = format!("https://{}/hello", c.http_addr(2));
    let ca = c.pki.as_ref().unwrap().ca.display().to_string();
    let called = ctl_ok(&c, 1, &["call", "--url", &url, "--ca", &ca]);
    assert_eq!(called["status"], 200, "{called}");
    assert_eq!(called["body"], "hello over tls");

    // Plaintext clients get nowhere: plain HTTP to the data plane, plaintext gRPC to admin.
    assert!(
        testkit::http::get(&c.http_addr(1), "/hello")
            .await
            .is_none_or(|r| r.status != 200)
    );
    let plain = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        c.nodes[&1].ports.admin
    ))
    .unwrap()
    .connect_timeout(Duration::from_secs(2))
    .timeout(Duration::from_secs(5))
    .connect_lazy();
    let mut admin = proto::admin::admin_client::AdminClient::new(plain);
    assert!(
        admin
            .describe_cluster(proto::admin::DescribeClusterRequest {})
            .await
            .is_err()
    );
    assert_eq!(
        backend.count(),
        4,
        "no plaintext request reached the backend"
    );

    // gatewayctl refuses an https endpoint without a CA to check it against.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(binaries!().gatewayctl)
            .args(["--endpoint", &c.admin_endpoint(1), "cluster", "status"])
            .env_remove("GATEWAY_TLS_CA")
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_a_cluster_certificate_reach_the_peer_service() {
    let mut c = start_tls_cluster(3, &[]).await;
    let rogue = Pki::new(&c.dir().join("rogue"), "rogue");
    let rogue_cert = rogue.issue("rogue-node", &["127.0.0.1", "localhost"]);

    // Positive control: a client with a cluster certificate is answered.
    let member = c.node_cert(1);
    let mut ok = peer_client(&c, 2, Some(&member));
    ok.probe(ProbeRequest { from_node_id: 9 })
        .await
        .expect("a member is answered");
    // The console's traffic question is a peer call like the others: answered to a member,
    // refused to a member that says it belongs to another cluster.
    let traffic = ok
        .instance_traffic(InstanceTrafficRequest {})
        .await
        .expect("a member is answered")
        .into_inner();
    assert_eq!(traffic.node_id, 2);
    let mut foreign = tonic::Request::new(InstanceTrafficRequest {});
    foreign.metadata_mut().insert(
        "x-gateway-cluster-id",
        "00000000000000000000000000000000".parse().unwrap(),
    );
    let refused = ok.instance_traffic(foreign).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");

    let before = term(&c, 1).await;
    let leader = c.wait_leader(SETTLE).await;
    for id in 1..=3 {
        // No client certificate, and one from another CA: refused at the handshake, so
        // neither a probe nor a vote for a far-ahead term gets through.
        for identity in [None, Some(&rogue_cert)] {
            let mut client = peer_client(&c, id, identity);
            let probe = client.probe(ProbeRequest { from_node_id: 9 }).await;
            assert!(probe.is_err(), "node {id} answered {identity:?}: {probe:?}");
            let vote = client.vote(disruptive_vote()).await;
            assert!(vote.is_err(), "node {id} took a vote from {identity:?}");
            let traffic = client.instance_traffic(InstanceTrafficRequest {}).await;
            assert!(traffic.is_err(), "node {id} told {identity:?} its traffic");
        }
        // Plaintext gRPC to a TLS peer port.
        let plain = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            c.nodes[&id].ports.peer
        ))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
        assert!(
            PeerClient::new(plain)
                .vote(disruptive_vote())
                .await
                .is_err()
        );
    }
    // Nothing moved: same term, same leader.
    assert_eq!(term(&c, 1).await, before);
    assert_eq!(c.wait_leader(SETTLE).await, leader);

    // A fourth node with a certificate from another CA cannot join. It keeps trying, and each
    // attempt is a handshake the voters refuse and log: wait for several of them.
    let refusals = |c: &Cluster| {
        (1..=3)
            .map(|id| {
                c.log_tail(id, 10_000)
                    .matches("TLS handshake refused")
                    .count()
            })
            .sum::<usize>()
    };
    let refused_so_far = refusals(&c);
    c.prepare_node(4);
    let four = c.node_cert(4);
    rogue.issue_into(&four, &["127.0.0.1", "localhost"]);
    c.spawn(4);
    eventually("the voters refusing node 4's attempts", SETTLE, || async {
        (refusals(&c) >= refused_so_far + 5).then_some(())
    })
    .await;
    let members = c.status(1).await.unwrap().members;
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(term(&c, 1).await, before);

    // The same node with a certificate of the cluster CA joins: the window above was real.
    c.kill(4);
    c.pki
        .as_ref()
        .unwrap()
        .issue_into(&four, &["127.0.0.1", "localhost"]);
    c.spawn(4);
    eventually(
        "node 4 joining with a cluster certificate",
        SETTLE,
        || async {
            let s = c.status(1).await?;
            s.members.iter().any(|m| m.node_id == 4).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_by_replacing_their_files() {
    let c = start_tls_cluster(1, &["--tls-reload-ms=200"]).await;
    let client = c.client_tls();
    let http = c.http_addr(1);
    let admin = format!("127.0.0.1:{}", c.nodes[&1].ports.admin);
    let first = testkit::http::served_certificate(&http, "127.0.0.1", &client)
        .await
        .unwrap();
    assert_eq!(
        testkit::http::served_certificate(&admin, "127.0.0.1", &client)
            .await
            .unwrap(),
        first
    );

    // A new certificate in place of the old: new connections get it, without a restart.
    let files = c.node_cert(1);
    c.pki
        .as_ref()
        .unwrap()
        .issue_into(&files, &["127.0.0.1", "localhost"]);
    let second = eventually("the new certificate served", SETTLE, || async {
        let now = testkit::http::served_certificate(&http, "127.0.0.1", &client)
            .await
            .ok()?;
        (now != first).then_some(now)
    })
    .await;
    eventually(
        "the admin listener on the new certificate",
        SETTLE,
        || async {
            let now = testkit::http::served_certificate(&admin, "127.0.0.1", &client)
                .await
                .ok()?;
            (now == second).then_some(())
        },
    )
    .await;

    // A broken file is reported and changes nothing: the last good certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    eventually("the broken file reported", SETTLE, || async {
        c.log_tail(1, 50).contains("do not load").then_some(())
    })
    .await;
    assert_eq!(
        testkit::http::served_certificate(&http, "127.0.0.1", &client)
            .await
            .unwrap(),
        second
    );
    let status = ctl_ok(&c, 1, &["cluster", "status"]);
    assert_eq!(status["node_id"], 1);
}

#[test]
fn a_node_with_unusable_certificate_files_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = std::process::Command::new(binaries!().gatewayd)
        .args([
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-admin=127.0.0.1:0",
            "--listen-peer=127.0.0.1:0",
            "--listen-http=127.0.0.1:0",
            "--listen-ops=127.0.0.1:0",
            "--http-tls-cert",
            &missing.display().to_string(),
            "--http-tls-key",
            &missing.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--http-tls-cert") && err.contains("missing.pem"),
        "{err}"
    );
}
