//! Plain HTTP beside Socket.IO: `/health`, `/` and the CORS allowlist.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use http::{HeaderValue, Method};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::{
    app::AppState,
    config::{Config, UpstreamConfig},
    gateway::NAMESPACE,
};

#[derive(Clone)]
struct HttpState {
    io: SocketIo,
    app: AppState,
}

/// The HTTP routes. Socket.IO is layered on top by the caller.
pub fn router(io: SocketIo, app: AppState) -> Router {
    Router::new().route("/", get(info)).route("/health", get(health)).with_state(HttpState { io, app })
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

/// 200 while the database answers, 503 when it does not.
async fn health(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    match s.app.db.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok", "database": "ok", "version": env!("CARGO_PKG_VERSION") }))),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "database": "unreachable" })))
        }
    }
}

/// Service info and live counts.
async fn info(State(s): State<HttpState>) -> Json<Value> {
    let connections = s.io.of(NAMESPACE).map(|ns| ns.sockets().len()).unwrap_or(0);
    Json(json!({
        "name": "chatwire",
        "version": env!("CARGO_PKG_VERSION"),
        "namespace": NAMESPACE,
        "connections": connections,
        "generations": s.app.registry.len(),
        "auth": if s.app.config.is_open_mode() { "open" } else { "jwt" },
        "upstream": match s.app.config.upstream { UpstreamConfig::Mock(_) => "mock", UpstreamConfig::OpenAi { .. } => "openai-compatible" },
    }))
}
