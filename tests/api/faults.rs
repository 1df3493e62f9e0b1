//! Upstream faults: each ends in a stored row that matches what the client was told,
//! and the socket keeps working.

use serde_json::{Value, json};

use crate::{
    fake_upstream::{FakeUpstream, Reply, TOKENS},
    helpers::*,
};

/// A server talking to `fake`, with fast retries and short timeouts.
async fn app_for(fake: &FakeUpstream) -> TestApp {
    spawn_app_with(&[
        ("OPENAI_BASE_URL", &fake.base_url()),
        ("OPENAI_API_KEY", "sk-test"),
        ("UPSTREAM_ATTEMPTS", "3"),
        ("UPSTREAM_RETRY_BASE_MS", "10"),
        ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "400"),
        ("UPSTREAM_IDLE_TIMEOUT_MS", "400"),
    ])
    .await
}

/// Starts a chat and returns its ack and how it ended.
async fn chat(app: &TestApp) -> (Value, Answer, crate::client::Client) {
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(ack["ok"], json!(true));
    let answer = read_answer(&mut client).await;
    (ack, answer, client)
}

/// Asserts a `chat:error` about this generation, the stored row, and that the socket still chats.
async fn assert_failed(app: &TestApp, fake: &FakeUpstream, code: &str, partial: &str) {
    let (ack, answer, mut client) = chat(app).await;
    assert_eq!(answer.final_name, "chat:error");
    assert_eq!(answer.final_data["code"], code);
    assert_eq!(answer.final_data["messageId"], ack["messageId"]);
    assert_eq!(answer.final_data["conversationId"], ack["conversationId"]);
    assert_eq!(answer.text(), partial);
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.content.as_str(), row.status.as_str(), row.finish_reason.as_deref()), (partial, "error", Some("error")));

    let hits = fake.hits();
    client.emit("chat:start", json!({ "message": "again", "conversationId": ack["conversationId"] })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.text(), TOKENS.concat());
    assert_eq!(fake.hits(), hits + 1);
}

#[tokio::test]
async fn server_errors_before_the_first_token_are_retried() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "boom"), Reply::Status(503, "busy")]).await;
    let app = app_for(&fake).await;
    let (ack, answer, _) = chat(&app).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.final_data["content"], TOKENS.concat());
    assert_eq!(fake.hits(), 3);
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.prompt_tokens), ("complete", Some(7)));
}

#[tokio::test]
async fn server_errors_past_the_last_attempt_are_upstream_error() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "a"), Reply::Status(502, "b"), Reply::Status(500, "c")]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "UPSTREAM_ERROR", "").await;
    assert_eq!(fake.hits(), 4);
}

#[tokio::test]
async fn a_provider_429_is_rate_limit() {
    let fake = FakeUpstream::start(vec![Reply::Status(429, "rate_limit_exceeded"); 3]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "RATE_LIMIT", "").await;
}

#[tokio::test]
async fn an_unknown_model_is_invalid_model_without_retry() {
    let fake = FakeUpstream::start(vec![Reply::Status(404, "model_not_found")]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "INVALID_MODEL", "").await;
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn a_stream_cut_mid_answer_keeps_the_partial_answer() {
    let fake = FakeUpstream::start(vec![Reply::CutAfter(vec!["Half ", "an ", "answer "])]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "UPSTREAM_ERROR", "Half an answer ").await;
}

#[tokio::test]
async fn a_stream_that_ends_without_a_finish_reason_is_an_error() {
    let fake = FakeUpstream::start(vec![Reply::EndWithoutFinish(vec!["Trunc", "ated"])]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "UPSTREAM_ERROR", "Truncated").await;
}

#[tokio::test]
async fn a_silent_upstream_times_out_before_and_after_the_first_token() {
    let fake = FakeUpstream::start(vec![Reply::SilentAfter(vec![])]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "UPSTREAM_TIMEOUT", "").await;
    let fake = FakeUpstream::start(vec![Reply::SilentAfter(vec!["Then ", "silence"])]).await;
    let app = app_for(&fake).await;
    assert_failed(&app, &fake, "UPSTREAM_TIMEOUT", "Then silence").await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_upstream_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &url), ("UPSTREAM_ATTEMPTS", "2"), ("UPSTREAM_RETRY_BASE_MS", "10")]).await;
    let (ack, answer, _) = chat(&app).await;
    assert_eq!(answer.final_name, "chat:error");
    assert_eq!(answer.final_data["code"], "UPSTREAM_ERROR");
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("error", ""));
}

#[tokio::test]
async fn a_slow_but_steady_upstream_is_not_silent() {
    // Each token comes well within the 300 ms limits, the whole answer takes far longer.
    let words: String = (0..12).map(|i| format!("w{i} ")).collect();
    let words = words.trim_end().to_owned();
    let app = spawn_app_with(&[
        ("MOCK_RESPONSE", &words),
        ("MOCK_TOKEN_DELAY_MS", "100"),
        ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "300"),
        ("UPSTREAM_IDLE_TIMEOUT_MS", "300"),
    ])
    .await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "slow" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end", "{:?}", answer.final_data);
    assert_eq!(answer.text(), words);
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", words.as_str()));
}

#[tokio::test]
async fn a_request_started_for_a_refused_start_is_aborted() {
    // chat:start opens the upstream request while it stores the turn; when storing fails
    // the request is dropped. Here the upstream takes the request and never answers.
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let retry = chatwire::providers::RetryPolicy { attempts: 1, base_delay: std::time::Duration::from_millis(10) };
    let minute = std::time::Duration::from_secs(60);
    let provider = chatwire::providers::Provider::new(&url, "sk-test", (minute, minute), retry);
    let call = chatwire::providers::ChatCall {
        model: "gpt-4".into(),
        max_tokens: 10,
        temperature: 0.7,
        messages: vec![chatwire::store::HistoryMessage::new("user", "hi")],
    };
    let opening = provider.start_open(call);
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut request = vec![0u8; 4096];
    assert!(conn.read(&mut request).await.unwrap() > 0, "the request arrives");
    drop(opening);
    // Without the abort, the connection would wait a minute for the first token.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match conn.read(&mut request).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "dropping the opening stream closes the upstream connection");
}
