//! Push authentication: tokens signed locally, verified against a locally served JWKS. Every
//! forged or wrong token is refused with 401/403 and writes nothing; valid pushes are never
//! refused because of the key cache (cold, flooded with unknown key ids, or hanging).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use common::cloud_run::{FrontEnd, InvokerCheck};
use common::{TestEnv, d};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phasegate::auth::PushAuth;
use phasegate::auth::jwks::Timing;
use phasegate::config::{AuthConfig, AuthMode};
use phasegate::envelope::PushEnvelope;
use phasegate::server::{ServerState, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIGNER: &str = include_str!("../fixtures/push-signer.pem");
const OTHER: &str = include_str!("../fixtures/other-signer.pem");
const PUBLIC: &str = include_str!("../fixtures/push-signer.pub.pem");
const JWKS: &str = include_str!("../fixtures/jwks.json");
const AUDIENCE: &str = "https://raw-worker.example.run.app/push";
const PUSHER: &str = "pubsub-push@phasegate-test.iam.gserviceaccount.com";
const RELAYER: &str = "pg-test-sched@phasegate-test.iam.gserviceaccount.com";

/// A JWKS endpoint on a random port that counts the requests it receives and, once told to
/// hang, never answers again.
#[derive(Clone)]
struct Jwks {
    url: String,
    requests: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
}

impl Jwks {
    async fn start() -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks = Jwks {
            url: format!("http://{}/certs", listener.local_addr().unwrap()),
            requests: Arc::new(AtomicUsize::new(0)),
            hang: Arc::new(AtomicBool::new(false)),
        };
        let (requests, hang) = (jwks.requests.clone(), jwks.hang.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (requests, hang) = (requests.clone(), hang.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    requests.fetch_add(1, Ordering::SeqCst);
                    if hang.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                        JWKS.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        jwks
    }

    fn fetches(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": PUSHER,
        "email_verified": true,
        "sub": "1234567890",
        "iat": now() - 10,
        "exp": now() + 3600,
    })
}

fn sign(claims: &Value, kid: &str, pem: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

struct Fixture {
    env: TestEnv,
    url: String,
    jwks: Jwks,
}

async fn fixture() -> Fixture {
    fixture_with(Timing::default()).await
}

/// A worker for phase `raw` with OIDC on; its key cache starts cold.
async fn fixture_with(timing: Timing) -> Fixture {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let jwks = Jwks::start().await;
    let auth = PushAuth::with_timing(
        &AuthConfig {
            mode: AuthMode::Oidc,
            audience: Some(AUDIENCE.into()),
            allowed_emails: vec![PUSHER.into()],
            jwks_url: Some(jwks.url.clone()),
            relay_emails: vec![RELAYER.into()],
        },
        timing,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        worker: env.app.worker.clone(),
        phase: Some("raw".into()),
        auth,
    });
    tokio::spawn(serve(listener, state, std::future::pending()));
    Fixture { env, url, jwks }
}

/// A push for `date` (message id `id`) with the given Authorization header values.
async fn push_to(url: &str, date: &str, id: &str, authorization: &[String]) -> u16 {
    let body = PushEnvelope::wrap(
        &json!({ "data_date": date }),
        [("skip_downstream_trigger".to_string(), "true".to_string())].into(),
        id.into(),
        "s".into(),
    );
    let mut headers = reqwest::header::HeaderMap::new();
    for a in authorization {
        headers.append("authorization", a.parse().unwrap());
    }
    let req = reqwest::Client::new()
        .post(url)
        .headers(headers)
        .json(&body);
    req.send().await.unwrap().status().as_u16()
}

async fn push(f: &Fixture, authorization: Option<String>) -> u16 {
    let headers: Vec<String> = authorization.into_iter().collect();
    push_to(&f.url, "2024-01-01", "auth-1", &headers).await
}

/// One valid token, signed once (RSA signing is slow in debug builds).
fn valid() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| format!("Bearer {}", sign(&claims(), "test-key-1", SIGNER)))
        .clone()
}

/// A token naming key id `kid` (its signature is never reached: the key id is unknown).
fn with_kid(kid: &str) -> String {
    let header = b64(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}));
    let rest = valid().split_once('.').unwrap().1.to_string();
    format!("Bearer {header}.{rest}")
}

