//! Plain HTTP beside the wires: `/health` (liveness), `/ready` (readiness), `/metrics`
//! (Prometheus), `/` (name and version only), the live counts at `/v1/status` for
//! holders of a token, and the CORS allowlist.

pub mod limits;
pub mod ready;
pub mod scrape;

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, Uri};
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Value, json};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::{
    auth::{self, Authenticator},
    config::Config,
    engine::Engine,
};

/// Counts connections of the wires that have them (Socket.IO sockets).
pub type ConnectionCount = Arc<dyn Fn() -> usize + Send + Sync>;

#[derive(Clone)]
struct HttpState {
    engine: Engine,
    auth: Arc<Authenticator>,
    connections: ConnectionCount,
}

/// The HTTP routes.
pub fn router(engine: Engine, auth: Arc<Authenticator>, connections: ConnectionCount) -> Router {
    Router::new()
        .route("/", get(info))
        .route("/health", get(health))
        .route("/v1/status", get(status))
        .with_state(HttpState { engine, auth, connections })
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

/// Liveness: 200 whenever the process serves HTTP, draining included. It checks
/// nothing else on purpose: a database or upstream outage is not cured by restarting
/// the process (`/ready` says whether to send traffic). It names the node, and in
/// cluster mode says whether Redis answers.
async fn health(State(s): State<HttpState>) -> Json<Value> {
    let mut body = json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") });
    cluster_health(&s.engine, &mut body).await;
    Json(body)
}

/// The node's id, and in cluster mode whether Redis answers (`ok` or `unreachable`). A
/// node without Redis still serves its running answers and every stored one, so it
/// stays alive; new starts get `UNAVAILABLE` until Redis is back (and `/ready` is 503).
async fn cluster_health(engine: &Engine, body: &mut Value) {
    body["nodeId"] = json!(engine.node_id());
    if let Some(ok) = engine.shared_state_ok().await {
        body["redis"] = json!(if ok { "ok" } else { "unreachable" });
    }
}

/// What anyone may know: the service and its version.
async fn info() -> Json<Value> {
    Json(json!({ "name": "chatwire", "version": env!("CARGO_PKG_VERSION") }))
}

/// Live counts, for operators' tools: the same credentials as the wires (a Bearer
/// header or `?token=`; none in open mode). Anything else is 401 `UNAUTHORIZED`.
async fn status(State(s): State<HttpState>, headers: HeaderMap, uri: Uri) -> (StatusCode, Json<Value>) {
    if !s.auth.is_open() {
        let verified = match auth::request_token(&headers, &uri) {
            None => Err(auth::AuthError::Missing),
            Some(token) => s.auth.verify(&token).map(drop),
        };
        if let Err(reason) = verified {
            tracing::info!(%reason, "status request refused");
            let body = json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "unauthorized" } });
            return (StatusCode::UNAUTHORIZED, Json(body));
        }
    }
    (StatusCode::OK, Json(json!({ "connections": (s.connections)(), "generations": s.engine.running() })))
}
