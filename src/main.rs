//! The `phasegate` binary: see `phasegate --help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    phasegate::cli::main().await
}
