//! Parsing the configuration: defaults, and a message naming each wrong variable.

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_are_open_mode_with_the_mock() {
    let c = Config::from_vars(vars(&[])).unwrap();
    assert_eq!(c.port, 8000);
    assert!(c.is_open_mode());
    assert!(matches!(c.upstream, UpstreamConfig::Mock(_)));
    assert_eq!(c.ping_interval, Duration::from_secs(10));
    assert_eq!(c.ping_timeout, Duration::from_secs(5));
    assert_eq!(c.cors_origins, vec!["http://localhost:5173"]);
}

#[test]
fn a_wrong_value_names_its_variable() {
    let e = Config::from_vars(vars(&[("PORT", "eighty")])).unwrap_err();
    assert_eq!(e.var, "PORT");
    let e = Config::from_vars(vars(&[("CORS_ORIGIN", "*")])).unwrap_err();
    assert_eq!(e.var, "CORS_ORIGIN");
    let e = Config::from_vars(vars(&[("JWT_ISSUER", "me")])).unwrap_err();
    assert_eq!(e.var, "JWT_ISSUER");
    let e = Config::from_vars(vars(&[("JWT_PUBLIC_KEY", "nope")])).unwrap_err();
    assert_eq!(e.var, "JWT_PUBLIC_KEY");
    for refresh in ["soon", "-1", "3601"] {
        let e = Config::from_vars(vars(&[("JWT_JWKS_URL", "https://id.example/jwks"), ("JWT_JWKS_REFRESH_SECONDS", refresh)])).unwrap_err();
        assert_eq!(e.var, "JWT_JWKS_REFRESH_SECONDS", "{refresh}");
    }
}

#[test]
fn production_refuses_open_mode() {
    let e = Config::from_vars(vars(&[("NODE_ENV", "production")])).unwrap_err();
    assert_eq!(e.var, "JWT_SECRET");
    assert!(Config::from_vars(vars(&[("NODE_ENV", "production"), ("JWT_SECRET", "s"), ("OPENAI_API_KEY", "k")])).is_ok());
}

#[test]
fn production_refuses_the_mock_model_unless_asked_for() {
    let e = Config::from_vars(vars(&[("NODE_ENV", "production"), ("JWT_SECRET", "s")])).unwrap_err();
    assert_eq!(e.var, "OPENAI_API_KEY");
    assert!(e.problem.contains("UPSTREAM=mock"), "{e}");
    let c = Config::from_vars(vars(&[("NODE_ENV", "production"), ("JWT_SECRET", "s"), ("UPSTREAM", "mock")])).unwrap();
    assert!(matches!(c.upstream, UpstreamConfig::Mock(_)));
    // UPSTREAM=mock wins over a configured key; anything else is a mistake.
    let c = Config::from_vars(vars(&[("UPSTREAM", "mock"), ("OPENAI_API_KEY", "k")])).unwrap();
    assert!(matches!(c.upstream, UpstreamConfig::Mock(_)));
    assert_eq!(Config::from_vars(vars(&[("UPSTREAM", "openia")])).unwrap_err().var, "UPSTREAM");
}

#[test]
fn open_mode_listens_on_loopback_unless_host_is_set() {
    let open = Config::from_vars(vars(&[])).unwrap();
    assert_eq!((open.host, open.host_explicit), (IpAddr::from([127, 0, 0, 1]), false));
    let asked = Config::from_vars(vars(&[("HOST", "0.0.0.0")])).unwrap();
    assert_eq!((asked.host, asked.host_explicit), (IpAddr::from([0, 0, 0, 0]), true));
    let jwt = Config::from_vars(vars(&[("JWT_SECRET", "s")])).unwrap();
    assert_eq!(jwt.host, IpAddr::from([0, 0, 0, 0]), "with tokens, all interfaces as before");
}

