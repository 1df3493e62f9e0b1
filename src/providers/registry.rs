//! The provider registry: every configured provider, which one a model name goes to,
//! and the fallbacks tried when one fails before its first token. The engine calls it;
//! any wire may list what it holds ([`Registry::providers`], [`Registry::models`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tracing::Instrument;

use super::{ChatCall, Provider, UpstreamError, UpstreamStream, catalog::ModelList};
use crate::{
    chat::{ChatError, ErrorCode},
    config::{ProviderSettings, ProvidersConfig, Target},
    metrics::Metrics,
};

/// A provider as a model picker lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProviderInfo {
    pub id: String,
    pub name: String,
    /// Whether bare model names no provider lists go to it.
    pub default: bool,
}

/// Where one request goes: its first target, then its fallbacks, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub targets: Vec<Target>,
}

impl Route {
    /// The target asked for.
    pub fn primary(&self) -> &Target {
        &self.targets[0]
    }
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

struct Inner {
    upstreams: Vec<Upstream>,
    default: usize,
    fallbacks: HashMap<String, Vec<Target>>,
    aliases: HashMap<String, String>,
    context_tokens: HashMap<String, u32>,
}

/// One provider: its client, its models, and its bench.
pub(super) struct Upstream {
    pub info: ProviderInfo,
    pub provider: Provider,
    pub models: ModelList,
    cooldown: Duration,
    /// Until when it is passed over, after a failure before the first token.
    benched_until: Mutex<Option<Instant>>,
}

impl Upstream {
    fn benched(&self, now: Instant) -> bool {
        self.benched_until.lock().map(|b| b.is_some_and(|until| until > now)).unwrap_or(false)
    }

    fn bench(&self) {
        if let Ok(mut until) = self.benched_until.lock() {
            *until = Some(Instant::now() + self.cooldown);
        }
    }
}

/// A stream opened by [`Registry::start_open`], and who is answering.
pub struct Opened {
    pub stream: UpstreamStream,
    pub target: Target,
}

/// Every target failed (or the one tried failed for good): the last failure, and where.
pub struct OpenFailed {
    pub error: UpstreamError,
    pub target: Target,
}

impl Registry {
    /// The registry of `config`'s providers; failed requests are counted in `metrics`.
    pub fn new(config: &ProvidersConfig, metrics: &Metrics) -> Self {
        let upstreams: Vec<Upstream> = config.providers.iter().map(|s| upstream(s, metrics)).collect();
        let default = upstreams.iter().position(|u| u.info.id == config.default).unwrap_or(0);
        let mut upstreams = upstreams;
        if let Some(u) = upstreams.get_mut(default) {
            u.info.default = true;
        }
        let (fallbacks, aliases, context_tokens) = (config.fallbacks.clone(), config.aliases.clone(), config.context_tokens.clone());
        Self(Arc::new(Inner { upstreams, default, fallbacks, aliases, context_tokens }))
    }

    /// The context length configured for a target's model (as `provider/model`, else
    /// bare), if any.
    pub fn context_tokens(&self, target: &Target) -> Option<u32> {
        let qualified = format!("{}/{}", target.provider, target.model);
        self.0.context_tokens.get(&qualified).or_else(|| self.0.context_tokens.get(&target.model)).copied()
    }

    /// Every provider, in configuration order.
    pub fn providers(&self) -> Vec<ProviderInfo> {
        self.0.upstreams.iter().map(|u| u.info.clone()).collect()
    }

    /// The default provider's id.
    pub fn default_provider(&self) -> &str {
        &self.0.upstreams[self.0.default].info.id
    }

    /// A provider's models, bare: as listed, or discovered (cached). `None` for an
    /// unknown provider; an empty list when discovery failed.
    pub async fn models(&self, provider: &str) -> Option<Vec<String>> {
        Some(self.upstream(provider)?.models.get().await.to_vec())
    }

    /// Every provider with its models.
    pub async fn catalog(&self) -> Vec<(ProviderInfo, Vec<String>)> {
        let lists = futures::future::join_all(self.0.upstreams.iter().map(|u| u.models.get())).await;
        self.0.upstreams.iter().zip(lists).map(|(u, models)| (u.info.clone(), models.to_vec())).collect()
    }

    pub(super) fn upstream(&self, id: &str) -> Option<&Upstream> {
        self.0.upstreams.iter().find(|u| u.info.id == id)
    }

    /// Where a request for `model` (on `provider`, when the client named one) goes.
    /// `provider/model` picks the provider; a bare name (or alias) goes to the provider
    /// that lists it, else to the default unchanged. `INVALID_MODEL` for an unknown
    /// provider, and for a model its provider's configured list does not hold.
    pub async fn resolve(&self, provider: Option<&str>, model: &str) -> Result<Route, ChatError> {
        let primary = match provider {
            Some(provider) => self.target_on(provider, model)?,
            None => {
                let name = self.0.aliases.get(model).map_or(model, String::as_str);
                match name.split_once('/') {
                    Some((provider, bare)) if self.upstream(provider).is_some() => self.target_on(provider, bare)?,
                    _ => self.target_of_bare(name).await?,
                }
            }
        };
        let qualified = format!("{}/{}", primary.provider, primary.model);
        let fallbacks = [model, qualified.as_str()].into_iter().find_map(|key| self.0.fallbacks.get(key));
        let mut targets = vec![primary];
        for fallback in fallbacks.into_iter().flatten() {
            if !targets.contains(fallback) {
                targets.push(fallback.clone());
            }
        }
        Ok(Route { targets })
    }

