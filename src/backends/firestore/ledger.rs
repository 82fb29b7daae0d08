//! The Google Cloud ledger with coordination in Firestore: claims, leases and publication
//! claims are Firestore writes guarded by preconditions (one document per processor and
//! date); BigQuery stays the ledger of record (every state change an appended row) and the
//! warehouse.
//!
//! Order of writes, and what a crash between them leaves:
//! - **claim**: the document names the new run, then BigQuery gets its `running` row. If the
//!   append fails the document is given back at once; if the process dies in between, the
//!   lease runs out (store time) and the next delivery takes over (and records the dead run
//!   `failed`). Readers see the document's leases on top of the ledger's rows (one
//!   `batchGet` beside each ledger read), so a run with no row yet never looks claimable.
//! - **complete**: BigQuery's outcome row first (written only while the run has no final
//!   row), then the document ends the run lease and hands the holder the publication.
//! - **publication**: taken in the document (all of a phase's runs in one atomic commit),
//!   recorded there when out, then in BigQuery; the sweep repairs a ledger that missed it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::claims::{self, ClaimDoc};
use super::client::{Expect, Firestore, FirestoreError, Write};
use crate::backends::bigquery::BigQuery;
use crate::ledger::{Claim, Ledger, LedgerError, RunRecord, RunStatus};

/// The ledger of the Google Cloud backend when Firestore coordinates.
pub struct Coordinated {
    store: Firestore,
    record: BigQuery,
    /// `{dataset}.{pipeline}`: the ledger this store coordinates (one database may serve
    /// several datasets and pipelines).
    scope: String,
    /// The last update time this process wrote or read of the document of each run it
    /// holds (or publishes): the precondition of its next write of it.
    held: Mutex<HashMap<String, Held>>,
    /// The claim documents the last ledger reads saw (name → document, read time): a claim
    /// right after its delivery's read commits against them without reading again (its
    /// commit is guarded by the update time seen, so a stale entry only makes it re-read).
    seen: Mutex<HashMap<String, Seen>>,
}

/// A claim document as a read saw it (absent: `None`), and the read's time.
type Seen = (Option<ClaimDoc>, DateTime<Utc>);

/// Documents kept in [`Coordinated::seen`] before it is cleared (a worker reads a few per
/// delivery and claims right after; what is never claimed must not pile up).
const SEEN_KEPT: usize = 4096;

#[derive(Debug, Clone)]
struct Held {
    processor: String,
    date: NaiveDate,
    update_time: String,
    /// When this process last wrote it: entries older than any lease are dropped.
    at: std::time::Instant,
}

/// Entries of [`Coordinated::held`] kept before the old ones are dropped (a skip-flagged SQL
/// run is never written again after its claim, so nothing else removes it).
const HELD_KEPT: usize = 4096;

/// Older than this, a held entry's run is long over (leases last the push deadline + 60 s,
/// at most an hour).
const HELD_FOR: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

fn err(e: FirestoreError) -> LedgerError {
    LedgerError(e.to_string())
}

