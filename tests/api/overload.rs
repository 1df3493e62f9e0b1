//! Overload without collapse: with `OVERLOAD_MAX_RUNNING=1` and one answer held
//! mid-stream by its upstream, every wire's new start is refused at once with
//! `UNAVAILABLE` and `retryAfterMs`, `/ready` says `load: down`, and the held answer
//! then completes whole; once it has ended, `/ready` is 200 and starts are served again.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    response::Response,
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{helpers::*, ws_client::Ws};

fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
    let body = json!({ "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
    Bytes::from(format!("data: {body}\n\n"))
}

/// An OpenAI-compatible upstream whose answers send "Hello", then wait for a permit
/// of `gate` before " world" and the end.
async fn held_upstream(gate: Arc<Semaphore>) -> SocketAddr {
    let answer = post(move |Json(_): Json<Value>| {
        let gate = gate.clone();
        async move {
            let stream = async_stream::stream! {
                yield Ok::<_, std::io::Error>(chunk(json!({ "content": "Hello" }), None));
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                yield Ok(chunk(json!({ "content": " world" }), None));
                yield Ok(chunk(json!({}), Some("stop")));
                yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
            };
            Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
        }
    });
    let models = get(|| async { Json(json!({ "object": "list", "data": [{ "id": "gpt-4", "object": "model" }] })) });
    let app = Router::new().route("/v1/chat/completions", answer).route("/v1/models", models);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn ready(addr: SocketAddr) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn refusal() -> Value {
    json!({ "code": "UNAVAILABLE", "message": "the server is busy; try again shortly", "retryAfterMs": 1500 })
}

fn with_type(kind: &str, mut fields: Value) -> Value {
    fields["type"] = json!(kind);
    fields
}

#[tokio::test]
async fn past_the_running_limit_every_wire_refuses_with_retry_after_ms_ready_flips_and_the_running_answer_completes() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = held_upstream(gate.clone()).await;
    let base = format!("http://{upstream}/v1");
    let app = spawn_app_with(&[
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test"),
        ("OVERLOAD_MAX_RUNNING", "1"),
        ("OVERLOAD_RETRY_AFTER_MS", "1500"),
    ])
    .await;
    let ok = json!({ "status": "ready", "checks": { "database": "ok", "upstream": "ok", "load": "ok" } });
    assert_eq!(ready(app.addr).await, (200, ok.clone()));

    let user = user();
    let mut running = app.client(&user).await;
    let ack = running.emit_with_ack("chat:start", json!({ "message": "hi" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (first, _) = running.until("chat:message").await;
    assert_eq!(first["content"], "Hello");

    // One answer runs: the node is at its limit.
    let down = json!({ "status": "unready", "checks": { "database": "ok", "upstream": "ok", "load": "down" } });
    assert_eq!(ready(app.addr).await, (503, down));

    // /ai: the ack and chat:error.
    let other = crate::helpers::user();
    let mut refused = app.client(&other).await;
    let ack = refused.emit_with_ack("chat:start", json!({ "message": "too many" })).await;
    assert_eq!(ack, json!({ "ok": false, "error": refusal() }));
    let (error, _) = refused.until("chat:error").await;
    assert_eq!(error, refusal());

    // SSE (POST /v1/chat): 503 with Retry-After and the same error.
    let sse = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&other))
        .json(&json!({ "message": "too many" }))
        .send()
        .await
        .unwrap();
    assert_eq!((sse.status().as_u16(), sse.headers()["retry-after"].to_str().unwrap()), (503, "2"));
    assert_eq!(sse.json::<Value>().await.unwrap(), json!({ "ok": false, "error": refusal() }));

    // Void /ws.
    let mut void = Ws::connect(app.addr, &format!("/ws?token={}", token(&other))).await;
    assert_eq!(void.next().await["type"], "connect_success");
    void.send(json!({ "type": "provider_request", "payload": { "prompt": "too many", "stream": true, "requestId": "r1" } })).await;
    let mut payload = refusal();
    payload["requestId"] = json!("r1");
    assert_eq!(void.next().await, json!({ "type": "provider_error", "payload": payload }));

    // canyon /ws/{clientId}.
    let mut canyon = Ws::connect(app.addr, &format!("/ws/client-1?token={}", token(&other))).await;
    canyon.send(json!({ "type": "chat_message", "message": { "content": "too many", "role": "user" }, "history": [] })).await;
    assert_eq!(canyon.next().await, with_type("error", refusal()));

    // WADI /ws/chat/{conversationId}.
    let mut wadi = Ws::connect(app.addr, &format!("/ws/chat/{}?token={}", Uuid::new_v4(), token(&other))).await;
    wadi.send(json!({ "type": "message", "content": "too many" })).await;
    let (error, before) = wadi.until("error").await;
    assert_eq!((error, before.len()), (with_type("error", refusal()), 1), "one `connected` first");

    // The running answer was not disturbed: it completes whole and is stored.
    gate.add_permits(1);
    let mut answer = read_answer(&mut running).await;
    answer.chunks.insert(0, first);
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", "Hello world".to_owned()));
    let row = app.message(ack_id(&answer.final_data)).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", "Hello world"));

    // Its end frees the place: /ready is 200 again and a new start is served.
    for _ in 0..400 {
        if ready(app.addr).await.0 == 200 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ready(app.addr).await, (200, ok));
    gate.add_permits(1);
    let ack = refused.emit_with_ack("chat:start", json!({ "message": "now" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(read_answer(&mut refused).await.text(), "Hello world");
}

fn ack_id(end: &Value) -> &str {
    end["messageId"].as_str().unwrap()
}
