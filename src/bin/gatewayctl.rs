//! The admin CLI binary; see the `gatewayctl` crate.

fn main() -> std::process::ExitCode {
    gatewayctl::main()
}
