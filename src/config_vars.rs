//! How each variable is read: the sections of [`super::Config`] that take more than a
//! parse, and the variables themselves (empty values count as unset).

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use super::{AdminConfig, AuthConfig, ConfigError, JwtConfig, MockConfig, Secret, UpstreamConfig, bad};

pub(super) fn auth_config(env: &Vars) -> Result<AuthConfig, ConfigError> {
    // Void's switch: `AUTH_ENABLED=false` is open mode whatever else is set.
    match env.parse("AUTH_ENABLED", true)? {
        false => return Ok(AuthConfig::Open),
        true if env.get("AUTH_ENABLED").is_some() => {
            if let AuthConfig::Open = jwt_config(env)? {
                return Err(bad("AUTH_ENABLED", "is true but no JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is set"));
            }
        }
        true => {}
    }
    jwt_config(env)
}

fn jwt_config(env: &Vars) -> Result<AuthConfig, ConfigError> {
    // Supabase's and Clerk's names are aliases; Supabase's tokens are for `authenticated`.
    let supabase = env.get("JWT_SECRET").is_none() && env.get("SUPABASE_JWT_SECRET").is_some();
    let secret = env.get(either(env, "JWT_SECRET", "SUPABASE_JWT_SECRET")).map(|s| Secret(s.to_owned()));
    let key_var = either(env, "JWT_PUBLIC_KEY", "CLERK_JWT_KEY");
    // PEMs in env files are often written on one line with literal `\n`.
    let public_key_pem = env.get(key_var).map(|k| k.replace("\\n", "\n"));
    let jwks_url = env.get("JWT_JWKS_URL").map(str::to_owned);
    let issuer = env.get("JWT_ISSUER").map(str::to_owned);
    let audience = env.get("JWT_AUDIENCE").map(str::to_owned).or_else(|| supabase.then(|| "authenticated".to_owned()));
    let user_claim = env.get("JWT_USER_CLAIM").map(str::to_owned);
    if secret.is_none() && public_key_pem.is_none() && jwks_url.is_none() {
        if let Some(var) = [("JWT_ISSUER", &issuer), ("JWT_AUDIENCE", &audience), ("JWT_USER_CLAIM", &user_claim)]
            .into_iter()
            .find_map(|(name, v)| v.as_ref().map(|_| name))
        {
            return Err(bad(var, "is set but none of JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is; set one of them"));
        }
        return Ok(AuthConfig::Open);
    }
    if let Some(pem) = &public_key_pem {
        let rsa = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).is_ok();
        let ec = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).is_ok();
        let ed = jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).is_ok();
        if !rsa && !ec && !ed {
            return Err(bad(key_var, "is not an RSA, EC or Ed25519 public key in PEM form"));
        }
    }
    if let Some(url) = &jwks_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(bad("JWT_JWKS_URL", "must start with https:// (or http://)"));
    }
    let jwks_refresh = match env.parse("JWT_JWKS_REFRESH_SECONDS", 10u64)? {
        n if n > 3600 => return Err(bad("JWT_JWKS_REFRESH_SECONDS", "must be at most 3600")),
        n => Duration::from_secs(n),
    };
    Ok(AuthConfig::Jwt(JwtConfig {
        secret,
        public_key_pem,
        issuer,
        audience,
        user_claim: user_claim.unwrap_or_else(|| "sub".into()),
        jwks_url,
        jwks_refresh,
    }))
}

/// `ADMIN_USERNAME` and `ADMIN_PASSWORD` (a bcrypt hash): both or neither.
pub(super) fn admin_config(env: &Vars) -> Result<Option<AdminConfig>, ConfigError> {
    match (env.get("ADMIN_USERNAME"), env.get("ADMIN_PASSWORD")) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad("ADMIN_PASSWORD", "is unset but ADMIN_USERNAME is set; set both to turn the admin view on, or neither")),
        (None, Some(_)) => Err(bad("ADMIN_USERNAME", "is unset but ADMIN_PASSWORD is set; set both to turn the admin view on, or neither")),
        (Some(username), Some(hash)) => {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(bad("ADMIN_PASSWORD", "is not a bcrypt hash ($2b$...); make one with `chatwire hash-password`"));
            }
            Ok(Some(AdminConfig { username: username.to_owned(), password_hash: Secret(hash.to_owned()) }))
        }
    }
}

