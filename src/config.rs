//! The pipeline declaration (`pipeline.toml`) and the deployment settings, in one place.
//!
//! [`Config::load`] reads the file, applies environment overrides and validates everything
//! a worker relies on before it takes a single message. Every error names the file, the key
//! and what is wrong, so a bad deploy fails at start-up instead of at 3 a.m.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;

/// A configuration problem, with the file and key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// The whole configuration: the pipeline plus where it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub pipeline: PipelineMeta,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Named reference tables (e.g. the schedule) that say which dates and entities to expect.
    #[serde(default)]
    pub references: BTreeMap<String, Reference>,
    /// DDL that creates the pipeline's own tables, per backend (`phasegate init` runs it).
    #[serde(default)]
    pub setup: SqlByBackend,
    /// Scheduled triggers: how a trigger without `data_date` gets one from `publishTime`.
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    pub phases: Vec<Phase>,
    /// Where the file was read from (not part of the TOML).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineMeta {
    pub name: String,
}

/// Which warehouse + ledger backend to use.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    #[default]
    Sqlite,
    Bigquery,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Bigquery => "bigquery",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(default)]
    pub kind: BackendKind,
    /// SQLite file (relative paths are relative to the working directory).
    #[serde(default = "default_sqlite_path")]
    pub sqlite_path: PathBuf,
    /// Google Cloud project of the BigQuery dataset.
    #[serde(default)]
    pub project: Option<String>,
    /// BigQuery dataset holding the pipeline tables and `processor_run_history`.
    #[serde(default)]
    pub dataset: Option<String>,
    /// BigQuery location for jobs and the dataset (e.g. `US`).
    #[serde(default)]
    pub location: Option<String>,
    /// `host:port` of a BigQuery emulator; unset in production.
    #[serde(default)]
    pub emulator_host: Option<String>,
    /// BigQuery: `maximumBytesBilled` of every job (a query that would bill more fails
    /// without charge). Env `PHASEGATE_BIGQUERY_MAXIMUM_BYTES_BILLED`.
    #[serde(default)]
    pub maximum_bytes_billed: Option<u64>,
    /// BigQuery: labels added to every job (cost attribution in `INFORMATION_SCHEMA.JOBS`),
    /// besides phasegate's own (pipeline, phase, processor, run id).
    #[serde(default)]
    pub job_labels: std::collections::BTreeMap<String, String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Sqlite,
            sqlite_path: default_sqlite_path(),
            project: None,
            dataset: None,
            location: None,
            emulator_host: None,
            maximum_bytes_billed: None,
            job_labels: Default::default(),
        }
    }
}

fn default_sqlite_path() -> PathBuf {
    PathBuf::from("phasegate.db")
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    #[default]
    InProcess,
    Pubsub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    #[serde(default)]
    pub kind: BusKind,
    /// In-process bus: deliveries per message before it is dead-lettered (as Pub/Sub's
    /// `max_delivery_attempts`).
    #[serde(default = "default_max_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// In-process bus: pause before a nacked message is delivered again.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// In-process bus: deliveries running at once.
    #[serde(default = "default_max_concurrent_deliveries")]
    pub max_concurrent_deliveries: usize,
    /// In-process bus: how long a delivery's claim holds without renewal; a message whose
    /// deliverer died is redelivered after it.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// In-process bus: how often the queue is polled for messages other processes published
    /// or whose lease expired.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Pub/Sub project of the topics.
    #[serde(default)]
    pub project: Option<String>,
    /// `host:port` of the Pub/Sub emulator; unset in production.
    #[serde(default)]
    pub emulator_host: Option<String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::InProcess,
            max_delivery_attempts: default_max_delivery_attempts(),
            retry_backoff_ms: default_retry_backoff_ms(),
            max_concurrent_deliveries: default_max_concurrent_deliveries(),
            lease_secs: default_lease_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            project: None,
            emulator_host: None,
        }
    }
}

