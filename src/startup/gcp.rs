//! The Google Cloud backends, BigQuery and Pub/Sub, as [`super::build_with`] builds them: the
//! one place that knows whether this binary has them.
//!
//! They are behind the `gcp` cargo feature, on by default (CI, the Docker image and Cloud Run
//! build with it). `--no-default-features` leaves their clients out, a much shorter first
//! build for the embedded demo; there `BigQuery` is a type with no values, and a
//! configuration that chooses BigQuery or Pub/Sub stops at startup with
//! [`StartupError::NoGcp`].

#[cfg(feature = "gcp")]
pub use with_gcp::*;

/// The ledger and the warehouse a backend gives the worker.
pub type Stores = (
    std::sync::Arc<dyn crate::ledger::Ledger>,
    std::sync::Arc<dyn crate::warehouse::Warehouse>,
);
#[cfg(not(feature = "gcp"))]
pub use without_gcp::*;

#[cfg(feature = "gcp")]
mod with_gcp {
    use std::sync::Arc;

    use super::Stores;
    pub use crate::backends::bigquery::BigQuery;
    use crate::backends::firestore::{Coordinated, Firestore};
    use crate::backends::pubsub::{PubSubAdmin, PubSubBus};
    use crate::bus::Publisher;
    use crate::config::{Config, Coordination};
    use crate::startup::StartupError;

    /// Every backend is built in.
    pub fn require(_config: &Config) -> Result<(), StartupError> {
        Ok(())
    }

    pub async fn connect_bigquery(config: &Config) -> Result<BigQuery, StartupError> {
        let processor_limits = config
            .phases
            .iter()
            .flat_map(|phase| &phase.processors)
            .filter_map(|p| Some((p.name.clone(), p.maximum_bytes_billed?)));
        Ok(BigQuery::connect(&config.backend)
            .await
            .map_err(StartupError::Backend)?
            .for_pipeline(&config.pipeline.name)
            .with_processor_bytes_billed(processor_limits))
    }

    /// BigQuery is the warehouse and the ledger of record; claims and leases live in
    /// Firestore unless `backend.coordination = "bigquery"`.
    pub fn ledger_and_warehouse(config: &Config, bq: &BigQuery) -> Result<Stores, StartupError> {
        let backend = &config.backend;
        match backend.coordination {
            Coordination::Bigquery => Ok((Arc::new(bq.clone()), Arc::new(bq.clone()))),
            Coordination::Firestore => {
                // The warehouse's run scripts no longer check the claims table either.
                let bq = bq.clone().with_claims_elsewhere();
                let project = backend.project.as_deref().ok_or_else(|| {
                    StartupError::Backend("backend.project is required for Firestore".into())
                })?;
                let store = Firestore::connect(
                    project,
                    &backend.firestore_database,
                    backend.firestore_emulator_host.as_deref(),
                )
                .map_err(StartupError::Backend)?;
                let scope = format!(
                    "{}.{}",
                    backend.dataset.as_deref().unwrap_or_default(),
                    config.pipeline.name
                );
                let ledger = Coordinated::new(store, bq.clone(), &scope);
                Ok((Arc::new(ledger), Arc::new(bq)))
            }
        }
    }

    /// Run the pipeline's `setup` statements, one job each.
    pub async fn run_setup(bq: &BigQuery, setup: &[String]) -> Result<(), StartupError> {
        for sql in setup {
            bq.execute(sql)
                .await
                .map_err(|e| StartupError::Backend(e.to_string()))?;
        }
        Ok(())
    }

    pub async fn connect_pubsub(config: &Config) -> Result<Arc<dyn Publisher>, StartupError> {
        Ok(Arc::new(
            PubSubBus::connect(&config.bus)
                .await
                .map_err(StartupError::Backend)?,
        ))
    }

    /// Create every phase's input and completion topics; existing ones are fine.
    pub async fn ensure_topics(config: &Config) -> Result<(), StartupError> {
        let admin = PubSubAdmin::connect(&config.bus)
            .await
            .map_err(StartupError::Backend)?;
        for phase in &config.phases {
            for topic in [phase.input(), phase.completion_topic.as_str()] {
                admin
                    .ensure_topic(topic)
                    .await
                    .map_err(StartupError::Backend)?;
            }
        }
        Ok(())
    }
}

#[cfg(not(feature = "gcp"))]
mod without_gcp {
    use std::sync::Arc;

    use super::Stores;
    use crate::bus::Publisher;
    use crate::config::{BackendKind, BusKind, Config};
    use crate::startup::StartupError;

    /// Not in this build: no value of this type exists, so `Store::BigQuery` never occurs.
    #[derive(Clone)]
    pub enum BigQuery {}

    /// A configuration that chooses a Google Cloud backend is refused before anything is
    /// opened.
    pub fn require(config: &Config) -> Result<(), StartupError> {
        if config.backend.kind == BackendKind::Bigquery {
            return Err(StartupError::NoGcp("backend.kind = \"bigquery\""));
        }
        if config.bus.kind == BusKind::Pubsub {
            return Err(StartupError::NoGcp("bus.kind = \"pubsub\""));
        }
        Ok(())
    }

    pub async fn connect_bigquery(_config: &Config) -> Result<BigQuery, StartupError> {
        Err(StartupError::NoGcp("backend.kind = \"bigquery\""))
    }

    pub fn ledger_and_warehouse(_config: &Config, bq: &BigQuery) -> Result<Stores, StartupError> {
        match *bq {}
    }

    pub async fn run_setup(bq: &BigQuery, _setup: &[String]) -> Result<(), StartupError> {
        match *bq {}
    }

    pub async fn connect_pubsub(_config: &Config) -> Result<Arc<dyn Publisher>, StartupError> {
        Err(StartupError::NoGcp("bus.kind = \"pubsub\""))
    }

    pub async fn ensure_topics(_config: &Config) -> Result<(), StartupError> {
        Err(StartupError::NoGcp("bus.kind = \"pubsub\""))
    }
}

#[cfg(all(test, not(feature = "gcp")))]
mod tests {
    use crate::config::{BackendKind, BusKind};
    use crate::startup::{StartupError, build};

    /// Choosing BigQuery or Pub/Sub in a binary without them is an error at startup, before
    /// anything (the SQLite file) is opened.
    #[tokio::test]
    async fn google_cloud_backends_are_refused_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("demo.sqlite");
        let mut bigquery = crate::example::example_config(&db).unwrap();
        bigquery.backend.kind = BackendKind::Bigquery;
        let mut pubsub = crate::example::example_config(&db).unwrap();
        pubsub.bus.kind = BusKind::Pubsub;
        for (config, chosen) in [
            (bigquery, "backend.kind = \"bigquery\""),
            (pubsub, "bus.kind = \"pubsub\""),
        ] {
            let err = build(config).await.err().expect("refused");
            assert!(
                matches!(err, StartupError::NoGcp(c) if c == chosen),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains("without the `gcp` feature")
                    && message.contains("cargo build --release"),
                "{message}"
            );
        }
        assert!(!db.exists(), "nothing is opened");
    }
}
