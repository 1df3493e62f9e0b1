//! The raw-WebSocket wires: three other chat servers' protocols (Void at `WS_PATH`,
//! canyon at `/ws/{client_id}`, WADI at `/ws/chat/{id}` and `/ws/runs/{id}/stream`), each
//! one codec file over one serve loop ([`serve`]) on axum's WebSocket, on the same port
//! as every other wire.
//!
//! What the loop gives every dialect: ping/pong keep-alive and an idle timeout, a size
//! limit (1009), a per-connection message rate limit (`RATE_LIMIT`, still connected),
//! origin checks against the CORS allowlist, `INVALID_PAYLOAD` for what is not JSON,
//! close codes (1000 normal, 1001 shutdown, 1008 policy, 1009 too big, 1011 internal),
//! and delivery of answers with backpressure: a reader waits for room in the
//! connection's queue before it reads the log, so a slow client gets joined chunks.

mod canyon;
mod frames;
mod link;
pub mod realtime;
mod serve;
mod void;
mod wadi;

#[cfg(test)]
mod decoder_tests;

pub use link::{Flow, Link, SignedIn};
pub use serve::Dialect;

use axum::{
    Router,
    extract::ws::WebSocketUpgrade,
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    chat::{ChatError, ErrorCode},
    http::api::ApiError,
    transport::Wire,
};

/// The dialects' routes.
pub fn router(wire: Wire) -> Router {
    Router::new()
        .route(&wire.config.ws.path, get(void::handler))
        .route("/ws/{client_id}", get(canyon::handler))
        .route("/ws/chat/{conversation_id}", get(wadi::chat_handler))
        .route("/ws/runs/{run_id}/stream", get(wadi::run_handler))
        .with_state(wire)
}

/// What the client sent with its upgrade request (a token, `?offset=`, `?userId=`).
#[derive(Clone, Debug)]
pub struct Handshake {
    pub headers: HeaderMap,
    pub uri: Uri,
}

impl Handshake {
    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        crate::http::api::query_value(&self.uri, name)
    }
}

/// Accepts the upgrade for `dialect` once the origin is allowed. `user` is set when the
/// dialect authenticated the handshake itself (canyon).
fn upgrade<D: Dialect>(wire: Wire, ws: WebSocketUpgrade, handshake: Handshake, user: Option<SignedIn>, dialect: D) -> Response {
    if !origin_allowed(&wire, &handshake.headers) {
        return ApiError::from(ChatError::new(ErrorCode::Forbidden, "origin not allowed")).into_response();
    }
    let max = wire.config.ws.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve::serve(socket, wire, handshake, user, dialect))
        .into_response()
}

/// A browser's `Origin` must be in the CORS allowlist; a request without one (a
/// non-browser client) is served.
fn origin_allowed(wire: &Wire, headers: &HeaderMap) -> bool {
    match headers.get(http::header::ORIGIN) {
        None => true,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
            wire.config.cors_origins.iter().any(|allowed| allowed == origin)
        }
    }
}

/// A text with any UTF-16 units before `skip` cut off: what a reader that asked for an
/// offset beyond what it was given still has to see. `offset` is the text's own start.
pub(crate) fn after(text: &str, offset: u64, skip: u64) -> &str {
    if skip <= offset {
        return text;
    }
    let (index, _) = crate::chat::text::byte_index(text, skip - offset);
    &text[index..]
}

/// `{ "type": "error", "code", "message" }` (and `retryAfterMs` when set): the error
/// frame of canyon and WADI.
pub(super) fn typed_error(error: &ChatError) -> serde_json::Value {
    let mut fields = error.fields();
    fields.insert("type".into(), "error".into());
    serde_json::Value::Object(fields)
}
