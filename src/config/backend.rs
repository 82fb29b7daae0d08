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
