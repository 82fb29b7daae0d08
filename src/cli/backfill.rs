//! `phasegate backfill`: one phase, or every phase in order with verification between them.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;

use super::common::require_phase;
use super::{BackfillArgs, Output};
use crate::backfill::{self, BackfillOptions, Executor, Progress, RetryCommand};
use crate::config::BusKind;
use crate::startup::App;

pub async fn run(app: &App, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let template = options(app, &args)?;
    let json = args.output == Output::Json;
    if args.dry_run {
        return dry_run(app, &args, &template, json).await;
    }
    if args.all && !args.yes && !confirm(app, &args)? {
        println!("Cancelled; nothing was run.");
        return Ok(ExitCode::from(1));
    }
    let executor = if args.via_pubsub {
        Executor::ViaPubsub {
            timeout_secs: args.timeout_secs,
        }
    } else {
        Executor::InProcess
    };
    let overrides = app.config.env_overrides(|k| std::env::var(k).ok());
    let retry_command =
        RetryCommand::new(Some(&app.config.source), &template, executor).with_env(overrides);
    let retry = |phase: &str, from, to| retry_command.render(phase, from, to);
    let progress = |len: usize, phase: &str| {
        if json {
            Progress::hidden()
        } else {
            Progress::new(len, phase)
        }
    };
    if !args.all {
        let report = backfill::run_phase(app, &template, executor, &progress, &retry).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.render());
        }
        return Ok(report.exit_code());
    }
    let mut on_phase = |report: &backfill::BackfillReport,
                        v: Option<&crate::verify::Verification>| {
        if !json {
            print!("{}", report.render());
            if let Some(v) = v {
                print!("{}", v.render_table());
            }
            println!();
        }
    };
    let workflow =
        backfill::run_all(app, &template, executor, &progress, &retry, &mut on_phase).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&workflow)?);
    } else {
        print_workflow(app, &args, &workflow);
    }
    Ok(workflow.exit_code())
}

/// The arguments checked against the configuration, as the options of every phase's run.
fn options(app: &App, args: &BackfillArgs) -> anyhow::Result<BackfillOptions> {
    if args.from > args.to {
        bail!("--from {} is after --to {}", args.from, args.to);
    }
    if args.via_pubsub && app.config.bus.kind != BusKind::Pubsub {
        bail!(
            "--via-pubsub needs the Pub/Sub bus (bus.kind = \"pubsub\" or PHASEGATE_BUS=pubsub); \
             on the embedded default run the backfill in-process (without --via-pubsub)"
        );
    }
    if let Some(p) = &args.phase {
        require_phase(&app.config, p)?;
    }
    Ok(BackfillOptions {
        phase: args.phase.clone().unwrap_or_default(),
        from: args.from,
        to: args.to,
        policy: args.error_policy,
        parallel: usize::from(args.parallel),
        force: args.force,
    })
}

/// `--dry-run`: each phase's plan, nothing run.
async fn dry_run(
    app: &App,
    args: &BackfillArgs,
    template: &BackfillOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let phases: Vec<String> = match &args.phase {
        Some(p) => vec![p.clone()],
        None => app.config.phases.iter().map(|p| p.name.clone()).collect(),
    };
    let mut plans = Vec::with_capacity(phases.len());
    for name in phases {
        let opts = BackfillOptions {
            phase: name,
            ..template.clone()
        };
        let plan = backfill::plan(&app.worker, &opts).await?;
        if !json {
            print!("{}", plan.render());
        }
        plans.push(plan);
    }
    if json {
        // One document: the phase's plan, or with --all every phase's plan in order.
        let doc = match (args.all, plans.pop()) {
            (false, Some(plan)) => serde_json::to_value(&plan)?,
            (_, last) => {
                plans.extend(last);
                serde_json::json!({ "phases": plans })
            }
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--all`'s closing lines: each phase's counts, then where it stopped or that all is done.
fn print_workflow(app: &App, args: &BackfillArgs, workflow: &backfill::WorkflowReport) {
    println!("Workflow summary {}..{}:", args.from, args.to);
    for phase in &app.config.phases {
        match workflow.phases.iter().find(|r| r.phase == phase.name) {
            Some(r) => println!(
                "  {:<14} {} succeeded, {} no data, {} failed, {} skipped, {} already done",
                phase.name, r.succeeded, r.no_data, r.failed, r.skipped, r.already_done
            ),
            None => println!("  {:<14} not started", phase.name),
        }
    }
    match &workflow.stopped {
        Some(why) => println!("\nSTOPPED: {why}"),
        None => println!("\nEvery phase is complete and gap-free."),
    }
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
