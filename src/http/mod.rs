//! Plain HTTP beside the wires: `/health`, `/` with live counts, and the CORS allowlist.

pub mod limits;

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use axum::extract::{OriginalUri, Request};
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Value, json};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::{
    config::{Config, UpstreamConfig},
    engine::Engine,
};

/// Counts connections of the wires that have them (Socket.IO sockets).
pub type ConnectionCount = Arc<dyn Fn() -> usize + Send + Sync>;

#[derive(Clone)]
struct HttpState {
    engine: Engine,
    config: Arc<Config>,
    connections: ConnectionCount,
}

/// The HTTP routes.
pub fn router(engine: Engine, config: Arc<Config>, connections: ConnectionCount) -> Router {
    Router::new().route("/", get(info)).route("/health", get(health)).with_state(HttpState { engine, config, connections })
}

/// CORS for exactly the configured origins, credentials allowed (as the NestJS gateway).
pub fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
}

/// Copies a WebSocket upgrade request's URI and headers into memory of their own.
///
/// They are slices of hyper's 16 KiB connection read buffer, and engineioxide keeps the
/// upgrade request's parts for the socket's whole life, so without the copy every idle
/// connection pins that buffer.
pub async fn detach_from_read_buffer(request: Request) -> Request {
    if !request.headers().contains_key(http::header::UPGRADE) {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse::<http::Uri>() {
        // axum's OriginalUri holds a clone of the URI, pinning the buffer too.
        if parts.extensions.get::<OriginalUri>().is_some() {
            parts.extensions.insert(OriginalUri(uri.clone()));
        }
        parts.uri = uri;
    }
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_str().as_bytes()), HeaderValue::from_bytes(value.as_bytes())) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
    Request::from_parts(parts, body)
}

/// 200 while the database answers, 503 when it does not.
async fn health(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    match s.engine.db().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok", "database": "ok", "version": env!("CARGO_PKG_VERSION") }))),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "database": "unreachable" })))
        }
    }
}

/// Service info and live counts.
async fn info(State(s): State<HttpState>) -> Json<Value> {
    Json(json!({
        "name": "chatwire",
        "version": env!("CARGO_PKG_VERSION"),
        "namespace": "/ai",
        "connections": (s.connections)(),
        "generations": s.engine.running(),
        "auth": if s.config.is_open_mode() { "open" } else { "jwt" },
        "upstream": match s.config.upstream { UpstreamConfig::Mock(_) => "mock", UpstreamConfig::OpenAi { .. } => "openai-compatible" },
    }))
}
