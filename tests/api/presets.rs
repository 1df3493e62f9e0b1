//! System-prompt presets: `SYSTEM_PROMPT_PRESETS` names a JSON file of prompts, a
//! `chat:start { preset }` picks one, the conversation keeps it, an unknown one is
//! `INVALID_PARAMS`.

use serde_json::{Value, json};

use crate::helpers::*;

fn system_prompts(request: &Value) -> Vec<String> {
    let messages = request["messages"].as_array().unwrap();
    messages.iter().filter(|m| m["role"] == "system").map(|m| m["content"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_preset_is_sent_as_the_system_prompt_and_kept_by_its_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presets.json");
    std::fs::write(&file, r#"{ "pirate": "Talk like a pirate.", "terse": "Answer in five words." }"#).unwrap();
    let app = spawn_app_with(&[("SYSTEM_PROMPT_PRESETS", file.to_str().unwrap()), ("SYSTEM_PROMPT", "You are helpful.")]).await;
    let mut client = app.client(&user()).await;

    let ack = client.emit_with_ack("chat:start", json!({ "message": "ahoy", "preset": "pirate" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    assert_eq!(system_prompts(&app.mock().requests()[0]), ["You are helpful.", "Talk like a pirate."]);
    let conversation = ack["conversationId"].clone();
    let stored = || async {
        let id = uuid::Uuid::parse_str(conversation.as_str().unwrap()).unwrap();
        use sea_orm::EntityTrait;
        entity::Conversation::find_by_id(id).one(&app.state.db).await.unwrap().unwrap().preset
    };
    assert_eq!(stored().await.as_deref(), Some("pirate"));

    // The next turn names no preset: the conversation's is used.
    client.emit_with_ack("chat:start", json!({ "message": "and then?", "conversationId": conversation })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    assert_eq!(system_prompts(&app.mock().requests()[1]), ["You are helpful.", "Talk like a pirate."]);

    // Another preset replaces it, with the client's own system prompt after it.
    let payload = json!({ "message": "short?", "conversationId": conversation, "preset": "terse", "systemPrompt": "Use English." });
    client.emit_with_ack("chat:start", payload).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    assert_eq!(system_prompts(&app.mock().requests()[2]), ["You are helpful.", "Answer in five words.", "Use English."]);
    assert_eq!(stored().await.as_deref(), Some("terse"));

    let unknown = client.emit_with_ack("chat:start", json!({ "message": "hi", "preset": "sailor" })).await;
    assert_eq!(unknown, json!({ "ok": false, "error": { "code": "INVALID_PARAMS", "message": "unknown preset" } }));
    let wrong = client.emit_with_ack("chat:start", json!({ "message": "hi", "preset": 3 })).await;
    assert_eq!(wrong["error"]["code"], json!("INVALID_PAYLOAD"));
    assert_eq!(app.mock().requests().len(), 3, "refused before any upstream call");
}
