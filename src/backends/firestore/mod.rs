//! Firestore as the coordination store of the Google Cloud backend: claims, leases and
//! publication claims, off BigQuery's DML queue (BigQuery stays the ledger of record).

pub mod claims;
pub mod client;
mod ledger;

pub use client::{Expect, Firestore, FirestoreError};
pub use ledger::Coordinated;
