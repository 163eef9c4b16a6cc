use serde::{Deserialize, Serialize};

/// Why a command was refused. Replicated as part of the Raft response, so it is plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DomainError {
    /// A field of the request is malformed or out of range; `reason` says what is allowed.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{kind} '{name}' not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: String, name: String },
    /// The request is well-formed but the state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
}

impl DomainError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        DomainError::NotFound {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(kind: &str, name: &str) -> Self {
        DomainError::AlreadyExists {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }
}
