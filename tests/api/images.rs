//! Images: `chat:start { message, attachments: [{ type: "image", url }] }` reaches the
//! model as content parts (http(s) URLs unfetched, data URLs as sent), is stored with the
//! question and shown in `chat:history` and the REST history, is sent again as context
//! (and on a regenerate), and every limit is `INVALID_PARAMS` with nothing stored.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::{client::Client, helpers::*};

const HTTP_URL: &str = "https://images.example.com/cat.png?size=large";

/// A data URL of `bytes` bytes of `kind`.
fn data_url(kind: &str, bytes: usize) -> String {
    format!("data:{kind};base64,{}", STANDARD.encode(vec![7u8; bytes]))
}

fn image(url: &str) -> Value {
    json!({ "type": "image", "url": url })
}

/// The content parts a question with these images is sent as.
fn parts(text: &str, urls: &[&str]) -> Value {
    let mut parts = vec![json!({ "type": "text", "text": text })];
    parts.extend(urls.iter().map(|u| json!({ "type": "image_url", "image_url": { "url": u } })));
    Value::Array(parts)
}

/// The messages of the mock's chat request `index`.
fn sent(app: &TestApp, index: usize) -> Value {
    app.mock().requests()[index]["messages"].clone()
}

async fn chat(client: &mut Client, event: &str, payload: Value) -> Value {
    let ack = client.emit_with_ack(event, payload).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let answer = read_answer(client).await;
    assert_eq!(answer.final_name, "chat:end", "{:?}", answer.final_data);
    ack
}

#[tokio::test]
async fn images_reach_the_model_as_content_parts_are_stored_shown_and_sent_again_as_context() {
    let app = spawn_app().await;
    let me = user();
    let mut client = app.client(&me).await;
    let png = data_url("image/png", 300);
    let first =
        chat(&mut client, "chat:start", json!({ "message": "what are these?", "attachments": [image(HTTP_URL), image(&png)] })).await;
    assert_eq!(sent(&app, 0), json!([{ "role": "user", "content": parts("what are these?", &[HTTP_URL, &png]) }]));

    let stored = app.message(first["userMessageId"].as_str().unwrap()).await;
    let shown = json!([image(HTTP_URL), image(&png)]);
    assert_eq!(stored.attachments.as_deref().map(|a| serde_json::from_str::<Value>(a).unwrap()), Some(shown.clone()));
    assert_eq!(app.message(first["messageId"].as_str().unwrap()).await.attachments, None);

    // A second turn sends the earlier images again, as context; its own question is text.
    let conversation = first["conversationId"].clone();
    let second = chat(&mut client, "chat:start", json!({ "message": "and now?", "conversationId": conversation })).await;
    assert_eq!(
        sent(&app, 1),
        json!([
            { "role": "user", "content": parts("what are these?", &[HTTP_URL, &png]) },
            { "role": "assistant", "content": ANSWER },
            { "role": "user", "content": "and now?" },
        ])
    );
    // A regenerate asks the same question with the same images.
    chat(&mut client, "chat:regenerate", json!({ "messageId": first["messageId"] })).await;
    assert_eq!(sent(&app, 2), json!([{ "role": "user", "content": parts("what are these?", &[HTTP_URL, &png]) }]));
    // An edit carries its own images.
    let gif = data_url("image/gif", 10);
    let edit = json!({ "messageId": second["userMessageId"], "message": "this one?", "attachments": [image(&gif)] });
    chat(&mut client, "chat:edit", edit).await;
    assert_eq!(sent(&app, 3).as_array().unwrap().last().unwrap(), &json!({ "role": "user", "content": parts("this one?", &[&gif]) }));

    let history = client.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    let attachments: Vec<Value> = history["messages"].as_array().unwrap().iter().map(|m| m["attachments"].clone()).collect();
    assert_eq!(attachments, [shown.clone(), json!([]), json!([]), json!([]), json!([]), json!([image(&gif)]), json!([])]);
    let (_, detail) = crate::rest::get(&app, &format!("/v1/conversations/{}", conversation.as_str().unwrap()), &me).await;
    let rest: Vec<Value> = detail["messages"].as_array().unwrap().iter().map(|m| m["attachments"].clone()).collect();
    assert_eq!(rest, attachments);
}

#[tokio::test]
async fn the_largest_image_goes_over_the_socket_and_over_sse() {
    // One image here: the tests of this binary share its memory, and one of them measures
    // it. Four of them in one packet (about 28 MB, past a WebSocket frame's default
    // 16 MiB) go through socket.io-client in tests/js/conversations.test.mjs.
    let app = spawn_app().await;
    let me = user();
    let mut client = app.client(&me).await;
    let largest = data_url("image/jpeg", chatwire::chat::attachments::MAX_IMAGE_BYTES);
    assert!(largest.len() > 1_000_000, "more than the 1 MB a packet may otherwise hold");
    chat(&mut client, "chat:start", json!({ "message": "big", "attachments": [image(&largest)] })).await;
    assert_eq!(sent(&app, 0), json!([{ "role": "user", "content": parts("big", &[&largest]) }]));

    // Over SSE, past axum's default body limit of 2 MiB.
    let body = json!({ "message": "big over SSE", "attachments": [image(&largest)] }).to_string();
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&me))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = response.text().await.unwrap();
    assert!(events.contains("event: chat:end"), "{}", &events[..events.len().min(500)]);
    assert_eq!(sent(&app, 1), json!([{ "role": "user", "content": parts("big over SSE", &[&largest]) }]));
}

#[tokio::test]
async fn each_limit_is_invalid_params_nothing_is_stored_and_the_socket_still_chats() {
    let app = spawn_app().await;
    let me = user();
    let mut client = app.client(&me).await;
    let ok = image("http://x.io/a.png");
    let too_big = data_url("image/png", chatwire::chat::attachments::MAX_IMAGE_BYTES + 1);
    let cases = [
        (json!([ok, ok, ok, ok, ok]), "attachments: at most 4 images"),
        (json!([ok, image(&too_big)]), "attachments[1] is larger than 5242880 bytes"),
        (
            json!([image(&data_url("image/svg+xml", 10))]),
            "attachments[0].url must be an image/png, image/jpeg, image/gif or image/webp data URL",
        ),
        (json!([ok, { "type": "file", "url": "http://x.io/a.pdf" }]), "attachments[1].type must be \"image\""),
        (json!([image("data:image/png;base64,@@not base64@@")]), "attachments[0].url is not valid base64"),
        (json!([image("ftp://x.io/a.png")]), "attachments[0].url must be an http(s) or data:image URL"),
    ];
    for (attachments, message) in cases {
        let ack = client.emit_with_ack("chat:start", json!({ "message": "look", "attachments": attachments })).await;
        assert_eq!(ack, json!({ "ok": false, "error": { "code": "INVALID_PARAMS", "message": message } }));
        let (error, before) = client.until("chat:error").await;
        assert_eq!(error, json!({ "code": "INVALID_PARAMS", "message": message }));
        assert!(before.is_empty(), "{before:?}");
    }
    let stored = entity::Conversation::find().filter(entity::conversation::Column::UserId.eq(&me)).count(&app.state.db).await.unwrap();
    assert_eq!(stored, 0, "nothing stored");
    assert!(app.mock().requests().is_empty(), "no upstream call");
    let ack = chat(&mut client, "chat:start", json!({ "message": "still here", "attachments": [ok] })).await;
    assert_eq!(app.message(ack["userMessageId"].as_str().unwrap()).await.attachments.as_deref(), Some(json!([ok]).to_string().as_str()));
}
