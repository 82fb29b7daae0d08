//! Human-readable views of the ledger and the gate: the phase × date grid and check findings.

use std::collections::HashMap;
use std::fmt::Write;

use chrono::NaiveDate;

use crate::config::Config;
use crate::dates::{days, format_ranges};
use crate::gate::GateReport;
use crate::ledger::{Ledger, LedgerError, RunStatus};

/// Latest status of every processor for every date of a range.
pub struct StatusGrid {
    pub processors: Vec<String>,
    pub dates: Vec<NaiveDate>,
    cells: HashMap<(String, NaiveDate), RunStatus>,
}

impl StatusGrid {
    /// One ledger query per processor for the whole range.
    pub async fn load(
        config: &Config,
        ledger: &dyn Ledger,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<StatusGrid, LedgerError> {
        let mut cells = HashMap::new();
        let mut processors = Vec::new();
        for phase in &config.phases {
            for p in &phase.processors {
                processors.push(p.name.clone());
                for run in ledger.latest_in_range(&p.name, from, to).await? {
                    cells.insert((p.name.clone(), run.data_date), run.status);
                }
            }
        }
        Ok(StatusGrid {
            processors,
            dates: days(from, to).collect(),
            cells,
        })
    }

    pub fn status(&self, processor: &str, date: NaiveDate) -> Option<RunStatus> {
        self.cells.get(&(processor.to_string(), date)).copied()
    }

    /// Dates of a processor with the given status.
    pub fn dates_with(&self, processor: &str, status: RunStatus) -> Vec<NaiveDate> {
        self.dates
            .iter()
            .copied()
            .filter(|d| self.status(processor, *d) == Some(status))
            .collect()
    }

    /// A table: one row per date, one column per processor.
    pub fn render(&self) -> String {
        let width = self
            .processors
            .iter()
            .map(|p| p.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let mut out = format!("{:<10}", "date");
        for p in &self.processors {
            let _ = write!(out, "  {p:<width$}");
        }
        out.push('\n');
        for d in &self.dates {
            let _ = write!(out, "{d}");
            for p in &self.processors {
                let cell = self.status(p, *d).map_or("-", |s| s.as_str());
                let _ = write!(out, "  {cell:<width$}");
            }
            out.push('\n');
        }
        out
    }

    /// Per processor: counts by status.
    pub fn totals(&self) -> String {
        let mut out = String::new();
        for p in &self.processors {
            let count = |s| self.dates_with(p, s).len();
            let _ = writeln!(
                out,
                "{p:<28} success {:>3}  no_data {:>3}  failed {:>3}  blocked {:>3}  not run {:>3}",
                count(RunStatus::Success),
                count(RunStatus::NoData),
                count(RunStatus::Failed),
                count(RunStatus::Blocked),
                self.dates
                    .iter()
                    .filter(|d| self.status(p, **d).is_none())
                    .count(),
            );
        }
        out
    }
}

/// The gate's findings as text.
pub fn render_gate(report: &GateReport) -> String {
    let mut out = String::new();
    let verdict = if report.production_ready() {
        "PASS"
    } else if report.blocks() {
        "BLOCK"
    } else {
        "WARN (soft: processed, not production-ready)"
    };
    let mode = match report.mode {
        crate::config::Mode::Soft => "soft",
        crate::config::Mode::Strict => "strict",
    };
    let _ = writeln!(
        out,
        "{} for {} ({mode} mode): {verdict}",
        report.processor, report.data_date
    );
    if report.upstream.is_empty()
        && report.historical_gaps.is_none()
        && report.entity_completeness.is_none()
    {
        let _ = writeln!(out, "  no checks declared");
    }
    for u in &report.upstream {
        let _ = writeln!(
            out,
            "  upstream {:<28} {:<9} {}",
            u.processor,
            u.status,
            u.error_message.as_deref().unwrap_or("")
        );
    }
    if let Some(g) = &report.historical_gaps {
        let _ = writeln!(
            out,
            "  historical gaps in {} {}..{}: {} of {} expected dates missing ({}){}",
            g.table,
            g.date_range.0,
            g.date_range.1,
            g.gap_count,
            g.expected_dates,
            match g.coverage_pct {
                Some(pct) => format!("{pct:.1}% coverage"),
                None if g.reference_empty => "the reference lists no date".to_string(),
                None => "nothing to check".to_string(),
            },
            if g.has_gaps {
                format!(": {}", format_ranges(&g.missing_dates))
            } else {
                String::new()
            }
        );
    }
    if let Some(e) = &report.entity_completeness {
        let _ = writeln!(
            out,
            "  entity completeness ({} {:?} in {}..{}, threshold {}%): {} of {} below threshold{}",
            e.lookback,
            e.window,
            e.window_range.0,
            e.window_range.1,
            e.threshold_pct,
            e.not_ready_count,
            e.entities.len(),
            if e.reference_empty {
                " (the reference lists no entity)"
            } else {
                ""
            }
        );
        for r in e.entities.iter().filter(|r| !r.is_complete) {
            let _ = writeln!(
                out,
                "    {:<12} {}/{} ({:.1}%){}",
                r.entity,
                r.actual_count,
                r.expected_count,
                r.completeness_pct,
                if r.is_production_ready {
                    ""
                } else {
                    "  not production-ready"
                }
            );
        }
    }
    out
}
