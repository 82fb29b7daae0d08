//! The claim document of one processor and date: who holds its run, who holds the
//! publication of its event, and until when — by the store's clock.
//!
//! A lease is `renewed_at` (set by the server to the commit's time) plus `lease_secs`; it is
//! alive while that is not before the read time of the snapshot that looks at it. No
//! instance's clock takes part, so a skewed instance cannot steal a live claim nor keep a
//! dead one.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use super::client::{self, Doc};
use crate::ledger::{RunRecord, RunStatus};

/// Days a claim document outlives its last write before the TTL policy on `expire_at` may
/// delete it (Terraform: `google_firestore_field`). The ledger in BigQuery keeps the history;
/// a deleted document only means "no live claim".
const KEEP_DAYS: i64 = 30;

/// The fields of a claim document as read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimDoc {
    pub holder: String,
    pub renewed_at: Option<DateTime<Utc>>,
    pub lease_secs: i64,
    /// The run whose event's publication is held, and until when (`pub_*`).
    pub publisher: Option<String>,
    pub pub_renewed_at: Option<DateTime<Utc>>,
    pub pub_secs: i64,
    /// When the holder's event went out.
    pub published_at: Option<DateTime<Utc>>,
    pub update_time: String,
}

impl ClaimDoc {
    pub fn read(doc: &Doc) -> ClaimDoc {
        ClaimDoc {
            holder: doc.string("holder").unwrap_or_default().to_string(),
            renewed_at: doc.timestamp("renewed_at"),
            lease_secs: doc.int("lease_secs").unwrap_or(0),
            publisher: doc.string("publisher").map(str::to_string),
            pub_renewed_at: doc.timestamp("pub_renewed_at"),
            pub_secs: doc.int("pub_secs").unwrap_or(0),
            published_at: doc.timestamp("published_at"),
            update_time: doc.update_time.clone(),
        }
    }

    /// When the holder's run lease ends (`None`: no lease).
    pub fn lease_end(&self) -> Option<DateTime<Utc>> {
        end(self.renewed_at, self.lease_secs)
    }

    /// When the publication lease ends (`None`: nobody holds the publication). Until a
    /// publisher is named, the holder's run lease covers its publication too: a run whose
    /// outcome the warehouse committed in its own transaction (SQL on BigQuery) is about to
    /// announce itself under the lease it claimed with.
    pub fn publication_end(&self) -> Option<DateTime<Utc>> {
        match self.publisher {
            Some(_) => end(self.pub_renewed_at, self.pub_secs),
            None => self.lease_end(),
        }
    }

    /// May `seen` (what the claimant read of the processor and date) be replaced by a new
    /// run, at the store's time `now`? Yes when the document names `seen` and `seen` is not
    /// running under a live lease, or when whatever it names has no live lease (it ended,
    /// crashed, or its ledger row was never written).
    pub fn claimable(&self, seen: Option<&RunRecord>, now: DateTime<Utc>) -> bool {
        let live = self.lease_end().is_some_and(|end| end >= now);
        if !live {
            return true;
        }
        seen.is_some_and(|s| s.run_id == self.holder && s.status != RunStatus::Running)
    }

    /// May the publication of `run`'s event be taken at `now`? When the document still
    /// names `run` and the event is not out, and either no live lease holds the publication
    /// or the caller says it holds it (`own`: the run is the caller's, and on this backend a
    /// run's lease outlasts its delivery's deadline, so a live holder was never overtaken).
    pub fn publication_claimable(&self, run: &RunRecord, own: bool, now: DateTime<Utc>) -> bool {
        let mut seen = run.clone();
        self.overlay(&mut seen);
        self.holder == run.run_id && self.published_at.is_none() && (own || !seen.lease_alive(now))
    }

    /// `record`, with the leases this document holds for it (store time), and its
    /// publication if the document knows of it: what a reader of the ledger should act on.
    /// A done run's record says whether its holder meant to announce it (a lease on its
    /// outcome row) or not (none: skip-flagged); only the former is covered by the run
    /// lease until a publisher is named.
    pub fn overlay(&self, record: &mut RunRecord) {
        if record.run_id != self.holder {
            return;
        }
        record.lease_until = if record.status == RunStatus::Running {
            self.lease_end()
        } else if self.publisher.is_some() || record.lease_until.is_some() {
            self.publication_end()
        } else {
            None
        };
        if record.published_at.is_none() {
            record.published_at = self.published_at;
        }
    }
}

fn end(from: Option<DateTime<Utc>>, secs: i64) -> Option<DateTime<Utc>> {
    (secs > 0).then_some(from? + Duration::seconds(secs))
}

/// The fields of a new claim by `run` for `lease` (seconds, from the commit's time).
pub fn claim_fields(run: &RunRecord, lease: i64) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("holder".into(), client::string(&run.run_id));
    f.insert("lease_secs".into(), client::int(lease));
    f.insert("pub_secs".into(), client::int(0));
    f.insert("publisher".into(), Value::Object(null()));
    f.insert("published_at".into(), Value::Object(null()));
    f.insert("expire_at".into(), expire_at());
    f
}

/// The fields that end the run lease and, when `publish_secs` > 0, hand the publication to
/// the holder for that long.
pub fn finished_fields(run: &RunRecord, publish_secs: i64) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("lease_secs".into(), client::int(0));
    f.insert("pub_secs".into(), client::int(publish_secs));
    f.insert(
        "publisher".into(),
        if publish_secs > 0 {
            client::string(&run.run_id)
        } else {
            Value::Object(null())
        },
    );
    f.insert("expire_at".into(), expire_at());
    f
}

