//! What the voice proxy sends its clients: `welcome`, `pong`, `openai_event` (the
//! upstream's event text inside, unchanged), `session_expiring` and `error { message,
//! details }`, each with `timestamp` and `sessionId`.

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

/// The codes a voice client finds in `error.details.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidPayload,
    /// `?preset=` names no preset.
    InvalidPreset,
    /// An event type the proxy does not forward.
    EventNotAllowed,
    /// A `session.update` field (or a `response.create` override) the server keeps.
    FieldNotAllowed,
    /// `REALTIME_MAX_SESSIONS_PER_USER`, or the connection's message rate.
    RateLimit,
    /// `REALTIME_DAILY_TOKENS`.
    QuotaExceeded,
    /// `REALTIME_MAX_SESSION_SECONDS`.
    SessionLimit,
    /// `REALTIME_IDLE_TIMEOUT_SECONDS`.
    IdleTimeout,
    /// The client's token expired during the session.
    TokenExpired,
    /// The upstream refused the key (401, 403).
    UpstreamUnauthorized,
    /// The upstream refused for its own rate limit (429).
    UpstreamRateLimit,
    /// The upstream failed or closed.
    UpstreamError,
    /// `REALTIME_UPSTREAM_IDLE_TIMEOUT_MS`.
    UpstreamTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The database could not be reached.
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPayload => "INVALID_PAYLOAD",
            Self::InvalidPreset => "INVALID_PRESET",
            Self::EventNotAllowed => "EVENT_NOT_ALLOWED",
            Self::FieldNotAllowed => "FIELD_NOT_ALLOWED",
            Self::RateLimit => "RATE_LIMIT",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::SessionLimit => "SESSION_LIMIT",
            Self::IdleTimeout => "IDLE_TIMEOUT",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::UpstreamUnauthorized => "UPSTREAM_UNAUTHORIZED",
            Self::UpstreamRateLimit => "UPSTREAM_RATE_LIMIT",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::Shutdown => "SHUTDOWN",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One refusal or failure as the client is told it; `extra` adds fields to `details`.
#[derive(Clone, Debug)]
pub struct Problem {
    pub code: Code,
    pub message: String,
    pub extra: Option<Value>,
}

impl Problem {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), extra: None }
    }

    /// With more fields in `details` (an object).
    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

/// Now, as the frames stamp it: RFC 3339 UTC with milliseconds.
fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A server frame: `type`, its `payload` when it has one, `timestamp`, `sessionId`.
fn frame(kind: &str, payload: Option<Value>, session: Option<&str>) -> String {
    let mut frame = json!({ "type": kind });
    if let Some(payload) = payload {
        frame["payload"] = payload;
    }
    frame["timestamp"] = json!(now());
    frame["sessionId"] = json!(session);
    frame.to_string()
}

pub fn welcome(session: &str, user: &str, authenticated: bool, preset: &str) -> String {
    let payload = json!({
        "message": "Connected to chatwire voice",
        "sessionId": session,
        "userId": user,
        "authenticated": authenticated,
        "features": ["text_chat", "voice_chat"],
        "preset": preset,
    });
    frame("welcome", Some(payload), Some(session))
}

pub fn pong(session: Option<&str>) -> String {
    frame("pong", None, session)
}

pub fn session_expiring(session: &str, seconds_left: u64) -> String {
    frame("session_expiring", Some(json!({ "secondsLeft": seconds_left })), Some(session))
}

pub fn error(problem: &Problem, session: Option<&str>) -> String {
    let mut details = json!({ "code": problem.code.as_str() });
    if let Some(Value::Object(extra)) = &problem.extra {
        for (k, v) in extra {
            details[k] = v.clone();
        }
    }
    frame("error", Some(json!({ "message": problem.message, "details": details })), session)
}

/// An upstream event for the client: `raw` is the upstream's JSON text, put in as it is.
pub fn openai_event(raw: &str, session: &str) -> String {
    let tail = json!({ "timestamp": now(), "sessionId": session }).to_string();
    // `tail` is `{...}`: its fields follow the payload in the same object.
    format!("{{\"type\":\"openai_event\",\"payload\":{raw},{}", &tail[1..])
}
