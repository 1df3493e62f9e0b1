//! Whether the upstream answers at all, for readiness: one `GET {base}/models` with the
//! configured key. It costs the provider nothing (no tokens) and proves the network
//! path, the TLS and the key.

use std::time::Duration;

/// How long a probe may take before the upstream counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the upstream does not look ready; the detail is for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {0}")]
    Refused(u16),
}

/// A prober of one upstream.
#[derive(Clone)]
pub struct UpstreamProbe {
    http: reqwest::Client,
    url: String,
    api_key: String,
}

impl UpstreamProbe {
    /// A prober of the OpenAI-compatible server at `base_url` (ending in `/v1` for most).
    pub fn new(base_url: &str, api_key: &str) -> Self {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build().unwrap_or_default();
        Self { http, url: format!("{}/models", base_url.trim_end_matches('/')), api_key: api_key.to_owned() }
    }

    /// Up when the server answers with anything but a 5xx or a refused key (401, 403): a
    /// server without a models route (404) still serves chat completions.
    pub async fn check(&self) -> Result<(), ProbeError> {
        let response =
            self.http.get(&self.url).bearer_auth(&self.api_key).send().await.map_err(|e| ProbeError::Unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ProbeError::Refused(status.as_u16()));
        }
        Ok(())
    }
}
