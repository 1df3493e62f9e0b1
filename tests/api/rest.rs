//! The REST history through a real HTTP client (reqwest): every route, paging across
//! pages with ties, ownership on every id route, title validation, deleting during a
//! running answer, each error and the 401 bodies; the OpenAPI document and `/docs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// A request to `path` as `user` (no token when `None`).
async fn call(app: &TestApp, method: Method, path: &str, user: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, format!("http://{}{path}", app.addr));
    if let Some(user) = user {
        request = request.bearer_auth(token(user));
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("a JSON body") })
}

/// A GET of `path` as `user`.
pub async fn get(app: &TestApp, path: &str, user: &str) -> (StatusCode, Value) {
    call(app, Method::GET, path, Some(user), None).await
}

fn error(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message } })
}

/// One whole chat over `/ai`: its ack and final event.
async fn chat(client: &mut crate::client::Client, payload: Value) -> (Value, Answer) {
    let ack = client.emit_with_ack("chat:start", payload).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    (ack, read_answer(client).await)
}

fn time(row: DateTime<Utc>) -> Value {
    json!(row)
}

/// A stored message as the REST routes show it.
fn view(m: &entity::message::Model) -> Value {
    json!({
        "id": m.id, "conversationId": m.conversation_id, "parentId": m.parent_id, "role": m.role, "content": m.content,
        "attachments": json!([]), "model": m.model,
        "provider": m.provider, "status": m.status, "finishReason": m.finish_reason, "promptTokens": m.prompt_tokens,
        "completionTokens": m.completion_tokens, "totalTokens": m.total_tokens, "errorCode": m.error_code,
        "createdAt": time(m.created_at),
    })
}

