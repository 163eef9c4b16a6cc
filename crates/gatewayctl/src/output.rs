//! How results are shown: aligned tables for people, JSON for scripts, CSV for spreadsheets.

use proto::admin as pb;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// Comma-separated values: a header line, then a line per record (a listing's records, or
    /// the one record shown). Nested values are written as JSON text.
    Csv,
    /// The JSON output's data as YAML (and `export`'s document, its default).
    Yaml,
}

/// `v` as YAML.
pub fn yaml<T: serde::Serialize>(v: &T) -> String {
    serde_norway::to_string(v).expect("every value the CLI prints encodes as YAML")
}

/// Data for scripts: pretty JSON, or YAML.
pub fn print_data(format: Format, v: &Value) {
    let mut v = v.clone();
    with_times(&mut v);
    let v = &v;
    match format {
        Format::Yaml => print!("{}", yaml(v)),
        _ => println!("{}", serde_json::to_string_pretty(v).expect("json")),
    }
}

/// Puts an RFC 3339 UTC time next to every epoch-milliseconds time of `v` (at any depth):
/// `"created_at": "2026-12-03T09:15:02Z"` beside `"created_at_ms": 1796289302000`, unless the
/// record has that field already. A zero or null time gets null.
pub fn with_times(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let times: Vec<(String, Value)> = map
                .iter()
                .filter_map(|(k, t)| {
                    let name = k.strip_suffix("_ms")?;
                    let is_time = name.ends_with("_at") || name == "term_end" || name == "at";
                    (is_time && !map.contains_key(name)).then(|| {
                        let human = match t.as_u64() {
                            Some(ms) if ms > 0 => Value::String(crate::ms_to_utc(ms)),
                            _ => Value::Null,
                        };
                        (name.to_string(), human)
                    })
                })
                .collect();
            for child in map.values_mut() {
                with_times(child);
            }
            for (k, t) in times {
                map.insert(k, t);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(with_times),
        _ => {}
    }
}

/// One CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// `records` (JSON objects) as CSV: the header is the first record's fields, in order.
pub fn csv(records: &[Value]) -> String {
    let Some(Value::Object(first)) = records.first() else {
        return String::new();
    };
    let keys: Vec<&String> = first.keys().collect();
    let mut out = keys
        .iter()
        .map(|k| csv_field(&Value::String((*k).clone())))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in records {
        let line: Vec<String> = keys.iter().map(|k| csv_field(&r[k.as_str()])).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// A value as CSV: an array's elements are the records, anything else is one record.
fn value_csv(v: &Value) -> String {
    match v {
        Value::Array(items) => csv(items),
        other => csv(std::slice::from_ref(other)),
    }
}

/// A table: a header and rows of cells, printed with aligned columns.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(self.header.clone());
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// Prints `value` as JSON, or `table` for people.
pub fn print(format: Format, mut value: Value, table: impl FnOnce() -> Table) {
    with_times(&mut value);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value).expect("json")),
        Format::Table => print!("{}", table().render()),
        Format::Csv => print!("{}", value_csv(&value)),
        Format::Yaml => print!("{}", yaml(&value)),
    }
}

/// One page of a paged listing (bills, events, usage, a ledger).
pub struct Page {
    /// The page's records, as JSON.
    pub items: Vec<Value>,
    /// The JSON field holding the records when the page is printed as an object.
    pub items_key: &'static str,
    /// The JSON field holding where the next page starts.
    pub next_key: &'static str,
    /// Where the next page starts (`None`: this page is the last).
    pub next: Option<Value>,
    /// The flag that reads the next page, given `next`.
    pub flag: &'static str,
    /// Print JSON as `{items_key: [...], next_key: ...}`; otherwise as the bare array these
    /// listings printed before they were paged, with the cursor on stderr.
    pub as_object: bool,
}

impl Page {
    /// The line that tells a person how to read the next page.
    fn hint(&self) -> Option<String> {
        let next = self.next.as_ref()?;
        let v = next.as_str().map_or_else(|| next.to_string(), String::from);
        Some(format!("more: {} {v} reads the next page", self.flag))
    }
}

/// Prints a page as JSON or as `table`; when more pages follow, table output ends with a hint
/// line naming the flag that reads the next one.
pub fn print_page(format: Format, mut page: Page, table: impl FnOnce() -> Table) {
    page.items.iter_mut().for_each(with_times);
    let (out, err) = render_page(format, page, table);
    print!("{out}");
    if let Some(e) = err {
        eprintln!("{e}");
    }
}

