//! `[[phases]]` and their processors: output, checks (upstream, historical gaps, entity
//! completeness), and their validation.

use chrono::NaiveDate;
use serde::Deserialize;

use super::names::{check_ident, check_table};
use super::{Config, ConfigError, Freshness, SqlByBackend};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// Topic this phase listens on. Required for the first phase (its trigger topic);
    /// for later phases it defaults to (and must equal) the previous phase's completion topic.
    #[serde(default)]
    pub input_topic: Option<String>,
    pub completion_topic: String,
    pub processors: Vec<Processor>,
    /// When this phase's expected date must be done (`phasegate freshness`).
    #[serde(default)]
    pub freshness: Option<Freshness>,
}

impl Phase {
    /// The topic this phase listens on (validated to be set after [`Config::load`]).
    pub fn input(&self) -> &str {
        self.input_topic.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorKind {
    Sql,
    Command,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processor {
    pub name: String,
    pub kind: ProcessorKind,
    /// `sql` processors: statements per backend; `@data_date` is bound as a DATE parameter.
    #[serde(default)]
    pub sql: SqlByBackend,
    /// `command` processors: program and arguments; `{data_date}` in an argument is replaced
    /// by the date (no shell is involved).
    #[serde(default)]
    pub command: Vec<String>,
    /// `command` processors: seconds before the program is killed and the run fails.
    #[serde(default = "default_command_timeout_secs")]
    pub timeout_secs: u64,
    /// The table this processor writes: rows for the date are counted after the run
    /// (0 rows → `no_data`), and `verify` checks it for gaps.
    #[serde(default)]
    pub output: Option<Output>,
    #[serde(default)]
    pub checks: Checks,
    /// BigQuery, `sql` processors: `maximumBytesBilled` of the processor's run job (its
    /// statements, the output count and the outcome row: one script), in place of
    /// `backend.maximum_bytes_billed`. A run that would bill more fails without charge
    /// (`bytesBilledLimitExceeded`) and is recorded `failed`. Ignored on SQLite.
    #[serde(default)]
    pub maximum_bytes_billed: Option<u64>,
}

fn default_command_timeout_secs() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub table: String,
    pub date_column: String,
    /// Reference whose dates are expected in this table (default: every calendar day).
    #[serde(default)]
    pub expected: Option<String>,
    /// `require_rows` as written (`false` opts out); see [`Output::require_rows`].
    #[serde(default, rename = "require_rows")]
    pub require_rows_setting: Option<bool>,
    /// Resolved by [`Config::validate`]: a run that writes 0 rows on a date the `expected`
    /// reference lists fails instead of recording `no_data` (the feed is missing, not the
    /// games). On by default whenever `expected` is set; `require_rows = false` turns it off.
    #[serde(skip)]
    pub require_rows: bool,
}

impl Output {
    /// Does 0 rows on a date the reference lists fail the run? (Fail closed: yes whenever
    /// an `expected` reference is declared, unless `require_rows = false` says otherwise.)
    pub fn requires_rows(&self) -> bool {
        self.expected.is_some() && self.require_rows_setting.unwrap_or(true)
    }
}

/// Soft records findings and goes on; strict blocks the run.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Soft,
    Strict,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub mode: Mode,
    /// Processors whose latest run for the same date must have succeeded.
    #[serde(default)]
    pub upstream: Vec<String>,
    #[serde(default)]
    pub historical_gaps: Option<HistoricalGaps>,
    #[serde(default)]
    pub entity_completeness: Option<EntityCompleteness>,
    /// Strict mode: also block when an upstream run it would consume is not
    /// production-ready (soft mode always records it and marks this run not ready).
    #[serde(default)]
    pub require_production_ready: bool,
}

impl Checks {
    pub fn is_empty(&self) -> bool {
        self.upstream.is_empty()
            && self.historical_gaps.is_none()
            && self.entity_completeness.is_none()
    }

