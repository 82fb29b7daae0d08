//! The status grid as a text table, one JSON document, or CSV rows.

use chrono::{DateTime, NaiveDate, Utc};
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use super::{CellState, ProcessorRef, StatusGrid, TABLE_STYLE, table_text};

/// `status --output json`: the whole grid as one document.
#[derive(Debug, Serialize)]
pub struct GridDocument<'a> {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub processors: &'a [ProcessorRef],
    pub dates: &'a [NaiveDate],
    /// One per processor and date, processors in pipeline order, dates ascending.
    pub cells: Vec<CellRow<'a>>,
}

/// One processor on one date (a JSON object, a CSV row).
#[derive(Debug, Serialize)]
pub struct CellRow<'a> {
    pub data_date: NaiveDate,
    pub phase: &'a str,
    pub processor: &'a str,
    /// The run status, `not_production_ready`/`stale` when those override it, or `not_run`.
    pub state: CellState,
    /// The latest run's status (empty when not run).
    pub status: Option<&'static str>,
    pub production_ready: Option<bool>,
    pub stale: Option<bool>,
    pub reason: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl StatusGrid {
    /// Every cell, processors in pipeline order, dates ascending.
    pub fn rows(&self) -> Vec<CellRow<'_>> {
        let mut rows = Vec::with_capacity(self.phases.len() * self.dates.len());
        for p in &self.phases {
            for &date in &self.dates {
                let cell = self.cell(&p.processor, date);
                rows.push(CellRow {
                    data_date: date,
                    phase: &p.phase,
                    processor: &p.processor,
                    state: self.state(&p.processor, date),
                    status: cell.map(|c| c.status.as_str()),
                    production_ready: cell.map(|c| c.production_ready),
                    stale: cell.and_then(|c| c.stale),
                    reason: cell.and_then(|c| c.reason.as_deref()),
                    run_id: cell.map(|c| c.run_id.as_str()),
                    started_at: cell.map(|c| c.started_at),
                    finished_at: cell.and_then(|c| c.finished_at),
                });
            }
        }
        rows
    }

    pub fn document(&self) -> GridDocument<'_> {
        GridDocument {
            from: self.dates.first().copied(),
            to: self.dates.last().copied(),
            processors: &self.phases,
            dates: &self.dates,
            cells: self.rows(),
        }
    }

    /// CSV with a header row: one row per processor and date.
    pub fn to_csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        for row in self.rows() {
            w.serialize(row)?;
        }
        let bytes = w.into_inner().map_err(|e| e.into_error())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A table: one row per date, one column per processor.
    pub fn render(&self) -> String {
        let mut table = Table::new();
        table
            .load_preset(TABLE_STYLE)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(std::iter::once("date").chain(self.processors.iter().map(String::as_str)));
        for &d in &self.dates {
            let cells = self.processors.iter().map(|p| label(self.state(p, d)));
            table.add_row(std::iter::once(d.to_string()).chain(cells.map(String::from)));
        }
        table_text(&table)
    }
}

/// Short cell text for the table.
fn label(state: CellState) -> &'static str {
    match state {
        CellState::NotRun => "-",
        CellState::NotProductionReady => "not ready",
        other => other.as_str(),
    }
}
