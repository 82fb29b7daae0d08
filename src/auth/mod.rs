//! Push authentication: the OIDC bearer token Pub/Sub attaches to every push.
//!
//! The request must carry exactly one `Authorization: Bearer <JWT>` header and no token in
//! its URL. The token's key id is looked up in the [`jwks::JwksCache`]; the RS256 signature
//! and every claim are checked by [`claims`] (`jsonwebtoken`, with all of `aud`, `iss`,
//! `exp`, `iat`, `email`, `email_verified` required).
//!
//! Design (issue 23): the worker is the one check. The Cloud Run service runs with the invoker
//! IAM check off (`invoker_iam_disabled = true`, ingress `internal`), so the token reaches the
//! worker as Pub/Sub signed it and every push is verified in full here: signature, audience,
//! issuer, expiry and the pusher's email. With the IAM check on, Cloud Run would strip the
//! signature (`SIGNATURE_REMOVED_BY_GOOGLE`) and a worker trusting unsigned claims would trust
//! whatever reached it; such a token is refused with [`AuthError::SignatureRemoved`], which
//! names the misconfiguration.
//!
//! Why not `google-cloud-auth`'s idtoken verifier (1.19.0): it indexes `claims["email"]`
//! and panics on a token without `email` when one email is configured
//! (`credentials/idtoken/verifier.rs`), checks `aud`/`iss` only when present, and holds its
//! JWKS cache lock across an unbounded fetch. Decoding claims ourselves before delegating
//! would still leave its cache; owning the cache is what makes valid pushes never wait.

pub mod claims;
pub mod jwks;

use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use crate::config::{AuthConfig, AuthMode};
use claims::ClaimRules;
use jwks::{JwksCache, Lookup, Timing};

/// Longest accepted token (Google ID tokens are about 1 KB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest accepted key id.
const MAX_KID_BYTES: usize = 256;
/// What Cloud Run's front end puts in place of the signature of a token it has verified.
const SIGNATURE_REMOVED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";
/// Query parameters that carry a bearer token in a URL (RFC 6750 §2.3 and its ID-token kin).
const TOKEN_PARAMS: [&str; 2] = ["access_token", "id_token"];

/// Why a push was refused before anything else happened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("malformed Authorization header: expected exactly one `Bearer <token>`")]
    Malformed,
    #[error("token in the URL refused: send it as `Authorization: Bearer <token>`")]
    TokenInUrl,
    /// Cloud Run's invoker IAM check verified the token and replaced its signature with
    /// `SIGNATURE_REMOVED_BY_GOOGLE` (Cloud Run troubleshooting, "signature-removed"): the
    /// service was deployed with the check on, which phasegate's design turns off.
    #[error(
        "token signature removed by Google: Cloud Run's invoker IAM check is on in front of \
         a worker that verifies every token itself; deploy the service with \
         invoker_iam_disabled = true (terraform/run.tf)"
    )]
    SignatureRemoved,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token identity not allowed: {0}")]
    Forbidden(String),
    #[error("signing keys unavailable (JWKS endpoint unreachable); retry later")]
    KeysUnavailable,
}

impl AuthError {
    /// 401 when the caller is not authenticated, 403 when it is but may not push, 503 when
    /// no signing key was ever loaded (a redelivery will succeed once the JWKS answers).
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            AuthError::KeysUnavailable => 503,
            _ => 401,
        }
    }
}

/// A configured verifier of push tokens.
pub struct PushAuth {
    keys: Arc<JwksCache>,
    /// `/push`: the pushers.
    rules: ClaimRules,
    /// `/relay`: the pushers and the relay identities.
    relay_rules: ClaimRules,
}

/// Authentication is on but not completely configured.
#[derive(Debug, thiserror::Error)]
#[error("auth.{key}: {message}")]
pub struct AuthConfigError {
    pub key: &'static str,
    pub message: &'static str,
}

impl PushAuth {
    /// `None` when authentication is explicitly disabled (a warning is logged).
    pub fn from_config(config: &AuthConfig) -> Result<Option<PushAuth>, AuthConfigError> {
        Self::with_timing(config, Timing::default())
    }

