//! A model of Cloud Run's front end, for the push-authentication tests: an HTTP proxy in
//! front of a worker that does what Cloud Run documents.
//!
//! - Invoker IAM check on (Cloud Run's default): the front end verifies the caller's ID token
//!   itself (signature, audience) and refuses an invalid one before the container sees it;
//!   a valid one is forwarded with its signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE`
//!   (Cloud Run troubleshooting, "Token signature removed":
//!   https://cloud.google.com/run/docs/troubleshooting#signature-removed).
//! - Invoker IAM check off (`invoker_iam_disabled = true`, phasegate's design): the request,
//!   `Authorization` header included, reaches the container unchanged
//!   (https://cloud.google.com/run/docs/securing/managing-access#invoker_check).
//!
//! Only what the tests need: one POST in, one POST out, status and body passed back.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The invoker IAM check of the modelled service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokerCheck {
    /// Cloud Run checks the token and strips its signature.
    On,
    /// `invoker_iam_disabled = true`: Cloud Run passes the request through.
    Disabled,
}

/// What the front end checks a token against (Google's keys, in the model the test's).
#[derive(Clone)]
pub struct FrontEnd {
    pub check: InvokerCheck,
    pub public_pem: &'static str,
    pub audience: &'static str,
    /// The worker's push URL the front end forwards to.
    pub upstream: String,
}

impl FrontEnd {
    /// Serve the model on a random local port; its push URL.
    pub async fn start(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let front = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let front = front.clone();
                        async move { Ok::<_, Infallible>(front.handle(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        format!("http://{addr}/push")
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let authorization = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(400, "bad request body"),
        };
        let forwarded = match self.check {
            InvokerCheck::Disabled => authorization,
            InvokerCheck::On => {
                let Some(token) = authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                else {
                    // Cloud Run: a request without credentials to a private service is 403.
                    return respond(403, "Forbidden: no credentials");
                };
                if !self.verifies(token) {
                    return respond(401, "Unauthorized: invalid ID token");
                }
                let (signed, _) = token.rsplit_once('.').unwrap_or((token, ""));
                Some(format!("Bearer {signed}.SIGNATURE_REMOVED_BY_GOOGLE"))
            }
        };
        let mut out = reqwest::Client::new()
            .post(&self.upstream)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(a) = forwarded {
            out = out.header("authorization", a);
        }
        match out.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                respond(status, &text)
            }
            Err(e) => respond(503, &format!("upstream unreachable: {e}")),
        }
    }

    fn verifies(&self, token: &str) -> bool {
        let Ok(key) = DecodingKey::from_rsa_pem(self.public_pem.as_bytes()) else {
            return false;
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[self.audience]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
    }
}

fn respond(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp
}