/// What [`print_page`] writes to stdout, and to stderr.
fn render_page(
    format: Format,
    page: Page,
    table: impl FnOnce() -> Table,
) -> (String, Option<String>) {
    let hint = page.hint();
    match format {
        Format::Json if page.as_object => {
            let v = json!({ page.items_key: page.items, page.next_key: page.next });
            (pretty(&v), None)
        }
        // Stdout stays the array scripts parse; the cursor goes where people see it.
        Format::Json => (
            pretty(&json!(page.items)),
            hint.map(|h| format!("{h} (give --limit for JSON with {})", page.next_key)),
        ),
        Format::Table => {
            let mut out = table().render();
            if let Some(h) = hint {
                out.push_str(&h);
                out.push('\n');
            }
            (out, None)
        }
        // The records only; the cursor goes where people see it.
        Format::Csv => (csv(&page.items), hint),
        Format::Yaml => (
            yaml(&json!({ page.items_key: page.items, page.next_key: page.next })),
            None,
        ),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json") + "\n"
}

pub fn charge_type_name(c: i32) -> &'static str {
    match pb::ChargeType::try_from(c) {
        Ok(pb::ChargeType::Month) => "month",
        Ok(pb::ChargeType::Year) => "year",
        _ => "postpaid",
    }
}

pub fn instance_json(i: &pb::Instance) -> Value {
    json!({
        "name": i.name,
        "spec": i.spec,
        "max_rps": i.max_rps,
        "sla": i.sla,
        "region": i.region,
        "charge_type": charge_type_name(i.charge_type),
        "account": i.account,
        "created_at_ms": i.created_at_ms,
        "spec_changed_at_ms": i.spec_changed_at_ms,
        "status": i.status,
        "term_end": i.term_end_ms.map(crate::ms_to_utc),
        "term_end_ms": i.term_end_ms,
        "auto_renew": i.auto_renew,
        "stopped_reason": i.stopped_reason,
        "stopped_at_ms": i.stopped_at_ms,
        "release_at": i.release_at_ms.map(crate::ms_to_utc),
        "release_at_ms": i.release_at_ms,
    })
}

pub fn instances_table(list: &[pb::Instance]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "SPEC",
        "MAX RPS",
        "REGION",
        "CHARGE",
        "ACCOUNT",
        "STATUS",
        "TERM ENDS (UTC)",
    ]);
    for i in list {
        let status = match &i.stopped_reason {
            Some(r) => format!("stopped ({r})"),
            None => i.status.clone(),
        };
        let term = match i.term_end_ms {
            Some(ms) => format!(
                "{} ({ms}){}",
                crate::ms_to_utc(ms),
                if i.auto_renew { ", auto-renew" } else { "" }
            ),
            None => "-".into(),
        };
        t.row(vec![
            i.name.clone(),
            i.spec.clone(),
            i.max_rps.to_string(),
            i.region.clone(),
            charge_type_name(i.charge_type).into(),
            i.account.clone(),
            status,
            term,
        ]);
    }
    t
}

/// The backends as `URL[@WEIGHT]`, space-separated (the weight left out when 1).
pub fn backends_text(d: &pb::ApiDefinition) -> String {
    if d.backends.is_empty() {
        return d.backend.clone();
    }
    d.backends
        .iter()
        .map(|b| match b.weight {
            None | Some(1) => b.url.clone(),
            Some(w) => format!("{}@{w}", b.url),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn definition_json(d: &Option<pb::ApiDefinition>) -> Value {
    let d = d.clone().unwrap_or_default();
    let location = if d.backend_location.is_empty() {
        "local".to_string()
    } else {
        d.backend_location.clone()
    };
    let backends: Vec<Value> = d
        .backends
        .iter()
        .map(|b| json!({"url": b.url, "weight": b.weight.unwrap_or(1)}))
        .collect();
    json!({"method": d.method, "path": d.path, "backend": d.backend, "backends": backends, "timeout_ms": d.timeout_ms, "auth_type": d.auth_type, "backend_location": location})
}

pub fn group_json(g: &pb::ApiGroup) -> Value {
    json!({
        "name": g.name,
        "account": g.account,
        "instance": g.instance,
        "host": g.host,
        "base_path": g.base_path,
        "created_at_ms": g.created_at_ms,
        "apis": g.apis,
        "grants": g.grants,
        "ip_allow": g.ip_allow,
        "ip_deny": g.ip_deny,
        "api_acls": g.api_acls.iter().map(|a| json!({
            "api": a.api,
            "allow": a.allow,
            "deny": a.deny,
        })).collect::<Vec<_>>(),
        "deployments": g.deployments.iter().map(deployment_json).collect::<Vec<_>>(),
    })
}

pub fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "stage": d.stage,
        "api": d.api,
        "definition": definition_json(&d.definition),
        "deployed_at_ms": d.deployed_at_ms,
    })
}

