//! The declarative configuration against the state: [`State::export_config`] writes a
//! [`Document`], and [`Command::ApplyConfig`](crate::Command::ApplyConfig) makes the groups
//! match one.
//!
//! An apply first builds every group the document names, as it will be, from the document and
//! the current state, collecting every problem on the way (it does not stop at the first);
//! then it takes out the groups that change or go, and puts the new ones in, checking the
//! routes between groups once every group is in its final shape (so two groups can swap hosts,
//! and two APIs their paths, in one apply). Like every command it runs on a copy of the state
//! that replaces it only on success: a refused apply changes nothing.
//!
//! What is validated is the final state, not a path to it, with the same field checks as the
//! single commands (`groups.rs`, `apps.rs`).

use super::groups::{
    check_api_spec, check_instance_ref, check_route_fields, deployed_key, remove_group, route_key,
};
use super::{Api, ApiGroup, Deployment, Effects, IpRules, Stage, State, route_of};
use crate::config::{
    ApiEntry, ApplyOptions, ApplyReport, ChangeKind, Definition, Document, GroupEntry,
    ObjectChange, Problem, VERSION,
};
use crate::{ApiSpec, AuthType, BackendLocation};
use crate::{DEFAULT_ACCOUNT, DomainError, Millis, validate};
use catalog::{Catalog, SHARED_INSTANCE};
use imbl::{OrdMap, OrdSet};
use std::collections::{BTreeMap, BTreeSet};

impl State {
    /// The configuration of the groups of `account` (every group when `None`), in the
    /// document format: what `apply` of the same document leaves unchanged.
    pub fn export_config(&self, account: Option<&str>) -> Document {
        let groups: Vec<&ApiGroup> = match account {
            Some(a) => self.groups_of_account(a).collect(),
            None => self.groups.values().collect(),
        };
        Document {
            version: VERSION,
            groups: groups.into_iter().map(export_group).collect(),
            policies: self
                .throttles
                .values()
                .filter(|p| account.is_none_or(|a| a == p.account))
                .map(policies::export)
                .collect(),
        }
    }

    /// What applying `doc` would change, checked exactly as the command is, on a copy: the
    /// state is not touched.
    pub fn dry_run_config(
        &self,
        doc: &Document,
        options: &ApplyOptions,
        now: Millis,
        catalog: &Catalog,
    ) -> Result<ApplyReport, DomainError> {
        let mut copy = self.clone();
        let mut fx = Effects::default();
        apply(&mut copy, doc, options, now, catalog, &mut fx)
    }
}

fn export_group(g: &ApiGroup) -> GroupEntry {
    let apis = g
        .apis
        .values()
        .map(|api| {
            let mut stages = Vec::new();
            let mut pinned = BTreeMap::new();
            for stage in Stage::ALL {
                match g.deployments.get(&stage).and_then(|d| d.get(&api.name)) {
                    Some(d) if d.spec == api.spec => stages.push(stage.as_str().to_string()),
                    Some(d) => {
                        pinned.insert(stage.as_str().to_string(), definition_of(&d.spec));
                    }
                    None => {}
                }
            }
            let acl = g.api_acls.get(&api.name).cloned().unwrap_or_default();
            let def = definition_of(&api.spec);
            ApiEntry {
                name: api.name.clone(),
                method: def.method,
                path: def.path,
                backend: def.backend,
                backends: def.backends,
                timeout_ms: def.timeout_ms,
                auth: def.auth,
                backend_location: def.backend_location,
                apps: g
                    .grants
                    .get(&api.name)
                    .map(|apps| apps.iter().cloned().collect())
                    .unwrap_or_default(),
                ip_allow: acl.allow,
                ip_deny: acl.deny,
                stages,
                pinned,
            }
        })
        .collect();
    GroupEntry {
        name: g.name.clone(),
        account: g.account.clone(),
        instance: g.instance.clone(),
        host: g.host.clone(),
        base_path: g.base_path.clone(),
        ip_allow: g.ip_allow.clone(),
        ip_deny: g.ip_deny.clone(),
        apis,
    }
}

fn definition_of(spec: &ApiSpec) -> Definition {
    let mut def = Definition {
        method: spec.method.clone(),
        path: spec.path.clone(),
        backend: String::new(),
        backends: Vec::new(),
        timeout_ms: spec.timeout_ms,
        auth: spec.auth.as_str().to_string(),
        // Local, the default, is left out: documents without backend locations round-trip.
        backend_location: match &spec.backend_location {
            BackendLocation::Local => String::new(),
            other => other.as_text().to_string(),
        },
    };
    def.set_backends(&spec.backends);
    def
}

