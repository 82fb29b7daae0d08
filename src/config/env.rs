//! Environment overrides: the deployment settings that differ per environment (backend,
//! bus, port, push authentication), read after the file and before validation.

use std::path::PathBuf;

use super::{AuthMode, BackendKind, BusKind, Config, ConfigError, Coordination, Synchronous};

impl Config {
    /// The overrides `get` sets, as `(name, value)` in the order they are read: what a
    /// printed command must carry to act on the same configuration (a backfill's retry).
    pub fn env_overrides(&self, get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let set = std::cell::RefCell::new(Vec::new());
        let _ = self.clone().apply_env(|name| {
            let value = get(name);
            if let Some(v) = &value {
                set.borrow_mut().push((name.to_string(), v.clone()));
            }
            value
        });
        set.into_inner()
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
        if let Some(v) = get("PHASEGATE_SQLITE_SYNCHRONOUS") {
            self.backend.sqlite_synchronous =
                Synchronous::parse(&v).ok_or_else(|| ConfigError::Env {
                    var: "PHASEGATE_SQLITE_SYNCHRONOUS".into(),
                    message: format!("`{v}` is not a synchronous setting; use full or normal"),
                })?;
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
        if let Some(v) = get("PHASEGATE_COORDINATION") {
            self.backend.coordination =
                Coordination::parse(&v).ok_or_else(|| ConfigError::Env {
                    var: "PHASEGATE_COORDINATION".into(),
                    message: format!(
                        "`{v}` is not a coordination store; use firestore or bigquery"
                    ),
                })?;
        }
        if let Some(v) = get("PHASEGATE_FIRESTORE_DATABASE") {
            self.backend.firestore_database = v;
        }
        if let Some(v) = get("FIRESTORE_EMULATOR_HOST") {
            self.backend.firestore_emulator_host = Some(v);
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
            self.auth.allowed_emails = email_list(&v);
        }
        if let Some(v) = get("PHASEGATE_AUTH_RELAY_EMAILS") {
            self.auth.relay_emails = email_list(&v);
        }
        if let Some(v) = get("PHASEGATE_AUTH_JWKS_URL") {
            self.auth.jwks_url = Some(v);
        }
        Ok(())
    }
}

/// A comma-separated list of emails, blanks dropped.
fn email_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
