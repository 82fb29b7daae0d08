//! `[backend]`: which warehouse and ledger (SQLite or BigQuery), and where.

use std::path::PathBuf;

use serde::Deserialize;

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

/// Where claims, leases and publication claims live on the Google Cloud backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Coordination {
    /// Firestore (Native mode): per-document atomic writes, leases by Firestore's clock,
    /// thousands of claims per second. The default.
    #[default]
    Firestore,
    /// BigQuery's `processor_run_claims` table (a `MERGE` per claim): no other service to
    /// provision, but BigQuery runs at most 2 mutating statements per table at a time, so
    /// about 2 claims per second for the whole pipeline. For small pipelines and the
    /// BigQuery-only emulator runs.
    Bigquery,
}

impl Coordination {
    pub fn parse(s: &str) -> Option<Coordination> {
        match s {
            "firestore" => Some(Coordination::Firestore),
            "bigquery" => Some(Coordination::Bigquery),
            _ => None,
        }
    }
}

/// SQLite's `synchronous` setting in WAL mode: when a commit reaches the disk
/// (docs/guarantees.md, "SQLite: durability, and its limit").
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every commit (one per group of writes) syncs the write-ahead log before it is
    /// answered: a push answered 200 survives a power loss. Measured at p99 5.4–10.6 ms on
    /// the push benchmark, over the embedded floor of 5 ms, so not the default.
    Full,
    /// The log is synced when it is copied back, not at each commit: a commit survives the
    /// process dying, but a power loss or an OS crash can lose the transactions committed
    /// since the log's last sync. The default.
    #[default]
    Normal,
}

impl Synchronous {
    pub fn parse(s: &str) -> Option<Synchronous> {
        match s {
            "full" => Some(Synchronous::Full),
            "normal" => Some(Synchronous::Normal),
            _ => None,
        }
    }

    /// The value of `PRAGMA synchronous`.
    pub fn as_pragma(&self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
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
    /// SQLite: `normal` (default; a power loss can lose the commits since the log's last
    /// sync) or `full` (a commit is on disk before it is answered). Env
    /// `PHASEGATE_SQLITE_SYNCHRONOUS`.
    #[serde(default)]
    pub sqlite_synchronous: Synchronous,
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
    /// How many days back (from today, UTC) the outbox sweep looks for owed events: on
    /// BigQuery its query reads only those partitions of the date-partitioned ledger instead
    /// of the whole ledger every minute on every instance; on SQLite the same bound. An owed event of an
    /// older date (a backfill whose delivery died after its commit) is published by that
    /// message's redelivery instead. Default 35.
    #[serde(default = "default_owed_events_window_days")]
    pub owed_events_window_days: u32,
    /// BigQuery: labels added to every job (cost attribution in `INFORMATION_SCHEMA.JOBS`),
    /// besides phasegate's own (pipeline, phase, processor, run id).
    #[serde(default)]
    pub job_labels: std::collections::BTreeMap<String, String>,
    /// BigQuery backend: where claims and leases live (`firestore`, the default, or
    /// `bigquery`). Env `PHASEGATE_COORDINATION`.
    #[serde(default)]
    pub coordination: Coordination,
    /// Firestore database id (in `project`) of the coordination store. Terraform creates
    /// a named database, `phasegate`. Env `PHASEGATE_FIRESTORE_DATABASE`.
    #[serde(default = "default_firestore_database")]
    pub firestore_database: String,
    /// `host:port` of a Firestore emulator; unset in production. Env
    /// `FIRESTORE_EMULATOR_HOST`.
    #[serde(default)]
    pub firestore_emulator_host: Option<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Sqlite,
            sqlite_path: default_sqlite_path(),
            sqlite_synchronous: Synchronous::default(),
            project: None,
            dataset: None,
            location: None,
            emulator_host: None,
            maximum_bytes_billed: None,
            owed_events_window_days: default_owed_events_window_days(),
            job_labels: Default::default(),
            coordination: Coordination::default(),
            firestore_database: default_firestore_database(),
            firestore_emulator_host: None,
        }
    }
}

fn default_firestore_database() -> String {
    "phasegate".to_string()
}

impl BackendConfig {
    /// A Firestore database id: 4–63 of `a-z0-9-`, starting with a letter, not ending with
    /// `-`, or `(default)` (https://cloud.google.com/firestore/docs/manage-databases).
    pub(super) fn validate_firestore(&self) -> Result<(), (&'static str, String)> {
        let id = self.firestore_database.as_str();
        let ok = id == "(default)"
            || ((4..=63).contains(&id.len())
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && !id.ends_with('-')
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        if ok {
            Ok(())
        } else {
            Err((
                "backend.firestore_database",
                format!(
                    "`{id}` is not a Firestore database id (4-63 of a-z, 0-9 and -, starting \
                     with a letter; or `(default)`)"
                ),
            ))
        }
    }
}

/// The least bytes BigQuery bills a query that reads a table: 10 MB per table it references
/// (<https://cloud.google.com/bigquery/pricing#on_demand_pricing>). A `maximumBytesBilled`
/// below it refuses every such query ("Query exceeded limit for bytes billed: … 10485760 or
/// higher required").
pub const MIN_MAXIMUM_BYTES_BILLED: u64 = 10 * 1024 * 1024;

/// Why a `maximum_bytes_billed` setting cannot work (`None`: it can).
pub fn maximum_bytes_billed_problem(n: u64) -> Option<String> {
    (n < MIN_MAXIMUM_BYTES_BILLED).then(|| {
        format!(
            "{n} is below {MIN_MAXIMUM_BYTES_BILLED} (10 MB), the least BigQuery bills a query \
             that reads a table: every such job would fail with bytesBilledLimitExceeded"
        )
    })
}

impl BackendConfig {
    /// The key and the problem of a setting that cannot work.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        match self
            .maximum_bytes_billed
            .and_then(maximum_bytes_billed_problem)
        {
            Some(problem) => Err(("backend.maximum_bytes_billed", problem)),
            None => Ok(()),
        }
    }
}

/// Days back the outbox sweep reads owed events, unless configured.
pub const DEFAULT_OWED_EVENTS_WINDOW_DAYS: u32 = 35;

fn default_owed_events_window_days() -> u32 {
    DEFAULT_OWED_EVENTS_WINDOW_DAYS
}

fn default_sqlite_path() -> PathBuf {
    PathBuf::from("phasegate.db")
}
