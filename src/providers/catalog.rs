//! A provider's models: listed in `PROVIDERS_FILE`, or discovered from its
//! `GET {base}/models` and kept for `models_ttl_secs`. Callers asking while a list is
//! being fetched wait for that one request.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};

/// How long a discovery request may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// A failed discovery is asked again after this long at most (or the TTL, if shorter).
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// One provider's model list.
pub struct ModelList {
    listed: Option<Arc<[String]>>,
    http: reqwest::Client,
    url: String,
    api_key: String,
    ttl: Duration,
    /// The last discovered list and when it goes stale.
    cached: Mutex<Option<(Instant, Arc<[String]>)>>,
}

#[derive(Deserialize)]
struct ModelsPage {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl ModelList {
    pub fn new(base_url: &str, api_key: &str, listed: Option<Vec<String>>, ttl: Duration) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(DISCOVERY_TIMEOUT).build().unwrap_or_default();
        Self {
            listed: listed.map(Into::into),
            http,
            url: format!("{}/models", base_url.trim_end_matches('/')),
            api_key: api_key.to_owned(),
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The models as configured, when they are.
    pub fn listed(&self) -> Option<&[String]> {
        self.listed.as_deref()
    }

    /// The models: as listed, or discovered (empty when the provider does not say).
    pub async fn get(&self) -> Arc<[String]> {
        if let Some(listed) = &self.listed {
            return listed.clone();
        }
        let mut cached = self.cached.lock().await;
        if let Some((stale_at, models)) = cached.as_ref()
            && Instant::now() < *stale_at
        {
            return models.clone();
        }
        let (models, keep) = match self.discover().await {
            Ok(models) => (models, self.ttl),
            // Many servers have no models route: that is no news.
            Err(e) if e == "answered 404 Not Found" => {
                tracing::debug!(url = %self.url, "the provider has no models route; it lists no models");
                (Arc::from(Vec::new()), self.ttl)
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "discovering the provider's models failed");
                (Arc::from(Vec::new()), self.ttl.min(RETRY_FAILED_AFTER))
            }
        };
        *cached = Some((Instant::now() + keep, models.clone()));
        models
    }

    async fn discover(&self) -> Result<Arc<[String]>, String> {
        let response = self.http.get(&self.url).bearer_auth(&self.api_key).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let page: ModelsPage = response.json().await.map_err(|e| e.to_string())?;
        Ok(page.data.into_iter().map(|m| m.id).collect::<Vec<_>>().into())
    }
}
