//! What the server says about itself: the start-up summary (where to connect, the auth
//! mode, where the data goes, which model answers) and the environment variables that
//! `chatwire serve --help` lists.

use crate::{
    auth::Authenticator,
    config::{Config, UpstreamConfig},
};

/// The start-up summary, a `(what, value)` pair a line. `mock_url` is the built-in
/// mock's base URL when it serves the answers.
pub fn lines(config: &Config, auth: &Authenticator, mock_url: Option<&str>) -> Vec<(&'static str, String)> {
    let mut host = config.host.to_string();
    if config.host.is_ipv6() {
        host = format!("[{host}]");
    }
    let listen = if config.is_open_mode() && !config.host_explicit {
        format!("http://{host}:{}/ai (loopback only in open mode; set HOST to listen elsewhere)", config.port)
    } else {
        format!("http://{host}:{}/ai", config.port)
    };
    let upstream = match (&config.upstream, mock_url) {
        (UpstreamConfig::Providers(p), _) => {
            let ids: Vec<&str> = p.providers.iter().map(|p| p.id.as_str()).collect();
            format!("providers {} (default {}), default model {}", ids.join(", "), p.default, config.default_model)
        }
        (UpstreamConfig::Mock(_), Some(url)) => {
            format!("the built-in mock model at {url} (no OPENAI_API_KEY or OPENAI_BASE_URL)")
        }
        (UpstreamConfig::Mock(_), None) => "the built-in mock model".into(),
    };
    let admin = match &config.admin {
        Some(admin) => format!("http://{host}:{}/admin and the /admin namespace, as {}", config.port, admin.username),
        None => "off (ADMIN_USERNAME and ADMIN_PASSWORD unset)".into(),
    };
    vec![
        ("connect to", listen),
        ("SSE", format!("POST http://{host}:{}/v1/chat", config.port)),
        ("auth", auth.describe()),
        ("database", database(&config.database_url, &config.database_schema)),
        ("upstream", upstream),
        ("allowed origins", config.cors_origins.join(", ")),
        ("node", config.node_id.clone()),
        ("admin", admin),
    ]
}

/// The database without credentials: a SQLite file's absolute path, or a server's
/// host, port and database.
fn database(url: &str, schema: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//").split('?').next().unwrap_or_default();
        if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
            return "SQLite in memory (nothing is kept)".into();
        }
        let absolute = std::path::absolute(path).map(|p| p.display().to_string()).unwrap_or_else(|_| path.to_owned());
        return format!("SQLite file {absolute}");
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (server, database) = rest.split_once('/').unwrap_or((rest, ""));
    let database = database.split('?').next().unwrap_or_default();
    format!("PostgreSQL {server}, database {database}, schema {schema}")
}

