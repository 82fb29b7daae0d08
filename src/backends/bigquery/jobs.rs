//! BigQuery jobs: one statement or script as a job, its errors classified, what BigQuery says
//! to retry retried with backoff (idempotently), and jobs bounded and cancelled when their
//! caller gives up.
//!
//! Two ways to start a job:
//! - `jobs.query` (reads, ledger writes, claims): one round trip for a short job; the
//!   `requestId` makes a retried request idempotent (a request BigQuery already ran returns
//!   that job's result). A job still running after the wait is polled with
//!   `getQueryResults` (with the location) and cancelled if the caller drops the call.
//! - `jobs.insert` with a job id chosen here (a processor's run script): the job can be
//!   bounded (`jobTimeoutMs`, which `jobs.query` does not take) and cancelled by id even
//!   while the insert itself is in flight; an insert retried after its answer was lost finds
//!   the job (409 duplicate) and polls it instead of running it twice.
//!
//! Classification (BigQuery's error table, <https://cloud.google.com/bigquery/docs/error-messages>;
//! the official clients' default retry): HTTP 500/502/503/504 and the reasons
//! `backendError`, `internalError`, `rateLimitExceeded`, `jobRateLimitExceeded` are transient:
//! the same request again. A job that lost to a concurrent one ("Could not serialize access
//! to table … due to concurrent update", "Transaction is aborted due to concurrent update",
//! "Too many DML statements outstanding") did nothing: a new job. Anything else is the
//! statement's own error and is not retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use gcp_bigquery_client::Client;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::job_configuration::JobConfiguration;
use gcp_bigquery_client::model::job_configuration_query::JobConfigurationQuery;
use gcp_bigquery_client::model::job_reference::JobReference;
use gcp_bigquery_client::model::job_status::JobStatus;
use gcp_bigquery_client::model::query_request::QueryRequest;

use super::{BigQuery, Row, cells};

/// Reasons BigQuery documents as transient (retry with backoff).
const TRANSIENT_REASONS: &[&str] = &[
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "jobRateLimitExceeded",
    "jobBackendError",
    "jobInternalError",
];

/// Messages of a job that lost to a concurrent one (it changed nothing).
const CONFLICT_MESSAGES: &[&str] = &[
    "due to concurrent update",
    "Too many DML statements outstanding",
];

/// Without a deadline (setup, CLI reads, a release spawned on drop), retries stop after this.
const DEFAULT_BUDGET: Duration = Duration::from_secs(30);
/// Kept back from a deadline: time to record the outcome and answer the push.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);
/// How long one `jobs.query` / `getQueryResults` call waits for the job.
const WAIT_MS: i32 = 10_000;

/// What to do about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Transient: send the same request again (same request id or job id).
    SameRequest,
    /// The job failed without effect (lost to a concurrent job, or failed transiently):
    /// start a new job.
    NewJob,
    /// The statement's own error.
    No,
    /// BigQuery stopped the job at its `jobTimeoutMs` (reason `timeout`), which is the push
    /// deadline: the caller's deadline is what failed, not the statement.
    TimedOut,
}

/// Classify an error by its HTTP status (if any), reason and message.
pub(super) fn classify(status: Option<i64>, reason: Option<&str>, message: &str) -> Retry {
    if reason == Some("timeout") {
        return Retry::TimedOut;
    }
    if CONFLICT_MESSAGES.iter().any(|m| message.contains(m)) {
        return Retry::NewJob;
    }
    // The reason decides when there is one: getQueryResults turns a failed job into an HTTP
    // error, so a job refused for its own sake (`bytesBilledLimitExceeded`, `invalidQuery`)
    // can arrive as a 5xx and must not be retried until the deadline. The status decides only
    // without a reason (a proxy's or load balancer's answer).
    // https://cloud.google.com/bigquery/docs/error-messages
    let transient = match reason {
        Some(r) => TRANSIENT_REASONS.contains(&r),
        None => matches!(status, Some(500 | 502 | 503 | 504)),
    };
    if transient {
        Retry::SameRequest
    } else {
        Retry::No
    }
}

