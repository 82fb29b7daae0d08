//! The day-to-day commands: `status`, `history`, `freshness`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};

use super::common::{build, require_phase};
use super::{Command, Output, StatusOutput};
use crate::config::Config;
use crate::report::StatusGrid;
use crate::report::history::History;

/// Run one of this module's commands.
pub async fn run(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status { from, to, output } => status(config, from, to, output).await,
        Command::History {
            phase,
            date,
            output,
        } => history(config, &phase, date, output).await,
        Command::Freshness { output, at } => freshness(config, output, at).await,
        other => anyhow::bail!("not an operations command: {other:?}"),
    }
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing stdout"),
        _ => Ok(()),
    }
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

async fn status(
    config: Config,
    from: NaiveDate,
    to: NaiveDate,
    output: StatusOutput,
) -> anyhow::Result<ExitCode> {
    let app = build(config).await?;
    let grid = StatusGrid::load(&app.config, app.ledger().as_ref(), from, to).await?;
    let text = match output {
        StatusOutput::Table => format!("{}\n{}", grid.render(), grid.totals()),
        StatusOutput::Json => json(&grid.document())?,
        StatusOutput::Csv => grid.to_csv()?,
        StatusOutput::Html => grid.to_html(&app.config.pipeline.name),
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

async fn history(
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
    let history = History::load(phase, date, app.ledger().as_ref(), Utc::now()).await?;
    emit(&match output {
        Output::Table => history.render(),
        Output::Json => json(&history)?,
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn freshness(
    config: Config,
    output: Output,
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<ExitCode> {
    if config.phases.iter().all(|p| p.freshness.is_none()) {
        anyhow::bail!(
            "no phase in {} declares `freshness` (e.g. freshness = {{ by = \"09:00\", \
             timezone = \"America/New_York\", offset_days = -1 }}): nothing to check",
            config.source.display()
        );
    }
    let app = build(config).await?;
    let results = crate::freshness::check(
        &app.config,
        app.ledger().as_ref(),
        at.unwrap_or_else(Utc::now),
    )
    .await?;
    emit(&match output {
        Output::Table => crate::freshness::render(&results),
        Output::Json => json(&results)?,
    })?;
    Ok(if results.iter().all(|r| r.fresh) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
