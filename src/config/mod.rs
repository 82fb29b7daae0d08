//! The pipeline declaration (`pipeline.toml`) and the deployment settings, in one place.
//!
//! [`Config::load`] reads the file, applies environment overrides and validates everything
//! a worker relies on before it takes a single message. Every error names the file, the key
//! and what is wrong, so a bad deploy fails at start-up instead of at 3 a.m.

mod auth;
mod backend;
mod bus;
mod env;
mod names;
mod processor;
mod server;
mod sql;
mod trigger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use names::{check_ident, check_table, check_topic};

pub use auth::{AuthConfig, AuthMode};
pub use backend::{
    BackendConfig, BackendKind, Coordination, DEFAULT_OWED_EVENTS_WINDOW_DAYS, Synchronous,
};
pub use bus::{BusConfig, BusKind};
pub use processor::{
    Checks, DEFAULT_WINDOW_DAYS_PER_OCCURRENCE, EntityCompleteness, HistoricalGaps, Mode, Output,
    Phase, Processor, ProcessorKind, WindowKind,
};
pub use server::{LeasePolicy, ServerConfig};
pub use sql::{DATASET_PLACEHOLDER, SqlByBackend};
pub use trigger::{Freshness, TriggerConfig, parse_local_time, parse_timezone};

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

/// A reference table: which dates (and, with `entity_column`, which entities) to expect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub table: String,
    pub date_column: String,
    #[serde(default)]
    pub entity_column: Option<String>,
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
        if let Err((key, message)) = self.backend.validate() {
            return Err(self.invalid(key, message));
        }
        if let Err((key, message)) = self.server.validate(&self.backend.kind) {
            return Err(self.invalid(key, message));
        }
        if let Err((key, message)) = self.server.check_limits() {
            return Err(self.invalid(key, message));
        }
        if let Err((key, message)) = self.backend.validate_firestore() {
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
        for (i, sql) in self.setup.sqlite.iter().enumerate() {
            if let Some(clause) = crate::sql_lint::rollback_clause(sql) {
                let message = crate::sql_lint::refusal(clause, sql);
                return Err(self.invalid(format!("setup.sqlite[{i}]"), message));
            }
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

    /// The processor of this name, in whichever phase.
    pub fn processor(&self, name: &str) -> Option<&Processor> {
        self.phases
            .iter()
            .flat_map(|phase| &phase.processors)
            .find(|p| p.name == name)
    }

    pub fn reference(&self, name: &str) -> Option<&Reference> {
        self.references.get(name)
    }
}
