//! WADI's protocol through a real WebSocket client: `/ws/chat/{id}` and
//! `/ws/runs/{id}/stream`, auth and 1008, stop, drops, ownership, the serve loop's limits.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    helpers::*,
    ws_client::{Ended, Ws},
};

/// A chat connection to a fresh conversation, authenticated as `user`.
async fn chat(app: &TestApp, user: &str) -> (Ws, Uuid) {
    let conversation = Uuid::new_v4();
    let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{conversation}")).await;
    let connected = ws.next().await;
    assert_eq!(connected["type"], "connected");
    assert!(Uuid::try_parse(connected["clientId"].as_str().unwrap()).is_ok());
    ws.send(json!({ "type": "auth", "token": token(user) })).await;
    assert_eq!(ws.next().await, json!({ "type": "authenticated" }));
    (ws, conversation)
}

/// Reads one answer: `start`, the chunks, then `complete` or `error`.
async fn answer(ws: &mut Ws) -> (Value, String, Value) {
    let start = ws.next().await;
    assert_eq!(start["type"], "start", "{start}");
    let mut text = String::new();
    loop {
        let m = ws.next().await;
        match m["type"].as_str().unwrap() {
            "chunk" => text.push_str(m["content"].as_str().unwrap()),
            "complete" | "error" => return (start, text, m),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn a_chat_streams_start_chunks_complete_and_stores_the_answer_in_the_paths_conversation() {
    let app = spawn_app().await;
    let user = user();
    let (mut ws, conversation) = chat(&app, &user).await;
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let (start, text, complete) = answer(&mut ws).await;
    assert_eq!(start["conversationId"], json!(conversation));
    assert_eq!(text, ANSWER);
    assert_eq!(
        (complete["type"].as_str(), complete["fullOutput"].as_str(), complete.get("stopped")),
        (Some("complete"), Some(ANSWER), None)
    );
    let rows = app.messages(&conversation.to_string()).await;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].role.as_str(), rows[0].content.as_str(), rows[0].user_id.as_str()), ("user", "Hello", user.as_str()));
    assert_eq!(
        (rows[1].id.to_string(), rows[1].status.as_str(), rows[1].content.as_str()),
        (start["messageId"].as_str().unwrap().to_owned(), "complete", ANSWER)
    );
    // The next message goes on in the same conversation, with the first turn as context.
    ws.send(json!({ "type": "message", "content": "Again" })).await;
    let (_, text, _) = answer(&mut ws).await;
    assert_eq!(text, ANSWER);
    assert_eq!(app.messages(&conversation.to_string()).await.len(), 4);
}

#[tokio::test]
async fn a_bad_token_closes_with_1008_and_a_good_one_in_the_query_needs_no_auth_message() {
    let app = spawn_app().await;
    let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}", Uuid::new_v4())).await;
    assert_eq!(ws.next().await["type"], "connected");
    ws.send(json!({ "type": "auth", "token": "not-a-jwt" })).await;
    assert_eq!(ws.closed().await, Ended::Closed(1008));

    let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}?token={}", Uuid::new_v4(), token(&user()))).await;
    assert_eq!(ws.next().await["type"], "connected");
    ws.send(json!({ "type": "message", "content": "Hi" })).await;
    let (_, text, _) = answer(&mut ws).await;
    assert_eq!(text, ANSWER);

    // Before auth, a message is refused and the connection stays.
    let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}", Uuid::new_v4())).await;
    ws.next().await;
    ws.send(json!({ "type": "message", "content": "Hi" })).await;
    let refused = ws.next().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("UNAUTHORIZED")));
    ws.send(json!({ "type": "auth", "token": token(&user()) })).await;
    assert_eq!(ws.next().await["type"], "authenticated");
}

