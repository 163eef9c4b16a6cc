//! `import openapi`: APIs from an OpenAPI 3.0 document's paths and operations.
//!
//! Each operation becomes an API of the group: its method, its path (OpenAPI's `{param}`
//! templates are our syntax too; a parameter name is made of letters, digits and `_`), the
//! given backend, and a name from its `operationId` (else `METHOD-path`) made to fit the name
//! rules. The group's current document is fetched, the APIs merged into it, and the result
//! applied as one atomic apply without prune: APIs of the group that the OpenAPI document
//! does not have are left alone. An API that exists is redefined; its deployments keep serving
//! what they served (their stages are pinned to the earlier definition) unless `--stage` says
//! to deploy it. The document's `servers` are not used: the group's host and base path say
//! where the APIs are served, `--backend` where they forward to.

use crate::config::{ApplyArgs, fetch, read_text, report, send};
use crate::output::Format;
use crate::{Client, parse_duration};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use model::config::{ApiEntry, Definition, Document};
use model::validate;
use openapiv3::{OpenAPI, ReferenceOr};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Create (or redefine) APIs in a group from an OpenAPI 3.0 document's paths and
    /// operations, in one atomic apply. Names come from operationId (else METHOD-path),
    /// made to fit the name rules; `{param}` templates are kept.
    Openapi(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The OpenAPI 3.0 document, YAML or JSON (`-` reads standard input).
    file: PathBuf,
    /// The API group to create the APIs in (it must exist).
    #[arg(long)]
    group: String,
    /// Where the APIs forward to: http://HOST:PORT[/prefix], with an optional weight after
    /// `@` (see `api create --backend`). Repeat for several backends.
    #[arg(long = "backend", value_name = "URL[@WEIGHT]", required = true, value_parser = model::WeightedBackend::parse)]
    backends: Vec<model::WeightedBackend>,
    /// The backend timeout of every API, e.g. 5s, 300ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// ANONYMOUS, or APP: only authorised apps, with signed requests.
    #[arg(long, default_value = "ANONYMOUS")]
    auth_type: String,
    /// The backend is in this region (see `api create --backend-region`).
    #[arg(long, value_name = "REGION", conflicts_with = "backend_external")]
    backend_region: Option<String>,
    /// The backend is outside the cloud (see `api create --backend-external`).
    #[arg(long)]
    backend_external: bool,
    /// Deploy the imported APIs to these stages too (comma-separated: RELEASE, PRE, TEST).
    #[arg(long, value_delimiter = ',')]
    stage: Vec<String>,
    /// Check and show what would change, without writing.
    #[arg(long)]
    dry_run: bool,
    /// Import what maps and skip (listing them) the operations that cannot be APIs here;
    /// without it such a document is refused whole.
    #[arg(long)]
    skip_unsupported: bool,
}

pub async fn import(c: &mut Client, f: Format, a: ImportArgs) -> Result<()> {
    let text = read_text(&a.file)?;
    let spec = parse(&text)
        .with_context(|| format!("{} is not an OpenAPI 3.0 document", a.file.display()))?;
    let mut template = Definition {
        method: String::new(),
        path: String::new(),
        backend: String::new(),
        backends: Vec::new(),
        timeout_ms: a.timeout.as_millis() as u64,
        auth: a.auth_type.to_ascii_uppercase(),
        backend_location: match (&a.backend_region, a.backend_external) {
            (_, true) => "external".into(),
            (Some(region), false) => region.clone(),
            (None, false) => String::new(),
        },
    };
    template.set_backends(&model::Backends(a.backends.clone()));
    let (apis, unsupported) = apis_from(&spec, &template);
    if !unsupported.is_empty() {
        let list = unsupported.join("\n  - ");
        if !a.skip_unsupported {
            bail!(
                "{} operation(s) cannot be APIs here, nothing was imported (give --skip-unsupported to import the rest):\n  - {list}",
                unsupported.len()
            );
        }
        eprintln!("skipped {} operation(s):\n  - {list}", unsupported.len());
    }
    if apis.is_empty() {
        bail!("{} has no operations to import", a.file.display());
    }
    let current = fetch(c, String::new()).await?;
    let Some(mut group) = current.groups.into_iter().find(|g| g.name == a.group) else {
        bail!(
            "API group '{}' not found: create it first (gatewayctl group create --name {})",
            a.group,
            a.group
        );
    };
    for api in apis {
        merge(&mut group.apis, api, &a.stage);
    }
    let doc = Document {
        version: model::config::VERSION,
        groups: vec![group],
        policies: Vec::new(),
    };
    let reply = send(c, &doc, &ApplyArgs::additive(String::new()), a.dry_run).await?;
    report(f, &reply);
    Ok(())
}

