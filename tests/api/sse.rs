//! The SSE wire through a real HTTP client (reqwest and an SSE parser): a whole chat,
//! stop, resumes by `Last-Event-ID`, every refusal's status, and watching across wires.

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::helpers::*;

/// One event as the client parsed it.
#[derive(Debug)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

fn events(response: reqwest::Response) -> impl Stream<Item = Sse> {
    response.bytes_stream().eventsource().map(|e| {
        let e = e.expect("a well-formed event stream");
        Sse { event: e.event, id: e.id, data: serde_json::from_str(&e.data).expect("JSON data") }
    })
}

async fn all(response: reqwest::Response) -> Vec<Sse> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    events(response).collect().await
}

fn url(app: &TestApp, path: &str) -> String {
    format!("http://{}{path}", app.addr)
}

async fn chat(app: &TestApp, user: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(url(app, "/v1/chat")).bearer_auth(token(user)).json(&body).send().await.unwrap()
}

async fn resume(app: &TestApp, user: &str, message_id: &Value, last_event_id: u64) -> reqwest::Response {
    let path = format!("/v1/answers/{}/events", message_id.as_str().unwrap());
    let request = reqwest::Client::new().get(url(app, &path)).bearer_auth(token(user));
    request.header("last-event-id", last_event_id.to_string()).send().await.unwrap()
}

fn utf16(s: &str) -> u64 {
    s.encode_utf16().count() as u64
}

/// The chunks' text, checking offsets and ids: `offset` before each chunk, `id:` after it.
fn text_from(events: &[Sse], start: u64) -> String {
    let mut offset = start;
    let mut text = String::new();
    for (seq, e) in events.iter().filter(|e| e.event == "chat:message").enumerate() {
        let content = e.data["content"].as_str().unwrap();
        assert_eq!((e.data["offset"].as_u64(), e.data["seq"].as_u64()), (Some(offset), Some(seq as u64)));
        offset += utf16(content);
        assert_eq!(e.id, offset.to_string(), "a chunk's id is the offset after it");
        text.push_str(content);
    }
    text
}

#[tokio::test]
async fn a_whole_chat_streams_the_ai_events_in_the_ai_order() {
    let app = spawn_app().await;
    let user = user();
    let events = all(chat(&app, &user, json!({ "message": "Hello" })).await).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(&names[..3], ["chat:ack", "chat:conversation", "chat:user-message"]);
    assert!(names[3..names.len() - 1].iter().all(|n| *n == "chat:message"));
    let (ack, end) = (&events[0].data, &events[events.len() - 1]);
    assert_eq!(ack["ok"], json!(true));
    assert_eq!(events[1].data, json!({ "conversationId": ack["conversationId"] }));
    assert_eq!(
        events[2].data,
        json!({ "messageId": ack["userMessageId"], "content": "Hello", "conversationId": ack["conversationId"], "parentMessageId": null })
    );
    assert_eq!(text_from(&events, 0), ANSWER);
    assert_eq!(end.event, "chat:end");
    assert_eq!(end.id, utf16(ANSWER).to_string(), "the final event's id is the whole length");
    assert_eq!(
        (&end.data["content"], &end.data["messageId"], &end.data["finishReason"]),
        (&json!(ANSWER), &ack["messageId"], &json!("stop"))
    );
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", ANSWER));
    assert_eq!(row.completion_tokens, end.data["completionTokens"].as_i64().map(|n| n as i32));
}

#[tokio::test]
async fn a_finished_answer_replays_from_any_offset_and_from_its_end_only_the_final_event() {
    let app = spawn_app().await;
    let user = user();
    let ack = all(chat(&app, &user, json!({ "message": "x" })).await).await.remove(0).data;
    let emoji = utf16(ANSWER.split('😀').next().unwrap());
    // 0, the middle, inside the emoji's surrogate pair (back to its start), the whole length.
    for (asked, used) in [(0, 0), (20, 20), (emoji + 1, emoji), (utf16(ANSWER), utf16(ANSWER))] {
        let events = all(resume(&app, &user, &ack["messageId"], asked).await).await;
        let expected: String = String::from_utf16(&ANSWER.encode_utf16().collect::<Vec<_>>()[used as usize..]).unwrap();
        assert_eq!(text_from(&events, used), expected, "from {asked}");
        let last = events.last().unwrap();
        assert_eq!((last.event.as_str(), &last.data["content"]), ("chat:end", &json!(ANSWER)));
        if asked == utf16(ANSWER) {
            assert_eq!(events.len(), 1, "only the final event");
        }
    }
}

#[tokio::test]
async fn a_dropped_response_loses_nothing_and_resumes_live_by_last_event_id() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut stream = Box::pin(events(chat(&app, &user, json!({ "message": "tell" })).await));
    let ack = stream.next().await.unwrap().data;
    let mut last_id = 0;
    let mut head = String::new();
    while head.split_whitespace().count() < 3 {
        let e = stream.next().await.unwrap();
        if e.event == "chat:message" {
            head.push_str(e.data["content"].as_str().unwrap());
            last_id = e.id.parse().unwrap();
        }
    }
    drop(stream);
    let rest = all(resume(&app, &user, &ack["messageId"], last_id).await).await;
    assert_eq!(format!("{head}{}", text_from(&rest, last_id)), ANSWER);
    assert_eq!(rest.last().unwrap().event, "chat:end");
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", ANSWER), "the dropped answer finished and is stored");
}

