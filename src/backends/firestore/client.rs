//! Firestore (Native mode) over its REST API: batched reads with the server's read time, and
//! atomic commits guarded by preconditions.
//!
//! Google's Rust clients have no Firestore data-plane crate (only `firestore-admin-v1`), and
//! the gRPC clients on crates.io bring a second transport stack; the REST API needs two
//! calls (`batchGet`, `commit`), made with the `reqwest` client and the `google-cloud-auth`
//! credentials the build already has. Retries: transient statuses (`UNAVAILABLE`,
//! `INTERNAL`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`) with backoff
//! (https://cloud.google.com/firestore/docs/understand-error-codes). A retried commit whose
//! first attempt applied fails its precondition: callers re-read on
//! [`FirestoreError::Precondition`] to learn whether the write was theirs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// `https://firestore.googleapis.com/auth/datastore`: the scope of the Firestore API.
const SCOPE: &str = "https://www.googleapis.com/auth/datastore";

#[derive(Debug, thiserror::Error)]
pub enum FirestoreError {
    /// A write's precondition failed (the document changed since it was read, or exists).
    #[error("firestore: the document changed since it was read ({0})")]
    Precondition(String),
    #[error("firestore: {0}")]
    Other(String),
}

/// A document as read: its fields and the update time that guards a write of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub fields: Map<String, Value>,
    pub update_time: String,
}

impl Doc {
    pub fn string(&self, field: &str) -> Option<&str> {
        self.fields.get(field)?.get("stringValue")?.as_str()
    }

    pub fn int(&self, field: &str) -> Option<i64> {
        self.fields
            .get(field)?
            .get("integerValue")?
            .as_str()?
            .parse()
            .ok()
    }

