//! `ExportConfig` and `ApplyConfig`: the declarative configuration (see [`model::config`]).
//!
//! Who may apply what is decided here, before anything is proposed, so that an account token
//! is told PERMISSION_DENIED for every group it may not touch; the command itself is limited
//! to the account too ([`ApplyOptions::account`]), so no proposer can widen it.

use crate::auth::Principal;
use model::State;
use model::config::{ApplyOptions, ApplyReport, Document};
use proto::admin as pb;
use tonic::Status;

/// The account an export or apply is limited to: an account token's own, or what the operator
/// asked (`None`: every account).
pub(crate) fn scope(p: &Principal, asked: String) -> Result<Option<String>, Status> {
    let scoped = p.scope(asked)?;
    Ok((!scoped.is_empty()).then_some(scoped))
}

/// The document of an `ApplyConfig` request.
pub(crate) fn parse(json: &str) -> Result<Document, Status> {
    serde_json::from_str(json).map_err(|e| {
        Status::invalid_argument(format!(
            "invalid document_json: {e} (expected the document gatewayctl export writes)"
        ))
    })
}

/// Refuses, listing every group at fault, a document that names groups an account token may
/// not touch: another account's, existing or named so.
pub(crate) fn authorize(p: &Principal, state: &State, doc: &Document) -> Result<(), Status> {
    let Principal::Account(own) = p else {
        return Ok(());
    };
    let mut refused = Vec::new();
    for g in &doc.groups {
        // The owner is not shown: the caller may not learn about other accounts.
        if state.groups.get(&g.name).is_some_and(|e| e.account != *own) {
            refused.push(format!(
                "  - group {}: belongs to another account than '{own}'",
                g.name
            ));
        } else if !g.account.is_empty() && g.account != *own {
            refused.push(format!(
                "  - group {}: account '{}' is not '{own}', the account of this token",
                g.name, g.account
            ));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the token of account '{own}' may apply only its own account's groups; nothing was applied:\n{}",
            refused.join("\n")
        )))
    }
}

pub(crate) fn options(r: &pb::ApplyConfigRequest, account: Option<String>) -> ApplyOptions {
    ApplyOptions {
        prune: r.prune,
        force: r.force,
        account,
    }
}

pub(crate) fn reply(report: ApplyReport, applied: bool) -> pb::ApplyConfigReply {
    pb::ApplyConfigReply {
        changes: report
            .changes
            .into_iter()
            .map(|c| pb::ConfigChange {
                kind: c.kind.as_str().to_string(),
                object: c.object,
                details: c.details,
            })
            .collect(),
        applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Command, Proposal};

    #[test]
    fn an_account_token_is_refused_every_group_of_another_account() {
        let cat = catalog::Catalog::builtin();
        let mut state = State::default();
        let p = Proposal {
            at_ms: 1,
            catalog: cat.fingerprint().into(),
            request_id: None,
            command: Command::CreateApiGroup {
                name: "shop".into(),
                account: model::DEFAULT_ACCOUNT.into(),
                instance: catalog::SHARED_INSTANCE.into(),
                host: None,
                base_path: None,
            },
        };
        state.apply(&p, cat).unwrap().reply.unwrap();
        let doc: Document = serde_json::from_value(serde_json::json!({"version": 1, "groups": [
            {"name": "shop"}, {"name": "x", "account": "default"}, {"name": "mine"}
        ]}))
        .unwrap();
        let acme = Principal::Account("acme".into());
        let e = authorize(&acme, &state, &doc).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("group shop: belongs to another account")
                && e.message()
                    .contains("group x: account 'default' is not 'acme'")
                && !e.message().contains("mine"),
            "{}",
            e.message()
        );
        assert!(authorize(&Principal::Operator, &state, &doc).is_ok());
        assert_eq!(
            scope(&acme, String::new()).unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(scope(&Principal::Operator, String::new()).unwrap(), None);
        assert!(scope(&acme, "default".into()).is_err());
    }
}
