//! The HTTP push endpoint (hyper 1.x): `POST /push`, `POST /push/{phase}`, `GET /healthz`.
//!
//! A single-phase worker (`serve --phase P`, one per Cloud Run service) answers `/push`; a
//! worker for all phases answers `/push/{phase}`. The server bounds what a client can hold
//! ([`ServerLimits`]): header and body read times, open connections, pushes in flight, body
//! bytes in memory. A push runs detached from its request, so a client that hangs up does not
//! cut a run short. Shutdown stops accepting, lets connections and pushes finish within
//! a bounded drain, then flushes pending publishes.

mod accept;
mod body;
mod limits;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::auth::PushAuth;
use crate::worker::Worker;
use accept::AcceptBackoff;
use limits::Gates;
pub use limits::{MAX_BODY_BYTES, ServerLimits};

/// What the HTTP layer needs.
pub struct ServerState {
    pub worker: Arc<Worker>,
    /// The phase `/push` runs; `None` serves every phase on `/push/{phase}`.
    pub phase: Option<String>,
    pub auth: Option<PushAuth>,
}

/// One running server: its state, limits and gates.
struct Ctx {
    state: Arc<ServerState>,
    limits: ServerLimits,
    gates: Gates,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: u16, body: serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == 503 {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn refuse(status: u16, outcome: &str, reason: impl Into<String>) -> Resp {
    let reason = reason.into();
    tracing::warn!(status, outcome, reason = %reason, "request refused");
    respond(status, json!({ "outcome": outcome, "reason": reason }))
}

/// A refusal before any work: status, outcome label, reason.
type Refusal = (u16, &'static str, String);

/// The phase a push path addresses, or why it is refused.
fn phase_of(state: &ServerState, path: &str) -> Result<String, Refusal> {
    match (path, &state.phase) {
        ("/push", Some(p)) => Ok(p.clone()),
        ("/push", None) => Err((
            404,
            "unknown_phase",
            "this worker serves every phase: push to /push/{phase}".into(),
        )),
        (p, own) if p.starts_with("/push/") => {
            let name = &p["/push/".len()..];
            match own {
                Some(own) if own != name => Err((
                    404,
                    "unknown_phase",
                    format!("this worker serves phase `{own}` only"),
                )),
                _ => Ok(name.to_string()),
            }
        }
        _ => Err((404, "not_found", format!("no route {path}"))),
    }
}

/// `GET /metrics`: Prometheus text (see [`crate::metrics`]).
fn metrics_response() -> Resp {
    let text = crate::metrics::render().unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn route(ctx: Arc<Ctx>, req: Request<Incoming>) -> Resp {
    if req.uri().path() == "/metrics" {
        return metrics_response();
    }
    if req.uri().path() == "/healthz" {
        return if req.method() == Method::GET {
            respond(200, json!({ "status": "ok" }))
        } else {
            refuse(405, "method_not_allowed", "use GET /healthz")
        };
    }
    let relaying = req.uri().path() == "/relay";
    let phase = match phase_of(&ctx.state, req.uri().path()) {
        Ok(p) => p,
        Err(_) if relaying => String::new(),
        Err((status, outcome, reason)) => return refuse(status, outcome, reason),
    };
    if req.method() != Method::POST {
        return refuse(
            405,
            "method_not_allowed",
            "pushes and relays are POST requests",
        );
    }
    if let Some(auth) = &ctx.state.auth {
        let (headers, query) = (req.headers(), req.uri().query());
        let checked = if relaying {
            auth.check_relay(headers, query).await
        } else {
            auth.check(headers, query).await
        };
        if let Err(e) = checked {
            return refuse(e.http_status(), "unauthorized", e.to_string());
        }
    }
    if relaying {
        return relay(&ctx).await;
    }
    push(ctx, phase, req).await
}

/// How long one `POST /relay` starts new events for: well inside Cloud Scheduler's attempt
/// deadline for the relay jobs (120 s, terraform/scheduler.tf), which cancels the request.
pub const RELAY_BUDGET: std::time::Duration = std::time::Duration::from_secs(90);

/// `POST /relay`: the outbox sweep of this worker's phase (every phase when it serves them
/// all), now. Cloud Scheduler calls it, so an event owed by a worker scaled to zero is
/// published without waiting for the next push. 200 with the count; 503 when an owed event
/// could not be published (the job's failure is what the Scheduler alert sees).
async fn relay(ctx: &Ctx) -> Resp {
    let own: Vec<String> = ctx.state.phase.iter().cloned().collect();
    let report = ctx.state.worker.relay(&own, RELAY_BUDGET).await;
    tracing::info!(
        published = report.published,
        failed = report.failed.len(),
        left = report.left,
        "relay summary"
    );
    let status = if report.failed.is_empty() { 200 } else { 503 };
    respond(
        status,
        json!({ "outcome": "relayed", "published": report.published,
                "failed": report.failed, "left": report.left }),
    )
}

/// Read the body within the limits and run the push detached from the request.
async fn push(ctx: Arc<Ctx>, phase: String, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let Ok(slot) = ctx.gates.in_flight.clone().try_acquire_owned() else {
        return refuse(
            503,
            "too_busy",
            format!("{} pushes in flight; retry later", ctx.limits.max_in_flight),
        );
    };
    let declared = match req.headers().get(hyper::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => return refuse(400, "bad_message", "Content-Length is not a number"),
        },
    };
    let body = match body::read_body(
        req.into_body(),
        declared,
        &ctx.gates.body_budget,
        ctx.limits.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return refuse(e.http_status(), e.outcome(), e.to_string()),
    };
    let worker = ctx.state.worker.clone();
    let started = Instant::now();
    let span = tracing::Span::current();
    let run = tokio::spawn(
        async move {
            let _slot = slot;
            let outcome = {
                let _in_flight = crate::metrics::InFlight::start(&phase);
                worker.handle_push(&phase, &body.bytes).await
            };
            crate::telemetry::push_done(
                worker.config(),
                &phase,
                &path,
                &body.bytes,
                &outcome,
                started,
            );
            outcome
        }
        .instrument(span),
    );
    match run.await {
        Ok(outcome) => respond(outcome.http_status(), outcome.body()),
        Err(e) => {
            tracing::error!(error = %e, "push handler panicked");
            respond(
                500,
                json!({ "outcome": "internal_error", "reason": "the push handler failed; see the logs" }),
            )
        }
    }
}

/// Serve with the default [`ServerLimits`] until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, state, ServerLimits::default(), shutdown).await
}

/// Serve until `shutdown` resolves; then stop accepting, drain within
/// [`ServerLimits::shutdown_drain`], and flush pending publishes.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<ServerState>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::metrics::install();
    let gates = Gates::new(&limits);
    let ctx = Arc::new(Ctx {
        state,
        limits,
        gates,
    });
    let refresher = ctx.state.auth.as_ref().map(|a| a.keys().spawn_refresher());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    accept_until(&ctx, listener, &mut connections, drain_rx, shutdown).await;
    let started = Instant::now();
    tracing::info!("shutting down: stopped accepting; draining connections and pushes");
    let _ = drain_tx.send(true);
    drain(&ctx, &mut connections, started + ctx.limits.shutdown_drain).await;
    if let Some(r) = refresher {
        r.abort();
    }
    let flush_time = ctx
        .limits
        .shutdown_drain
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    if tokio::time::timeout(flush_time, ctx.state.worker.flush())
        .await
        .is_err()
    {
        tracing::warn!(?flush_time, "pending publishes not flushed in time");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The accept loop: one connection per permit, backoff on errors; the listener is dropped
/// (no more connections accepted) when `shutdown` resolves.
async fn accept_until(
    ctx: &Arc<Ctx>,
    listener: TcpListener,
    connections: &mut JoinSet<()>,
    drain: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = ctx.gates.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                let conn = connection(ctx.clone(), stream, drain.clone());
                connections.spawn(async move {
                    let _permit = permit;
                    conn.await;
                });
            }
            Err(e) => {
                let pause = backoff.failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}

/// Serve one connection; on drain, finish the request in progress and close.
async fn connection(
    ctx: Arc<Ctx>,
    stream: tokio::net::TcpStream,
    mut drain: watch::Receiver<bool>,
) {
    let service = {
        let ctx = ctx.clone();
        service_fn(move |req: Request<Incoming>| {
            let ctx = ctx.clone();
            let span = crate::telemetry::request_span(req.headers());
            async move { Ok::<_, Infallible>(route(ctx, req).instrument(span).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drain.wait_for(|d| *d).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection closed with error");
    }
}

/// Wait for connections and detached pushes to finish, until `deadline`; then close what
/// is left.
async fn drain(ctx: &Ctx, connections: &mut JoinSet<()>, deadline: Instant) {
    let deadline = tokio::time::Instant::from_std(deadline);
    let all_pushes = u32::try_from(ctx.limits.max_in_flight).unwrap_or(u32::MAX);
    let finished = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
        let _ = ctx.gates.in_flight.acquire_many(all_pushes).await;
    })
    .await;
    if finished.is_err() {
        let pushes = ctx
            .limits
            .max_in_flight
            .saturating_sub(ctx.gates.in_flight.available_permits());
        tracing::warn!(
            connections = connections.len(),
            pushes,
            drain = ?ctx.limits.shutdown_drain,
            "drain deadline reached: closing the remaining connections"
        );
        connections.abort_all();
    }
}

/// Resolves on SIGTERM (Cloud Run) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