fn parse(text: &str) -> Result<OpenAPI> {
    let spec: OpenAPI = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)?
    } else {
        serde_norway::from_str(text)?
    };
    if !spec.openapi.starts_with("3.0") {
        bail!(
            "openapi: '{}' is not a 3.0.x version (this import reads OpenAPI 3.0)",
            spec.openapi
        );
    }
    Ok(spec)
}

/// The APIs of `spec`'s operations (definitions from `template` but for method and path), and
/// the operations that cannot be APIs, each saying why.
pub fn apis_from(spec: &OpenAPI, template: &Definition) -> (Vec<ApiEntry>, Vec<String>) {
    let mut apis = Vec::new();
    let mut unsupported = Vec::new();
    let mut names = BTreeSet::new();
    for (path, item) in spec.paths.iter() {
        let ReferenceOr::Item(item) = item else {
            unsupported.push(format!("{path}: a $ref path item"));
            continue;
        };
        for (method, op) in item.iter() {
            let method = method.to_ascii_uppercase();
            let what = format!("{method} {path}");
            if validate::method(&method).is_err() {
                unsupported.push(format!(
                    "{what}: method {method} is not one of {}",
                    validate::METHODS.join(", ")
                ));
                continue;
            }
            let ours = match our_path(path) {
                Ok(p) => p,
                Err(why) => {
                    unsupported.push(format!("{what}: {why}"));
                    continue;
                }
            };
            let base = op
                .operation_id
                .as_deref()
                .map(sanitize)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| sanitize(&format!("{method}-{path}")));
            let name = unique(&base, &mut names);
            apis.push(ApiEntry {
                name,
                method,
                path: ours,
                backend: template.backend.clone(),
                backends: template.backends.clone(),
                timeout_ms: template.timeout_ms,
                auth: template.auth.clone(),
                backend_location: template.backend_location.clone(),
                apps: Vec::new(),
                ip_allow: Vec::new(),
                ip_deny: Vec::new(),
                stages: Vec::new(),
                pinned: Default::default(),
            });
        }
    }
    (apis, unsupported)
}

/// An OpenAPI path template as ours: a parameter must be a whole segment; its name is made of
/// letters, digits and `_`.
fn our_path(path: &str) -> Result<String, String> {
    let segments: Result<Vec<String>, String> = path
        .split('/')
        .map(|seg| {
            if !seg.contains(['{', '}']) {
                return Ok(seg.to_string());
            }
            let inner = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|s| !s.contains(['{', '}']))
                .ok_or_else(|| {
                    format!("segment '{seg}': a parameter must be a whole segment like {{id}}")
                })?;
            let name: String = inner
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            Ok(format!("{{{name}}}"))
        })
        .collect();
    let ours = segments?.join("/");
    validate::api_path(&ours).map_err(|e| e.to_string())?;
    Ok(ours)
}

/// `s` fitted to the name rules: letters, digits, `-`, `_`, `.`, starting with a letter or
/// digit, at most 64 characters.
fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut out: String = out.chars().take(validate::MAX_NAME_LEN).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `base`, or `base-2`, `base-3`, ... if taken.
fn unique(base: &str, taken: &mut BTreeSet<String>) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        let suffix = format!("-{n}");
        let room = validate::MAX_NAME_LEN - suffix.len();
        name = format!("{}{suffix}", &base[..base.len().min(room)]);
        n += 1;
    }
    name
}

