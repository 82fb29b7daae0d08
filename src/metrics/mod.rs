//! Prometheus metrics for `GET /metrics`: one named function per thing measured.
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus` as the recorder; the
//! recorder is installed once per process by [`install`] (`serve` does it). Before that,
//! every function here is a cheap no-op, so the CLI and the library never pay for it.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `phasegate_pushes_total` | counter | `phase`, `outcome` |
//! | `phasegate_push_duration_seconds` | histogram | `phase`, `outcome` |
//! | `phasegate_pushes_in_flight` | gauge | `phase` |
//! | `phasegate_gate_results_total` | counter | `check`, `mode`, `result` |
//! | `phasegate_processor_duration_seconds` | histogram | `processor`, `status` |
//! | `phasegate_publish_failures_total` | counter | `phase` |
//! | `phasegate_store_call_duration_seconds` | histogram | `store`, `op` |
//! | `phasegate_sqlite_commits_total` | counter | — |
//! | `phasegate_sqlite_grouped_writes_total` | counter | — |
//!
//! On SQLite, grouped writes ÷ commits is the average size of a group commit.

mod timed_store;

use std::sync::OnceLock;
use std::time::Instant;

pub use timed_store::{TimedLedger, TimedOneTransaction, TimedWarehouse};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PUSHES: &str = "phasegate_pushes_total";
pub const PUSH_DURATION: &str = "phasegate_push_duration_seconds";
pub const PUSHES_IN_FLIGHT: &str = "phasegate_pushes_in_flight";
pub const GATE_RESULTS: &str = "phasegate_gate_results_total";
pub const PROCESSOR_DURATION: &str = "phasegate_processor_duration_seconds";
pub const PUBLISH_FAILURES: &str = "phasegate_publish_failures_total";
pub const STORE_CALL_DURATION: &str = "phasegate_store_call_duration_seconds";
pub const SQLITE_COMMITS: &str = "phasegate_sqlite_commits_total";
pub const SQLITE_GROUPED_WRITES: &str = "phasegate_sqlite_grouped_writes_total";

/// Histogram buckets in seconds: from a fast SQLite call to a slow BigQuery job.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder for this process (idempotent). `false` when another
/// recorder was installed first.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .is_some()
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PUSHES, "Push requests handled, by phase and outcome.");
    describe_histogram!(PUSH_DURATION, Unit::Seconds, "Push handling time.");
    describe_gauge!(PUSHES_IN_FLIGHT, "Pushes being handled now.");
    describe_counter!(
        GATE_RESULTS,
        "Gate check results, by check, mode and result."
    );
    describe_histogram!(
        PROCESSOR_DURATION,
        Unit::Seconds,
        "Processor run time, by final status."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "Completion events that failed to publish."
    );
    describe_histogram!(
        STORE_CALL_DURATION,
        Unit::Seconds,
        "Ledger and warehouse call latency."
    );
    describe_counter!(
        SQLITE_COMMITS,
        "SQLite group transactions committed by the writer thread."
    );
    describe_counter!(
        SQLITE_GROUPED_WRITES,
        "SQLite writes committed in group transactions (one savepoint each)."
    );
}

/// The Prometheus text exposition, or `None` when no recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().and_then(Option::as_ref).map(|h| h.render())
}

/// A push finished with `outcome` (the response's `outcome` label) after `secs`.
pub fn push_handled(phase: &str, outcome: &str, secs: f64) {
    let labels = [
        ("phase", phase.to_string()),
        ("outcome", outcome.to_string()),
    ];
    ::metrics::counter!(PUSHES, &labels).increment(1);
    ::metrics::histogram!(PUSH_DURATION, &labels).record(secs);
}

/// Counts a push as in flight until dropped.
pub struct InFlight(String);

impl InFlight {
    pub fn start(phase: &str) -> InFlight {
        ::metrics::gauge!(PUSHES_IN_FLIGHT, "phase" => phase.to_string()).increment(1.0);
        InFlight(phase.to_string())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!(PUSHES_IN_FLIGHT, "phase" => self.0.clone()).decrement(1.0);
    }
}

/// One gate check's result: `check` is `upstream`, `historical_gaps` or
/// `entity_completeness`; `mode` is `soft` or `strict`.
pub fn gate_result(check: &str, mode: &str, passed: bool) {
    ::metrics::counter!(
        GATE_RESULTS,
        "check" => check.to_string(),
        "mode" => mode.to_string(),
        "result" => if passed { "pass" } else { "fail" },
    )
    .increment(1);
}

/// Every check of a gate report: `upstream` passes when every upstream is safe to process,
/// `historical_gaps` when there is no gap, `entity_completeness` when no entity is below
/// its threshold (the gate's own rules).
pub fn gate_report(report: &crate::gate::GateReport) {
    let mode = match report.mode {
        crate::config::Mode::Soft => "soft",
        crate::config::Mode::Strict => "strict",
    };
    if !report.upstream.is_empty() {
        let passed = report.upstream.iter().all(|u| u.safe_to_process);
        gate_result("upstream", mode, passed);
    }
    if let Some(g) = &report.historical_gaps {
        gate_result("historical_gaps", mode, !g.has_gaps);
    }
    if let Some(e) = &report.entity_completeness {
        gate_result("entity_completeness", mode, e.not_ready_count == 0);
    }
}

/// A finished run's duration (from its `started_at` and `finished_at`) by its status.
pub fn run_finished(run: &crate::ledger::RunRecord) {
    if let Some(end) = run.finished_at {
        let secs = (end - run.started_at).to_std().unwrap_or_default();
        processor_duration(&run.processor, run.status.as_str(), secs.as_secs_f64());
    }
}

/// A processor run finished with `status` after `secs`.
pub fn processor_duration(processor: &str, status: &str, secs: f64) {
    ::metrics::histogram!(
        PROCESSOR_DURATION,
        "processor" => processor.to_string(),
        "status" => status.to_string(),
    )
    .record(secs);
}

/// A completion event of `phase` could not be published.
pub fn publish_failed(phase: &str) {
    ::metrics::counter!(PUBLISH_FAILURES, "phase" => phase.to_string()).increment(1);
}

/// The SQLite writer committed a group of `writes` writes in one transaction.
pub fn sqlite_group_committed(writes: usize) {
    ::metrics::counter!(SQLITE_COMMITS).increment(1);
    ::metrics::counter!(SQLITE_GROUPED_WRITES).increment(writes as u64);
}

/// A ledger or warehouse call: `store` is `ledger` or `warehouse`, `op` the method name.
pub fn store_call(store: &str, op: &str, secs: f64) {
    ::metrics::histogram!(
        STORE_CALL_DURATION,
        "store" => store.to_string(),
        "op" => op.to_string(),
    )
    .record(secs);
}

/// Times a store call until dropped:
/// `let _t = phasegate::metrics::StoreTimer::start("ledger", "record");`.
pub struct StoreTimer {
    store: &'static str,
    op: &'static str,
    started: Instant,
}

impl StoreTimer {
    pub fn start(store: &'static str, op: &'static str) -> StoreTimer {
        StoreTimer {
            store,
            op,
            started: Instant::now(),
        }
    }
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        store_call(self.store, self.op, self.started.elapsed().as_secs_f64());
    }
}
