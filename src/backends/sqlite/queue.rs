//! The embedded bus's durable queue: one `bus_messages` table, the outbox and delivery state
//! of every message published on the in-process bus.
//!
//! Claim protocol: a deliverer claims due messages in one `BEGIN IMMEDIATE` transaction
//! (SQLite's single writer serialises claims between connections and processes). A claim
//! increments `attempts`, records the deliverer in `claimed_by` and moves `next_attempt_at`
//! to the lease's expiry, so a message whose deliverer died becomes due again when its lease
//! runs out; a live deliverer renews the lease while the handler works. `(claimed_by,
//! attempts)` is the claim's token: renewals, retries and dead letters apply only while the
//! token still holds. An acknowledgement always counts (the handler did take the message).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{Sqlite, parse_ts, ts};

const QUEUE_DDL: &str = "
CREATE TABLE IF NOT EXISTS bus_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    phase TEXT,
    data TEXT NOT NULL,
    attributes TEXT NOT NULL,
    event_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead', 'unrouted')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    claimed_by TEXT,
    last_status INTEGER,
    last_reason TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT,
    UNIQUE (topic, event_id)
);
CREATE INDEX IF NOT EXISTS bus_messages_due ON bus_messages (state, next_attempt_at);
";

const COLUMNS: &str = "id, topic, phase, data, attributes, event_id, state, attempts, \
    next_attempt_at, claimed_by, last_status, last_reason, created_at, delivered_at";

/// The attribute whose value makes a publish idempotent per topic.
pub const EVENT_ID: &str = "event_id";

/// A failed read or write of the queue table.
#[derive(Debug, thiserror::Error)]
#[error("bus queue: {0}")]
pub struct QueueError(pub String);

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting for a delivery, or being delivered under a lease.
    Pending,
    /// The handler acknowledged it (2xx).
    Delivered,
    /// Dead-lettered after its last attempt; kept for inspection.
    Dead,
    /// No phase listens on its topic; kept for inspection only.
    Unrouted,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Dead => "dead",
            MessageState::Unrouted => "unrouted",
        }
    }

    fn parse(s: &str) -> Option<MessageState> {
        [Self::Pending, Self::Delivered, Self::Dead, Self::Unrouted]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub topic: String,
    /// The phase subscribed to the topic; `None` stores the message as unrouted.
    pub phase: Option<String>,
    pub data: serde_json::Value,
    pub attributes: BTreeMap<String, String>,
}

/// A row of `bus_messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub id: i64,
    pub topic: String,
    pub phase: Option<String>,
    pub data: serde_json::Value,
    pub attributes: BTreeMap<String, String>,
    pub event_id: Option<String>,
    pub state: MessageState,
    /// Deliveries started so far (a claim counts as one).
    pub attempts: u32,
    /// When it is due: the retry time, or the expiry of the current delivery's lease.
    pub next_attempt_at: DateTime<Utc>,
    /// The deliverer of the latest attempt.
    pub claimed_by: Option<String>,
    pub last_status: Option<u16>,
    pub last_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What a deliverer asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Identifies the deliverer (one per bus instance).
    pub owner: String,
    /// How long the claim holds without a renewal.
    pub lease: Duration,
    /// At most this many messages.
    pub limit: usize,
    /// Messages that already had this many attempts are dead-lettered instead of claimed.
    pub max_attempts: u32,
    /// Only messages for these phases.
    pub phases: Vec<String>,
}

/// The outcome of a claim.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Claimed for delivery: `attempts` is this delivery's attempt number.
    pub due: Vec<QueuedMessage>,
    /// Dead-lettered: their last attempt's lease ran out without an answer.
    pub expired: Vec<QueuedMessage>,
}

/// The claim a deliverer holds: valid while the row still names this owner and attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    pub id: i64,
    pub owner: String,
    pub attempt: u32,
}

/// How a delivery ended, as recorded on the row.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Try again at this time.
    Retry { at: DateTime<Utc> },
    /// No more attempts: dead-letter.
    Dead,
}

/// Pending work for a set of phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Messages pending (due, scheduled for a retry, or under a lease).
    pub pending: u64,
    /// The earliest time one of them becomes due (or its lease expires).
    pub next_due: Option<DateTime<Utc>>,
}

fn bad_row(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} `{value}` in bus_messages").into(),
    )
}