#[test]
fn client_system_prompts_are_off_in_production_by_default() {
    assert!(Config::from_vars(vars(&[])).unwrap().allow_client_system_prompt);
    let prod = Config::from_vars(vars(&[("NODE_ENV", "production"), ("JWT_SECRET", "s"), ("UPSTREAM", "mock")])).unwrap();
    assert!(!prod.allow_client_system_prompt);
    let off = Config::from_vars(vars(&[("ALLOW_CLIENT_SYSTEM_PROMPT", "false")])).unwrap();
    assert!(!off.allow_client_system_prompt);
    assert_eq!(Config::from_vars(vars(&[("ALLOW_CLIENT_SYSTEM_PROMPT", "maybe")])).unwrap_err().var, "ALLOW_CLIENT_SYSTEM_PROMPT");
}

#[test]
fn origins_are_normalized_or_refused_by_name() {
    let c = Config::from_vars(vars(&[("CORS_ORIGIN", "https://app.example.com/, http://localhost:5173")])).unwrap();
    assert_eq!(c.cors_origins, vec!["https://app.example.com", "http://localhost:5173"]);
    for wrong in ["*", "app.example.com", "https://app.example.com/chat", "ftp://x.test", "https://u:p@x.test"] {
        let e = Config::from_vars(vars(&[("CORS_ORIGIN", wrong)])).unwrap_err();
        assert_eq!(e.var, "CORS_ORIGIN", "{wrong}");
        assert!(e.problem.contains(wrong), "{e}");
    }
}

#[test]
fn cors_is_a_comma_list() {
    let c = Config::from_vars(vars(&[("CORS_ORIGIN", "http://a.test, https://b.test")])).unwrap();
    assert_eq!(c.cors_origins, vec!["http://a.test", "https://b.test"]);
}

#[test]
fn a_client_may_ask_for_at_most_16384_tokens_by_default() {
    let c = Config::from_vars(vars(&[])).unwrap();
    assert_eq!(c.max_tokens_limit, 16_384);
    assert_eq!(c.default_max_tokens, 4096);
    assert!(c.default_max_tokens <= c.max_tokens_limit);
}

#[test]
fn a_mistyped_database_url_is_named_without_its_password() {
    let e = Config::from_vars(vars(&[("DATABASE_URL", "postgress://app:hunter2@db.internal:5432/chat")])).unwrap_err();
    assert_eq!(e.var, "DATABASE_URL");
    assert_eq!(
        e.to_string(),
        "DATABASE_URL: \"postgress://app:***@db.internal:5432/chat\" is neither sqlite:... nor postgres://... (postgresql://...)"
    );
    for ok in ["sqlite://x.db?mode=rwc", "sqlite::memory:", "postgres://a:b@h/d", "postgresql://h/d"] {
        assert_eq!(Config::from_vars(vars(&[("DATABASE_URL", ok)])).unwrap().database_url, ok);
    }
    assert_eq!(redact_url("postgres://app@h/d"), "postgres://app@h/d");
    assert_eq!(redact_url("postgres://app:p@ss@h/d?x=@"), "postgres://app:***@h/d?x=@");
}

#[test]
fn metrics_token_is_optional_and_must_fit_a_bearer_header() {
    assert!(Config::from_vars(vars(&[])).unwrap().metrics_token.is_none());
    let c = Config::from_vars(vars(&[("METRICS_TOKEN", "s3cret-token")])).unwrap();
    assert_eq!(c.metrics_token.as_ref().map(Secret::expose), Some("s3cret-token"));
    let e = Config::from_vars(vars(&[("METRICS_TOKEN", "two words")])).unwrap_err();
    assert_eq!(e.var, "METRICS_TOKEN");
    assert!(!format!("{c:?}").contains("s3cret-token"), "the token never shows in Debug output");
}

