//! The production warehouse and ledger: BigQuery, through `gcp-bigquery-client`.
//!
//! Every value reaches BigQuery as a named query parameter; table and column names come from
//! the validated configuration. Unqualified table names resolve in the configured dataset.
//!
//! The ledger is **append-only**: every state change of a run (running → success, the
//! publication of its event) is a new row written with a DML `INSERT`, and the row with the
//! latest `recorded_at` for a `run_id` is its state. Nothing is ever updated, so the
//! streaming-buffer restriction on changing recent rows cannot bite, and the history of
//! every attempt stays queryable. (Streaming `insertAll` is not used: rows in its buffer
//! cannot be touched by DML for a while, and bqemulator does not accept it for tables made
//! by DDL.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::table_row::TableRow;

use crate::config::BackendConfig;
use crate::ledger::{LedgerError, RunRecord};
use crate::warehouse::WarehouseError;
use ledger::record_from_row;

/// The ledger table's columns and BigQuery types — the schema Terraform creates too
/// (`terraform/` is checked against this list in the test suite).
pub const LEDGER_SCHEMA: &[(&str, &str, &str)] = &[
    ("run_id", "STRING", "REQUIRED"),
    ("processor_name", "STRING", "REQUIRED"),
    ("phase", "STRING", "REQUIRED"),
    ("data_date", "DATE", "REQUIRED"),
    ("status", "STRING", "REQUIRED"),
    ("started_at", "TIMESTAMP", "REQUIRED"),
    ("finished_at", "TIMESTAMP", "NULLABLE"),
    ("rows_affected", "INT64", "NULLABLE"),
    ("errors", "STRING", "NULLABLE"),
    ("findings", "STRING", "NULLABLE"),
    ("production_ready", "BOOL", "REQUIRED"),
    ("trigger_source", "STRING", "REQUIRED"),
    ("message_id", "STRING", "NULLABLE"),
    ("skip_downstream_trigger", "BOOL", "REQUIRED"),
    ("published_at", "TIMESTAMP", "NULLABLE"),
    ("recorded_at", "TIMESTAMP", "REQUIRED"),
    ("pipeline", "STRING", "REQUIRED"),
    ("delivery_attempt", "INT64", "NULLABLE"),
    ("upstream_runs", "STRING", "NULLABLE"),
    ("lease_until", "TIMESTAMP", "NULLABLE"),
];

/// The claims table: one row per pipeline, processor and date naming the run that holds
/// it — the serialisation point of claims on BigQuery (a `MERGE` compare-and-set).
pub const CLAIMS_SCHEMA: &[(&str, &str, &str)] = &[
    ("pipeline", "STRING", "REQUIRED"),
    ("processor_name", "STRING", "REQUIRED"),
    ("data_date", "DATE", "REQUIRED"),
    ("run_id", "STRING", "REQUIRED"),
    ("lease_until", "TIMESTAMP", "NULLABLE"),
    ("claimed_at", "TIMESTAMP", "REQUIRED"),
    ("publisher", "STRING", "NULLABLE"),
    ("publish_until", "TIMESTAMP", "NULLABLE"),
];

const CLAIMS_TABLE: &str = "processor_run_claims";

const LEDGER_TABLE: &str = "processor_run_history";

/// The emulator ignores tokens; production uses Application Default Credentials instead.
#[derive(Clone)]
struct EmulatorToken;

#[async_trait]
impl Authenticator for EmulatorToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator".to_string())
    }
}

#[derive(Clone)]
pub struct BigQuery {
    client: Arc<Client>,
    project: String,
    dataset: String,
    location: Option<String>,
    /// The pipeline whose runs the ledger reads and writes.
    pipeline: Arc<str>,
    /// Jobs started through this handle (every statement is a billed job).
    jobs: Arc<std::sync::atomic::AtomicU64>,
    /// Attempts retried after a transient error or a conflict.
    retries: Arc<std::sync::atomic::AtomicU64>,
    /// Labels on every job (`backend.job_labels`), besides phasegate's own.
    job_labels: Arc<HashMap<String, String>>,
    /// `maximumBytesBilled` of every job (`backend.maximum_bytes_billed`).
    maximum_bytes_billed: Option<u64>,
    /// Per processor, `maximumBytesBilled` of its run job instead ([`jobs`]).
    processor_bytes_billed: Arc<HashMap<String, u64>>,
    /// Days back the outbox sweep reads the ledger (`backend.owed_events_window_days`).
    owed_events_window_days: u32,
    /// One run script at a time per output table in this process ([`warehouse`]).
    turns: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Per run id whose script job is (or may still be) running: the lock its release waits
    /// for ([`jobs`]).
    run_jobs: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Claims and leases live in another store (Firestore): scripts do not check the claims
    /// table, and the ledger only records ([`BigQuery::append_claim`]).
    claims_elsewhere: bool,
    /// The type of each date column filtered on (`table.column` → kind), read once.
    date_kinds: Arc<std::sync::Mutex<HashMap<String, warehouse::DateKind>>>,
}

