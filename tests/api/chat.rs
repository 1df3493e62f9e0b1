//! A chat as PROTOCOL.md describes it: events, their order and fields, storage,
//! history, stop, busy and bad input.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_new_chat_streams_every_event_in_order_and_stores_both_messages() {
    let app = spawn_app().await;
    let user = user();
    let mut client = app.client(&user).await;

    let ack = client
        .emit_with_ack(
            "chat:start",
            json!({ "userId": user, "message": "Explain quantum computing", "temperature": 0.3, "maxTokens": 500 }),
        )
        .await;
    assert_eq!(ack["ok"], json!(true));
    let (conversation_id, message_id) = (ack["conversationId"].clone(), ack["messageId"].clone());

    let (name, created) = client.next_event().await;
    assert_eq!((name.as_str(), &created), ("chat:conversation", &json!({ "conversationId": conversation_id })));
    let (name, stored) = client.next_event().await;
    assert_eq!(name, "chat:user-message");
    assert_eq!(
        stored,
        json!({
            "messageId": ack["userMessageId"], "content": "Explain quantum computing", "conversationId": conversation_id,
            "parentMessageId": null,
        })
    );

    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert!(answer.order[..answer.order.len() - 1].iter().all(|n| n == "chat:message"));
    assert_chunks_consistent(&answer.chunks, &message_id, &conversation_id);
    assert_eq!(answer.text(), ANSWER);

    let end = &answer.final_data;
    let completion = ANSWER.split_whitespace().count();
    assert_eq!(end["messageId"], message_id);
    assert_eq!(end["conversationId"], conversation_id);
    assert_eq!(end["model"], "gpt-4");
    assert_eq!(end["finishReason"], "stop");
    assert_eq!(end["content"], ANSWER);
    assert_eq!(end["completionTokens"], json!(completion));
    assert_eq!(end["promptTokens"], json!(3));
    assert_eq!(end["totalTokens"], json!(completion + 3));

    let rows = app.messages(conversation_id.as_str().unwrap()).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].role.as_str(), rows[0].content.as_str(), rows[0].status.as_str()),
        ("user", "Explain quantum computing", "complete")
    );
    assert_eq!(rows[0].user_id, user);
    let answer_row = &rows[1];
    assert_eq!(answer_row.id.to_string(), message_id.as_str().unwrap());
    assert_eq!((answer_row.role.as_str(), answer_row.content.as_str(), answer_row.status.as_str()), ("assistant", ANSWER, "complete"));
    assert_eq!(answer_row.finish_reason.as_deref(), Some("stop"));
    assert_eq!(answer_row.model.as_deref(), Some("gpt-4"));
    assert_eq!(answer_row.completion_tokens, Some(completion as i32));
    assert_eq!(answer_row.total_tokens, Some(completion as i32 + 3));

    // Parameters reach the upstream exactly as given.
    let sent = app.mock().requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["temperature"].to_string(), "0.3");
    assert_eq!(sent[0]["max_tokens"], json!(500));
    assert_eq!(sent[0]["model"], "gpt-4");
    assert_eq!(sent[0]["stream"], json!(true));
    assert_eq!(sent[0]["messages"], json!([{ "role": "user", "content": "Explain quantum computing" }]));
}

#[tokio::test]
async fn a_start_sent_at_once_without_ack_is_answered() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let mut client = app.client(&user()).await;
        client.emit("chat:start", json!({ "message": "hi", "conversationId": null })).await;
        let (name, _) = client.next_event().await;
        assert_eq!(name, "chat:conversation");
        assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    }
}

#[tokio::test]
async fn continuing_a_conversation_sends_its_history_after_the_system_prompt() {
    let app = spawn_app_with(&[("SYSTEM_PROMPT", "Be brief.")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let first = client.emit_with_ack("chat:start", json!({ "message": "first question" })).await;
    read_answer(&mut client).await;
    let conversation_id = first["conversationId"].clone();

    let second = client.emit_with_ack("chat:start", json!({ "message": "second question", "conversationId": conversation_id })).await;
    assert_eq!(second["conversationId"], conversation_id);
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.order[0], "chat:user-message", "no chat:conversation when continuing");
    assert_eq!(answer.final_data["conversationId"], conversation_id);

    let sent = app.mock().requests();
    assert_eq!(
        sent[1]["messages"],
        json!([
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "first question" },
            { "role": "assistant", "content": ANSWER },
            { "role": "user", "content": "second question" },
        ])
    );
    assert_eq!(app.messages(conversation_id.as_str().unwrap()).await.len(), 4);
}

