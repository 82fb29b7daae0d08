//! Push authentication: the OIDC bearer token Pub/Sub attaches to every push.
//!
//! The signature, `iss`, `aud` and `exp` are checked by `google-cloud-auth`'s idtoken
//! verifier against the JWKS (Google's by default, configurable for tests); `nbf`, `email`
//! and `email_verified` are checked here against the allowed service accounts.

use google_cloud_auth::credentials::idtoken::verifier::{Builder, Verifier};

use crate::config::{AuthConfig, AuthMode};

/// Why a push was refused before anything else happened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token identity not allowed: {0}")]
    Forbidden(String),
}

impl AuthError {
    /// 401 when the caller is not authenticated, 403 when it is but may not push.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }
}

/// A configured verifier of push tokens.
pub struct PushAuth {
    verifier: Verifier,
    allowed_emails: Vec<String>,
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
        let mut builder = Builder::new([audience]);
        if let [only] = config.allowed_emails.as_slice() {
            builder = builder.with_email(only.clone());
        }
        if let Some(url) = &config.jwks_url {
            builder = builder.with_jwks_url(url.clone());
        }
        Ok(Some(PushAuth {
            verifier: builder.build(),
            allowed_emails: config.allowed_emails.clone(),
        }))
    }

    /// Check the `Authorization` header value.
    pub async fn check(&self, header: Option<&str>) -> Result<String, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.split('.').count() == 3)
            .ok_or(AuthError::Malformed)?;
        let claims = self.verifier.verify(token).await.map_err(|e| {
            let text = e.to_string();
            if text.contains("email") {
                AuthError::Forbidden(text)
            } else {
                AuthError::Invalid(text)
            }
        })?;
        // jsonwebtoken does not check `nbf` by default.
        if let Some(nbf) = claims.get("nbf").and_then(|v| v.as_i64()) {
            let now = chrono::Utc::now().timestamp();
            if nbf > now + 60 {
                return Err(AuthError::Invalid(format!("token not valid before {nbf}")));
            }
        }
        if claims.get("email_verified").and_then(|v| v.as_bool()) != Some(true) {
            return Err(AuthError::Forbidden("email_verified is not true".into()));
        }
        let email = claims
            .get("email")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::Forbidden("token has no email claim".into()))?;
        if !self.allowed_emails.iter().any(|a| a == email) {
            return Err(AuthError::Forbidden(format!(
                "{email} is not an allowed pusher"
            )));
        }
        Ok(email.to_string())
    }
}