/// One allowed origin, as a browser sends it: `scheme://host[:port]`, no path. A
/// trailing slash is dropped; anything else that is not an origin is refused.
pub(super) fn origin(raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim_end_matches('/');
    let refuse = |why: &str| {
        Err(bad(
            "CORS_ORIGIN",
            format!("{raw:?} {why}; list each allowed origin as scheme://host[:port] (credentials are allowed, so `*` is refused)"),
        ))
    };
    if trimmed == "*" {
        return refuse("is a wildcard");
    }
    let Ok(uri) = trimmed.parse::<http::Uri>() else {
        return refuse("is not an origin");
    };
    match (uri.scheme_str(), uri.authority(), uri.path_and_query().map(|p| p.as_str())) {
        (Some("http" | "https"), Some(_), None | Some("" | "/")) if !trimmed.contains('@') => Ok(trimmed.to_owned()),
        (Some("http" | "https"), Some(_), _) => refuse("has a path, a query or credentials"),
        _ => refuse("is not an http(s) origin"),
    }
}

/// The host's name and this process's id: unique among the nodes of one deployment.
pub(super) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "chatwire".to_owned() } else { host };
    format!("{host}-{}", std::process::id())
}

pub(super) fn upstream_config(env: &Vars, production: bool, defaults: &super::providers::Defaults) -> Result<UpstreamConfig, ConfigError> {
    let forced_mock = match env.get("UPSTREAM") {
        None => false,
        Some("mock") => true,
        Some(other) => {
            return Err(bad(
                "UPSTREAM",
                format!("{other:?} is not `mock`; leave it unset to use PROVIDERS_FILE or the providers' API keys"),
            ));
        }
    };
    let providers = if forced_mock { None } else { super::providers::providers_config(env, defaults)? };
    if let Some(providers) = providers {
        return Ok(UpstreamConfig::Providers(providers));
    }
    if production && !forced_mock {
        return Err(bad(
            "OPENAI_API_KEY",
            "NODE_ENV=production but no upstream is set (PROVIDERS_FILE, OPENAI_API_KEY, OPENAI_BASE_URL, GEMINI_API_KEY, GROQ_API_KEY or MISTRAL_API_KEY); refusing to serve the built-in mock model (UPSTREAM=mock asks for it)",
        ));
    }
    if let Some(id) = env.get("DEFAULT_PROVIDER").filter(|id| *id != "mock") {
        return Err(bad("DEFAULT_PROVIDER", format!("{id:?} is not a configured provider (only the built-in mock is)")));
    }
    let mut mock = MockConfig::default();
    if let Some(text) = env.get("MOCK_RESPONSE") {
        mock.response = text.to_owned();
    }
    mock.token_delay = Duration::from_millis(env.parse("MOCK_TOKEN_DELAY_MS", 25u64)?);
    mock.first_token_delay = Duration::from_millis(env.parse("MOCK_FIRST_TOKEN_DELAY_MS", 0u64)?);
    mock.stamp = env.parse("MOCK_STAMP", false)?;
    Ok(UpstreamConfig::Mock(mock))
}

/// `DATABASE_URL`: a SQLite or PostgreSQL URL. Anything else is refused here, before a
/// driver would print it whole, and the message shows it without its password.
pub(super) fn database_url(env: &Vars) -> Result<String, ConfigError> {
    let url = env.get("DATABASE_URL").unwrap_or("sqlite://chatwire.db?mode=rwc");
    if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_owned());
    }
    Err(bad("DATABASE_URL", format!("{:?} is neither sqlite:... nor postgres://... (postgresql://...)", redact_url(url))))
}

/// `REDIS_URL`: cluster mode, which shares the answers through Redis and the rows through
/// one PostgreSQL. A SQLite file belongs to one process, so SQLite with Redis is refused.
pub(super) fn redis_url(env: &Vars) -> Result<Option<String>, ConfigError> {
    let Some(url) = env.get("REDIS_URL") else {
        return Ok(None);
    };
    if !url.starts_with("redis://") {
        return Err(bad("REDIS_URL", format!("{:?} is not a redis://host[:port][/db] URL", redact_url(url))));
    }
    if database_url(env)?.starts_with("sqlite:") {
        return Err(bad(
            "REDIS_URL",
            "cluster mode needs a database every node shares: set DATABASE_URL to a postgres://... URL (a SQLite file belongs to one process)",
        ));
    }
    Ok(Some(url.to_owned()))
}

/// `url` with the password of its user info (`scheme://user:password@host`) as `***`,
/// for every message that may show a database URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// `DATABASE_SCHEMA`: a plain SQL identifier, so it is the same name quoted or not and
/// can go into a connection's `search_path` as it is.
pub(super) fn database_schema(env: &Vars) -> Result<String, ConfigError> {
    let name = env.get("DATABASE_SCHEMA").unwrap_or("chatwire");
    let plain = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if !plain {
        return Err(bad(
            "DATABASE_SCHEMA",
            format!(
                "{name:?} is not a plain SQL identifier (lower-case letters, digits and `_`, not starting with a digit or `pg_`, at most 63 characters)"
            ),
        ));
    }
    Ok(name.to_owned())
}

