//! The model providers' settings: the `PROVIDERS_FILE` TOML and the env shortcuts
//! (`OPENAI_API_KEY`, `GEMINI_API_KEY`, `GROQ_API_KEY`, `MISTRAL_API_KEY`, with
//! `OPENAI_BASE_URL` and `DEFAULT_PROVIDER`). Every mistake is a [`ConfigError`] whose
//! message starts with the variable and names the table and key at fault.

use std::{collections::HashMap, time::Duration};

use serde::Deserialize;

use super::{ConfigError, Secret, Vars, bad};
use crate::providers::RetryPolicy;

/// Every provider chatwire may send a request to, and how model names reach them.
#[derive(Clone, Debug)]
pub struct ProvidersConfig {
    /// In the file's order, then the env shortcuts' (openai, gemini, groq, mistral).
    pub providers: Vec<ProviderSettings>,
    /// The id of the provider a bare model name no provider lists goes to.
    pub default: String,
    /// Per model name (as asked for, or `provider/model`): where to go when it fails before the first token.
    pub fallbacks: HashMap<String, Vec<Target>>,
    /// Model names clients hard-code, and what they stand for (`provider/model` or a bare name).
    pub aliases: HashMap<String, String>,
    /// Per model name (bare, or `provider/model`): its context length in tokens.
    pub context_tokens: HashMap<String, u32>,
}

/// One OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// Its id in `provider/model`, in the stored rows and in discovery (`name` in the file).
    pub id: String,
    /// What a model picker shows (`display_name`, else the id).
    pub name: String,
    pub base_url: String,
    pub api_key: Secret,
    /// Its models as listed in the file; `None`: discovered from `GET /models`.
    pub models: Option<Vec<String>>,
    /// How long a discovered list is kept.
    pub models_ttl: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    /// How long it is passed over after it failed before the first token.
    pub cooldown: Duration,
    /// Whether `stream_options.include_usage` is sent (a provider answering 422 to it is
    /// detected anyway; this is for one that ignores it badly).
    pub stream_options: bool,
}

/// One provider and one of its models.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub provider: String,
    /// The bare model name, as the provider knows it.
    pub model: String,
}

/// The settings the file does not give: the `UPSTREAM_*` variables.
pub(super) struct Defaults {
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    providers: Vec<Entry>,
    #[serde(default)]
    models: HashMap<String, ModelEntry>,
    #[serde(default)]
    aliases: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    display_name: Option<String>,
    base_url: String,
    api_key_env: Option<String>,
    models: Option<Vec<String>>,
    models_ttl_secs: Option<u64>,
    first_token_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    cooldown_secs: Option<u64>,
    stream_options: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    #[serde(default)]
    fallbacks: Vec<String>,
    context_tokens: Option<u32>,
}

/// The env shortcuts: id, display name, key variable, public OpenAI-compatible base URL.
const SHORTCUTS: [(&str, &str, &str, &str); 4] = [
    ("openai", "OpenAI", "OPENAI_API_KEY", "https://api.openai.com/v1"),
    ("gemini", "Gemini", "GEMINI_API_KEY", "https://generativelanguage.googleapis.com/v1beta/openai"),
    ("groq", "Groq", "GROQ_API_KEY", "https://api.groq.com/openai/v1"),
    ("mistral", "Mistral", "MISTRAL_API_KEY", "https://api.mistral.ai/v1"),
];

/// Default `cooldown_secs` and `models_ttl_secs`.
const COOLDOWN_SECS: u64 = 30;
const MODELS_TTL_SECS: u64 = 300;

