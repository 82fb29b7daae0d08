//! What a delivery's read of the ledger means — reuse the latest run, wait for it, or run
//! again — the run it starts, and how the gate's verdict marks that run. Shared by both ways
//! a processor runs: claimed ([`super::claim`]) and in one transaction ([`super::atomic`]).

use chrono::Utc;

use super::RunRequest;
use crate::config::{Config, Mode, Phase, Processor};
use crate::gate::GateReport;
use crate::ledger::{self, Findings, RunRecord, RunStatus, UpstreamRun};

/// What the latest run means for this delivery.
pub(super) enum Decision {
    Reuse(RunRecord),
    Wait(RunRecord),
    /// Run again; the latest run, if any, is done (stale, failed, forced) or abandoned.
    Run(Option<RunRecord>),
}

/// One read of the ledger for a processor and a date: its latest run and its upstream
/// processors' (in `checks.upstream` order), with the done upstream runs it would consume —
/// and, in the same read, the latest runs of *their* upstream processors, which tell whether
/// an upstream run it would consume is itself stale.
pub(super) struct Seen {
    pub latest: Option<RunRecord>,
    pub upstream: Vec<Option<RunRecord>>,
    pub consumed: Vec<(UpstreamRun, RunRecord)>,
    /// One sentence per consumed upstream run that is stale (a newer run of its own upstream
    /// exists that it did not consume).
    pub stale: Vec<String>,
}

/// The done upstream runs a run consumes, and which of them are stale.
pub(super) struct Consumed {
    pub runs: Vec<RunRecord>,
    pub stale: Vec<String>,
}

impl Seen {
    /// The processors one read asks for: `p`, then its upstream processors, then theirs
    /// (each once).
    pub fn names(config: &Config, p: &Processor) -> Vec<String> {
        let mut names: Vec<String> = std::iter::once(p.name.clone())
            .chain(p.checks.upstream.iter().cloned())
            .collect();
        for u in &p.checks.upstream {
            let Some(up) = config.processor(u) else {
                continue;
            };
            for name in &up.checks.upstream {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// `read` answers [`Seen::names`], in order.
    pub fn new(config: &Config, p: &Processor, read: Vec<Option<RunRecord>>) -> Seen {
        let names = Seen::names(config, p);
        let mut read = names.into_iter().zip(read);
        let latest = read.next().and_then(|(_, r)| r);
        let upstream: Vec<Option<RunRecord>> = read
            .by_ref()
            .take(p.checks.upstream.len())
            .map(|(_, r)| r)
            .collect();
        let consumed = ledger::consumed(&p.checks.upstream, &upstream);
        let beyond: Vec<(String, Option<RunRecord>)> = read.collect();
        let stale = consumed
            .iter()
            .filter_map(|(_, run)| stale_upstream(config, p, run, &upstream, &beyond))
            .collect();
        Seen {
            latest,
            upstream,
            consumed,
            stale,
        }
    }

    /// The upstream runs a run started now consumes.
    pub fn lineage(&self) -> Vec<UpstreamRun> {
        self.consumed.iter().map(|(u, _)| u.clone()).collect()
    }

    /// What the latest run means for `req` (it is taken out of `self`).
    pub fn decide(&mut self, req: &RunRequest) -> Decision {
        let Some(run) = self.latest.take() else {
            return Decision::Run(None);
        };
        let same_message = req.message_id.is_some() && run.message_id == req.message_id;
        if run.status.is_done() && (same_message || (!req.force && !run.is_stale(&self.lineage())))
        {
            return Decision::Reuse(run);
        }
        if run.status == RunStatus::Running && !run.is_abandoned(Utc::now()) {
            return Decision::Wait(run);
        }
        Decision::Run(Some(run))
    }

    /// A new run of `p` for `req`, consuming the upstream runs seen.
    pub fn start(&self, p: &Processor, phase: &Phase, req: &RunRequest) -> RunRecord {
        let mut run = RunRecord::start(
            &p.name,
            &phase.name,
            req.data_date,
            req.trigger,
            req.message_id.clone(),
            req.skip_downstream,
        );
        run.delivery_attempt = req.delivery_attempt;
        run.upstream_runs = Some(self.lineage());
        run
    }

    /// The done upstream runs seen, without their lineage entries, and which are stale.
    pub fn consumed_runs(self) -> Consumed {
        Consumed {
            runs: self.consumed.into_iter().map(|(_, r)| r).collect(),
            stale: self.stale,
        }
    }
}

/// Why `run` (an upstream run `p` would consume) is stale, if it is: a done run of one of
/// its own upstream processors exists for the date that it did not consume. The latest runs
/// of `p`'s upstream processors are in `upstream` (in `p.checks.upstream` order), those of
/// their upstream processors in `beyond`.
fn stale_upstream(
    config: &Config,
    p: &Processor,
    run: &RunRecord,
    upstream: &[Option<RunRecord>],
    beyond: &[(String, Option<RunRecord>)],
) -> Option<String> {
    let its_upstream = &config.processor(&run.processor)?.checks.upstream;
    let latest: Vec<Option<RunRecord>> = its_upstream
        .iter()
        .map(|name| {
            let direct = p.checks.upstream.iter().position(|u| u == name);
            match direct {
                Some(i) => upstream.get(i).cloned().flatten(),
                None => beyond
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, r)| r.clone()),
            }
        })
        .collect();
    let newer: Vec<UpstreamRun> = ledger::consumed(its_upstream, &latest)
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    if !run.is_stale(&newer) {
        return None;
    }
    let consumed = run.upstream_runs.as_deref().unwrap_or_default();
    let missed: Vec<String> = newer
        .iter()
        .filter(|u| !consumed.contains(u))
        .map(|u| format!("{} (run {})", u.processor, u.run_id))
        .collect();
    Some(format!(
        "upstream {} run {} for {} is stale: it did not consume the newer {}",
        run.processor,
        run.run_id,
        run.data_date,
        missed.join(", ")
    ))
}

/// Mark `run` with the gate's verdict — its findings, and whether it is production-ready,
/// counting the upstream runs it consumes — and close it `blocked` if the strict gate
/// blocks it. A stale upstream run is a failed upstream check: a problem, which blocks in
/// strict mode and makes the run not production-ready in soft mode. Returns the verdict as
/// recorded.
pub(super) fn judge(
    run: &mut RunRecord,
    mut report: GateReport,
    p: &Processor,
    consumed: &Consumed,
) -> GateReport {
    report.problems.extend(consumed.stale.iter().cloned());
    let report = with_upstream_readiness(report, p, &consumed.runs);
    if !p.checks.is_empty() {
        run.findings = Findings::of(&report);
    }
    run.production_ready = report.production_ready();
    if report.blocks() {
        run.finish(RunStatus::Blocked, None, Some(report.summary()));
        run.lease_until = None;
    }
    report
}

/// A run that consumes a not-production-ready upstream run is not production-ready; with
/// `require_production_ready` in strict mode it is a problem that blocks.
fn with_upstream_readiness(
    mut report: GateReport,
    p: &Processor,
    upstream: &[RunRecord],
) -> GateReport {
    let not_ready: Vec<String> = upstream
        .iter()
        .filter(|r| !r.production_ready)
        .map(|r| format!("{} (run {})", r.processor, r.run_id))
        .collect();
    if not_ready.is_empty() {
        return report;
    }
    let sentence = format!(
        "consumes upstream run(s) that are not production-ready: {}",
        not_ready.join(", ")
    );
    if p.checks.mode == Mode::Strict && p.checks.require_production_ready {
        report.problems.push(sentence);
    } else {
        report.not_production_ready.push(sentence);
    }
    report
}