/// The variables, with empty values treated as unset (as `.env` files often leave them).
pub(super) struct Vars(pub(super) HashMap<String, String>);

impl Vars {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub(super) fn list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }

    pub(super) fn parse<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| bad(name, format!("{raw:?} is not valid: {e}"))),
        }
    }
}

/// `SYSTEM_PROMPT_PRESETS`: a JSON file of named system prompts, `{ "name": "prompt" }`.
pub(super) fn presets(env: &Vars) -> Result<HashMap<String, String>, ConfigError> {
    const VAR: &str = "SYSTEM_PROMPT_PRESETS";
    let Some(path) = env.get(VAR) else {
        return Ok(HashMap::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(VAR, format!("{path}: cannot read it: {e}")))?;
    let presets: HashMap<String, String> =
        serde_json::from_str(&text).map_err(|e| bad(VAR, format!("{path}: must be a JSON object of names and prompts: {e}")))?;
    match presets.iter().find(|(name, prompt)| name.is_empty() || prompt.trim().is_empty()) {
        Some((name, _)) => Err(bad(VAR, format!("{path}: preset {name:?}: a name and its prompt must not be empty"))),
        None => Ok(presets),
    }
}

/// `METRICS_TOKEN`: sent in an `Authorization: Bearer` header, so visible ASCII only.
pub(super) fn metrics_token(env: &Vars) -> Result<Option<Secret>, ConfigError> {
    match env.get("METRICS_TOKEN") {
        None => Ok(None),
        Some(token) if token.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(Secret(token.to_owned()))),
        Some(_) => Err(bad("METRICS_TOKEN", "must be visible ASCII with no spaces (it is sent in an Authorization: Bearer header)")),
    }
}

/// A count or duration that must be at least 1.
pub(super) fn at_least_one(env: &Vars, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match env.parse(name, default)? {
        0 => Err(bad(name, "must be at least 1")),
        n => Ok(n),
    }
}

/// The raw-WebSocket dialects' settings (Void, canyon, WADI).
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Void's path (`WS_PATH`, default `/ws`).
    pub path: String,
    /// Largest frame or message a client may send (`WS_MAX_MESSAGE_BYTES`); more closes with 1009.
    pub max_message_bytes: usize,
    /// Messages a connection may send per second (`WS_MESSAGES_PER_SECOND`), bursts of twice that.
    pub messages_per_second: u32,
    /// How often the server pings (`PING_INTERVAL`, ms, else `PING_INTERVAL_MS`).
    pub ping_interval: Duration,
}

/// `name`, unless it is unset and `alias` is set: then `alias` (`PORT` and `WS_PORT`).
pub(super) fn either(env: &Vars, name: &'static str, alias: &'static str) -> &'static str {
    if env.get(name).is_none() && env.get(alias).is_some() { alias } else { name }
}

pub(super) fn ws_config(env: &Vars) -> Result<WsConfig, ConfigError> {
    let path = env.get("WS_PATH").unwrap_or("/ws").to_owned();
    if !path.starts_with('/') || path.len() < 2 || path.contains(['{', '}', '*', '?', '#']) {
        return Err(bad("WS_PATH", format!("{path:?} is not a plain path like /ws")));
    }
    let ping_interval = match env.get("PING_INTERVAL") {
        Some(_) => env.parse("PING_INTERVAL", 0u64)?,
        None => env.parse("PING_INTERVAL_MS", 10_000u64)?,
    };
    if ping_interval == 0 {
        return Err(bad(either(env, "PING_INTERVAL_MS", "PING_INTERVAL"), "must be above 0"));
    }
    Ok(WsConfig {
        path,
        max_message_bytes: match env.parse("WS_MAX_MESSAGE_BYTES", 1_048_576usize)? {
            n if n < 1024 => return Err(bad("WS_MAX_MESSAGE_BYTES", "must be at least 1024")),
            n => n,
        },
        messages_per_second: match env.parse("WS_MESSAGES_PER_SECOND", 20u32)? {
            0 => return Err(bad("WS_MESSAGES_PER_SECOND", "must be at least 1")),
            n => n,
        },
        ping_interval: Duration::from_millis(ping_interval),
    })
}