#[tokio::test]
async fn stop_ends_the_stream_with_chat_stopped_and_another_users_answer_is_a_404() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let (owner, other) = (user(), user());
    let mut stream = Box::pin(events(chat(&app, &owner, json!({ "message": "long" })).await));
    let ack = stream.next().await.unwrap().data;
    let id = ack["messageId"].as_str().unwrap();
    let http = reqwest::Client::new();
    let stop = |who: &str| http.post(url(&app, &format!("/v1/answers/{id}/stop"))).bearer_auth(token(who)).send();
    let refused = stop(&other).await.unwrap();
    assert_eq!(refused.status(), 404);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "NOT_FOUND");
    let watched = resume(&app, &other, &ack["messageId"], 0).await;
    assert_eq!(watched.status(), 404, "nor may another user read it");
    while stream.next().await.unwrap().event != "chat:message" {}
    let stopped = stop(&owner).await.unwrap();
    assert_eq!(stopped.json::<Value>().await.unwrap(), json!({ "ok": true, "stopped": true }));
    let rest: Vec<Sse> = stream.collect().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event, "chat:stopped");
    let row = app.message(id).await;
    assert_eq!((row.status.as_str(), last.data["content"].as_str()), ("stopped", Some(row.content.as_str())));
    assert_eq!(stop(&owner).await.unwrap().json::<Value>().await.unwrap(), json!({ "ok": true, "stopped": false }));
}

#[tokio::test]
async fn every_refusal_is_an_http_error_with_the_ai_refusal_ack() {
    let app = spawn_app_with(&[("RATE_LIMIT_PER_MINUTE", "4")]).await;
    let user = user();
    let http = reqwest::Client::new();
    let post = |body: String, auth: Option<String>| {
        let request = http.post(url(&app, "/v1/chat")).header("content-type", "application/json").body(body);
        match auth {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
        .send()
    };
    let cases = [
        (json!({ "message": "hi" }).to_string(), None, 401, "UNAUTHORIZED"),
        (json!({ "message": "hi" }).to_string(), Some("not.a.jwt".into()), 401, "UNAUTHORIZED"),
        ("{not json".into(), Some(token(&user)), 400, "INVALID_PAYLOAD"),
        (json!({}).to_string(), Some(token(&user)), 400, "INVALID_PAYLOAD"),
        (json!({ "message": "hi", "temperature": 9 }).to_string(), Some(token(&user)), 400, "INVALID_PARAMS"),
        (json!({ "message": "x".repeat(32_001) }).to_string(), Some(token(&user)), 400, "MESSAGE_TOO_LONG"),
        (json!({ "message": "hi", "userId": "someone-else" }).to_string(), Some(token(&user)), 403, "FORBIDDEN"),
        (json!({ "message": "hi", "conversationId": uuid::Uuid::new_v4() }).to_string(), Some(token(&user)), 404, "NOT_FOUND"),
    ];
    for (body, auth, status, code) in cases {
        let response = post(body.clone(), auth).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let refusal: Value = response.json().await.unwrap();
        assert_eq!((&refusal["ok"], &refusal["error"]["code"]), (&json!(false), &json!(code)), "{body}");
        assert!(refusal["error"]["message"].is_string());
    }
    // The start in an unknown conversation took one of the 4 starts a minute.
    for _ in 0..3 {
        all(chat(&app, &user, json!({ "message": "hi" })).await).await;
    }
    let limited = chat(&app, &user, json!({ "message": "hi" })).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.json::<Value>().await.unwrap()["error"]["code"], "RATE_LIMIT");
    let bad_offset = http.get(url(&app, &format!("/v1/answers/{}/events?offset=x", uuid::Uuid::new_v4()))).bearer_auth(token(&user));
    assert_eq!(bad_offset.send().await.unwrap().status(), 400);
    let by_query = http.get(url(&app, &format!("/v1/answers/{}/events?token={}", uuid::Uuid::new_v4(), token(&user))));
    assert_eq!(by_query.send().await.unwrap().status(), 404, "?token= authenticates; the answer does not exist");
}

#[tokio::test]
async fn the_wires_see_one_another() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let user = user();
    // An SSE client watches an answer a Socket.IO client started.
    let mut socket = app.client(&user).await;
    let started = socket.emit_with_ack("chat:start", json!({ "message": "from socket.io" })).await;
    let watched = all(resume(&app, &user, &started["messageId"], 0).await).await;
    assert_eq!(text_from(&watched, 0), ANSWER);
    assert_eq!(read_answer(&mut socket).await.final_data["content"], watched.last().unwrap().data["content"]);

    // A Socket.IO client lists and joins an answer an SSE client started.
    let mut stream = Box::pin(events(chat(&app, &user, json!({ "message": "from SSE" })).await));
    let ack = stream.next().await.unwrap().data;
    let mut tab = app.client(&user).await;
    let active = tab.active().await;
    assert_eq!(active["generations"][0]["messageId"], ack["messageId"], "chat:active lists answers started over SSE");
    let joined = tab.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
    assert_eq!(joined["generations"][0]["messageId"], ack["messageId"]);
    let seen = read_answer(&mut tab).await;
    assert_eq!(seen.chunks[0]["offset"], json!(0));
    assert_eq!(seen.text(), ANSWER);
    let over_sse: Vec<Sse> = stream.collect().await;
    assert_eq!(over_sse.last().unwrap().data["content"], seen.final_data["content"]);
}