fn ledger_rows(env: &TestEnv) -> i64 {
    let c = rusqlite::Connection::open(env.db_path()).unwrap();
    c.query_row("SELECT COUNT(*) FROM processor_run_history", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[tokio::test]
async fn a_valid_token_passes() {
    let f = fixture().await;
    let token = sign(&claims(), "test-key-1", SIGNER);
    assert_eq!(push(&f, Some(format!("Bearer {token}"))).await, 200);
    assert!(f.env.latest("ingest", d("2024-01-01")).await.is_some());
}

#[tokio::test]
async fn forged_and_wrong_tokens_are_refused_without_side_effects() {
    let f = fixture().await;
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let good = |c: &Value| format!("Bearer {}", sign(c, "test-key-1", SIGNER));
    let hs256_with_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("test-key-1".into());
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(PUBLIC.as_bytes())).unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "test-key-1"})),
        b64(&claims())
    );
    let forged = good(&with(
        "email",
        json!("intruder@evil.iam.gserviceaccount.com"),
    ));
    let one = |h: String| vec![h];
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        ("expired", one(good(&with("exp", json!(now() - 3600)))), 401),
        (
            "not yet valid",
            one(good(&with("nbf", json!(now() + 3600)))),
            401,
        ),
        (
            "wrong audience",
            one(good(&with("aud", json!("https://elsewhere.run.app")))),
            401,
        ),
        (
            "wrong issuer",
            one(good(&with("iss", json!("https://evil.example.com")))),
            401,
        ),
        (
            "issuer not exactly Google's",
            one(good(&with("iss", json!("https://accounts.google.com/")))),
            401,
        ),
        ("missing aud", one(good(&without("aud"))), 401),
        ("missing iss", one(good(&without("iss"))), 401),
        ("missing exp", one(good(&without("exp"))), 401),
        ("missing iat", one(good(&without("iat"))), 401),
        (
            "iat in the future",
            one(good(&with("iat", json!(now() + 3600)))),
            401,
        ),
        (
            "iat not a number",
            one(good(&with("iat", json!("yesterday")))),
            401,
        ),
        ("wrong email", one(forged.clone()), 403),
        ("missing email", one(good(&without("email"))), 403),
        (
            "email not a string",
            one(good(&with("email", json!([PUSHER])))),
            403,
        ),
        (
            "email not verified",
            one(good(&with("email_verified", json!(false)))),
            403,
        ),
        (
            "missing email_verified",
            one(good(&without("email_verified"))),
            403,
        ),
        (
            "email_verified the string \"false\"",
            one(good(&with("email_verified", json!("false")))),
            403,
        ),
        (
            "email_verified the string \"true\"",
            one(good(&with("email_verified", json!("true")))),
            403,
        ),
        (
            "unknown kid",
            one(format!("Bearer {}", sign(&claims(), "no-such-key", SIGNER))),
            401,
        ),
        (
            "bad signature",
            one(format!("Bearer {}", sign(&claims(), "test-key-1", OTHER))),
            401,
        ),
        ("alg none", one(format!("Bearer {alg_none}")), 401),
        (
            "HS256 signed with the public key",
            one(format!("Bearer {hs256_with_public_key}")),
            401,
        ),
        ("missing header", vec![], 401),
        ("malformed header", one("Basic dXNlcjpwYXNz".into()), 401),
        ("malformed token", one("Bearer not-a-jwt".into()), 401),
        (
            "lowercase bearer",
            one(valid().replacen("Bearer", "bearer", 1)),
            401,
        ),
        (
            "two Authorization headers, valid then forged",
            vec![valid(), forged.clone()],
            401,
        ),
        (
            "two valid Authorization headers",
            vec![valid(), valid()],
            401,
        ),
    ];
    let total = cases.len();
    let mut refused = 0;
    for (name, headers, expected) in cases {
        assert_eq!(
            push_to(&f.url, "2024-01-01", "auth-1", &headers).await,
            expected,
            "{name}"
        );
        refused += 1;
    }
    // A token in the URL, alone or beside a valid header.
    let token = valid().trim_start_matches("Bearer ").to_string();
    let in_url = format!("{}?access_token={token}", f.url);
    assert_eq!(
        push_to(&in_url, "2024-01-01", "auth-1", &[]).await,
        401,
        "token in the query string"
    );
    assert_eq!(
        push_to(&in_url, "2024-01-01", "auth-1", &[valid()]).await,
        401,
        "token in the query string and the header"
    );
    refused += 2;
    assert_eq!((refused, total + 2), (30, 30));
    assert_eq!(ledger_rows(&f.env), 0, "nothing was written");
    // The same server still accepts the valid token.
    assert_eq!(push(&f, Some(valid())).await, 200);
}

