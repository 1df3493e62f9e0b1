//! Plain HTTP beside the wires: `/health` (liveness), `/ready` (readiness), `/metrics`
//! (Prometheus), `/` (name and version only), the live counts at `/v1/status` for
//! holders of a token, the REST history and usage, the OpenAPI document and its `/docs`
//! page, and the CORS allowlist.

pub mod api;
pub mod embeddings;
pub mod limits;
pub mod models;
pub mod openapi;
pub mod ready;
pub mod rest;
pub mod scrape;

use std::sync::Arc;

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, Uri};
use axum::{Json, Router, extract::State, routing::get};
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use utoipa::ToSchema;

use crate::{auth::Authenticator, config::Config, engine::Engine};

/// Counts connections of the wires that have them (Socket.IO sockets).
pub type ConnectionCount = Arc<dyn Fn() -> usize + Send + Sync>;

#[derive(Clone)]
pub(crate) struct HttpState {
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
        .with_state(HttpState { engine: engine.clone(), auth: auth.clone(), connections })
        .merge(models::router(engine.clone(), auth.clone()))
        .merge(embeddings::router(engine.clone(), auth.clone()))
        .merge(rest::router(engine, auth))
        .merge(openapi::router())
}

/// CORS for exactly the configured origins, credentials allowed (as the NestJS gateway).
pub fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
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

/// `/health`'s body.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process serves HTTP.
    status: &'static str,
    version: &'static str,
    /// This node's `NODE_ID`.
    #[serde(rename = "nodeId")]
    node_id: String,
    /// Cluster mode only: `ok` or `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
    /// With `JWT_JWKS_URL` only: `loaded`, or `missing` while no key set has been fetched
    /// (tokens are refused until it loads).
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks: Option<&'static str>,
}

/// Liveness: 200 whenever the process serves HTTP, draining included. It checks
/// nothing else on purpose: a database or upstream outage is not cured by restarting
/// the process (`/ready` says whether to send traffic). It names the node, and in
/// cluster mode says whether Redis answers: a node without Redis still serves its
/// running answers and every stored one, so it stays alive; new starts get
/// `UNAVAILABLE` until Redis is back (and `/ready` is 503).
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, body = Health, description = "The process serves HTTP")))]
pub(crate) async fn health(State(s): State<HttpState>) -> Json<Health> {
    let redis = s.engine.shared_state_ok().await.map(|ok| if ok { "ok" } else { "unreachable" });
    let jwks = s.auth.jwks().map(|j| if j.loaded() { "loaded" } else { "missing" });
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION"), node_id: s.engine.node_id().to_owned(), redis, jwks })
}

/// `/`'s body: what anyone may know.
#[derive(Serialize, ToSchema)]
pub struct Info {
    name: &'static str,
    version: &'static str,
}

/// The service and its version.
#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, body = Info, description = "Name and version")))]
pub(crate) async fn info() -> Json<Info> {
    Json(Info { name: "chatwire", version: env!("CARGO_PKG_VERSION") })
}

/// `/v1/status`'s body: live counts of this process.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// Open Socket.IO sockets.
    connections: usize,
    /// Answers running.
    generations: usize,
}

/// Live counts, for operators' tools: the same credentials as the wires (a Bearer
/// header or `?token=`; none in open mode). Anything else is 401 `UNAUTHORIZED`.
#[utoipa::path(
    get, path = "/v1/status", tag = "service",
    responses((status = 200, body = Status, description = "The counts"), (status = 401, body = api::ErrorBody, description = "`UNAUTHORIZED`")),
    security(("bearer" = []))
)]
pub(crate) async fn status(State(s): State<HttpState>, headers: HeaderMap, uri: Uri) -> Result<Json<Status>, api::ApiError> {
    api::caller(&s.auth, &headers, &uri, None).await?;
    Ok(Json(Status { connections: (s.connections)(), generations: s.engine.running() }))
}
