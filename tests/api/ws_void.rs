//! Void's protocol at `/ws` through a real WebSocket client: `{ type, payload }` both
//! ways, auth first, providers, streamed and whole answers, requestId and conversationId,
//! a drop then `provider_resume`, and the answer seen from `/ai`.

use serde_json::{Value, json};

use crate::{
    helpers::*,
    ws_client::{Ended, Ws},
};

fn msg(kind: &str, payload: Value) -> Value {
    json!({ "type": kind, "payload": payload })
}

/// A connection to `/ws`, authenticated as `user`.
async fn void(app: &TestApp, user: &str) -> Ws {
    let mut ws = Ws::connect(app.addr, "/ws").await;
    let hello = ws.next().await;
    assert_eq!((hello["type"].as_str(), hello["payload"]["authRequired"].as_bool()), (Some("connect_success"), Some(true)));
    ws.send(msg("authenticate", json!({ "token": token(user) }))).await;
    assert_eq!(ws.next().await, msg("auth_success", json!({ "userId": user })));
    ws
}

/// Reads a streamed answer: start, chunks, end.
async fn streamed(ws: &mut Ws) -> (Value, String, Value) {
    let start = ws.next().await;
    assert_eq!(start["type"], "provider_stream_start", "{start}");
    let (end, chunks) = ws.until("provider_stream_end").await;
    assert!(chunks.iter().all(|c| c["type"] == "provider_stream_chunk"));
    (start, chunks.iter().map(|c| c["payload"]["chunk"].as_str().unwrap()).collect(), end)
}

#[tokio::test]
async fn before_authenticate_only_ping_is_served_and_a_bad_token_is_auth_failure() {
    let app = spawn_app().await;
    let mut ws = Ws::connect(app.addr, "/ws").await;
    assert_eq!(ws.next().await["type"], "connect_success");
    ws.send(msg("ping", json!({}))).await;
    assert_eq!(ws.next().await["type"], "pong");
    ws.send(msg("provider_list", json!({}))).await;
    assert_eq!(ws.next().await["payload"]["code"], "FORBIDDEN");
    ws.send(msg("authenticate", json!({ "token": "nope" }))).await;
    assert_eq!(ws.next().await, msg("auth_failure", json!({ "code": "UNAUTHORIZED", "message": "unauthorized" })));
    ws.send(msg("authenticate", json!({ "token": token("u-void") }))).await;
    assert_eq!(ws.next().await["type"], "auth_success");
    ws.send(msg("provider_list", json!({ "requestId": "r1" }))).await;
    assert_eq!(
        ws.next().await,
        msg("provider_list", json!({ "providers": [{ "id": "mock", "name": "Mock", "default": true }], "requestId": "r1" }))
    );
}

#[tokio::test]
async fn providers_and_models_come_from_the_registry_with_two_fake_providers_and_one_answers() {
    let t = crate::providers::three("", &[]).await;
    let mut ws = void(&t.app, &user()).await;
    ws.send(msg("provider_list", json!({}))).await;
    assert_eq!(
        ws.next().await,
        msg(
            "provider_list",
            json!({ "providers": [
                { "id": "gem", "name": "Gemini-like", "default": false },
                { "id": "mis", "name": "mis", "default": false },
                { "id": "orr", "name": "orr", "default": true },
            ]})
        )
    );
    // A discovered list (gem's GET /models) and a listed one (mis, from the file).
    ws.send(msg("provider_models", json!({ "provider": "gem" }))).await;
    assert_eq!(
        ws.next().await,
        msg("provider_models", json!({ "provider": "gem", "models": [{ "id": "gem-pro" }, { "id": "fail-503" }] }))
    );
    ws.send(msg("provider_models", json!({ "provider": "mis" }))).await;
    assert_eq!(
        ws.next().await,
        msg(
            "provider_models",
            json!({ "provider": "mis", "models": [{ "id": "mis-large" }, { "id": "fail-503" }, { "id": "cut-after-2" }] })
        )
    );
    ws.send(msg("provider_models", json!({ "provider": "openai" }))).await;
    assert_eq!(ws.next().await, msg("provider_error", json!({ "code": "INVALID_MODEL", "message": "unknown provider" })));
    ws.send(msg("provider_request", json!({ "provider": "mis", "model": "gpt-4", "prompt": "hi" }))).await;
    assert_eq!(ws.next().await["payload"]["code"], "INVALID_MODEL");
    assert_eq!(t.mis.requests().len(), 0, "refused before any upstream call");
    // A streamed request to one of them: who answered is in the start and the end.
    ws.send(msg("provider_request", json!({ "provider": "gem", "model": "gem-pro", "prompt": "hi", "stream": true }))).await;
    let (start, text, end) = streamed(&mut ws).await;
    assert_eq!((&start["payload"]["provider"], &start["payload"]["model"]), (&json!("gem"), &json!("gem-pro")));
    assert_eq!((&end["payload"]["provider"], &end["payload"]["model"]), (&json!("gem"), &json!("gem-pro")));
    assert_eq!(end["payload"]["content"].as_str(), Some(text.as_str()));
    let row = t.app.message(end["payload"]["messageId"].as_str().unwrap()).await;
    assert_eq!((row.provider.as_deref(), row.model.as_deref(), row.content.as_str()), (Some("gem"), Some("gem-pro"), text.as_str()));
}

