//! What every JSON route over HTTP shares (REST, the SSE wire's refusals, `/v1/status`):
//! who the caller is, and the one error body, `{ ok: false, error: { code, message } }`
//! (the `/ai` refusal ack), with the code's HTTP status.

use axum::{
    Json,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoResponses, ToSchema};
use uuid::Uuid;

use crate::{
    auth::{self, Authenticator, User},
    chat::{ChatError, ErrorCode},
};

/// Why an HTTP request was refused.
#[derive(Debug)]
pub enum ApiError {
    /// No token, or a bad one: 401 `UNAUTHORIZED`, whatever the reason.
    Unauthorized,
    /// A protocol error, with its code's status.
    Chat(ChatError),
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> Self {
        Self::Chat(error)
    }
}

impl ApiError {
    /// A refusal with a code and a message safe to show.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Chat(ChatError::new(code, message))
    }
}

/// The error body of every HTTP route.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub ok: bool,
    pub error: ErrorDetail,
}

/// A code from PROTOCOL.md (or `UNAUTHORIZED`) and a message with no internal detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "NOT_FOUND")]
    pub code: String,
    pub message: String,
    /// When to try again: a start refused because the node is overloaded.
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, retry_after_ms) = match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized".to_owned(), None),
            Self::Chat(e) => {
                let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, e.code.as_str(), e.message, e.retry_after_ms)
            }
        };
        let body = Json(ErrorBody { ok: false, error: ErrorDetail { code: code.to_owned(), message, retry_after_ms } });
        let mut response = (status, body).into_response();
        // HTTP's own header too, in whole seconds (rounded up), for proxies and load balancers.
        if let Some(ms) = retry_after_ms {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, ms.div_ceil(1000).max(1).into());
        }
        response
    }
}

/// The request's user: the verified token's (a Bearer header, or `?token=`). In open
/// mode, the one it names (`claimed`: the payload's or the query's `userId`), else a
/// fresh anonymous user of its own, as each anonymous socket is.
pub async fn caller(auth: &Authenticator, headers: &HeaderMap, uri: &Uri, claimed: Option<&Value>) -> Result<String, ApiError> {
    caller_session(auth, headers, uri, claimed).await.map(|(user, _)| user)
}

/// [`caller`], with the token's `exp` (Unix seconds; `None` in open mode or without one),
/// for connections that outlive the request.
pub async fn caller_session(
    auth: &Authenticator,
    headers: &HeaderMap,
    uri: &Uri,
    claimed: Option<&Value>,
) -> Result<(String, Option<i64>), ApiError> {
    if auth.is_open() {
        return Ok((auth::claimed_user(claimed).map_or_else(|| format!("anonymous-{}", Uuid::new_v4()), |User(u)| u), None));
    }
    let verified = match auth::request_token(headers, uri) {
        None => Err(auth::AuthError::Missing),
        Some(token) => auth.verify_session(&token).await,
    };
    verified.map(|auth::Session { user: User(u), expires_at }| (u, expires_at)).map_err(|reason| {
        tracing::info!(%reason, path = uri.path(), "request refused");
        ApiError::Unauthorized
    })
}

/// The value of `name` in the request's query, percent-decoded; empty counts as absent.
pub fn query_value(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).filter(|v| !v.is_empty())
}

/// The error responses of a route about stored history (REST).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum HistoryErrors {
    /// `INVALID_PARAMS` or `INVALID_PAYLOAD`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `UNAUTHORIZED`: no token, or a bad one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `NOT_FOUND`: missing, someone else's, or a malformed id (the three are not told apart).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `INTERNAL`.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `UNAVAILABLE`: the database cannot be reached right now.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The error responses of the SSE wire's routes (a refusal before any stream starts).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum WireErrors {
    /// `INVALID_PAYLOAD`, `INVALID_PARAMS`, `INVALID_MODEL` or `MESSAGE_TOO_LONG`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `UNAUTHORIZED`: no token, or a bad one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `FORBIDDEN`: the payload's `userId` is not the token's user.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `NOT_FOUND`: the conversation or answer is missing or someone else's.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// `BUSY`.
    #[response(status = 409)]
    Busy(ErrorBody),
    /// `RATE_LIMIT` or `QUOTA_EXCEEDED`.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// `INTERNAL`.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `UPSTREAM_ERROR`.
    #[response(status = 502)]
    Upstream(ErrorBody),
    /// `UNAVAILABLE`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `UPSTREAM_TIMEOUT`.
    #[response(status = 504)]
    UpstreamTimeout(ErrorBody),
}
