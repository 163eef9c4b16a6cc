//! `POST /console/live/traffic`: what the live charts draw, for the whole cluster.
//!
//! The serving node asks every member of the cluster for its request counters per instance
//! (the peer call `InstanceTraffic`, answered from the same counters as each node's
//! `/metrics`; see `cluster::traffic`), itself in process, each within [`NODE_TIMEOUT`], and
//! answers:
//!
//! ```json
//! {"node_id": 1, "at_ms": 1767229200000, "members": 3, "reporting": 2,
//!  "nodes": [{"node_id": 1, "reachable": true, "at_ms": ..., "started_ms": ...,
//!             "instances": [{"instance": "ded", "ceiling_rps": 2500, "limit_rps": 833.3,
//!                            "requests": 50, "throttled": 5, "failed": 3}]},
//!            {"node_id": 3, "reachable": false, "error": "no answer within 500 ms",
//!             "at_ms": 0, "started_ms": 0, "instances": []}],
//!  "instances": [{"instance": "ded", "ceiling_rps": 2500, "limit_rps": 1666.6,
//!                 "requests": 80, "throttled": 5, "failed": 3}]}
//! ```
//!
//! `instances` at the top sums the reachable nodes: `requests`, `throttled`, `failed` and
//! `limit_rps` (the shares) added up, `ceiling_rps` the cluster-wide ceiling (the highest any
//! node applies, so a spec change shows as soon as one node has it). Counters, not rates, so
//! that any number of pages may poll without disturbing each other: the page turns two
//! samples of each node into that node's rates (its own clock's `at_ms`, and `started_ms`
//! to tell a restart from counters that went down) and adds them up.
//!
//! Which instances the caller may see is the admin service's answer to `DescribeInstances`
//! with the caller's token: the same rule as every read of the admin API. Every node's
//! entry, not only the sums, is limited to those, so no instance name of another account
//! comes back from any node.

use crate::AdminStack;
use crate::api;
use crate::reply::ApiError;
use cluster::MemberTraffic;
use http::HeaderValue;
use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the serving node waits for each member's counters: a page polls every second,
/// and a member down must not hold up the others' sample.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// One instance's counters, on one node or summed over the cluster (in the sums, `limit_rps`
/// is the shares added up and `ceiling_rps` the highest any node applies; 0 until a node
/// knows the instance).
pub use proto::peer::InstanceCounters as InstanceTraffic;

/// One node's sample.
#[derive(Debug, PartialEq, Serialize)]
pub struct NodeSample {
    pub node_id: u64,
    pub reachable: bool,
    /// Why there is no sample from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the node read its counters, Unix milliseconds on its clock (0 when unreachable).
    pub at_ms: u64,
    /// When its counters started from zero, Unix milliseconds (0 when unreachable).
    pub started_ms: u64,
    /// Every visible instance, in the caller's order (empty when unreachable).
    pub instances: Vec<InstanceTraffic>,
}

/// The answer of `/console/live/traffic`.
#[derive(Debug, PartialEq, Serialize)]
pub struct Live {
    /// The node that gathered the sample.
    pub node_id: u64,
    /// When it did, Unix milliseconds.
    pub at_ms: u64,
    /// The members asked, and how many answered.
    pub members: usize,
    pub reporting: usize,
    pub nodes: Vec<NodeSample>,
    /// Per visible instance, summed over the reachable nodes.
    pub instances: Vec<InstanceTraffic>,
}

/// Asks every member of the cluster for its counters, each within the timeout given.
pub type TrafficSource = std::sync::Arc<
    dyn Fn(Duration) -> futures::future::BoxFuture<'static, Vec<MemberTraffic>> + Send + Sync,
>;

/// The sample for the caller of `auth`.
pub async fn sample(
    client: &mut AdminClient<AdminStack>,
    auth: Option<HeaderValue>,
    source: &TrafficSource,
    node_id: u64,
) -> Result<Vec<u8>, ApiError> {
    let visible: pb::DescribeInstancesReply =
        api::call_as(client, "DescribeInstances", b"{}", auth).await?;
    let visible: Vec<String> = visible.instances.into_iter().map(|i| i.name).collect();
    let replies = source(NODE_TIMEOUT).await;
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serde_json::to_vec(&summarise(node_id, at_ms, &visible, replies))
        .map_err(|e| ApiError::from(tonic::Status::internal(e.to_string())))
}

