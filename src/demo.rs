//! `phasegate demo`: the product's story on the embedded default, in one command.
//!
//! A sample season goes through the daily cascade on SQLite and the in-process bus. Two dates
//! go wrong (a feed that never arrived, a corrupt feed); the strict gates keep every later
//! phase from building on them. A skip-flagged trigger runs one phase and stops the cascade.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use serde_json::json;

use crate::bus::Publisher;
use crate::dates::days;
use crate::envelope::SKIP_DOWNSTREAM_TRIGGER;
use crate::example::{EXAMPLE_PIPELINE, example_config};
use crate::invocation::{shell_word, this_binary};
use crate::report::{StatusGrid, render_gate};
use crate::sample::{SeasonSpec, generate};
use crate::startup::{self, App};

/// The demo's configuration as a file beside its database (`phasegate-demo.toml` for
/// `phasegate-demo.db`), so the printed commands run from any directory.
fn write_config_beside(db: &Path) -> anyhow::Result<PathBuf> {
    let path = db.with_extension("toml");
    std::fs::write(&path, EXAMPLE_PIPELINE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The command lines the demo prints at its end, in order; each exits 0 on the demo's
/// database (tests/it/demo_commands.rs runs them).
pub fn inspect_commands(
    config: &Path,
    db: &Path,
    start: NaiveDate,
    last: NaiveDate,
    after: NaiveDate,
) -> Vec<String> {
    let pg = this_binary();
    let next = last.succ_opt().unwrap_or(last);
    let after_next = next.succ_opt().unwrap_or(next);
    vec![
        format!(
            "export PHASEGATE_CONFIG={} PHASEGATE_SQLITE_PATH={}",
            shell_word(&config.display().to_string()),
            shell_word(&db.display().to_string())
        ),
        format!("{pg} status --from {start} --to {last}"),
        format!("{pg} status --from {start} --to {last} --output html > phasegate-status.html"),
        format!("{pg} check --phase precompute --date {after}"),
        format!("{pg} history --phase precompute --date {after}"),
        format!("{pg} verify --phase predictions --from {start} --to {last}"),
        // The example's deadlines are New York mornings: at 16:00 UTC the day after the season,
        // every phase's expected date (the season's last) is done.
        format!("{pg} freshness --at {next}T16:00:00Z"),
        // What the 06:00 New York scheduler trigger does the morning after: its message has no
        // data_date; [trigger] derives yesterday's date from its publish time.
        format!("{pg} run --phase raw --scheduled-at {after_next}T11:00:00Z"),
    ]
}

fn remove_db(db: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", db.display())),
        }
    }
    Ok(())
}

/// Publish a trigger for `date` to the first phase and wait for the cascade to settle.
pub async fn trigger(app: &App, date: NaiveDate, skip: bool) -> anyhow::Result<()> {
    let bus = app
        .bus
        .as_ref()
        .context("the demo needs the in-process bus")?;
    let mut attributes = BTreeMap::from([("data_date".to_string(), date.to_string())]);
    if skip {
        attributes.insert(SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string());
    }
    let topic = app.config.phases[0].input().to_string();
    bus.publish(&topic, &json!({ "data_date": date }), attributes)
        .await?;
    bus.wait_idle().await;
    Ok(())
}

/// The season and the app the demo tells its story with.
struct Demo<'a> {
    app: App,
    spec: SeasonSpec,
    db: &'a Path,
    /// The season's last day (the skip-flagged trigger's).
    last: NaiveDate,
    /// The day the feed never arrived, and the day it was corrupt.
    missing: NaiveDate,
    corrupt: NaiveDate,
}

pub async fn run(db: &Path, season_days: u32) -> anyhow::Result<ExitCode> {
    if season_days < 21 {
        anyhow::bail!("--days must be at least 21 so the season has both bad dates and a lookback");
    }
    let demo = Demo::set_up(db, season_days).await?;
    let grid = demo.daily_cascade().await?;
    let after = demo.gates(&grid).await?;
    demo.skip_flag().await?;
    demo.repair().await?;
    demo.summary(after).await?;
    Ok(ExitCode::SUCCESS)
}