#[tokio::test]
async fn stop_keeps_the_partial_answer_and_frees_the_socket() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "50")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "tell me a long story" })).await;
    let message_id = ack["messageId"].clone();
    let (first, _) = client.until("chat:message").await;

    let stop = client.emit_with_ack("chat:stop", json!({})).await;
    assert_eq!(stop, json!({ "ok": true, "stopped": true }));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:stopped");
    let partial = format!("{}{}", first["content"].as_str().unwrap(), answer.text());
    assert_eq!(answer.final_data["content"], partial);
    assert_eq!(answer.final_data["messageId"], message_id);
    assert!(partial.len() < ANSWER.len() && ANSWER.starts_with(&partial));
    assert!(client.is_quiet_for(Duration::from_millis(300)).await, "nothing follows chat:stopped");

    let row = app.message(message_id.as_str().unwrap()).await;
    assert_eq!((row.content.as_str(), row.status.as_str(), row.finish_reason.as_deref()), (partial.as_str(), "stopped", Some("stopped")));

    // Nothing runs any more, and the socket takes the next chat at once.
    assert_eq!(client.emit_with_ack("chat:stop", Value::Null).await, json!({ "ok": true, "stopped": false }));
    let next = client.emit_with_ack("chat:start", json!({ "message": "again" })).await;
    assert_eq!(next["ok"], json!(true));
}

#[tokio::test]
async fn stop_by_message_id_reaches_only_your_own_generation() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "50")]).await;
    let mut owner = app.client(&user()).await;
    let mut other = app.client(&user()).await;
    let ack = owner.emit_with_ack("chat:start", json!({ "message": "story" })).await;
    let stop = other.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(stop, json!({ "ok": true, "stopped": false }));
    let stop = owner.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(stop, json!({ "ok": true, "stopped": true }));
    assert_eq!(read_answer(&mut owner).await.final_name, "chat:stopped");
}

#[tokio::test]
async fn a_second_start_while_streaming_is_busy_and_the_first_completes() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let mut client = app.client(&user()).await;
    let first = client.emit_with_ack("chat:start", json!({ "message": "one" })).await;
    let busy = client.emit_with_ack("chat:start", json!({ "message": "two" })).await;
    assert_eq!(busy["ok"], json!(false));
    assert_eq!(busy["error"]["code"], "BUSY");
    // The BUSY chat:error (about no generation) arrives among the first answer's events.
    let mut errors = Vec::new();
    let end = loop {
        let (name, data) = client.next_event().await;
        match name.as_str() {
            "chat:error" => errors.push(data),
            "chat:end" => break data,
            _ => {}
        }
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "BUSY");
    assert!(errors[0].get("messageId").is_none());
    assert_eq!(end["messageId"], first["messageId"]);
    assert_eq!(end["content"], ANSWER);
}

