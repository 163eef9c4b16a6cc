//! `POST /console/live/traffic`: what the live charts draw.
//!
//! The answer is this node's request counters for each instance the caller may see, read from
//! its own metrics (`gateway_requests_total`, `gateway_throttled_total`,
//! `gateway_instance_ceiling_rps`, `gateway_instance_limit_rps`), with the time they were
//! read; the page turns two samples a second apart into rates. Counters, not rates, so
//! that any number of pages may poll without disturbing each other.
//!
//! Which instances the caller may see is the admin service's answer to `DescribeInstances`
//! with the caller's token: the same rule as every read of the admin API.

use crate::AdminStack;
use crate::api;
use crate::reply::ApiError;
use http::HeaderValue;
use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// One instance's counters on this node.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct InstanceTraffic {
    pub instance: String,
    /// The cluster-wide ceiling, as this node's data plane applies it (0 until it knows the
    /// instance).
    pub ceiling_rps: f64,
    /// This node's share of the ceiling.
    pub limit_rps: f64,
    /// Requests answered, throttled ones included.
    pub requests: u64,
    /// Requests the instance limiter refused (429).
    pub throttled: u64,
    /// Requests answered with a 5xx status.
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    pub node_id: u64,
    /// When the counters were read, Unix milliseconds (this node's system clock).
    pub at_ms: u64,
    pub instances: Vec<InstanceTraffic>,
}

/// The sample for the caller of `auth`.
pub async fn sample(
    client: &mut AdminClient<AdminStack>,
    auth: Option<HeaderValue>,
    metrics: &(dyn Fn(&mut String) + Send + Sync),
    node_id: u64,
) -> Result<Vec<u8>, ApiError> {
    let visible: pb::DescribeInstancesReply =
        api::call_as(client, "DescribeInstances", b"{}", auth).await?;
    let mut text = String::new();
    metrics(&mut text);
    let mut all = parse(&text);
    let instances = visible
        .instances
        .into_iter()
        .map(|i| {
            all.remove(&i.name).unwrap_or(InstanceTraffic {
                instance: i.name,
                ..Default::default()
            })
        })
        .collect();
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serde_json::to_vec(&Sample {
        node_id,
        at_ms,
        instances,
    })
    .map_err(|e| ApiError::from(tonic::Status::internal(e.to_string())))
}

/// The per-instance counters in a Prometheus text exposition.
pub fn parse(text: &str) -> BTreeMap<String, InstanceTraffic> {
    let mut out: BTreeMap<String, InstanceTraffic> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample_line(line) else {
            continue;
        };
        let Some(instance) = label(&labels, "instance") else {
            continue;
        };
        if instance.is_empty() {
            continue;
        }
        let entry = out
            .entry(instance.to_string())
            .or_insert_with(|| InstanceTraffic {
                instance: instance.to_string(),
                ..Default::default()
            });
        match name {
            "gateway_requests_total" => {
                let n = value as u64;
                entry.requests += n;
                if label(&labels, "class") == Some("5xx") {
                    entry.failed += n;
                }
            }
            "gateway_throttled_total" => entry.throttled += value as u64,
            "gateway_instance_ceiling_rps" => entry.ceiling_rps = value,
            "gateway_instance_limit_rps" => entry.limit_rps = value,
            _ => {}
        }
    }
    out
}

/// A sample's labels, unescaped, in their order.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value`.
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let name = &line[..open];
    let mut labels = Vec::new();
    let mut chars = line[open + 1..].char_indices();
    let mut key = String::new();
    let close;
    loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => {
                close = open + 1 + i;
                break;
            }
            ',' => {}
            '=' => {
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    match chars.next()?.1 {
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((std::mem::take(&mut key), value));
            }
            c => key.push(c),
        }
    }
    let value = line[close + 1..].trim().parse().ok()?;
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_per_instance() {
        let text = "# HELP gateway_requests_total x\n\
            gateway_requests_total{instance=\"ded\",api=\"shop/item\",class=\"2xx\"} 40\n\
            gateway_requests_total{instance=\"ded\",api=\"shop/other\",class=\"4xx\"} 7\n\
            gateway_requests_total{instance=\"ded\",api=\"shop/item\",class=\"5xx\"} 3\n\
            gateway_requests_total{instance=\"\",api=\"\",class=\"4xx\"} 9\n\
            gateway_requests_total{instance=\"we\\\"ird\",api=\"a,b\",class=\"2xx\"} 1\n\
            gateway_throttled_total{instance=\"ded\"} 5\n\
            gateway_instance_ceiling_rps{instance=\"ded\"} 2500\n\
            gateway_instance_limit_rps{instance=\"ded\"} 833.3\n\
            gateway_open_connections 4\n";
        let all = parse(text);
        assert_eq!(
            all["ded"],
            InstanceTraffic {
                instance: "ded".into(),
                ceiling_rps: 2500.0,
                limit_rps: 833.3,
                requests: 50,
                throttled: 5,
                failed: 3,
            }
        );
        assert_eq!(all["we\"ird"].requests, 1);
        assert_eq!(all.len(), 2, "{all:?}");
    }
}
