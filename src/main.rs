//! The `phasegate` binary: see `phasegate --help`.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: a push allocates and frees a few hundred small
/// buffers across threads (HTTP, JSON, SQLite rows), where glibc's malloc took ~10 % of the
/// CPU (see README, "Benchmarks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    phasegate::cli::run()
}