/// Makes the groups match `doc` (see the module docs), or refuses with every problem found.
pub(super) fn apply(
    s: &mut State,
    doc: &Document,
    options: &ApplyOptions,
    now: Millis,
    catalog: &Catalog,
    fx: &mut Effects,
) -> Result<ApplyReport, DomainError> {
    let mut problems = Problems::default();
    let plan = plan(s, doc, options, now, catalog, &mut problems);
    problems.verdict()?;

    // Take out what changes or goes, then put in the new shapes: routes between groups are
    // checked only against the final shapes.
    let changed: Vec<&String> = plan
        .groups
        .iter()
        .filter(|(name, g)| s.groups.get(*name) != Some(*g))
        .map(|(name, _)| name)
        .collect();
    let mut olds = BTreeMap::new();
    for name in plan.removed.iter().chain(changed.iter().copied()) {
        if let Some(old) = s.groups.get(name).cloned() {
            remove_group(s, name);
            olds.insert(name.clone(), old);
        }
    }
    for name in &changed {
        let g = &plan.groups[*name];
        let route = route_of(g.host.as_deref(), g.base_path.as_deref());
        if let Some(other) = s.index.routes.get(&route) {
            problems.push(
                &format!("group {name}"),
                DomainError::FailedPrecondition(format!(
                    "API group '{other}' already serves host {} and base path {}",
                    g.host.as_deref().unwrap_or("(any)"),
                    g.base_path.as_deref().unwrap_or("(none)")
                )),
            );
            continue;
        }
        insert_group(s, g.clone());
    }
    problems.verdict()?;

    // The report and the change set: the document's groups in its order, then the pruned.
    let mut report = ApplyReport::default();
    for entry in &doc.groups {
        if changed.contains(&&entry.name) {
            fx.changes.groups.insert(entry.name.clone());
            report_group(
                &mut report,
                olds.get(&entry.name),
                plan.groups.get(&entry.name),
            );
        }
    }
    for name in &plan.removed {
        fx.changes.groups.insert(name.clone());
        report_group(&mut report, olds.get(name), None);
    }
    // Bindings of APIs the groups step removed go with them; a document without policies
    // leaves the rest alone (unless it prunes).
    policies::drop_orphan_bindings(s, fx);
    if !doc.policies.is_empty() || options.prune {
        policies::apply(
            s,
            &doc.policies,
            options,
            now,
            &mut problems,
            fx,
            &mut report.changes,
        );
        problems.verdict()?;
    }
    Ok(report)
}

/// Every problem of a document, in the order found.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, object: &str, e: DomainError) {
        self.0.push(Problem {
            object: object.to_string(),
            message: e.to_string(),
        });
    }

    fn check(&mut self, object: &str, r: Result<(), DomainError>) {
        if let Err(e) = r {
            self.push(object, e);
        }
    }

    fn verdict(&self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let n = self.0.len();
        let list: Vec<String> = self.0.iter().map(|p| format!("  - {p}")).collect();
        Err(DomainError::invalid(
            "document",
            format!(
                "{n} problem{}, nothing was applied:\n{}",
                if n == 1 { "" } else { "s" },
                list.join("\n")
            ),
        ))
    }
}

/// The groups as they will be.
struct Plan {
    /// Every group the document names, in its final shape.
    groups: BTreeMap<String, ApiGroup>,
    /// The groups a prune removes.
    removed: Vec<String>,
}

