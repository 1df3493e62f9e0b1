//! Every setting, parsed once from the environment (and `.env`) into a typed [`Config`].
//!
//! Names follow what a NestJS deployment already sets (`PORT`, `CORS_ORIGIN`,
//! `JWT_SECRET`, `OPENAI_API_KEY`, ...). A wrong value stops start-up with a
//! message naming the variable.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use crate::{providers::RetryPolicy, telemetry::LogFormat};

/// A configuration mistake, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn bad(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { var, problem: problem.into() }
}

/// How sockets are authenticated.
#[derive(Clone, Debug)]
pub enum AuthConfig {
    /// No JWT setting at all: anyone connects, as `auth.userId` or `anonymous`.
    Open,
    Jwt(JwtConfig),
}

/// What a token must satisfy.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// HS256 secret (`JWT_SECRET`).
    pub secret: Option<Secret>,
    /// PEM public key for RS256 or ES256 (`JWT_PUBLIC_KEY`).
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim that names the user (`JWT_USER_CLAIM`, default `sub`).
    pub user_claim: String,
    /// Where RS256, ES256 and EdDSA keys are fetched from (`JWT_JWKS_URL`).
    pub jwks_url: Option<String>,
    /// The least time between fetches of the JWKS for unknown `kid`s
    /// (`JWT_JWKS_REFRESH_SECONDS`, default 10).
    pub jwks_refresh: std::time::Duration,
}

/// Where answers come from.
#[derive(Clone, Debug)]
pub enum UpstreamConfig {
    /// Nothing configured: serve the built-in mock on loopback and talk to it over HTTP.
    Mock(MockConfig),
    /// OpenAI-compatible providers: `PROVIDERS_FILE` and the env shortcuts.
    Providers(ProvidersConfig),
}

/// The largest `maxTokens` a client may ask for when `MAX_TOKENS_LIMIT` is unset: a
/// modest bill per answer on a real upstream.
pub const DEFAULT_MAX_TOKENS_LIMIT: u32 = 16_384;

/// Who may open the admin view (`/admin` namespace and page): both variables set, or the
/// feature is off.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub username: String,
    /// A bcrypt hash (`ADMIN_PASSWORD`), checked at start-up.
    pub password_hash: Secret,
}

/// What happens to a generation whose starting socket disconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDisconnect {
    /// Keep generating and store the answer (the default).
    Finish,
    /// Stop the upstream call and store the partial answer as `stopped`.
    Cancel,
}