/// How embedding requests are gathered and paced (the multi-provider server's settings).
#[derive(Clone, Debug)]
pub struct EmbeddingConfig {
    /// The model asked for (`EMBEDDING_MODEL`), routed like a chat model.
    pub model: String,
    /// Most inputs in one upstream call (`EMBEDDING_BATCH_SIZE`).
    pub batch_size: usize,
    /// How long a batch waits for more inputs after its first (`EMBEDDING_BATCH_WAIT_MS`).
    pub batch_wait: Duration,
    /// Most upstream calls started in any sliding second (`EMBEDDING_RATE_LIMIT`).
    pub calls_per_second: usize,
    /// Most inputs waiting for a call (`EMBEDDING_QUEUE_LIMIT`, at least 1000); past it, `RATE_LIMIT`.
    pub queue_limit: usize,
}

pub(super) fn embedding_config(env: &Vars) -> Result<EmbeddingConfig, ConfigError> {
    Ok(EmbeddingConfig {
        model: env.get("EMBEDDING_MODEL").unwrap_or("text-embedding-3-small").to_owned(),
        batch_size: match env.parse("EMBEDDING_BATCH_SIZE", 5usize)? {
            n if !(1..=2048).contains(&n) => return Err(bad("EMBEDDING_BATCH_SIZE", "must be from 1 to 2048")),
            n => n,
        },
        batch_wait: Duration::from_millis(match env.parse("EMBEDDING_BATCH_WAIT_MS", 20u64)? {
            n if n > 10_000 => return Err(bad("EMBEDDING_BATCH_WAIT_MS", "must be at most 10000")),
            n => n,
        }),
        calls_per_second: at_least_one(env, "EMBEDDING_RATE_LIMIT", 5)?,
        queue_limit: match env.parse("EMBEDDING_QUEUE_LIMIT", 1000usize)? {
            n if n < 1000 => return Err(bad("EMBEDDING_QUEUE_LIMIT", "must be at least 1000")),
            n => n,
        },
    })
}

/// When the node refuses new starts to keep its running answers at pace (`OVERLOAD_*`).
/// A limit of 0 is off.
#[derive(Clone, Debug)]
pub struct OverloadConfig {
    /// The runtime's scheduling lag past which starts are refused (`OVERLOAD_LAG_MS`).
    pub lag: Duration,
    /// Answers running on this node past which starts are refused (`OVERLOAD_MAX_RUNNING`).
    pub max_running: usize,
    /// Starts waiting for the database past which new ones are refused at once (`OVERLOAD_DB_QUEUE`).
    pub db_queue: usize,
    /// The longest a start waits for a database connection before it is refused (`OVERLOAD_DB_WAIT_MS`).
    pub db_wait: Duration,
    /// The `retryAfterMs` a refusal carries (`OVERLOAD_RETRY_AFTER_MS`).
    pub retry_after: Duration,
}

pub(super) fn overload_config(env: &Vars) -> Result<OverloadConfig, ConfigError> {
    let ms = |name, default| env.parse(name, default).map(Duration::from_millis);
    Ok(OverloadConfig {
        lag: ms("OVERLOAD_LAG_MS", 50)?,
        max_running: env.parse("OVERLOAD_MAX_RUNNING", 5_000)?,
        db_queue: env.parse("OVERLOAD_DB_QUEUE", 256)?,
        db_wait: match ms("OVERLOAD_DB_WAIT_MS", 1_000)? {
            d if d.is_zero() => return Err(bad("OVERLOAD_DB_WAIT_MS", "must be at least 1")),
            d => d,
        },
        retry_after: ms("OVERLOAD_RETRY_AFTER_MS", 1_000)?,
    })
}

/// What is worked out of several settings.
impl super::Config {
    /// How long a `streaming` row may stay unchanged before its process is taken for dead:
    /// a live generation offers a checkpoint every interval, the writer stores it within
    /// the next one, so a live row is never older than a timeout plus two intervals.
    pub fn stale_answer_after(&self) -> Duration {
        let mut longest = self.upstream_first_token_timeout.max(self.upstream_idle_timeout);
        if let UpstreamConfig::Providers(p) = &self.upstream {
            for provider in &p.providers {
                longest = longest.max(provider.first_token_timeout).max(provider.idle_timeout);
            }
        }
        longest + self.checkpoint_interval * 3
    }

    /// Most bytes of answer text in one frame to a socket: its byte budget shared by its
    /// packets, so a full queue holds at most `SOCKET_BUFFER_BYTES`. At least 1 KiB.
    pub fn frame_max_bytes(&self) -> usize {
        (self.socket_buffer_bytes / self.socket_buffer_packets).max(1024)
    }
}
