//! Implementations of the storage and messaging traits: the embedded default (SQLite and an
//! in-process bus) and Google Cloud (BigQuery and Pub/Sub, with the `gcp` feature — on by
//! default; see `startup::gcp`).

#[cfg(feature = "gcp")]
pub mod bigquery;
#[cfg(feature = "gcp")]
pub mod firestore;
pub mod in_process;
#[cfg(feature = "gcp")]
pub mod pubsub;
pub mod sqlite;
