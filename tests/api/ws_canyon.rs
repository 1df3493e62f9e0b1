//! canyon's protocol at `/ws/{client_id}` through a real WebSocket client: the client's
//! history goes to the model, the exchange is stored per (user, client id), 401 at the
//! handshake without a token.

use serde_json::{Value, json};

use crate::{
    fake_upstream::{FakeUpstream, Reply, TOKENS},
    helpers::*,
    ws_client::Ws,
};

fn chat_message(content: &str, history: Value) -> Value {
    json!({ "type": "chat_message", "message": { "content": content, "role": "user" }, "history": history })
}

#[tokio::test]
async fn a_chat_message_streams_start_chunks_complete_with_the_clients_history_and_is_stored() {
    let fake = FakeUpstream::start(vec![]).await;
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &fake.base_url()), ("OPENAI_API_KEY", "k")]).await;
    let user = user();
    let mut ws = Ws::connect(app.addr, &format!("/ws/client-7?token={}", token(&user))).await;
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.next().await, json!({ "type": "pong" }));
    let history = json!([{ "role": "user", "content": "Earlier" }, { "role": "assistant", "content": "Reply" }]);
    ws.send(chat_message("Hello", history)).await;
    let start = ws.next().await;
    assert_eq!(start["type"], "response_start");
    let (complete, chunks) = ws.until("response_complete").await;
    assert!(chunks.iter().all(|c| c["type"] == "response_chunk"));
    let text: String = chunks.iter().map(|c| c["content"].as_str().unwrap()).collect();
    assert_eq!(text, TOKENS.concat());
    assert_eq!(complete["content"], TOKENS.concat());
    let sent = fake.requests();
    let roles: Vec<(&str, &str)> =
        sent[0]["messages"].as_array().unwrap().iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(roles, [("user", "Earlier"), ("assistant", "Reply"), ("user", "Hello")], "the client's history, then its message");
    let conversation = start["conversationId"].as_str().unwrap();
    let rows = app.messages(conversation).await;
    assert_eq!(
        rows.iter().map(|r| (r.role.as_str(), r.content.as_str())).collect::<Vec<_>>(),
        [("user", "Hello"), ("assistant", text.as_str())]
    );
    assert_eq!(rows[1].user_id, user);

    // The same client id on a new connection talks in the same conversation; another id does not.
    let mut again = Ws::connect_with(app.addr, "/ws/client-7", &[("authorization", &format!("Bearer {}", token(&user)))]).await.unwrap();
    again.send(chat_message("More", json!([]))).await;
    assert_eq!(again.next().await["conversationId"], conversation);
    again.until("response_complete").await;
    let mut other = Ws::connect(app.addr, &format!("/ws/client-8?token={}", token(&user))).await;
    other.send(chat_message("Hi", Value::Null)).await;
    assert_ne!(other.next().await["conversationId"], conversation);
}

#[tokio::test]
async fn no_token_or_a_bad_one_is_401_at_the_handshake() {
    let app = spawn_app().await;
    assert_eq!(Ws::connect_with(app.addr, "/ws/c1", &[]).await.err(), Some(401));
    assert_eq!(Ws::connect_with(app.addr, "/ws/c1?token=bad", &[]).await.err(), Some(401));
}

#[tokio::test]
async fn failures_malformed_json_and_unknown_types_are_errors_and_the_connection_stays() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "boom")]).await;
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &fake.base_url()), ("OPENAI_API_KEY", "k"), ("UPSTREAM_ATTEMPTS", "1")]).await;
    let mut ws = Ws::connect(app.addr, &format!("/ws/c1?token={}", token(&user()))).await;
    for (bad, code) in [
        ("{oops", "INVALID_PAYLOAD"),
        (r#"{"type":"shout"}"#, "INVALID_PAYLOAD"),
        (r#"{"type":"chat_message","message":{"content":""}}"#, "INVALID_PAYLOAD"),
        (r#"{"type":"chat_message","message":{"content":"hi"},"history":[{"role":"wizard","content":"x"}]}"#, "INVALID_PAYLOAD"),
    ] {
        ws.send_text(bad).await;
        let e = ws.next().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{bad}");
        assert!(e["message"].is_string());
    }
    ws.send(chat_message("Hello", json!([]))).await;
    let (failed, _) = ws.until("error").await;
    assert_eq!(failed["code"], "UPSTREAM_ERROR");
    ws.send(chat_message("Hello", json!([]))).await;
    let (complete, _) = ws.until("response_complete").await;
    assert_eq!(complete["content"], TOKENS.concat());
}

#[tokio::test]
async fn a_drop_mid_answer_leaves_it_running_to_the_stored_end_and_the_reconnected_client_goes_on_with_its_history() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let path = format!("/ws/client-9?token={}", token(&user));
    let mut ws = Ws::connect(app.addr, &path).await;
    ws.send(chat_message("Hello", json!([]))).await;
    let start = ws.next().await;
    assert_eq!(start["type"], "response_start");
    let first = ws.next().await;
    assert_eq!(first["type"], "response_chunk");
    let first = first["content"].as_str().unwrap().to_owned();
    assert!(first.len() < ANSWER.len(), "dropped mid-answer");
    ws.drop_now();
    let message_id = start["messageId"].as_str().unwrap();
    let conversation = start["conversationId"].as_str().unwrap();

    // The answer goes on without its client: resumed on /ai from the first chunk's end, to `chat:end`.
    let mut ai = app.client(&user).await;
    let offset = first.encode_utf16().count();
    let ack = ai.emit_with_ack("chat:resume", json!({ "messageId": message_id, "offset": offset })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let rest = read_answer(&mut ai).await;
    assert_eq!(rest.final_name, "chat:end");
    assert_eq!(format!("{first}{}", rest.text()), ANSWER, "no gap and no repeat after the first chunk");
    let row = app.message(message_id).await;
    assert_eq!((row.status.as_str(), row.content.as_str(), row.user_id.as_str()), ("complete", ANSWER, user.as_str()));
    assert_eq!(row.finish_reason.as_deref(), Some("stop"));

    // canyon has no history message: the client that comes back on the same id sends the
    // history it kept, talks in the same conversation, and the stored rows hold both turns whole.
    let mut again = Ws::connect(app.addr, &path).await;
    let kept = json!([{ "role": "user", "content": "Hello" }, { "role": "assistant", "content": first }]);
    again.send(chat_message("Go on", kept)).await;
    let start = again.next().await;
    assert_eq!((start["type"].as_str(), start["conversationId"].as_str()), (Some("response_start"), Some(conversation)));
    let (complete, _) = again.until("response_complete").await;
    assert_eq!(complete["content"], ANSWER);
    let sent = app.mock().requests();
    let last: Vec<(&str, &str)> = sent.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        last,
        [("user", "Hello"), ("assistant", first.as_str()), ("user", "Go on")],
        "the history the client kept, not the stored one"
    );
    let rows = app.messages(conversation).await;
    assert_eq!(
        rows.iter().map(|r| (r.role.as_str(), r.content.as_str(), r.status.as_str())).collect::<Vec<_>>(),
        [
            ("user", "Hello", "complete"),
            ("assistant", ANSWER, "complete"),
            ("user", "Go on", "complete"),
            ("assistant", ANSWER, "complete")
        ]
    );
}
