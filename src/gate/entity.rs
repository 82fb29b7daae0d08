//! Entity completeness: for each entity (team, player, …) expected appearances in a lookback
//! window (from a reference such as the schedule) against what the upstream table holds.

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::{EntityCompleteness, Reference, WindowKind};
use crate::warehouse::{Warehouse, WarehouseError};

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
    pub window: WindowKind,
    pub lookback: u32,
    pub threshold_pct: f64,
    pub entities: Vec<EntityResult>,
    pub not_ready_count: usize,
}

pub async fn entity_completeness(
    warehouse: &dyn Warehouse,
    spec: &EntityCompleteness,
    reference: &Reference,
    date: NaiveDate,
) -> Result<EntityCompletenessReport, WarehouseError> {
    let counts = warehouse.entity_counts(spec, reference, date).await?;
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
    Ok(EntityCompletenessReport {
        window: spec.window,
        lookback: spec.lookback,
        threshold_pct: spec.threshold_pct,
        entities,
        not_ready_count,
    })
}