/// The providers from the file and the shortcuts; `None` when there are none at all.
pub(super) fn providers_config(env: &Vars, defaults: &Defaults) -> Result<Option<ProvidersConfig>, ConfigError> {
    let file = match env.get("PROVIDERS_FILE") {
        None => None,
        Some(path) => Some((path, read_file(path)?)),
    };
    let at = |what: String| file_error(file.as_ref().map_or("", |(p, _)| p), what);
    let mut providers = Vec::new();
    let (mut default, mut fallbacks, mut aliases, mut context_tokens) = (None, HashMap::new(), HashMap::new(), HashMap::new());
    if let Some((_, parsed)) = &file {
        for (i, entry) in parsed.providers.iter().enumerate() {
            let settings =
                entry_settings(env, entry, defaults).map_err(|e| at(format!("[[providers]] #{} ({:?}): {e}", i + 1, entry.name)))?;
            if providers.iter().any(|p: &ProviderSettings| p.id == settings.id) {
                return Err(at(format!("[[providers]] #{}: name: {:?} is used twice", i + 1, settings.id)));
            }
            providers.push(settings);
        }
        default = parsed.default.clone();
    }
    for (id, name, key_var, public_url) in SHORTCUTS {
        let key = env.get(key_var);
        let base_url = if id == "openai" { env.get("OPENAI_BASE_URL") } else { None };
        if (key.is_none() && base_url.is_none()) || providers.iter().any(|p| p.id == id) {
            continue;
        }
        let base_url = base_url.unwrap_or(public_url).trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(bad("OPENAI_BASE_URL", "must start with http:// or https://"));
        }
        providers.push(ProviderSettings {
            id: id.into(),
            name: name.into(),
            base_url,
            // Local servers (Ollama, vLLM, llama.cpp) accept any key.
            api_key: Secret(key.unwrap_or("none").to_owned()),
            models: None,
            models_ttl: Duration::from_secs(MODELS_TTL_SECS),
            first_token_timeout: defaults.first_token_timeout,
            idle_timeout: defaults.idle_timeout,
            retry: defaults.retry,
            cooldown: Duration::from_secs(COOLDOWN_SECS),
            stream_options: true,
        });
    }
    if providers.is_empty() {
        return Ok(None);
    }
    let default = match (env.get("DEFAULT_PROVIDER"), default) {
        (Some(id), _) if providers.iter().any(|p| p.id == id) => id.to_owned(),
        (Some(id), _) => {
            return Err(bad("DEFAULT_PROVIDER", format!("{id:?} is not a configured provider ({})", ids(&providers))));
        }
        (None, Some(id)) if providers.iter().any(|p| p.id == id) => id,
        (None, Some(id)) => {
            return Err(at(format!("default: {id:?} is not a provider of the file or the env shortcuts ({})", ids(&providers))));
        }
        (None, None) => providers[0].id.clone(),
    };
    if let Some((_, parsed)) = &file {
        for (model, entry) in &parsed.models {
            let targets = entry
                .fallbacks
                .iter()
                .map(|t| target(&providers, t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| at(format!("[models.{model:?}]: fallbacks: {e}")))?;
            fallbacks.insert(model.clone(), targets);
            match entry.context_tokens {
                Some(0) => return Err(at(format!("[models.{model:?}]: context_tokens: must be at least 1"))),
                Some(n) => drop(context_tokens.insert(model.clone(), n)),
                None => {}
            }
        }
        for (alias, to) in &parsed.aliases {
            if to.is_empty() {
                return Err(at(format!("[aliases]: {alias:?}: is empty")));
            }
            if let Some((provider, _)) = to.split_once('/')
                && providers.iter().any(|p| p.id == provider)
            {
                target(&providers, to).map_err(|e| at(format!("[aliases]: {alias:?}: {e}")))?;
            }
            aliases.insert(alias.clone(), to.clone());
        }
    }
    Ok(Some(ProvidersConfig { providers, default, fallbacks, aliases, context_tokens }))
}

fn read_file(path: &str) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, format!("cannot read it: {e}")))?;
    toml::from_str(&text).map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let table = e.span().and_then(|s| table_before(&text, s.start)).unwrap_or_else(|| "the top level".into());
        let line = line.map_or(String::new(), |l| format!(" (line {l})"));
        let message = e.message().trim();
        // A wrong value: name its key too, unless the message already does.
        let key = e.span().and_then(|s| key_at(&text, s.start)).filter(|k| !message.contains(&format!("`{k}`")));
        let key = key.map_or(String::new(), |k| format!("{k}: "));
        file_error(path, format!("in {table}{line}: {key}{message}"))
    })
}

/// The key of the `key = value` line holding byte `offset` of `text`, as written.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[start..end].trim();
    if line.starts_with('[') {
        return None;
    }
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_owned())
}