impl Coordinated {
    /// Coordinate in `store` the ledger `scope` (`{dataset}.{pipeline}`); record in
    /// `record` (which no longer checks its claims table).
    pub fn new(store: Firestore, record: BigQuery, scope: &str) -> Coordinated {
        Coordinated {
            store,
            record: record.with_claims_elsewhere(),
            scope: scope.to_string(),
            held: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// The coordination store (round-trip counts for benchmarks).
    pub fn store(&self) -> &Firestore {
        &self.store
    }

    /// The ledger of record (job counts for benchmarks).
    pub fn of_record(&self) -> &BigQuery {
        &self.record
    }

    /// `pipelines/{dataset}.{pipeline}/claims/{processor}@{date}`: one document per
    /// processor and date. Names are validated identifiers; a `/` would nest a collection, so it is
    /// escaped all the same.
    fn doc_name(&self, processor: &str, date: NaiveDate) -> String {
        let clean = |s: &str| s.replace('/', "%2F");
        self.store.doc_name(&format!(
            "pipelines/{}/claims/{}@{date}",
            clean(&self.scope),
            clean(processor)
        ))
    }

    /// Remember the update time this process wrote (or read) of the document of run `key`.
    fn remember(&self, key: Key<'_>, update_time: &str) {
        let (run_id, processor, date) = key;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() > HELD_KEPT {
            held.retain(|_, h| h.at.elapsed() < HELD_FOR);
        }
        held.insert(
            run_id.to_string(),
            Held {
                processor: processor.to_string(),
                date,
                update_time: update_time.to_string(),
                at: std::time::Instant::now(),
            },
        );
    }

    fn forget(&self, run_id: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
    }

    fn held(&self, run_id: &str) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }

    /// The claim documents of `runs`' processors and dates, with the store's read time.
    async fn docs_of(
        &self,
        keys: &[(String, NaiveDate)],
    ) -> Result<(Vec<Option<ClaimDoc>>, DateTime<Utc>), LedgerError> {
        if keys.is_empty() {
            // Nothing to read (a processor without upstream ones): no round trip, and no
            // store time to judge anything by.
            return Ok((Vec::new(), Utc::now()));
        }
        let names: Vec<String> = keys.iter().map(|(p, d)| self.doc_name(p, *d)).collect();
        let snap = self.store.get(&names).await.map_err(err)?;
        let docs = names
            .iter()
            .map(|n| snap.docs.get(n).map(ClaimDoc::read))
            .collect();
        Ok((docs, snap.read_time))
    }

    async fn doc_of(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<(Option<ClaimDoc>, DateTime<Utc>), LedgerError> {
        let (mut docs, at) = self.docs_of(&[(processor.to_string(), date)]).await?;
        Ok((docs.pop().flatten(), at))
    }

    /// The store's half of a claim: the document of `run`'s processor and date names `run`
    /// (with its lease from the commit's time) if `seen` may be replaced
    /// ([`ClaimDoc::claimable`]). Two round trips: read, then a commit guarded by what was
    /// read. Nothing is written to the ledger.
    pub async fn take(
        &self,
        run: &RunRecord,
        seen: Option<&RunRecord>,
    ) -> Result<Claim, LedgerError> {
        let (p, d) = (run.processor.as_str(), run.data_date);
        let name = self.doc_name(p, d);
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        let (current, now) = match cached {
            Some(read) => read,
            None => self.doc_of(p, d).await?,
        };
        if let Some(doc) = &current
            && !doc.claimable(seen, now)
        {
            return Ok(Claim::Lost(Box::new(winner(run, doc))));
        }
        let write = Write {
            name: name.clone(),
            fields: claims::claim_fields(run, claims::secs_until(run.lease_until)),
            server_time: vec!["renewed_at"],
            expect: current
                .as_ref()
                .map_or(Expect::Absent, |c| Expect::At(c.update_time.clone())),
        };
        let update_time = match self.store.commit(&[write]).await {
            Ok(times) => times.into_iter().next().unwrap_or_default(),
            Err(FirestoreError::Precondition(_)) => {
                // Someone wrote first — or our own retried commit had applied.
                let (now_doc, _) = self.doc_of(p, d).await?;
                match now_doc {
                    Some(doc) if doc.holder == run.run_id => doc.update_time,
                    Some(doc) => return Ok(Claim::Lost(Box::new(winner(run, &doc)))),
                    None => return Ok(Claim::Lost(Box::new(run.clone()))),
                }
            }
            Err(e) => return Err(err(e)),
        };
        self.remember(key(run), &update_time);
        Ok(Claim::Won)
    }

    /// End `run`'s lease without announcing it (a claim whose ledger row could not be
    /// written, a benchmark's release). False when another run holds the document now.
    pub async fn give_back(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        let given = self
            .update_held(key(run), claims::finished_fields(run, 0), vec![])
            .await;
        self.forget(&run.run_id);
        given
    }

    /// The update time of the document of `processor` and `date` if it names `run_id`.
    async fn held_by(
        &self,
        run_id: &str,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<String>, LedgerError> {
        let (current, _) = self.doc_of(processor, date).await?;
        Ok(current
            .filter(|c| c.holder == run_id)
            .map(|c| c.update_time))
    }

    /// Write `fields` into the document of run `run` (id, processor, date) while it still
    /// names that run: guarded by the update time this process last saw, re-read when the
    /// guard fails (a retried commit that had applied, a publication taken meanwhile).
    /// False when another run holds the document now.
    async fn update_held(
        &self,
        run: Key<'_>,
        fields: serde_json::Map<String, serde_json::Value>,
        server_time: Vec<&'static str>,
    ) -> Result<bool, LedgerError> {
        let (run_id, processor, date) = run;
        let doc = self.doc_name(processor, date);
        let mut expect = match self.held(run_id) {
            Some(h) => Some(h.update_time),
            None => self.held_by(run_id, processor, date).await?,
        };
        for _ in 0..3 {
            let Some(update_time) = expect.take() else {
                return Ok(false);
            };
            let write = Write {
                name: doc.clone(),
                fields: fields.clone(),
                server_time: server_time.clone(),
                expect: Expect::At(update_time),
            };
            match self.store.commit(&[write]).await {
                Ok(times) => {
                    let t = times.into_iter().next().unwrap_or_default();
                    self.remember(run, &t);
                    return Ok(true);
                }
                Err(FirestoreError::Precondition(_)) => {
                    expect = self.held_by(run_id, processor, date).await?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Err(LedgerError(format!(
            "the claim document of {processor} {date} kept changing under run {run_id}"
        )))
    }
}

#[async_trait]
impl Ledger for Coordinated {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.record.ensure_schema().await
    }

    async fn record(&self, record: &RunRecord) -> Result<(), LedgerError> {
        self.record.record(record).await?;
        let write = Write {
            name: self.doc_name(&record.processor, record.data_date),
            fields: claims::record_fields(record),
            server_time: vec!["renewed_at", "pub_renewed_at"],
            expect: Expect::Anything,
        };
        self.store.commit(&[write]).await.map_err(err)?;
        // Set outright: no delivery of this process holds it any more.
        self.forget(&record.run_id);
        Ok(())
    }

    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        let claim = self.take(run, seen).await?;
        if claim != Claim::Won {
            return Ok(claim);
        }
        // The run the claim replaced, if it was still running: taken over.
        let taken_over = seen
            .filter(|s| s.status == RunStatus::Running)
            .map(|s| s.run_id.as_str());
        if let Err(e) = self.record.append_claim(run, taken_over).await {
            // Give the claim back so the redelivery need not wait for the lease.
            if !matches!(self.give_back(run).await, Ok(true)) {
                tracing::warn!(run_id = %run.run_id,
                    "claim not recorded and not given back; its lease will run out");
            }
            return Err(e);
        }
        Ok(Claim::Won)
    }

    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        let written = self.record.complete(run).await?;
        if !written {
            self.forget(&run.run_id);
            return Ok(false);
        }
        self.finished(run).await;
        Ok(true)
    }

    async fn renew(&self, run_id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        // Used to release (or extend) a publication this process holds; run leases on
        // Google Cloud outlast the push deadline and are not renewed.
        let Some(held) = self.held(run_id) else {
            return Ok(false);
        };
        let secs = if until <= Utc::now() {
            0
        } else {
            claims::secs_until(Some(until))
        };
        self.update_held(
            (run_id, &held.processor, held.date),
            claims::publication_fields(run_id, secs),
            vec!["pub_renewed_at"],
        )
        .await
    }

    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let secs = claims::secs_until(Some(until));
        if let Some(taken) = self.claim_own_publication(runs, secs).await? {
            return Ok(taken);
        }
        let keys: Vec<(String, NaiveDate)> = runs
            .iter()
            .map(|r| (r.processor.clone(), r.data_date))
            .collect();
        let (docs, now) = self.docs_of(&keys).await?;
        let mut writes = Vec::with_capacity(runs.len());
        let mut own = Vec::with_capacity(runs.len());
        for (run, doc) in runs.iter().zip(&docs) {
            let name = self.doc_name(&run.processor, run.data_date);
            // The caller's own run (this process claimed it and wrote the document last):
            // guarded by the update time it wrote, so a publication taken since — by the
            // sweep or a redelivery, here or elsewhere — makes it lose. Others' runs: by the
            // update time just read, their lease seen run out.
            let held = self.held(&run.run_id);
            own.push(held.is_some());
            let write = match doc {
                Some(doc) if doc.publication_claimable(run, held.is_some(), now) => Write {
                    name,
                    fields: claims::publication_fields(&run.run_id, secs),
                    server_time: vec!["pub_renewed_at"],
                    expect: Expect::At(
                        held.map_or_else(|| doc.update_time.clone(), |h| h.update_time),
                    ),
                },
                Some(_) => return Ok(false),
                // A run no delivery claimed here (written by a tool, or before the store
                // coordinated): its document is created holding the publication.
                None => {
                    let mut fields = claims::claim_fields(run, 0);
                    fields.extend(claims::publication_fields(&run.run_id, secs));
                    Write {
                        name,
                        fields,
                        server_time: vec!["renewed_at", "pub_renewed_at"],
                        expect: Expect::Absent,
                    }
                }
            };
            writes.push(write);
        }
        match self.store.commit(&writes).await {
            Ok(times) => {
                // Only the caller's own runs stay remembered: a publication taken from
                // someone else must not make their stale claim look like this caller's.
                for ((run, t), own) in runs.iter().zip(times).zip(own) {
                    if own {
                        self.remember(key(run), &t);
                    }
                }
                Ok(true)
            }
            // Another publisher took one of them first.
            Err(FirestoreError::Precondition(_)) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError> {
        Ok(self
            .latest_of(&[processor.to_string()], date)
            .await?
            .pop()
            .flatten())
    }

    async fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        let keys: Vec<(String, NaiveDate)> = processors.iter().map(|p| (p.clone(), date)).collect();
        // The ledger's rows and the store's leases, side by side: one extra round trip.
        let (rows, docs) =
            tokio::join!(self.record.latest_of(processors, date), self.docs_of(&keys));
        let (mut rows, (docs, read_time)) = (rows?, docs?);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > SEEN_KEPT {
                seen.clear();
            }
            for ((p, d), doc) in keys.iter().zip(&docs) {
                seen.insert(self.doc_name(p, *d), (doc.clone(), read_time));
            }
        }
        for (row, doc) in rows.iter_mut().zip(&docs) {
            if let (Some(row), Some(doc)) = (row.as_mut(), doc) {
                doc.overlay(row);
            }
        }
        Ok(rows)
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        self.record.history(processor, date).await
    }

    async fn latest_in_range(
        &self,
        processor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        self.record.latest_in_range(processor, from, to).await
    }

    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        // The ledger's unannounced runs, judged by the store's leases (not the rows').
        let owed = self.record.unannounced(phase).await?;
        let mut still_owed = Vec::with_capacity(owed.len());
        let mut repaired = Vec::new();
        for chunk in owed.chunks(100) {
            let keys: Vec<(String, NaiveDate)> = chunk
                .iter()
                .map(|r| (r.processor.clone(), r.data_date))
                .collect();
            let (docs, now) = self.docs_of(&keys).await?;
            for (run, doc) in chunk.iter().zip(docs) {
                let mut run = run.clone();
                if let Some(doc) = doc {
                    doc.overlay(&mut run);
                }
                if run.published_at.is_some() {
                    // Out per the store, owed per the ledger: its append failed. Record it.
                    repaired.push(run);
                } else if !run.lease_alive(now) {
                    still_owed.push(run);
                }
            }
        }
        if let Some(at) = repaired.iter().filter_map(|r| r.published_at).max() {
            self.record.mark_published(&repaired, at).await?;
        }
        still_owed.truncate(limit);
        Ok(still_owed)
    }

    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        // One commit for all of them when this process knows each document's state (it
        // claimed or published them); one guarded write per run otherwise.
        let held: Option<Vec<Write>> = runs
            .iter()
            .map(|run| {
                self.held(&run.run_id).map(|h| Write {
                    name: self.doc_name(&h.processor, h.date),
                    fields: claims::published_fields(at),
                    server_time: vec![],
                    expect: Expect::At(h.update_time),
                })
            })
            .collect();
        let together = match held {
            Some(writes) => self.store.commit(&writes).await.is_ok(),
            None => false,
        };
        for run in runs {
            if !together
                && !self
                    .update_held(key(run), claims::published_fields(at), vec![])
                    .await?
            {
                tracing::warn!(run_id = %run.run_id,
                    "published, but a newer run holds its claim document now");
            }
            self.forget(&run.run_id);
        }
        self.record.mark_published(runs, at).await
    }
}

