//! Entity completeness: for each entity (team, station, …) the reference expects in the
//! window before a date, its expected appearances against what the upstream table holds.

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::{EntityCompleteness, Reference, WindowKind};
use crate::warehouse::{EntityCount, EntityWindow, Warehouse, WarehouseError, entity_window};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EntityResult {
    pub entity: String,
    pub expected_count: u64,
    pub actual_count: u64,
    pub completeness_pct: f64,
    pub missing_count: u64,
    pub is_complete: bool,
    pub is_production_ready: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EntityCompletenessReport {
    /// The reference table the expected appearances come from.
    pub reference: String,
    pub upstream_table: String,
    pub window: WindowKind,
    pub lookback: u32,
    /// The window's reach in calendar days (see `EntityCompleteness::window_days`).
    pub window_days: u32,
    /// The reference dates considered, both ends included (`from > to`: nothing to check).
    pub window_range: (NaiveDate, NaiveDate),
    pub threshold_pct: f64,
    /// The window has days but the reference lists no date at all (an empty reference): the
    /// window cannot be checked.
    pub reference_empty: bool,
    /// The window has days, the reference lists dates, but none in the window: no entity
    /// was expected, so there is nothing to check.
    pub nothing_expected: bool,
    /// Only the entities with a reference date in the window.
    pub entities: Vec<EntityResult>,
    pub not_ready_count: usize,
}

pub async fn entity_completeness(
    warehouse: &dyn Warehouse,
    spec: &EntityCompleteness,
    reference: &Reference,
    date: NaiveDate,
) -> Result<EntityCompletenessReport, WarehouseError> {
    let window = entity_window(spec, reference, date)?;
    let counts = if window.is_empty() {
        Vec::new()
    } else {
        warehouse.entity_counts(spec, reference, date).await?
    };
    let in_use = if !window.is_empty() && counts.is_empty() {
        warehouse.reference_in_use(reference).await?
    } else {
        true
    };
    Ok(EntityCompletenessReport::from_counts(
        spec, reference, &window, counts, in_use,
    ))
}

impl EntityCompletenessReport {
    /// The report of `window` given each expected entity's counts (what
    /// [`Warehouse::entity_counts`] answers; nothing for an empty window) and whether the
    /// reference lists any date at all ([`Warehouse::reference_in_use`]; only read when it
    /// lists no entity in the window).
    pub fn from_counts(
        spec: &EntityCompleteness,
        reference: &Reference,
        window: &EntityWindow<'_>,
        counts: Vec<EntityCount>,
        reference_in_use: bool,
    ) -> EntityCompletenessReport {
        let entities: Vec<EntityResult> = counts
            .into_iter()
            .map(|c| {
                let actual = c.actual.min(c.expected);
                let pct = if c.expected == 0 {
                    100.0
                } else {
                    actual as f64 * 100.0 / c.expected as f64
                };
                EntityResult {
                    entity: c.entity,
                    expected_count: c.expected,
                    actual_count: c.actual,
                    completeness_pct: pct,
                    missing_count: c.expected - actual,
                    is_complete: actual == c.expected,
                    is_production_ready: pct >= spec.threshold_pct,
                }
            })
            .collect();
        let not_ready_count = entities.iter().filter(|e| !e.is_production_ready).count();
        let none_in_window = !window.is_empty() && entities.is_empty();
        EntityCompletenessReport {
            reference: reference.table.clone(),
            upstream_table: spec.upstream_table.clone(),
            window: spec.window,
            lookback: spec.lookback,
            window_days: spec.window_days(),
            window_range: (window.floor, window.last),
            threshold_pct: spec.threshold_pct,
            reference_empty: none_in_window && !reference_in_use,
            nothing_expected: none_in_window && reference_in_use,
            entities,
            not_ready_count,
        }
    }
}
