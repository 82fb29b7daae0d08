//! What each subcommand does. Errors returned here are usage or configuration errors (exit 2);
//! work that ran and failed returns exit code 1.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::NaiveDate;

use super::common::{build, require_phase};
use super::{Cli, Command, Output, VerifyOutput};
use crate::auth::PushAuth;
use crate::config::{BackendKind, Config};
use crate::gate;
use crate::ledger::TriggerKind;
use crate::report::{StatusGrid, render_gate};
use crate::server::{ServerLimits, ServerState, serve_with, shutdown_signal};
use crate::startup::App;
use crate::worker::{PhaseOutcome, Publication, RunRequest};

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { db, days } => crate::demo::run(&db, days).await,
        command => {
            let config = Config::load(&cli.config)?;
            run_with_config(config, command).await
        }
    }
}

async fn run_with_config(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { phase } => serve_cmd(config, phase).await,
        Command::Run {
            phase,
            date,
            scheduled_at,
            skip_downstream_trigger,
            force,
        } => {
            let date = run_date(&config, date, scheduled_at.as_deref())?;
            let app = build(config).await?;
            require_phase(&app.config, &phase)?;
            let req = RunRequest {
                phase,
                data_date: date,
                trigger: TriggerKind::Cli,
                message_id: None,
                delivery_attempt: None,
                skip_downstream: skip_downstream_trigger,
                force,
            };
            run_cmd(&app, &req).await
        }
        Command::Check {
            phase,
            date,
            output,
        } => check_cmd(config, &phase, date, output).await,
        command
        @ (Command::Status { .. } | Command::History { .. } | Command::Freshness { .. }) => {
            super::ops::run(config, command).await
        }
        Command::Verify {
            phase,
            from,
            to,
            output,
        } => verify_cmd(config, &phase, from, to, output).await,
        Command::Backfill(args) => {
            let app = build(config).await?;
            super::backfill::run(&app, args).await
        }
        Command::Init => {
            if config.backend.kind == BackendKind::Bigquery
                && config.backend.emulator_host.is_none()
            {
                bail!(
                    "init creates tables on the embedded default and the emulators only: on \
                     Google Cloud, Terraform owns every table the workers use (terraform/, one \
                     `apply`; terraform/README.md). Nothing was changed."
                );
            }
            let app = build(config).await?;
            app.init_schema().await?;
            println!(
                "ledger table processor_run_history and {} setup statement(s) applied ({})",
                app.config.setup.for_backend(&app.config.backend.kind).len(),
                app.config.backend.kind.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::SampleData { from, days, clean } => {
            sample_data_cmd(config, from, days, clean).await
        }
        Command::Demo { .. } => unreachable!("handled before loading a configuration"),
    }
}

/// `run`'s date: `--date`, or the one `[trigger]` derives for a trigger published at
/// `--scheduled-at`.
fn run_date(
    config: &Config,
    date: Option<NaiveDate>,
    scheduled_at: Option<&str>,
) -> anyhow::Result<NaiveDate> {
    match (date, scheduled_at) {
        (Some(date), _) => Ok(date),
        (None, Some(at)) => {
            let trigger = config.trigger.as_ref().with_context(|| {
                format!(
                    "--scheduled-at needs a [trigger] section in {} (the time zone and offset a \
                     scheduled trigger's date is derived with)",
                    config.source.display()
                )
            })?;
            let date = crate::trigger::resolve(trigger, Some(at))?;
            println!(
                "a trigger published at {at} is for {date} ([trigger] timezone {}, offset_days {})",
                trigger.timezone, trigger.offset_days
            );
            Ok(date)
        }
        (None, None) => bail!("give --date or --scheduled-at"),
    }
}

/// `verify`: exit 0 when the phase's output is gap-free over the range, 1 when not.
async fn verify_cmd(
    config: Config,
    phase: &str,
    from: NaiveDate,
    to: NaiveDate,
    output: VerifyOutput,
) -> anyhow::Result<ExitCode> {
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let app = build(config).await?;
    require_phase(&app.config, phase)?;
    let v = crate::verify::verify(
        &app.config,
        app.ledger().as_ref(),
        app.warehouse().as_ref(),
        phase,
        from,
        to,
    )
    .await?;
    match output {
        VerifyOutput::Table => print!("{}", v.render_table()),
        VerifyOutput::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        VerifyOutput::Csv => print!("{}", v.render_csv()),
    }
    Ok(if v.is_continuous {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `sample-data`: a generated season in the SQLite file (bad dates unless `clean`).
async fn sample_data_cmd(
    config: Config,
    from: NaiveDate,
    days: u32,
    clean: bool,
) -> anyhow::Result<ExitCode> {
    if config.backend.kind != BackendKind::Sqlite {
        bail!("sample-data writes to the SQLite backend only");
    }
    let app = build(config).await?;
    app.init_schema().await?;
    let db = app.sqlite.as_ref().context("no SQLite backend")?;
    let mut spec = crate::sample::SeasonSpec::new(from, days);
    if clean {
        spec.missing_feed.clear();
        spec.corrupt_feed.clear();
    }
    let summary = crate::sample::generate(db, &spec).await?;
    println!(
        "{} game days ({} games, {} box scores), {} off-days; feed missing on {:?}, corrupt on {:?}",
        summary.game_days,
        summary.games,
        summary.box_scores,
        summary.off_days,
        spec.missing_feed,
        spec.corrupt_feed
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve_cmd(config: Config, phase: Option<String>) -> anyhow::Result<ExitCode> {
    if let Some(p) = &phase {
        require_phase(&config, p)?;
    }
    let auth = PushAuth::from_config(&config.auth)
        .with_context(|| format!("{}: push authentication", config.source.display()))?;
    let port = config.server.port;
    let limits = ServerLimits::from(&config.server);
    if let Some(a) = &auth
        && !a.keys().refresh().await
    {
        tracing::warn!("push signing keys not loaded at start-up; retrying in the background");
    }
    let app = build(config).await?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    tracing::info!(
        port,
        phase = phase.as_deref().unwrap_or("*"),
        "phasegate worker listening"
    );
    let state = Arc::new(ServerState {
        worker: app.worker.clone(),
        phase,
        auth,
    });
    // The outbox: events owed by runs of this worker's phase (every phase when it serves them
    // all) whose deliveries gave up are published at start-up and every
    // `server.outbox_sweep_secs` (a take-over that waits for their holders' leases), and on
    // `POST /relay` (Cloud Run: a scheduled call, since the loop gets no CPU between requests).
    let every = std::time::Duration::from_secs(app.worker.config().server.outbox_sweep_secs);
    let own: Vec<String> = state.phase.iter().cloned().collect();
    let sweep = crate::worker::spawn_outbox_sweep(app.worker.clone(), own, every);
    serve_with(listener, state, limits, shutdown_signal()).await?;
    sweep.abort();
    Ok(ExitCode::SUCCESS)
}

/// Run a phase from the CLI; on the in-process bus the cascade follows in this process.
pub async fn run_cmd(app: &App, req: &RunRequest) -> anyhow::Result<ExitCode> {
    let outcome = app.worker.run_phase(req).await?;
    println!("{}", describe(&req.phase, req.data_date, &outcome));
    let cascaded = matches!(
        &outcome,
        PhaseOutcome::Done {
            publication: Publication::Published { .. },
            ..
        }
    );
    if let (true, Some(bus)) = (cascaded, &app.bus) {
        bus.wait_idle().await;
        let grid = StatusGrid::load(
            &app.config,
            app.ledger().as_ref(),
            req.data_date,
            req.data_date,
        )
        .await?;
        println!("cascade on the in-process bus:\n{}", grid.render());
    }
    Ok(match outcome {
        PhaseOutcome::Done { .. } => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// One line saying what happened.
pub fn describe(phase: &str, date: NaiveDate, outcome: &PhaseOutcome) -> String {
    match outcome {
        PhaseOutcome::Done {
            runs, publication, ..
        } => {
            let runs = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}={}{}",
                        r.processor,
                        r.status,
                        r.rows_affected
                            .map(|n| format!(" ({n} rows)"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let publ = match publication {
                Publication::Published { .. } => "completion event published",
                Publication::Skipped => "skip_downstream_trigger: completion event NOT published",
                Publication::AlreadyPublished => "completion event already published",
                Publication::PendingElsewhere => {
                    "completion event owed: another delivery holding the run publishes it"
                }
            };
            format!("{phase} {date}: {} — {runs}; {publ}", outcome.label())
        }
        other => format!(
            "{phase} {date}: {} — {}",
            other.label(),
            other.reason().unwrap_or_default()
        ),
    }
}

async fn check_cmd(
    config: Config,
    phase: &str,
    date: NaiveDate,
    output: Output,
) -> anyhow::Result<ExitCode> {
    require_phase(&config, phase)?;
    let app = build(config).await?;
    let phase = app
        .config
        .phase(phase)
        .context("phase vanished from the configuration")?;
    let mut reports = Vec::new();
    for p in &phase.processors {
        reports.push(
            gate::evaluate(
                &app.config,
                p,
                date,
                app.ledger().as_ref(),
                app.warehouse().as_ref(),
            )
            .await?,
        );
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Output::Table => {
            for r in &reports {
                print!("{}", render_gate(r));
            }
        }
    }
    Ok(if reports.iter().any(|r| r.blocks()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