#[tokio::test]
async fn stop_ends_the_answer_with_the_partial_text_and_stopped_true() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "40")]).await;
    let (mut ws, _) = chat(&app, &user()).await;
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let start = ws.next().await;
    let first = ws.next().await;
    assert_eq!(first["type"], "chunk");
    ws.send(json!({ "type": "stop" })).await;
    let (complete, chunks) = ws.until("complete").await;
    let text: String = std::iter::once(&first).chain(&chunks).map(|c| c["content"].as_str().unwrap()).collect();
    assert_eq!((complete["stopped"].as_bool(), complete["fullOutput"].as_str()), (Some(true), Some(text.as_str())));
    assert!(text.len() < ANSWER.len());
    let row = app.message(start["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str(), row.finish_reason.as_deref()), ("stopped", text.as_str(), Some("stopped")));
}

#[tokio::test]
async fn a_dropped_chat_finishes_and_a_run_stream_watches_it_from_an_offset_to_the_stored_row() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let (mut ws, _) = chat(&app, &user).await;
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let start = ws.next().await;
    let first = ws.next().await["content"].as_str().unwrap().to_owned();
    ws.drop_now();
    let run = start["messageId"].as_str().unwrap();
    let offset = first.encode_utf16().count();
    let mut watch = Ws::connect(app.addr, &format!("/ws/runs/{run}/stream?offset={offset}")).await;
    assert_eq!(watch.next().await["type"], "connected");
    watch.send(json!({ "type": "auth", "token": token(&user) })).await;
    assert_eq!(watch.next().await["type"], "authenticated");
    let (complete, chunks) = watch.until("complete").await;
    let rest: String = chunks.iter().map(|c| c["content"].as_str().unwrap()).collect();
    assert_eq!(format!("{first}{rest}"), ANSWER, "no gap and no repeat after the offset");
    assert_eq!(complete["fullOutput"], ANSWER, "fullOutput is the whole answer, whatever the offset");
    assert_eq!(watch.closed().await, Ended::Closed(1000));
    let row = app.message(run).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", ANSWER));

    // Finished: replayed from the row; an offset beyond what exists waits for the text.
    let mut watch = Ws::connect(app.addr, &format!("/ws/runs/{run}/stream?token={}&offset=5", token(&user))).await;
    watch.next().await;
    let (complete, chunks) = watch.until("complete").await;
    assert_eq!(chunks.iter().map(|c| c["content"].as_str().unwrap()).collect::<String>(), ANSWER[5..]);
    assert_eq!(complete["fullOutput"], ANSWER);
}

#[tokio::test]
async fn an_offset_beyond_the_text_waits_for_it() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let (mut ws, _) = chat(&app, &user).await;
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let start = ws.next().await;
    let run = start["messageId"].as_str().unwrap();
    let skip = ANSWER.encode_utf16().count() - 6;
    let mut watch = Ws::connect(app.addr, &format!("/ws/runs/{run}/stream?token={}&offset={skip}", token(&user))).await;
    watch.next().await;
    let (complete, chunks) = watch.until("complete").await;
    let expected: String = String::from_utf16(&ANSWER.encode_utf16().skip(skip).collect::<Vec<_>>()).unwrap();
    assert_eq!(chunks.iter().map(|c| c["content"].as_str().unwrap()).collect::<String>(), expected);
    assert_eq!(complete["fullOutput"], ANSWER);
}

#[tokio::test]
async fn another_users_conversation_or_run_closes_with_1008() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let (alice, bob) = (user(), user());
    let (mut ws, conversation) = chat(&app, &alice).await;
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let run = ws.next().await["messageId"].as_str().unwrap().to_owned();

    let mut intruder = Ws::connect(app.addr, &format!("/ws/chat/{conversation}")).await;
    intruder.next().await;
    intruder.send(json!({ "type": "auth", "token": token(&bob) })).await;
    assert_eq!(intruder.closed().await, Ended::Closed(1008));
    let mut intruder = Ws::connect(app.addr, &format!("/ws/runs/{run}/stream?token={}", token(&bob))).await;
    intruder.next().await;
    assert_eq!(intruder.closed().await, Ended::Closed(1008));
    let mut unknown = Ws::connect(app.addr, &format!("/ws/runs/{}/stream?token={}", Uuid::new_v4(), token(&alice))).await;
    unknown.next().await;
    assert_eq!(unknown.closed().await, Ended::Closed(1008));
    assert_eq!(app.messages(&conversation.to_string()).await.iter().filter(|m| m.user_id != alice).count(), 0);
}

