//! Input as JavaScript clients write it: lone UTF-16 surrogates (a string cut inside an
//! emoji) are read as U+FFFD on every wire, and numbers beyond `f64` are refused with
//! `INVALID_PARAMS` naming their field.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_lone_surrogate_in_chat_start_is_stored_and_echoed_as_the_replacement_character() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_text_with_ack(r#"["chat:start",{"message":"cut \ud83d here"}]"#).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let (echo, _) = client.until("chat:user-message").await;
    assert_eq!(echo["content"], json!("cut \u{FFFD} here"));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    let rows = app.messages(ack["conversationId"].as_str().unwrap()).await;
    assert_eq!(rows[0].content, "cut \u{FFFD} here");
    assert_eq!(rows[1].status, "complete");
}

#[tokio::test]
async fn numbers_beyond_f64_get_invalid_params_naming_the_field() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    for (field, raw) in [("temperature", "1e400"), ("maxTokens", "1e400"), ("temperature", "-1E+400")] {
        let packet = format!(r#"["chat:start",{{"message":"hi","{field}":{raw}}}]"#);
        let ack = client.emit_text_with_ack(&packet).await;
        assert_eq!(ack["error"]["code"], json!("INVALID_PARAMS"), "{field}={raw}: {ack}");
        let message = ack["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{field}={raw}: the message names the field: {message}");
        let (error, _) = client.until("chat:error").await;
        assert_eq!(error["code"], json!("INVALID_PARAMS"));
    }
    let ack = client.emit_text_with_ack(r#"["chat:resume",{"messageId":"01a2011e-ad51-71af-af86-f2c345ea9909","offset":1e400}]"#).await;
    assert_eq!((&ack["error"]["code"], &ack["error"]["message"]), (&json!("INVALID_PARAMS"), &json!("offset must be a whole number")));
    // The connection stays usable.
    let ack = client.emit_with_ack("chat:start", json!({ "message": "still here" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
}

#[tokio::test]
async fn a_chat_stop_with_a_lone_surrogate_is_refused_as_a_bad_id_and_stops_nothing() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "50")]).await;
    let mut client = app.client(&user()).await;
    let started = client.emit_with_ack("chat:start", json!({ "message": "a long one" })).await;
    assert_eq!(started["ok"], json!(true));
    let stop = client.emit_text_with_ack(r#"["chat:stop",{"messageId":"\ud83d"}]"#).await;
    assert_eq!((&stop["error"]["code"], &stop["error"]["message"]), (&json!("INVALID_PARAMS"), &json!("messageId is not a UUID")));
    let (error, _) = client.until("chat:error").await;
    assert_eq!(error["code"], json!("INVALID_PARAMS"));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end", "the running answer was not stopped");
}

#[tokio::test]
async fn the_sse_wire_reads_lone_surrogates_and_names_out_of_range_fields() {
    let app = spawn_app().await;
    let user = user();
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/v1/chat", app.addr))
            .bearer_auth(token(&user))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let refused = post(r#"{"message":"hi","temperature":1e400}"#).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("INVALID_PARAMS"));
    assert_eq!(body["error"]["message"], json!("temperature must be from 0 to 2"));

    let ok = post(r#"{"message":"cut \ud83d"}"#).await.unwrap();
    assert_eq!(ok.status(), 200);
    let text = ok.text().await.unwrap();
    let ack_line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let ack: Value = serde_json::from_str(ack_line).unwrap();
    let rows = app.messages(ack["conversationId"].as_str().unwrap()).await;
    assert_eq!(rows[0].content, "cut \u{FFFD}");
    assert_eq!(rows[1].status, "complete");
}
