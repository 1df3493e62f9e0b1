//! `GET /metrics`: the Prometheus scrape. Open unless `METRICS_TOKEN` is set; then only
//! `Authorization: Bearer <METRICS_TOKEN>` gets it (compared in constant time), anything
//! else is 401 `UNAUTHORIZED`.

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConnectionCount;
use crate::{config::Secret, engine::Engine, metrics};

#[derive(Clone)]
struct ScrapeState {
    engine: Engine,
    connections: ConnectionCount,
    /// The SHA-256 of `METRICS_TOKEN`: comparing digests takes the same time whatever
    /// the length of what a client sends.
    token: Option<[u8; 32]>,
}

/// The `/metrics` route.
pub fn router(engine: Engine, connections: ConnectionCount, token: Option<&Secret>) -> Router {
    let token = token.map(|t| digest(t.expose()));
    Router::new().route("/metrics", get(scrape)).with_state(ScrapeState { engine, connections, token })
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

async fn scrape(State(s): State<ScrapeState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| digest(token.trim()));
        let allowed = given.is_some_and(|given| bool::from(given.ct_eq(expected)));
        if !allowed {
            tracing::info!("metrics scrape refused: no or wrong METRICS_TOKEN");
            let body = json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "unauthorized" } });
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    let text = s.engine.metrics().encode((s.connections)(), s.engine.running());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
