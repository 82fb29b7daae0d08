//! The `phasegate` binary: see `phasegate --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    phasegate::cli::run()
}
