//! The integrity gate: the checks a processor declares, run before it touches a date.
//!
//! [`evaluate`] runs each declared check (one query each: one ledger read per upstream
//! processor, one warehouse query per completeness check) and gathers the findings in a
//! [`GateReport`]. A check that cannot tell (a reference that lists no date at all) is a
//! problem, never a pass; a window in which a reference that lists dates expects none (an
//! off-season, a pipeline's first days) is nothing to check: a note, and a pass. The report
//! says whether the date is production-ready and, in strict mode, whether the run must be
//! blocked. Checks never write anything.

mod date_range;
mod entity;
mod upstream;

pub use date_range::{DateRangeCompleteness, date_range_completeness};
pub use entity::{EntityCompletenessReport, EntityResult, entity_completeness};
pub use upstream::{UpstreamStatus, upstream_status};

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::{Config, EntityCompleteness, HistoricalGaps, Mode, Processor, Reference};
use crate::dates::minus_days;
use crate::ledger::{Ledger, LedgerError, RunRecord};
use crate::warehouse::{
    DatePresence, EntityCount, EntityWindow, Warehouse, WarehouseError, entity_window,
};

/// A check could not be evaluated (the store failed), as opposed to a check that failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("reference `{0}` is not configured")]
    UnknownReference(String),
}

/// Everything the gate found for one processor and one date.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GateReport {
    pub processor: String,
    pub data_date: NaiveDate,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<UpstreamStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub historical_gaps: Option<DateRangeCompleteness>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_completeness: Option<EntityCompletenessReport>,
    /// One sentence per failed check; empty when everything passed.
    pub problems: Vec<String>,
    /// One sentence per check that had nothing to check ("no date expected in …"); never
    /// blocks and never makes a run not production-ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why the run is not production-ready without a check failing (it consumes an upstream
    /// run that is not production-ready); never blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_production_ready: Vec<String>,
}

impl GateReport {
    /// All checks passed (or there were none).
    pub fn production_ready(&self) -> bool {
        self.problems.is_empty() && self.not_production_ready.is_empty()
    }

    /// Strict mode and a failed check: nothing may be processed.
    pub fn blocks(&self) -> bool {
        self.mode == Mode::Strict && !self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let all: Vec<&str> = self
            .problems
            .iter()
            .chain(&self.not_production_ready)
            .map(String::as_str)
            .collect();
        if all.is_empty() {
            "all checks passed".to_string()
        } else {
            all.join("; ")
        }
    }
}

/// Run every check `processor` declares for `date`.
pub async fn evaluate(
    config: &Config,
    processor: &Processor,
    date: NaiveDate,
    ledger: &dyn Ledger,
    warehouse: &dyn Warehouse,
) -> Result<GateReport, GateError> {
    let upstream = ledger.latest_of(&processor.checks.upstream, date).await?;
    evaluate_with_upstream(config, processor, date, &upstream, warehouse).await
}

/// [`evaluate`] with the upstream processors' latest runs already read (in the order of
/// `checks.upstream`): the worker reads them with its own latest run in one ledger call.
pub async fn evaluate_with_upstream(
    config: &Config,
    processor: &Processor,
    date: NaiveDate,
    upstream: &[Option<RunRecord>],
    warehouse: &dyn Warehouse,
) -> Result<GateReport, GateError> {
    let reads = Prefetched::read(config, processor, date, warehouse).await?;
    evaluate_in(config, processor, date, upstream, &reads)
}

/// The gate's warehouse reads, answered where the caller already is: inside the embedded
/// store's transaction of a whole processor run (see [`crate::atomic`]).
pub trait GateReads {
    /// As [`Warehouse::date_presence`].
    fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError>;

    /// As [`Warehouse::entity_counts`].
    fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError>;

    /// As [`Warehouse::reference_in_use`].
    fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError>;
}

