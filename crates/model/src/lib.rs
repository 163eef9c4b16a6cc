//! The gateway's replicated state and the commands that change it.
//!
//! Every node holds one [`State`]; Raft delivers the same [`Proposal`]s to every node in the same
//! order, and [`State::apply`] turns each into a [`Reply`] or a [`DomainError`]. `apply` is
//! deterministic: it reads no clock (the proposer stamps each proposal with the time), does no
//! I/O and draws no random numbers, so every replica reaches the same state. A command that fails
//! changes nothing: every check runs before the first mutation.

mod command;
mod error;
pub mod ledger;
mod state;
pub mod validate;

pub use command::{ApiSpec, AuthType, Command, GroupChange, Proposal, Reply};
pub use error::DomainError;
pub use state::{
    Account, Api, ApiGroup, ApiToken, App, ChargeType, DEFAULT_ACCOUNT, Deployment, Instance,
    IpRules, SpecChange, Stage, State,
};

/// Unix time in milliseconds, as stamped on a proposal by the node that proposed it.
pub type Millis = u64;
