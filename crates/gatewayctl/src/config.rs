//! `export`, `diff`, `apply` and `import openapi`: the declarative configuration.
//!
//! Documents are YAML or JSON on disk (the format: [`model::config`], and the README's
//! "Declarative configuration"); they travel to the admin API as JSON. Parsing is typed, so a
//! misspelt field is refused with its line and column before anything is sent; every value is
//! then checked by the server, which lists every problem at once.

use crate::Client;
use crate::output::{Format, print_data, yaml};
use anyhow::{Context, Result, bail};
use clap::Args;
use model::config::Document;
use proto::admin as pb;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The first line of an exported YAML document.
const YAML_HEADER: &str = "# The API groups of a gateway cluster (gatewayctl export). Edit, then check with\n# `gatewayctl diff -f FILE` and apply with `gatewayctl apply -f FILE`.\n";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only this account's groups (an account token always exports its own).
    #[arg(long, default_value = "")]
    account: String,
}

/// What `diff` and `apply` read and how they treat what the file does not name.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The document, YAML or JSON (`-` reads standard input).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Also remove the groups (of --account, or every account's) and the APIs (of the groups
    /// in the file) that the file does not name.
    #[arg(long)]
    prune: bool,
    /// Let --prune remove groups and APIs that are deployed (their calls then get 404).
    #[arg(long, requires = "prune")]
    force: bool,
    /// Limit the apply to this account: every group in the file must be its, and --prune
    /// removes only its groups (an account token is always limited to its own).
    #[arg(long, default_value = "")]
    account: String,
}

/// Reads a document: JSON when it starts with `{`, YAML otherwise.
pub fn read_document(path: &Path) -> Result<Document> {
    let text = read_text(path)?;
    parse_document(&text).with_context(|| format!("{} is not a valid document", path.display()))
}

pub fn read_text(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn parse_document(text: &str) -> Result<Document> {
    let doc: Document = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)?
    } else {
        serde_norway::from_str(text)?
    };
    Ok(doc)
}

pub async fn export(c: &mut Client, f: Format, a: ExportArgs) -> Result<()> {
    let doc = fetch(c, a.account).await?;
    match f {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Format::Yaml | Format::Table => print!("{YAML_HEADER}{}", yaml(&doc)),
        Format::Csv => bail!("export writes YAML (the default) or JSON (-o json), not CSV"),
    }
    Ok(())
}

/// The cluster's document (of `account`, if not empty).
pub async fn fetch(c: &mut Client, account: String) -> Result<Document> {
    let json = c
        .export_config(pb::ExportConfigRequest { account })
        .await?
        .into_inner()
        .document_json;
    serde_json::from_str(&json).context("the server sent a document this gatewayctl cannot read")
}

/// `diff`: what `apply` would change (the server's dry run).
pub async fn diff(c: &mut Client, f: Format, a: ApplyArgs) -> Result<()> {
    let doc = read_document(&a.file)?;
    let reply = send(c, &doc, &a, true).await?;
    report(f, &reply);
    Ok(())
}

pub async fn apply(c: &mut Client, f: Format, a: ApplyArgs, dry_run: bool) -> Result<()> {
    let doc = read_document(&a.file)?;
    let reply = send(c, &doc, &a, dry_run).await?;
    report(f, &reply);
    Ok(())
}

pub async fn send(
    c: &mut Client,
    doc: &Document,
    a: &ApplyArgs,
    dry_run: bool,
) -> Result<pb::ApplyConfigReply> {
    Ok(c.apply_config(pb::ApplyConfigRequest {
        document_json: serde_json::to_string(doc)?,
        prune: a.prune,
        force: a.force,
        dry_run,
        account: a.account.clone(),
    })
    .await?
    .into_inner())
}

impl ApplyArgs {
    /// An apply of a document made here (not read from a file), without prune.
    pub fn additive(account: String) -> ApplyArgs {
        ApplyArgs {
            file: PathBuf::from("-"),
            prune: false,
            force: false,
            account,
        }
    }
}

/// Prints the changes: `+` added, `~` changed, `-` removed, each object's fields indented.
pub fn report(f: Format, reply: &pb::ApplyConfigReply) {
    let changes: Vec<_> = reply
        .changes
        .iter()
        .map(|c| json!({"kind": c.kind, "object": c.object, "details": c.details}))
        .collect();
    if matches!(f, Format::Json | Format::Yaml | Format::Csv) {
        print_data(f, &json!({"applied": reply.applied, "changes": changes}));
        return;
    }
    let count = |k: &str| reply.changes.iter().filter(|c| c.kind == k).count();
    for c in &reply.changes {
        let mark = match c.kind.as_str() {
            "add" => '+',
            "remove" => '-',
            _ => '~',
        };
        println!("{mark} {}", c.object);
        for d in &c.details {
            println!("    {d}");
        }
    }
    let summary = format!(
        "{} to add, {} to change, {} to remove",
        count("add"),
        count("change"),
        count("remove")
    );
    if reply.changes.is_empty() {
        println!("no changes: the cluster matches the document");
    } else if reply.applied {
        println!("applied: {summary}");
    } else {
        println!("dry run, nothing written: {summary}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_is_named_with_its_line() {
        let e = parse_document("version: 1\ngroups:\n- name: g\n  bas_path: /x\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("unknown field `bas_path`") && msg.contains("line 4"),
            "{msg}"
        );
    }

    #[test]
    fn the_readme_example_is_a_valid_document() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("### Declarative configuration").unwrap()..];
        let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let doc = parse_document(block).unwrap();
        let api = &doc.groups[0].apis[0];
        assert_eq!(
            (api.name.as_str(), api.stages.as_slice()),
            ("item", &["RELEASE".to_string()][..])
        );
        assert_eq!(
            api.pinned["PRE"].timeout_ms,
            model::config::DEFAULT_TIMEOUT_MS
        );
    }

    #[test]
    fn yaml_and_json_read_the_same() {
        let y = parse_document(
            "version: 1\ngroups:\n- name: g\n  apis:\n  - {name: a, method: GET, path: /a, backend: 'http://127.0.0.1:1'}\n",
        )
        .unwrap();
        let j = parse_document(&serde_json::to_string(&y).unwrap()).unwrap();
        assert_eq!(y, j);
        assert_eq!(
            y.groups[0].apis[0].timeout_ms,
            model::config::DEFAULT_TIMEOUT_MS
        );
        assert_eq!(parse_document(&yaml(&y)).unwrap(), y);
    }
}