/// A failed request: HTTP errors and the network.
fn classify_request(e: &BQError) -> Retry {
    match e {
        BQError::RequestError(r) => {
            // Connection refused or reset, timeouts, a body that is not BigQuery's JSON (a
            // proxy's 502 page): the request may or may not have arrived. Its id makes
            // sending it again safe.
            if r.is_connect() || r.is_request() || r.is_timeout() || r.is_decode() || r.is_body() {
                Retry::SameRequest
            } else {
                Retry::No
            }
        }
        BQError::ResponseError { error } => {
            let reason = error.error.errors.first().and_then(|e| e.get("reason"));
            classify(
                Some(error.error.code),
                reason.map(String::as_str),
                &error.error.message,
            )
        }
        _ => Retry::No,
    }
}

/// A job that ended with errors: a transient failure of a finished job needs a new job.
fn classify_job(errors: &[ErrorProto]) -> Retry {
    let worst = errors
        .iter()
        .map(|e| {
            classify(
                None,
                e.reason.as_deref(),
                e.message.as_deref().unwrap_or_default(),
            )
        })
        .fold(Retry::NewJob, |acc, r| match (acc, r) {
            (_, Retry::TimedOut) | (Retry::TimedOut, _) => Retry::TimedOut,
            (_, Retry::No) | (Retry::No, _) => Retry::No,
            _ => Retry::NewJob,
        });
    if errors.is_empty() { Retry::No } else { worst }
}

/// The errors of a job that failed: its status has an `errorResult`. `errors` without one
/// are warnings of a job that succeeded: "Errors here do not necessarily mean that the job
/// has completed or was unsuccessful" (JobStatus, QueryResponse and GetQueryResultsResponse
/// in <https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobStatus>).
fn failure(status: JobStatus) -> Option<Vec<ErrorProto>> {
    let result = status.error_result?;
    Some(
        status
            .errors
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec![result]),
    )
}

fn messages(errors: &[ErrorProto]) -> String {
    errors
        .iter()
        .map(|e| e.message.clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a job call ended when it did not return rows.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient errors or conflicts until the retry budget (the push deadline) ran out:
    /// nothing is known to be wrong with the statement, and nothing of it committed.
    #[error("BigQuery unavailable (retried {attempts} times until the deadline): {message}")]
    Exhausted { attempts: u32, message: String },
    /// The statement's own error (syntax, a raised `ERROR()`, a missing table, a timeout).
    #[error("{0}")]
    Failed(String),
}

impl From<JobError> for String {
    fn from(e: JobError) -> String {
        e.to_string()
    }
}

/// One attempt's failure: what to do, and what BigQuery said.
type Attempt = Result<Vec<Row>, (Retry, String)>;

/// Cancels a job when dropped while armed (the caller gave up: deadline, dropped request).
struct CancelOnDrop {
    client: Arc<Client>,
    project: String,
    location: Option<String>,
    job_id: Option<String>,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.job_id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(job_id) = self.job_id.take() else {
            return;
        };
        let (client, project, location) = (
            Arc::clone(&self.client),
            self.project.clone(),
            self.location.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/cancel
                match client
                    .job()
                    .cancel_job(&project, &job_id, location.as_deref())
                    .await
                {
                    Ok(_) => tracing::warn!(job_id, "BigQuery job cancelled: its caller gave up"),
                    Err(e) => tracing::warn!(job_id, error = %e, "could not cancel a BigQuery job"),
                }
            });
        }
    }
}