pub fn groups_table(list: &[pb::ApiGroup]) -> Table {
    let mut t = Table::new(&["NAME", "INSTANCE", "HOST", "BASE PATH", "APIS", "DEPLOYED"]);
    for g in list {
        t.row(vec![
            g.name.clone(),
            g.instance.clone(),
            g.host.clone().unwrap_or_else(|| "*".into()),
            g.base_path.clone().unwrap_or_else(|| "-".into()),
            g.apis.len().to_string(),
            g.deployments.len().to_string(),
        ]);
    }
    t
}

pub fn api_json(a: &pb::Api) -> Value {
    json!({
        "group": a.group,
        "name": a.name,
        "definition": definition_json(&a.definition),
        "created_at_ms": a.created_at_ms,
        "deployed_stages": a.deployed_stages,
    })
}

pub fn apis_table(list: &[pb::Api]) -> Table {
    let mut t = Table::new(&[
        "GROUP", "NAME", "METHOD", "PATH", "BACKEND", "LOCATION", "TIMEOUT", "STAGES",
    ]);
    for a in list {
        let d = a.definition.clone().unwrap_or_default();
        let backends = backends_text(&d);
        t.row(vec![
            a.group.clone(),
            a.name.clone(),
            d.method,
            d.path,
            backends,
            if d.backend_location.is_empty() {
                "local".into()
            } else {
                d.backend_location
            },
            format!("{}ms", d.timeout_ms),
            a.deployed_stages.join(","),
        ]);
    }
    t
}

pub fn cluster_json(s: &pb::ClusterStatus) -> Value {
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "term": s.term,
        "state": s.state,
        "last_log_index": s.last_log_index,
        "applied_index": s.applied_index,
        "cluster_id": s.cluster_id,
        "not_serving": s.not_serving,
        "waiting": s.waiting,
        "members": s.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "peer_addr": m.peer_addr,
            "role": m.role,
            "voter": m.voter,
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

pub fn cluster_table(s: &pb::ClusterStatus) -> Table {
    let mut t = Table::new(&["NODE", "ROLE", "VOTER", "PEER ADDRESS", "MATCHED INDEX"]);
    for m in &s.members {
        let me = if m.node_id == s.node_id {
            " (this node)"
        } else {
            ""
        };
        t.row(vec![
            format!("{}{me}", m.node_id),
            m.role.clone(),
            if m.voter { "yes" } else { "no" }.into(),
            m.peer_addr.clone(),
            m.matched_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

pub fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(as_object: bool, next: Option<Value>) -> Page {
        Page {
            items: vec![json!({"day": "2026-01-01"})],
            items_key: "bills",
            next_key: "next_after_day",
            next,
            flag: "--after",
            as_object,
        }
    }

    fn table() -> Table {
        let mut t = Table::new(&["DAY"]);
        t.row(vec!["2026-01-01".into()]);
        t
    }

    #[test]
    fn pages_keep_the_old_json_shape_unless_a_limit_is_given() {
        let next = Some(json!("2026-01-01"));
        let (out, err) = render_page(Format::Json, page(false, next.clone()), table);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!([{"day": "2026-01-01"}]));
        assert_eq!(
            err.as_deref(),
            Some(
                "more: --after 2026-01-01 reads the next page (give --limit for JSON with next_after_day)"
            )
        );

        let (out, err) = render_page(Format::Json, page(true, next), table);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"bills": [{"day": "2026-01-01"}], "next_after_day": "2026-01-01"})
        );
        assert_eq!(err, None);
        let (out, _) = render_page(Format::Json, page(true, None), table);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["next_after_day"], Value::Null);
    }

    #[test]
    fn tables_end_with_a_hint_while_pages_follow() {
        let (out, err) = render_page(Format::Table, page(false, Some(json!(42))), table);
        assert_eq!(
            out,
            "DAY\n2026-01-01\nmore: --after 42 reads the next page\n"
        );
        assert_eq!(err, None);
        let (out, _) = render_page(Format::Table, page(false, None), table);
        assert_eq!(out, "DAY\n2026-01-01\n");
    }
}