/// Puts `new` into a group's APIs: a new one is added; an existing one is redefined, its
/// deployments pinned to what they served, and kept with its grants and IP rules. The
/// `stages` are deployed with the new definition.
fn merge(apis: &mut Vec<ApiEntry>, mut new: ApiEntry, stages: &[String]) {
    let deploy: Vec<String> = stages.iter().map(|s| s.to_ascii_uppercase()).collect();
    match apis.iter_mut().find(|a| a.name == new.name) {
        None => {
            new.stages = deploy;
            apis.push(new);
        }
        Some(old) => {
            let def = new.definition();
            if old.definition() != def {
                let served = old.definition();
                for st in std::mem::take(&mut old.stages) {
                    old.pinned.entry(st).or_insert_with(|| served.clone());
                }
            }
            for st in deploy {
                old.pinned.remove(&st);
                if !old.stages.contains(&st) {
                    old.stages.push(st);
                }
            }
            old.method = def.method;
            old.path = def.path;
            old.backend = def.backend;
            old.backends = def.backends;
            old.timeout_ms = def.timeout_ms;
            old.auth = def.auth;
            old.backend_location = def.backend_location;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_fit_our_rules() {
        assert_eq!(our_path("/pets/{petId}").unwrap(), "/pets/{petId}");
        assert_eq!(our_path("/a/{pet-id}/b").unwrap(), "/a/{pet_id}/b");
        assert!(
            our_path("/files/{name}.json")
                .unwrap_err()
                .contains("whole segment")
        );
        assert_eq!(sanitize("listPets"), "listPets");
        assert_eq!(sanitize("GET-/pets/{petId}"), "GET-pets-petId");
        assert_eq!(sanitize("--weird name!!"), "weird-name");
        let mut taken = BTreeSet::new();
        assert_eq!(unique("a", &mut taken), "a");
        assert_eq!(unique("a", &mut taken), "a-2");
        let long = "x".repeat(64);
        assert_eq!(unique(&long, &mut taken), long);
        assert_eq!(unique(&long, &mut taken).len(), 64);
    }

    #[test]
    fn the_petstore_maps_to_three_apis() {
        let spec = parse(include_str!("../../../tests/data/petstore.yaml")).unwrap();
        let template = Definition {
            method: String::new(),
            path: String::new(),
            backend: "http://127.0.0.1:1".into(),
            backends: vec![],
            timeout_ms: 5000,
            auth: "ANONYMOUS".into(),
            backend_location: String::new(),
        };
        let (apis, unsupported) = apis_from(&spec, &template);
        assert!(unsupported.is_empty(), "{unsupported:?}");
        let got: Vec<(&str, &str, &str)> = apis
            .iter()
            .map(|a| (a.name.as_str(), a.method.as_str(), a.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("listPets", "GET", "/pets"),
                ("createPets", "POST", "/pets"),
                ("showPetById", "GET", "/pets/{petId}"),
            ]
        );
        // A 3.1 document is refused by its version.
        let e = parse("openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n").unwrap_err();
        assert!(e.to_string().contains("not a 3.0.x version"), "{e}");
    }

    #[test]
    fn a_redefined_api_keeps_serving_what_it_served() {
        let api = |backend: &str| ApiEntry {
            name: "a".into(),
            method: "GET".into(),
            path: "/a".into(),
            backend: backend.into(),
            backends: vec![],
            timeout_ms: 5000,
            auth: "ANONYMOUS".into(),
            backend_location: String::new(),
            apps: vec![],
            ip_allow: vec![],
            ip_deny: vec![],
            stages: vec![],
            pinned: Default::default(),
        };
        let mut apis = vec![ApiEntry {
            stages: vec!["RELEASE".into()],
            ..api("http://127.0.0.1:1")
        }];
        merge(&mut apis, api("http://127.0.0.1:2"), &[]);
        assert!(apis[0].stages.is_empty());
        assert_eq!(apis[0].pinned["RELEASE"].backend, "http://127.0.0.1:1");
        assert_eq!(apis[0].backend, "http://127.0.0.1:2");
        merge(&mut apis, api("http://127.0.0.1:2"), &["release".into()]);
        assert_eq!(apis[0].stages, ["RELEASE"]);
        assert!(apis[0].pinned.is_empty());
    }
}