#[tokio::test]
async fn every_route_reads_and_changes_the_callers_history() {
    let app = spawn_app().await;
    let user = user();
    let mut client = app.client(&user).await;
    let (first, _) = chat(&mut client, json!({ "message": "first question" })).await;
    let conversation_id = first["conversationId"].as_str().unwrap().to_owned();
    let (second, end) = chat(&mut client, json!({ "message": "second question", "conversationId": conversation_id })).await;
    assert_eq!(end.final_name, "chat:end");

    let rows = app.messages(&conversation_id).await;
    assert_eq!(rows.len(), 4);
    let answer = &rows[3];
    assert_eq!(answer.id.to_string(), second["messageId"].as_str().unwrap());
    assert_eq!((answer.provider.as_deref(), answer.model.as_deref(), answer.status.as_str()), (Some("mock"), Some("gpt-4"), "complete"));
    assert_eq!((answer.prompt_tokens, answer.completion_tokens), (Some(end.final_data["promptTokens"].as_i64().unwrap() as i32), Some(14)));
    assert_eq!(rows[0].provider, None, "questions name no provider");
    let conversation = entity::Conversation::find_by_id(answer.conversation_id).one(&app.state.db).await.unwrap().unwrap();

    let (status, list) = get(&app, "/v1/conversations", &user).await;
    assert_eq!(status, 200);
    let item = json!({
        "id": conversation_id, "title": "first question", "createdAt": time(conversation.created_at),
        "updatedAt": time(conversation.updated_at),
        "lastMessage": { "role": "assistant", "preview": ANSWER, "createdAt": time(answer.created_at) },
    });
    assert_eq!(list, json!({ "items": [item], "nextCursor": null }));

    let (status, detail) = get(&app, &format!("/v1/conversations/{conversation_id}"), &user).await;
    assert_eq!(status, 200);
    // One branch, all of it active, each message after the one before.
    let messages: Vec<Value> = rows
        .iter()
        .map(|m| {
            let mut v = view(m);
            v["active"] = json!(true);
            v
        })
        .collect();
    let parents: Vec<Value> = rows.iter().map(|m| json!(m.parent_id)).collect();
    assert_eq!(parents, [Value::Null, json!(rows[0].id), json!(rows[1].id), json!(rows[2].id)]);
    assert_eq!(
        detail,
        json!({
            "id": conversation_id, "title": "first question", "createdAt": item["createdAt"], "updatedAt": item["updatedAt"],
            "activeLeafId": second["messageId"], "messages": messages,
        })
    );
    assert_eq!(detail["messages"][2]["content"], "second question");
    assert_eq!(detail["messages"][3]["finishReason"], "stop");

    for row in &rows {
        assert_eq!(get(&app, &format!("/v1/messages/{}", row.id), &user).await, (StatusCode::OK, view(row)));
    }

    let path = format!("/v1/conversations/{conversation_id}");
    let (status, renamed) = call(&app, Method::PATCH, &path, Some(&user), Some(r#"{ "title": "  Renamed 😀  " }"#)).await;
    assert_eq!(status, 200);
    let mut expected = item.clone();
    expected["title"] = json!("Renamed 😀");
    expected["lastMessage"] = Value::Null;
    assert_eq!(renamed, expected, "the title is stored trimmed; the list's order does not move");
    assert_eq!(get(&app, "/v1/conversations", &user).await.1["items"][0]["title"], "Renamed 😀");

    assert_eq!(call(&app, Method::DELETE, &path, Some(&user), None).await, (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(get(&app, &path, &user).await, (StatusCode::NOT_FOUND, error("NOT_FOUND", "conversation not found")));
    let message = format!("/v1/messages/{}", rows[0].id);
    assert_eq!(get(&app, &message, &user).await, (StatusCode::NOT_FOUND, error("NOT_FOUND", "message not found")));
    assert!(app.messages(&conversation_id).await.is_empty(), "its messages are deleted too");
    assert_eq!(entity::Conversation::find_by_id(answer.conversation_id).one(&app.state.db).await.unwrap(), None);
    assert_eq!(get(&app, "/v1/conversations", &user).await.1, json!({ "items": [], "nextCursor": null }));
    assert_eq!(call(&app, Method::DELETE, &path, Some(&user), None).await.0, 404, "a second delete finds nothing");
}

/// Stores a conversation of `user` updated at `updated_at`, with no messages.
async fn stored_conversation(app: &TestApp, user: &str, updated_at: DateTime<Utc>) -> Uuid {
    let id = Uuid::new_v4();
    let row = entity::conversation::ActiveModel {
        id: Set(id),
        user_id: Set(user.to_owned()),
        title: Set(format!("conversation {id}")),
        created_at: Set(updated_at),
        updated_at: Set(updated_at),
        active_leaf_id: Set(None),
        preset: Set(None),
    };
    row.insert(&app.state.db).await.unwrap();
    id
}

#[tokio::test]
async fn pages_follow_updated_at_then_id_across_ties() {
    let app = spawn_app().await;
    let (user, other) = (user(), user());
    let base = DateTime::parse_from_rfc3339("2026-03-01T12:00:00.123456Z").unwrap().with_timezone(&Utc);
    let mut stored = Vec::new();
    // Three conversations share one time, two another, and the rest stand alone: pages of
    // 2 cut through both ties.
    for offset in [0, 0, 0, 5, 5, 9, 12] {
        let at = base + chrono::Duration::seconds(offset);
        stored.push((at, stored_conversation(&app, &user, at).await));
        stored_conversation(&app, &other, at).await;
    }
    stored.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = stored.iter().map(|(_, id)| id.to_string()).collect();

    let mut seen = Vec::new();
    let mut path = "/v1/conversations?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = get(&app, &path, &user).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert!(pages <= 4, "7 conversations in pages of 2 end by the 4th page; a cursor that does not advance loops");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for item in items {
            seen.push(item["id"].as_str().unwrap().to_owned());
            assert_eq!(item["lastMessage"], Value::Null, "no messages yet");
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/conversations?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, expected, "every conversation once, by updatedAt then id, descending");
    let (_, whole) = get(&app, "/v1/conversations", &user).await;
    assert_eq!(whole["items"].as_array().unwrap().len(), 7);
    assert_eq!(whole["nextCursor"], Value::Null);
    let (_, exact) = get(&app, "/v1/conversations?limit=7", &user).await;
    assert_eq!(exact["nextCursor"], Value::Null, "no next page when the last one is exactly full");
}

#[tokio::test]
async fn the_preview_is_the_latest_message_cut_to_120_utf16_units() {
    let long = format!("{}😀 and more", "a".repeat(119));
    let app = spawn_app_with(&[("MOCK_RESPONSE", &long)]).await;
    let user = user();
    let mut client = app.client(&user).await;
    chat(&mut client, json!({ "message": "hi" })).await;
    let (_, list) = get(&app, "/v1/conversations", &user).await;
    assert_eq!(list["items"][0]["lastMessage"]["preview"], "a".repeat(119), "the emoji's second unit would be the 121st");
    assert_eq!(list["items"][0]["lastMessage"]["role"], "assistant");
}

#[tokio::test]
async fn another_users_ids_are_not_found_on_every_route() {
    let app = spawn_app().await;
    let (owner, intruder) = (user(), user());
    let mut client = app.client(&owner).await;
    let (ack, _) = chat(&mut client, json!({ "message": "mine" })).await;
    let (conversation, message) = (ack["conversationId"].as_str().unwrap(), ack["messageId"].as_str().unwrap());
    let missing = Uuid::new_v4().to_string();
    let rename = Some(r#"{ "title": "taken" }"#);
    for id in [conversation, missing.as_str(), "not-a-uuid"] {
        let path = format!("/v1/conversations/{id}");
        let not_found = (StatusCode::NOT_FOUND, error("NOT_FOUND", "conversation not found"));
        assert_eq!(call(&app, Method::GET, &path, Some(&intruder), None).await, not_found, "GET {id}");
        assert_eq!(call(&app, Method::PATCH, &path, Some(&intruder), rename).await, not_found, "PATCH {id}");
        assert_eq!(call(&app, Method::DELETE, &path, Some(&intruder), None).await, not_found, "DELETE {id}");
    }
    for id in [message, ack["userMessageId"].as_str().unwrap(), missing.as_str(), "not-a-uuid"] {
        let expected = (StatusCode::NOT_FOUND, error("NOT_FOUND", "message not found"));
        assert_eq!(get(&app, &format!("/v1/messages/{id}"), &intruder).await, expected, "message {id}");
    }
    assert_eq!(get(&app, "/v1/conversations", &intruder).await.1["items"], json!([]));
    // Nothing of the owner's changed.
    let (status, detail) = get(&app, &format!("/v1/conversations/{conversation}"), &owner).await;
    assert_eq!((status, &detail["title"], detail["messages"].as_array().map(Vec::len)), (StatusCode::OK, &json!("mine"), Some(2)));
}

#[tokio::test]
async fn a_new_title_is_validated() {
    let app = spawn_app().await;
    let user = user();
    let mut client = app.client(&user).await;
    let (ack, _) = chat(&mut client, json!({ "message": "keep this title" })).await;
    let path = format!("/v1/conversations/{}", ack["conversationId"].as_str().unwrap());
    let too_long = json!({ "title": "x".repeat(201) }).to_string();
    let emoji_long = json!({ "title": "😀".repeat(101) }).to_string();
    let cases = [
        ("{not json", "INVALID_PAYLOAD", "the body must be a JSON object"),
        ("", "INVALID_PAYLOAD", "the body must be a JSON object"),
        ("[]", "INVALID_PAYLOAD", "the body must be a JSON object"),
        ("{}", "INVALID_PAYLOAD", "title must be a string"),
        (r#"{ "title": 5 }"#, "INVALID_PAYLOAD", "title must be a string"),
        (r#"{ "title": null }"#, "INVALID_PAYLOAD", "title must be a string"),
        (r#"{ "title": " \t\n " }"#, "INVALID_PARAMS", "title must not be empty"),
        (too_long.as_str(), "INVALID_PARAMS", "title is longer than 200 characters"),
        (emoji_long.as_str(), "INVALID_PARAMS", "title is longer than 200 characters"),
    ];
    for (body, code, message) in cases {
        assert_eq!(
            call(&app, Method::PATCH, &path, Some(&user), Some(body)).await,
            (StatusCode::BAD_REQUEST, error(code, message)),
            "{body}"
        );
    }
    assert_eq!(get(&app, &path, &user).await.1["title"], "keep this title");
    let longest = "y".repeat(200);
    let (status, renamed) = call(&app, Method::PATCH, &path, Some(&user), Some(&json!({ "title": longest }).to_string())).await;
    assert_eq!((status, &renamed["title"]), (StatusCode::OK, &json!(longest)));
    let (status, renamed) = call(&app, Method::PATCH, &path, Some(&user), Some(r#"{ "title": "nul\u0000here" }"#)).await;
    assert_eq!((status, &renamed["title"]), (StatusCode::OK, &json!("nul\u{FFFD}here")), "U+0000 is stored as U+FFFD");
}

#[tokio::test]
async fn deleting_a_conversation_stops_its_running_answer_first() {
    let words = "word ".repeat(400);
    let app = spawn_app_with(&[("MOCK_RESPONSE", &words), ("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "a long one" })).await;
    let conversation_id = ack["conversationId"].as_str().unwrap().to_owned();
    client.until("chat:message").await;
    assert_eq!(app.state.engine.running(), 1);

    let path = format!("/v1/conversations/{conversation_id}");
    assert_eq!(call(&app, Method::DELETE, &path, Some(&user), None).await, (StatusCode::NO_CONTENT, Value::Null));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:stopped", "the socket is told the answer stopped: {:?}", answer.final_data);
    assert_eq!(answer.final_data["messageId"], ack["messageId"]);
    assert!(app.state.engine.wait_idle(Duration::from_secs(5)).await);
    assert!(app.messages(&conversation_id).await.is_empty(), "the stored answer went with its conversation");
    let answer_row = entity::Message::find_by_id(Uuid::parse_str(ack["messageId"].as_str().unwrap()).unwrap());
    assert_eq!(answer_row.one(&app.state.db).await.unwrap(), None);
    assert_eq!(get(&app, &path, &user).await.0, 404);
    // The socket is free for the next chat.
    let next = client.emit_with_ack("chat:start", json!({ "message": "again" })).await;
    assert_eq!(next["ok"], json!(true));
}

#[tokio::test]
async fn no_token_or_a_bad_one_is_401_unauthorized_on_every_route() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let routes = [
        (Method::GET, "/v1/conversations".to_owned()),
        (Method::GET, format!("/v1/conversations/{id}")),
        (Method::PATCH, format!("/v1/conversations/{id}")),
        (Method::DELETE, format!("/v1/conversations/{id}")),
        (Method::GET, format!("/v1/messages/{id}")),
        (Method::GET, "/v1/usage".to_owned()),
        (Method::GET, "/v1/status".to_owned()),
    ];
    let expired = token_with(json!({ "sub": "u", "exp": Utc::now().timestamp() - 3600 }));
    let http = reqwest::Client::new();
    for (method, path) in routes {
        let url = format!("http://{}{path}", app.addr);
        let requests = [
            ("no token", http.request(method.clone(), &url)),
            ("a malformed token", http.request(method.clone(), &url).bearer_auth("not.a.jwt")),
            ("an expired token", http.request(method.clone(), &url).bearer_auth(&expired)),
            ("the Basic scheme", http.request(method.clone(), &url).header("authorization", format!("Basic {}", token("u")))),
        ];
        for (what, request) in requests {
            let response = request.body(r#"{ "title": "t" }"#).send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path}, {what}");
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.json::<Value>().await.unwrap(), error("UNAUTHORIZED", "unauthorized"), "{method} {path}, {what}");
        }
    }
    let by_query = http.get(format!("http://{}/v1/conversations?token={}", app.addr, token("u"))).send().await.unwrap();
    assert_eq!(by_query.status(), 200, "?token= authenticates, as on the SSE wire");
}

#[tokio::test]
async fn bad_parameters_are_400_invalid_params() {
    let app = spawn_app().await;
    let user = user();
    let cases = [
        ("/v1/conversations?limit=0", "limit must be a whole number from 1 to 100"),
        ("/v1/conversations?limit=101", "limit must be a whole number from 1 to 100"),
        ("/v1/conversations?limit=two", "limit must be a whole number from 1 to 100"),
        ("/v1/conversations?limit=-1", "limit must be a whole number from 1 to 100"),
        ("/v1/conversations?cursor=nonsense", "cursor is not one this server gave"),
        ("/v1/conversations?cursor=MjAyNnxub3Q", "cursor is not one this server gave"),
        ("/v1/usage?from=yesterday", "from must be a day, YYYY-MM-DD"),
        ("/v1/usage?to=2026-02-30", "to must be a day, YYYY-MM-DD"),
        ("/v1/usage?from=2026-03-02&to=2026-03-01", "from is after to"),
    ];
    for (path, message) in cases {
        assert_eq!(get(&app, path, &user).await, (StatusCode::BAD_REQUEST, error("INVALID_PARAMS", message)), "{path}");
    }
}

#[tokio::test]
async fn open_mode_names_the_user_in_the_query() {
    let app = spawn_app_with(&[("JWT_SECRET", "")]).await;
    let mut client = crate::client::Client::websocket(app.addr, crate::client::Credentials::default()).await.unwrap();
    let (ack, _) = chat(&mut client, json!({ "message": "open hello", "userId": "alice" })).await;
    let (status, list) = call(&app, Method::GET, "/v1/conversations?userId=alice", None, None).await;
    assert_eq!((status, &list["items"][0]["id"]), (StatusCode::OK, &ack["conversationId"]));
    let (status, list) = call(&app, Method::GET, "/v1/conversations", None, None).await;
    assert_eq!((status, &list["items"]), (StatusCode::OK, &json!([])), "unnamed is a fresh anonymous user");
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_docs_work_offline() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let doc: Value = http.get(format!("http://{}/openapi.json", app.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("/", "get"),
        ("/health", "get"),
        ("/v1/status", "get"),
        ("/v1/chat", "post"),
        ("/v1/answers/{messageId}/events", "get"),
        ("/v1/answers/{messageId}/stop", "post"),
        ("/v1/conversations", "get"),
        ("/v1/conversations/{id}", "get"),
        ("/v1/conversations/{id}", "patch"),
        ("/v1/conversations/{id}", "delete"),
        ("/v1/messages/{id}", "get"),
        ("/v1/usage", "get"),
        ("/v1/models", "get"),
        ("/v1/embeddings", "post"),
    ];
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(|m| (p.clone(), m.clone())))
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = routes.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    expected.sort();
    assert_eq!(documented, expected);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"], json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }));
    assert_eq!(doc["paths"]["/v1/conversations"]["get"]["security"], json!([{ "bearer": [] }]));
    assert_eq!(
        doc["paths"]["/v1/chat"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );

    let page = http.get(format!("http://{}/docs", app.addr)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"src="/docs/scalar.js""#), "{html}");
    assert!(!html.contains("https://"), "nothing from a CDN: {html}");
    let script = http.get(format!("http://{}/docs/scalar.js", app.addr)).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("application/javascript"));
    assert!(script.bytes().await.unwrap().len() > 100_000);
}

#[tokio::test]
async fn browsers_may_patch_and_delete_from_an_allowed_origin() {
    let app = spawn_app_with(&[("CORS_ORIGIN", "http://app.example")]).await;
    for method in ["PATCH", "DELETE"] {
        let preflight = reqwest::Client::new()
            .request(Method::OPTIONS, format!("http://{}/v1/conversations/{}", app.addr, Uuid::new_v4()))
            .header("origin", "http://app.example")
            .header("access-control-request-method", method)
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 200);
        let allowed = preflight.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
        assert!(allowed.split(',').any(|m| m.trim() == method), "{method} in {allowed}");
    }
}
