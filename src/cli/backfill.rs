//! `phasegate backfill`: one phase, or every phase in order with verification between them.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;

use super::{BackfillArgs, Output};
use crate::backfill::{self, BackfillOptions, BackfillReport, Progress, retry_command};
use crate::config::BusKind;
use crate::startup::App;

pub async fn run(app: &App, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    if args.from > args.to {
        bail!("--from {} is after --to {}", args.from, args.to);
    }
    if args.via_pubsub && app.config.bus.kind != BusKind::Pubsub {
        bail!(
            "--via-pubsub needs the Pub/Sub bus (bus.kind = \"pubsub\" or PHASEGATE_BUS=pubsub); \
             on the embedded default run the backfill in-process (without --via-pubsub)"
        );
    }
    let phases: Vec<String> = match &args.phase {
        Some(p) => {
            super::commands::require_phase(&app.config, p)?;
            vec![p.clone()]
        }
        None => app.config.phases.iter().map(|p| p.name.clone()).collect(),
    };
    if args.all && !args.dry_run && !args.yes && !confirm(app, &args)? {
        println!("Cancelled; nothing was run.");
        return Ok(ExitCode::from(1));
    }

    let mut reports: Vec<BackfillReport> = Vec::new();
    let mut stopped: Option<String> = None;
    for name in &phases {
        let opts = BackfillOptions {
            phase: name.clone(),
            from: args.from,
            to: args.to,
            policy: args.error_policy,
            parallel: usize::from(args.parallel),
            force: args.force,
        };
        let plan = backfill::plan(&app.worker, &opts).await?;
        if args.dry_run {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                _ => print!("{}", plan.render()),
            }
            continue;
        }
        let to_run = plan
            .dates
            .iter()
            .filter(|e| e.planned == backfill::Planned::Run)
            .count();
        let progress = if args.output == Output::Json {
            Progress::hidden()
        } else {
            Progress::new(to_run, name)
        };
        let config_path = app.config.source.clone();
        let retry = move |phase: &str, date| retry_command(&config_path, phase, date);
        let report = if args.via_pubsub {
            crate::backfill_pubsub::run(
                app,
                &plan,
                args.force,
                args.timeout_secs,
                &progress,
                &retry,
            )
            .await?
        } else {
            backfill::execute(app.worker.clone(), &plan, args.force, &progress, &retry).await?
        };
        if args.output != Output::Json {
            print!("{}", report.render());
        }
        let done = report.all_done();
        reports.push(report);
        if !args.all {
            break;
        }
        if !done {
            stopped = Some(format!(
                "phase {name} has failed or skipped dates: later phases were NOT started. \
                 Fix them (retry commands above), then re-run the same command; finished dates \
                 are skipped."
            ));
            break;
        }
        let v = crate::verify::verify(
            &app.config,
            app.ledger().as_ref(),
            app.warehouse().as_ref(),
            name,
            args.from,
            args.to,
        )
        .await?;
        if args.output != Output::Json {
            print!("{}", v.render_table());
        }
        if !v.is_continuous {
            stopped = Some(format!(
                "phase {name} has gaps in its output: later phases were NOT started. \
                 Run `phasegate verify --phase {name} --from {} --to {}` for the list.",
                args.from, args.to
            ));
            break;
        }
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "phases": reports,
                "stopped": stopped,
            }))?
        );
    } else if args.all {
        println!("\nWorkflow summary {}..{}:", args.from, args.to);
        for name in &phases {
            match reports.iter().find(|r| &r.phase == name) {
                Some(r) => println!(
                    "  {name:<14} {} succeeded, {} no data, {} failed, {} skipped, {} already done",
                    r.succeeded, r.no_data, r.failed, r.skipped, r.already_done
                ),
                None => println!("  {name:<14} not started"),
            }
        }
        if let Some(why) = &stopped {
            println!("\nSTOPPED: {why}");
        } else {
            println!("\nEvery phase is complete and gap-free.");
        }
    }
    let ok = stopped.is_none() && reports.iter().all(BackfillReport::all_done);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Ask before a multi-phase backfill; refuse to wait without a terminal.
fn confirm(app: &App, args: &BackfillArgs) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "backfill --all asks for confirmation and standard input is not a terminal; \
             pass --yes to run without asking"
        );
    }
    print!(
        "Backfill every phase ({}) for {}..{} with error policy {}? [y/N] ",
        app.config.phase_names(),
        args.from,
        args.to,
        args.error_policy.as_str()
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
}