fn default_max_delivery_attempts() -> u32 {
    5
}
fn default_retry_backoff_ms() -> u64 {
    100
}
fn default_max_concurrent_deliveries() -> usize {
    8
}
fn default_lease_secs() -> u64 {
    30
}
fn default_poll_interval_ms() -> u64 {
    500
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen port; `$PORT` (Cloud Run's convention) overrides it.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Every push (and CLI run of a phase) finishes within this many seconds — gate,
    /// processors and publication; SQL on SQLite is interrupted at the deadline. Keep it
    /// below the push subscription's ack deadline (Terraform sets both).
    #[serde(default = "default_push_deadline_secs")]
    pub push_deadline_secs: u64,
    /// How long a claim on a run lasts without renewal: a `running` row whose lease ran
    /// out is abandoned (its worker crashed or was cut off) and the next delivery takes it
    /// over. On SQLite the holder renews it every third of the lease (default 15 s); on
    /// BigQuery nothing renews it (each renewal would be a DML job), so it must outlast the
    /// push deadline (default: the deadline + 60 s).
    #[serde(default, alias = "stale_running_secs")]
    pub run_lease_secs: Option<u64>,
    /// Time a client has to send a request's headers; it also closes a kept-alive connection
    /// that sends no next request for this long.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Open connections at most; beyond it new ones wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Pushes handled at once at most; beyond it a push is answered 503 with Retry-After.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Memory for push bodies at once, all requests together, in MiB; a body is charged four
    /// times its size (its decoded copies included), so the default holds three 10 MB bodies.
    #[serde(default = "default_max_buffered_body_mib")]
    pub max_buffered_body_mib: usize,
    /// On SIGTERM: stop accepting, then wait at most this long for connections and pushes
    /// (keep it below Cloud Run's 10 s grace period).
    #[serde(default = "default_shutdown_drain_secs")]
    pub shutdown_drain_secs: u64,
    /// How often `serve` publishes the completion events still owed by runs whose delivery
    /// gave up before publishing (the outbox sweep; it also runs at start-up). A sweep takes
    /// an owed event over only once its holder's lease ran out.
    #[serde(default = "default_outbox_sweep_secs")]
    pub outbox_sweep_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            port: default_port(),
            push_deadline_secs: default_push_deadline_secs(),
            run_lease_secs: None,
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            max_buffered_body_mib: default_max_buffered_body_mib(),
            shutdown_drain_secs: default_shutdown_drain_secs(),
            outbox_sweep_secs: default_outbox_sweep_secs(),
        }
    }
}

/// How a backend keeps claims alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    pub lease: std::time::Duration,
    /// Renew the lease this often while the run is in progress (`None`: never).
    pub renew_every: Option<std::time::Duration>,
}

impl ServerConfig {
    /// The claim lease on `backend` (see `run_lease_secs`).
    pub fn lease_policy(&self, backend: &BackendKind) -> LeasePolicy {
        use std::time::Duration;
        match backend {
            BackendKind::Sqlite => {
                let lease = Duration::from_secs(self.run_lease_secs.unwrap_or(15));
                LeasePolicy {
                    lease,
                    renew_every: Some(lease / 3),
                }
            }
            BackendKind::Bigquery => LeasePolicy {
                lease: Duration::from_secs(
                    self.run_lease_secs
                        .unwrap_or(self.push_deadline_secs.saturating_add(60)),
                ),
                renew_every: None,
            },
        }
    }

    /// Deadline and lease bounds; the error names the key.
    fn validate(&self, backend: &BackendKind) -> Result<(), (&'static str, String)> {
        if !(1..=3600).contains(&self.push_deadline_secs) {
            return Err((
                "server.push_deadline_secs",
                "must be between 1 and 3600 (Pub/Sub's ack deadline is at most 600)".into(),
            ));
        }
        let lease = self.lease_policy(backend).lease.as_secs();
        if lease < 3 {
            return Err(("server.run_lease_secs", "must be at least 3 seconds".into()));
        }
        if *backend == BackendKind::Bigquery && lease <= self.push_deadline_secs {
            return Err((
                "server.run_lease_secs",
                format!(
                    "on BigQuery claims are not renewed, so the lease ({lease} s) must outlast \
                     server.push_deadline_secs ({} s): otherwise a run still in progress could \
                     be taken over",
                    self.push_deadline_secs
                ),
            ));
        }
        Ok(())
    }