/// The variables `chatwire serve` reads, for `--help`; the README's table has them all.
pub const ENVIRONMENT: &str = "\
Environment (also read from .env; README.md has the full table):
  PORT, HOST                 where to listen (open mode: 127.0.0.1 unless HOST is set)
  CORS_ORIGIN                comma list of allowed origins (scheme://host[:port])
  JWT_SECRET, JWT_PUBLIC_KEY HS256 secret / RS256 or ES256 PEM; neither = open mode
  JWT_ISSUER, JWT_AUDIENCE, JWT_USER_CLAIM
  JWT_JWKS_URL               RS256/ES256/EdDSA keys from a JWKS (Clerk, Supabase, Auth0, Cognito)
  JWT_JWKS_REFRESH_SECONDS   least time between JWKS fetches for unknown kids (default 10)
  CLERK_JWT_KEY, SUPABASE_JWT_SECRET   aliases of JWT_PUBLIC_KEY / JWT_SECRET (Supabase: aud authenticated)
  AUTH_ENABLED=false         open mode (refused under NODE_ENV=production)
  WS_PATH, WS_PORT, WS_HOST, CORS_ORIGINS, PING_INTERVAL   Void's names
  WS_MAX_MESSAGE_BYTES, WS_MESSAGES_PER_SECOND   raw WebSocket dialects (Void, canyon, WADI)
  REALTIME_PATH, OPENAI_REALTIME_URL, REALTIME_API_KEY   the voice proxy (default /realtime)
  REALTIME_MODEL, REALTIME_VOICE, REALTIME_TURN_DETECTION, REALTIME_VAD_SILENCE_MS, REALTIME_TRANSCRIPTION_MODEL
  REALTIME_TEMPERATURE, REALTIME_MAX_OUTPUT_TOKENS, REALTIME_PRESETS_FILE, REALTIME_CLIENT_SESSION_FIELDS
  REALTIME_MAX_SESSION_SECONDS, REALTIME_MAX_SESSIONS_PER_USER, REALTIME_IDLE_TIMEOUT_SECONDS
  REALTIME_DAILY_TOKENS, REALTIME_UPSTREAM_IDLE_TIMEOUT_MS   voice limits
  NODE_ENV=production        refuses open mode and the mock model
  DATABASE_URL               sqlite://FILE?mode=rwc (default sqlite://chatwire.db) or postgres://...
  DATABASE_SCHEMA            PostgreSQL schema of chatwire's tables (default chatwire)
  DATABASE_MAX_CONNECTIONS
  PROVIDERS_FILE             TOML of providers, fallbacks, aliases (see deploy/providers.toml)
  OPENAI_API_KEY, OPENAI_BASE_URL, GEMINI_API_KEY, GROQ_API_KEY, MISTRAL_API_KEY, DEFAULT_PROVIDER, UPSTREAM=mock
  DEFAULT_MODEL, ALLOWED_MODELS, DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT, DEFAULT_TEMPERATURE
  MAX_MESSAGE_CHARS, SYSTEM_PROMPT, ALLOW_CLIENT_SYSTEM_PROMPT, MAX_HISTORY_MESSAGES
  SYSTEM_PROMPT_PRESETS      JSON file of named system prompts that chat:start { preset } picks from
  MODEL_CONTEXT_TOKENS       context length of models PROVIDERS_FILE does not size (default 8192)
  TITLE_MODEL                model that titles new conversations (unset: on with the mock, off otherwise; off)
  MAX_ATTACHMENTS            images one question may carry (default 4; 5 MiB each)
  PING_INTERVAL_MS, PING_TIMEOUT_MS, SOCKET_BUFFER_PACKETS, SOCKET_BUFFER_BYTES, SSE_KEEPALIVE_MS
  UPSTREAM_FIRST_TOKEN_TIMEOUT_MS, UPSTREAM_IDLE_TIMEOUT_MS, UPSTREAM_ATTEMPTS, UPSTREAM_RETRY_BASE_MS
  RATE_LIMIT_PER_MINUTE, LOOKUPS_PER_MINUTE, SOCKET_EVENTS_IN_FLIGHT, MAX_CONCURRENT_STREAMS_PER_USER, ON_DISCONNECT, STREAM_COALESCE_MS
  STREAM_COALESCE_MAX_MS     while busy, join an answer's deltas within this window (default 30)
  MAX_CONNECTIONS_PER_USER, TOKEN_EXPIRY_GRACE_SECONDS
  DAILY_TOKEN_QUOTA          prompt + completion tokens per user per UTC day (0 = off)
  OVERLOAD_LAG_MS, OVERLOAD_MAX_RUNNING, OVERLOAD_DB_QUEUE, OVERLOAD_DB_WAIT_MS, OVERLOAD_RETRY_AFTER_MS
                             headroom limits: past one, new starts get UNAVAILABLE + retryAfterMs
  CHECKPOINT_INTERVAL_MS, SHUTDOWN_GRACE_SECONDS, NODE_ID
  REDIS_URL, NODE_LEASE_MS, CLUSTER_APPEND_MS   cluster mode (needs PostgreSQL)
  MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, HEADER_READ_TIMEOUT_MS, HTTP_IDLE_TIMEOUT_MS
  EMBEDDING_MODEL, EMBEDDING_BATCH_SIZE, EMBEDDING_BATCH_WAIT_MS, EMBEDDING_RATE_LIMIT, EMBEDDING_QUEUE_LIMIT   embeddings
  MOCK_RESPONSE, MOCK_TOKEN_DELAY_MS, MOCK_FIRST_TOKEN_DELAY_MS, MOCK_STAMP
  ADMIN_USERNAME, ADMIN_PASSWORD   the admin view (/admin); a bcrypt hash: chatwire hash-password
  LOG_FORMAT (pretty|json), RUST_LOG
  METRICS_TOKEN              Bearer token GET /metrics requires (unset: open)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_line_names_the_place_without_secrets() {
        let pg = database("postgres://app:hunter2@db.internal:5432/chat?sslmode=require", "chatwire");
        assert_eq!(pg, "PostgreSQL db.internal:5432, database chat, schema chatwire");
        assert!(database("sqlite://chatwire.db?mode=rwc", "x").starts_with("SQLite file /"));
        assert!(database("sqlite://chatwire.db?mode=rwc", "x").ends_with("/chatwire.db"));
        assert_eq!(database("sqlite::memory:", "x"), "SQLite in memory (nothing is kept)");
    }

    #[test]
    fn every_variable_of_the_readme_table_is_in_the_help() {
        let readme = include_str!("../README.md");
        for line in readme.lines().filter(|l| l.starts_with("| `")) {
            let var = line.trim_start_matches("| `").split('`').next().unwrap_or_default();
            if var.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !var.is_empty() {
                assert!(ENVIRONMENT.contains(var), "{var} is in the README's table but not in --help");
            }
        }
    }
}