/// The fields that set `run`'s state outright (a tool's or test's [`Ledger::record`]): it
/// holds the document, running under its lease, or done and — if it means to announce
/// itself — holding its publication for what is left of its lease.
///
/// [`Ledger::record`]: crate::ledger::Ledger::record
pub fn record_fields(run: &RunRecord) -> Map<String, Value> {
    let left = run
        .lease_until
        .map_or(0, |u| (u - Utc::now()).num_seconds().max(0));
    let running = run.status == RunStatus::Running;
    let mut f = claim_fields(run, if running { left } else { 0 });
    if !running && run.lease_until.is_some() {
        f.insert("publisher".into(), client::string(&run.run_id));
        f.insert("pub_secs".into(), client::int(left));
    }
    if let Some(at) = run.published_at {
        f.insert("published_at".into(), client::timestamp(at));
    }
    f
}

/// The fields of a publication lease for `secs` (0 releases it).
pub fn publication_fields(run_id: &str, secs: i64) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("publisher".into(), client::string(run_id));
    f.insert("pub_secs".into(), client::int(secs));
    f.insert("expire_at".into(), expire_at());
    f
}

/// The fields recording that the holder's event went out at `at`.
pub fn published_fields(at: DateTime<Utc>) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("published_at".into(), client::timestamp(at));
    f.insert("pub_secs".into(), client::int(0));
    f.insert("expire_at".into(), expire_at());
    f
}

fn null() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("nullValue".into(), Value::Null);
    m
}

fn expire_at() -> Value {
    client::timestamp(Utc::now() + Duration::days(KEEP_DAYS))
}

/// Seconds from now until `until` (at least 1: a lease is never born expired).
pub fn secs_until(until: Option<DateTime<Utc>>) -> i64 {
    until.map_or(0, |u| (u - Utc::now()).num_seconds().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::TriggerKind;

    fn doc(holder: &str, renewed: DateTime<Utc>, lease: i64) -> ClaimDoc {
        ClaimDoc {
            holder: holder.into(),
            renewed_at: Some(renewed),
            lease_secs: lease,
            publisher: None,
            pub_renewed_at: None,
            pub_secs: 0,
            published_at: None,
            update_time: "t".into(),
        }
    }

    fn run(id: &str, status: RunStatus) -> RunRecord {
        let day = chrono::NaiveDate::from_ymd_opt(2025, 1, 2).expect("date");
        let mut r = RunRecord::start("p", "raw", day, TriggerKind::Cli, None, false);
        r.run_id = id.into();
        r.status = status;
        r
    }

    #[test]
    fn a_live_lease_is_judged_by_the_read_time_not_the_callers_clock() {
        let t0 = Utc::now();
        let d = doc("a", t0, 60);
        let a_running = run("a", RunStatus::Running);
        // Live at the store's time: nobody takes it, whatever they read.
        assert!(!d.claimable(Some(&a_running), t0 + Duration::seconds(59)));
        assert!(!d.claimable(None, t0 + Duration::seconds(59)));
        // Expired at the store's time: taken over.
        assert!(d.claimable(Some(&a_running), t0 + Duration::seconds(61)));
        // The holder finished (failed, done): its successor may claim at once, but only a
        // claimant that read that run.
        assert!(d.claimable(Some(&run("a", RunStatus::Failed)), t0));
        assert!(!d.claimable(Some(&run("z", RunStatus::Failed)), t0));
    }

    #[test]
    fn a_finished_run_with_no_lease_is_free_to_supersede() {
        let d = doc("a", Utc::now(), 0);
        assert!(d.claimable(Some(&run("a", RunStatus::Success)), Utc::now()));
        assert!(d.claimable(None, Utc::now()));
    }

    #[test]
    fn the_publication_is_taken_once_and_only_for_the_current_holder() {
        let t0 = Utc::now();
        let mut d = doc("a", t0, 60);
        let mut a = run("a", RunStatus::Success);
        a.lease_until = Some(t0);
        assert!(
            !d.publication_claimable(&a, false, t0 + Duration::seconds(10)),
            "the run lease covers its holder's publication until a publisher is named"
        );
        let mut skipped = a.clone();
        skipped.lease_until = None;
        assert!(
            d.publication_claimable(&skipped, false, t0 + Duration::seconds(10)),
            "a holder that will not announce (skip-flagged) does not keep it"
        );
        d.lease_secs = 0;
        assert!(d.publication_claimable(&a, false, t0));
        assert!(
            !d.publication_claimable(&run("old", RunStatus::Success), true, t0),
            "a superseded run"
        );
        d.publisher = Some("a".into());
        d.pub_renewed_at = Some(t0);
        d.pub_secs = 30;
        assert!(!d.publication_claimable(&a, false, t0 + Duration::seconds(10)));
        assert!(d.publication_claimable(&a, false, t0 + Duration::seconds(31)));
        assert!(
            d.publication_claimable(&a, true, t0 + Duration::seconds(10)),
            "its holder takes its own publication while its lease lives"
        );
        d.published_at = Some(t0);
        assert!(!d.publication_claimable(&a, false, t0 + Duration::seconds(31)));
        assert!(
            !d.publication_claimable(&a, true, t0),
            "never once it is out"
        );
    }

    #[test]
    fn the_overlay_gives_readers_the_stores_leases() {
        let t0 = Utc::now();
        let d = doc("a", t0, 60);
        let mut r = run("a", RunStatus::Running);
        r.lease_until = Some(t0 + Duration::days(1));
        d.overlay(&mut r);
        assert_eq!(r.lease_until, Some(t0 + Duration::seconds(60)));
        let mut other = run("b", RunStatus::Running);
        d.overlay(&mut other);
        assert_eq!(other.lease_until, None, "only the holder's record");
    }
}
