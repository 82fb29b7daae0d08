//! Faults in front of Google's Firestore emulator, which never fails a request: an HTTP
//! proxy that forwards every call and, on a chosen one, answers what Firestore documents for
//! its transient errors instead (https://cloud.google.com/firestore/docs/understand-error-codes:
//! `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED` — "retry with exponential backoff").
//!
//! A rule picks the `n`th call of a method (`batchGet`, `commit`) and fails it either before
//! it reaches the emulator (nothing happened) or after (the write applied, its answer lost —
//! the ambiguous failure a retried commit must survive).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// Fail the `nth` (1-based) call of `method`, `after` it was applied or before.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: &'static str,
    pub nth: usize,
    pub after: bool,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    calls: Vec<(String, usize)>,
    injected: usize,
}

/// The proxy: its `host:port` and what it did.
#[derive(Clone)]
pub struct FirestoreFaults {
    pub host: String,
    state: Arc<Mutex<State>>,
}

impl FirestoreFaults {
    /// Serve the proxy in front of the emulator at `upstream` (`host:port`).
    pub async fn start(upstream: String, faults: Vec<Fault>) -> FirestoreFaults {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            faults,
            ..State::default()
        }));
        let proxy = FirestoreFaults {
            host: addr.to_string(),
            state: Arc::clone(&state),
        };
        let client = reqwest::Client::new();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, client, upstream) =
                    (Arc::clone(&state), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (state, client, upstream) =
                            (Arc::clone(&state), client.clone(), upstream.clone());
                        async move { Ok::<_, Infallible>(handle(req, &state, &client, &upstream).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        proxy
    }

    /// Faults answered so far.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = path.rsplit(':').next().unwrap_or_default().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let Ok(body) = body else {
        return respond(400, Bytes::from_static(b"bad body"));
    };
    let fault = {
        let mut s = state.lock().unwrap();
        let n = match s.calls.iter_mut().find(|(m, _)| *m == method) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                s.calls.push((method.clone(), 1));
                1
            }
        };
        let hit = s
            .faults
            .iter()
            .find(|f| f.method == method && f.nth == n)
            .cloned();
        if hit.is_some() {
            s.injected += 1;
        }
        hit
    };
    let unavailable = || {
        respond(
            503,
            Bytes::from_static(
                br#"{"error":{"code":503,"message":"model: the service is unavailable","status":"UNAVAILABLE"}}"#,
            ),
        )
    };
    if fault.as_ref().is_some_and(|f| !f.after) {
        return unavailable();
    }
    let forwarded = client
        .post(format!("http://{upstream}{path}"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer owner")
        .body(body)
        .send()
        .await;
    let Ok(resp) = forwarded else {
        return unavailable();
    };
    if fault.is_some() {
        // Applied by the emulator; the caller never learns it.
        return unavailable();
    }
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    respond(status, bytes)
}

fn respond(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}
