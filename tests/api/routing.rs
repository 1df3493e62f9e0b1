//! Who gets an answer's events: the socket that started it and the sockets that asked
//! for it, each at its own pace, each once. These failed before the engine rewrite.

use std::time::Duration;

use serde_json::json;

use crate::{
    client::{Client, Incoming},
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

/// Offsets run on from 0 with no gap and no overlap, and the text is the final content.
fn assert_whole_once(answer: &Answer) {
    let mut offset = 0u64;
    for (i, c) in answer.chunks.iter().enumerate() {
        assert_eq!(c["offset"], json!(offset), "chunk {i} starts where the one before ended");
        offset += c["content"].as_str().unwrap().encode_utf16().count() as u64;
    }
    assert_eq!(answer.text(), answer.final_data["content"].as_str().unwrap());
}

#[tokio::test]
async fn two_tabs_talking_in_one_conversation_get_only_their_own_answers() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "15")]).await;
    let user = user();
    let mut tab1 = app.client(&user).await;
    let mut tab2 = app.client(&user).await;
    let first = tab1.emit_with_ack("chat:start", json!({ "message": "one" })).await;
    let conversation = first["conversationId"].clone();
    tab1.until("chat:message").await;
    let second = tab2.emit_with_ack("chat:start", json!({ "message": "two", "conversationId": conversation })).await;

    // A client written for the NestJS gateway appends every chunk and stops at chat:end.
    let answer1 = read_answer(&mut tab1).await;
    let answer2 = read_answer(&mut tab2).await;
    for (answer, ack) in [(&answer1, &first), (&answer2, &second)] {
        assert_eq!(answer.final_name, "chat:end");
        assert_eq!(answer.final_data["messageId"], ack["messageId"], "each tab ends at its own chat:end");
        assert!(answer.chunks.iter().all(|c| c["messageId"] == ack["messageId"]), "only its own chunks");
    }
    // tab1 read its first chunk before read_answer; the rest is its answer's tail.
    assert_eq!(answer2.text(), ANSWER);
    assert!(ANSWER.ends_with(&answer1.text()));
    assert!(tab1.is_quiet_for(Duration::from_millis(300)).await, "nothing of the other tab's answer follows");
}

#[tokio::test]
async fn a_joiner_gets_a_bursting_answer_once_from_its_start() {
    // The upstream writes in bursts: 300 writes of 8 tokens, 5 ms apart.
    let words: Vec<String> = (0..2400).map(|i| format!("w{i} ")).collect();
    let fake = FakeUpstream::start(vec![Reply::Bursts(words.clone(), 8)]).await;
    let app = spawn_app_with(&[("OPENAI_BASE_URL", &fake.base_url()), ("OPENAI_API_KEY", "sk-test")]).await;
    let user = user();
    let mut joiners = Vec::new();
    for _ in 0..30 {
        joiners.push(app.client(&user).await);
    }
    let mut owner = app.client(&user).await;
    let ack = owner.emit_with_ack("chat:start", json!({ "message": "burst" })).await;
    owner.until("chat:message").await;
    for joiner in &mut joiners {
        let joined = joiner.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
        assert_eq!(joined["generations"][0]["messageId"], ack["messageId"], "joined while it runs");
    }
    for joiner in &mut joiners {
        let answer = read_answer(joiner).await;
        assert_eq!(answer.final_name, "chat:end");
        assert_whole_once(&answer);
        assert_eq!(answer.text(), words.concat(), "the whole answer, exactly once");
        assert_eq!(answer.chunks[0]["seq"], json!(0));
    }
    read_answer(&mut owner).await;
}

