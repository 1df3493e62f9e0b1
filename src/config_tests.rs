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
    assert!(Config::from_vars(vars(&[("NODE_ENV", "production"), ("JWT_SECRET", "s")])).is_ok());
}

#[test]
fn cors_is_a_comma_list() {
    let c = Config::from_vars(vars(&[("CORS_ORIGIN", "http://a.test, https://b.test")])).unwrap();
    assert_eq!(c.cors_origins, vec!["http://a.test", "https://b.test"]);
}
