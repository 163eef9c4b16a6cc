//! Compiles `proto/*.proto` with protox, a protobuf compiler written in Rust, so that building
//! the workspace needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: a build script binary reused from a
    // copied target dir would otherwise compile another checkout's .proto files.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [root.join("admin.proto"), root.join("peer.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Written for the admin server's gRPC reflection service.
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The admin messages convert to and from JSON for the web console (crates/console), whose
    // JSON endpoints take and give exactly these messages. A field left out is its default, as
    // in protobuf; a field the message does not have is refused, naming it.
    tonic_prost_build::configure()
        .message_attribute(
            ".gateway.admin.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .enum_attribute(
            ".gateway.admin.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        // The console's live chart gives the members' counters as they came.
        .message_attribute(
            ".gateway.peer.v1.InstanceCounters",
            "#[derive(serde::Serialize)]",
        )
        .compile_fds(fds)?;
    Ok(())
}
