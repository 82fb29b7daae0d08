//! `[auth]`: how pushes are authenticated.

use serde::Deserialize;

/// How pushes are authenticated. On by default: turning it off takes an explicit
/// `auth.mode = "disabled"` (or `PHASEGATE_AUTH_MODE=disabled`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: only for the embedded default and local emulators.
    Disabled,
    /// Verify the OIDC bearer token Pub/Sub attaches to every push.
    #[default]
    Oidc,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
    /// Expected `aud` claim (the push subscription's audience).
    #[serde(default)]
    pub audience: Option<String>,
    /// Service-account emails allowed to push.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// Further service-account emails allowed on `POST /relay` only (the scheduled relay's
    /// identity); the pushers may relay too.
    #[serde(default)]
    pub relay_emails: Vec<String>,
    /// JWKS URL; defaults to Google's OAuth2 certificates.
    #[serde(default)]
    pub jwks_url: Option<String>,
}