#[test]
fn cluster_mode_needs_postgresql_and_says_why() {
    let e = Config::from_vars(vars(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap_err();
    assert_eq!(e.var, "REDIS_URL");
    assert!(e.to_string().contains("cluster mode needs a database every node shares"), "{e}");
    let e = Config::from_vars(vars(&[("REDIS_URL", "http://x"), ("DATABASE_URL", "postgres://h/d")])).unwrap_err();
    assert_eq!(e.var, "REDIS_URL");
    let c = Config::from_vars(vars(&[("REDIS_URL", "redis://127.0.0.1:6379/2"), ("DATABASE_URL", "postgres://h/d")])).unwrap();
    assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379/2"));
    assert_eq!(c.node_lease, Duration::from_secs(3));
    assert_eq!(Config::from_vars(vars(&[])).unwrap().redis_url, None, "one node alone by default");
    let e = Config::from_vars(vars(&[("NODE_LEASE_MS", "10")])).unwrap_err();
    assert_eq!(e.var, "NODE_LEASE_MS");
    assert_eq!(c.cluster_append_window, Duration::from_millis(50));
    let e = Config::from_vars(vars(&[("CLUSTER_APPEND_MS", "5000")])).unwrap_err();
    assert_eq!(e.var, "CLUSTER_APPEND_MS");
}

#[test]
fn the_daily_token_quota_is_off_by_default_and_named_when_wrong() {
    assert_eq!(Config::from_vars(vars(&[])).unwrap().daily_token_quota, 0);
    assert_eq!(Config::from_vars(vars(&[("DAILY_TOKEN_QUOTA", "50000")])).unwrap().daily_token_quota, 50_000);
    let e = Config::from_vars(vars(&[("DAILY_TOKEN_QUOTA", "-1")])).unwrap_err();
    assert_eq!(e.var, "DAILY_TOKEN_QUOTA");
}

fn providers(pairs: &[(&str, &str)]) -> ProvidersConfig {
    match Config::from_vars(vars(pairs)).unwrap().upstream {
        UpstreamConfig::Providers(p) => p,
        UpstreamConfig::Mock(_) => panic!("expected providers"),
    }
}

#[test]
fn each_key_of_the_env_shortcuts_enables_its_provider() {
    let p = providers(&[("GROQ_API_KEY", "g"), ("MISTRAL_API_KEY", "m"), ("GEMINI_API_KEY", "x"), ("OPENAI_API_KEY", "o")]);
    let found: Vec<(&str, &str)> = p.providers.iter().map(|p| (p.id.as_str(), p.base_url.as_str())).collect();
    assert_eq!(
        found,
        vec![
            ("openai", "https://api.openai.com/v1"),
            ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai"),
            ("groq", "https://api.groq.com/openai/v1"),
            ("mistral", "https://api.mistral.ai/v1"),
        ]
    );
    assert_eq!(p.default, "openai", "the first, when nothing names one");
    assert_eq!(p.providers[2].api_key.expose(), "g");
    assert_eq!(providers(&[("GROQ_API_KEY", "g"), ("OPENAI_API_KEY", "o"), ("DEFAULT_PROVIDER", "groq")]).default, "groq");
    let local = providers(&[("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/")]);
    assert_eq!((local.providers[0].id.as_str(), local.providers[0].base_url.as_str()), ("openai", "http://127.0.0.1:11434/v1"));
    assert_eq!(Config::from_vars(vars(&[("GROQ_API_KEY", "g"), ("DEFAULT_PROVIDER", "openai")])).unwrap_err().var, "DEFAULT_PROVIDER");
    assert_eq!(Config::from_vars(vars(&[("DEFAULT_PROVIDER", "groq")])).unwrap_err().var, "DEFAULT_PROVIDER");
}

fn file(text: &str) -> (tempfile::NamedTempFile, String) {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let path = f.path().display().to_string();
    (f, path)
}

#[test]
fn the_providers_file_is_read_with_its_defaults() {
    let (_f, path) = file(
        r#"
default = "local"
[[providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
models = ["llama3.1"]
cooldown_secs = 5
stream_options = false

[[providers]]
name = "groq"
display_name = "Groq"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "MY_GROQ"

[models."gpt-4o"]
fallbacks = ["local/llama3.1", "groq/llama-3.1-8b-instant"]

[aliases]
"gpt-4" = "local/llama3.1"
"#,
    );
    let p = providers(&[("PROVIDERS_FILE", &path), ("MY_GROQ", "k"), ("GROQ_API_KEY", "ignored"), ("MISTRAL_API_KEY", "m")]);
    let ids: Vec<&str> = p.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["local", "groq", "mistral"], "the file's groq wins over the shortcut");
    assert_eq!(p.default, "local");
    let (local, groq) = (&p.providers[0], &p.providers[1]);
    assert_eq!((local.cooldown, local.models_ttl, local.stream_options), (Duration::from_secs(5), Duration::from_secs(300), false));
    assert_eq!(
        (groq.cooldown, groq.name.as_str(), groq.api_key.expose(), groq.models.as_ref()),
        (Duration::from_secs(30), "Groq", "k", None)
    );
    assert_eq!(p.fallbacks["gpt-4o"][1], Target { provider: "groq".into(), model: "llama-3.1-8b-instant".into() });
    assert_eq!(p.aliases["gpt-4"], "local/llama3.1");
    assert_eq!(providers(&[("PROVIDERS_FILE", &path), ("MY_GROQ", "k"), ("DEFAULT_PROVIDER", "groq")]).default, "groq");
}

#[test]
fn a_mistake_in_the_providers_file_names_its_table_and_key() {
    let cases = [
        ("[[providers]]\nname = \"a\"\nbase_url = \"http://x/v1\"\nbogus = 1\n", "[[providers]] #1 (line 4): unknown field `bogus`"),
        ("[[providers]]\nname = \"a\"\n", "[[providers]] #1"),
        ("[[providers]]\nname = \"a\"\nbase_url = \"ftp://x\"\n", "[[providers]] #1 (\"a\"): base_url"),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\napi_key_env = \"NOPE_KEY\"\n",
            "api_key_env: the variable NOPE_KEY is not set",
        ),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\nmodels = [\"m\"]\n[models.\"g\"]\nfallbacks = [\"a/zz\"]\n",
            "[models.\"g\"]: fallbacks: \"a/zz\": \"a\" does not list \"zz\"",
        ),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\n[models.\"g\"]\nfallbacks = [\"b/m\"]\n",
            "\"b\" is not a configured provider",
        ),
        ("default = \"b\"\n[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\n", "default: \"b\""),
        ("[[providers]]\nname = \"a/b\"\nbase_url = \"http://x\"\n", "name: must be"),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\n[[providers]]\nname = \"a\"\nbase_url = \"http://y\"\n",
            "[[providers]] #2: name: \"a\" is used twice",
        ),
        ("[aliases]\nx = 3\n", "in [aliases]"),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\ncooldown_secs = \"soon\"\n",
            "in [[providers]] #1 (line 4): cooldown_secs: invalid type: string \"soon\", expected u64",
        ),
        (
            "[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\n[models.\"g\"]\ncontext_tokens = 0\n",
            "[models.\"g\"]: context_tokens: must be at least 1",
        ),
    ];
    for (text, expected) in cases {
        let (_f, path) = file(text);
        let e = Config::from_vars(vars(&[("PROVIDERS_FILE", &path)])).unwrap_err();
        assert_eq!(e.var, "PROVIDERS_FILE");
        let message = e.to_string();
        assert!(message.starts_with(&format!("PROVIDERS_FILE: {path}: ")), "{message}");
        assert!(message.contains(expected), "{text:?}: {message}");
    }
    let e = Config::from_vars(vars(&[("PROVIDERS_FILE", "/nonexistent/providers.toml")])).unwrap_err();
    assert!(e.to_string().starts_with("PROVIDERS_FILE: /nonexistent/providers.toml: cannot read it"), "{e}");
}

