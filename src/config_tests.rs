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
