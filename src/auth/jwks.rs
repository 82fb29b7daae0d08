//! The signing keys of push tokens: a JWKS cache that never makes a valid push wait.
//!
//! - Warmed at start-up ([`JwksCache::refresh`]) and refreshed in the background.
//! - A push whose key id is cached is verified from memory: it never waits on a fetch.
//! - Every fetch is bounded by [`Timing::fetch_timeout`]; fetches are single-flight (one
//!   at a time; requests that waited for one share its result instead of fetching again).
//! - An unknown key id triggers at most one fetch per [`Timing::min_refetch`], and is then
//!   remembered for [`Timing::unknown_ttl`]: a flood of forged key ids costs no fetches.
//! - Locks are never held across a fetch except the single-flight one, which cached-key
//!   pushes never take.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use serde_json::Value;

/// Google's OAuth2 signing keys.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The cache's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Bound on one JWKS fetch (connect, send, read).
    pub fetch_timeout: Duration,
    /// Background refresh period (Google rotates keys over days and publishes them early).
    pub refresh_every: Duration,
    /// Background retry period after a failed fetch.
    pub retry_after_failure: Duration,
    /// At most one fetch per this period is triggered by unknown key ids once keys are loaded.
    pub min_refetch: Duration,
    /// How long an unknown key id is refused without another look.
    pub unknown_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            fetch_timeout: Duration::from_secs(5),
            refresh_every: Duration::from_secs(3600),
            retry_after_failure: Duration::from_secs(10),
            min_refetch: Duration::from_secs(30),
            unknown_ttl: Duration::from_secs(300),
        }
    }
}

/// Most unknown key ids remembered at once (the rate limit on fetches holds beyond it).
const MAX_UNKNOWN: usize = 4096;
/// Before any key was ever loaded, retry a failed fetch at most this often on demand.
const COLD_RETRY: Duration = Duration::from_secs(1);

/// What a lookup found.
pub enum Lookup {
    Key(Arc<DecodingKey>),
    /// The keys are loaded and this id is not among them.
    Unknown,
    /// No key was ever loaded (the JWKS endpoint failed): the caller may retry later.
    Unavailable,
}

/// The cache.
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    timing: Timing,
    keys: RwLock<Arc<HashMap<String, Arc<DecodingKey>>>>,
    loaded: AtomicBool,
    unknown: Mutex<HashMap<String, Instant>>,
    /// Single-flight: held for the duration of one fetch; holds the last attempt's time.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    attempts: AtomicU64,
    fetches: AtomicU64,
}

impl JwksCache {
    pub fn new(url: String, timing: Timing) -> JwksCache {
        let http = reqwest::Client::builder()
            .timeout(timing.fetch_timeout)
            .connect_timeout(timing.fetch_timeout)
            .build()
            .unwrap_or_default();
        JwksCache {
            url,
            http,
            timing,
            keys: RwLock::new(Arc::new(HashMap::new())),
            loaded: AtomicBool::new(false),
            unknown: Mutex::new(HashMap::new()),
            fetch: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        }
    }

    /// Number of fetches started so far (for logs and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Whether keys were loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The key for `kid`, fetching (single-flight, rate-limited) only when it is not cached.
    pub async fn key(&self, kid: &str) -> Lookup {
        if let Some(k) = self.cached(kid) {
            return Lookup::Key(k);
        }
        if self.recently_unknown(kid) {
            return Lookup::Unknown;
        }
        let seen = self.attempts.load(Ordering::Acquire);
        {
            let mut last = self.fetch.lock().await;
            let someone_fetched = self.attempts.load(Ordering::Acquire) != seen;
            let gap = if self.is_loaded() {
                self.timing.min_refetch
            } else {
                COLD_RETRY
            };
            if !someone_fetched && last.is_none_or(|t| t.elapsed() >= gap) {
                self.fetch_locked(&mut last).await;
            }
        }
        match self.cached(kid) {
            Some(k) => Lookup::Key(k),
            None if !self.is_loaded() => Lookup::Unavailable,
            None => {
                self.remember_unknown(kid);
                Lookup::Unknown
            }
        }
    }

    /// Fetch now (waiting for a fetch in progress first); `true` when keys were loaded.
    pub async fn refresh(&self) -> bool {
        let mut last = self.fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    /// Refresh in the background until the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<JwksCache> = Arc::downgrade(self);
        let timing = self.timing;
        tokio::spawn(async move {
            let mut wait = timing.refresh_every;
            loop {
                tokio::time::sleep(wait).await;
                let Some(cache) = weak.upgrade() else { return };
                wait = if cache.refresh().await {
                    timing.refresh_every
                } else {
                    timing.retry_after_failure
                };
            }
        })
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(kid).cloned()
    }

    fn recently_unknown(&self, kid: &str) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        unknown
            .get(kid)
            .is_some_and(|t| t.elapsed() < self.timing.unknown_ttl)
    }

    fn remember_unknown(&self, kid: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= MAX_UNKNOWN {
            let ttl = self.timing.unknown_ttl;
            unknown.retain(|_, t| t.elapsed() < ttl);
            if unknown.len() >= MAX_UNKNOWN {
                unknown.clear();
            }
        }
        unknown.insert(kid.to_string(), Instant::now());
    }

    /// One bounded fetch; the caller holds the single-flight lock.
    async fn fetch_locked(&self, last: &mut Option<Instant>) -> bool {
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.timing.fetch_timeout, self.download()).await;
        self.attempts.fetch_add(1, Ordering::Release);
        let keys = match result {
            Ok(Ok(keys)) if !keys.is_empty() => keys,
            Ok(Ok(_)) => {
                tracing::warn!(url = %self.url, "JWKS has no usable RS256 keys; keeping the old ones");
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the old keys");
                return false;
            }
            Err(_) => {
                tracing::warn!(url = %self.url, timeout = ?self.timing.fetch_timeout, "JWKS fetch timed out; keeping the old keys");
                return false;
            }
        };
        tracing::debug!(url = %self.url, keys = keys.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.loaded.store(true, Ordering::Release);
        true
    }

    async fn download(&self) -> Result<HashMap<String, Arc<DecodingKey>>, reqwest::Error> {
        let set: Value = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(rs256_keys(&set))
    }
}

/// The RSA keys of a JWKS document, by key id; anything else is skipped.
fn rs256_keys(set: &Value) -> HashMap<String, Arc<DecodingKey>> {
    let keys = set.get("keys").and_then(Value::as_array);
    keys.into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
        .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
        .filter(|jwk| matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some((kid, Arc::new(key)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rsa_keys_with_ids_are_kept() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "p", "alg": "PS256", "n": "sXch", "e": "AQAB"},
            "garbage"
        ]});
        let keys = rs256_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["a"]);
    }
}