    fn target_on(&self, provider: &str, model: &str) -> Result<Target, ChatError> {
        let Some(upstream) = self.upstream(provider) else {
            return Err(ChatError::new(ErrorCode::InvalidModel, format!("unknown provider {provider:?}")));
        };
        if upstream.models.listed().is_some_and(|models| !models.iter().any(|m| m == model)) {
            return Err(ChatError::new(ErrorCode::InvalidModel, format!("{provider:?} does not serve {model:?}")));
        }
        Ok(Target { provider: provider.to_owned(), model: model.to_owned() })
    }

    /// The provider listing `model` (the default first), else the default. A name with a
    /// `/` that no provider lists names an unknown provider.
    async fn target_of_bare(&self, model: &str) -> Result<Target, ChatError> {
        let upstreams = &self.0.upstreams;
        let order = std::iter::once(self.0.default).chain((0..upstreams.len()).filter(|&i| i != self.0.default));
        let lists = futures::future::join_all(order.map(|i| async move { (i, upstreams[i].models.get().await) })).await;
        if let Some((i, _)) = lists.iter().find(|(_, models)| models.iter().any(|m| m == model)) {
            return Ok(Target { provider: upstreams[*i].info.id.clone(), model: model.to_owned() });
        }
        if let Some((provider, _)) = model.split_once('/') {
            return Err(ChatError::new(ErrorCode::InvalidModel, format!("unknown provider {provider:?}")));
        }
        Ok(Target { provider: self.default_provider().to_owned(), model: model.to_owned() })
    }

    /// Opens `route` in the background (the caller stores the turn meanwhile): each
    /// target in turn, skipping benched ones (unless all are), until one gives its first
    /// token. A target failing before it is benched for its cool-down. Dropping the
    /// result aborts the request.
    pub fn start_open(&self, route: Route, call: ChatCall) -> OpeningRoute {
        let registry = self.clone();
        OpeningRoute(tokio::spawn(async move { registry.open(route, call).await }.in_current_span()))
    }

    async fn open(&self, route: Route, call: ChatCall) -> Result<Opened, OpenFailed> {
        let now = Instant::now();
        let usable: Vec<&Target> = route.targets.iter().filter(|t| self.upstream(&t.provider).is_some_and(|u| !u.benched(now))).collect();
        let tried = if usable.is_empty() { route.targets.iter().collect() } else { usable };
        let mut last = None;
        for target in tried {
            let Some(upstream) = self.upstream(&target.provider) else {
                continue;
            };
            let call = ChatCall { model: target.model.clone(), ..call.clone() };
            match upstream.provider.open(call).await {
                Ok(stream) => {
                    return Ok(Opened { stream, target: target.clone() });
                }
                Err(error) if error.worth_a_fallback() => {
                    upstream.bench();
                    tracing::warn!(provider = %target.provider, model = %target.model, error = %error, cooldown = ?upstream.cooldown,
                        "provider failed before the first token; benched, trying the next fallback if any");
                    // The failure returned is counted by the caller; the ones passed over here.
                    if let Some(passed) = last.replace(OpenFailed { error, target: target.clone() }) {
                        self.record_error(&passed.target.provider, &passed.error);
                    }
                }
                Err(error) => {
                    return Err(OpenFailed { error, target: target.clone() });
                }
            }
        }
        Err(last
            .unwrap_or_else(|| OpenFailed { error: UpstreamError::Failed("no provider to try".into()), target: route.primary().clone() }))
    }

    /// Counts a failed request of `provider`.
    pub fn record_error(&self, provider: &str, error: &UpstreamError) {
        if let Some(u) = self.upstream(provider) {
            u.provider.record_error(error);
        }
    }
}

fn upstream(settings: &ProviderSettings, metrics: &Metrics) -> Upstream {
    let timeouts = (settings.first_token_timeout, settings.idle_timeout);
    let mut provider =
        Provider::new(&settings.base_url, settings.api_key.expose(), timeouts, settings.retry).with_metrics(&settings.id, metrics);
    if !settings.stream_options {
        provider = provider.without_stream_options();
    }
    Upstream {
        info: ProviderInfo { id: settings.id.clone(), name: settings.name.clone(), default: false },
        provider,
        models: ModelList::new(&settings.base_url, settings.api_key.expose(), settings.models.clone(), settings.models_ttl),
        cooldown: settings.cooldown,
        benched_until: Mutex::new(None),
    }
}

/// A route being opened by [`Registry::start_open`]. Dropped, it aborts the request (or
/// closes the stream, once open), so the upstream stops working on the answer.
pub struct OpeningRoute(tokio::task::JoinHandle<Result<Opened, OpenFailed>>);

impl OpeningRoute {
    /// Waits for the stream to be open, or every target to have failed. Cancel-safe.
    pub async fn opened(&mut self, primary: &Target) -> Result<Opened, OpenFailed> {
        match (&mut self.0).await {
            Ok(opened) => opened,
            Err(e) => Err(OpenFailed { error: UpstreamError::Failed(format!("opening the stream stopped: {e}")), target: primary.clone() }),
        }
    }
}

impl Drop for OpeningRoute {
    fn drop(&mut self) {
        self.0.abort();
    }
}