/// A named, typed query parameter (`None` binds NULL).
fn param(name: &str, kind: &str, value: Option<String>) -> QueryParameter {
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(QueryParameterType {
            array_type: None,
            struct_types: None,
            r#type: kind.to_string(),
        }),
        parameter_value: Some(QueryParameterValue {
            array_values: None,
            struct_values: None,
            value,
        }),
    }
}

/// An `ARRAY<STRING>` parameter (for `IN UNNEST(@name)`).
fn array_param(name: &str, values: &[String]) -> QueryParameter {
    QueryParameter {
        name: Some(name.to_string()),
        parameter_type: Some(QueryParameterType {
            array_type: Some(Box::new(QueryParameterType {
                array_type: None,
                struct_types: None,
                r#type: "STRING".to_string(),
            })),
            struct_types: None,
            r#type: "ARRAY".to_string(),
        }),
        parameter_value: Some(QueryParameterValue {
            array_values: Some(
                values
                    .iter()
                    .map(|v| QueryParameterValue {
                        array_values: None,
                        struct_values: None,
                        value: Some(v.clone()),
                    })
                    .collect(),
            ),
            struct_values: None,
            value: None,
        }),
    }
}

fn date_param(name: &str, d: NaiveDate) -> QueryParameter {
    param(name, "DATE", Some(d.to_string()))
}

fn ts_param(name: &str, t: Option<&DateTime<Utc>>) -> QueryParameter {
    param(
        name,
        "TIMESTAMP",
        t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)),
    )
}

type Row = Vec<Option<String>>;

