//! Keys from a JWKS URL (`JWT_JWKS_URL`: Clerk, Supabase's asymmetric keys, Auth0,
//! Cognito): RS256, ES256 and EdDSA, fetched and cached.
//!
//! The set is kept as long as its `Cache-Control: max-age` says (10 minutes without one),
//! then fetched again. A token whose `kid` is unknown triggers a fetch, at most one per
//! `JWT_JWKS_REFRESH_SECONDS` (10 s by default) whatever the tokens say. When the URL cannot be read the server serves anyway,
//! refuses tokens until the keys load, and keeps trying.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a set is kept without `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// The shortest a set is kept, whatever `max-age` says.
const MIN_MAX_AGE: Duration = Duration::from_secs(10);
/// The first and the longest wait between fetches that failed.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key of the set.
#[derive(Clone)]
pub struct JwksKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// A JWKS URL's keys, refreshed in the background.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Option<Vec<JwksKey>>>,
    /// At most one fetch per this long for unknown `kid`s.
    unknown_kid_refresh: Duration,
    /// When the last fetch for an unknown `kid` began; one at a time.
    last_unknown: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// The keys of `url`, fetched for unknown `kid`s at most once per `unknown_kid_refresh`.
    pub fn new(url: &str, unknown_kid_refresh: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build().unwrap_or_default();
        let last_unknown = tokio::sync::Mutex::new(None);
        Self { url: url.to_owned(), http, keys: RwLock::new(None), unknown_kid_refresh, last_unknown }
    }

    /// True once a set has loaded.
    pub fn loaded(&self) -> bool {
        self.keys.read().map(|k| k.is_some()).unwrap_or(false)
    }

    /// The keys that may verify a token with this header: the same `kid` (any, without
    /// one) and the same algorithm.
    pub fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Vec<JwksKey> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(keys) = keys.as_ref() else { return Vec::new() };
        keys.iter().filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid)).cloned().collect()
    }

    /// Fetches again for a `kid` not in the set, unless a fetch for one began less than
    /// `unknown_kid_refresh` ago. Concurrent callers wait for the same fetch.
    pub async fn refresh_for_unknown_kid(&self) {
        let mut last = self.last_unknown.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.unknown_kid_refresh) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(reason) = self.fetch().await {
            tracing::warn!(url = %self.url, %reason, "JWKS fetch for an unknown kid failed");
        }
    }

    /// Keeps the set fresh until `shutdown`: again after its `max-age`, or sooner after a failure.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let jwks = self.clone();
        tokio::spawn(async move {
            let mut retry = RETRY_FIRST;
            loop {
                let wait = match jwks.fetch().await {
                    Ok(max_age) => {
                        retry = RETRY_FIRST;
                        max_age
                    }
                    Err(reason) => {
                        tracing::warn!(url = %jwks.url, %reason, loaded = jwks.loaded(), "JWKS fetch failed; trying again");
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        wait
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Fetches and stores the set; gives how long to keep it.
    async fn fetch(&self) -> Result<Duration, String> {
        let response = self.http.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let max_age = response.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        let keys: Vec<JwksKey> = set.keys.iter().filter_map(usable).collect();
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(keys);
        Ok(max_age.unwrap_or(DEFAULT_MAX_AGE).max(MIN_MAX_AGE))
    }
}

/// A key of the set this server verifies with: RSA (RS256), P-256 (ES256) or Ed25519
/// (EdDSA). Symmetric keys and other curves are left out.
fn usable(jwk: &jsonwebtoken::jwk::Jwk) -> Option<JwksKey> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwksKey { kid: jwk.common.key_id.clone(), alg, key })
}

/// `max-age` of a `Cache-Control` value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| d.strip_prefix("max-age=")).and_then(|s| s.parse().ok()).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(super::max_age("public, max-age=300, must-revalidate"), Some(std::time::Duration::from_secs(300)));
        assert_eq!(super::max_age("no-cache"), None);
    }
}
