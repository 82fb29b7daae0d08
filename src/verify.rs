//! `verify`: is a phase's output gap-free over a range?
//!
//! For each processor with a declared output table: calendar-aware gap detection (expected
//! dates are the output's reference, or every day). A date whose latest run is `no_data` is a
//! legitimate empty date, not a gap.

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::Config;
use crate::dates::format_ranges;
use crate::gate::date_range_completeness;
use crate::ledger::{Ledger, RunStatus};
use crate::warehouse::Warehouse;
use crate::worker::WorkerError;

#[derive(Debug, Clone, Serialize)]
pub struct OutputVerification {
    pub processor: String,
    pub table: String,
    pub expected_dates: usize,
    pub coverage_pct: f64,
    pub is_continuous: bool,
    pub missing_dates: Vec<NaiveDate>,
    /// Missing dates as compact ranges (`2024-01-03..2024-01-05, 2024-01-09`).
    pub missing_ranges: String,
    /// Dates with no rows whose latest run is `no_data` (not counted as gaps).
    pub no_data_dates: Vec<NaiveDate>,
    /// Dates whose latest run is stale (an upstream run was corrected since it ran): their
    /// rows are there but out of date, so the output is not continuous until they re-run.
    pub stale_dates: Vec<NaiveDate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub phase: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub is_continuous: bool,
    pub outputs: Vec<OutputVerification>,
}

pub async fn verify(
    config: &Config,
    ledger: &dyn Ledger,
    warehouse: &dyn Warehouse,
    phase: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Verification, WorkerError> {
    let p = config
        .phase(phase)
        .ok_or_else(|| WorkerError::UnknownPhase {
            phase: phase.to_string(),
            known: config.phase_names(),
        })?;
    let mut outputs = Vec::new();
    for processor in &p.processors {
        let Some(out) = &processor.output else {
            continue;
        };
        let expected = out.expected.as_deref().and_then(|r| config.reference(r));
        let r =
            date_range_completeness(warehouse, &out.table, &out.date_column, from, to, expected)
                .await
                .map_err(crate::gate::GateError::from)?;
        let latest = crate::ledger::latest_in_range_with_staleness(
            ledger,
            &processor.name,
            &processor.checks.upstream,
            from,
            to,
        )
        .await?;
        let no_data: Vec<NaiveDate> = latest
            .iter()
            .filter(|(run, _)| run.status == RunStatus::NoData)
            .map(|(run, _)| run.data_date)
            .collect();
        let stale_dates: Vec<NaiveDate> = latest
            .iter()
            .filter(|(_, stale)| *stale)
            .map(|(run, _)| run.data_date)
            .collect();
        let (no_data_dates, missing): (Vec<NaiveDate>, Vec<NaiveDate>) =
            r.missing_dates.iter().partition(|d| no_data.contains(d));
        let present = r.expected_dates - missing.len();
        outputs.push(OutputVerification {
            processor: processor.name.clone(),
            table: out.table.clone(),
            expected_dates: r.expected_dates,
            coverage_pct: if r.expected_dates == 0 {
                100.0
            } else {
                present as f64 * 100.0 / r.expected_dates as f64
            },
            is_continuous: missing.is_empty() && stale_dates.is_empty(),
            missing_ranges: format_ranges(&missing),
            missing_dates: missing,
            no_data_dates,
            stale_dates,
        });
    }
    Ok(Verification {
        phase: p.name.clone(),
        from,
        to,
        is_continuous: outputs.iter().all(|o| o.is_continuous),
        outputs,
    })
}

impl Verification {
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        if self.outputs.is_empty() {
            out.push_str(&format!(
                "phase {}: no processor declares an output table; nothing to verify\n",
                self.phase
            ));
        }
        for o in &self.outputs {
            out.push_str(&format!(
                "{} {}..{} {} ({}): {} expected dates, {:.1}% coverage, {}\n",
                self.phase,
                self.from,
                self.to,
                o.table,
                o.processor,
                o.expected_dates,
                o.coverage_pct,
                if o.is_continuous {
                    "continuous".to_string()
                } else if o.missing_dates.is_empty() {
                    "no date missing".to_string()
                } else {
                    format!("{} MISSING: {}", o.missing_dates.len(), o.missing_ranges)
                }
            ));
            if !o.stale_dates.is_empty() {
                out.push_str(&format!(
                    "  STALE (an upstream run was corrected since; re-run with backfill): {}\n",
                    format_ranges(&o.stale_dates)
                ));
            }
            if !o.no_data_dates.is_empty() {
                out.push_str(&format!(
                    "  no_data (legitimately empty): {}\n",
                    format_ranges(&o.no_data_dates)
                ));
            }
        }
        out
    }

    /// `phase,processor,table,missing_date` — one row per missing date.
    pub fn render_csv(&self) -> String {
        let mut out = String::from("phase,processor,table,missing_date\n");
        for o in &self.outputs {
            for d in &o.missing_dates {
                out.push_str(&format!("{},{},{},{d}\n", self.phase, o.processor, o.table));
            }
        }
        out
    }
}