    pub fn boolean(&self, field: &str) -> bool {
        self.fields
            .get(field)
            .and_then(|v| v.get("booleanValue"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn timestamp(&self, field: &str) -> Option<DateTime<Utc>> {
        let s = self.fields.get(field)?.get("timestampValue")?.as_str()?;
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Documents read together, and the server's time of the read (the store's clock).
#[derive(Debug)]
pub struct Snapshot {
    pub docs: HashMap<String, Doc>,
    pub read_time: DateTime<Utc>,
}

/// Field values for a write.
pub fn string(s: &str) -> Value {
    json!({ "stringValue": s })
}

pub fn int(n: i64) -> Value {
    json!({ "integerValue": n.to_string() })
}

pub fn boolean(b: bool) -> Value {
    json!({ "booleanValue": b })
}

pub fn timestamp(t: DateTime<Utc>) -> Value {
    json!({ "timestampValue": t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true) })
}

/// One write of a commit: merge `fields` into the document `name` (fields named in
/// `server_time` are set to the commit's time by the server), under a precondition.
#[derive(Debug, Clone)]
pub struct Write {
    pub name: String,
    pub fields: Map<String, Value>,
    pub server_time: Vec<&'static str>,
    pub expect: Expect,
}

/// The precondition of a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The document must not exist.
    Absent,
    /// The document must still be at this update time.
    At(String),
    /// Unconditional (tools that set a run's state outright).
    Anything,
}

impl Write {
    fn to_json(&self) -> Value {
        let mask: Vec<&str> = self.fields.keys().map(String::as_str).collect();
        let transforms: Vec<Value> = self
            .server_time
            .iter()
            .map(|f| json!({ "fieldPath": f, "setToServerValue": "REQUEST_TIME" }))
            .collect();
        let mut write = json!({
            "update": { "name": self.name, "fields": self.fields },
            "updateMask": { "fieldPaths": mask },
            "updateTransforms": transforms,
        });
        match &self.expect {
            Expect::Absent => write["currentDocument"] = json!({ "exists": false }),
            Expect::At(t) => write["currentDocument"] = json!({ "updateTime": t }),
            Expect::Anything => {}
        }
        write
    }
}

/// A Firestore database: its REST endpoint and credentials.
#[derive(Clone)]
pub struct Firestore {
    http: reqwest::Client,
    /// `…/v1/projects/P/databases/D/documents`
    base: String,
    /// `projects/P/databases/D/documents`: the prefix of every document name.
    root: String,
    auth: Option<google_cloud_auth::credentials::AccessTokenCredentials>,
    /// Requests sent (each is a round trip).
    calls: Arc<AtomicU64>,
}

impl Firestore {
    /// Connect to `database` of `project`: the emulator at `emulator_host` when set (it
    /// takes any token), else Firestore with Application Default Credentials.
    pub fn connect(
        project: &str,
        database: &str,
        emulator_host: Option<&str>,
    ) -> Result<Firestore, String> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let (origin, auth) = match emulator_host {
            Some(host) => (format!("http://{host}"), None),
            None => (
                "https://firestore.googleapis.com".to_string(),
                Some(
                    google_cloud_auth::credentials::Builder::default()
                        .with_scopes([SCOPE])
                        .build_access_token_credentials()
                        .map_err(|e| {
                            format!("Firestore with Application Default Credentials: {e}")
                        })?,
                ),
            ),
        };
        let root = format!("projects/{project}/databases/{database}/documents");
        Ok(Firestore {
            http,
            base: format!("{origin}/v1/{root}"),
            root,
            auth,
            calls: Arc::default(),
        })
    }

    /// The full name of the document at `path` (`collection/id/…`).
    pub fn doc_name(&self, path: &str) -> String {
        format!("{}/{path}", self.root)
    }

    /// Round trips made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Read `names` (full document names) in one round trip; missing ones are absent.
    pub async fn get(&self, names: &[String]) -> Result<Snapshot, FirestoreError> {
        let body = json!({ "documents": names });
        let answer = self.call("batchGet", &body).await?;
        let items = answer
            .as_array()
            .ok_or_else(|| FirestoreError::Other(format!("batchGet answered {answer}")))?;
        let mut docs = HashMap::new();
        let mut read_time = None;
        for item in items {
            if let Some(t) = item.get("readTime").and_then(Value::as_str) {
                read_time = DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
            }
            let Some(found) = item.get("found") else {
                continue;
            };
            let name = found.get("name").and_then(Value::as_str);
            let update = found.get("updateTime").and_then(Value::as_str);
            if let (Some(name), Some(update)) = (name, update) {
                let fields = found
                    .get("fields")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                docs.insert(
                    name.to_string(),
                    Doc {
                        fields,
                        update_time: update.to_string(),
                    },
                );
            }
        }
        let read_time = read_time
            .ok_or_else(|| FirestoreError::Other("batchGet answered no readTime".into()))?;
        Ok(Snapshot { docs, read_time })
    }

    /// Apply `writes` atomically (all or none). Returns each document's new update time, in
    /// the order of `writes`.
    pub async fn commit(&self, writes: &[Write]) -> Result<Vec<String>, FirestoreError> {
        let body = json!({ "writes": writes.iter().map(Write::to_json).collect::<Vec<_>>() });
        let answer = self.call("commit", &body).await?;
        Ok(answer
            .get("writeResults")
            .and_then(Value::as_array)
            .map(|results| {
                results
                    .iter()
                    .map(|r| {
                        r.get("updateTime")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// POST `…/documents:{method}`, retrying transient failures with backoff; timed into
    /// `phasegate_store_call_duration_seconds{store="firestore"}` (the coordination time).
    async fn call(&self, method: &'static str, body: &Value) -> Result<Value, FirestoreError> {
        let _t = crate::metrics::StoreTimer::start("firestore", method);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(6);
        (|| self.call_once(method, body))
            .retry(backoff)
            .when(|e| matches!(e, Attempt::Transient(_)))
            .notify(
                |e, _| tracing::debug!(method, error = ?e, "firestore: transient error, retrying"),
            )
            .await
            .map_err(|e| match e {
                Attempt::Transient(message) => FirestoreError::Other(message),
                Attempt::Final(e) => e,
            })
    }

    async fn call_once(&self, method: &str, body: &Value) -> Result<Value, Attempt> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut req = self.http.post(format!("{}:{method}", self.base)).json(body);
        req = match &self.auth {
            Some(auth) => {
                let token = auth
                    .access_token()
                    .await
                    .map_err(|e| Attempt::Transient(format!("access token: {e}")))?;
                req.bearer_auth(token.token)
            }
            // The emulator admits any caller with this token (no security rules apply).
            None => req.bearer_auth("owner"),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Transient(format!("{method}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Attempt::Transient(format!("{method}: reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .map_err(|e| Attempt::Final(FirestoreError::Other(format!("{method}: {e}"))));
        }
        Err(classify(status, &text, method))
    }
}

#[derive(Debug)]
enum Attempt {
    Transient(String),
    Final(FirestoreError),
}

/// What an error answer means: a failed precondition, a transient error, or a final one.
fn classify(status: u16, body: &str, method: &str) -> Attempt {
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/status")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let message = format!("{method}: HTTP {status} {code}: {}", body.trim());
    match code.as_str() {
        "FAILED_PRECONDITION" | "ALREADY_EXISTS" | "NOT_FOUND" if method == "commit" => {
            Attempt::Final(FirestoreError::Precondition(message))
        }
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "RESOURCE_EXHAUSTED" | "ABORTED" => {
            Attempt::Transient(message)
        }
        _ if matches!(status, 429 | 500 | 502 | 503 | 504) => Attempt::Transient(message),
        _ => Attempt::Final(FirestoreError::Other(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_preconditions_are_told_apart_from_transient_and_final_errors() {
        let body = |s: &str| format!(r#"{{"error":{{"code":0,"status":"{s}"}}}}"#);
        for code in ["FAILED_PRECONDITION", "ALREADY_EXISTS", "NOT_FOUND"] {
            assert!(matches!(
                classify(400, &body(code), "commit"),
                Attempt::Final(FirestoreError::Precondition(_))
            ));
        }
        for code in ["UNAVAILABLE", "ABORTED", "RESOURCE_EXHAUSTED"] {
            assert!(matches!(
                classify(409, &body(code), "commit"),
                Attempt::Transient(_)
            ));
        }
        assert!(matches!(
            classify(503, "", "batchGet"),
            Attempt::Transient(_)
        ));
        assert!(matches!(
            classify(403, &body("PERMISSION_DENIED"), "commit"),
            Attempt::Final(FirestoreError::Other(_))
        ));
    }

    #[test]
    fn a_write_merges_its_fields_under_its_precondition() {
        let mut fields = Map::new();
        fields.insert("holder".into(), string("r1"));
        let w = Write {
            name: "projects/p/databases/d/documents/c/x".into(),
            fields,
            server_time: vec!["renewed_at"],
            expect: Expect::At("2026-01-01T00:00:00Z".into()),
        };
        let j = w.to_json();
        assert_eq!(j["updateMask"]["fieldPaths"], json!(["holder"]));
        assert_eq!(
            j["currentDocument"]["updateTime"],
            json!("2026-01-01T00:00:00Z")
        );
        assert_eq!(j["updateTransforms"][0]["fieldPath"], json!("renewed_at"));
        let create = Write {
            expect: Expect::Absent,
            ..w.clone()
        };
        assert_eq!(create.to_json()["currentDocument"]["exists"], json!(false));
        let any = Write {
            expect: Expect::Anything,
            ..w
        };
        assert!(any.to_json().get("currentDocument").is_none());
    }
}