/// [`evaluate_with_upstream`] with the warehouse reads answered synchronously by `reads`.
pub fn evaluate_in(
    config: &Config,
    processor: &Processor,
    date: NaiveDate,
    upstream: &[Option<RunRecord>],
    reads: &dyn GateReads,
) -> Result<GateReport, GateError> {
    let checks = &processor.checks;
    let mut report = GateReport {
        processor: processor.name.clone(),
        data_date: date,
        mode: checks.mode,
        upstream: Vec::new(),
        historical_gaps: None,
        entity_completeness: None,
        problems: Vec::new(),
        notes: Vec::new(),
        not_production_ready: Vec::new(),
    };
    for (i, name) in checks.upstream.iter().enumerate() {
        let latest = upstream.get(i).and_then(Option::as_ref);
        let status = UpstreamStatus::of(name, date, latest);
        if !status.safe_to_process {
            report.problems.push(format!(
                "upstream {name} for {date}: {}",
                status.error_message.as_deref().unwrap_or(&status.status)
            ));
        }
        report.upstream.push(status);
    }
    if let Some(gaps) = &checks.historical_gaps {
        let window = GapWindow::of(config, gaps, date)?;
        let presence = if window.is_empty() {
            Vec::new()
        } else {
            let (table, column) = (&gaps.table, &gaps.date_column);
            reads.date_presence(table, column, window.from, window.to, window.expected)?
        };
        let in_use = match window.expected {
            Some(r) if !window.is_empty() && presence.is_empty() => reads.reference_in_use(r)?,
            _ => true,
        };
        let (result, verdict) = window.verdict(gaps, date, &presence, in_use);
        verdict.record(&mut report);
        report.historical_gaps = Some(result);
    }
    if let Some(spec) = &checks.entity_completeness {
        let reference = reference(config, &spec.reference)?;
        let window = entity_window(spec, reference, date)?;
        let counts = if window.is_empty() {
            Vec::new()
        } else {
            reads.entity_counts(spec, reference, date)?
        };
        let in_use = if !window.is_empty() && counts.is_empty() {
            reads.reference_in_use(reference)?
        } else {
            true
        };
        let (result, verdict) = entities_verdict(spec, reference, &window, counts, in_use);
        verdict.record(&mut report);
        report.entity_completeness = Some(result);
    }
    Ok(report)
}

/// What one completeness check says about the date.
enum Verdict {
    Pass,
    /// Nothing to check: recorded, passes.
    Note(String),
    /// A failed check: blocks in strict mode, not production-ready in soft mode.
    Problem(String),
}

impl Verdict {
    fn record(self, report: &mut GateReport) {
        match self {
            Verdict::Pass => {}
            Verdict::Note(note) => report.notes.push(note),
            Verdict::Problem(problem) => report.problems.push(problem),
        }
    }
}

/// The gate's warehouse reads made ahead over the async [`Warehouse`] (the reads
/// [`evaluate_in`] will ask for, in its order), then answered to it.
struct Prefetched {
    presence: Option<Vec<DatePresence>>,
    counts: Option<Vec<EntityCount>>,
    /// Whether each reference that expected nothing in its window lists any date at all.
    in_use: Vec<(String, bool)>,
}

impl Prefetched {
    async fn read(
        config: &Config,
        processor: &Processor,
        date: NaiveDate,
        warehouse: &dyn Warehouse,
    ) -> Result<Prefetched, GateError> {
        let checks = &processor.checks;
        let mut reads = Prefetched {
            presence: None,
            counts: None,
            in_use: Vec::new(),
        };
        if let Some(gaps) = &checks.historical_gaps {
            let w = GapWindow::of(config, gaps, date)?;
            if !w.is_empty() {
                let (table, column) = (&gaps.table, &gaps.date_column);
                let found = warehouse
                    .date_presence(table, column, w.from, w.to, w.expected)
                    .await?;
                if let Some(r) = w.expected.filter(|_| found.is_empty()) {
                    reads.read_in_use(warehouse, r).await?;
                }
                reads.presence = Some(found);
            }
        }
        if let Some(spec) = &checks.entity_completeness {
            let reference = reference(config, &spec.reference)?;
            if !entity_window(spec, reference, date)?.is_empty() {
                let counts = warehouse.entity_counts(spec, reference, date).await?;
                if counts.is_empty() {
                    reads.read_in_use(warehouse, reference).await?;
                }
                reads.counts = Some(counts);
            }
        }
        Ok(reads)
    }

    async fn read_in_use(
        &mut self,
        warehouse: &dyn Warehouse,
        reference: &Reference,
    ) -> Result<(), WarehouseError> {
        if !self.in_use.iter().any(|(t, _)| *t == reference.table) {
            let in_use = warehouse.reference_in_use(reference).await?;
            self.in_use.push((reference.table.clone(), in_use));
        }
        Ok(())
    }
}

impl GateReads for Prefetched {
    fn date_presence(
        &self,
        table: &str,
        _: &str,
        _: NaiveDate,
        _: NaiveDate,
        _: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        self.presence
            .clone()
            .ok_or_else(|| WarehouseError(format!("date presence of {table} was not read")))
    }

    fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        _: &Reference,
        _: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        self.counts.clone().ok_or_else(|| {
            WarehouseError(format!(
                "entity counts of {} were not read",
                spec.upstream_table
            ))
        })
    }

    fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        self.in_use
            .iter()
            .find(|(t, _)| *t == reference.table)
            .map(|(_, in_use)| *in_use)
            .ok_or_else(|| WarehouseError(format!("use of {} was not read", reference.table)))
    }
}

fn reference<'a>(config: &'a Config, name: &str) -> Result<&'a Reference, GateError> {
    config
        .reference(name)
        .ok_or_else(|| GateError::UnknownReference(name.to_string()))
}

/// The days a historical-gaps check looks at: the `lookback_days` before the date
/// (clipped at `not_before`), every day or the reference's.
struct GapWindow<'a> {
    from: NaiveDate,
    to: NaiveDate,
    expected: Option<&'a Reference>,
}

impl<'a> GapWindow<'a> {
    fn of(
        config: &'a Config,
        gaps: &HistoricalGaps,
        date: NaiveDate,
    ) -> Result<GapWindow<'a>, GateError> {
        let expected = match &gaps.expected {
            Some(name) => Some(reference(config, name)?),
            None => None,
        };
        let mut from = minus_days(date, gaps.lookback_days);
        if let Some(floor) = gaps.not_before {
            from = from.max(floor);
        }
        let to = date.pred_opt().unwrap_or(date);
        Ok(GapWindow { from, to, expected })
    }

    fn is_empty(&self) -> bool {
        self.from > self.to
    }

    /// The finding for `presence` (the expected days of the window, each present or not);
    /// `in_use`: the reference lists some date (read only when it lists none in the window).
    fn verdict(
        &self,
        gaps: &HistoricalGaps,
        date: NaiveDate,
        presence: &[DatePresence],
        in_use: bool,
    ) -> (DateRangeCompleteness, Verdict) {
        let (from, to) = (self.from, self.to);
        let result = DateRangeCompleteness::from_presence(
            &gaps.table,
            self.expected,
            from,
            to,
            presence,
            in_use,
        );
        let reference = result.reference.as_deref().unwrap_or_default();
        let verdict = if result.reference_empty {
            Verdict::Problem(format!(
                "{reference} lists no date in {from}..{to} (the {} days before {date}): an \
                 empty or missing reference, so {} cannot be checked for gaps",
                gaps.lookback_days, gaps.table
            ))
        } else if result.nothing_expected {
            Verdict::Note(format!(
                "no date expected in {from}..{to}: {reference} lists none of the {} days before \
                 {date}, so {} has no gap to check",
                gaps.lookback_days, gaps.table
            ))
        } else if result.has_gaps {
            Verdict::Problem(format!(
                "{} has {} missing date(s) in the {} days before {date}: {}",
                gaps.table,
                result.gap_count,
                gaps.lookback_days,
                crate::dates::format_ranges(&result.missing_dates)
            ))
        } else {
            Verdict::Pass
        };
        (result, verdict)
    }
}

/// Entity completeness of the entities the reference expects in `window`, and its finding.
fn entities_verdict(
    spec: &EntityCompleteness,
    reference: &Reference,
    window: &EntityWindow<'_>,
    counts: Vec<EntityCount>,
    in_use: bool,
) -> (EntityCompletenessReport, Verdict) {
    let result = EntityCompletenessReport::from_counts(spec, reference, window, counts, in_use);
    let (from, to) = result.window_range;
    let verdict = if result.reference_empty {
        Verdict::Problem(format!(
            "{} lists no entity in {from}..{to}: an empty or missing reference, so {} cannot \
             be checked for entity completeness",
            reference.table, spec.upstream_table
        ))
    } else if result.nothing_expected {
        Verdict::Note(format!(
            "no entity expected in {from}..{to}: {} lists no date in the window, so {} has \
             nothing to check",
            reference.table, spec.upstream_table
        ))
    } else if result.not_ready_count > 0 {
        Verdict::Problem(format!(
            "{} of {} entities below {}% complete in {} ({from}..{to})",
            result.not_ready_count,
            result.entities.len(),
            spec.threshold_pct,
            spec.upstream_table
        ))
    } else {
        Verdict::Pass
    };
    (result, verdict)
}