/// The members' replies limited to the `visible` instances, and their sums.
pub fn summarise(
    node_id: u64,
    at_ms: u64,
    visible: &[String],
    replies: Vec<MemberTraffic>,
) -> Live {
    let members = replies.len();
    let mut nodes = Vec::with_capacity(members);
    let mut sums: Vec<InstanceTraffic> = visible
        .iter()
        .map(|name| InstanceTraffic {
            instance: name.clone(),
            ..Default::default()
        })
        .collect();
    for MemberTraffic { node_id, reply } in replies {
        let reply = match reply {
            Ok(r) => r,
            Err(why) => {
                nodes.push(NodeSample {
                    node_id,
                    reachable: false,
                    error: Some(why),
                    at_ms: 0,
                    started_ms: 0,
                    instances: Vec::new(),
                });
                continue;
            }
        };
        let mut counters: BTreeMap<String, _> = reply
            .instances
            .into_iter()
            .map(|c| (c.instance.clone(), c))
            .collect();
        let instances: Vec<InstanceTraffic> = visible
            .iter()
            .map(|name| match counters.remove(name) {
                Some(c) => c,
                None => InstanceTraffic {
                    instance: name.clone(),
                    ..Default::default()
                },
            })
            .collect();
        for (sum, one) in sums.iter_mut().zip(&instances) {
            sum.ceiling_rps = sum.ceiling_rps.max(one.ceiling_rps);
            sum.limit_rps += one.limit_rps;
            sum.requests += one.requests;
            sum.throttled += one.throttled;
            sum.failed += one.failed;
        }
        nodes.push(NodeSample {
            node_id,
            reachable: true,
            error: None,
            at_ms: reply.at_ms,
            started_ms: reply.started_ms,
            instances,
        });
    }
    Live {
        node_id,
        at_ms,
        members,
        reporting: nodes.iter().filter(|n| n.reachable).count(),
        nodes,
        instances: sums,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::peer::{InstanceCounters, InstanceTrafficReply};

    fn counters(instance: &str, ceiling: u32, limit: f64, n: [u64; 3]) -> InstanceCounters {
        InstanceCounters {
            instance: instance.into(),
            ceiling_rps: ceiling,
            limit_rps: limit,
            requests: n[0],
            throttled: n[1],
            failed: n[2],
        }
    }

    fn answered(node_id: u64, instances: Vec<InstanceCounters>) -> MemberTraffic {
        MemberTraffic {
            node_id,
            reply: Ok(InstanceTrafficReply {
                node_id,
                at_ms: 1000 + node_id,
                started_ms: 10 * node_id,
                instances,
            }),
        }
    }

    #[test]
    fn reachable_nodes_are_summed_and_only_visible_instances_come_back() {
        let replies = vec![
            answered(
                1,
                vec![
                    counters("ded", 2500, 1000.0, [30, 2, 1]),
                    counters("theirs", 100, 50.0, [7, 0, 0]),
                ],
            ),
            // Node 2 has not heard of the instance's spec change yet.
            answered(2, vec![counters("ded", 2000, 900.0, [20, 1, 0])]),
            MemberTraffic {
                node_id: 3,
                reply: Err("no answer within 500 ms".into()),
            },
            // A node that does not know the instance yet.
            answered(4, vec![counters("theirs", 100, 50.0, [9, 0, 0])]),
        ];
        let live = summarise(2, 5000, &["ded".to_string()], replies);
        assert_eq!((live.node_id, live.at_ms), (2, 5000));
        assert_eq!((live.members, live.reporting), (4, 3));
        assert_eq!(
            live.instances,
            [InstanceTraffic {
                instance: "ded".into(),
                ceiling_rps: 2500,
                limit_rps: 1900.0,
                requests: 50,
                throttled: 3,
                failed: 1,
            }]
        );
        assert_eq!(live.nodes.len(), 4);
        assert_eq!(live.nodes[0].instances[0].requests, 30);
        assert_eq!((live.nodes[0].at_ms, live.nodes[0].started_ms), (1001, 10));
        assert_eq!(live.nodes[1].instances[0].ceiling_rps, 2000);
        assert_eq!(
            live.nodes[2],
            NodeSample {
                node_id: 3,
                reachable: false,
                error: Some("no answer within 500 ms".into()),
                at_ms: 0,
                started_ms: 0,
                instances: vec![],
            }
        );
        assert_eq!(
            live.nodes[3].instances,
            [InstanceTraffic {
                instance: "ded".into(),
                ..Default::default()
            }]
        );
        let json = String::from_utf8(serde_json::to_vec(&live).unwrap()).unwrap();
        assert!(!json.contains("theirs"), "{json}");
        assert_eq!(json.matches("\"error\"").count(), 1, "{json}");
    }

    #[test]
    fn nothing_visible_nothing_summed() {
        let live = summarise(
            1,
            0,
            &[],
            vec![answered(1, vec![counters("x", 1, 1.0, [1, 1, 1])])],
        );
        assert!(live.instances.is_empty());
        assert!(live.nodes[0].instances.is_empty());
        assert_eq!(live.reporting, 1);
    }
}