    /// The HTTP limits' sanity: `(key, message)` of the first that is off.
    pub fn check_limits(&self) -> Result<(), (&'static str, &'static str)> {
        if !(100..=300_000).contains(&self.header_timeout_ms) {
            return Err(("server.header_timeout_ms", "must be between 100 and 300000"));
        }
        if !(100..=600_000).contains(&self.body_timeout_ms) {
            return Err(("server.body_timeout_ms", "must be between 100 and 600000"));
        }
        if self.max_in_flight == 0 {
            return Err(("server.max_in_flight", "must be at least 1"));
        }
        if self.max_connections < self.max_in_flight {
            return Err((
                "server.max_connections",
                "must be at least server.max_in_flight",
            ));
        }
        if self.max_buffered_body_mib < 40 {
            return Err((
                "server.max_buffered_body_mib",
                "must be at least 40 (one 10 MiB push body is charged four times its size)",
            ));
        }
        if !(1..=3600).contains(&self.shutdown_drain_secs) {
            return Err(("server.shutdown_drain_secs", "must be between 1 and 3600"));
        }
        if !(1..=86_400).contains(&self.outbox_sweep_secs) {
            return Err(("server.outbox_sweep_secs", "must be between 1 and 86400"));
        }
        Ok(())
    }
}

fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    80
}
fn default_max_buffered_body_mib() -> usize {
    128
}
fn default_shutdown_drain_secs() -> u64 {
    8
}
fn default_outbox_sweep_secs() -> u64 {
    60
}

fn default_port() -> u16 {
    8080
}
fn default_push_deadline_secs() -> u64 {
    240
}

/// How pushes are authenticated. On by default: turning it off takes an explicit
/// `auth.mode = "disabled"` (or `PHASEGATE_AUTH_MODE=disabled`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: only for the embedded default and local emulators.
    Disabled,
    /// Verify the OIDC bearer token Pub/Sub attaches to every push.
    #[default]
    Oidc,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Expected `aud` claim (the push subscription's audience).
    #[serde(default)]
    pub audience: Option<String>,
    /// Service-account emails allowed to push.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// JWKS URL; defaults to Google's OAuth2 certificates.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

/// A reference table: which dates (and, with `entity_column`, which entities) to expect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub table: String,
    pub date_column: String,
    #[serde(default)]
    pub entity_column: Option<String>,
}

/// In configured SQL, `{dataset}` stands for the backend's dataset: `main` on SQLite,
/// `` `project`.dataset `` on BigQuery.
pub const DATASET_PLACEHOLDER: &str = "{dataset}";

/// SQL text per backend dialect.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlByBackend {
    #[serde(default)]
    pub sqlite: Vec<String>,
    #[serde(default)]
    pub bigquery: Vec<String>,
}

impl SqlByBackend {
    pub fn for_backend(&self, kind: &BackendKind) -> &[String] {
        match kind {
            BackendKind::Sqlite => &self.sqlite,
            BackendKind::Bigquery => &self.bigquery,
        }
    }

    /// The first BigQuery statement that begins, commits or rolls back a transaction. A
    /// processor's statements run inside the script that commits them with the run's ledger
    /// row, so a `COMMIT TRANSACTION` among them would commit half a run. (SQLite refuses
    /// transaction control wherever it appears, when the statement is compiled.)
    fn bigquery_transaction_control(&self) -> Option<(usize, &str)> {
        self.bigquery
            .iter()
            .enumerate()
            .find(|(_, sql)| controls_transaction(&bigquery_words(sql)))
            .map(|(i, sql)| (i, sql.as_str()))
    }
}