/// How long a release waits for its run's job to end, and how long a job given up on is
/// watched after its cancel (its `jobTimeoutMs` ends it by the push deadline anyway).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Owns a run script's job while its caller waits for it: dropped while armed (the caller
/// gave up, or the retry budget ran out), it cancels the job and holds the run's settle
/// lock until BigQuery reports the job done, so the run's release is written only then.
struct RunJob {
    client: Arc<Client>,
    project: String,
    location: Option<String>,
    /// The job id of the current attempt (`None`: disarmed).
    job_id: Option<Arc<std::sync::Mutex<String>>>,
    settle: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RunJob {
    fn disarm(&mut self) {
        self.job_id = None;
    }
}

impl Drop for RunJob {
    fn drop(&mut self) {
        let Some(current) = self.job_id.take() else {
            return;
        };
        let job_id = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let settle = self.settle.take();
        let (client, project, location) = (
            Arc::clone(&self.client),
            self.project.clone(),
            self.location.clone(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            // https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/cancel : "This
            // call will return immediately, and the client will need to poll for the job
            // status to see if the cancel completed successfully."
            match client
                .job()
                .cancel_job(&project, &job_id, location.as_deref())
                .await
            {
                Ok(answer) => {
                    tracing::warn!(job_id, "BigQuery job cancelled: its caller gave up");
                    let state = answer.job.and_then(|j| j.status).and_then(|s| s.state);
                    if state.as_deref() == Some("DONE") {
                        drop(settle);
                        return;
                    }
                }
                Err(e) => tracing::warn!(job_id, error = %e, "could not cancel a BigQuery job"),
            }
            let end = Instant::now() + SETTLE_WAIT;
            let mut delay = Duration::from_millis(50);
            while Instant::now() < end {
                match client
                    .job()
                    .get_job(&project, &job_id, location.as_deref())
                    .await
                {
                    Ok(job)
                        if job.status.as_ref().and_then(|s| s.state.as_deref()) == Some("DONE") =>
                    {
                        break;
                    }
                    // Never created (the insert did not arrive): nothing can commit.
                    Err(BQError::ResponseError { error }) if error.error.code == 404 => break,
                    _ => {}
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            drop(settle);
        });
    }
}

/// Labels as BigQuery accepts them: lowercase letters, digits, `_` and `-`, ≤ 63 characters
/// (<https://cloud.google.com/bigquery/docs/labels-intro#requirements>).
pub(super) fn label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

impl BigQuery {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(4))
            .with_jitter()
            .with_max_times(12)
            .build()
    }

    /// Set each processor's `maximumBytesBilled` (`processors[].maximum_bytes_billed`): its
    /// run job's limit instead of the backend-wide one.
    pub fn with_processor_bytes_billed(
        mut self,
        limits: impl IntoIterator<Item = (String, u64)>,
    ) -> BigQuery {
        self.processor_bytes_billed = Arc::new(limits.into_iter().collect());
        self
    }

    /// The `maximumBytesBilled` of `processor`'s run job: its own, else the backend's.
    pub(super) fn run_bytes_billed(&self, processor: &str) -> Option<u64> {
        self.processor_bytes_billed
            .get(processor)
            .copied()
            .or(self.maximum_bytes_billed)
    }

    /// The labels of every job: the pipeline, the configured ones, then `extra`.
    pub(super) fn labels(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self.job_labels.as_ref().clone();
        if !self.pipeline.is_empty() {
            labels.insert("phasegate_pipeline".into(), label_value(&self.pipeline));
        }
        for (k, v) in extra {
            labels.insert(format!("phasegate_{k}"), label_value(v));
        }
        labels
    }