fn json_column<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<QueuedMessage> {
    let state: String = row.get(6)?;
    Ok(QueuedMessage {
        id: row.get(0)?,
        topic: row.get(1)?,
        phase: row.get(2)?,
        data: json_column(&row.get::<_, String>(3)?)?,
        attributes: json_column(&row.get::<_, String>(4)?)?,
        event_id: row.get(5)?,
        state: MessageState::parse(&state).ok_or_else(|| bad_row("state", &state))?,
        attempts: row.get(7)?,
        next_attempt_at: parse_ts(&row.get::<_, String>(8)?)?,
        claimed_by: row.get(9)?,
        last_status: row.get(10)?,
        last_reason: row.get(11)?,
        created_at: parse_ts(&row.get::<_, String>(12)?)?,
        delivered_at: row
            .get::<_, Option<String>>(13)?
            .map(|s| parse_ts(&s))
            .transpose()?,
    })
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

fn phases_json(phases: &[String]) -> String {
    serde_json::Value::from(phases.to_vec()).to_string()
}

/// Create the table if it is missing.
pub fn ensure_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(QUEUE_DDL)
}

/// Store a message; returns its id. With an `event_id` attribute, a message already stored
/// for the same topic and event id is kept and its id returned: the publish is a no-op.
pub fn enqueue(
    conn: &mut Connection,
    msg: &NewMessage,
    now: DateTime<Utc>,
) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let event_id = msg.attributes.get(EVENT_ID);
    let existing = match event_id {
        Some(e) => tx
            .query_row(
                "SELECT id FROM bus_messages WHERE topic = ?1 AND event_id = ?2",
                params![msg.topic, e],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    let id = match existing {
        Some(id) => id,
        None => {
            let state = match msg.phase {
                Some(_) => MessageState::Pending,
                None => MessageState::Unrouted,
            };
            let attributes = serde_json::to_string(&msg.attributes).unwrap_or_default();
            tx.execute(
                "INSERT INTO bus_messages (topic, phase, data, attributes, event_id, state, \
                 next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                params![
                    msg.topic,
                    msg.phase,
                    msg.data.to_string(),
                    attributes,
                    event_id,
                    state.as_str(),
                    ts(&now)
                ],
            )?;
            tx.last_insert_rowid()
        }
    };
    tx.commit()?;
    Ok(id)
}

/// Claim due messages (see the module's claim protocol). Messages whose last allowed
/// attempt's lease ran out are dead-lettered in the same transaction.
pub fn claim_due(
    conn: &mut Connection,
    req: &ClaimRequest,
    now: DateTime<Utc>,
) -> rusqlite::Result<Claimed> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let phases = phases_json(&req.phases);
    let expired = {
        let mut stmt = tx.prepare(&format!(
            "UPDATE bus_messages SET state = 'dead', \
             last_reason = 'attempts exhausted: the last one got no answer before its lease expired' \
             WHERE state = 'pending' AND next_attempt_at <= ?1 AND attempts >= ?2 \
             AND phase IN (SELECT value FROM json_each(?3)) RETURNING {COLUMNS}"
        ))?;
        stmt.query_map(
            params![ts(&now), req.max_attempts, phases],
            message_from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?
    };
    let due = {
        let mut stmt = tx.prepare(&format!(
            "UPDATE bus_messages SET attempts = attempts + 1, claimed_by = ?1, \
             next_attempt_at = ?2 WHERE id IN (SELECT id FROM bus_messages \
             WHERE state = 'pending' AND next_attempt_at <= ?3 \
             AND phase IN (SELECT value FROM json_each(?4)) \
             ORDER BY next_attempt_at, id LIMIT ?5) RETURNING {COLUMNS}"
        ))?;
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        let until = ts(&lease_end(now, req.lease));
        let mut rows = stmt
            .query_map(
                params![req.owner, until, ts(&now), phases, limit],
                message_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort_by_key(|m| m.id);
        rows
    };
    tx.commit()?;
    Ok(Claimed { due, expired })
}

/// Push the lease of a claim still held to `until`; false when the claim was lost.
pub fn renew(
    conn: &Connection,
    token: &ClaimToken,
    until: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE bus_messages SET next_attempt_at = ?1 \
         WHERE id = ?2 AND state = 'pending' AND claimed_by = ?3 AND attempts = ?4",
        params![ts(&until), token.id, token.owner, token.attempt],
    )?;
    Ok(n == 1)
}

