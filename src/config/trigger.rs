//! Time of day and dates: `[trigger]` (a scheduled trigger's date) and a phase's freshness
//! deadline, with their time zone and offset checks.

use serde::Deserialize;

use super::{Config, ConfigError};

/// `[trigger]`: a trigger without `data_date` (a Cloud Scheduler job's fixed body) takes the
/// date of its `publishTime` in `timezone`, plus `offset_days` (`-1`: yesterday).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// IANA time zone name, e.g. `America/New_York`.
    pub timezone: String,
    #[serde(default)]
    pub offset_days: i32,
}

/// A phase's freshness deadline: every day at `by` (local time in `timezone`) the date
/// `offset_days` from that day must be done.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// Local deadline, `HH:MM`.
    pub by: String,
    /// IANA time zone name of `by`.
    pub timezone: String,
    /// The expected data date relative to the deadline's day (default -1: yesterday).
    #[serde(default = "default_freshness_offset")]
    pub offset_days: i32,
}

fn default_freshness_offset() -> i32 {
    -1
}

/// Offsets further than a year away are typos, not schedules.
const MAX_OFFSET_DAYS: i32 = 366;

/// Parse an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone name (e.g. America/New_York, UTC)"))
}

/// Parse a local `HH:MM` time.
pub fn parse_local_time(text: &str) -> Result<chrono::NaiveTime, String> {
    chrono::NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| format!("`{text}` is not a time of day in HH:MM form"))
}

impl TriggerConfig {
    /// The configured zone (validated by [`Config::validate`]; UTC if unparsable).
    pub fn tz(&self) -> chrono_tz::Tz {
        parse_timezone(&self.timezone).unwrap_or(chrono_tz::UTC)
    }

    pub(super) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        parse_timezone(&self.timezone).map_err(|m| config.invalid("trigger.timezone", m))?;
        check_offset(config, "trigger.offset_days", self.offset_days)
    }
}

impl Freshness {
    /// The configured zone (validated by [`Config::validate`]; UTC if unparsable).
    pub fn tz(&self) -> chrono_tz::Tz {
        parse_timezone(&self.timezone).unwrap_or(chrono_tz::UTC)
    }

    /// The local deadline (validated by [`Config::validate`]; midnight if unparsable).
    pub fn deadline(&self) -> chrono::NaiveTime {
        parse_local_time(&self.by).unwrap_or_default()
    }

    pub(super) fn validate(&self, config: &Config, key: &str) -> Result<(), ConfigError> {
        parse_local_time(&self.by).map_err(|m| config.invalid(format!("{key}.by"), m))?;
        parse_timezone(&self.timezone).map_err(|m| config.invalid(format!("{key}.timezone"), m))?;
        check_offset(config, &format!("{key}.offset_days"), self.offset_days)
    }
}

fn check_offset(config: &Config, key: &str, days: i32) -> Result<(), ConfigError> {
    if days.abs() > MAX_OFFSET_DAYS {
        return Err(config.invalid(
            key,
            format!("{days} is more than {MAX_OFFSET_DAYS} days away"),
        ));
    }
    Ok(())
}
