//! The completion event a phase publishes when a date is done.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::ledger::RunStatus;

/// Data of the message published to a phase's completion topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionEvent {
    pub phase: String,
    pub processors: Vec<String>,
    pub data_date: NaiveDate,
    /// The run ids of the processors' runs, in processor order.
    pub run_id: String,
    pub status: RunStatus,
    /// True when any processor ran with findings that make it not production-ready (soft mode).
    pub production_ready: bool,
}

impl CompletionEvent {
    /// The message attributes: `data_date` and `phase`, for filtering and routing, and
    /// `event_id` — the same for every publication of the same runs, so a bus (the durable
    /// embedded one) or a consumer can drop a repeat.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("data_date".to_string(), self.data_date.to_string()),
            ("phase".to_string(), self.phase.clone()),
            ("event_id".to_string(), self.event_id()),
        ])
    }

    /// `phase/data_date/run ids`: identifies what is announced, not the publication.
    pub fn event_id(&self) -> String {
        format!("{}/{}/{}", self.phase, self.data_date, self.run_id)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
