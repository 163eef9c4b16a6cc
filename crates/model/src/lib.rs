//! The gateway's replicated state and the commands that change it.
//!
//! Every node holds one [`State`]; Raft delivers the same [`Proposal`]s to every node in the same
//! order, and [`State::apply`] turns each into an [`Applied`]: the [`Reply`] (or the
//! [`DomainError`] that refused the command), a [`ChangeSet`] naming what changed, and the
//! [`history`] records the command wrote. `apply` is deterministic: it reads no clock (the
//! proposer stamps each proposal with the time, and time in the state never goes backwards),
//! does no I/O and draws no random numbers, so every replica reaches the same state. A command
//! that fails changes nothing: it runs on an O(1) copy that replaces the state only on success.
//!
//! # Layout
//!
//! - `command`: [`Command`], [`Proposal`], [`Reply`] and the types commands carry.
//! - `state`: [`State`], the configuration in persistent (`imbl`) maps, and `apply`, which
//!   dispatches each command family to its handler module: `instances`, `groups` (groups,
//!   APIs, deployments, ACLs), `accounts` (accounts, recharges, alerts, tokens), `apps`,
//!   `usage` (flushes from the nodes) and `cycle` (the daily billing cycle).
//! - [`history`]: what commands write once and never change (ledger, bills, events, closed
//!   usage); kept on disk by the storage layer, never in the state.
//! - [`config`]: the declarative configuration document (`gatewayctl export`/`apply`); its
//!   planner is `state/config.rs`.
//! - [`backends`]: an API's backends and weights, their checks and stored text form.
//! - [`validate`]: field checks shared with the admin service, so both refuse the same input
//!   with the same message.

pub mod backends;
pub mod clock;
mod command;
pub mod config;
mod entity;
mod error;
pub mod history;
mod state;
pub mod validate;

pub use backends::{Backends, WeightedBackend};
pub use billing::BackendLocation;
pub use clock::{Clock, FakeClock, Nanos, SystemClock};
pub use command::{
    Command, GroupChange, InstanceOptions, Proposal, Reply, SpecialTarget, Update, UsageBatch,
    UsageDelta,
};
pub use entity::{
    Account, Api, ApiGroup, ApiSpec, ApiToken, App, AuthType, ChargeType, Deployment, Instance,
    IpRules, MonthToDate, ReleasedInstance, SpecChange, Stage, StopPeriod, StopReason, Stopped,
    TERM_GRACE_DAYS, ThrottleBinding, ThrottlePolicy, ThrottleUnit,
};
pub use error::DomainError;
pub use state::{
    Applied, CatalogMismatch, ChangeSet, DEFAULT_ACCOUNT, REMEMBERED_REQUESTS, Sessions, State,
};

/// Unix time in milliseconds, as stamped on a proposal by the node that proposed it.
pub type Millis = u64;
