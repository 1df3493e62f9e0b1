//! Embeddings: `embed` on `/ai` and `POST /v1/embeddings`, gathered into batches against
//! a fake upstream that logs each call it gets, and paced in every sliding second.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use chatwire::providers::mock::embedding_of;
use serde_json::{Value, json};

use crate::helpers::*;

/// One call the fake got: when, and its inputs.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    inputs: Vec<String>,
}

/// An OpenAI-compatible `/v1/embeddings` that answers `embedding_of(text)` for each input
/// (a 503 when an input starts with `fail`), logging every call.
#[derive(Clone, Default)]
struct FakeEmbeddings {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeEmbeddings {
    async fn start() -> (Self, SocketAddr) {
        let fake = Self::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/v1/embeddings", post(answer)).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn answer(State(fake): State<FakeEmbeddings>, Json(body): Json<Value>) -> axum::response::Response {
    let inputs: Vec<String> = body["input"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    fake.calls.lock().unwrap().push(Call { at: Instant::now(), inputs: inputs.clone() });
    if inputs.iter().any(|i| i.starts_with("fail")) {
        let error = json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
    }
    // Answered out of order: the server must put each vector back at its input's place.
    let mut data: Vec<Value> =
        inputs.iter().enumerate().map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embedding_of(t)})).collect();
    data.reverse();
    let usage = json!({"prompt_tokens": inputs.len() * 2, "total_tokens": inputs.len() * 2});
    Json(json!({"object": "list", "data": data, "model": body["model"], "usage": usage})).into_response()
}

async fn app_on_fake(vars: &[(&str, &str)]) -> (TestApp, FakeEmbeddings) {
    let (fake, addr) = FakeEmbeddings::start().await;
    let url = format!("http://{addr}/v1");
    let mut all = vec![("OPENAI_BASE_URL", url.as_str()), ("OPENAI_API_KEY", "sk-test"), ("ALLOWED_MODELS", "gpt-4")];
    all.extend_from_slice(vars);
    (spawn_app_with(&all).await, fake)
}

fn rest(app: &TestApp, body: Value, bearer: Option<&str>) -> reqwest::RequestBuilder {
    let request = reqwest::Client::new().post(format!("http://{}/v1/embeddings", app.addr)).json(&body);
    match bearer {
        Some(t) => request.bearer_auth(t),
        None => request,
    }
}

fn as_vector(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn forty_concurrent_single_inputs_reach_the_upstream_in_eight_calls_or_fewer_and_each_caller_gets_its_own_vector() {
    let (app, fake) = app_on_fake(&[("EMBEDDING_BATCH_SIZE", "5"), ("EMBEDDING_BATCH_WAIT_MS", "300")]).await;
    // Twenty callers on /ai, each on its own socket, and twenty over HTTP.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(app.client(&user()).await);
    }
    let sockets = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let text = format!("socket caller {i}");
        let ack = c.emit_with_ack("embed", json!({ "input": text })).await;
        (text, ack)
    });
    let token = token(&user());
    let https = (0..20).map(|i| {
        let (app, token) = (&app, &token);
        async move {
            let text = format!("http caller {i}");
            let response = rest(app, json!({ "input": [text], "model": "text-embedding-3-small" }), Some(token)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            (text, response.json::<Value>().await.unwrap())
        }
    });
    let (acks, bodies) = tokio::join!(futures::future::join_all(sockets), futures::future::join_all(https));
    for (text, ack) in acks {
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!(ack["model"], "text-embedding-3-small");
        assert_eq!(ack["embeddings"].as_array().unwrap().len(), 1);
        assert_eq!(as_vector(&ack["embeddings"][0]), embedding_of(&text), "{text} got another caller's vector");
    }
    for (text, body) in bodies {
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        assert_eq!(body["data"][0]["object"], "embedding");
        assert_eq!(body["data"][0]["index"], 0);
        assert_eq!(as_vector(&body["data"][0]["embedding"]), embedding_of(&text), "{text} got another caller's vector");
        // The fake counts 2 tokens an input; one input's share is exactly that.
        assert_eq!(body["usage"], json!({ "prompt_tokens": 2, "total_tokens": 2 }));
    }
    let calls = fake.calls();
    println!("embeddings: 40 concurrent inputs reached the upstream in {} calls", calls.len());
    assert!(calls.len() <= 8, "{} upstream calls for 40 inputs in batches of 5", calls.len());
    assert!(calls.iter().all(|c| c.inputs.len() <= 5), "a batch over EMBEDDING_BATCH_SIZE: {calls:?}");
    let mut sent: Vec<String> = calls.iter().flat_map(|c| c.inputs.clone()).collect();
    sent.sort();
    let mut asked: Vec<String> = (0..20).flat_map(|i| [format!("socket caller {i}"), format!("http caller {i}")]).collect();
    asked.sort();
    assert_eq!(sent, asked, "each input goes upstream exactly once");
}

#[tokio::test]
async fn no_sliding_second_holds_more_upstream_calls_than_the_rate_limit() {
    let (app, fake) = app_on_fake(&[("EMBEDDING_BATCH_SIZE", "1"), ("EMBEDDING_RATE_LIMIT", "3")]).await;
    let token = token(&user());
    let requests = (0..10).map(|i| {
        let (app, token) = (&app, &token);
        async move { rest(app, json!({ "input": format!("paced {i}") }), Some(token)).send().await.unwrap().json::<Value>().await.unwrap() }
    });
    let bodies = futures::future::join_all(requests).await;
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(as_vector(&body["data"][0]["embedding"]), embedding_of(&format!("paced {i}")));
    }
    let mut at: Vec<Instant> = fake.calls().iter().map(|c| c.at).collect();
    assert_eq!(at.len(), 10);
    at.sort();
    // The server counts a call when it starts it; the fake when it reads it, a loopback
    // hop later: the slack covers that hop, not a second call in the window.
    let tightest = at.windows(4).map(|w| w[3] - w[0]).min();
    println!("embeddings: the tightest 4 consecutive calls spanned {tightest:?} (limit 3 a second)");
    for window in at.windows(4) {
        let held = window[3] - window[0];
        assert!(held >= Duration::from_millis(800), "4 calls within {held:?}: more than 3 in a sliding second");
    }
}