/// The whole configuration, parsed once at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: IpAddr,
    /// True when `HOST` was set; otherwise open mode listens on loopback only.
    pub host_explicit: bool,
    pub port: u16,
    /// Exact origins allowed by CORS, credentials included.
    pub cors_origins: Vec<String>,
    pub auth: AuthConfig,
    /// `NODE_ENV=production`: refuse to start in open mode or on the mock model.
    pub production: bool,
    /// Whether a client's `systemPrompt` is accepted (`ALLOW_CLIENT_SYSTEM_PROMPT`).
    pub allow_client_system_prompt: bool,
    /// This process's name in logs and, in cluster mode, among the nodes (`NODE_ID`).
    pub node_id: String,
    /// Cluster mode: the Redis every node shares (`REDIS_URL`); `None` runs one node alone.
    pub redis_url: Option<String>,
    /// How long a node's lease in Redis lasts without renewal before others take it for dead.
    pub node_lease: Duration,
    /// Cluster mode: after an append to an answer's Redis stream, how long text gathers
    /// before the next one (`CLUSTER_APPEND_MS`).
    pub cluster_append_window: Duration,
    pub database_url: String,
    /// Pool size; `None` picks one for the database kind.
    pub database_max_connections: Option<u32>,
    /// The PostgreSQL schema chatwire's tables live in (`DATABASE_SCHEMA`); unused on SQLite.
    pub database_schema: String,
    pub upstream: UpstreamConfig,
    pub default_model: String,
    /// Empty means any model the upstream knows.
    pub allowed_models: Vec<String>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Packets a socket may have queued before `emit` reports it full (socketioxide's `max_buffer_size`).
    pub socket_buffer_packets: usize,
    /// Most answer text queued for one socket, in bytes (with the packets, it caps a frame).
    pub socket_buffer_bytes: usize,
    /// Longest silence on an SSE response before a `: keep-alive` comment.
    pub sse_keepalive: Duration,
    /// Longest accepted `chat:start.message` (and `systemPrompt`), in UTF-16 units.
    pub max_message_chars: usize,
    pub default_max_tokens: u32,
    /// Largest `maxTokens` a client may ask for.
    pub max_tokens_limit: u32,
    pub default_temperature: f32,
    /// Sent to the model before the conversation, when set.
    pub system_prompt: Option<String>,
    /// Named system prompts a `chat:start { preset }` picks (`SYSTEM_PROMPT_PRESETS`).
    pub system_prompt_presets: HashMap<String, String>,
    /// How many earlier messages go upstream as context.
    pub max_history_messages: u64,
    /// A model's context length in tokens when `PROVIDERS_FILE` gives none for it
    /// (`MODEL_CONTEXT_TOKENS`): the prompt plus `maxTokens` must fit in it.
    pub model_context_tokens: u32,
    pub upstream_first_token_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub upstream_retry: RetryPolicy,
    /// `chat:start`s a user may make per minute (token bucket); 0 is no limit.
    pub rate_limit_per_minute: u32,
    /// Lookups (resumes, joins, repeated `clientMessageId`s) a user may make per minute; 0 is no limit.
    pub lookups_per_minute: u32,
    /// Events one socket may have in progress at once; more are refused with `RATE_LIMIT`.
    pub socket_events_in_flight: usize,
    /// Generations a user may run at once, across sockets.
    pub max_concurrent_streams_per_user: usize,
    /// Open `/ai` sockets and SSE streams one user may hold on this node.
    pub max_connections_per_user: usize,
    /// How long a socket whose token expired may stay to send `chat:auth` before it is closed.
    pub token_expiry_grace: Duration,
    /// Prompt plus completion tokens a user may spend per UTC day (`DAILY_TOKEN_QUOTA`); 0 is no quota.
    pub daily_token_quota: u64,
    pub on_disconnect: OnDisconnect,
    /// How long deltas are joined before they go out (0: each delta at once).
    pub stream_coalesce: Duration,
    /// The window deltas are joined in while the node is busy (0: never adaptively).
    pub stream_coalesce_max: Duration,
    /// How often a streaming answer's partial text is written to the database.
    pub checkpoint_interval: Duration,
    /// How long running answers may finish after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// Open connections at most, all clients together (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Open connections at most from one client IP, before any authentication (`MAX_CONNECTIONS_PER_IP`).
    pub max_connections_per_ip: usize,
    /// How long a client may take to send a request head (`HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight (`HTTP_IDLE_TIMEOUT_MS`).
    pub http_idle_timeout: Duration,
    /// The Bearer token `/metrics` requires (`METRICS_TOKEN`); `None` leaves it open.
    pub metrics_token: Option<Secret>,
    /// The admin view's credentials; `None` turns it off (`ADMIN_USERNAME`, `ADMIN_PASSWORD`).
    pub admin: Option<AdminConfig>,
    /// The raw-WebSocket dialects' settings.
    pub ws: WsConfig,
    /// How embedding requests are batched and paced.
    pub embeddings: EmbeddingConfig,
    /// The voice proxy's settings.
    pub realtime: RealtimeConfig,
    /// When new starts are refused to keep running answers at pace.
    pub overload: OverloadConfig,
    /// Titles and images (`TITLE_MODEL`, `MAX_ATTACHMENTS`).
    pub conversations: ConversationsConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads settings from a map of variables (the environment, or a test's own).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Vars(vars);
        let auth = auth_config(&env)?;
        let production = env.get("NODE_ENV").is_some_and(|v| v.eq_ignore_ascii_case("production"));
        if production && matches!(auth, AuthConfig::Open) {
            return Err(bad(
                if env.get("AUTH_ENABLED") == Some("false") { "AUTH_ENABLED" } else { "JWT_SECRET" },
                "NODE_ENV=production but no JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is set (or AUTH_ENABLED=false); refusing to run in open mode",
            ));
        }
        let cors_origins = env
            .list("CORS_ORIGIN")
            .or_else(|| env.list("CORS_ORIGINS"))
            .unwrap_or_else(|| vec!["http://localhost:5173".into()])
            .iter()
            .map(|o| origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let ping_interval = Duration::from_millis(env.parse("PING_INTERVAL_MS", 10_000u64)?);
        let ping_timeout = Duration::from_millis(env.parse("PING_TIMEOUT_MS", 5_000u64)?);
        if ping_interval.is_zero() {
            return Err(bad("PING_INTERVAL_MS", "must be above 0"));
        }
        let max_tokens_limit: u32 = env.parse("MAX_TOKENS_LIMIT", DEFAULT_MAX_TOKENS_LIMIT)?;
        let default_max_tokens: u32 = env.parse("DEFAULT_MAX_TOKENS", 4096)?;
        if default_max_tokens == 0 || default_max_tokens > max_tokens_limit {
            return Err(bad("DEFAULT_MAX_TOKENS", "must be between 1 and MAX_TOKENS_LIMIT"));
        }
        let default_temperature: f32 = env.parse("DEFAULT_TEMPERATURE", 0.7)?;
        if !(0.0..=2.0).contains(&default_temperature) {
            return Err(bad("DEFAULT_TEMPERATURE", "must be between 0 and 2"));
        }
        let default_model = env.get("DEFAULT_MODEL").unwrap_or("gpt-4").to_owned();
        let allowed_models = env.list("ALLOWED_MODELS").unwrap_or_default();
        if !allowed_models.is_empty() && !allowed_models.contains(&default_model) {
            return Err(bad("DEFAULT_MODEL", format!("{default_model:?} is not in ALLOWED_MODELS")));
        }
        let upstream = providers::Defaults {
            first_token_timeout: Duration::from_millis(env.parse("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", 60_000u64)?),
            idle_timeout: Duration::from_millis(env.parse("UPSTREAM_IDLE_TIMEOUT_MS", 30_000u64)?),
            retry: RetryPolicy {
                attempts: match env.parse("UPSTREAM_ATTEMPTS", 3u32)? {
                    0 => return Err(bad("UPSTREAM_ATTEMPTS", "must be at least 1")),
                    n => n,
                },
                base_delay: Duration::from_millis(env.parse("UPSTREAM_RETRY_BASE_MS", 250u64)?),
            },
        };
        let answering = upstream_config(&env, production, &upstream)?;
        Ok(Self {
            conversations: conversations::conversations_config(&env, &answering)?,
            // Open mode lets anyone chat on the upstream's key: loopback only, unless asked.
            host: env.parse(
                either(&env, "HOST", "WS_HOST"),
                if matches!(auth, AuthConfig::Open) { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from([0, 0, 0, 0]) },
            )?,
            host_explicit: env.get(either(&env, "HOST", "WS_HOST")).is_some(),
            port: env.parse(either(&env, "PORT", "WS_PORT"), 8000)?,
            cors_origins,
            auth,
            production,
            allow_client_system_prompt: env.parse("ALLOW_CLIENT_SYSTEM_PROMPT", !production)?,
            node_id: env.get("NODE_ID").map_or_else(default_node_id, str::to_owned),
            redis_url: redis_url(&env)?,
            node_lease: Duration::from_millis(match env.parse("NODE_LEASE_MS", 3_000u64)? {
                n if n < 100 => return Err(bad("NODE_LEASE_MS", "must be at least 100")),
                n => n,
            }),
            cluster_append_window: Duration::from_millis(match env.parse("CLUSTER_APPEND_MS", 50u64)? {
                n if n > 1000 => return Err(bad("CLUSTER_APPEND_MS", "must be at most 1000")),
                n => n,
            }),
            database_url: database_url(&env)?,
            database_max_connections: match env.get("DATABASE_MAX_CONNECTIONS") {
                None => None,
                Some(_) => match env.parse("DATABASE_MAX_CONNECTIONS", 0u32)? {
                    0 => return Err(bad("DATABASE_MAX_CONNECTIONS", "must be at least 1")),
                    n => Some(n),
                },
            },
            database_schema: database_schema(&env)?,
            upstream: answering,
            default_model,
            allowed_models,
            ping_interval,
            ping_timeout,
            socket_buffer_packets: match env.parse("SOCKET_BUFFER_PACKETS", 128usize)? {
                0 => return Err(bad("SOCKET_BUFFER_PACKETS", "must be above 0")),
                n => n,
            },
            socket_buffer_bytes: match env.parse("SOCKET_BUFFER_BYTES", 1_048_576usize)? {
                n if n < 4096 => return Err(bad("SOCKET_BUFFER_BYTES", "must be at least 4096")),
                n => n,
            },
            sse_keepalive: match env.parse("SSE_KEEPALIVE_MS", 15_000u64)? {
                0 => return Err(bad("SSE_KEEPALIVE_MS", "must be above 0")),
                n => Duration::from_millis(n),
            },
            max_message_chars: env.parse("MAX_MESSAGE_CHARS", 32_000)?,
            default_max_tokens,
            max_tokens_limit,
            default_temperature,
            system_prompt: env.get("SYSTEM_PROMPT").map(str::to_owned),
            system_prompt_presets: vars::presets(&env)?,
            max_history_messages: env.parse("MAX_HISTORY_MESSAGES", 50)?,
            model_context_tokens: match env.parse("MODEL_CONTEXT_TOKENS", 8192u32)? {
                0 => return Err(bad("MODEL_CONTEXT_TOKENS", "must be at least 1")),
                n => n,
            },
            upstream_first_token_timeout: upstream.first_token_timeout,
            upstream_idle_timeout: upstream.idle_timeout,
            upstream_retry: upstream.retry,
            rate_limit_per_minute: env.parse("RATE_LIMIT_PER_MINUTE", 60)?,
            lookups_per_minute: env.parse("LOOKUPS_PER_MINUTE", 600)?,
            socket_events_in_flight: match env.parse("SOCKET_EVENTS_IN_FLIGHT", 16usize)? {
                0 => return Err(bad("SOCKET_EVENTS_IN_FLIGHT", "must be at least 1")),
                n => n,
            },
            max_concurrent_streams_per_user: match env.parse("MAX_CONCURRENT_STREAMS_PER_USER", 3usize)? {
                0 => return Err(bad("MAX_CONCURRENT_STREAMS_PER_USER", "must be at least 1")),
                n => n,
            },
            max_connections_per_user: match env.parse("MAX_CONNECTIONS_PER_USER", 64usize)? {
                0 => return Err(bad("MAX_CONNECTIONS_PER_USER", "must be at least 1")),
                n => n,
            },
            token_expiry_grace: Duration::from_secs(env.parse("TOKEN_EXPIRY_GRACE_SECONDS", 30u64)?),
            daily_token_quota: env.parse("DAILY_TOKEN_QUOTA", 0)?,
            on_disconnect: match env.get("ON_DISCONNECT").unwrap_or("finish") {
                "finish" => OnDisconnect::Finish,
                "cancel" => OnDisconnect::Cancel,
                other => {
                    return Err(bad("ON_DISCONNECT", format!("{other:?} is neither `finish` nor `cancel`")));
                }
            },
            stream_coalesce: Duration::from_millis(env.parse("STREAM_COALESCE_MS", 0u64)?),
            stream_coalesce_max: Duration::from_millis(env.parse("STREAM_COALESCE_MAX_MS", 30u64)?),
            checkpoint_interval: Duration::from_millis(env.parse("CHECKPOINT_INTERVAL_MS", 2_000u64)?),
            shutdown_grace: Duration::from_secs(env.parse("SHUTDOWN_GRACE_SECONDS", 10u64)?),
            log_format: match env.get("LOG_FORMAT").unwrap_or("pretty") {
                "pretty" | "text" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return Err(bad("LOG_FORMAT", format!("{other:?} is neither `pretty` nor `json`")));
                }
            },
            max_connections: at_least_one(&env, "MAX_CONNECTIONS", 10_000)?,
            max_connections_per_ip: at_least_one(&env, "MAX_CONNECTIONS_PER_IP", 256)?,
            header_read_timeout: Duration::from_millis(at_least_one(&env, "HEADER_READ_TIMEOUT_MS", 10_000)? as u64),
            http_idle_timeout: Duration::from_millis(at_least_one(&env, "HTTP_IDLE_TIMEOUT_MS", 60_000)? as u64),
            metrics_token: metrics_token(&env)?,
            admin: admin_config(&env)?,
            ws: ws_config(&env)?,
            embeddings: embedding_config(&env)?,
            realtime: realtime::realtime_config(&env)?,
            overload: overload_config(&env)?,
        })
    }

    /// The first-token and idle timeouts of the upstream.
    pub fn upstream_timeouts(&self) -> (Duration, Duration) {
        (self.upstream_first_token_timeout, self.upstream_idle_timeout)
    }

    /// True when the server will accept unauthenticated sockets.
    pub fn is_open_mode(&self) -> bool {
        matches!(self.auth, AuthConfig::Open)
    }
}

#[path = "config_conversations.rs"]
mod conversations;
#[path = "config_providers.rs"]
mod providers;
#[path = "config_realtime.rs"]
mod realtime;
#[path = "config_secret.rs"]
mod secret;
#[path = "config_vars.rs"]
mod vars;
pub use conversations::{ConversationsConfig, MAX_ATTACHMENTS_LIMIT, TitleModel};
pub use providers::{DEFAULT_MOCK_RESPONSE, MockConfig, ProviderSettings, ProvidersConfig, Target};
pub use realtime::RealtimeConfig;
pub use secret::Secret;
pub use vars::{EmbeddingConfig, OverloadConfig, WsConfig, redact_url};
use vars::{
    Vars, admin_config, at_least_one, auth_config, database_schema, database_url, default_node_id, either, embedding_config, metrics_token,
    origin, overload_config, redis_url, upstream_config, ws_config,
};

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
