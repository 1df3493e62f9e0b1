//! Context that fits the model: with a small `MODEL_CONTEXT_TOKENS` and long messages,
//! the upstream gets the system prompt, the newest turn and as many recent turns as fit,
//! counted with the model's real tokenizer (gpt-4: cl100k_base); a turn that cannot fit
//! alone is refused with `MESSAGE_TOO_LONG` before any upstream call.

use serde_json::{Value, json};

use crate::helpers::*;

/// What a message costs in the prompt: its cl100k_base tokens and 4 for its framing.
fn cost(content: &str) -> usize {
    4 + tiktoken_rs::cl100k_base_singleton().encode_ordinary(content).len()
}

const CONTEXT: usize = 400;
const MAX_TOKENS: usize = 40;
const SYSTEM: &str = "You answer in one short sentence.";

#[tokio::test]
async fn long_conversations_send_the_newest_turns_that_fit_and_a_turn_too_long_alone_is_refused() {
    let app = spawn_app_with(&[("MODEL_CONTEXT_TOKENS", "400"), ("SYSTEM_PROMPT", SYSTEM)]).await;
    let mut client = app.client(&user()).await;
    let question = |n: usize| format!("Question {n}: {}", "tell me more about the history of tea ".repeat(6));
    let mut conversation = Value::Null;
    let mut said: Vec<(String, String)> = Vec::new();
    let mut answers = Vec::new();
    for n in 0..5 {
        let q = question(n);
        let ack =
            client.emit_with_ack("chat:start", json!({ "message": q, "conversationId": conversation, "maxTokens": MAX_TOKENS })).await;
        assert_eq!(ack["ok"], json!(true), "{ack}");
        conversation = ack["conversationId"].clone();
        let answer = read_answer(&mut client).await;
        assert_eq!(answer.final_name, "chat:end");

        // What fits: 3 to prime the answer, the system prompt and the question always,
        // then earlier messages newest first while the total stays within 400 - 40.
        let mut used = 3 + cost(SYSTEM) + cost(&q);
        let mut kept = 0;
        for (_, content) in said.iter().rev() {
            if used + cost(content) > CONTEXT - MAX_TOKENS {
                break;
            }
            used += cost(content);
            kept += 1;
        }
        let mut expected = vec![("system".to_owned(), SYSTEM.to_owned())];
        expected.extend(said[said.len() - kept..].iter().cloned());
        expected.push(("user".to_owned(), q.clone()));
        let request = app.mock().requests().last().cloned().unwrap();
        let sent: Vec<(String, String)> = request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(sent, expected, "turn {n}");
        answers.push((ack["messageId"].clone(), kept));
        said.push(("user".to_owned(), q));
        said.push(("assistant".to_owned(), answer.final_data["content"].as_str().unwrap().to_owned()));
    }
    // The trimming really happened: the last turns kept some history, not all of it.
    let kept: Vec<usize> = answers.iter().map(|(_, k)| *k).collect();
    assert_eq!(kept[0], 0);
    assert!(kept[4] > 0 && kept[4] < 8, "kept {kept:?}");

    // chat:history tells how many earlier messages each answer was sent with.
    let history = client.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    let told: Vec<(Value, Value)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| (m["id"].clone(), m["contextMessages"].clone()))
        .collect();
    let expected: Vec<(Value, Value)> = answers.iter().map(|(id, k)| (id.clone(), json!(k))).collect();
    assert_eq!(told, expected);

    // A question that cannot fit with maxTokens, whatever is dropped: refused, nothing
    // sent upstream, nothing stored, and the socket stays usable.
    let calls = app.mock().requests().len();
    let rows = app.messages(conversation.as_str().unwrap()).await.len();
    let huge = "tea leaves ".repeat(400);
    let refused =
        client.emit_with_ack("chat:start", json!({ "message": huge, "conversationId": conversation, "maxTokens": MAX_TOKENS })).await;
    assert_eq!(
        refused,
        json!({ "ok": false, "error": { "code": "MESSAGE_TOO_LONG", "message": "the message does not fit the model's context of 400 tokens with maxTokens 40" } })
    );
    assert_eq!(client.until("chat:error").await.0["code"], json!("MESSAGE_TOO_LONG"));
    assert_eq!(app.mock().requests().len(), calls);
    assert_eq!(app.messages(conversation.as_str().unwrap()).await.len(), rows);
    let fits = client.emit_with_ack("chat:start", json!({ "message": "and now?", "conversationId": conversation, "maxTokens": 40 })).await;
    assert_eq!(fits["ok"], json!(true));
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
}