#[test]
fn the_admin_view_needs_both_its_variables_and_a_bcrypt_hash() {
    assert!(Config::from_vars(vars(&[])).unwrap().admin.is_none());
    let hash = "$2b$04$abcdefghijklmnopqrstuuyW9JGjVPmgyYDpwT8jm2tf1Ac.I/ZYS";
    let on = Config::from_vars(vars(&[("ADMIN_USERNAME", "ops"), ("ADMIN_PASSWORD", hash)])).unwrap().admin.unwrap();
    assert_eq!((on.username.as_str(), on.password_hash.expose()), ("ops", hash));
    assert_eq!(Config::from_vars(vars(&[("ADMIN_USERNAME", "ops")])).unwrap_err().var, "ADMIN_PASSWORD");
    assert_eq!(Config::from_vars(vars(&[("ADMIN_PASSWORD", hash)])).unwrap_err().var, "ADMIN_USERNAME");
    let plain = Config::from_vars(vars(&[("ADMIN_USERNAME", "ops"), ("ADMIN_PASSWORD", "hunter2")])).unwrap_err();
    assert_eq!(plain.var, "ADMIN_PASSWORD");
    assert!(!plain.to_string().contains("hunter2"), "{plain}");
}

#[test]
fn the_websocket_dialects_settings_and_their_aliases() {
    let c = Config::from_vars(vars(&[])).unwrap();
    assert_eq!((c.ws.path.as_str(), c.ws.max_message_bytes, c.ws.messages_per_second), ("/ws", 1_048_576, 20));
    assert_eq!(c.ws.ping_interval, Duration::from_secs(10));
    let c = Config::from_vars(vars(&[
        ("WS_PORT", "3001"),
        ("WS_HOST", "0.0.0.0"),
        ("PING_INTERVAL", "30000"),
        ("CORS_ORIGINS", "http://a.test,http://b.test"),
    ]))
    .unwrap();
    assert_eq!((c.port, c.host.to_string().as_str(), c.ws.ping_interval), (3001, "0.0.0.0", Duration::from_secs(30)));
    assert_eq!(c.cors_origins, vec!["http://a.test", "http://b.test"]);
    let c = Config::from_vars(vars(&[("PORT", "9000"), ("WS_PORT", "3001")])).unwrap();
    assert_eq!(c.port, 9000, "PORT wins over WS_PORT");
    assert!(Config::from_vars(vars(&[("AUTH_ENABLED", "false"), ("JWT_SECRET", "s")])).unwrap().is_open_mode());
    let e = Config::from_vars(vars(&[("AUTH_ENABLED", "true")])).unwrap_err();
    assert_eq!(e.var, "AUTH_ENABLED");
    let e = Config::from_vars(vars(&[("AUTH_ENABLED", "false"), ("JWT_SECRET", "s"), ("NODE_ENV", "production"), ("OPENAI_API_KEY", "k")]))
        .unwrap_err();
    assert_eq!(e.var, "AUTH_ENABLED");
    for (var, value) in [("WS_PATH", "ws"), ("WS_MAX_MESSAGE_BYTES", "10"), ("WS_MESSAGES_PER_SECOND", "0"), ("PING_INTERVAL", "0")] {
        assert_eq!(Config::from_vars(vars(&[(var, value)])).unwrap_err().var, var);
    }
}

