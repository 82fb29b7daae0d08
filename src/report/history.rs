//! `phasegate history`: every attempt of each processor of a phase for one date, oldest
//! first, and how long the date has been (or was) not done.

use std::fmt::Write;

use chrono::{DateTime, NaiveDate, Utc};
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use super::{TABLE_STYLE, reason, table_text};
use crate::config::Phase;
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus};

/// One run attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub processor: String,
    pub run_id: String,
    pub status: RunStatus,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub trigger: &'static str,
    pub message_id: Option<String>,
    /// Pub/Sub's `deliveryAttempt` for this run's message.
    pub delivery_attempt: Option<u32>,
    pub published_at: Option<DateTime<Utc>>,
    pub skip_downstream_trigger: bool,
    pub production_ready: bool,
    /// Not computed per attempt (`status` shows whether the latest run is stale).
    pub stale: Option<bool>,
    pub rows_affected: Option<i64>,
    /// What became of the attempt's completion event.
    pub event: Event,
}

/// An attempt's completion event, as the outbox sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Event {
    /// Out (`published_at`).
    Published,
    /// Never to be sent: the message said skip (a backfill).
    Skipped,
    /// Not done (running, failed, blocked): nothing to announce.
    None,
    /// Done and not out: the holder, a redelivery or the sweep will publish it.
    Owed,
    /// Done and not out, and never will be: a newer run of its processor and date (named)
    /// announces the date instead. The sweep does not read it.
    Superseded(String),
    /// Done and not out: the phase's event waits for these processors' latest runs, which
    /// are not done.
    Waiting(Vec<String>),
}

impl Attempt {
    fn of(run: RunRecord) -> Attempt {
        Attempt {
            reason: reason(&run),
            processor: run.processor,
            run_id: run.run_id,
            status: run.status,
            started_at: run.started_at,
            finished_at: run.finished_at,
            trigger: run.trigger.as_str(),
            message_id: run.message_id,
            delivery_attempt: run.delivery_attempt,
            published_at: run.published_at,
            skip_downstream_trigger: run.skip_downstream_trigger,
            production_ready: run.production_ready,
            stale: None,
            rows_affected: run.rows_affected,
            event: Event::None,
        }
    }
}

/// What became of each attempt's event: `attempts` are every run of a phase's processors
/// for one date; `latest` the latest run of each processor (`None`: never run).
fn events(attempts: &mut [Attempt], latest: &[(String, Option<(String, RunStatus)>)]) {
    let waiting: Vec<String> = latest
        .iter()
        .filter(|(_, l)| !l.as_ref().is_some_and(|(_, s)| s.is_done()))
        .map(|(p, _)| p.clone())
        .collect();
    for a in attempts {
        let newest = latest
            .iter()
            .find(|(p, _)| *p == a.processor)
            .and_then(|(_, l)| l.as_ref())
            .map(|(id, _)| id.as_str());
        a.event = if a.published_at.is_some() {
            Event::Published
        } else if !a.status.is_done() {
            Event::None
        } else if a.skip_downstream_trigger {
            Event::Skipped
        } else if let Some(newest) = newest.filter(|n| *n != a.run_id) {
            Event::Superseded(newest.to_string())
        } else if !waiting.is_empty() {
            Event::Waiting(waiting.clone())
        } else {
            Event::Owed
        };
    }
}

/// Per processor: where the date stands after all its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorSummary {
    pub processor: String,
    pub attempts: usize,
    pub latest_status: Option<RunStatus>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When the date became done (the end of the first done attempt), if it is.
    pub done_at: Option<DateTime<Utc>>,
    /// Seconds from the first attempt until done, or until `now` while not done.
    pub not_done_secs: Option<i64>,
}

/// The attempts of a phase's processors for one date.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub phase: String,
    pub data_date: NaiveDate,
    /// Every attempt of every processor, oldest first.
    pub attempts: Vec<Attempt>,
    pub processors: Vec<ProcessorSummary>,
}

impl History {
    /// One ledger query per processor.
    pub async fn load(
        phase: &Phase,
        date: NaiveDate,
        ledger: &dyn Ledger,
        now: DateTime<Utc>,
    ) -> Result<History, LedgerError> {
        let mut attempts = Vec::new();
        let mut processors = Vec::new();
        let mut latest = Vec::new();
        for p in &phase.processors {
            let runs = ledger.history(&p.name, date).await?;
            processors.push(summarise(&p.name, &runs, now));
            let newest = runs.iter().max_by_key(|r| r.started_at);
            latest.push((p.name.clone(), newest.map(|r| (r.run_id.clone(), r.status))));
            attempts.extend(runs.into_iter().map(Attempt::of));
        }
        attempts.sort_by_key(|a| a.started_at);
        events(&mut attempts, &latest);
        Ok(History {
            phase: phase.name.clone(),
            data_date: date,
            attempts,
            processors,
        })
    }

