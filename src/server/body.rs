//! Reading a push body: declared length checked first, streamed with a cap and a deadline,
//! and counted against a budget shared by all requests, so N concurrent 10 MB bodies cannot
//! hold N × 10 MB. A body is charged [`DECODE_FACTOR`] times its size: decoding copies
//! `message.data`, its base64-decoded payload and the parsed payload while the body is held.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::{DECODE_FACTOR, MAX_BODY_BYTES};

/// A body in memory, holding its share of the budget until dropped.
pub(super) struct BufferedBody {
    pub bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    #[error("too many bodies in memory; retry later")]
    Busy,
    #[error("cannot read body: {0}")]
    Read(String),
}

impl BodyError {
    pub(super) fn http_status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::Timeout(_) => 408,
            BodyError::Busy => 503,
            BodyError::Read(_) => 400,
        }
    }

    pub(super) fn outcome(&self) -> &'static str {
        match self {
            BodyError::TooLarge => "too_large",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Busy => "too_busy",
            BodyError::Read(_) => "bad_message",
        }
    }
}

/// Read `body` (declared `Content-Length`: `declared`) within `deadline`.
pub(super) async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    budget: &Arc<Semaphore>,
    deadline: Duration,
) -> Result<BufferedBody, BodyError> {
    let declared = match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => return Err(BodyError::TooLarge),
        Some(n) => Some(n as usize),
        None => None,
    };
    // A declared length is reserved whole before reading; waiting for it is bounded too.
    let reserved = match declared {
        Some(n) => Some(reserve(budget, n, deadline).await?),
        None => None,
    };
    let read = stream(body, declared, reserved, budget);
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| BodyError::Timeout(deadline))?
}

async fn reserve(
    budget: &Arc<Semaphore>,
    n: usize,
    deadline: Duration,
) -> Result<OwnedSemaphorePermit, BodyError> {
    let n = u32::try_from(n.saturating_mul(DECODE_FACTOR)).map_err(|_| BodyError::TooLarge)?;
    match tokio::time::timeout(deadline, budget.clone().acquire_many_owned(n)).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(BodyError::Busy),
    }
}

async fn stream(
    mut body: Incoming,
    declared: Option<usize>,
    mut permit: Option<OwnedSemaphorePermit>,
    budget: &Arc<Semaphore>,
) -> Result<BufferedBody, BodyError> {
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if buf.len() + chunk.len() > declared.unwrap_or(MAX_BODY_BYTES) {
            return Err(BodyError::TooLarge);
        }
        if declared.is_none() {
            // Chunked: take the budget as the bytes arrive.
            let more =
                u32::try_from(chunk.len() * DECODE_FACTOR).map_err(|_| BodyError::TooLarge)?;
            let p = budget
                .clone()
                .acquire_many_owned(more)
                .await
                .map_err(|_| BodyError::Busy)?;
            match permit.as_mut() {
                Some(held) => held.merge(p),
                None => permit = Some(p),
            }
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(BufferedBody {
        bytes: buf.freeze(),
        _budget: permit,
    })
}
