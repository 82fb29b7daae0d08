//! Freshness: is each phase's expected date done by its deadline?
//!
//! A phase with `freshness = { by = "09:00", timezone = "America/New_York", offset_days = -1 }`
//! must, every day at 09:00 New York time, have yesterday's date done (every processor's
//! latest run `success` or `no_data`). At any moment the check looks at the latest deadline
//! that has passed: at 08:59 that is yesterday's 09:00 (for the day before yesterday).

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::{Config, Freshness};
use crate::ledger::{Ledger, LedgerError, RunStatus};
use crate::trigger::shift;

/// The verdict for one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFreshness {
    pub phase: String,
    pub expected_date: NaiveDate,
    /// The deadline that has passed most recently.
    pub deadline: DateTime<Utc>,
    pub timezone: String,
    /// Every processor's latest status for the expected date (`None`: never run).
    pub processors: Vec<ProcessorState>,
    pub fresh: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessorState {
    pub processor: String,
    pub status: Option<RunStatus>,
    /// Done, but an upstream run was corrected since: not done.
    pub stale: bool,
}

/// The latest deadline at or before `now`, and the data date due by it.
pub fn due(f: &Freshness, now: DateTime<Utc>) -> Option<(NaiveDate, DateTime<Utc>)> {
    let tz = f.tz();
    let today = now.with_timezone(&tz).date_naive();
    let deadline_today = local_instant(&tz, today, f.deadline())?;
    let (day, deadline) = if now >= deadline_today {
        (today, deadline_today)
    } else {
        let yesterday = today.pred_opt()?;
        (yesterday, local_instant(&tz, yesterday, f.deadline())?)
    };
    Some((shift(day, f.offset_days)?, deadline))
}

/// `day` at `time` in `tz`: the earlier instant of an ambiguous time, and a time skipped
/// by a daylight-saving change moves forward by the hour it skipped.
fn local_instant<Z: TimeZone>(tz: &Z, day: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    let local = day.and_time(time);
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(local + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// Check every phase that declares `freshness` (one ledger query per processor).
pub async fn check(
    config: &Config,
    ledger: &dyn Ledger,
    now: DateTime<Utc>,
) -> Result<Vec<PhaseFreshness>, LedgerError> {
    let mut out = Vec::new();
    for phase in &config.phases {
        let Some(f) = &phase.freshness else { continue };
        let Some((expected_date, deadline)) = due(f, now) else {
            continue;
        };
        let mut processors = Vec::new();
        for p in &phase.processors {
            // A stale run (its upstream was corrected since) is not done either.
            let status = crate::ledger::latest_in_range_with_staleness(
                ledger,
                &p.name,
                &p.checks.upstream,
                expected_date,
                expected_date,
            )
            .await?
            .into_iter()
            .next()
            .map(|(r, stale)| (r.status, stale));
            let (status, stale) = (status.map(|s| s.0), status.is_some_and(|s| s.1));
            processors.push(ProcessorState {
                processor: p.name.clone(),
                status,
                stale,
            });
        }
        let fresh = processors
            .iter()
            .all(|p| !p.stale && p.status.is_some_and(|s| s.is_done()));
        out.push(PhaseFreshness {
            phase: phase.name.clone(),
            expected_date,
            deadline,
            timezone: f.timezone.clone(),
            processors,
            fresh,
        });
    }
    Ok(out)
}

/// One line per phase.
pub fn render(results: &[PhaseFreshness]) -> String {
    let mut out = String::new();
    for r in results {
        let states = r
            .processors
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p.processor,
                    p.status.map_or("not run", |s| s.as_str())
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let deadline = r
            .deadline
            .with_timezone(&crate::config::parse_timezone(&r.timezone).unwrap_or(chrono_tz::UTC))
            .format("%Y-%m-%d %H:%M %Z");
        out.push_str(&format!(
            "{:<5} {} {}: due by {deadline} — {states}\n",
            if r.fresh { "OK" } else { "LATE" },
            r.phase,
            r.expected_date,
        ));
    }
    out
}
