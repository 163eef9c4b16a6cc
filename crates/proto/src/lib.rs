//! The gateway's gRPC interfaces, generated from `proto/*.proto` at build time.
//!
//! - [`admin`]: the operator-facing admin API (instances, groups, APIs, accounts, cluster).
//! - [`peer`]: node-to-node traffic (Raft messages, forwarded writes, bootstrap, demand reports).

#![allow(clippy::all, missing_docs)]

pub mod admin {
    tonic::include_proto!("gateway.admin.v1");
}

pub mod peer {
    tonic::include_proto!("gateway.peer.v1");
}

/// The encoded file descriptor set of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