fn cells(row: TableRow) -> Row {
    row.columns
        .unwrap_or_default()
        .into_iter()
        .map(|c| match c.value {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
        .collect()
}

/// BigQuery returns TIMESTAMP as epoch seconds (`1.7E9`) or, with int64 timestamps and in
/// bqemulator, epoch microseconds; accept RFC 3339 too.
fn parse_bq_ts(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(n) = s.parse::<i64>() {
        // Microseconds since the epoch unless it is small enough to be seconds.
        let micros = if n.abs() < 100_000_000_000 {
            n * 1_000_000
        } else {
            n
        };
        return DateTime::from_timestamp_micros(micros).ok_or_else(|| format!("bad timestamp {s}"));
    }
    let secs: f64 = s.parse().map_err(|_| format!("bad timestamp {s}"))?;
    DateTime::from_timestamp_micros((secs * 1e6).round() as i64)
        .ok_or_else(|| format!("bad timestamp {s}"))
}

fn parse_bool(s: Option<&String>) -> bool {
    s.is_some_and(|v| v == "true")
}

impl BigQuery {
    /// Connect: to the emulator when `emulator_host` is set, else with Application Default
    /// Credentials.
    pub async fn connect(cfg: &BackendConfig) -> Result<BigQuery, String> {
        let project = cfg
            .project
            .clone()
            .ok_or("backend.project (or PHASEGATE_BIGQUERY_PROJECT / GOOGLE_CLOUD_PROJECT) is required for BigQuery")?;
        let dataset = cfg
            .dataset
            .clone()
            .ok_or("backend.dataset (or PHASEGATE_BIGQUERY_DATASET) is required for BigQuery")?;
        // Idle connections are dropped before servers close them (uvicorn after 5 s, Google
        // front ends later), so a request never lands on a connection being closed.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let client = match &cfg.emulator_host {
            Some(host) => ClientBuilder::new()
                .with_client(http)
                .with_v2_base_url(format!("http://{host}/bigquery/v2"))
                .build_from_authenticator(Arc::new(EmulatorToken))
                .await
                .map_err(|e| format!("BigQuery emulator at {host}: {e}"))?,
            None => ClientBuilder::new()
                .with_client(http)
                .build_from_application_default_credentials()
                .await
                .map_err(|e| format!("BigQuery with Application Default Credentials: {e}"))?,
        };
        Ok(BigQuery {
            client: Arc::new(client),
            project,
            dataset,
            location: cfg.location.clone(),
            pipeline: Arc::from(""),
            jobs: Arc::default(),
            retries: Arc::default(),
            job_labels: Arc::new(
                cfg.job_labels
                    .iter()
                    .map(|(k, v)| (jobs::label_value(k), jobs::label_value(v)))
                    .collect(),
            ),
            maximum_bytes_billed: cfg.maximum_bytes_billed,
            processor_bytes_billed: Arc::default(),
            owed_events_window_days: cfg.owed_events_window_days,
            turns: Arc::default(),
            run_jobs: Arc::default(),
            claims_elsewhere: false,
            date_kinds: Arc::default(),
        })
    }

    /// Scope the ledger to `pipeline` (every ledger row and query carries it).
    pub fn for_pipeline(mut self, pipeline: &str) -> BigQuery {
        self.pipeline = Arc::from(pipeline);
        self
    }

    /// Leave claims and leases to another store (the coordination store, Firestore): the
    /// ledger only records what that store decided.
    pub fn with_claims_elsewhere(mut self) -> BigQuery {
        self.claims_elsewhere = true;
        self
    }

    /// How many BigQuery jobs this handle (and its clones) started.
    pub fn jobs_started(&self) -> u64 {
        self.jobs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every row of a configured table, each as its cells, sorted (tests and tooling compare
    /// outputs with it).
    pub async fn rows_sorted(&self, table: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut rows = self
            .query(&format!("SELECT * FROM {}", self.table(table)), Vec::new())
            .await?;
        rows.sort();
        Ok(rows)
    }

    /// How many attempts were retried (transient errors, conflicts).
    pub fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `` `project`.dataset `` — what `{dataset}` in configured SQL expands to.
    fn dataset_path(&self) -> String {
        format!("`{}`.{}", self.project, self.dataset)
    }

    /// A configured table name as SQL, always fully qualified (`` `project`.dataset.table ``):
    /// not every BigQuery implementation honours the request's default dataset.
    fn table(&self, name: &str) -> String {
        match name.split('.').collect::<Vec<_>>().as_slice() {
            [t] => format!("{}.{t}", self.dataset_path()),
            [d, t] => format!("`{}`.{d}.{t}", self.project),
            [p, d, t] => format!("`{p}`.{d}.{t}"),
            _ => name.to_string(),
        }
    }

    fn expand(&self, sql: &str) -> String {
        sql.replace(crate::config::DATASET_PLACEHOLDER, &self.dataset_path())
    }

    /// Run one statement (labelled with the pipeline); returns its rows (all pages).
    /// Transient errors and conflicts are retried ([`jobs`]).
    async fn query(&self, sql: &str, params: Vec<QueryParameter>) -> Result<Vec<Row>, String> {
        self.query_job(sql, params, self.labels(&[]), None)
            .await
            .map_err(String::from)
    }

    /// Create the dataset if it is missing.
    pub async fn ensure_dataset(&self) -> Result<(), String> {
        if self
            .client
            .dataset()
            .get(&self.project, &self.dataset)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut ds = Dataset::new(&self.project, &self.dataset);
        if let Some(loc) = &self.location {
            ds = ds.location(loc);
        }
        match self.client.dataset().create(ds).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("lready") => Ok(()),
            Err(e) => Err(format!(
                "creating dataset {}.{}: {e}",
                self.project, self.dataset
            )),
        }
    }

    /// Run DDL and other parameterless statements (setup).
    pub async fn execute(&self, sql: &str) -> Result<(), WarehouseError> {
        self.query(&self.expand(sql), Vec::new())
            .await
            .map(|_| ())
            .map_err(WarehouseError)
    }

    fn ledger_columns() -> String {
        LEDGER_SCHEMA
            .iter()
            .filter(|(c, _, _)| *c != "recorded_at")
            .map(|(c, _, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Latest state of each run matching `filter`, newest run first.
    async fn runs(
        &self,
        filter: &str,
        params: Vec<QueryParameter>,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let cols = Self::ledger_columns();
        let sql = format!(
            "SELECT {cols} FROM (
               SELECT *, ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS state_rank
               FROM {t} WHERE {filter})
             WHERE state_rank = 1
             ORDER BY data_date, started_at DESC, recorded_at DESC",
            t = self.table(LEDGER_TABLE)
        );
        let rows = self.query(&sql, params).await.map_err(LedgerError)?;
        rows.into_iter().map(record_from_row).collect()
    }
}

mod jobs;
mod ledger;
mod script;
mod warehouse;

pub use jobs::JobError;
