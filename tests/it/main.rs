//! The integration tests, one module per suite, in one test binary: every test binary links
//! the whole dependency graph and compiles `tests/common` again, so one binary instead of 23
//! saves most of CI's test build (issue 14). The tests of all modules run in parallel
//! threads of this process, so a test must not depend on process-wide state another test
//! changes: none sets environment variables or installs a global recorder or subscriber.
//! `tests/metrics.rs` stays a binary of its own: it reads the process-wide Prometheus
//! recorder, which every in-process server here would move.
//!
//! One suite: `cargo test --test it gate::` (a filter is a substring of `module::test`;
//! `gate::` does not match `gate_truth::`). The BigQuery suites: see DEVELOPERS.md.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod backfill;
mod backfill_faults;
mod cascade;
mod command_processor;
mod config;
mod crash_recovery;
mod demo_commands;
mod durable_bus;
mod envelope_fuzz;
mod exactly_once;
mod gate;
mod gate_truth;
mod history;
mod http;
mod lineage;
mod logs;
mod off_season;
mod one_transaction;
mod ops;
mod publication;
mod relay;
mod serve;
mod trigger;

// These need the Google Cloud clients or the BigQuery ledger schema: the `gcp` feature
// (default). Gated here rather than with `[[test]] required-features`: the Docker build
// copies no `tests/`, and cargo refuses a declared target whose file is missing.
#[cfg(feature = "gcp")]
mod bigquery_jobs;
#[cfg(feature = "gcp")]
mod bigquery_model;
#[cfg(feature = "gcp")]
mod e2e_emulators;
#[cfg(feature = "gcp")]
mod pubsub_publish;
#[cfg(feature = "gcp")]
mod terraform_schema;
