//! chatwire's own admin page at `/admin`, behind HTTP Basic (the admin credentials):
//!
//! - `GET /admin`, `GET /admin/admin.js`: the page, embedded in the binary (no external
//!   assets; a canvas chart);
//! - `GET /admin/api/answers`: the answers running on this node;
//! - `GET /admin/api/stats`: the nodes (this one now), their counts and the last ten
//!   minutes, a sample a second;
//! - `POST /admin/api/answers/{messageId}/stop`: stops an answer as its owner's
//!   `chat:stop` would (`{ ok: true, stopped }`).
//!
//! Every route refuses cross-site use: a request whose `Origin` is another host, or whose
//! `Sec-Fetch-Site` is not `same-origin`, is 403; a `POST` must also carry
//! `X-Chatwire-Admin` or a JSON content type, which a cross-site form cannot send.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Path, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Shared, login::Refused, serialize::iso, stats};
use crate::transport::socketio;

const PAGE: &str = include_str!("../../assets/admin.html");
const SCRIPT: &str = include_str!("../../assets/admin.js");
/// The page loads only itself: its script, its inline styles, its own API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The header (or a JSON body) a `POST` must carry.
pub const CSRF_HEADER: &str = "x-chatwire-admin";

/// The page and its API.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin", get(async || asset(PAGE, "text/html; charset=utf-8")))
        .route("/admin/admin.js", get(async || asset(SCRIPT, "text/javascript; charset=utf-8")))
        .route("/admin/api/answers", get(answers))
        .route("/admin/api/stats", get(nodes))
        .route("/admin/api/answers/{message_id}/stop", post(stop))
        .route_layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, body).into_response()
}

/// A refusal with the SSE wire's error body.
fn refusal(status: StatusCode, code: &str) -> Response {
    let body = json!({ "ok": false, "error": { "code": code, "message": code.to_lowercase().replace('_', " ") } });
    let mut response = (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"chatwire admin\", charset=\"UTF-8\""));
    }
    response
}

/// The Basic credentials of a request.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some((username.to_owned(), password.to_owned()))
}

/// True when the request comes from a page of this same host (or from no page at all).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    let host = text(header::HOST);
    let origin_ok = match text(header::ORIGIN) {
        None => true,
        Some(origin) => origin.split_once("://").map(|(_, authority)| authority) == host && host.is_some(),
    };
    let site_ok = text(http::HeaderName::from_static("sec-fetch-site")).is_none_or(|site| matches!(site, "same-origin" | "none"));
    origin_ok && site_ok
}

