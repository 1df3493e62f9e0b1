//! The protocol's error: a wire code from PROTOCOL.md and a message safe to show.
//!
//! Internal causes (database, upstream, bugs) are logged where they happen and
//! reach the client only as their category.

use serde::Serialize;

/// Every error code a client can see, as PROTOCOL.md lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidPayload,
    MessageTooLong,
    InvalidParams,
    InvalidModel,
    Forbidden,
    Unauthorized,
    TokenExpired,
    NotFound,
    Busy,
    RateLimit,
    /// The user's tokens of this UTC day reached `DAILY_TOKEN_QUOTA`.
    QuotaExceeded,
    UpstreamError,
    UpstreamTimeout,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPayload => "INVALID_PAYLOAD",
            Self::MessageTooLong => "MESSAGE_TOO_LONG",
            Self::InvalidParams => "INVALID_PARAMS",
            Self::InvalidModel => "INVALID_MODEL",
            Self::Forbidden => "FORBIDDEN",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::NotFound => "NOT_FOUND",
            Self::Busy => "BUSY",
            Self::RateLimit => "RATE_LIMIT",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::UpstreamError => "UPSTREAM_ERROR",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// Every code, in PROTOCOL.md's order.
    pub const ALL: [Self; 15] = [
        Self::InvalidPayload,
        Self::MessageTooLong,
        Self::InvalidParams,
        Self::InvalidModel,
        Self::Forbidden,
        Self::Unauthorized,
        Self::TokenExpired,
        Self::NotFound,
        Self::Busy,
        Self::RateLimit,
        Self::QuotaExceeded,
        Self::UpstreamError,
        Self::UpstreamTimeout,
        Self::Unavailable,
        Self::Internal,
    ];

    /// Reads a stored code back.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP status an HTTP wire answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidPayload | Self::InvalidParams | Self::InvalidModel | Self::MessageTooLong => 400,
            Self::Unauthorized | Self::TokenExpired => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Busy => 409,
            Self::RateLimit | Self::QuotaExceeded => 429,
            Self::UpstreamError => 502,
            Self::Unavailable => 503,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// The default human text for a code, used when there is nothing more specific to say.
    pub fn default_message(self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid payload",
            Self::MessageTooLong => "message is too long",
            Self::InvalidParams => "invalid parameters",
            Self::InvalidModel => "model is not available",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "the token has expired; send chat:auth with a fresh one",
            Self::NotFound => "not found",
            Self::Busy => "a generation is already running on this connection",
            Self::RateLimit => "rate limit reached, try again later",
            Self::QuotaExceeded => "the daily token quota is used up; it renews at 00:00 UTC",
            Self::UpstreamError => "the model provider failed",
            Self::UpstreamTimeout => "the model provider did not answer in time",
            Self::Unavailable => "service temporarily unavailable",
            Self::Internal => "internal error",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error as the client sees it: a code and a message with no internal detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again (`retryAfterMs`): set on a start refused because the node is
    /// overloaded, absent otherwise.
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ChatError {
    /// An error with a specific, client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: None }
    }

    /// `UNAVAILABLE` for a start refused while the node has no headroom: try again
    /// after `retry_after_ms` (here or, behind a load balancer, on another node).
    pub fn overloaded(retry_after_ms: u64) -> Self {
        Self { retry_after_ms: Some(retry_after_ms), ..Self::new(ErrorCode::Unavailable, "the server is busy; try again shortly") }
    }

    /// The error as one JSON object (`code`, `message`, `retryAfterMs` when set), for
    /// the wires whose error frames are built by hand.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("code".into(), self.code.as_str().into());
        fields.insert("message".into(), self.message.as_str().into());
        if let Some(ms) = self.retry_after_ms {
            fields.insert("retryAfterMs".into(), ms.into());
        }
        fields
    }

    /// An error with the code's default message.
    pub fn code(code: ErrorCode) -> Self {
        Self::new(code, code.default_message())
    }
}

impl From<ErrorCode> for ChatError {
    fn from(code: ErrorCode) -> Self {
        Self::code(code)
    }
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ChatError {}
