//! Views of the ledger and the gate: the processor × date status grid (table, JSON, CSV, an
//! HTML calendar), the attempts of one date ([`history`]) and the gate's findings as text.

mod calendar;
mod grid_formats;
pub mod history;

use std::collections::HashMap;
use std::fmt::Write;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::dates::{days, format_ranges};
use crate::gate::GateReport;
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus};

pub use grid_formats::GridDocument;

/// Text tables: no borders, one rule under the header.
const TABLE_STYLE: &str = "     ──            ";

/// A table's text without the padding at the end of its lines.
fn table_text(table: &comfy_table::Table) -> String {
    table
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// What a cell of the grid shows: the run status, or what overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Success,
    NoData,
    Failed,
    Blocked,
    Running,
    NotRun,
    /// Done, but a soft check found a problem (or an upstream run was not ready).
    NotProductionReady,
    /// Done, but a newer upstream run exists than the one it consumed.
    Stale,
}

impl CellState {
    /// Every state, in legend order.
    pub const ALL: [CellState; 8] = [
        CellState::Success,
        CellState::NoData,
        CellState::NotProductionReady,
        CellState::Stale,
        CellState::Running,
        CellState::Blocked,
        CellState::Failed,
        CellState::NotRun,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CellState::Success => "success",
            CellState::NoData => "no_data",
            CellState::Failed => "failed",
            CellState::Blocked => "blocked",
            CellState::Running => "running",
            CellState::NotRun => "not_run",
            CellState::NotProductionReady => "not_production_ready",
            CellState::Stale => "stale",
        }
    }
}

/// The latest run of one processor for one date.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub status: RunStatus,
    pub production_ready: bool,
    /// A newer upstream run exists for its date than the one it consumed.
    pub stale: Option<bool>,
    /// Why it is not plainly done: the errors, or the soft findings.
    pub reason: Option<String>,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Cell {
    fn of(run: &RunRecord) -> Cell {
        Cell {
            status: run.status,
            production_ready: run.production_ready,
            stale: None,
            reason: reason(run),
            run_id: run.run_id.clone(),
            started_at: run.started_at,
            finished_at: run.finished_at,
        }
    }

    pub fn state(&self) -> CellState {
        match self.status {
            _ if self.stale == Some(true) && self.status.is_done() => CellState::Stale,
            s if s.is_done() && !self.production_ready => CellState::NotProductionReady,
            RunStatus::Success => CellState::Success,
            RunStatus::NoData => CellState::NoData,
            RunStatus::Failed => CellState::Failed,
            RunStatus::Blocked => CellState::Blocked,
            RunStatus::Running => CellState::Running,
        }
    }
}

/// A run's errors, else its gate's problems (soft findings), else its gate's notes (a check
/// that had nothing to check), else nothing.
pub fn reason(run: &RunRecord) -> Option<String> {
    if let Some(e) = run.errors.as_ref().filter(|e| !e.is_empty()) {
        return Some(e.clone());
    }
    let findings = run.findings.as_ref()?.value();
    ["problems", "notes"].into_iter().find_map(|key| {
        let text: Vec<&str> = findings
            .get(key)?
            .as_array()?
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        (!text.is_empty()).then(|| text.join("; "))
    })
}

/// A processor and the phase it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorRef {
    pub phase: String,
    pub processor: String,
}

/// Latest status of every processor for every date of a range.
pub struct StatusGrid {
    pub processors: Vec<String>,
    pub phases: Vec<ProcessorRef>,
    pub dates: Vec<NaiveDate>,
    cells: HashMap<(String, NaiveDate), Cell>,
}

impl StatusGrid {
    /// One ledger query per processor (and per upstream processor, for staleness) for the
    /// whole range.
    pub async fn load(
        config: &Config,
        ledger: &dyn Ledger,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<StatusGrid, LedgerError> {
        let mut cells = HashMap::new();
        let mut processors = Vec::new();
        let mut phases = Vec::new();
        for phase in &config.phases {
            for p in &phase.processors {
                processors.push(p.name.clone());
                phases.push(ProcessorRef {
                    phase: phase.name.clone(),
                    processor: p.name.clone(),
                });
                let runs = crate::ledger::latest_in_range_with_staleness(
                    ledger,
                    &p.name,
                    &p.checks.upstream,
                    from,
                    to,
                )
                .await?;
                for (run, stale) in runs {
                    let mut cell = Cell::of(&run);
                    cell.stale = Some(stale);
                    cells.insert((p.name.clone(), run.data_date), cell);
                }
            }
        }
        Ok(StatusGrid {
            processors,
            phases,
            dates: days(from, to).collect(),
            cells,
        })
    }

    pub fn cell(&self, processor: &str, date: NaiveDate) -> Option<&Cell> {
        self.cells.get(&(processor.to_string(), date))
    }

    pub fn status(&self, processor: &str, date: NaiveDate) -> Option<RunStatus> {
        self.cell(processor, date).map(|c| c.status)
    }

    /// What the cell shows (`NotRun` when there is no run).
    pub fn state(&self, processor: &str, date: NaiveDate) -> CellState {
        self.cell(processor, date)
            .map_or(CellState::NotRun, Cell::state)
    }

    /// Dates of a processor with the given status.
    pub fn dates_with(&self, processor: &str, status: RunStatus) -> Vec<NaiveDate> {
        self.dates
            .iter()
            .copied()
            .filter(|d| self.status(processor, *d) == Some(status))
            .collect()
    }

    /// How many dates of a processor show `state`.
    pub fn count(&self, processor: &str, state: CellState) -> usize {
        self.dates
            .iter()
            .filter(|d| self.state(processor, **d) == state)
            .count()
    }

    /// Per processor: counts by state.
    pub fn totals(&self) -> String {
        let mut out = String::new();
        for p in &self.processors {
            let _ = write!(out, "{p:<28}");
            for state in CellState::ALL {
                let n = self.count(p, state);
                if n > 0 || matches!(state, CellState::Success | CellState::NotRun) {
                    let _ = write!(out, "  {} {n}", state.as_str());
                }
            }
            out.push('\n');
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
                None if g.nothing_expected => "no date expected".to_string(),
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
            } else if e.nothing_expected {
                " (no entity expected)"
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
    for note in &report.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out
}