/// Whether BigQuery words (see [`bigquery_words`]) contain transaction control anywhere:
/// `COMMIT`, `ROLLBACK`, or `BEGIN` that starts a transaction (`BEGIN TRANSACTION`, or
/// `BEGIN` ending its statement) rather than a block (`BEGIN <statements> END`).
fn controls_transaction(words: &[&str]) -> bool {
    words.iter().enumerate().any(|(k, word)| {
        let is = |w: &str, keyword: &str| w.eq_ignore_ascii_case(keyword);
        is(word, "COMMIT")
            || is(word, "ROLLBACK")
            || (is(word, "BEGIN")
                && words
                    .get(k + 1)
                    .is_none_or(|next| *next == ";" || is(next, "TRANSACTION")))
    })
}

/// The words of a BigQuery statement, with `;` as a word of its own, outside string
/// literals, quoted identifiers (`` `commit` ``) and comments (`--`, `#`, `/* */`); a word
/// right after a `.` (a path: `t.commit`) is left out.
fn bigquery_words(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    let (mut i, mut after_dot) = (0, false);
    while i < b.len() {
        let c = b[i];
        let start = i;
        i = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => line_end(b, i),
            b'#' => line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2),
            b'\'' | b'"' | b'`' => quoted_end(b, i),
            b';' => {
                words.push(";");
                i + 1
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                    .map_or(b.len(), |n| i + n);
                if !after_dot {
                    words.push(&sql[start..end]);
                }
                end
            }
            _ => i + 1,
        };
        after_dot = c == b'.';
    }
    words
}

/// Where the comment starting at `i` ends (at its line's end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(b.len(), |n| i + n)
}

/// The index of `needle` in `b` at or after `from`.
fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|n| from + n)
}

