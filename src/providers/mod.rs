//! The model side: the registry of OpenAI-compatible providers (routing, fallbacks,
//! cool-downs, discovery), one async-openai client per provider with its quirks read,
//! batched embeddings, the built-in mock model served over real HTTP and SSE, and the
//! readiness probe.

mod catalog;
mod embeddings;
pub mod mock;
mod openai;
mod probe;
mod registry;
mod wire;

pub use embeddings::{Embedded, Embedder};
pub use openai::{ChatCall, OpeningStream, Piece, Provider, RetryPolicy, UpstreamError, UpstreamStream};
pub use probe::{ProbeError, UpstreamProbe};
pub use registry::{OpenFailed, Opened, OpeningRoute, ProviderInfo, Registry, Route};

use crate::config::{Config, ProviderSettings, ProvidersConfig, Secret};

/// The built-in mock as the one provider, `mock`, at `base_url`.
pub fn mock_providers(config: &Config, base_url: &str) -> ProvidersConfig {
    let mock = ProviderSettings {
        id: "mock".into(),
        name: "Mock".into(),
        base_url: base_url.to_owned(),
        api_key: Secret::new("mock"),
        models: None,
        models_ttl: std::time::Duration::from_secs(300),
        first_token_timeout: config.upstream_first_token_timeout,
        idle_timeout: config.upstream_idle_timeout,
        retry: config.upstream_retry,
        cooldown: std::time::Duration::from_secs(30),
        stream_options: true,
    };
    ProvidersConfig {
        providers: vec![mock],
        default: "mock".into(),
        fallbacks: Default::default(),
        aliases: Default::default(),
        context_tokens: Default::default(),
    }
}