impl Coordinated {
    /// The holder's own publication (every run's document last written by this process):
    /// one commit guarded by the versions it wrote, no read — unchanged since, the
    /// documents still name its runs, unpublished. `None` when a run is not this process's.
    async fn claim_own_publication(
        &self,
        runs: &[RunRecord],
        secs: i64,
    ) -> Result<Option<bool>, LedgerError> {
        let Some(held) = runs
            .iter()
            .map(|r| self.held(&r.run_id))
            .collect::<Option<Vec<Held>>>()
        else {
            return Ok(None);
        };
        let writes: Vec<Write> = runs
            .iter()
            .zip(&held)
            .map(|(run, h)| Write {
                name: self.doc_name(&h.processor, h.date),
                fields: claims::publication_fields(&run.run_id, secs),
                server_time: vec!["pub_renewed_at"],
                expect: Expect::At(h.update_time.clone()),
            })
            .collect();
        match self.store.commit(&writes).await {
            Ok(times) => {
                for (run, t) in runs.iter().zip(times) {
                    self.remember(key(run), &t);
                }
                Ok(Some(true))
            }
            // Someone wrote since (a publication taken over): decided on a fresh read.
            Err(FirestoreError::Precondition(_)) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// The run finished (its outcome row is in the ledger): end its lease and, if it will
    /// announce itself, hand it the publication. A failure here is logged: the run lease
    /// then runs out on its own.
    async fn finished(&self, run: &RunRecord) {
        let publish = if run.status.is_done() && !run.skip_downstream_trigger {
            claims::secs_until(run.lease_until)
        } else {
            0
        };
        let server_time = if publish > 0 {
            vec!["pub_renewed_at"]
        } else {
            vec![]
        };
        match self
            .update_held(key(run), claims::finished_fields(run, publish), server_time)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(run_id = %run.run_id,
                "run recorded, but a newer run holds its claim document"),
            Err(e) => tracing::warn!(run_id = %run.run_id, error = %e,
                "run recorded, but its lease was not ended; it runs out on its own"),
        }
        if publish == 0 {
            self.forget(&run.run_id);
        }
    }
}

/// A run as its claim document knows it: id, processor, date.
type Key<'a> = (&'a str, &'a str, NaiveDate);

fn key(run: &RunRecord) -> Key<'_> {
    (&run.run_id, &run.processor, run.data_date)
}

/// What a lost claim reports as the latest run: the document's holder, with its lease. The
/// claimant re-reads the ledger before deciding again, so no ledger read is spent here.
fn winner(run: &RunRecord, doc: &ClaimDoc) -> RunRecord {
    let mut latest = run.clone();
    latest.run_id = doc.holder.clone();
    latest.lease_until = doc.lease_end();
    latest
}