    /// A table of attempts, the reasons below it (numbered), then one line per processor.
    pub fn render(&self) -> String {
        let mut table = Table::new();
        table
            .load_preset(TABLE_STYLE)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header([
                "#",
                "processor",
                "status",
                "started",
                "finished",
                "trigger",
                "message id",
                "delivery",
                "published",
                "ready",
                "stale",
            ]);
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or("—".to_string(), |t| {
                t.format("%m-%d %H:%M:%S").to_string()
            })
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "—".to_string());
        for (i, a) in self.attempts.iter().enumerate() {
            let published = match (&a.event, a.published_at) {
                (_, Some(t)) => time(Some(t)),
                (Event::Skipped, _) => "skipped".to_string(),
                (Event::Owed, _) => "owed".to_string(),
                (Event::Superseded(_), _) => "superseded".to_string(),
                (Event::Waiting(_), _) => "waiting".to_string(),
                _ => "—".to_string(),
            };
            table.add_row([
                (i + 1).to_string(),
                a.processor.clone(),
                // A `running` run with a finish time was released (the store was
                // unavailable): it ended without an outcome and is not running.
                if a.status == RunStatus::Running && a.finished_at.is_some() {
                    "released".to_string()
                } else {
                    a.status.to_string()
                },
                time(Some(a.started_at)),
                time(a.finished_at),
                a.trigger.to_string(),
                opt(a.message_id.clone()),
                opt(a.delivery_attempt.map(|n| n.to_string())),
                published,
                if a.production_ready { "yes" } else { "no" }.to_string(),
                opt(a.stale.map(|s| if s { "yes" } else { "no" }.to_string())),
            ]);
        }
        let mut out = format!(
            "{} {}: {} attempt(s) (times UTC)\n{}",
            self.phase,
            self.data_date,
            self.attempts.len(),
            table_text(&table)
        );
        self.render_reasons(&mut out);
        for s in &self.processors {
            let _ = writeln!(out, "{}", s.describe());
        }
        out
    }

    /// `#1-3: reason`: consecutive attempts with the same reason share a line.
    fn render_reasons(&self, out: &mut String) {
        let explained: Vec<Option<String>> = self
            .attempts
            .iter()
            .map(|a| match &a.event {
                Event::Superseded(by) => Some(format!(
                    "event never sent: superseded by run {by}, which announces the date"
                )),
                Event::Waiting(on) => Some(format!(
                    "event waits for the phase's other processors: {}",
                    on.join(", ")
                )),
                _ => a.reason.clone(),
            })
            .collect();
        let mut groups: Vec<(usize, usize, &str)> = Vec::new();
        for (i, r) in explained.iter().enumerate() {
            let Some(r) = r.as_deref() else {
                continue;
            };
            match groups.last_mut() {
                Some((_, last, text)) if *last == i && *text == r => *last = i + 1,
                _ => groups.push((i + 1, i + 1, r)),
            }
        }
        if groups.is_empty() {
            return;
        }
        out.push_str("reasons:\n");
        for (first, last, text) in groups {
            let ids = if first == last {
                format!("#{first}")
            } else {
                format!("#{first}-{last}")
            };
            let _ = writeln!(out, "  {ids}: {text}");
        }
    }
}

impl ProcessorSummary {
    fn describe(&self) -> String {
        let Some(status) = self.latest_status else {
            return format!("{}: never run for this date", self.processor);
        };
        let span = self.not_done_secs.map(human_duration).unwrap_or_default();
        match self.done_at {
            Some(_) => format!(
                "{}: {status} after {} attempt(s), {span} after the first",
                self.processor, self.attempts
            ),
            None => format!(
                "{}: {status} after {} attempt(s); not done for {span} since the first",
                self.processor, self.attempts
            ),
        }
    }
}

fn summarise(processor: &str, runs: &[RunRecord], now: DateTime<Utc>) -> ProcessorSummary {
    let first = runs.iter().map(|r| r.started_at).min();
    let done_at = runs
        .iter()
        .filter(|r| r.status.is_done())
        .filter_map(|r| r.finished_at)
        .min();
    ProcessorSummary {
        processor: processor.to_string(),
        attempts: runs.len(),
        latest_status: runs.iter().max_by_key(|r| r.started_at).map(|r| r.status),
        first_attempt_at: first,
        done_at,
        not_done_secs: first.map(|f| (done_at.unwrap_or(now) - f).num_seconds().max(0)),
    }
}

/// `3h 05m`, `12m 04s`, `9s`.
pub fn human_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m"),
    }
}
