//! The `phasegate` command line: argument definitions and dispatch.
//!
//! Exit codes: 0 done, 1 the work failed (a failed or blocked run, gaps found), 2 bad usage or
//! configuration.

mod backfill;
mod commands;
mod common;

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
    /// Gap detection on a phase's output: exit 0 when continuous, 1 with the missing dates.
    ///
    /// Calendar-aware: expected dates are the output's reference (e.g. the schedule) or every
    /// day. Dates whose latest run is `no_data` are legitimately empty, not gaps.
    Verify {
        #[arg(long)]
        phase: String,
        #[arg(long, value_parser = parse_date_arg)]
        from: NaiveDate,
        #[arg(long, value_parser = parse_date_arg)]
        to: NaiveDate,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run a phase (or, with --all, every phase in order) over a date range without
    /// triggering later phases.
    ///
    /// Each date runs with skip_downstream_trigger through the same gate and ledger as a
    /// push. Dates already success/no_data are skipped unless --force. Ends with a summary
    /// and, for every date not done, the exact command that retries it.
    /// Exit codes: 0 every date done, 1 some failed or were skipped, 2 bad usage or
    /// configuration.
    Backfill(BackfillArgs),
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
        /// A clean season: no missing or corrupt feed.
        #[arg(long)]
        clean: bool,
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

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The phase to backfill.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub phase: Option<String>,
    /// Every phase in order, verifying each is gap-free before the next starts.
    #[arg(long)]
    pub all: bool,
    /// First date, YYYY-MM-DD.
    #[arg(long, value_parser = parse_date_arg)]
    pub from: NaiveDate,
    /// Last date (included), YYYY-MM-DD.
    #[arg(long, value_parser = parse_date_arg)]
    pub to: NaiveDate,
    /// stop: start no date after the first failure (dates in flight finish). continue: run
    /// every date. skip-dependents: skip only later dates whose checks look back over a
    /// failed or skipped date.
    #[arg(long, value_enum, default_value_t = crate::backfill::ErrorPolicy::Stop)]
    pub error_policy: crate::backfill::ErrorPolicy,
    /// Dates run at once. A date still waits for earlier dates within its phase's
    /// look-back window.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Run dates again even if they already succeeded.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (each date, what is skipped and why) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --all: do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Publish skip-flagged triggers to the phase's input topic and follow the ledger
    /// (the production path; needs the Pub/Sub bus).
    #[arg(long)]
    pub via_pubsub: bool,
    /// With --via-pubsub: seconds to wait for every date to finish.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// table: readable text; json: the plan or the summary as JSON.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
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
        // Commands print their own outcome; RUST_LOG=warn shows the worker's log lines too.
        _ => "off",
    });
    match commands::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
