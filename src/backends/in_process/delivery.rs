//! The delivery loop of the embedded bus: claim due messages, push each to its phase's
//! handler under a renewed lease, then record the answer (delivered, retry or dead letter).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Shared, message_id};
use crate::backends::sqlite::queue::{ClaimToken, QueuedMessage, Settlement};
use crate::envelope::PushEnvelope;

/// Deliver until the worker is gone (or the bus drops the task).
pub(super) async fn run(shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.config.bus.max_concurrent_deliveries));
    let mut running = JoinSet::new();
    announce_backlog(&shared).await;
    while shared.worker().is_some() {
        let pause = match claim_and_start(&shared, &permits, &mut running).await {
            Ok(()) => pause_before_next(&shared).await,
            // The store is failing: try again after a poll interval, not in a busy loop.
            Err(()) => shared.poll_interval(),
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(pause), if permits.available_permits() > 0 => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e,
                        "a delivery task failed; its message is redelivered when its lease expires");
                }
            }
        }
    }
}

async fn announce_backlog(shared: &Shared) {
    if let Ok(b) = shared.queue.bus_backlog(shared.phases.clone()).await
        && b.pending > 0
    {
        tracing::info!(
            pending = b.pending,
            "in-process bus: delivering messages owed from before start-up"
        );
    }
}

/// Claim as many due messages as there are free delivery slots and start delivering them;
/// `Err` when the claim failed (it is logged).
async fn claim_and_start(
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    running: &mut JoinSet<()>,
) -> Result<(), ()> {
    let free = permits.available_permits();
    if free == 0 {
        return Ok(());
    }
    let claimed = match shared.queue.bus_claim_due(shared.claim_request(free)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "in-process bus: cannot claim messages");
            return Err(());
        }
    };
    for m in &claimed.expired {
        log_dead_letter(
            m,
            m.last_status.unwrap_or(0),
            m.last_reason.as_deref().unwrap_or(""),
        );
    }
    if !claimed.expired.is_empty() {
        shared.settled.notify_waiters();
    }
    for message in claimed.due {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Cannot happen (only this loop takes permits); the lease brings it back.
            break;
        };
        running.spawn(deliver(shared.clone(), message, permit));
    }
    Ok(())
}

/// How long the loop may sleep: until the next message is due, at most the poll interval
/// (messages published by other processes, and their expired leases, are found by polling).
async fn pause_before_next(shared: &Shared) -> Duration {
    let poll = shared.poll_interval();
    match shared.queue.bus_backlog(shared.phases.clone()).await {
        Ok(b) => b
            .next_due
            .map_or(poll, |at| (at - Utc::now()).to_std().unwrap_or_default())
            .min(poll),
        Err(_) => poll,
    }
}

fn envelope_for(message: &QueuedMessage) -> PushEnvelope {
    let phase = message.phase.as_deref().unwrap_or_default();
    let mut envelope = PushEnvelope::wrap(
        &message.data,
        message.attributes.clone(),
        message_id(message.id),
        format!("in-process/{phase}"),
    );
    envelope.message.publish_time = Some(message.created_at.to_rfc3339());
    envelope.delivery_attempt = Some(message.attempts);
    envelope
}

/// One delivery attempt of a claimed message.
async fn deliver(shared: Arc<Shared>, message: QueuedMessage, _permit: OwnedSemaphorePermit) {
    let (Some(worker), Some(phase)) = (shared.worker(), message.phase.clone()) else {
        return; // shutting down: the lease expires and the message is delivered later
    };
    let token = ClaimToken {
        id: message.id,
        owner: shared.owner.clone(),
        attempt: message.attempts,
    };
    let body = serde_json::to_vec(&envelope_for(&message)).unwrap_or_default();
    let outcome = renewing_lease(&shared, &token, worker.handle_push(&phase, &body)).await;
    drop(worker);
    let status = outcome.http_status();
    let recorded = if (200..300).contains(&status) {
        shared.queue.bus_ack(message.id, status).await
    } else {
        let reason = outcome.body()["reason"].as_str().unwrap_or("").to_string();
        let settlement = retry_or_dead(&shared, token.attempt);
        if let Settlement::Dead = settlement {
            log_dead_letter(&message, status, &reason);
        }
        shared
            .queue
            .bus_settle(token, status, reason, settlement)
            .await
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(message_id = %message_id(message.id),
            "in-process bus: the claim was lost before the answer was recorded"),
        Err(e) => tracing::warn!(message_id = %message_id(message.id), error = %e,
            "in-process bus: answer not recorded; redelivered when the lease expires"),
    }
    shared.settled.notify_waiters();
}

fn retry_or_dead(shared: &Shared, attempt: u32) -> Settlement {
    if attempt >= shared.config.bus.max_delivery_attempts {
        return Settlement::Dead;
    }
    let backoff = Duration::from_millis(shared.config.bus.retry_backoff_ms) * attempt;
    let backoff = chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
    Settlement::Retry {
        at: Utc::now() + backoff,
    }
}

/// Run `handler`, renewing the claim's lease every third of it so that a long delivery is
/// not taken for a dead one.
async fn renewing_lease<F: Future>(shared: &Shared, token: &ClaimToken, handler: F) -> F::Output {
    let lease = shared.lease();
    let every = lease / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(handler);
    loop {
        tokio::select! {
            out = &mut handler => return out,
            _ = tick.tick() => {
                match shared.queue.bus_renew(token.clone(), lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(message_id = %message_id(token.id),
                        "in-process bus: lease lost during delivery"),
                    Err(e) => tracing::warn!(message_id = %message_id(token.id), error = %e,
                        "in-process bus: cannot renew a lease"),
                }
            }
        }
    }
}

fn log_dead_letter(m: &QueuedMessage, status: u16, reason: &str) {
    tracing::error!(topic = %m.topic, phase = m.phase.as_deref().unwrap_or(""),
        message_id = %message_id(m.id), attempts = m.attempts, status, reason = %reason,
        "message dead-lettered");
}