/// Where the quoted text starting at `i` ends: a string (`'…'`, `"…"`, their triple-quoted
/// forms, backslash escapes) or a quoted identifier (`` `…` ``).
fn quoted_end(b: &[u8], i: usize) -> usize {
    let q = b[i];
    if q != b'`' && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
        return find(b, i + 3, &[q, q, q]).map_or(b.len(), |e| e + 3);
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == q => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

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

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
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

    fn validate(&self, config: &Config, key: &str) -> Result<(), ConfigError> {
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

impl Config {
    /// Read, override from the environment, and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text (no environment, no validation).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.source = path.to_path_buf();
        Ok(config)
    }

    /// Environment overrides: deployment settings that differ per environment.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PHASEGATE_BACKEND") {
            self.backend.kind = match v.as_str() {
                "sqlite" => BackendKind::Sqlite,
                "bigquery" => BackendKind::Bigquery,
                other => {
                    return Err(ConfigError::Env {
                        var: "PHASEGATE_BACKEND".into(),
                        message: format!("`{other}` is not a backend; use sqlite or bigquery"),
                    });
                }
            };
        }
        if let Some(v) = get("PHASEGATE_SQLITE_PATH") {
            self.backend.sqlite_path = PathBuf::from(v);
        }
        if let Some(v) = get("PHASEGATE_BIGQUERY_PROJECT").or_else(|| get("GOOGLE_CLOUD_PROJECT")) {
            self.backend.project = Some(v);
        }
        if let Some(v) = get("PHASEGATE_BIGQUERY_DATASET") {
            self.backend.dataset = Some(v);
        }
        if let Some(v) = get("BIGQUERY_EMULATOR_HOST") {
            self.backend.emulator_host = Some(v);
        }
        if let Some(v) = get("PHASEGATE_BIGQUERY_LOCATION") {
            self.backend.location = Some(v);
        }
        if let Some(v) = get("PHASEGATE_BIGQUERY_MAXIMUM_BYTES_BILLED") {
            self.backend.maximum_bytes_billed = Some(v.parse().map_err(|_| ConfigError::Env {
                var: "PHASEGATE_BIGQUERY_MAXIMUM_BYTES_BILLED".into(),
                message: format!("`{v}` is not a number of bytes"),
            })?);
        }
        if let Some(v) = get("PHASEGATE_BUS") {
            self.bus.kind = match v.as_str() {
                "in_process" => BusKind::InProcess,
                "pubsub" => BusKind::Pubsub,
                other => {
                    return Err(ConfigError::Env {
                        var: "PHASEGATE_BUS".into(),
                        message: format!("`{other}` is not a bus; use in_process or pubsub"),
                    });
                }
            };
        }
        if let Some(v) = get("PHASEGATE_PUBSUB_PROJECT").or_else(|| get("GOOGLE_CLOUD_PROJECT")) {
            self.bus.project = Some(v);
        }
        if let Some(v) = get("PUBSUB_EMULATOR_HOST") {
            self.bus.emulator_host = Some(v);
        }
        if let Some(v) = get("PORT") {
            self.server.port = v.parse().map_err(|_| ConfigError::Env {
                var: "PORT".into(),
                message: format!("`{v}` is not a port number"),
            })?;
        }
        if let Some(v) = get("PHASEGATE_AUTH_MODE") {
            self.auth.mode = match v.as_str() {
                "disabled" => AuthMode::Disabled,
                "oidc" => AuthMode::Oidc,
                other => {
                    return Err(ConfigError::Env {
                        var: "PHASEGATE_AUTH_MODE".into(),
                        message: format!("`{other}` is not an auth mode; use oidc or disabled"),
                    });
                }
            };
        }
        if let Some(v) = get("PHASEGATE_AUTH_AUDIENCE") {
            self.auth.audience = Some(v);
        }
        if let Some(v) = get("PHASEGATE_AUTH_ALLOWED_EMAILS") {
            self.auth.allowed_emails = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("PHASEGATE_AUTH_JWKS_URL") {
            self.auth.jwks_url = Some(v);
        }
        Ok(())
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Check everything a worker relies on.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.phases.is_empty() {
            return Err(self.invalid("phases", "a pipeline needs at least one phase"));
        }
        check_ident(self, "pipeline.name", &self.pipeline.name)?;
        for (name, r) in &self.references {
            let key = format!("references.{name}");
            check_ident(self, &key, name)?;
            check_table(self, &format!("{key}.table"), &r.table)?;
            check_ident(self, &format!("{key}.date_column"), &r.date_column)?;
            if let Some(e) = &r.entity_column {
                check_ident(self, &format!("{key}.entity_column"), e)?;
            }
        }
        if let Err((key, message)) = self.server.validate(&self.backend.kind) {
            return Err(self.invalid(key, message));
        }
        if let Err((key, message)) = self.server.check_limits() {
            return Err(self.invalid(key, message));
        }
        if self.bus.max_delivery_attempts == 0 {
            return Err(self.invalid("bus.max_delivery_attempts", "must be at least 1"));
        }
        if self.bus.max_concurrent_deliveries == 0 {
            return Err(self.invalid("bus.max_concurrent_deliveries", "must be at least 1"));
        }
        if self.bus.lease_secs == 0 {
            return Err(self.invalid("bus.lease_secs", "must be at least 1"));
        }
        if self.bus.poll_interval_ms == 0 {
            return Err(self.invalid("bus.poll_interval_ms", "must be at least 1"));
        }
        if let Some(t) = &self.trigger {
            t.validate(self)?;
        }
        let mut seen_phases = std::collections::HashSet::new();
        let mut seen_processors = std::collections::HashMap::new();
        let mut previous_completion: Option<String> = None;
        for i in 0..self.phases.len() {
            let phase = self.phases[i].clone();
            let key = format!("phases[{i}]");
            check_ident(self, &format!("{key}.name"), &phase.name)?;
            if !seen_phases.insert(phase.name.clone()) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!("phase `{}` is declared twice", phase.name),
                ));
            }
            check_topic(
                self,
                &format!("{key}.completion_topic"),
                &phase.completion_topic,
            )?;
            match (&phase.input_topic, &previous_completion) {
                (None, None) => {
                    return Err(self.invalid(
                        format!("{key}.input_topic"),
                        "the first phase needs an input_topic (its trigger topic)",
                    ));
                }
                (Some(t), None) => check_topic(self, &format!("{key}.input_topic"), t)?,
                (Some(t), Some(prev)) if t != prev => {
                    return Err(self.invalid(
                        format!("{key}.input_topic"),
                        format!(
                            "`{t}` is not the previous phase's completion topic `{prev}`; \
                             a phase listens to the phase before it"
                        ),
                    ));
                }
                (_, Some(prev)) => self.phases[i].input_topic = Some(prev.clone()),
            }
            previous_completion = Some(phase.completion_topic.clone());
            if let Some(f) = &phase.freshness {
                f.validate(self, &format!("{key}.freshness"))?;
            }
            if phase.processors.is_empty() {
                return Err(self.invalid(
                    format!("{key}.processors"),
                    "a phase needs at least one processor",
                ));
            }
            for (j, p) in phase.processors.iter().enumerate() {
                let pkey = format!("{key}.processors[{j}]");
                self.validate_processor(&pkey, p, &seen_processors)?;
                seen_processors.insert(p.name.clone(), phase.name.clone());
                if let Some(o) = &mut self.phases[i].processors[j].output {
                    o.require_rows = o.requires_rows();
                }
            }
        }
        Ok(())
    }

    fn validate_processor(
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
                if let Some((i, sql)) = p.sql.bigquery_transaction_control() {
                    return Err(self.invalid(
                        format!("{key}.sql.bigquery[{i}]"),
                        format!(
                            "`{sql}` controls the transaction: phasegate commits a processor's \
                             statements with its ledger row in one transaction, so they may not \
                             begin, commit or roll back one (quote a column named like those \
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

    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The phase names in order, for error messages.
    pub fn phase_names(&self) -> String {
        self.phases
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The phase (if any) that listens to the given topic.
    pub fn phase_for_topic(&self, topic: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.input() == topic)
    }

    /// The phase before this one, if any.
    pub fn previous_phase(&self, name: &str) -> Option<&Phase> {
        let i = self.phases.iter().position(|p| p.name == name)?;
        i.checked_sub(1).map(|j| &self.phases[j])
    }

    pub fn reference(&self, name: &str) -> Option<&Reference> {
        self.references.get(name)
    }
}

/// Identifiers are spliced into SQL as names (values never are), so they must be plain.
fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_ident(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    if is_ident(value) {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!("`{value}` is not a plain identifier (letters, digits, _; not starting with a digit)"),
        ))
    }
}

/// A table may be qualified (`dataset.table`, `project.dataset.table`).
fn check_table(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = value.split('.').collect();
    let ok = parts.len() <= 3
        && parts
            .iter()
            .enumerate()
            .all(|(i, p)| is_ident(p) || (i == 0 && parts.len() == 3 && is_project_id(p)));
    if ok {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!(
                "`{value}` is not a table name ([[project.]dataset.]table of plain identifiers)"
            ),
        ))
    }
}