#[tokio::test]
async fn repeated_resumes_of_a_finished_answer_queue_one_catch_up_not_one_each() {
    let big: String = (0..30_000).map(|i| format!("w{i:05} ")).collect::<String>().trim_end().to_owned();
    assert!(big.len() > 150_000);
    let app = spawn_app_with(&[
        ("MOCK_RESPONSE", &big),
        ("MOCK_TOKEN_DELAY_MS", "0"),
        ("MAX_TOKENS_LIMIT", "40000"),
        ("MODEL_CONTEXT_TOKENS", "50000"),
        ("SOCKET_EVENTS_IN_FLIGHT", "1000"),
    ])
    .await;
    let user = user();
    let mut client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "long", "maxTokens": 40_000 })).await;
    assert!(read_answer(&mut client).await.final_data["content"] == big.as_str(), "the whole answer first");

    // 128 resumes from offset 0 sent at once, none of their events read meanwhile.
    let resume = json!(["chat:resume", { "messageId": ack["messageId"], "offset": 0 }]);
    let before = app.state.engine.subscriptions();
    for id in 0..128 {
        client.send_packet(format!("2/ai,{}{}", 1000 + id, resume)).await;
    }
    // Read nothing until the server has handled every resume.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.state.engine.subscriptions() < before + 128 {
        assert!(tokio::time::Instant::now() < deadline, "the server never handled all 128 resumes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut acks, mut refused, mut text_bytes, mut ends) = (0, 0, 0usize, Vec::new());
    // A client that does not read cannot be sent everything: acks that meet a full
    // buffer are dropped by socketioxide, so this reads until the server falls quiet.
    while !client.is_quiet_for(Duration::from_millis(1000)).await {
        match client.next().await {
            Incoming::Ack { data, .. } if data["ok"] == json!(false) => {
                assert_eq!(data["error"]["code"], "RATE_LIMIT", "replays past the socket's budget are refused");
                refused += 1;
            }
            Incoming::Ack { data, .. } => {
                assert_eq!(data["status"], "complete");
                acks += 1;
            }
            Incoming::Event { name, data } if name == "chat:error" => {
                assert_eq!(data["code"], "RATE_LIMIT")
            }
            Incoming::Event { name, data } if name == "chat:message" => text_bytes += data["content"].as_str().unwrap().len(),
            Incoming::Event { name, data } if name == "chat:end" => ends.push(data),
            Incoming::Event { name, .. } => panic!("unexpected {name}"),
        }
    }
    eprintln!("128 resumes of {} bytes: {acks} served, {refused} refused, {text_bytes} bytes, {} chat:end", big.len(), ends.len());
    assert!(acks >= 1 && refused >= 1);
    assert!(!ends.is_empty() && ends.iter().all(|e| e["content"] == big.as_str()), "the last resume still ends with the answer");
    // Each resume replaces the socket's earlier reader of that answer, and a socket's
    // queue is bounded in bytes (1 MiB by default); the rest is what loopback's kernel
    // buffers held (up to 4 MiB). Far from 128 copies (27 MB).
    assert!(text_bytes < 8 * 1024 * 1024, "{text_bytes} bytes for 128 resumes");
}

#[tokio::test]
async fn a_stalled_tab_does_not_hold_up_another_tabs_answer() {
    let pad = "y".repeat(1000);
    let long: String = (0..3000).map(|i| format!("t{i}{pad} ")).collect::<String>().trim_end().to_owned();
    let app = spawn_app_with(&[
        ("MOCK_RESPONSE", &long),
        ("MOCK_TOKEN_DELAY_MS", "0"),
        ("MOCK_FIRST_TOKEN_DELAY_MS", "300"),
        ("SOCKET_BUFFER_PACKETS", "4"),
    ])
    .await;
    let user = user();
    let mut reading = app.client(&user).await;
    let ack = reading.emit_with_ack("chat:start", json!({ "message": "big" })).await;
    // Three tabs follow the conversation and then never read: their buffers fill.
    let mut stalled: Vec<Client> = Vec::new();
    for _ in 0..3 {
        let mut tab = app.client(&user).await;
        let joined = tab.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
        assert_eq!(joined["ok"], json!(true));
        stalled.push(tab);
    }
    // The reading tab gets its whole answer and its chat:end, each event within the
    // client's receive timeout, while the others still sit on full buffers.
    let answer = read_answer(&mut reading).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.text(), long);
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!(row.content, long);
    // The stalled tabs still get everything once they read.
    let late = read_answer(&mut stalled[0]).await;
    assert_eq!(late.text(), long);
}
