//! Push authentication: tokens signed locally, verified against a locally served JWKS. Every
//! forged or wrong token is refused with 401/403 and writes nothing.

mod common;

use std::sync::Arc;

use base64::Engine;
use common::{TestEnv, d};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use phasegate::auth::PushAuth;
use phasegate::config::{AuthConfig, AuthMode};
use phasegate::envelope::PushEnvelope;
use phasegate::server::{ServerState, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIGNER: &str = include_str!("fixtures/push-signer.pem");
const OTHER: &str = include_str!("fixtures/other-signer.pem");
const PUBLIC: &str = include_str!("fixtures/push-signer.pub.pem");
const JWKS: &str = include_str!("fixtures/jwks.json");
const AUDIENCE: &str = "https://raw-worker.example.run.app/push";
const PUSHER: &str = "pubsub-push@phasegate-test.iam.gserviceaccount.com";

/// Serve the JWKS over HTTP on a random port.
async fn jwks_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                    JWKS.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
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
}

async fn fixture() -> Fixture {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let auth = PushAuth::from_config(&AuthConfig {
        mode: AuthMode::Oidc,
        audience: Some(AUDIENCE.into()),
        allowed_emails: vec![PUSHER.into()],
        jwks_url: Some(jwks_server().await),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        worker: env.app.worker.clone(),
        phase: Some("raw".into()),
        auth,
    });
    tokio::spawn(serve(listener, state, std::future::pending()));
    Fixture { env, url }
}

async fn push(f: &Fixture, authorization: Option<String>) -> u16 {
    let body = PushEnvelope::wrap(
        &json!({"data_date": "2024-01-01"}),
        [("skip_downstream_trigger".to_string(), "true".to_string())].into(),
        "auth-1".into(),
        "s".into(),
    );
    let mut req = reqwest::Client::new().post(&f.url).json(&body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap().status().as_u16()
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
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        (
            "expired",
            Some(good(&with("exp", json!(now() - 3600)))),
            401,
        ),
        (
            "not yet valid",
            Some(good(&with("nbf", json!(now() + 3600))).clone()),
            401,
        ),
        (
            "wrong audience",
            Some(good(&with("aud", json!("https://elsewhere.run.app")))),
            401,
        ),
        (
            "wrong issuer",
            Some(good(&with("iss", json!("https://evil.example.com")))),
            401,
        ),
        (
            "wrong email",
            Some(good(&with(
                "email",
                json!("intruder@evil.iam.gserviceaccount.com"),
            ))),
            403,
        ),
        (
            "email not verified",
            Some(good(&with("email_verified", json!(false)))),
            403,
        ),
        (
            "unknown kid",
            Some(format!("Bearer {}", sign(&claims(), "no-such-key", SIGNER))),
            401,
        ),
        (
            "bad signature",
            Some(format!("Bearer {}", sign(&claims(), "test-key-1", OTHER))),
            401,
        ),
        ("alg none", Some(format!("Bearer {alg_none}")), 401),
        (
            "HS256 signed with the public key",
            Some(format!("Bearer {hs256_with_public_key}")),
            401,
        ),
        ("missing header", None, 401),
        ("malformed header", Some("Basic dXNlcjpwYXNz".into()), 401),
        ("malformed token", Some("Bearer not-a-jwt".into()), 401),
    ];
    let total = cases.len();
    for (name, header, expected) in cases {
        assert_eq!(push(&f, header).await, expected, "{name}");
    }
    assert_eq!(total, 13);
    assert_eq!(
        f.env.latest("ingest", d("2024-01-01")).await,
        None,
        "nothing was written"
    );
}

#[test]
fn oidc_mode_needs_an_audience_and_allowed_emails() {
    let e = PushAuth::from_config(&AuthConfig {
        mode: AuthMode::Oidc,
        audience: None,
        allowed_emails: vec![PUSHER.into()],
        jwks_url: None,
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("auth.audience"));
    let e = PushAuth::from_config(&AuthConfig {
        mode: AuthMode::Oidc,
        audience: Some(AUDIENCE.into()),
        allowed_emails: vec![],
        jwks_url: None,
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("auth.allowed_emails"));
}
