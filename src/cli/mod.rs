//! The `phasegate` command line: argument definitions and dispatch.
//!
//! Exit codes: 0 done, 1 the work failed (a failed or blocked run, gaps found), 2 bad usage or
//! configuration.

mod backfill;
mod commands;
mod common;
mod ops;

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
        #[arg(long, value_parser = parse_date_arg, required_unless_present = "scheduled_at")]
        date: Option<NaiveDate>,
        /// Instead of --date: the date a scheduled trigger (a message without data_date, as
        /// Cloud Scheduler publishes) gets when published at this instant (RFC 3339): its
        /// day in `[trigger] timezone` plus `offset_days`.
        #[arg(long, conflicts_with = "date")]
        scheduled_at: Option<String>,
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
    ///
    /// html: a self-contained calendar page (processors × dates coloured by status, the
    /// reason on hover) on stdout: `phasegate status ... --output html > status.html`.
    Status {
        #[arg(long, value_parser = parse_date_arg)]
        from: NaiveDate,
        #[arg(long, value_parser = parse_date_arg)]
        to: NaiveDate,
        #[arg(long, value_enum, default_value_t = StatusOutput::Table)]
        output: StatusOutput,
    },
    /// Every run attempt of each processor of a phase for one date, oldest first: status,
    /// reason, times, message id, delivery attempt, publication, production-readiness.
    History {
        #[arg(long)]
        phase: String,
        #[arg(long, value_parser = parse_date_arg)]
        date: NaiveDate,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Is each phase's expected date done by its deadline (`freshness` in the phase's
    /// config)? Exit 0 when every phase is on time, 1 when one is late: run it from Cloud
    /// Scheduler (as a Cloud Run job) or cron and alert on the failure.
    Freshness {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Judge as of this instant (RFC 3339) instead of now.
        #[arg(long, value_parser = parse_instant_arg)]
        at: Option<chrono::DateTime<chrono::Utc>>,
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
        #[arg(long, value_enum, default_value_t = VerifyOutput::Table)]
        output: VerifyOutput,
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
    /// Create the ledger table and the pipeline's tables (`setup`) if they are missing: on
    /// SQLite and the BigQuery emulator. Refused on real BigQuery, where Terraform owns every
    /// table (one `apply`, terraform/README.md).
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
        /// Days in the sample season: at least 21 (the bad dates fall around day 11 and the
        /// strict gate looks back 14 days).
        #[arg(long, default_value_t = 28, value_parser = parse_demo_days)]
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

/// How results are printed: readable text or one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `verify --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyOutput {
    Table,
    Json,
    Csv,
}

/// `status --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusOutput {
    Table,
    Json,
    Csv,
    Html,
}

fn parse_date_arg(s: &str) -> Result<NaiveDate, String> {
    crate::dates::parse_date(s).map_err(|e| e.to_string())
}

fn parse_instant_arg(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| format!("`{s}` is not an RFC 3339 timestamp (e.g. 2024-03-10T09:00:00-05:00)"))
}

/// The demo's sample season puts its two bad dates on the 5th and 9th game days (about day
/// 11), and precompute's gate looks back 14 days: the season must run a week past the bad
/// dates for the strict gate to block on the hole and the repair to show.
const DEMO_MIN_DAYS: u32 = 21;

fn parse_demo_days(s: &str) -> Result<u32, String> {
    let days: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of days"))?;
    if days < DEMO_MIN_DAYS {
        return Err(format!(
            "{days} is too short: the demo needs at least {DEMO_MIN_DAYS} days. Its bad dates \
             (a missing and a corrupt feed) fall on the 5th and 9th game days, about day 11, \
             and the strict gate looks back 14 days: the season must run on past them for the \
             gate to block on the hole and the backfill to repair it"
        ));
    }
    Ok(days)
}

impl Command {
    /// The `--from`/`--to` range of commands that take one.
    fn range(&self) -> Option<(NaiveDate, NaiveDate)> {
        match self {
            Command::Status { from, to, .. } | Command::Verify { from, to, .. } => {
                Some((*from, *to))
            }
            Command::Backfill(a) => Some((a.from, a.to)),
            _ => None,
        }
    }
}

/// `error: outer: cause`, each cause once (an I/O error is often both the message's last
/// words and its source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// `print!` panics when stdout is a closed pipe (`phasegate status ... | head`): that is the
/// reader being done, not an error, so exit quietly with 0.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The binary's entry point: [`main`] on a Tokio runtime.
///
/// The runtime is started here, not in `src/main.rs`: a `block_on` in the binary crate
/// compiles every command's future there, after this crate, together with copies of the
/// generic code this crate already has. Here the last step of a cold release build (this
/// crate, then the binary) takes 48 s instead of 58 s on 2 cores.
#[tokio::main]
pub async fn run() -> ExitCode {
    main().await
}

/// Parse arguments, run the command, map the result to an exit code.
pub async fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    if let Some((from, to)) = cli.command.range()
        && from > to
    {
        eprintln!("error: --from {from} is after --to {to}");
        return ExitCode::from(2);
    }
    crate::telemetry::init(match cli.command {
        Command::Serve { .. } => "info",
        // Commands print their own outcome; RUST_LOG=warn shows the worker's log lines too.
        _ => "off",
    });
    match commands::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}
