//! What a delivery's read of the ledger means — reuse the latest run, wait for it, or run
//! again — the run it starts, and how the gate's verdict marks that run. Shared by both ways
//! a processor runs: claimed ([`super::claim`]) and in one transaction ([`super::atomic`]).

use chrono::Utc;

use super::RunRequest;
use crate::config::{Mode, Phase, Processor};
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
/// processors' (in `checks.upstream` order), with the done upstream runs it would consume.
pub(super) struct Seen {
    pub latest: Option<RunRecord>,
    pub upstream: Vec<Option<RunRecord>>,
    pub consumed: Vec<(UpstreamRun, RunRecord)>,
}

impl Seen {
    /// The processors one read asks for: `p`, then its upstream processors.
    pub fn names(p: &Processor) -> Vec<String> {
        std::iter::once(p.name.clone())
            .chain(p.checks.upstream.iter().cloned())
            .collect()
    }

    /// `read` answers [`Seen::names`], in order.
    pub fn new(p: &Processor, mut read: Vec<Option<RunRecord>>) -> Seen {
        let latest = if read.is_empty() {
            None
        } else {
            read.remove(0)
        };
        let consumed = ledger::consumed(&p.checks.upstream, &read);
        Seen {
            latest,
            upstream: read,
            consumed,
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

    /// The done upstream runs seen, without their lineage entries.
    pub fn consumed_runs(self) -> Vec<RunRecord> {
        self.consumed.into_iter().map(|(_, r)| r).collect()
    }
}

/// Mark `run` with the gate's verdict — its findings, and whether it is production-ready,
/// counting the upstream runs it consumes — and close it `blocked` if the strict gate
/// blocks it. Returns the verdict as recorded.
pub(super) fn judge(
    run: &mut RunRecord,
    report: GateReport,
    p: &Processor,
    consumed: &[RunRecord],
) -> GateReport {
    let report = with_upstream_readiness(report, p, consumed);
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