#[tokio::test]
async fn bad_input_gets_its_code_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let user = user();
    let mut client = app.client(&user).await;
    let cases = [
        (json!({}), "INVALID_PAYLOAD"),
        (json!("just a string"), "INVALID_PAYLOAD"),
        (json!({ "message": "" }), "INVALID_PAYLOAD"),
        (json!({ "message": 42 }), "INVALID_PAYLOAD"),
        (json!({ "message": "x".repeat(32_001) }), "MESSAGE_TOO_LONG"),
        (json!({ "message": "hi", "conversationId": "not-a-uuid" }), "INVALID_PARAMS"),
        (json!({ "message": "hi", "temperature": 5 }), "INVALID_PARAMS"),
        (json!({ "message": "hi", "maxTokens": -1 }), "INVALID_PARAMS"),
        (json!({ "message": "hi", "userId": "somebody-else" }), "FORBIDDEN"),
        (json!({ "message": "hi", "conversationId": uuid::Uuid::new_v4() }), "NOT_FOUND"),
    ];
    for (payload, code) in cases {
        let ack = client.emit_with_ack("chat:start", payload.clone()).await;
        assert_eq!(ack["ok"], json!(false), "{payload}");
        assert_eq!(ack["error"]["code"], code, "{payload}");
        let (name, event) = client.next_event().await;
        assert_eq!(name, "chat:error");
        assert_eq!(event["code"], code);
        assert!(event["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // No argument at all, and an event the protocol does not know.
    client.emit_bare("chat:start").await;
    assert_eq!(client.next_event().await.1["code"], "INVALID_PAYLOAD");
    client.emit("chat:unknown", json!({ "x": 1 })).await;

    client.emit("chat:start", json!({ "message": "still here?" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.text(), ANSWER);
}

#[tokio::test]
async fn another_users_conversation_is_not_found_and_untouched() {
    let app = spawn_app().await;
    let mut alice = app.client(&user()).await;
    let ack = alice.emit_with_ack("chat:start", json!({ "message": "secret plans" })).await;
    read_answer(&mut alice).await;
    let conversation_id = ack["conversationId"].clone();

    let mut mallory = app.client(&user()).await;
    let ack = mallory.emit_with_ack("chat:start", json!({ "message": "show me", "conversationId": conversation_id })).await;
    assert_eq!(ack["error"]["code"], "NOT_FOUND");
    assert_eq!(app.messages(conversation_id.as_str().unwrap()).await.len(), 2);
    assert_eq!(app.mock().requests().len(), 1);
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_reason_length() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    client.emit("chat:start", json!({ "message": "hi", "maxTokens": 3 })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_data["finishReason"], "length");
    assert_eq!(answer.text(), "Quantum computers use ");
    let row = app.message(answer.final_data["messageId"].as_str().unwrap()).await;
    assert_eq!((row.content.as_str(), row.finish_reason.as_deref()), ("Quantum computers use ", Some("length")));
}

#[tokio::test]
async fn allowed_models_refuse_others_before_any_call() {
    let app = spawn_app_with(&[("ALLOWED_MODELS", "gpt-4,gpt-4o-mini")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hi", "model": "gpt-3" })).await;
    assert_eq!(ack["error"]["code"], "INVALID_MODEL");
    assert_eq!(client.next_event().await, ("chat:error".to_owned(), json!({ "code": "INVALID_MODEL", "message": "model is not allowed" })));
    client.emit("chat:start", json!({ "message": "hi", "model": "gpt-4o-mini" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_data["model"], "gpt-4o-mini");
    assert_eq!(app.mock().requests().len(), 1);
}

#[tokio::test]
async fn a_repeated_client_message_id_starts_nothing_and_gets_the_first_ack() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let start = json!({ "message": "once only", "clientMessageId": "retry-key-1" });
    let first = client.emit_with_ack("chat:start", start.clone()).await;
    assert_eq!(first["ok"], json!(true));
    // A retry while the first still streams: the same ack, never BUSY.
    let retry = client.emit_with_ack("chat:start", start.clone()).await;
    assert_eq!(retry, first);
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.final_data["messageId"], first["messageId"]);
    // And after it ended, from another socket of the same user.
    let mut other_tab = app.client(&user).await;
    assert_eq!(other_tab.emit_with_ack("chat:start", start.clone()).await, first);
    assert!(other_tab.is_quiet_for(Duration::from_millis(200)).await);
    assert_eq!(app.messages(first["conversationId"].as_str().unwrap()).await.len(), 2);
    assert_eq!(app.mock().requests().len(), 1);
    // The same key from another user is theirs alone.
    let mut stranger = app.client(&crate::helpers::user()).await;
    let theirs = stranger.emit_with_ack("chat:start", start).await;
    assert_eq!(theirs["ok"], json!(true));
    assert_ne!(theirs["conversationId"], first["conversationId"]);
}