fn plan(
    s: &State,
    doc: &Document,
    options: &ApplyOptions,
    now: Millis,
    catalog: &Catalog,
    problems: &mut Problems,
) -> Plan {
    if doc.version != VERSION {
        problems.push(
            "document",
            DomainError::invalid(
                "version",
                format!(
                    "{} is not a version this node reads (it reads {VERSION})",
                    doc.version
                ),
            ),
        );
    }
    if let Some(a) = &options.account
        && s.account(a).is_err()
    {
        problems.push(
            "document",
            DomainError::invalid("account", format!("'{a}' is not an existing account")),
        );
    }
    let mut groups = BTreeMap::new();
    for entry in &doc.groups {
        let object = format!("group {}", entry.name);
        if groups.contains_key(&entry.name) {
            problems.push(
                &object,
                DomainError::invalid("name", "the document names this group more than once"),
            );
            continue;
        }
        let g = plan_group(s, entry, options, now, catalog, problems);
        groups.insert(entry.name.clone(), g);
    }
    let mut removed = Vec::new();
    if options.prune {
        let in_scope: Vec<&ApiGroup> = match &options.account {
            Some(a) => s.groups_of_account(a).collect(),
            None => s.groups.values().collect(),
        };
        for g in in_scope {
            if groups.contains_key(&g.name) {
                continue;
            }
            let deployed = deployed_summary(g, None);
            if !options.force && !deployed.is_empty() {
                problems.push(
                    &format!("group {}", g.name),
                    DomainError::FailedPrecondition(format!(
                        "not in the document, and a prune removes it, but it has deployed APIs ({deployed}); apply with --force to stop their traffic too, or keep the group in the document"
                    )),
                );
            }
            removed.push(g.name.clone());
        }
    }
    Plan { groups, removed }
}