#[test]
fn the_sample_providers_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/providers.toml");
    let p = providers(&[("PROVIDERS_FILE", path), ("GROQ_API_KEY", "g"), ("OPENAI_API_KEY", "o")]);
    let ids: Vec<&str> = p.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!((ids, p.default.as_str()), (vec!["groq", "openai", "ollama"], "groq"));
    assert_eq!(p.aliases["gpt-4"], "openai/gpt-4o");
}

#[test]
fn realtime_settings_have_smritis_defaults_and_name_their_variable_when_wrong() {
    let c = Config::from_vars(vars(&[])).unwrap().realtime;
    assert_eq!((c.path.as_str(), c.url.as_str()), ("/realtime", "wss://api.openai.com/v1/realtime"));
    assert_eq!((c.model.as_str(), c.voice.as_str(), c.vad_silence_ms, c.max_output_tokens), ("gpt-realtime", "alloy", 500, 4096));
    assert_eq!(c.presets.keys().map(String::as_str).collect::<Vec<_>>(), ["brief", "default", "philosophical"]);
    for (var, value) in [
        ("REALTIME_PATH", "/ws"),
        ("REALTIME_PATH", "realtime"),
        ("OPENAI_REALTIME_URL", "https://api.openai.com/v1/realtime"),
        ("REALTIME_MAX_SESSION_SECONDS", "3601"),
        ("REALTIME_TURN_DETECTION", "push_to_talk"),
        ("REALTIME_PRESETS_FILE", "/nonexistent/presets.json"),
        ("REALTIME_MAX_SESSIONS_PER_USER", "0"),
    ] {
        assert_eq!(Config::from_vars(vars(&[(var, value)])).unwrap_err().var, var, "{var}={value}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, r#"{ "brief": "Be brief." }"#).unwrap();
    let e = Config::from_vars(vars(&[("REALTIME_PRESETS_FILE", file.to_str().unwrap())])).unwrap_err();
    assert!(e.problem.contains("no \"default\" preset"), "{e}");
}

#[test]
fn context_lengths_come_from_the_providers_file_else_model_context_tokens() {
    assert_eq!(Config::from_vars(vars(&[])).unwrap().model_context_tokens, 8192);
    assert_eq!(Config::from_vars(vars(&[("MODEL_CONTEXT_TOKENS", "32768")])).unwrap().model_context_tokens, 32768);
    assert_eq!(Config::from_vars(vars(&[("MODEL_CONTEXT_TOKENS", "0")])).unwrap_err().var, "MODEL_CONTEXT_TOKENS");
    let (_f, path) = file(
        "[[providers]]\nname = \"a\"\nbase_url = \"http://x/v1\"\n[models.\"big\"]\ncontext_tokens = 128000\n[models.\"a/small\"]\ncontext_tokens = 2048\n",
    );
    let p = providers(&[("PROVIDERS_FILE", &path)]);
    assert_eq!(p.context_tokens, HashMap::from([("big".to_owned(), 128_000), ("a/small".to_owned(), 2048)]));
    let registry = crate::providers::Registry::new(&p, &crate::metrics::Metrics::new());
    let target = |m: &str| Target { provider: "a".into(), model: m.into() };
    assert_eq!(registry.context_tokens(&target("big")), Some(128_000));
    assert_eq!(registry.context_tokens(&target("small")), Some(2048), "as provider/model");
    assert_eq!(registry.context_tokens(&target("other")), None);
}

#[test]
fn presets_are_read_from_the_json_file_system_prompt_presets_names() {
    assert!(Config::from_vars(vars(&[])).unwrap().system_prompt_presets.is_empty());
    let (_f, path) = file(r#"{ "pirate": "Talk like a pirate." }"#);
    let c = Config::from_vars(vars(&[("SYSTEM_PROMPT_PRESETS", &path)])).unwrap();
    assert_eq!(c.system_prompt_presets, HashMap::from([("pirate".to_owned(), "Talk like a pirate.".to_owned())]));
    for bad in [r#"["x"]"#, r#"{ "a": 1 }"#, r#"{ "": "x" }"#, r#"{ "a": " " }"#] {
        let (_f, path) = file(bad);
        assert_eq!(Config::from_vars(vars(&[("SYSTEM_PROMPT_PRESETS", &path)])).unwrap_err().var, "SYSTEM_PROMPT_PRESETS", "{bad}");
    }
    assert_eq!(Config::from_vars(vars(&[("SYSTEM_PROMPT_PRESETS", "/nonexistent.json")])).unwrap_err().var, "SYSTEM_PROMPT_PRESETS");
}
