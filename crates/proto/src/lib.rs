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

/// The method names of `service Admin`, as compiled from proto/admin.proto (in its order).
///
/// For checks that must cover every RPC the service has, whatever else lists them: the admin
/// service's authorisation table, and the test that calls each RPC as each kind of caller.
pub fn admin_methods() -> Vec<String> {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled by build.rs");
    fds.file
        .iter()
        .filter(|f| f.package() == "gateway.admin.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "Admin")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_string())
        .collect()
}