impl<'a> Demo<'a> {
    /// A fresh database with the example's schema and a sample season with two bad dates.
    async fn set_up(db: &'a Path, season_days: u32) -> anyhow::Result<Demo<'a>> {
        remove_db(db)?;
        let app = startup::build(example_config(db)?).await?;
        app.init_schema().await?;
        let sqlite = app.sqlite.as_ref().context("the demo needs SQLite")?;
        let spec = SeasonSpec::new(
            NaiveDate::from_ymd_opt(2025, 10, 21).context("season start")?,
            season_days,
        );
        let summary = generate(sqlite, &spec).await?;
        let (last, missing, corrupt) = (spec.end(), spec.missing_feed[0], spec.corrupt_feed[0]);
        println!(
            "phasegate demo — NBA example pipeline on SQLite ({})\n",
            db.display()
        );
        println!(
            "Sample season {}..{}: {} game days, {} off-days (Thursdays: no games, not gaps).",
            spec.start, last, summary.game_days, summary.off_days
        );
        println!("  {missing}: the box-score feed never arrived.");
        println!("  {corrupt}: the feed has a row without a player (the raw run fails).\n");
        Ok(Demo {
            app,
            spec,
            db,
            last,
            missing,
            corrupt,
        })
    }

    /// Act 1: a trigger per day up to the day before the last; every phase triggers the next.
    async fn daily_cascade(&self) -> anyhow::Result<StatusGrid> {
        let (start, last) = (self.spec.start, self.last);
        let day_before = last.pred_opt().unwrap_or(last);
        println!("1. The daily cascade, {start}..{day_before}:");
        println!(
            "   each day a trigger on `{}`; every phase triggers the next.\n",
            self.app.config.phases[0].input()
        );
        for d in days(start, day_before) {
            trigger(&self.app, d, false).await?;
        }
        let grid = self.grid(start, last).await?;
        println!("{}", grid.render());
        Ok(grid)
    }

    /// Act 2: the strict gate's findings on the first game day after the missing feed, and the
    /// dates it blocked; returns that day.
    async fn gates(&self, grid: &StatusGrid) -> anyhow::Result<NaiveDate> {
        let (app, missing, corrupt) = (&self.app, self.missing, self.corrupt);
        println!("2. What the gates did:");
        let after = days(missing.succ_opt().unwrap_or(missing), self.last)
            .find(|d| crate::sample::is_game_day(*d))
            .unwrap_or(missing);
        let precompute = &app.config.phases[2].processors[0];
        let report = crate::gate::evaluate(
            &app.config,
            precompute,
            after,
            app.ledger().as_ref(),
            app.warehouse().as_ref(),
        )
        .await?;
        println!(
            "   raw failed on {missing} and {corrupt}, so analytics never built those days.\n   \
             precompute on {after} looks back 14 days and finds the hole:\n"
        );
        for line in render_gate(&report).lines() {
            println!("     {line}");
        }
        let blocked = grid.dates_with(&precompute.name, crate::ledger::RunStatus::Blocked);
        println!(
            "\n   The strict gate blocked precompute on {} date(s) ({}) instead of computing\n   \
             features over incomplete history; predictions never ran on them.",
            blocked.len(),
            crate::dates::format_ranges(&blocked)
        );
        if let Some(bus) = &app.bus {
            println!(
                "   Nacked messages were redelivered, then dead-lettered: {} message(s).\n",
                bus.dead_letters().len()
            );
        }
        Ok(after)
    }

    /// Act 3: a skip-flagged trigger for the last day: raw runs, nothing is published.
    async fn skip_flag(&self) -> anyhow::Result<()> {
        let (app, last) = (&self.app, self.last);
        println!("3. A skip-flagged trigger for {last} (skip_downstream_trigger=true):");
        trigger(app, last, true).await?;
        print!("{}", self.grid(last, last).await?.render());
        let published = app
            .bus
            .as_ref()
            .map(|b| b.published_to(&app.config.phases[0].completion_topic))
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.attributes.get("data_date") == Some(&last.to_string()))
            .count();
        println!(
            "   raw ran; {published} completion event(s) published for {last}: the cascade stopped.\n"
        );
        Ok(())
    }

    /// Act 4: the bad feeds are repaired and one `backfill --all` re-runs what is not done,
    /// phase by phase, each verified gap-free before the next.
    async fn repair(&self) -> anyhow::Result<()> {
        let (start, last) = (self.spec.start, self.last);
        println!("4. Repair: the late feed arrives and the corrupt row is corrected. One command,");
        println!(
            "   phasegate backfill --all --from {start} --to {last} --yes, re-runs what is not done,"
        );
        println!("   phase by phase, verifying each is gap-free before the next starts:\n");
        let sqlite = self.app.sqlite.as_ref().context("the demo needs SQLite")?;
        crate::sample::repair(sqlite, &self.spec).await?;
        let template = crate::backfill::BackfillOptions {
            phase: String::new(),
            from: start,
            to: last,
            policy: crate::backfill::ErrorPolicy::Stop,
            parallel: 4,
            force: false,
        };
        let workflow = crate::backfill::run_all(
            &self.app,
            &template,
            crate::backfill::Executor::InProcess,
            &|_, _| crate::backfill::Progress::hidden(),
            &|phase, from, to| {
                format!("phasegate backfill --phase {phase} --from {from} --to {to}")
            },
            &mut |report, verification| {
                print!("   {}", report.render().lines().next().unwrap_or_default());
                match verification {
                    Some(v) if v.is_continuous => println!("; verified gap-free"),
                    Some(_) => println!("; GAPS FOUND"),
                    None => println!(),
                }
            },
        )
        .await?;
        if let Some(why) = &workflow.stopped {
            println!("   STOPPED: {why}");
        }
        println!();
        Ok(())
    }

    /// The season's totals and the commands to look at it yourself.
    async fn summary(&self, after: NaiveDate) -> anyhow::Result<()> {
        let (start, last) = (self.spec.start, self.last);
        println!("Summary ({start}..{last}):");
        print!("{}", self.grid(start, last).await?.totals());
        let config = write_config_beside(self.db)?;
        println!(
            "\nInspect it yourself (the ledger and tables are in {}; each line runs as printed, \
             from this directory):",
            self.db.display()
        );
        for line in inspect_commands(&config, self.db, start, last, after) {
            println!("  {line}");
        }
        println!();
        Ok(())
    }

    async fn grid(&self, from: NaiveDate, to: NaiveDate) -> anyhow::Result<StatusGrid> {
        Ok(StatusGrid::load(&self.app.config, self.app.ledger().as_ref(), from, to).await?)
    }
}
