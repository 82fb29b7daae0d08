//! Upstream status: did the upstream processor's latest run for the date succeed?

use chrono::NaiveDate;
use serde::Serialize;

use crate::ledger::{Ledger, LedgerError, RunRecord};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamStatus {
    pub processor: String,
    /// The latest run is `success` or `no_data` (a legitimate empty date).
    pub processor_succeeded: bool,
    /// The latest run's status, or `not_found` when there is none.
    pub status: String,
    pub safe_to_process: bool,
    pub error_message: Option<String>,
}

/// Read the latest ledger row of `processor` for `date`.
pub async fn upstream_status(
    ledger: &dyn Ledger,
    processor: &str,
    date: NaiveDate,
) -> Result<UpstreamStatus, LedgerError> {
    let latest = ledger.latest(processor, date).await?;
    Ok(UpstreamStatus::of(processor, date, latest.as_ref()))
}

impl UpstreamStatus {
    /// The status `latest` (the upstream processor's latest run for `date`, if any) gives.
    pub fn of(processor: &str, date: NaiveDate, latest: Option<&RunRecord>) -> UpstreamStatus {
        let Some(run) = latest else {
            return UpstreamStatus {
                processor: processor.to_string(),
                processor_succeeded: false,
                status: "not_found".to_string(),
                safe_to_process: false,
                error_message: Some(format!("no run found for {processor} on {date}")),
            };
        };
        let succeeded = run.status.is_done();
        let error_message = if succeeded {
            None
        } else {
            Some(match &run.errors {
                Some(e) => format!("latest run {} is {}: {e}", run.run_id, run.status),
                None => format!("latest run {} is {}", run.run_id, run.status),
            })
        };
        UpstreamStatus {
            processor: processor.to_string(),
            processor_succeeded: succeeded,
            status: run.status.to_string(),
            safe_to_process: succeeded,
            error_message,
        }
    }
}
