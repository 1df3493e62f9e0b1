//! Authentication, for every wire: verifies a JWT and names its [`User`], and finds a
//! token in an HTTP request. It knows no wire.
//!
//! Every failure reaches a client as the fixed `unauthorized`; the reason goes to the
//! log only.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, JwtConfig};

#[path = "auth_jwks.rs"]
mod jwks;
pub use jwks::Jwks;

/// The authenticated user of a socket. Only ever built from a verified token (or open mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

/// A verified token: its user, and its `exp` (Unix seconds) when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub expires_at: Option<i64>,
}

/// The one error a client sees when it may not connect.
#[derive(Debug)]
pub struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unauthorized")
    }
}

/// Why a token was refused (for the log, never for the client).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token in auth.token, Authorization header or ?token=")]
    Missing,
    #[error("token algorithm {0:?} has no configured key")]
    NoKeyFor(Algorithm),
    #[error("no key of the JWKS has kid {0:?} (or the JWKS has not loaded)")]
    UnknownKey(Option<String>),
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("claim {0:?} is missing or not a string or number")]
    NoUser(String),
}

/// Verifies tokens against the configured keys. Built once at start-up.
pub struct Authenticator {
    mode: Mode,
}

enum Mode {
    Open,
    /// A key and its own validation per algorithm: a `Validation` listing several
    /// algorithms refuses every key that does not fit them all.
    Jwt {
        keys: Vec<(Algorithm, DecodingKey, Validation)>,
        user_claim: String,
        jwks: Option<(Arc<Jwks>, Arc<JwtConfig>)>,
    },
}

impl Authenticator {
    /// Builds the verifier; the PEM was already checked by the configuration.
    pub fn new(config: &AuthConfig) -> Self {
        let AuthConfig::Jwt(jwt) = config else {
            return Self { mode: Mode::Open };
        };
        let keys = keys(jwt).into_iter().map(|(alg, key)| (alg, key, validation(jwt, alg))).collect();
        let jwks = jwt.jwks_url.as_deref().map(|url| (Arc::new(Jwks::new(url, jwt.jwks_refresh)), Arc::new(jwt.clone())));
        Self { mode: Mode::Jwt { keys, user_claim: jwt.user_claim.clone(), jwks } }
    }

    /// Starts fetching the JWKS, when one is configured, and keeps it fresh until `shutdown`.
    pub fn spawn_jwks(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let Some(jwks) = self.jwks() {
            jwks.spawn(shutdown);
        }
    }

    /// The JWKS, when `JWT_JWKS_URL` is set.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.mode {
            Mode::Jwt { jwks: Some((jwks, _)), .. } => Some(jwks),
            _ => None,
        }
    }

    /// The auth mode as the start-up summary says it: `open`, or `jwt` and its algorithms.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Open => "open (no token required; every connection names its own user)".into(),
            Mode::Jwt { keys, jwks, .. } => {
                let mut algs: Vec<String> = keys.iter().map(|(alg, _, _)| format!("{alg:?}")).collect();
                if jwks.is_some() {
                    algs.push("JWKS: RS256, ES256, EdDSA".into());
                }
                format!("jwt ({})", algs.join(", "))
            }
        }
    }

    /// True when no token is required.
    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// The user a token names, if the token is valid.
    pub async fn verify(&self, token: &str) -> Result<User, AuthError> {
        self.verify_session(token).await.map(|s| s.user)
    }

    /// The user a token names and until when it is valid, if the token is valid now. A
    /// `kid` the JWKS does not have fetches the set again (at most once per `JWT_JWKS_REFRESH_SECONDS`) first.
    pub async fn verify_session(&self, token: &str) -> Result<Session, AuthError> {
        match self.verify_now(token) {
            Err(AuthError::UnknownKey(_)) if let Some(jwks) = self.jwks() => {
                jwks.refresh_for_unknown_kid().await;
                self.verify_now(token)
            }
            verified => verified,
        }
    }

    fn verify_now(&self, token: &str) -> Result<Session, AuthError> {
        let Mode::Jwt { keys, user_claim, jwks } = &self.mode else {
            return Ok(Session { user: User("anonymous".into()), expires_at: None });
        };
        let header = decode_header(token)?;
        // The header only picks the key; that key's validation allows its algorithm alone.
        let claims = match (keys.iter().find(|(alg, _, _)| *alg == header.alg), jwks) {
            (Some((_, key, validation)), _) => decode::<Map<String, Value>>(token, key, validation)?.claims,
            (None, Some((jwks, jwt))) if matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) => {
                let candidates = jwks.keys_for(header.kid.as_deref(), header.alg);
                let mut last = AuthError::UnknownKey(header.kid.clone());
                let mut verified = None;
                for candidate in &candidates {
                    match decode::<Map<String, Value>>(token, &candidate.key, &validation(jwt, header.alg)) {
                        Ok(data) => {
                            verified = Some(data.claims);
                            break;
                        }
                        Err(e) => last = AuthError::Invalid(e),
                    }
                }
                verified.ok_or(last)?
            }
            (None, _) => return Err(AuthError::NoKeyFor(header.alg)),
        };
        let user = match claims.get(user_claim) {
            Some(Value::String(s)) if !s.is_empty() => User(s.clone()),
            Some(Value::Number(n)) => User(n.to_string()),
            _ => return Err(AuthError::NoUser(user_claim.clone())),
        };
        // Validated above when present; a token without `exp` never expires.
        let expires_at = claims.get("exp").and_then(Value::as_f64).map(|exp| exp as i64);
        Ok(Session { user, expires_at })
    }
}

