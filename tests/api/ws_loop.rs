//! The raw-WebSocket serve loop's own behaviour, shared by every dialect: keep-alive pings
//! (a client that answers them stays, a silent one is closed with 1000), joined chunks
//! for a reader that falls behind (and the same answer seen live on `/ai` through
//! `chat:join`), and 1011 when the server cannot serve the connection's resource.

use sea_orm::TransactionTrait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    client::RECV_TIMEOUT,
    helpers::*,
    ws_client::{Ended, Ws},
};

/// The frames a server sends to a client that never writes after its handshake, up to
/// and including the close frame: `(opcode, payload)`, unmasked as a server sends them.
async fn frames_until_close(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(RECV_TIMEOUT, stream.read_exact(&mut head)).await.expect("a frame in time").expect("a frame header");
        assert_eq!(head[0] & 0x80, 0x80, "a final frame");
        assert_eq!(head[1] & 0x80, 0, "a server's frames are not masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        stream.read_exact(&mut payload).await.unwrap();
        let opcode = head[0] & 0x0f;
        frames.push((opcode, payload));
        if opcode == 0x8 {
            return frames;
        }
    }
}

/// Opens `path` with a hand-written upgrade, so nothing answers the server's pings.
async fn silent_upgrade(app: &TestApp, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The response's head, byte by byte up to its blank line (frames may follow at once).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tokio::time::timeout(RECV_TIMEOUT, stream.read_u8()).await.expect("the upgrade in time").unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "the key's accept value: {head}");
    stream
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_a_silent_one_is_closed_with_1000_idle_timeout() {
    // Pings every 100 ms; a connection silent for 100 + 100 ms is closed.
    let app = spawn_app_with(&[("PING_INTERVAL_MS", "100"), ("PING_TIMEOUT_MS", "100")]).await;
    let user = user();

    // tungstenite answers each ping it reads (on its next read): six pings (600 ms,
    // three times the idle limit) later the connection is still there and serves.
    let mut live = Ws::connect(app.addr, &format!("/ws/client-live?token={}", token(&user))).await;
    for _ in 0..6 {
        assert_eq!(live.next_frame().await, Message::Ping(Default::default()));
    }
    live.send(json!({ "type": "ping" })).await;
    assert_eq!(live.next().await, json!({ "type": "pong" }));

    // A client that never writes after its upgrade gets pings, then a close with 1000.
    let mut silent = silent_upgrade(&app, &format!("/ws/client-silent?token={}", token(&user))).await;
    let frames = frames_until_close(&mut silent).await;
    let (close, pings) = frames.split_last().unwrap();
    assert!(!pings.is_empty(), "pinged before it was closed: {frames:?}");
    assert!(pings.iter().all(|(opcode, payload)| *opcode == 0x9 && payload.is_empty()), "{frames:?}");
    let mut expected = 1000u16.to_be_bytes().to_vec();
    expected.extend_from_slice(b"idle timeout");
    assert_eq!(close, &(0x8, expected));
    // Then the server ends the TCP connection (a client that does not answer its close).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(RECV_TIMEOUT, silent.read_to_end(&mut rest)).await.expect("the end in time");
    assert!(read.is_err() || rest.is_empty(), "nothing after the close frame: {rest:?}");
    // (The live client, not read meanwhile, answered no pings: it is closed the same way.)
    assert_eq!(live.closed().await, Ended::Closed(1000));
}

#[tokio::test]
async fn a_void_reader_that_falls_behind_gets_the_answer_whole_in_joined_chunks_and_chat_join_on_ai_sees_it_live() {
    // Tokens of 2 KB: the burst (8 MB) is more than loopback's buffers and the
    // connection's queue hold while the client reads nothing.
    let pad = "x".repeat(2000);
    let burst: String = (0..4000).map(|i| format!("w{i}{pad} ")).collect();
    let burst = burst.trim_end().to_owned();
    let limit = 1_048_576usize;
    let app = spawn_app_with(&[("MOCK_RESPONSE", &burst), ("MOCK_TOKEN_DELAY_MS", "0")]).await;
    let user = user();

    // A conversation to follow: one token of a first answer, on /ai.
    let mut on_ai = app.client(&user).await;
    let first = on_ai.emit_with_ack("chat:start", json!({ "message": "first", "maxTokens": 1 })).await;
    assert_eq!(read_answer(&mut on_ai).await.final_name, "chat:end");
    let conversation = first["conversationId"].clone();
    let joined = on_ai.emit_with_ack("chat:join", json!({ "conversationId": conversation })).await;
    assert_eq!((&joined["ok"], &joined["generations"]), (&json!(true), &json!([])), "{joined}");

    // Void asks for the burst in that conversation and reads nothing until the /ai
    // follower has seen the whole answer end.
    let mut ws = Ws::connect(app.addr, "/ws").await;
    assert_eq!(ws.next().await["type"], "connect_success");
    ws.send(json!({ "type": "authenticate", "payload": { "token": token(&user) } })).await;
    assert_eq!(ws.next().await["type"], "auth_success");
    let request = json!({ "provider": "mock", "model": "gpt-4", "prompt": "burst", "stream": true, "maxTokens": 4000, "conversationId": conversation });
    ws.send(json!({ "type": "provider_request", "payload": request })).await;
    let followed = read_answer(&mut on_ai).await;
    assert_eq!(followed.final_name, "chat:end");
    assert_eq!(followed.text(), burst, "the /ai follower got the dialect's answer whole");
    let message_id = followed.final_data["messageId"].clone();

    let start = ws.next().await;
    assert_eq!(start["type"], "provider_stream_start", "{start}");
    assert_eq!((&start["payload"]["messageId"], &start["payload"]["conversationId"]), (&message_id, &conversation));
    let mut chunks = 0usize;
    let mut text = String::new();
    let end = loop {
        let frame = ws.next_text().await;
        let message: Value = serde_json::from_str(&frame).unwrap();
        match message["type"].as_str() {
            Some("provider_stream_chunk") => {
                // (The end frame carries the whole text, as Void's protocol has it.)
                assert!(frame.len() <= limit, "a joined chunk stays within WS_MAX_MESSAGE_BYTES: {}", frame.len());
                chunks += 1;
                text.push_str(message["payload"]["chunk"].as_str().unwrap());
            }
            Some("provider_stream_end") => break message,
            other => panic!("unexpected {other:?}: {message}"),
        }
    };
    eprintln!("4000 tokens reached the Void client in {chunks} chunks");
    assert_eq!(text, burst);
    assert_eq!(end["payload"]["content"], json!(burst));
    assert_eq!(end["payload"]["usage"]["completionTokens"], json!(4000));
    assert!(chunks < 4000, "a reader behind gets joined chunks, not one per token: {chunks}");
    assert!(chunks >= burst.len() / limit, "each within the frame limit: {chunks}");
    let row = app.message(message_id.as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", burst.as_str()));
}

#[tokio::test]
async fn a_chat_whose_conversation_the_database_cannot_give_gets_its_error_then_1011_and_the_next_connection_works() {
    let app = spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "1")]).await;
    let user = user();
    let conversation = Uuid::new_v4();
    let path = format!("/ws/chat/{conversation}?token={}", token(&user));

    // The only pooled connection is held: the conversation cannot be looked up, and the
    // pool gives up after its acquire timeout (5 s).
    let held = app.state.db.begin().await.unwrap();
    let mut ws = Ws::connect(app.addr, &path).await;
    assert_eq!(ws.next().await["type"], "connected");
    let error = ws.next().await;
    assert_eq!(error["type"], "error", "{error}");
    assert!(matches!(error["code"].as_str(), Some("INTERNAL" | "UNAVAILABLE")), "{error}");
    let told = error.to_string();
    assert!(!told.contains("pool") && !told.contains("sqlx") && !told.contains("timed out"), "no internal detail: {told}");
    assert_eq!(ws.closed().await, Ended::Closed(1011));
    held.rollback().await.unwrap();

    // Nothing was half made: the same path now serves a whole answer.
    let mut ws = Ws::connect(app.addr, &path).await;
    assert_eq!(ws.next().await["type"], "connected");
    ws.send(json!({ "type": "message", "content": "Hello" })).await;
    let start = ws.next().await;
    assert_eq!((start["type"].as_str(), start["conversationId"].as_str()), (Some("start"), Some(conversation.to_string().as_str())));
    let (complete, _) = ws.until("complete").await;
    let rows = app.messages(&conversation.to_string()).await;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[1].status.as_str(), rows[1].content.as_str()), ("complete", complete["fullOutput"].as_str().unwrap()));
}