fn is_project_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Pub/Sub topic ids: start with a letter, 3–255 of letters, digits, `-_.~+%`.
fn check_topic(config: &Config, key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value.len() >= 3
        && value.len() <= 255
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !value.to_ascii_lowercase().starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(config.invalid(
            key,
            format!(
                "`{value}` is not a valid Pub/Sub topic id (3-255 characters, starting with a \
                 letter, of letters, digits and - _ . ~ + %)"
            ),
        ))
    }
}

#[cfg(test)]
mod server_limit_tests {
    use super::ServerConfig;

    #[test]
    fn server_limits_are_checked() {
        assert_eq!(ServerConfig::default().check_limits(), Ok(()));
        let bad = [
            ServerConfig {
                header_timeout_ms: 0,
                ..Default::default()
            },
            ServerConfig {
                body_timeout_ms: 10_000_000,
                ..Default::default()
            },
            ServerConfig {
                max_in_flight: 0,
                ..Default::default()
            },
            ServerConfig {
                max_connections: 10,
                max_in_flight: 20,
                ..Default::default()
            },
            ServerConfig {
                max_buffered_body_mib: 39,
                ..Default::default()
            },
            ServerConfig {
                shutdown_drain_secs: 0,
                ..Default::default()
            },
            ServerConfig {
                outbox_sweep_secs: 0,
                ..Default::default()
            },
        ];
        for c in bad {
            let (key, _) = c.check_limits().unwrap_err();
            assert!(key.starts_with("server."), "{key}");
        }
    }
}
