//! The HTTP push endpoint (hyper 1.x): `POST /push`, `POST /push/{phase}`, `GET /healthz`,
//! `GET /metrics`.
//!
//! A single-phase worker (`serve --phase P`, one per Cloud Run service) answers `/push`; a
//! worker for all phases answers `/push/{phase}`. Bodies over 10 MB are refused before they
//! are read. Shutdown is graceful: in-flight requests finish and pending publishes flush.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::PushAuth;
use crate::worker::Worker;

/// Largest accepted push body (Pub/Sub's own message limit is 10 MB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// What the HTTP layer needs.
pub struct ServerState {
    pub worker: Arc<Worker>,
    /// The phase `/push` runs; `None` serves every phase on `/push/{phase}`.
    pub phase: Option<String>,
    pub auth: Option<PushAuth>,
}

fn respond(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET /metrics`: Prometheus text (see [`crate::metrics`]).
fn metrics_response() -> Response<Full<Bytes>> {
    let text = crate::metrics::render().unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn refuse(status: u16, outcome: &str, reason: impl Into<String>) -> Response<Full<Bytes>> {
    let reason = reason.into();
    tracing::warn!(status, outcome, reason = %reason, "request refused");
    respond(status, json!({ "outcome": outcome, "reason": reason }))
}

async fn route(state: Arc<ServerState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let phase = match path.as_str() {
        "/metrics" => return metrics_response(),
        "/healthz" => {
            return if req.method() == Method::GET {
                respond(200, json!({ "status": "ok" }))
            } else {
                refuse(405, "method_not_allowed", "use GET /healthz")
            };
        }
        "/push" => match &state.phase {
            Some(p) => p.clone(),
            None => {
                return refuse(
                    404,
                    "unknown_phase",
                    "this worker serves every phase: push to /push/{phase}",
                );
            }
        },
        p if p.starts_with("/push/") => {
            let name = &p["/push/".len()..];
            match &state.phase {
                Some(own) if own != name => {
                    return refuse(
                        404,
                        "unknown_phase",
                        format!("this worker serves phase `{own}` only"),
                    );
                }
                _ => name.to_string(),
            }
        }
        _ => return refuse(404, "not_found", format!("no route {path}")),
    };
    if req.method() != Method::POST {
        return refuse(405, "method_not_allowed", "pushes are POST requests");
    }
    if let Some(auth) = &state.auth {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        if let Err(e) = auth.check(header).await {
            return refuse(e.http_status(), "unauthorized", e.to_string());
        }
    }
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return refuse(
            413,
            "too_large",
            format!("body over {MAX_BODY_BYTES} bytes"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                refuse(
                    413,
                    "too_large",
                    format!("body over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                refuse(400, "bad_message", format!("cannot read body: {e}"))
            };
        }
    };
    let outcome = {
        let _in_flight = crate::metrics::InFlight::start(&phase);
        state.worker.handle_push(&phase, &body).await
    };
    crate::telemetry::push_done(
        state.worker.config(),
        &phase,
        &path,
        &body,
        &outcome,
        started,
    );
    respond(outcome.http_status(), outcome.body())
}

/// Serve until `shutdown` resolves, then let in-flight requests finish and flush publishes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::metrics::install();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    let span = crate::telemetry::request_span(req.headers());
                    async move { Ok::<_, Infallible>(route(state, req).instrument(span).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: finishing in-flight pushes");
    graceful.shutdown().await;
    state.worker.flush().await;
    tracing::info!("shutdown complete");
    Ok(())
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