    /// Run a job with `attempt` until it returns rows, fails on its own, or the budget (the
    /// deadline less a margin) runs out.
    async fn with_retries<F, Fut>(
        &self,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> Result<Vec<Row>, JobError>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Attempt>,
    {
        let end = deadline
            .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d))
            .unwrap_or_else(|| Instant::now() + DEFAULT_BUDGET);
        let mut delays = self.backoff();
        let mut attempts = 0;
        let mut new_job = false;
        loop {
            attempts += 1;
            match attempt(new_job).await {
                Ok(rows) => return Ok(rows),
                Err((Retry::No, message)) => return Err(JobError::Failed(message)),
                Err((Retry::TimedOut, message)) => {
                    // The job's timeout is what remained of the push deadline: BigQuery
                    // stopped it (the same end as the caller's deadline cancelling it, which
                    // may come a moment later). Say so in the run's failure.
                    return Err(JobError::Failed(format!(
                        "interrupted at the push deadline: BigQuery stopped the job at its \
                         jobTimeoutMs ({message})"
                    )));
                }
                Err((retry, message)) => {
                    let delay = delays.next();
                    let Some(delay) = delay.filter(|d| Instant::now() + *d < end) else {
                        return Err(JobError::Exhausted { attempts, message });
                    };
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(attempt = attempts, ?retry, error = %message,
                        delay_ms = delay.as_millis() as u64, "BigQuery: retrying");
                    new_job = retry == Retry::NewJob;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A statement through `jobs.query`, retried; `labels` name what it is for.
    pub(super) async fn query_job(
        &self,
        sql: &str,
        params: Vec<gcp_bigquery_client::model::query_parameter::QueryParameter>,
        labels: HashMap<String, String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Row>, JobError> {
        let mut req = QueryRequest::new(sql);
        req.use_legacy_sql = false;
        req.parameter_mode = Some("NAMED".to_string());
        req.query_parameters = (!params.is_empty()).then_some(params);
        req.location = self.location.clone();
        req.timeout_ms = Some(WAIT_MS);
        req.labels = (!labels.is_empty()).then_some(labels);
        req.maximum_bytes_billed = self.maximum_bytes_billed.map(|n| n.to_string());
        req.default_dataset = Some(
            gcp_bigquery_client::model::dataset_reference::DatasetReference {
                dataset_id: self.dataset.clone(),
                project_id: self.project.clone(),
            },
        );
        let jobs = self.jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::debug!(jobs_started = jobs, "bigquery job");
        let request_id = std::sync::Mutex::new(uuid::Uuid::new_v4().to_string());
        self.with_retries(deadline, |new_job| {
            let mut req = req.clone();
            let id = {
                let mut id = request_id.lock().unwrap_or_else(|p| p.into_inner());
                if new_job {
                    *id = uuid::Uuid::new_v4().to_string();
                }
                id.clone()
            };
            req.request_id = Some(id);
            async move { self.query_once(req).await }
        })
        .await
    }

    async fn query_once(&self, req: QueryRequest) -> Attempt {
        let resp = self
            .client
            .job()
            .query(&self.project, req)
            .await
            .map_err(|e| (classify_request(&e), e.to_string()))?;
        let complete = resp.job_complete.unwrap_or(true);
        let job_id = resp.job_reference.and_then(|j| j.job_id);
        if let Some(errors) = resp.errors.filter(|e| !e.is_empty() && complete) {
            self.confirm_failure(job_id.as_deref(), errors).await?;
        }
        let rows: Vec<Row> = resp
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(cells)
            .collect();
        if complete && resp.page_token.is_none() {
            return Ok(rows);
        }
        let Some(job_id) = job_id else {
            return Ok(rows);
        };
        let mut guard = self.cancel_guard((!complete).then(|| job_id.clone()));
        let (rows, page_token) = if complete {
            (rows, resp.page_token)
        } else {
            (Vec::new(), None)
        };
        let out = self.poll(&job_id, rows, page_token, complete).await;
        guard.disarm();
        out
    }

    /// A finished job answered 2xx with `errors`: they are warnings unless the job's status
    /// has an `errorResult` (a failed job is normally answered with an HTTP error instead), so
    /// ask for the status (with the location). Without a job id to ask about, the errors
    /// stand.
    async fn confirm_failure(
        &self,
        job_id: Option<&str>,
        errors: Vec<ErrorProto>,
    ) -> Result<(), (Retry, String)> {
        let Some(job_id) = job_id else {
            return Err((classify_job(&errors), messages(&errors)));
        };
        let job = self
            .client
            .job()
            .get_job(&self.project, job_id, self.location.as_deref())
            .await
            .map_err(|e| (classify_request(&e), e.to_string()))?;
        match failure(job.status.unwrap_or_default()) {
            Some(errors) => Err((classify_job(&errors), messages(&errors))),
            None => {
                tracing::warn!(job_id, warnings = %messages(&errors),
                    "BigQuery job succeeded with warnings");
                Ok(())
            }
        }
    }

    fn cancel_guard(&self, job_id: Option<String>) -> CancelOnDrop {
        CancelOnDrop {
            client: Arc::clone(&self.client),
            project: self.project.clone(),
            location: self.location.clone(),
            job_id,
        }
    }

    /// Wait for a job with `getQueryResults` (with its location) and page through its rows.
    async fn poll(
        &self,
        job_id: &str,
        mut rows: Vec<Row>,
        mut page_token: Option<String>,
        mut complete: bool,
    ) -> Attempt {
        let mut delays = self.backoff();
        while !complete || page_token.is_some() {
            let page = self
                .client
                .job()
                .get_query_results(
                    &self.project,
                    job_id,
                    GetQueryResultsParameters {
                        format_options: None,
                        location: self.location.clone(),
                        max_results: None,
                        page_token: page_token.clone(),
                        start_index: None,
                        timeout_ms: Some(WAIT_MS),
                    },
                )
                .await;
            let page = match page {
                Ok(page) => page,
                Err(e) => match classify_request(&e) {
                    // A look-up is read-only: ask again (the job goes on meanwhile).
                    Retry::SameRequest => match delays.next() {
                        Some(d) => {
                            tokio::time::sleep(d).await;
                            continue;
                        }
                        None => return Err((Retry::SameRequest, e.to_string())),
                    },
                    // The job itself failed (BigQuery answers a failed job's look-up with
                    // its error).
                    retry @ (Retry::NewJob | Retry::No | Retry::TimedOut) => {
                        return Err((retry, e.to_string()));
                    }
                },
            };
            complete = page.job_complete.unwrap_or(true);
            if let Some(errors) = page.errors.filter(|e| !e.is_empty() && complete) {
                self.confirm_failure(Some(job_id), errors).await?;
            }
            if complete {
                rows.extend(page.rows.unwrap_or_default().into_iter().map(cells));
                page_token = page.page_token;
            }
        }
        Ok(rows)
    }

    /// The lock a run's release waits on while the run's script job may still commit.
    pub(super) fn run_job_lock(&self, run_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut jobs = self.run_jobs.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(jobs.entry(run_id.to_string()).or_default())
    }

    /// Forget the run's lock once its job is known to have ended.
    pub(super) fn forget_run_job(&self, run_id: &str) {
        self.run_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
    }

    /// Wait (bounded) until no script job of run `run_id` can still commit.
    pub(super) async fn settle_run_job(&self, run_id: &str) {
        let lock = self
            .run_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned();
        let Some(lock) = lock else { return };
        if tokio::time::timeout(SETTLE_WAIT, lock.lock())
            .await
            .is_err()
        {
            tracing::warn!(
                run_id,
                "the run's BigQuery job did not report done; releasing anyway"
            );
        }
        self.forget_run_job(run_id);
    }

    /// A script through `jobs.insert` with its own job id: bounded by `jobTimeoutMs` (what
    /// remains of `deadline`), cancelled if the caller drops it (or the budget runs out),
    /// retried as a new job when it lost to a concurrent one. `settle` is held until the
    /// job is known to have ended (see [`RunJob`]).
    pub(super) async fn insert_job(
        &self,
        sql: &str,
        labels: HashMap<String, String>,
        maximum_bytes_billed: Option<u64>,
        deadline: Instant,
        settle: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<Vec<Row>, JobError> {
        let jobs = self.jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::debug!(jobs_started = jobs, "bigquery job (insert)");
        let job_id = Arc::new(std::sync::Mutex::new(format!(
            "phasegate_{}",
            uuid::Uuid::new_v4().simple()
        )));
        // Armed before the first insert is sent: a caller that gives up while it is in
        // flight still cancels the job. A refused insert does not cancel the id its retry
        // reuses; a job an ambiguous attempt started is the one cancelled on drop.
        let mut guard = RunJob {
            client: Arc::clone(&self.client),
            project: self.project.clone(),
            location: self.location.clone(),
            job_id: Some(Arc::clone(&job_id)),
            settle,
        };
        let out = self
            .with_retries(Some(deadline), |new_job| {
                let id = {
                    let mut id = job_id.lock().unwrap_or_else(|p| p.into_inner());
                    if new_job {
                        *id = format!("phasegate_{}", uuid::Uuid::new_v4().simple());
                    }
                    id.clone()
                };
                let labels = labels.clone();
                async move {
                    self.insert_once(sql, &id, labels, maximum_bytes_billed, deadline)
                        .await
                }
            })
            .await;
        // Done, or failed on its own: the job has ended. Exhausted: the last attempt's job
        // may still be running (an ambiguous insert); the guard cancels and settles it.
        if !matches!(out, Err(JobError::Exhausted { .. })) {
            guard.disarm();
        }
        out
    }

    async fn insert_once(
        &self,
        sql: &str,
        job_id: &str,
        labels: HashMap<String, String>,
        maximum_bytes_billed: Option<u64>,
        deadline: Instant,
    ) -> Attempt {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((Retry::SameRequest, "the push deadline passed".into()));
        }
        // https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfiguration
        // jobTimeoutMs: BigQuery stops the job (best effort) once this has passed.
        let timeout_ms = left.as_millis().max(1000).to_string();
        let job = Job {
            job_reference: Some(JobReference {
                job_id: Some(job_id.to_string()),
                location: self.location.clone(),
                project_id: Some(self.project.clone()),
            }),
            configuration: Some(JobConfiguration {
                job_timeout_ms: Some(timeout_ms),
                labels: (!labels.is_empty()).then_some(labels),
                query: Some(JobConfigurationQuery {
                    query: sql.to_string(),
                    use_legacy_sql: Some(false),
                    // https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfigurationQuery
                    // maximumBytesBilled: "Queries that will have bytes billed beyond this
                    // limit will fail (without incurring a charge)."
                    maximum_bytes_billed: maximum_bytes_billed.map(|n| n.to_string()),
                    default_dataset: Some(
                        gcp_bigquery_client::model::dataset_reference::DatasetReference {
                            dataset_id: self.dataset.clone(),
                            project_id: self.project.clone(),
                        },
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.client.job().insert(&self.project, job).await {
            Ok(job) => {
                if let Some(errors) = failure(job.status.unwrap_or_default()) {
                    return Err((classify_job(&errors), messages(&errors)));
                }
            }
            // The job exists: an earlier attempt's insert arrived, its answer did not.
            Err(BQError::ResponseError { error }) if error.error.code == 409 => {}
            Err(e) => return Err((classify_request(&e), e.to_string())),
        }
        self.poll(job_id, Vec::new(), None, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_decides_over_the_status() {
        // A failed job's error arrives through getQueryResults as an HTTP error, 5xx included.
        assert_eq!(
            classify(
                Some(500),
                Some("bytesBilledLimitExceeded"),
                "Query exceeded limit"
            ),
            Retry::No
        );
        assert_eq!(
            classify(Some(500), Some("backendError"), "x"),
            Retry::SameRequest
        );
        assert_eq!(
            classify(Some(503), None, "Service Unavailable"),
            Retry::SameRequest
        );
        assert_eq!(classify(Some(400), None, "x"), Retry::No);
    }

    #[test]
    fn a_job_stopped_at_its_timeout_is_the_deadline_not_the_statement() {
        assert_eq!(
            classify(Some(400), Some("timeout"), "Job timed out after 3.6s"),
            Retry::TimedOut
        );
        let e = |reason: &str| ErrorProto {
            reason: Some(reason.into()),
            message: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(classify_job(&[e("timeout")]), Retry::TimedOut);
    }

    #[test]
    fn transient_errors_repeat_the_request_and_conflicts_start_a_new_job() {
        assert_eq!(
            classify(Some(503), Some("backendError"), "x"),
            Retry::SameRequest
        );
        assert_eq!(classify(Some(500), None, "x"), Retry::SameRequest);
        assert_eq!(
            classify(Some(403), Some("rateLimitExceeded"), "x"),
            Retry::SameRequest
        );
        assert_eq!(
            classify(Some(403), Some("jobRateLimitExceeded"), "x"),
            Retry::SameRequest
        );
        assert_eq!(
            classify(
                Some(400),
                Some("invalidQuery"),
                "Could not serialize access to table p.d.t due to concurrent update"
            ),
            Retry::NewJob
        );
        assert_eq!(
            classify(
                Some(400),
                Some("invalidQuery"),
                "Transaction is aborted due to concurrent update against table p.d.t."
            ),
            Retry::NewJob
        );
        assert_eq!(classify(Some(403), Some("accessDenied"), "x"), Retry::No);
        assert_eq!(
            classify(Some(400), Some("invalidQuery"), "Syntax error"),
            Retry::No
        );
    }

    #[test]
    fn a_finished_job_that_failed_transiently_is_run_again_as_a_new_job() {
        let e = |reason: &str, message: &str| ErrorProto {
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        };
        assert_eq!(classify_job(&[e("backendError", "x")]), Retry::NewJob);
        assert_eq!(
            classify_job(&[e("backendError", "x"), e("invalidQuery", "Syntax error")]),
            Retry::No
        );
        assert_eq!(classify_job(&[]), Retry::No);
    }

    #[test]
    fn a_job_with_errors_but_no_error_result_succeeded() {
        let e = |reason: &str| ErrorProto {
            reason: Some(reason.into()),
            message: Some(format!("{reason} message")),
            ..Default::default()
        };
        let warned = JobStatus {
            error_result: None,
            errors: Some(vec![e("invalid")]),
            state: Some("DONE".into()),
        };
        assert!(failure(warned).is_none(), "warnings are not a failure");
        let failed = JobStatus {
            error_result: Some(e("invalidQuery")),
            errors: Some(vec![e("invalidQuery"), e("backendError")]),
            state: Some("DONE".into()),
        };
        let errors = failure(failed).expect("a failed job");
        assert_eq!(
            messages(&errors),
            "invalidQuery message; backendError message"
        );
        // errorResult alone is the failure.
        let bare = JobStatus {
            error_result: Some(e("bytesBilledLimitExceeded")),
            errors: None,
            state: Some("DONE".into()),
        };
        let errors = failure(bare).expect("a failed job");
        assert_eq!(classify_job(&errors), Retry::No);
    }

    #[tokio::test]
    async fn a_processors_bytes_limit_replaces_the_backend_wide_one_for_its_run_job() {
        let cfg = |limit: Option<u64>| crate::config::BackendConfig {
            kind: crate::config::BackendKind::Bigquery,
            project: Some("p".into()),
            dataset: Some("d".into()),
            // Nothing listens there; no request is sent.
            emulator_host: Some("127.0.0.1:9".into()),
            maximum_bytes_billed: limit,
            ..Default::default()
        };
        let limits = [("summary".to_string(), 20 << 20)];
        let bq = BigQuery::connect(&cfg(Some(1 << 30)))
            .await
            .expect("offline")
            .with_processor_bytes_billed(limits.clone());
        assert_eq!(bq.run_bytes_billed("summary"), Some(20 << 20));
        assert_eq!(bq.run_bytes_billed("ingest"), Some(1 << 30));
        let bq = BigQuery::connect(&cfg(None))
            .await
            .expect("offline")
            .with_processor_bytes_billed(limits);
        assert_eq!(bq.run_bytes_billed("summary"), Some(20 << 20));
        assert_eq!(bq.run_bytes_billed("ingest"), None);
    }

    #[test]
    fn label_values_are_what_bigquery_accepts() {
        assert_eq!(label_value("NBA Pipeline/2024"), "nba_pipeline_2024");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }
}