    /// As [`PushAuth::from_config`], with the JWKS cache's clocks given.
    pub fn with_timing(
        config: &AuthConfig,
        timing: Timing,
    ) -> Result<Option<PushAuth>, AuthConfigError> {
        if config.mode == AuthMode::Disabled {
            tracing::warn!(
                "push authentication is DISABLED (auth.mode = \"disabled\"): any caller can \
                 push; use this only on the embedded default and local emulators"
            );
            return Ok(None);
        }
        let audience = config.audience.clone().ok_or(AuthConfigError {
            key: "audience",
            message: "push authentication (oidc, the default) needs the push subscription's \
                      audience (PHASEGATE_AUTH_AUDIENCE); to run without authentication set \
                      auth.mode = \"disabled\" explicitly",
        })?;
        if config.allowed_emails.is_empty() {
            return Err(AuthConfigError {
                key: "allowed_emails",
                message: "push authentication (oidc) needs at least one allowed service-account \
                          email (PHASEGATE_AUTH_ALLOWED_EMAILS)",
            });
        }
        // Pin the pure-Rust provider: should another crate ever enable jsonwebtoken's
        // aws_lc_rs feature too, jsonwebtoken could no longer pick one by itself.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let url = config
            .jwks_url
            .clone()
            .unwrap_or_else(|| jwks::GOOGLE_JWKS_URL.to_string());
        let relayers = config
            .allowed_emails
            .iter()
            .chain(&config.relay_emails)
            .cloned()
            .collect();
        Ok(Some(PushAuth {
            keys: Arc::new(JwksCache::new(url, timing)),
            rules: ClaimRules::new(&audience, config.allowed_emails.clone()),
            relay_rules: ClaimRules::new(&audience, relayers),
        }))
    }

    /// The signing-key cache (to warm it, refresh it in the background, count fetches).
    pub fn keys(&self) -> &Arc<JwksCache> {
        &self.keys
    }

    /// Check a push's headers and query string; the caller's email when it may push.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<String, AuthError> {
        self.check_with(&self.rules, headers, query).await
    }

    /// As [`PushAuth::check`] for `POST /relay`: the pushers and `auth.relay_emails`.
    pub async fn check_relay(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<String, AuthError> {
        self.check_with(&self.relay_rules, headers, query).await
    }

    async fn check_with(
        &self,
        rules: &ClaimRules,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<String, AuthError> {
        if query.is_some_and(has_token_param) {
            return Err(AuthError::TokenInUrl);
        }
        let token = bearer_token(headers)?;
        if token.rsplit('.').next() == Some(SIGNATURE_REMOVED) {
            return Err(AuthError::SignatureRemoved);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES)
            .ok_or_else(|| AuthError::Invalid("token header has no usable kid".into()))?;
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} refused: RS256 only",
                header.alg
            )));
        }
        let key = match self.keys.key(&kid).await {
            Lookup::Key(k) => k,
            Lookup::Unknown => {
                return Err(AuthError::Invalid(format!(
                    "unknown signing key id `{kid}`"
                )));
            }
            Lookup::Unavailable => return Err(AuthError::KeysUnavailable),
        };
        rules.verify(token, &key)
    }
}

/// The token of the one `Authorization: Bearer` header (scheme case-sensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Malformed)?;
    let shaped = !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !shaped {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

fn has_token_param(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        TOKEN_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn exactly_one_bearer_header() {
        assert_eq!(bearer_token(&headers(&["Bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        for bad in [
            &["Bearer a.b.c", "Bearer a.b.c"][..],
            &["bearer a.b.c"],
            &["BEARER a.b.c"],
            &["Bearer  a.b.c"],
            &["Bearer a.b"],
            &["Bearer a.b.c d"],
            &["Basic dXNlcjpwYXNz"],
        ] {
            assert_eq!(
                bearer_token(&headers(bad)),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_in_urls_are_spotted() {
        assert!(has_token_param("access_token=x"));
        assert!(has_token_param("a=1&ID_TOKEN=x"));
        assert!(!has_token_param("a=1&token_hint=2"));
    }
}
