//! The integrity gate: the checks a processor declares, run before it touches a date.
//!
//! [`evaluate`] runs each declared check (one query each: one ledger read per upstream
//! processor, one warehouse query per completeness check) and gathers the findings in a
//! [`GateReport`]. A check that cannot tell (an empty reference) is a finding, never a pass. The report says whether the date is production-ready and, in strict mode,
//! whether the run must be blocked. Checks never write anything.

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
use crate::warehouse::{Warehouse, WarehouseError};

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
    let checks = &processor.checks;
    let mut report = GateReport {
        processor: processor.name.clone(),
        data_date: date,
        mode: checks.mode,
        upstream: Vec::new(),
        historical_gaps: None,
        entity_completeness: None,
        problems: Vec::new(),
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
        let (result, problem) = historical_gaps(config, gaps, date, warehouse).await?;
        report.problems.extend(problem);
        report.historical_gaps = Some(result);
    }
    if let Some(spec) = &checks.entity_completeness {
        let (result, problem) = entities(config, spec, date, warehouse).await?;
        report.problems.extend(problem);
        report.entity_completeness = Some(result);
    }
    Ok(report)
}

fn reference<'a>(config: &'a Config, name: &str) -> Result<&'a Reference, GateError> {
    config
        .reference(name)
        .ok_or_else(|| GateError::UnknownReference(name.to_string()))
}

/// Date-range completeness over the `lookback_days` before `date` (clipped at `not_before`).
async fn historical_gaps(
    config: &Config,
    gaps: &HistoricalGaps,
    date: NaiveDate,
    warehouse: &dyn Warehouse,
) -> Result<(DateRangeCompleteness, Option<String>), GateError> {
    let expected = match &gaps.expected {
        Some(name) => Some(reference(config, name)?),
        None => None,
    };
    let mut from = minus_days(date, gaps.lookback_days);
    if let Some(floor) = gaps.not_before {
        from = from.max(floor);
    }
    let to = date.pred_opt().unwrap_or(date);
    let result = date_range_completeness(
        warehouse,
        &gaps.table,
        &gaps.date_column,
        from,
        to,
        expected,
    )
    .await?;
    let problem = if result.reference_empty {
        Some(format!(
            "{} lists no date in {from}..{to} (the {} days before {date}): an empty or missing \
             reference, so {} cannot be checked for gaps",
            result.reference.as_deref().unwrap_or_default(),
            gaps.lookback_days,
            gaps.table
        ))
    } else if result.has_gaps {
        Some(format!(
            "{} has {} missing date(s) in the {} days before {date}: {}",
            gaps.table,
            result.gap_count,
            gaps.lookback_days,
            crate::dates::format_ranges(&result.missing_dates)
        ))
    } else {
        None
    };
    Ok((result, problem))
}

/// Entity completeness of the entities the reference expects in the window before `date`.
async fn entities(
    config: &Config,
    spec: &EntityCompleteness,
    date: NaiveDate,
    warehouse: &dyn Warehouse,
) -> Result<(EntityCompletenessReport, Option<String>), GateError> {
    let reference = reference(config, &spec.reference)?;
    let result = entity_completeness(warehouse, spec, reference, date).await?;
    let (from, to) = result.window_range;
    let problem = if result.reference_empty {
        Some(format!(
            "{} lists no entity in {from}..{to}: an empty or missing reference, so {} cannot \
             be checked for entity completeness",
            reference.table, spec.upstream_table
        ))
    } else if result.not_ready_count > 0 {
        Some(format!(
            "{} of {} entities below {}% complete in {} ({from}..{to})",
            result.not_ready_count,
            result.entities.len(),
            spec.threshold_pct,
            spec.upstream_table
        ))
    } else {
        None
    };
    Ok((result, problem))
}
