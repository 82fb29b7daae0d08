//! Scheduled triggers: the `data_date` of a trigger that carries none, from its `publishTime`.
//!
//! Cloud Scheduler publishes a fixed body, so "yesterday" cannot be written into it. With
//! `[trigger] timezone = "America/New_York"` and `offset_days = -1`, a trigger published at
//! 2024-03-11T01:30Z (21:30 on the 10th in New York) is for 2024-03-09: the calendar date in
//! the zone, then the offset — daylight-saving changes and UTC day boundaries included.

use chrono::{DateTime, Days, NaiveDate, Utc};

use crate::config::TriggerConfig;

/// Why a date could not be derived from `publishTime`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerDateError {
    #[error("publishTime is missing, so no data_date can be derived from it")]
    NoPublishTime,
    #[error("publishTime `{0}` is not an RFC 3339 timestamp")]
    BadPublishTime(String),
    #[error("publishTime `{0}` plus the configured offset is out of the calendar's range")]
    OutOfRange(String),
}

/// The calendar date of `at` in the configured zone, shifted by `offset_days`.
pub fn date_at(config: &TriggerConfig, at: DateTime<Utc>) -> Option<NaiveDate> {
    shift(
        at.with_timezone(&config.tz()).date_naive(),
        config.offset_days,
    )
}

/// `date` plus `days` (negative: earlier), `None` out of range.
pub fn shift(date: NaiveDate, days: i32) -> Option<NaiveDate> {
    let n = Days::new(u64::from(days.unsigned_abs()));
    if days < 0 {
        date.checked_sub_days(n)
    } else {
        date.checked_add_days(n)
    }
}

/// The `data_date` of a trigger published at `publish_time` (the envelope's RFC 3339 text).
pub fn resolve(
    config: &TriggerConfig,
    publish_time: Option<&str>,
) -> Result<NaiveDate, TriggerDateError> {
    let text = publish_time.ok_or(TriggerDateError::NoPublishTime)?;
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| TriggerDateError::BadPublishTime(text.to_string()))?;
    date_at(config, at.with_timezone(&Utc))
        .ok_or_else(|| TriggerDateError::OutOfRange(text.to_string()))
}
