//! Resumable answers and watching from several sockets: a dropped connection loses
//! nothing, and only the owner can see an answer.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    client::Client,
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

/// Starts an answer, reads `n` chunks, and drops the connection. Returns the ack and the text read.
async fn start_and_drop(app: &TestApp, user: &str, n: usize) -> (Value, String) {
    let mut client = app.client(user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "tell me" })).await;
    let mut text = String::new();
    for _ in 0..n {
        let (chunk, _) = client.until("chat:message").await;
        text.push_str(chunk["content"].as_str().unwrap());
    }
    client.close().await;
    (ack, text)
}

fn utf16(s: &str) -> u64 {
    s.encode_utf16().count() as u64
}

async fn wait_final(app: &TestApp, message_id: &Value) {
    for _ in 0..200 {
        if app.message(message_id.as_str().unwrap()).await.status != "streaming" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the answer never ended");
}

#[tokio::test]
async fn a_running_answer_resumes_from_the_offset_with_no_gap_and_no_duplicate() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "40")]).await;
    let user = user();
    let (ack, head) = start_and_drop(&app, &user, 3).await;

    let mut again = app.client(&user).await;
    let active = again.active().await;
    let listed = &active["generations"][0];
    assert_eq!((&listed["messageId"], &listed["conversationId"]), (&ack["messageId"], &ack["conversationId"]));
    assert!(listed["offset"].as_u64().unwrap() >= utf16(&head));

    let resumed = again.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": utf16(&head) })).await;
    assert_eq!(resumed["ok"], json!(true));
    assert_eq!(resumed["status"], "streaming");
    let answer = read_answer(&mut again).await;
    assert_eq!(answer.chunks[0]["offset"], json!(utf16(&head)), "the catch-up chunk starts where the client stopped");
    assert_chunks_consistent_from(&answer.chunks, utf16(&head));
    assert_eq!(format!("{head}{}", answer.text()), ANSWER);
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.final_data["content"], ANSWER);
    assert!((app.state.engine.running() == 0), "finished answers are released");
}

/// Offsets continue from `start`; seq counts from 0 for the resumed socket.
fn assert_chunks_consistent_from(chunks: &[Value], start: u64) {
    let mut offset = start;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["seq"], json!(i));
        assert_eq!(c["offset"], json!(offset));
        offset += utf16(c["content"].as_str().unwrap());
    }
}

#[tokio::test]
async fn a_finished_answer_resumes_from_the_database() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let user = user();
    let (ack, head) = start_and_drop(&app, &user, 2).await;
    wait_final(&app, &ack["messageId"]).await;

    let mut again = app.client(&user).await;
    assert_eq!(again.active().await, json!({ "generations": [] }));
    let resumed = again.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": utf16(&head) })).await;
    assert_eq!((resumed["status"].as_str(), resumed["offset"].as_u64()), (Some("complete"), Some(utf16(&head))));
    let answer = read_answer(&mut again).await;
    assert_eq!(answer.order, vec!["chat:message", "chat:end"]);
    assert_eq!(format!("{head}{}", answer.text()), ANSWER);
    assert_eq!(answer.final_data["content"], ANSWER);
    assert_eq!(answer.final_data["finishReason"], "stop");
    assert_eq!(answer.final_data["completionTokens"], json!(ANSWER.split_whitespace().count()));
}

#[tokio::test]
async fn stopped_and_failed_answers_resume_as_what_they_were() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "story" })).await;
    client.until("chat:message").await;
    client.emit("chat:stop", json!({})).await;
    let (stopped, _) = client.until("chat:stopped").await;
    let resumed = client.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": 0 })).await;
    assert_eq!(resumed["status"], "stopped");
    let answer = read_answer(&mut client).await;
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:stopped", stopped["content"].as_str().unwrap().to_owned()));

    let fake = FakeUpstream::start(vec![Reply::CutAfter(vec!["Half ", "way"])]).await;
    let failing = spawn_app_with(&[("OPENAI_BASE_URL", &fake.base_url()), ("UPSTREAM_ATTEMPTS", "1")]).await;
    let mut client = failing.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "x" })).await;
    assert_eq!(read_answer(&mut client).await.final_data["code"], "UPSTREAM_ERROR");
    let resumed = client.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": 5 })).await;
    assert_eq!(resumed["status"], "error");
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.text(), "way");
    assert_eq!(answer.final_data["code"], "UPSTREAM_ERROR");
    assert_eq!(answer.final_data["messageId"], ack["messageId"]);
}