#[tokio::test]
async fn a_streamed_request_joins_to_the_end_and_the_stored_row_with_request_id_echoed() {
    let app = spawn_app().await;
    let user = user();
    let mut ws = void(&app, &user).await;
    let request = json!({ "provider": "mock", "model": "gpt-4", "prompt": "Hello", "temperature": 0.7, "maxTokens": 1024, "stream": true, "requestId": 7 });
    ws.send(msg("provider_request", request)).await;
    let (start, text, end) = streamed(&mut ws).await;
    assert_eq!(
        (&start["payload"]["provider"], &start["payload"]["model"], &start["payload"]["requestId"]),
        (&json!("mock"), &json!("gpt-4"), &json!(7))
    );
    assert_eq!(text, ANSWER);
    let end = &end["payload"];
    assert_eq!((end["content"].as_str(), &end["requestId"], &end["messageId"]), (Some(ANSWER), &json!(7), &start["payload"]["messageId"]));
    let usage = &end["usage"];
    assert_eq!(usage["totalTokens"].as_u64(), Some(usage["promptTokens"].as_u64().unwrap() + usage["completionTokens"].as_u64().unwrap()));
    let row = app.message(end["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str(), row.user_id.as_str()), ("complete", ANSWER, user.as_str()));

    // conversationId goes on with the conversation; without stream, one provider_response.
    let conversation = &end["conversationId"];
    ws.send(msg("provider_request", json!({ "prompt": "More", "conversationId": conversation, "requestId": "b" }))).await;
    let response = ws.next().await;
    assert_eq!(response["type"], "provider_response");
    assert_eq!(
        (&response["payload"]["content"], &response["payload"]["conversationId"], &response["payload"]["requestId"]),
        (&json!(ANSWER), conversation, &json!("b"))
    );
    assert_eq!(app.messages(conversation.as_str().unwrap()).await.len(), 4);
}

#[tokio::test]
async fn failures_are_provider_error_and_malformed_messages_error_and_the_connection_stays() {
    let app = spawn_app().await;
    let mut ws = void(&app, &user()).await;
    for (bad, kind, code) in [
        ("{oops", "error", "INVALID_PAYLOAD"),
        (r#"{"type":"dance","payload":{}}"#, "error", "INVALID_PAYLOAD"),
        (r#"{"type":"ping","payload":3}"#, "error", "INVALID_PAYLOAD"),
        (r#"{"payload":{}}"#, "error", "INVALID_PAYLOAD"),
        (r#"{"type":"provider_request","payload":{"requestId":"x"}}"#, "provider_error", "INVALID_PAYLOAD"),
        (r#"{"type":"provider_request","payload":{"prompt":"hi","temperature":9}}"#, "provider_error", "INVALID_PARAMS"),
        (r#"{"type":"provider_resume","payload":{"messageId":"01a2011e-ad51-71af-af86-f2c345ea9909"}}"#, "provider_error", "NOT_FOUND"),
    ] {
        ws.send_text(bad).await;
        let e = ws.next().await;
        assert_eq!((e["type"].as_str(), e["payload"]["code"].as_str()), (Some(kind), Some(code)), "{bad}: {e}");
        assert!(e["payload"]["message"].is_string());
    }
    ws.send(msg("provider_request", json!({ "prompt": "Hello", "stream": true }))).await;
    assert_eq!(streamed(&mut ws).await.1, ANSWER);
}

#[tokio::test]
async fn a_dropped_answer_finishes_and_resumes_on_void_and_is_active_and_resumable_on_ai() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut ws = void(&app, &user).await;
    ws.send(msg("provider_request", json!({ "prompt": "Hello", "stream": true }))).await;
    let start = ws.next().await;
    let first = ws.next().await["payload"]["chunk"].as_str().unwrap().to_owned();
    ws.drop_now();
    let message_id = start["payload"]["messageId"].clone();

    // Listed in chat:active on /ai, and resumed there to its end.
    let mut ai = app.client(&user).await;
    let active = ai.active().await;
    assert_eq!(active["generations"][0]["messageId"], message_id);
    let ack = ai.emit_with_ack("chat:resume", json!({ "messageId": message_id, "offset": 0 })).await;
    assert_eq!(ack["ok"], json!(true));
    let answer = read_answer(&mut ai).await;
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", ANSWER.to_owned()));

    // provider_resume on a new Void connection: the rest after what was read, then the end.
    let mut again = void(&app, &user).await;
    let offset = first.encode_utf16().count();
    again.send(msg("provider_resume", json!({ "messageId": message_id, "offset": offset, "requestId": "r" }))).await;
    let (start, rest, end) = streamed(&mut again).await;
    assert_eq!((&start["payload"]["status"], &start["payload"]["offset"]), (&json!("complete"), &json!(offset)));
    assert_eq!(format!("{first}{rest}"), ANSWER);
    assert_eq!(end["payload"]["content"], ANSWER);
    let row = app.message(message_id.as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", ANSWER));
}

#[tokio::test]
async fn open_mode_needs_no_authenticate() {
    let app = spawn_app_with(&[("AUTH_ENABLED", "false")]).await;
    let mut ws = Ws::connect(app.addr, "/ws?userId=void-open").await;
    assert_eq!(ws.next().await["payload"]["authRequired"], false);
    ws.send(msg("provider_request", json!({ "prompt": "Hello" }))).await;
    let response = ws.next().await;
    assert_eq!(response["payload"]["content"], ANSWER);
    assert_eq!(app.message(response["payload"]["messageId"].as_str().unwrap()).await.user_id, "void-open");
}

#[tokio::test]
async fn open_mode_serves_canyon_and_wadi_without_a_token_as_the_user_they_name() {
    let app = spawn_app_with(&[("AUTH_ENABLED", "false")]).await;

    // canyon: the handshake is served (no 401) and the answer is the named user's.
    let mut canyon = Ws::connect(app.addr, "/ws/client-1?userId=canyon-open").await;
    canyon.send(json!({ "type": "chat_message", "message": { "content": "Hello", "role": "user" }, "history": [] })).await;
    let start = canyon.next().await;
    assert_eq!(start["type"], "response_start", "{start}");
    let (complete, _) = canyon.until("response_complete").await;
    assert_eq!(complete["content"], ANSWER);
    let rows = app.messages(start["conversationId"].as_str().unwrap()).await;
    let rows: Vec<_> = rows.iter().map(|m| (m.user_id.as_str(), m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(rows, [("canyon-open", "user", "Hello"), ("canyon-open", "assistant", ANSWER)]);

    // WADI: `connected`, then a message is answered with no `auth` sent.
    let conversation = uuid::Uuid::new_v4();
    let mut wadi = Ws::connect(app.addr, &format!("/ws/chat/{conversation}?userId=wadi-open")).await;
    assert_eq!(wadi.next().await["type"], "connected");
    wadi.send(json!({ "type": "message", "content": "Hi" })).await;
    let (complete, before) = wadi.until("complete").await;
    assert_eq!((complete["fullOutput"].as_str(), before[0]["type"].as_str()), (Some(ANSWER), Some("start")));
    let rows = app.messages(&conversation.to_string()).await;
    let rows: Vec<_> = rows.iter().map(|m| (m.user_id.as_str(), m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(rows, [("wadi-open", "user", "Hi"), ("wadi-open", "assistant", ANSWER)]);
}

#[tokio::test]
async fn every_dialect_rate_limits_and_closes_an_oversized_frame_with_1009() {
    let app = spawn_app_with(&[("WS_MESSAGES_PER_SECOND", "1"), ("WS_MAX_MESSAGE_BYTES", "2048")]).await;
    let t = token(&user());
    for path in [format!("/ws?token={t}"), format!("/ws/c1?token={t}"), format!("/ws/chat/{}?token={t}", uuid::Uuid::new_v4())] {
        let mut ws = Ws::connect(app.addr, &path).await;
        for _ in 0..10 {
            ws.send_text("{}").await;
        }
        let mut codes = Vec::new();
        while codes.len() < 10 {
            let m = ws.next().await;
            if let Some(code) = m["code"].as_str().or(m["payload"]["code"].as_str()) {
                codes.push(code.to_owned());
            }
        }
        assert!(codes.iter().filter(|c| *c == "RATE_LIMIT").count() >= 5, "{path}: {codes:?}");
        ws.send_text(&"x".repeat(3000)).await;
        assert_eq!(ws.closed().await, Ended::Closed(1009), "{path}");
    }
}