/// The handler acknowledged the message: it is delivered, whoever holds the claim now.
pub fn ack(conn: &Connection, id: i64, status: u16, now: DateTime<Utc>) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE bus_messages SET state = 'delivered', delivered_at = ?1, \
         last_status = ?2, last_reason = NULL WHERE id = ?3 AND state = 'pending'",
        params![ts(&now), status, id],
    )?;
    Ok(n == 1)
}

/// The handler refused the message: schedule a retry or dead-letter it, if the claim holds.
pub fn settle(
    conn: &Connection,
    token: &ClaimToken,
    status: u16,
    reason: &str,
    settlement: &Settlement,
) -> rusqlite::Result<bool> {
    let (state, at) = match settlement {
        Settlement::Retry { at } => (MessageState::Pending, Some(ts(at))),
        Settlement::Dead => (MessageState::Dead, None),
    };
    let n = conn.execute(
        "UPDATE bus_messages SET state = ?1, next_attempt_at = COALESCE(?2, next_attempt_at), \
         last_status = ?3, last_reason = ?4 \
         WHERE id = ?5 AND state = 'pending' AND claimed_by = ?6 AND attempts = ?7",
        params![
            state.as_str(),
            at,
            status,
            reason,
            token.id,
            token.owner,
            token.attempt
        ],
    )?;
    Ok(n == 1)
}

/// Pending messages of these phases and when the next becomes due.
pub fn backlog(conn: &Connection, phases: &[String]) -> rusqlite::Result<Backlog> {
    let (pending, next): (u64, Option<String>) = conn.query_row(
        "SELECT COUNT(*), MIN(next_attempt_at) FROM bus_messages \
         WHERE state = 'pending' AND phase IN (SELECT value FROM json_each(?1))",
        params![phases_json(phases)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Backlog {
        pending,
        next_due: next.map(|s| parse_ts(&s)).transpose()?,
    })
}

/// Every message, oldest first; only those in `state` when given.
pub fn list(
    conn: &Connection,
    state: Option<MessageState>,
) -> rusqlite::Result<Vec<QueuedMessage>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM bus_messages WHERE ?1 IS NULL OR state = ?1 ORDER BY id"
    ))?;
    stmt.query_map(params![state.map(MessageState::as_str)], message_from_row)?
        .collect()
}

/// The queue through the `Sqlite` handle: each call runs on the connection plumbing.
impl Sqlite {
    async fn on_queue<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.with(f).await.map_err(QueueError)
    }

    pub async fn bus_ensure_schema(&self) -> Result<(), QueueError> {
        self.on_queue(|c| ensure_schema(c)).await
    }

    pub async fn bus_enqueue(&self, msg: NewMessage) -> Result<i64, QueueError> {
        self.on_queue(move |c| enqueue(c, &msg, Utc::now())).await
    }

    pub async fn bus_claim_due(&self, req: ClaimRequest) -> Result<Claimed, QueueError> {
        self.on_queue(move |c| claim_due(c, &req, Utc::now())).await
    }

    pub async fn bus_renew(&self, token: ClaimToken, lease: Duration) -> Result<bool, QueueError> {
        self.on_queue(move |c| renew(c, &token, lease_end(Utc::now(), lease)))
            .await
    }

    pub async fn bus_ack(&self, id: i64, status: u16) -> Result<bool, QueueError> {
        self.on_queue(move |c| ack(c, id, status, Utc::now())).await
    }

    pub async fn bus_settle(
        &self,
        token: ClaimToken,
        status: u16,
        reason: String,
        settlement: Settlement,
    ) -> Result<bool, QueueError> {
        self.on_queue(move |c| settle(c, &token, status, &reason, &settlement))
            .await
    }

    pub async fn bus_backlog(&self, phases: Vec<String>) -> Result<Backlog, QueueError> {
        self.on_queue(move |c| backlog(c, &phases)).await
    }

    /// A synchronous read for the inspection API (tests, the demo's summary): it blocks the
    /// calling thread on the connection for one short query.
    pub fn bus_list_blocking(
        &self,
        state: Option<MessageState>,
    ) -> Result<Vec<QueuedMessage>, QueueError> {
        self.read_blocking(move |c| list(c, state))
            .map_err(QueueError)
    }
}
