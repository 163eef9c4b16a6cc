//! The load generator as a stand-alone program (the benchmark uses it; `gatewayctl loadtest`
//! is the same flags with the spec changer wired to the admin API).
//!
//! ```sh
//! cargo run --release -p loadtest --example loadtest -- \
//!     --target http://127.0.0.1:8080/ping --rate 2000 --duration 10s --json out.json
//! ```

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "Open-loop HTTP load generator with SLA verdicts"
)]
struct Cli {
    #[command(flatten)]
    args: loadtest::LoadtestArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match loadtest::run_cli(cli.args, None).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