#[tokio::test]
async fn past_the_queue_a_request_is_refused_with_rate_limit_on_both_wires() {
    let (app, fake) = app_on_fake(&[("EMBEDDING_BATCH_SIZE", "1"), ("EMBEDDING_RATE_LIMIT", "1"), ("EMBEDDING_QUEUE_LIMIT", "1000")]).await;
    let (mut filler, mut late) = (app.client(&user()).await, app.client(&user()).await);
    // A thousand inputs: one call a second, so they wait in the queue for long.
    let inputs: Vec<String> = (0..1000).map(|i| format!("queued {i}")).collect();
    filler.emit("embed", json!({ "input": inputs })).await;
    // Once the first call is out, 999 wait: two more inputs are past the limit.
    while fake.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    let ack = late.emit_with_ack("embed", json!({ "input": ["one", "two"] })).await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "RATE_LIMIT");
    let response = rest(&app, json!({ "input": ["one", "two"] }), Some(&token(&user()))).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "RATE_LIMIT");
    // The refused socket is still usable.
    let ack = late.emit_with_ack("chat:providers", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let sent: Vec<String> = fake.calls().into_iter().flat_map(|c| c.inputs).collect();
    assert!(!sent.iter().any(|i| i == "one" || i == "two"), "a refused input went upstream");
}

#[tokio::test]
async fn an_upstream_failure_reaches_its_callers_and_the_next_call_is_answered() {
    let (app, _fake) = app_on_fake(&[("EMBEDDING_BATCH_SIZE", "1")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("embed", json!({ "input": "fail please" })).await;
    assert_eq!(ack, json!({ "ok": false, "error": { "code": "UPSTREAM_ERROR", "message": ack["error"]["message"] } }));
    assert!(!ack["error"]["message"].as_str().unwrap().contains("overloaded"), "upstream detail leaked: {ack}");
    let ack = client.emit_with_ack("embed", json!({ "input": ["after", "the failure"] })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(as_vector(&ack["embeddings"][0]), embedding_of("after"));
    assert_eq!(as_vector(&ack["embeddings"][1]), embedding_of("the failure"));
}

#[tokio::test]
async fn bad_embedding_requests_get_their_codes_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    for (payload, code) in [
        (json!({}), "INVALID_PARAMS"),
        (json!({ "input": "" }), "INVALID_PARAMS"),
        (json!({ "input": [1, 2] }), "INVALID_PARAMS"),
        (json!({ "input": [] }), "INVALID_PARAMS"),
        (json!("just text"), "INVALID_PAYLOAD"),
        (json!({ "input": "x".repeat(32_001) }), "MESSAGE_TOO_LONG"),
    ] {
        let ack = client.emit_with_ack("embed", payload.clone()).await;
        assert_eq!(ack["ok"], false, "{payload}");
        assert_eq!(ack["error"]["code"], code, "{payload}");
    }
    // Refusals are acks only: no chat:error for an embedding.
    let ack = client.emit_with_ack("embed", json!({ "input": ["left", "right"] })).await;
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(as_vector(&ack["embeddings"][0]), embedding_of("left"));
    assert_eq!(as_vector(&ack["embeddings"][1]), embedding_of("right"));
    assert!(client.is_quiet_for(Duration::from_millis(100)).await, "an event besides the acks");

    let token = token(&user());
    for (body, status, code) in [
        (json!({ "input": "a", "model": "other-model" }), 400, "INVALID_MODEL"),
        (json!({ "input": "a", "encoding_format": "base64" }), 400, "INVALID_PARAMS"),
        (json!({ "input": "a", "dimensions": 3 }), 400, "INVALID_PARAMS"),
        (json!({ "input": [[1, 2, 3]] }), 400, "INVALID_PARAMS"),
        (json!(["not", "an object"]), 400, "INVALID_PAYLOAD"),
    ] {
        let response = rest(&app, body.clone(), Some(&token)).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], code, "{body}");
    }
    let response = rest(&app, json!({ "input": "a" }), None).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn the_built_in_mock_answers_embeddings_in_the_openai_shape() {
    let app = spawn_app().await;
    let response = rest(&app, json!({ "input": ["hello brave world", "one"] }), Some(&token(&user()))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body: Value = response.json().await.unwrap();
    // The mock counts a token a word: 3 + 1, all of them this request's.
    let vectors = [as_vector(&body["data"][0]["embedding"]), as_vector(&body["data"][1]["embedding"])];
    assert_eq!(vectors, [embedding_of("hello brave world"), embedding_of("one")]);
    body["data"][0]["embedding"] = json!("checked");
    body["data"][1]["embedding"] = json!("checked");
    assert_eq!(
        body,
        json!({
            "object": "list",
            "data": [
                { "object": "embedding", "index": 0, "embedding": "checked" },
                { "object": "embedding", "index": 1, "embedding": "checked" },
            ],
            "model": "text-embedding-3-small",
            "usage": { "prompt_tokens": 4, "total_tokens": 4 },
        })
    );
}
