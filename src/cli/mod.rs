//! The `phasegate` command line: argument definitions and dispatch.
//!
//! Exit codes: 0 done, 1 the work failed (a failed or blocked run, gaps found), 2 bad usage or
//! configuration.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};

/// Pipeline integrity for phase-based, event-driven data pipelines: gate every date on its
/// upstream runs, completeness and history; stop backfills from cascading.
#[derive(Debug, Parser)]
#[command(name = "phasegate", version, propagate_version = true)]
pub struct Cli {
    /// Pipeline configuration file.
    #[arg(
        long,
        global = true,
        env = "PHASEGATE_CONFIG",
        default_value = "pipeline.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the push worker: one phase (as on Cloud Run) or, without --phase, every phase.
    ///
    /// Listens on $PORT (default 8080): POST /push (single phase), POST /push/{phase},
    /// GET /healthz. Shuts down gracefully on SIGTERM.
    Serve {
        /// Serve only this phase on POST /push.
        #[arg(long)]
        phase: Option<String>,
    },
    /// Run one phase for one date through the same gate and ledger as a push.
    Run {
        #[arg(long)]
        phase: String,
        /// The data date, YYYY-MM-DD.
        #[arg(long, value_parser = parse_date_arg)]
        date: NaiveDate,
        /// Do not publish the completion event: later phases are not triggered.
        #[arg(long)]
        skip_downstream_trigger: bool,
        /// Run again even if the latest run for the date succeeded.
        #[arg(long)]
        force: bool,
    },
    /// Print the gate's findings for a phase and date without processing anything.
    Check {
        #[arg(long)]
        phase: String,
        #[arg(long, value_parser = parse_date_arg)]
        date: NaiveDate,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the latest run status of every processor for every date of a range.
    Status {
        #[arg(long, value_parser = parse_date_arg)]
        from: NaiveDate,
        #[arg(long, value_parser = parse_date_arg)]
        to: NaiveDate,
    },
    /// Create the ledger table and the pipeline's tables (`setup`) if they are missing.
    Init,
    /// Generate the NBA example's sample season (schedule and feed) into the SQLite backend.
    SampleData {
        /// First day of the season.
        #[arg(long, value_parser = parse_date_arg, default_value = "2025-10-21")]
        from: NaiveDate,
        /// Number of days.
        #[arg(long, default_value_t = 28)]
        days: u32,
    },
    /// The whole story on the embedded default: a sample season through the daily cascade,
    /// a strict gate blocking on a gap, a skip-flagged run stopping the cascade.
    Demo {
        /// SQLite file to (re)create for the demo.
        #[arg(long, default_value = "phasegate-demo.db")]
        db: PathBuf,
        /// Days in the sample season.
        #[arg(long, default_value_t = 28)]
        days: u32,
    },
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

fn parse_date_arg(s: &str) -> Result<NaiveDate, String> {
    crate::dates::parse_date(s).map_err(|e| e.to_string())
}

/// Parse arguments, run the command, map the result to an exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init(match cli.command {
        Command::Serve { .. } => "info",
        // The demo tells its own story; RUST_LOG=warn shows the worker's log lines too.
        Command::Demo { .. } => "off",
        _ => "warn",
    });
    match commands::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