#[tokio::test]
async fn a_second_tab_joins_a_running_answer_and_both_end_with_the_same_text() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut tab1 = app.client(&user).await;
    let ack = tab1.emit_with_ack("chat:start", json!({ "message": "share" })).await;
    tab1.until("chat:message").await;
    tab1.until("chat:message").await;

    let mut tab2 = app.client(&user).await;
    let joined = tab2.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
    assert_eq!(joined["ok"], json!(true));
    assert_eq!(joined["generations"][0]["messageId"], ack["messageId"]);
    let watched = read_answer(&mut tab2).await;
    assert_eq!(watched.chunks[0]["offset"], json!(0), "the watcher gets the answer from its start");
    assert_eq!(watched.text(), ANSWER);
    let (end, _) = tab1.until("chat:end").await;
    assert_eq!(end["content"], watched.final_data["content"]);

    // The joined tab also sees the next answer in that conversation, until it leaves.
    tab1.emit("chat:start", json!({ "message": "more", "conversationId": ack["conversationId"] })).await;
    assert_eq!(read_answer(&mut tab2).await.final_name, "chat:end");
    read_answer(&mut tab1).await;
    let left = tab2.emit_with_ack("chat:leave", json!({ "conversationId": ack["conversationId"] })).await;
    assert_eq!(left["ok"], json!(true));
    tab1.emit("chat:start", json!({ "message": "private", "conversationId": ack["conversationId"] })).await;
    read_answer(&mut tab1).await;
    assert!(tab2.is_quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn another_user_can_neither_resume_nor_join() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let mut owner = app.client(&user()).await;
    let ack = owner.emit_with_ack("chat:start", json!({ "message": "mine" })).await;
    let mut other: Client = app.client(&user()).await;
    assert_eq!(other.active().await, json!({ "generations": [] }));
    for (event, payload) in [
        ("chat:resume", json!({ "messageId": ack["messageId"], "offset": 0 })),
        ("chat:resume", json!({ "messageId": ack["userMessageId"], "offset": 0 })),
        ("chat:join", json!({ "conversationId": ack["conversationId"] })),
    ] {
        let refused = other.emit_with_ack(event, payload).await;
        assert_eq!(refused["error"]["code"], "NOT_FOUND", "{event}");
        assert_eq!(other.next_event().await.1["code"], "NOT_FOUND");
    }
    assert_eq!(read_answer(&mut owner).await.final_name, "chat:end");
    // Nor after it finished.
    let refused = other.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(refused["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn bad_resume_and_join_payloads_get_their_codes() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    for (event, payload, code) in [
        ("chat:resume", json!({}), "INVALID_PAYLOAD"),
        ("chat:resume", json!({ "messageId": "nope" }), "INVALID_PARAMS"),
        ("chat:resume", json!({ "messageId": uuid::Uuid::new_v4(), "offset": -1 }), "INVALID_PARAMS"),
        ("chat:resume", json!({ "messageId": uuid::Uuid::new_v4(), "offset": "0" }), "INVALID_PAYLOAD"),
        ("chat:resume", json!({ "messageId": uuid::Uuid::new_v4() }), "NOT_FOUND"),
        ("chat:join", json!("x"), "INVALID_PAYLOAD"),
        ("chat:leave", json!({ "conversationId": 3 }), "INVALID_PAYLOAD"),
    ] {
        let ack = client.emit_with_ack(event, payload.clone()).await;
        assert_eq!(ack["error"]["code"], code, "{event} {payload}");
        assert_eq!(client.next_event().await.1["code"], code);
    }
}