/// What a token signed with `alg` must satisfy: that algorithm only, `exp` and `nbf`
/// when present, `iss` and `aud` when configured.
fn validation(jwt: &JwtConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    // A NestJS JwtService signs without `exp` unless `expiresIn` is set; `exp` is checked when present.
    validation.required_spec_claims.clear();
    validation.validate_nbf = true;
    validation.leeway = 0;
    if let Some(iss) = &jwt.issuer {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".into());
    }
    match &jwt.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        None => validation.validate_aud = false,
    }
    validation
}

fn keys(jwt: &JwtConfig) -> Vec<(Algorithm, DecodingKey)> {
    let mut keys = Vec::new();
    if let Some(secret) = &jwt.secret {
        keys.push((Algorithm::HS256, DecodingKey::from_secret(secret.expose().as_bytes())));
    }
    if let Some(pem) = &jwt.public_key_pem {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            keys.push((Algorithm::RS256, key));
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            keys.push((Algorithm::ES256, key));
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem.as_bytes()) {
            keys.push((Algorithm::EdDSA, key));
        }
    }
    keys
}

/// Finds a token in a request: `Authorization: Bearer` (the scheme in any case, as
/// RFC 7235 has it), then `?token=`.
pub fn request_token<'a>(headers: &'a http::HeaderMap, uri: &'a http::Uri) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(t) = headers.get(http::header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(bearer_token) {
        return Some(t.into());
    }
    form_urlencoded_token(uri.query()?)
}

/// The credentials of an `Authorization` value whose scheme is `Bearer`, in any case.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn form_urlencoded_token(query: &str) -> Option<std::borrow::Cow<'_, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v).filter(|v| !v.is_empty())
}

/// A user id a client names itself in open mode: a non-empty string of at most 128
/// characters, or a number.
pub fn claimed_user(value: Option<&Value>) -> Option<User> {
    match value {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(User(s.clone())),
        Some(Value::Number(n)) => Some(User(n.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(form_urlencoded_token("EIO=4&token=a%2Eb.c&x=1").as_deref(), Some("a.b.c"));
        assert_eq!(form_urlencoded_token("EIO=4&transport=websocket"), None);
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for header in ["Bearer a.b.c", "bearer a.b.c", "BEARER a.b.c", "bEaReR   a.b.c "] {
            assert_eq!(bearer_token(header), Some("a.b.c"), "{header}");
        }
        assert_eq!(bearer_token("Basic a.b.c"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearera.b.c"), None);
    }
}
