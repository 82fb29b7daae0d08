//! The claims a push token must carry, checked after its RS256 signature.
//!
//! Every claim is required: `aud` (the configured audience), `iss` (Google's, either
//! spelling), `exp` (not past), `iat` (not in the future), `email` (an allowed pusher) and
//! `email_verified` (the JSON boolean `true`). A missing or mistyped claim is a refusal.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;

/// The issuers Google signs ID tokens as.
pub const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW_SECS: u64 = 60;

/// Checks for one audience and its allowed pushers.
pub(super) struct ClaimRules {
    validation: Validation,
    allowed_emails: Vec<String>,
}

impl ClaimRules {
    pub(super) fn new(audience: &str, allowed_emails: Vec<String>) -> ClaimRules {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&[audience]);
        validation.set_issuer(&ISSUERS);
        validation.leeway = SKEW_SECS;
        validation.validate_nbf = true;
        ClaimRules {
            validation,
            allowed_emails,
        }
    }

    /// Verify the signature and every claim; the caller's email when all pass.
    pub(super) fn verify(&self, token: &str, key: &DecodingKey) -> Result<String, AuthError> {
        // jsonwebtoken does not index claims, but a panic here must still not take the
        // connection down: it becomes a refusal.
        let decoded = std::panic::catch_unwind(|| {
            jsonwebtoken::decode::<Value>(token, key, &self.validation)
        })
        .map_err(|_| {
            tracing::error!("token verifier panicked; refusing the token");
            AuthError::Invalid("token could not be verified".into())
        })?
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = decoded.claims;
        check_iat(&claims, chrono::Utc::now().timestamp())?;
        self.check_identity(&claims)
    }

    fn check_identity(&self, claims: &Value) -> Result<String, AuthError> {
        let email = match claims.get("email") {
            Some(Value::String(e)) => e,
            Some(_) => return Err(AuthError::Forbidden("email claim is not a string".into())),
            None => return Err(AuthError::Forbidden("token has no email claim".into())),
        };
        match claims.get("email_verified") {
            Some(Value::Bool(true)) => {}
            Some(_) => {
                return Err(AuthError::Forbidden(
                    "email_verified is not the boolean true".into(),
                ));
            }
            None => {
                return Err(AuthError::Forbidden(
                    "token has no email_verified claim".into(),
                ));
            }
        }
        if !self.allowed_emails.iter().any(|a| a == email) {
            return Err(AuthError::Forbidden(format!(
                "{email} is not an allowed pusher"
            )));
        }
        Ok(email.clone())
    }
}

/// `iat` present, an integer, and not later than now plus the skew.
fn check_iat(claims: &Value, now: i64) -> Result<(), AuthError> {
    let iat = claims
        .get("iat")
        .ok_or_else(|| AuthError::Invalid("token has no iat claim".into()))?
        .as_i64()
        .ok_or_else(|| AuthError::Invalid("iat is not an integer".into()))?;
    if iat > now.saturating_add(SKEW_SECS as i64) {
        return Err(AuthError::Invalid(format!(
            "token issued in the future (iat {iat})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iat_is_required_and_not_in_the_future() {
        assert!(check_iat(&json!({}), 1000).is_err());
        assert!(check_iat(&json!({"iat": "999"}), 1000).is_err());
        assert!(check_iat(&json!({"iat": 1061}), 1000).is_err());
        assert!(check_iat(&json!({"iat": 1060}), 1000).is_ok());
        assert!(check_iat(&json!({"iat": i64::MAX}), i64::MAX).is_ok());
    }

    #[test]
    fn identity_needs_a_verified_allowed_email() {
        let rules = ClaimRules::new("aud", vec!["a@x".into()]);
        let ok = json!({"email": "a@x", "email_verified": true});
        assert_eq!(rules.check_identity(&ok).unwrap(), "a@x");
        for bad in [
            json!({"email_verified": true}),
            json!({"email": "a@x"}),
            json!({"email": "a@x", "email_verified": "true"}),
            json!({"email": "a@x", "email_verified": "false"}),
            json!({"email": "a@x", "email_verified": 1}),
            json!({"email": ["a@x"], "email_verified": true}),
            json!({"email": "b@x", "email_verified": true}),
        ] {
            assert_eq!(rules.check_identity(&bad).unwrap_err().http_status(), 403);
        }
    }
}