#[tokio::test]
async fn twenty_concurrent_valid_pushes_at_cold_start_all_pass_on_one_fetch() {
    let f = fixture().await;
    let pushes = (1..=20).map(|day| {
        let url = f.url.clone();
        tokio::spawn(async move {
            let date = format!("2024-02-{day:02}");
            push_to(&url, &date, &format!("cold-{day}"), &[valid()]).await
        })
    });
    for p in pushes.collect::<Vec<_>>() {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(f.jwks.fetches(), 1, "waiters shared the one start-up fetch");
}

#[tokio::test]
async fn a_flood_of_unknown_key_ids_costs_no_fetches_and_starves_no_valid_push() {
    let f = fixture().await;
    assert_eq!(push(&f, Some(valid())).await, 200);
    assert_eq!(f.jwks.fetches(), 1);
    let forged = (0..200).map(|i| {
        let url = f.url.clone();
        let header = with_kid(&format!("forged-{i}"));
        tokio::spawn(async move { push_to(&url, "2024-01-01", "flood", &[header]).await })
    });
    let valid_pushes = (1..=20).map(|day| {
        let url = f.url.clone();
        tokio::spawn(async move {
            push_to(
                &url,
                &format!("2024-03-{day:02}"),
                &format!("v-{day}"),
                &[valid()],
            )
            .await
        })
    });
    let forged: Vec<_> = forged.collect();
    for p in valid_pushes.collect::<Vec<_>>() {
        assert_eq!(p.await.unwrap(), 200);
    }
    for p in forged {
        assert_eq!(p.await.unwrap(), 401);
    }
    assert_eq!(
        f.jwks.fetches(),
        1,
        "unknown key ids within the refetch interval fetch nothing"
    );
}

#[tokio::test]
async fn a_hanging_jwks_endpoint_does_not_fail_pushes_with_a_cached_key() {
    let f = fixture_with(Timing {
        fetch_timeout: Duration::from_secs(60),
        min_refetch: Duration::ZERO,
        ..Timing::default()
    })
    .await;
    assert_eq!(push(&f, Some(valid())).await, 200);
    f.jwks.hang.store(true, Ordering::SeqCst);
    // An unknown key id starts a fetch that hangs, holding the single-flight slot.
    let stuck = {
        let url = f.url.clone();
        let header = with_kid("rotated-key");
        tokio::spawn(async move { push_to(&url, "2024-01-01", "stuck", &[header]).await })
    };
    while f.jwks.fetches() < 2 {
        tokio::task::yield_now().await;
    }
    let valid_pushes = (1..=20).map(|day| {
        let url = f.url.clone();
        tokio::spawn(async move {
            push_to(
                &url,
                &format!("2024-04-{day:02}"),
                &format!("h-{day}"),
                &[valid()],
            )
            .await
        })
    });
    for p in valid_pushes.collect::<Vec<_>>() {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert!(!stuck.is_finished(), "the fetch is still hanging");
    stuck.abort();
}

#[test]
fn oidc_mode_needs_an_audience_and_allowed_emails() {
    let e = PushAuth::from_config(&AuthConfig {
        mode: AuthMode::Oidc,
        audience: None,
        allowed_emails: vec![PUSHER.into()],
        jwks_url: None,
        relay_emails: vec![],
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("auth.audience"));
    let e = PushAuth::from_config(&AuthConfig {
        mode: AuthMode::Oidc,
        audience: Some(AUDIENCE.into()),
        allowed_emails: vec![],
        jwks_url: None,
        relay_emails: vec![],
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("auth.allowed_emails"));
}

#[tokio::test]
async fn no_keys_ever_loaded_is_503_not_401_and_writes_nothing() {
    let f = fixture_with(Timing {
        fetch_timeout: Duration::from_millis(200),
        ..Timing::default()
    })
    .await;
    f.jwks.hang.store(true, Ordering::SeqCst);
    assert_eq!(
        push(&f, Some(valid())).await,
        503,
        "retryable: the JWKS never answered"
    );
    assert_eq!(ledger_rows(&f.env), 0);
    f.jwks.hang.store(false, Ordering::SeqCst);
    // Once the endpoint answers, the redelivery passes (cold retries are at most 1 s apart).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match push(&f, Some(valid())).await {
            200 => break,
            503 => assert!(std::time::Instant::now() < deadline, "keys never loaded"),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The worker's push URL behind the Cloud Run front-end model.
async fn behind_cloud_run(f: &Fixture, check: InvokerCheck) -> String {
    FrontEnd {
        check,
        public_pem: PUBLIC,
        audience: AUDIENCE,
        upstream: f.url.clone(),
    }
    .start()
    .await
}

#[tokio::test]
async fn behind_cloud_run_as_deployed_valid_pushes_pass_and_forged_ones_are_refused() {
    // terraform/run.tf deploys with invoker_iam_disabled = true: the token reaches the worker
    // as Pub/Sub signed it, and the worker is the one check.
    let f = fixture().await;
    let front = behind_cloud_run(&f, InvokerCheck::Disabled).await;
    assert_eq!(push_to(&front, "2024-01-01", "cr-1", &[valid()]).await, 200);
    assert!(f.env.latest("ingest", d("2024-01-01")).await.is_some());
    let rows = ledger_rows(&f.env);
    let forged = format!("Bearer {}", sign(&claims(), "test-key-1", OTHER));
    let stripped = format!(
        "{}.SIGNATURE_REMOVED_BY_GOOGLE",
        valid().rsplit_once('.').unwrap().0
    );
    for (token, why) in [
        (forged, "signed with another key"),
        (
            stripped.clone(),
            "a stripped token replayed through an open front end",
        ),
    ] {
        assert_eq!(
            push_to(&front, "2024-01-02", "cr-2", &[token]).await,
            401,
            "{why}"
        );
    }
    assert_eq!(push_to(&front, "2024-01-02", "cr-3", &[]).await, 401);
    // The same stripped token sent straight to the worker: refused too.
    assert_eq!(
        push_to(&f.url, "2024-01-02", "cr-4", &[stripped]).await,
        401
    );
    assert_eq!(ledger_rows(&f.env), rows, "refusals write nothing");
}

#[tokio::test]
async fn with_the_invoker_check_on_every_push_is_refused_and_the_reason_names_the_fix() {
    // What a deployment that kept Cloud Run's invoker check would see: the front end accepts
    // the token and strips its signature; the worker refuses it rather than trust claims it
    // cannot verify, and says which setting to change.
    let f = fixture().await;
    let front = behind_cloud_run(&f, InvokerCheck::On).await;
    let body = PushEnvelope::wrap(
        &json!({ "data_date": "2024-01-01" }),
        Default::default(),
        "cr-on-1".into(),
        "s".into(),
    );
    let resp = reqwest::Client::new()
        .post(&front)
        .header("authorization", valid())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("SIGNATURE_REMOVED") || text.contains("signature removed by Google"),
        "{text}"
    );
    assert!(text.contains("invoker_iam_disabled"), "{text}");
    // A forged token never gets past the front end.
    let forged = format!("Bearer {}", sign(&claims(), "test-key-1", OTHER));
    assert_eq!(
        push_to(&front, "2024-01-01", "cr-on-2", &[forged]).await,
        401
    );
    assert_eq!(ledger_rows(&f.env), 0);
}

#[tokio::test]
async fn the_relay_identity_may_relay_and_may_not_push() {
    let f = fixture().await;
    let relay_url = f.url.replace("/push", "/relay");
    let mut c = claims();
    c["email"] = json!(RELAYER);
    let relayer = format!("Bearer {}", sign(&c, "test-key-1", SIGNER));
    let post = |url: String, token: Option<String>| async move {
        let mut req = reqwest::Client::new()
            .post(url)
            .json(&json!({ "relay": "raw" }));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        req.send().await.unwrap().status().as_u16()
    };
    assert_eq!(post(relay_url.clone(), Some(relayer.clone())).await, 200);
    assert_eq!(
        post(relay_url.clone(), Some(valid())).await,
        200,
        "pushers may relay"
    );
    assert_eq!(post(relay_url.clone(), None).await, 401);
    assert_eq!(
        push(&f, Some(relayer)).await,
        403,
        "the relay identity may not push"
    );
    assert_eq!(ledger_rows(&f.env), 0);
}