/// `STAGE: api, api; ...` of what `g` has deployed (of API `only`, if given).
fn deployed_summary(g: &ApiGroup, only: Option<&str>) -> String {
    g.deployments
        .iter()
        .filter_map(|(stage, apis)| {
            let names: Vec<&str> = apis
                .keys()
                .map(String::as_str)
                .filter(|n| only.is_none_or(|o| o == *n))
                .collect();
            (!names.is_empty()).then(|| format!("{}: {}", stage.as_str(), names.join(", ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A group as the document describes it, built on what the state has (creation times, the
/// APIs the document does not name, deployments whose definition does not change).
fn plan_group(
    s: &State,
    entry: &GroupEntry,
    options: &ApplyOptions,
    now: Millis,
    catalog: &Catalog,
    problems: &mut Problems,
) -> ApiGroup {
    let object = format!("group {}", entry.name);
    problems.check(&object, validate::name("name", &entry.name));
    let account = match (&entry.account, &options.account) {
        (a, _) if !a.is_empty() => a.clone(),
        (_, Some(scope)) => scope.clone(),
        (_, None) => DEFAULT_ACCOUNT.to_string(),
    };
    if let Some(scope) = &options.account
        && *scope != account
    {
        problems.push(
            &object,
            DomainError::invalid(
                "account",
                format!("'{account}' is not '{scope}', the only account this apply may change"),
            ),
        );
    }
    if s.account(&account).is_err() {
        problems.push(
            &object,
            DomainError::invalid("account", format!("'{account}' is not an existing account")),
        );
    }
    let existing = s.groups.get(&entry.name);
    if let Some(old) = existing
        && old.account != account
    {
        problems.push(
            &object,
            DomainError::invalid(
                "account",
                format!(
                    "the group belongs to account '{}'; a group cannot move to '{account}'",
                    old.account
                ),
            ),
        );
    }
    let instance = if entry.instance.is_empty() {
        SHARED_INSTANCE.to_string()
    } else {
        entry.instance.clone()
    };
    problems.check(&object, check_instance_ref(s, &instance, &account));
    problems.check(
        &object,
        check_route_fields(entry.host.as_deref(), entry.base_path.as_deref()),
    );
    check_cidrs(&object, &entry.ip_allow, &entry.ip_deny, problems);

    let mut g = existing
        .cloned()
        .unwrap_or_else(|| ApiGroup::empty(&entry.name, &account, now));
    g.instance = instance;
    g.host = entry.host.clone();
    g.base_path = entry.base_path.clone();
    g.ip_allow = entry.ip_allow.clone();
    g.ip_deny = entry.ip_deny.clone();

    // The APIs the document does not name: kept, or pruned.
    let named: BTreeSet<&str> = entry.apis.iter().map(|a| a.name.as_str()).collect();
    if options.prune {
        let unnamed: Vec<String> = g
            .apis
            .keys()
            .filter(|n| !named.contains(n.as_str()))
            .cloned()
            .collect();
        for name in unnamed {
            let deployed = deployed_summary(&g, Some(&name));
            if !options.force && !deployed.is_empty() {
                problems.push(
                    &format!("api {}/{name}", entry.name),
                    DomainError::FailedPrecondition(format!(
                        "not in the document, and a prune removes it, but it is deployed ({deployed}); apply with --force to stop its traffic too, or keep the API in the document"
                    )),
                );
            }
            remove_api(&mut g, &name);
        }
    }

    let mut seen = BTreeSet::new();
    for api in &entry.apis {
        let object = format!("api {}/{}", entry.name, api.name);
        if !seen.insert(api.name.as_str()) {
            problems.push(
                &object,
                DomainError::invalid("name", "the group names this API more than once"),
            );
            continue;
        }
        plan_api(s, &mut g, &account, api, &object, now, catalog, problems);
    }

    // The routes of the final shape: no two APIs at one method and path, on the group or on
    // one stage.
    g.api_routes = OrdMap::new();
    for api in g.apis.values() {
        if let Some(other) = g.api_routes.insert(route_key(&api.spec), api.name.clone()) {
            problems.push(
                &format!("api {}/{}", g.name, api.name),
                DomainError::FailedPrecondition(format!(
                    "API '{}/{other}' already serves {} {}",
                    g.name, api.spec.method, api.spec.path
                )),
            );
        }
    }
    g.deployed_routes = OrdMap::new();
    for (stage, apis) in &g.deployments {
        for (name, d) in apis {
            if let Some(other) = g
                .deployed_routes
                .insert(deployed_key(*stage, &d.spec), name.clone())
            {
                problems.push(
                    &format!("api {}/{name}", g.name),
                    DomainError::FailedPrecondition(format!(
                        "API '{}/{other}' is already deployed to {} at {} {}",
                        g.name,
                        stage.as_str(),
                        d.spec.method,
                        d.spec.path
                    )),
                );
            }
        }
    }
    g
}

/// Puts one API entry into `g`: its definition, deployments, grants and IP access control.
// The planner's context (state, clock, catalog, problems) travels as arguments, like every
// step of the plan.
#[allow(clippy::too_many_arguments)]
fn plan_api(
    s: &State,
    g: &mut ApiGroup,
    account: &str,
    entry: &ApiEntry,
    object: &str,
    now: Millis,
    catalog: &Catalog,
    problems: &mut Problems,
) {
    problems.check(object, validate::name("name", &entry.name));
    let spec = spec_of(&entry.definition(), object, "", catalog, problems);
    let mut targets: BTreeMap<Stage, ApiSpec> = BTreeMap::new();
    for st in &entry.stages {
        match Stage::parse(st) {
            Ok(stage) => {
                if let Some(spec) = &spec {
                    targets.insert(stage, spec.clone());
                }
            }
            Err(e) => problems.push(object, rename(e, "stages")),
        }
    }
    for (st, def) in &entry.pinned {
        match Stage::parse(st) {
            Ok(stage) if entry.stages.iter().any(|s| s.eq_ignore_ascii_case(st)) => problems.push(
                object,
                DomainError::invalid(
                    "pinned",
                    format!(
                        "{} is also in stages: a stage serves either the API's definition or a pinned one",
                        stage.as_str()
                    ),
                ),
            ),
            Ok(stage) => {
                if let Some(pinned) = spec_of(def, object, &format!("pinned.{st}."), catalog, problems) {
                    targets.insert(stage, pinned);
                }
            }
            Err(e) => problems.push(object, rename(e, "pinned")),
        }
    }
    let mut apps = OrdSet::new();
    for app in &entry.apps {
        match s.apps.get(app) {
            None => problems.push(
                object,
                DomainError::invalid(
                    "apps",
                    format!(
                        "'{app}' is not an existing app (apps are created with `app create`, not by an apply)"
                    ),
                ),
            ),
            Some(a) if a.account != account => problems.push(
                object,
                DomainError::invalid(
                    "apps",
                    format!("app '{app}' belongs to another account than the group"),
                ),
            ),
            Some(_) => {
                apps.insert(app.clone());
            }
        }
    }
    check_cidrs(object, &entry.ip_allow, &entry.ip_deny, problems);
    let Some(spec) = spec else {
        return;
    };

    let name = entry.name.clone();
    let created_at_ms = g.apis.get(&name).map_or(now, |a| a.created_at_ms);
    g.apis.insert(
        name.clone(),
        Api {
            name: name.clone(),
            spec,
            created_at_ms,
        },
    );
    for stage in Stage::ALL {
        let current = g
            .deployments
            .get(&stage)
            .and_then(|d| d.get(&name))
            .cloned();
        match (targets.remove(&stage), current) {
            (Some(want), Some(have)) if have.spec == want => {}
            (Some(want), _) => {
                g.deployments.entry(stage).or_default().insert(
                    name.clone(),
                    Deployment {
                        spec: want,
                        deployed_at_ms: now,
                    },
                );
            }
            (None, Some(_)) => abolish(g, stage, &name),
            (None, None) => {}
        }
    }
    if apps.is_empty() {
        g.grants.remove(&name);
    } else {
        g.grants.insert(name.clone(), apps);
    }
    if entry.ip_allow.is_empty() && entry.ip_deny.is_empty() {
        g.api_acls.remove(&name);
    } else {
        g.api_acls.insert(
            name,
            IpRules {
                allow: entry.ip_allow.clone(),
                deny: entry.ip_deny.clone(),
            },
        );
    }
}

/// A definition's fields checked as `CreateApi` checks them; `None` if any is wrong (each
/// wrong one is a problem, its field prefixed with `prefix`).
fn spec_of(
    def: &Definition,
    object: &str,
    prefix: &str,
    catalog: &Catalog,
    problems: &mut Problems,
) -> Option<ApiSpec> {
    let before = problems.0.len();
    let auth = AuthType::parse(&def.auth)
        .map_err(|e| problems.push(object, rename(e, &format!("{prefix}auth"))))
        .ok();
    let location = BackendLocation::parse(&def.backend_location)
        .map_err(|why| {
            let field = format!("{prefix}backend_location");
            problems.push(object, DomainError::invalid(&field, why))
        })
        .ok();
    if let Some(l) = &location {
        problems.check(
            object,
            validate::backend_location(catalog, l)
                .map_err(|e| rename(e, &format!("{prefix}backend_location"))),
        );
    }
    // The backends' errors carry their own field names (`backend`, `backends[2].weight`),
    // put under the document's prefix.
    let backends = def
        .backend_list()
        .and_then(|b| b.check().map(|()| b))
        .map_err(|e| problems.push(object, prefixed(e, prefix)))
        .ok();
    let spec = ApiSpec {
        method: def.method.clone(),
        path: def.path.clone(),
        backends: backends.unwrap_or_default(),
        timeout_ms: def.timeout_ms,
        auth: auth.unwrap_or_default(),
        backend_location: location.unwrap_or_default(),
    };
    // Each field on its own, so that every wrong one is listed.
    for (field, r) in [
        ("method", validate::method(&spec.method)),
        ("path", validate::api_path(&spec.path)),
        ("timeout_ms", validate::timeout_ms(spec.timeout_ms)),
    ] {
        if let Err(e) = r {
            problems.push(object, rename(e, &format!("{prefix}{field}")));
        }
    }

    // The same checks as the single commands (which stop at the first): a spec this passes,
    // `CreateApi` passes too.
    debug_assert!(problems.0.len() > before || check_api_spec(&spec, catalog).is_ok());
    (problems.0.len() == before).then_some(spec)
}

/// `e` with `prefix` put before its field (`pinned.PRE.` + `backends[1].url`).
fn prefixed(e: DomainError, prefix: &str) -> DomainError {
    match e {
        DomainError::Invalid { field, reason } => DomainError::Invalid {
            field: format!("{prefix}{field}"),
            reason,
        },
        other => other,
    }
}

/// `e` with its field renamed to the document's name for it (`stage` is `stages` there).
fn rename(e: DomainError, field: &str) -> DomainError {
    match e {
        DomainError::Invalid { reason, .. } if !field.is_empty() => DomainError::Invalid {
            field: field.to_string(),
            reason,
        },
        other => other,
    }
}

fn check_cidrs(object: &str, allow: &[String], deny: &[String], problems: &mut Problems) {
    for c in allow {
        problems.check(object, validate::cidr("ip_allow", c));
    }
    for c in deny {
        problems.check(object, validate::cidr("ip_deny", c));
    }
}

fn abolish(g: &mut ApiGroup, stage: Stage, name: &str) {
    if let Some(d) = g.deployments.get_mut(&stage) {
        d.remove(name);
        if d.is_empty() {
            g.deployments.remove(&stage);
        }
    }
}

/// Takes an API out of a group being planned (its routes are rebuilt after).
fn remove_api(g: &mut ApiGroup, name: &str) {
    g.apis.remove(name);
    for stage in Stage::ALL {
        abolish(g, stage, name);
    }
    g.grants.remove(name);
    g.api_acls.remove(name);
}

/// Puts a group and its index entries in (the inverse of `groups::remove_group`).
fn insert_group(s: &mut State, g: ApiGroup) {
    s.index.add_group(&g);
    s.groups.insert(g.name.clone(), g);
}

/// Field -> value of a group, for the report.
fn group_fields(g: &ApiGroup) -> Vec<(&'static str, String)> {
    vec![
        ("account", g.account.clone()),
        ("instance", g.instance.clone()),
        ("host", g.host.clone().unwrap_or_else(|| "(any)".into())),
        (
            "base_path",
            g.base_path.clone().unwrap_or_else(|| "(none)".into()),
        ),
        ("ip_allow", list(&g.ip_allow)),
        ("ip_deny", list(&g.ip_deny)),
    ]
}

/// Field -> value of an API in `g`, for the report.
fn api_fields(g: &ApiGroup, name: &str) -> Vec<(&'static str, String)> {
    let Some(api) = g.apis.get(name) else {
        return Vec::new();
    };
    let acl = g.api_acls.get(name).cloned().unwrap_or_default();
    let apps: Vec<String> = g
        .grants
        .get(name)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default();
    let mut fields = vec![
        ("method", api.spec.method.clone()),
        ("path", api.spec.path.clone()),
        ("backend", api.spec.backends.to_text()),
        ("timeout_ms", api.spec.timeout_ms.to_string()),
        ("auth", api.spec.auth.as_str().to_string()),
        (
            "backend_location",
            api.spec.backend_location.as_text().to_string(),
        ),
        ("apps", list(&apps)),
        ("ip_allow", list(&acl.allow)),
        ("ip_deny", list(&acl.deny)),
    ];
    for stage in Stage::ALL {
        let served = match g.deployments.get(&stage).and_then(|d| d.get(name)) {
            None => "(not deployed)".to_string(),
            Some(d) => format!(
                "{} {} -> {} ({} ms, {})",
                d.spec.method,
                d.spec.path,
                d.spec.backends,
                d.spec.timeout_ms,
                d.spec.auth.as_str()
            ),
        };
        fields.push((stage.as_str(), served));
    }
    fields
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

/// `field: value` for an added object, `field: old => new` for what changed.
fn field_details(
    old: &[(&'static str, String)],
    new: &[(&'static str, String)],
    kind: ChangeKind,
) -> Vec<String> {
    match kind {
        ChangeKind::Add => new
            .iter()
            .filter(|(_, v)| !v.starts_with('('))
            .map(|(f, v)| format!("{f}: {v}"))
            .collect(),
        ChangeKind::Remove => Vec::new(),
        ChangeKind::Change => old
            .iter()
            .zip(new)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((f, a), (_, b))| format!("{f}: {a} => {b}"))
            .collect(),
    }
}

/// Adds the changes of one group and of its APIs to the report.
fn report_group(report: &mut ApplyReport, old: Option<&ApiGroup>, new: Option<&ApiGroup>) {
    let (name, kind) = match (old, new) {
        (None, Some(n)) => (&n.name, ChangeKind::Add),
        (Some(o), None) => (&o.name, ChangeKind::Remove),
        (Some(o), Some(_)) => (&o.name, ChangeKind::Change),
        (None, None) => return,
    };
    let fields = |g: Option<&ApiGroup>| g.map(group_fields).unwrap_or_default();
    let details = field_details(&fields(old), &fields(new), kind);
    if kind != ChangeKind::Change || !details.is_empty() {
        report.changes.push(ObjectChange {
            kind,
            object: format!("group {name}"),
            details,
        });
    }
    let apis = |g: Option<&ApiGroup>| -> BTreeSet<String> {
        g.map(|g| g.apis.keys().cloned().collect())
            .unwrap_or_default()
    };
    for api in apis(old).union(&apis(new)) {
        let before = old.map(|g| api_fields(g, api)).unwrap_or_default();
        let after = new.map(|g| api_fields(g, api)).unwrap_or_default();
        let kind = match (before.is_empty(), after.is_empty()) {
            (true, false) => ChangeKind::Add,
            (false, true) => ChangeKind::Remove,
            _ if before == after => continue,
            _ => ChangeKind::Change,
        };
        report.changes.push(ObjectChange {
            kind,
            object: format!("api {name}/{api}"),
            details: field_details(&before, &after, kind),
        });
    }
}

mod policies;

#[cfg(test)]
mod tests;
