//! The protocol's error: a wire code from PROTOCOL.md and a message safe to show.
//!
//! Internal causes (database, upstream, bugs) are logged where they happen and
//! reach the client only as their category.

use serde::Serialize;

/// Every error code a client can see, as PROTOCOL.md lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidPayload,
    MessageTooLong,
    InvalidParams,
    InvalidModel,
    Forbidden,
    NotFound,
    Busy,
    RateLimit,
    UpstreamError,
    UpstreamTimeout,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The default human text for a code, used when there is nothing more specific to say.
    pub fn default_message(self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid payload",
            Self::MessageTooLong => "message is too long",
            Self::InvalidParams => "invalid parameters",
            Self::InvalidModel => "model is not available",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not found",
            Self::Busy => "a generation is already running on this connection",
            Self::RateLimit => "rate limit reached, try again later",
            Self::UpstreamError => "the model provider failed",
            Self::UpstreamTimeout => "the model provider did not answer in time",
            Self::Unavailable => "service temporarily unavailable",
            Self::Internal => "internal error",
        }
    }
}

/// An error as the client sees it: a code and a message with no internal detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
}

impl ChatError {
    /// An error with a specific, client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
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
