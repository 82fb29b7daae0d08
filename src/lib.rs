//! phasegate: a pipeline-integrity layer for phase-based, event-driven data pipelines.
//!
//! A phase worker receives a Pub/Sub push for a date, checks that the data it depends on is
//! complete (the [`gate`]), runs its [`processor`]s, records every attempt in the run
//! [`ledger`] and publishes its completion event — unless the message says the cascade stops.

pub mod atomic;
pub mod auth;
pub mod backends;
pub mod backfill;
pub mod bus;
pub mod cli;
pub mod config;
pub mod dates;
pub mod demo;
pub mod envelope;
pub mod event;
pub mod example;
pub mod freshness;
pub mod gate;
pub mod invocation;
pub mod ledger;
pub mod metrics;
pub mod processor;
pub mod report;
pub mod sample;
pub mod server;
pub mod sql_lint;
pub mod startup;
pub mod telemetry;
pub mod trigger;
pub mod verify;
pub mod warehouse;
pub mod worker;
