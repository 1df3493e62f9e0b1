//! `GET /ready` (readiness) beside `/health` (liveness): each check named in the body,
//! 503 when the database is cut, when the upstream is down, and while the server drains
//! at shutdown with an answer still running.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use serde_json::{Value, json};

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    database::app_behind_proxy,
    helpers::*,
};

async fn fetch(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asks `/ready` until it answers `status` (its checks are kept for a moment).
async fn ready_until(addr: std::net::SocketAddr, status: u16) -> Value {
    for _ in 0..400 {
        let (got, body) = fetch(addr, "/ready").await;
        if got == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/ready never answered {status}");
}

fn checks(database: &str, upstream: &str) -> Value {
    json!({ "database": database, "upstream": upstream, "load": "ok" })
}

#[tokio::test]
async fn ready_names_each_check_and_passes_with_the_database_and_the_built_in_mock() {
    let app = spawn_app().await;
    assert_eq!(fetch(app.addr, "/ready").await, (200, json!({ "status": "ready", "checks": checks("ok", "ok") })));
    let (status, health) = fetch(app.addr, "/health").await;
    let node = app.state.config.node_id.clone();
    assert_eq!((status, health), (200, json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "nodeId": node })));
}

#[tokio::test]
async fn an_unreachable_upstream_makes_the_node_unready_naming_that_check() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &url), ("OPENAI_API_KEY", "sk-test")]).await;
    assert_eq!(fetch(app.addr, "/ready").await, (503, json!({ "status": "unready", "checks": checks("ok", "down") })));
    assert_eq!(fetch(app.addr, "/health").await.0, 200, "liveness does not depend on the upstream");
}

#[tokio::test]
async fn an_upstream_refusing_the_key_is_down_and_a_storm_of_probes_asks_it_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let upstream = Router::new().route(
        "/v1/models",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::UNAUTHORIZED, "invalid api key") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &url), ("OPENAI_API_KEY", "sk-wrong")]).await;
    let storm = futures::future::join_all((0..20).map(|_| fetch(app.addr, "/ready"))).await;
    for answer in storm {
        assert_eq!(answer, (503, json!({ "status": "unready", "checks": checks("ok", "down") })));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "twenty probes, one request to the provider");
}

#[tokio::test]
async fn a_cut_database_makes_the_node_unready_until_it_returns() {
    let Some((app, proxy)) = app_behind_proxy(&[]).await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    assert_eq!(fetch(app.addr, "/ready").await.0, 200);
    proxy.cut();
    let body = ready_until(app.addr, 503).await;
    assert_eq!(body, json!({ "status": "unready", "checks": checks("down", "ok") }));
    assert_eq!(fetch(app.addr, "/health").await.0, 200, "liveness does not depend on the database");
    proxy.restore();
    assert_eq!(ready_until(app.addr, 200).await, json!({ "status": "ready", "checks": checks("ok", "ok") }));
}

const LONG: &str = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen twenty";

#[tokio::test]
async fn during_the_drain_ready_is_503_while_the_running_answer_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    let mut child = spawn_binary(&db_url, &[("MOCK_RESPONSE", LONG), ("MOCK_TOKEN_DELAY_MS", "100"), ("SHUTDOWN_GRACE_SECONDS", "30")]);
    let addr = child.addr;
    let user = user();
    let mut client = Client::websocket(addr, Credentials::token(&token(&user))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "count" })).await;
    let (first, _) = client.until("chat:message").await;
    assert_eq!(fetch(addr, "/ready").await.0, 200);

    let killed = Command::new("kill").args(["-TERM", &child.process.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let body = ready_until(addr, 503).await;
    assert_eq!(body, json!({ "status": "draining", "checks": checks("ok", "ok") }));
    // The answer still runs, and the process still answers everything else.
    let status: Value = reqwest::Client::new()
        .get(format!("http://{addr}/v1/status"))
        .bearer_auth(token("ops"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["generations"], 1, "/ready went 503 before the running answer ended");
    assert_eq!(fetch(addr, "/health").await.0, 200);
    // A new start is refused at once (a load balancer sends it elsewhere), the running
    // answer is not disturbed.
    let mut late = Client::websocket(addr, Credentials::token(&token(&user))).await.unwrap();
    let refused = late.emit_with_ack("chat:start", json!({ "message": "too late" })).await;
    assert_eq!(refused, json!({ "ok": false, "error": { "code": "UNAVAILABLE", "message": "the server is shutting down; start again" } }));

    let mut answer = read_answer(&mut client).await;
    answer.chunks.insert(0, first);
    assert_eq!(answer.final_name, "chat:end", "an answer within the grace period completes");
    assert_eq!((answer.text(), &answer.final_data["messageId"]), (LONG.to_owned(), &ack["messageId"]));
    let exited = tokio::task::spawn_blocking(move || child.process.wait()).await.unwrap().unwrap();
    assert!(exited.success(), "exit status {exited:?}");
}