/// Every route: same origin, the admin's credentials, and for `POST` the CSRF header.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !same_origin(headers) {
        tracing::warn!(origin = ?headers.get(header::ORIGIN), "cross-site admin request refused");
        return refusal(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let ip =
        request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip().to_canonical());
    let Some((username, password)) = basic(headers) else { return refusal(StatusCode::UNAUTHORIZED, "UNAUTHORIZED") };
    match shared.login.check(ip, &username, &password).await {
        Ok(()) => {}
        Err(Refused::TooMany) => {
            tracing::warn!(%ip, "admin page: too many login attempts");
            return refusal(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT");
        }
        Err(reason) => {
            tracing::warn!(%ip, %reason, "admin page login refused");
            return refusal(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
    }
    let json_body = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    if request.method() == Method::POST && !headers.contains_key(CSRF_HEADER) && !json_body {
        return refusal(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    next.run(request).await
}

/// `{ node, answers: [{ messageId, conversationId, userId, model, tokens, startedAt, ageMs, node }] }`:
/// this node's answers, then (cluster mode) those other nodes published with their row
/// (at most [`PUBLISH_EVERY`] old; Stop reaches them wherever they run).
async fn answers(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let mut answers = local_answers(&shared);
    for summary in shared.engine.node_summaries(NODE_FRESH).await {
        if let Ok(Value::Object(mut node)) = serde_json::from_str::<Value>(&summary)
            && let Some(Value::Array(theirs)) = node.remove("answers")
        {
            answers.extend(theirs);
        }
    }
    Json(json!({ "node": shared.node.id, "answers": answers }))
}

/// The answers running on this node, as the page lists them.
fn local_answers(shared: &Shared) -> Vec<Value> {
    shared
        .engine
        .running_answers()
        .into_iter()
        .map(|a| {
            json!({
                "messageId": a.ids.message_id, "conversationId": a.ids.conversation_id, "userId": a.user_id,
                "model": a.model, "tokens": a.tokens, "startedAt": iso(a.started_at), "ageMs": a.age.as_millis() as u64,
                "node": shared.node.id,
            })
        })
        .collect()
}

/// `{ intervalMs, nodes: [{ id, hostname, pid, startedAt, uptimeSeconds, sockets, running, totals, feed, samples }] }`:
/// this node first, then (cluster mode) each other node that published its summary in
/// the last [`NODE_FRESH`].
async fn nodes(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let mut nodes = vec![this_node(&shared)];
    for summary in shared.engine.node_summaries(NODE_FRESH).await {
        if let Ok(Value::Object(mut node)) = serde_json::from_str::<Value>(&summary) {
            node.remove("answers");
            nodes.push(Value::Object(node));
        }
    }
    Json(json!({ "intervalMs": stats::INTERVAL.as_millis() as u64, "nodes": nodes }))
}

/// How recent another node's summary must be to be shown.
pub(super) const NODE_FRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// How often this node publishes its summary (cluster mode).
pub(super) const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// This node's row of the nodes table.
fn this_node(shared: &Shared) -> Value {
    let (engine, node) = (&shared.engine, &shared.node);
    let totals = engine.totals();
    let running = engine.running();
    let samples = shared.ring.snapshot(totals, SystemTime::now(), running);
    json!({
        "id": node.id,
        "hostname": node.hostname,
        "pid": node.pid,
        "startedAt": iso(node.started_at),
        "uptimeSeconds": node.started.elapsed().as_secs(),
        "sockets": socketio::connections(&shared.io),
        "running": running,
        "totals": { "tokens": totals.tokens, "failed": totals.failed, "refused": totals.refused },
        "feed": { "dropped": shared.observer.dropped(), "undelivered": shared.undelivered.load(std::sync::atomic::Ordering::Relaxed) },
        "samples": samples,
    })
}

/// Publishes this node's row and its answers every [`PUBLISH_EVERY`] for the other nodes'
/// pages (a no-op on one node), until `shutdown`.
pub(super) fn spawn_publisher(shared: Arc<Shared>, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut row = this_node(&shared);
                    row["answers"] = Value::Array(local_answers(&shared));
                    shared.engine.publish_node_summary(row.to_string()).await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Stops a running answer, whoever's it is.
async fn stop(State(shared): State<Arc<Shared>>, Path(message_id): Path<String>) -> Response {
    let Ok(message_id) = Uuid::try_parse(&message_id) else { return refusal(StatusCode::BAD_REQUEST, "INVALID_PARAMS") };
    let owner = shared.engine.running_answers().into_iter().find(|a| a.ids.message_id == message_id).map(|a| a.user_id);
    let stopped = shared.engine.stop_as_operator(message_id).await;
    tracing::info!(%message_id, user_id = owner.as_deref().unwrap_or(""), stopped, "answer stopped from the admin page");
    Json(json!({ "ok": true, "stopped": stopped })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_requests_from_this_host_pass() {
        assert!(same_origin(&headers(&[("host", "ops.example:8000")])));
        assert!(same_origin(&headers(&[
            ("host", "ops.example:8000"),
            ("origin", "http://ops.example:8000"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[("host", "ops.example:8000"), ("origin", "http://chat.example")])));
        assert!(!same_origin(&headers(&[("host", "ops.example:8000"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("origin", "null")])));
    }

    #[test]
    fn basic_credentials_are_read_in_any_case_of_the_scheme() {
        assert_eq!(basic(&headers(&[("authorization", "basic b3BzOnM6M2NyZXQ=")])), Some(("ops".into(), "s:3cret".into())));
        assert_eq!(basic(&headers(&[("authorization", "Bearer b3BzOnM6M2NyZXQ=")])), None);
        assert_eq!(basic(&headers(&[("authorization", "Basic !!!")])), None);
    }
}
