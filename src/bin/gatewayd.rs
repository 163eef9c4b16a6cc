//! The gateway node binary; see the `gatewayd` crate.

fn main() -> anyhow::Result<()> {
    gatewayd::main()
}
