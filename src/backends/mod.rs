//! Implementations of the storage and messaging traits: the embedded default (SQLite and an
//! in-process bus) and Google Cloud (BigQuery and Pub/Sub).

pub mod bigquery;
pub mod in_process;
pub mod pubsub;
pub mod sqlite;