/// The header of the table holding byte `offset` of `text`, as written (`[[providers]]`).
fn table_before(text: &str, offset: usize) -> Option<String> {
    // Up to the end of the offset's line: an error about a whole table points at its header.
    let offset = offset.min(text.len());
    let before = &text[..text[offset..].find('\n').map_or(text.len(), |i| offset + i)];
    let header = before.lines().rev().map(str::trim).find(|l| l.starts_with('['))?;
    let end = header.rfind(']')?;
    let count = before.lines().filter(|l| l.trim().starts_with("[[providers]]")).count();
    let header = &header[..=end];
    Some(if header == "[[providers]]" { format!("[[providers]] #{count}") } else { header.to_owned() })
}

fn file_error(path: &str, problem: String) -> ConfigError {
    bad("PROVIDERS_FILE", format!("{path}: {problem}"))
}

fn entry_settings(env: &Vars, entry: &Entry, defaults: &Defaults) -> Result<ProviderSettings, String> {
    let id = entry.name.trim();
    let plain = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err("name: must be letters, digits, `-`, `_` or `.` (it is the `provider` of `provider/model`)".into());
    }
    let base_url = entry.base_url.trim().trim_end_matches('/');
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err("base_url: must start with http:// or https://".into());
    }
    let api_key = match entry.api_key_env.as_deref() {
        None => "none".to_owned(),
        Some(var) => env.get(var).ok_or_else(|| format!("api_key_env: the variable {var} is not set"))?.to_owned(),
    };
    if let Some(models) = &entry.models
        && models.iter().any(|m| m.trim().is_empty())
    {
        return Err("models: a model name is empty".into());
    }
    let attempts = match entry.attempts {
        Some(0) => return Err("attempts: must be at least 1".into()),
        Some(n) => n,
        None => defaults.retry.attempts,
    };
    let ms = |v: Option<u64>, or: Duration| v.map_or(or, Duration::from_millis);
    Ok(ProviderSettings {
        id: id.to_owned(),
        name: entry.display_name.clone().unwrap_or_else(|| id.to_owned()),
        base_url: base_url.to_owned(),
        api_key: Secret(api_key),
        models: entry.models.clone(),
        models_ttl: Duration::from_secs(entry.models_ttl_secs.unwrap_or(MODELS_TTL_SECS)),
        first_token_timeout: ms(entry.first_token_timeout_ms, defaults.first_token_timeout),
        idle_timeout: ms(entry.idle_timeout_ms, defaults.idle_timeout),
        retry: RetryPolicy { attempts, base_delay: ms(entry.retry_base_ms, defaults.retry.base_delay) },
        cooldown: Duration::from_secs(entry.cooldown_secs.unwrap_or(COOLDOWN_SECS)),
        stream_options: entry.stream_options.unwrap_or(true),
    })
}

/// A `provider/model` pair naming a known provider (and, when it lists its models, one of them).
fn target(providers: &[ProviderSettings], raw: &str) -> Result<Target, String> {
    let Some((provider, model)) = raw.split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty()) else {
        return Err(format!("{raw:?} is not `provider/model`"));
    };
    let Some(settings) = providers.iter().find(|p| p.id == provider) else {
        return Err(format!("{raw:?}: {provider:?} is not a configured provider ({})", ids(providers)));
    };
    if let Some(models) = &settings.models
        && !models.iter().any(|m| m == model)
    {
        return Err(format!("{raw:?}: {provider:?} does not list {model:?}"));
    }
    Ok(Target { provider: provider.to_owned(), model: model.to_owned() })
}

fn ids(providers: &[ProviderSettings]) -> String {
    providers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
}

/// The mock model's text and speed.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The answer, streamed a word (plus its trailing whitespace) per token.
    pub response: String,
    pub token_delay: Duration,
    pub first_token_delay: Duration,
    /// Benchmark mode: each token is its write time in microseconds, and an answer has
    /// exactly the requested `max_tokens` tokens.
    pub stamp: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            response: DEFAULT_MOCK_RESPONSE.to_owned(),
            token_delay: Duration::from_millis(25),
            first_token_delay: Duration::from_millis(0),
            stamp: false,
        }
    }
}

/// What the built-in mock says when `MOCK_RESPONSE` is unset.
pub const DEFAULT_MOCK_RESPONSE: &str = "Hello! I am chatwire's built-in mock model. \
No upstream provider is configured, so I stream this fixed answer word by word. \
Set OPENAI_BASE_URL and OPENAI_API_KEY to talk to a real model.";