    /// How many calendar days before a date the checks look at (0 when none look back): the
    /// one definition the gate's windows and the backfill planner share.
    pub fn lookback_days(&self) -> u32 {
        let gaps = self.historical_gaps.as_ref().map_or(0, |g| g.lookback_days);
        let entity = self
            .entity_completeness
            .as_ref()
            .map_or(0, EntityCompleteness::window_days);
        gaps.max(entity)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoricalGaps {
    pub table: String,
    pub date_column: String,
    /// Days before the processed date that must be present.
    pub lookback_days: u32,
    /// Reference whose dates are expected (default: every calendar day).
    #[serde(default)]
    pub expected: Option<String>,
    /// No date before this one is expected (e.g. the season's first day).
    #[serde(default)]
    pub not_before: Option<NaiveDate>,
}

/// How an entity-completeness window is measured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Each entity's last `lookback` reference dates (games, readings, …), within
    /// `window_days` calendar days. `games` is accepted as an alias.
    #[serde(alias = "games")]
    Occurrences,
    /// The reference dates of the last `lookback` calendar days.
    Days,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityCompleteness {
    /// Reference with an `entity_column`: the expected appearances of each entity.
    pub reference: String,
    pub upstream_table: String,
    pub upstream_entity_column: String,
    pub upstream_date_column: String,
    pub window: WindowKind,
    /// Window size: each entity's last N occurrences, or the last N days.
    pub lookback: u32,
    /// `occurrences` windows only: how many calendar days before the date the window reaches
    /// at most (default [`DEFAULT_WINDOW_DAYS_PER_OCCURRENCE`] × `lookback`). Entities with
    /// no reference date in these days are not expected. See [`EntityCompleteness::window_days`].
    #[serde(default)]
    pub window_days: Option<u32>,
    /// No reference date before this one is expected (e.g. the season's first day).
    #[serde(default)]
    pub season_start: Option<NaiveDate>,
    /// An entity is production-ready at or above this completeness (percent).
    #[serde(default = "default_threshold_pct")]
    pub threshold_pct: f64,
}

fn default_threshold_pct() -> f64 {
    90.0
}

/// Default time bound of an `occurrences` window: this many days per occurrence (an entity
/// that plays every other day fills a 10-game window in ~20 days; 40 leaves room for breaks).
pub const DEFAULT_WINDOW_DAYS_PER_OCCURRENCE: u32 = 4;

impl EntityCompleteness {
    /// The window's reach in calendar days before the date: `lookback` for a `days` window,
    /// `window_days` (default 4 × `lookback`) for an `occurrences` window.
    pub fn window_days(&self) -> u32 {
        match self.window {
            WindowKind::Days => self.lookback,
            WindowKind::Occurrences => self.window_days.unwrap_or_else(|| {
                self.lookback
                    .saturating_mul(DEFAULT_WINDOW_DAYS_PER_OCCURRENCE)
            }),
        }
    }
}

impl Config {
    pub(super) fn validate_processor(
        &self,
        key: &str,
        p: &Processor,
        earlier: &std::collections::HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        check_ident(self, &format!("{key}.name"), &p.name)?;
        if let Some(phase) = earlier.get(&p.name) {
            return Err(self.invalid(
                format!("{key}.name"),
                format!(
                    "processor `{}` is already declared in phase `{phase}`",
                    p.name
                ),
            ));
        }
        match p.kind {
            ProcessorKind::Sql => {
                if p.sql.for_backend(&self.backend.kind).is_empty() {
                    return Err(self.invalid(
                        format!("{key}.sql.{}", self.backend.kind.as_str()),
                        "a sql processor needs at least one statement for the configured backend",
                    ));
                }
                let rollback = p.sql.sqlite.iter().enumerate().find_map(|(i, sql)| {
                    crate::sql_lint::rollback_clause(sql).map(|c| (i, c, sql))
                });
                if let Some((i, clause, sql)) = rollback {
                    let message = crate::sql_lint::refusal(clause, sql);
                    return Err(self.invalid(format!("{key}.sql.sqlite[{i}]"), message));
                }
                if let Some((i, sql)) = p.sql.bigquery_transaction_control() {
                    return Err(self.invalid(
                        format!("{key}.sql.bigquery[{i}]"),
                        format!(
                            "`{sql}` controls the transaction, or may (EXECUTE IMMEDIATE, CALL): \
                             phasegate commits a processor's statements with its ledger row in \
                             one transaction, so they may not begin, commit or roll back one, \
                             nor run SQL phasegate cannot check (quote a column named like those \
                             keywords: `commit`)"
                        ),
                    ));
                }
            }
            ProcessorKind::Command => {
                if p.command.is_empty() {
                    return Err(self.invalid(
                        format!("{key}.command"),
                        "a command processor needs a program to run",
                    ));
                }
            }
        }
        if let Some(n) = p.maximum_bytes_billed {
            let bkey = format!("{key}.maximum_bytes_billed");
            if p.kind == ProcessorKind::Command {
                return Err(self.invalid(
                    bkey,
                    "a command processor's work runs outside BigQuery: maximum_bytes_billed caps \
                     a sql processor's run job (set backend.maximum_bytes_billed for every job)",
                ));
            }
            if let Some(problem) = super::backend::maximum_bytes_billed_problem(n) {
                return Err(self.invalid(bkey, problem));
            }
        }
        if let Some(o) = &p.output {
            check_table(self, &format!("{key}.output.table"), &o.table)?;
            check_ident(self, &format!("{key}.output.date_column"), &o.date_column)?;
            self.check_reference(
                &format!("{key}.output.expected"),
                o.expected.as_deref(),
                false,
            )?;
            if o.require_rows_setting == Some(true) && o.expected.is_none() {
                return Err(self.invalid(
                    format!("{key}.output.require_rows"),
                    "require_rows needs `expected` (the reference that says which dates need rows)",
                ));
            }
        }
        let c = &p.checks;
        for (k, up) in c.upstream.iter().enumerate() {
            if !earlier.contains_key(up) {
                return Err(self.invalid(
                    format!("{key}.checks.upstream[{k}]"),
                    format!("`{up}` is not a processor of an earlier phase"),
                ));
            }
        }
        if let Some(g) = &c.historical_gaps {
            let gkey = format!("{key}.checks.historical_gaps");
            check_table(self, &format!("{gkey}.table"), &g.table)?;
            check_ident(self, &format!("{gkey}.date_column"), &g.date_column)?;
            if g.lookback_days == 0 {
                return Err(self.invalid(format!("{gkey}.lookback_days"), "must be at least 1"));
            }
            self.check_reference(&format!("{gkey}.expected"), g.expected.as_deref(), false)?;
        }
        if let Some(e) = &c.entity_completeness {
            let ekey = format!("{key}.checks.entity_completeness");
            self.check_reference(&format!("{ekey}.reference"), Some(&e.reference), true)?;
            check_table(self, &format!("{ekey}.upstream_table"), &e.upstream_table)?;
            check_ident(
                self,
                &format!("{ekey}.upstream_entity_column"),
                &e.upstream_entity_column,
            )?;
            check_ident(
                self,
                &format!("{ekey}.upstream_date_column"),
                &e.upstream_date_column,
            )?;
            if e.lookback == 0 {
                return Err(self.invalid(format!("{ekey}.lookback"), "must be at least 1"));
            }
            self.check_window_days(&ekey, e)?;
            if !(0.0..=100.0).contains(&e.threshold_pct) {
                return Err(self.invalid(
                    format!("{ekey}.threshold_pct"),
                    format!("{} is not a percentage between 0 and 100", e.threshold_pct),
                ));
            }
        }
        Ok(())
    }

    /// `window_days` bounds an `occurrences` window; it can hold `lookback` occurrences only
    /// if it is at least `lookback` days long (an entity appears at most once a day).
    fn check_window_days(&self, ekey: &str, e: &EntityCompleteness) -> Result<(), ConfigError> {
        let key = format!("{ekey}.window_days");
        match (e.window, e.window_days) {
            (WindowKind::Days, Some(_)) => Err(self.invalid(
                key,
                "only an `occurrences` window takes window_days; a `days` window is `lookback` days",
            )),
            (WindowKind::Occurrences, Some(n)) if n < e.lookback => Err(self.invalid(
                key,
                format!(
                    "{n} days cannot hold {} occurrences (at most one a day); use at least \
                     `lookback` days, or window = \"days\"",
                    e.lookback
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_reference(
        &self,
        key: &str,
        name: Option<&str>,
        needs_entity: bool,
    ) -> Result<(), ConfigError> {
        let Some(name) = name else { return Ok(()) };
        match self.references.get(name) {
            None => Err(self.invalid(
                key,
                format!("no reference named `{name}` (declare it under [references.{name}])"),
            )),
            Some(r) if needs_entity && r.entity_column.is_none() => Err(self.invalid(
                key,
                format!("reference `{name}` needs an entity_column for entity completeness"),
            )),
            Some(_) => Ok(()),
        }
    }
}
