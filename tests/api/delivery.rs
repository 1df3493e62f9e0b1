//! Never lose a token: a burst into a slow client arrives whole, joined into fewer
//! chunks when the socket's buffer is full, and matches what is stored.

use std::time::Duration;

use serde_json::json;

use crate::{
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

#[tokio::test]
async fn a_4000_token_burst_into_a_slow_client_arrives_whole() {
    // Tokens of 2 KB, so the burst (8 MB) is more than loopback's socket buffers hold.
    let pad = "x".repeat(2000);
    let burst: String = (0..4000).map(|i| format!("w{i}{pad} ")).collect();
    let burst = burst.trim_end().to_owned();
    let app = spawn_app_with(&[("MOCK_RESPONSE", &burst), ("MOCK_TOKEN_DELAY_MS", "0"), ("SOCKET_BUFFER_PACKETS", "4")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "burst" })).await;
    // Read nothing until the whole answer is stored: the socket's buffers fill and emits fail.
    let id = ack["messageId"].as_str().unwrap();
    for _ in 0..600 {
        if app.message(id).await.status == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_chunks_consistent(&answer.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!(answer.text(), burst);
    assert_eq!(answer.final_data["content"], burst);
    assert_eq!(answer.final_data["completionTokens"], json!(4000));
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!(row.content, burst);
    eprintln!("4000 tokens arrived in {} chunks", answer.chunks.len());
    assert!(answer.chunks.len() < 4000, "a full buffer joins deltas instead of dropping them");
}

#[tokio::test]
async fn the_mock_in_stamp_mode_streams_max_tokens_timestamps() {
    let app = spawn_app_with(&[("MOCK_STAMP", "true"), ("MOCK_TOKEN_DELAY_MS", "2")]).await;
    let mut client = app.client(&user()).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    client.emit("chat:start", json!({ "message": "bench", "maxTokens": 7 })).await;
    let answer = read_answer(&mut client).await;
    let stamps: Vec<u128> = answer.text().split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert_eq!(stamps.len(), 7);
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
    assert!(stamps[0] >= before);
    assert_eq!(answer.final_data["completionTokens"], json!(7));
}

#[tokio::test]
async fn a_coalescing_window_joins_deltas_into_fewer_frames() {
    let words: String = (0..60).map(|i| format!("w{i} ")).collect();
    let words = words.trim_end().to_owned();
    let app = spawn_app_with(&[("MOCK_RESPONSE", &words), ("MOCK_TOKEN_DELAY_MS", "2"), ("STREAM_COALESCE_MS", "50")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "many" })).await;
    let answer = read_answer(&mut client).await;
    assert_chunks_consistent(&answer.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!(answer.text(), words);
    assert!(answer.chunks.len() < 30, "60 deltas 2 ms apart in 50 ms windows: {} chunks", answer.chunks.len());
}

#[tokio::test]
async fn pieces_already_waiting_upstream_leave_as_one_chunk() {
    // The upstream writes a 500-token answer at once: the generation finds its pieces
    // waiting and joins them instead of sending a frame per piece.
    let words: Vec<String> = (0..500).map(|i| format!("w{i} ")).collect();
    let fake = FakeUpstream::start(vec![Reply::Burst(words.clone())]).await;
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &fake.base_url()), ("OPENAI_API_KEY", "sk-test")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "burst" })).await;
    let answer = read_answer(&mut client).await;
    let text = words.concat();
    assert_eq!(answer.final_name, "chat:end");
    assert_chunks_consistent(&answer.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!(answer.text(), text);
    assert_eq!(answer.final_data["completionTokens"], json!(500));
    assert_eq!(app.message(ack["messageId"].as_str().unwrap()).await.content, text);
    eprintln!("500 tokens arrived in {} chunks", answer.chunks.len());
    assert!(answer.chunks.len() <= 100, "waiting pieces are joined (at most 64 a chunk), not sent one frame each");
}