#[tokio::test]
async fn malformed_json_and_unknown_types_get_an_error_and_the_connection_stays() {
    let app = spawn_app().await;
    let (mut ws, _) = chat(&app, &user()).await;
    for bad in ["{not json", "[1,2]", r#"{"type":"dance"}"#, r#"{"type":"message","content":7}"#] {
        ws.send_text(bad).await;
        let e = ws.next().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("INVALID_PAYLOAD")), "{bad}: {e}");
    }
    ws.send_raw(Message::Binary(vec![0xff, 0x00].into())).await;
    assert_eq!(ws.next().await["code"], "INVALID_PAYLOAD");
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let (_, text, _) = answer(&mut ws).await;
    assert_eq!(text, ANSWER);
}

#[tokio::test]
async fn over_the_message_rate_a_client_gets_rate_limit_and_stays_connected() {
    let app = spawn_app_with(&[("WS_MESSAGES_PER_SECOND", "1")]).await;
    let (mut ws, _) = chat(&app, &user()).await;
    for _ in 0..20 {
        ws.send(json!({ "type": "dance" })).await;
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(ws.next().await["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen[0], "INVALID_PAYLOAD", "within the burst, a message is served");
    assert!(seen.iter().filter(|c| *c == "RATE_LIMIT").count() >= 15, "{seen:?}");
    assert!(seen.iter().all(|c| c == "RATE_LIMIT" || c == "INVALID_PAYLOAD"));
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let app = spawn_app_with(&[("WS_MAX_MESSAGE_BYTES", "4096")]).await;
    let (mut ws, _) = chat(&app, &user()).await;
    ws.send(json!({ "type": "message", "content": "x".repeat(5000) })).await;
    assert_eq!(ws.closed().await, Ended::Closed(1009));
}

#[tokio::test]
async fn an_origin_outside_the_allowlist_is_refused_and_an_allowed_one_served() {
    let app = spawn_app().await;
    let path = format!("/ws/chat/{}", Uuid::new_v4());
    assert_eq!(Ws::connect_with(app.addr, &path, &[("origin", "https://evil.test")]).await.err(), Some(403));
    assert!(Ws::connect_with(app.addr, &path, &[("origin", "http://localhost:5173")]).await.is_ok());
}

#[tokio::test]
async fn a_run_stream_watches_an_answer_started_on_ai_live_to_the_same_end() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut ai = app.client(&user).await;
    let ack = ai.emit_with_ack("chat:start", json!({ "message": "Hello" })).await;
    let (first, _) = ai.until("chat:message").await;
    let run = ack["messageId"].as_str().unwrap();
    let mut watch = Ws::connect(app.addr, &format!("/ws/runs/{run}/stream?token={}", token(&user))).await;
    assert_eq!(watch.next().await["type"], "connected");
    let (complete, chunks) = watch.until("complete").await;
    let watched: String = chunks.iter().map(|c| c["content"].as_str().unwrap()).collect();
    let ai_answer = read_answer(&mut ai).await;
    let ai_text = format!("{}{}", first["content"].as_str().unwrap(), ai_answer.text());
    assert_eq!((ai_answer.final_name.as_str(), ai_answer.final_data["content"].as_str()), ("chat:end", Some(ANSWER)));
    assert_eq!((watched.as_str(), complete["fullOutput"].as_str(), ai_text.as_str()), (ANSWER, Some(ANSWER), ANSWER));
    assert_eq!(watch.closed().await, Ended::Closed(1000));
    assert_eq!(app.message(run).await.content, ANSWER);
}
