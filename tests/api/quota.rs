//! Usage and the daily token quota: an answer that crosses the quota finishes, the next
//! start is refused with `QUOTA_EXCEEDED` on every wire before any upstream call, the
//! usage rows are exact, and `/v1/usage` shows the caller's own.

use chatwire::store;
use futures::future::join_all;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use crate::helpers::*;

/// The mock's tokens: a word with the whitespace after it.
fn tokens(text: &str) -> i64 {
    text.split_whitespace().count() as i64
}

fn today() -> String {
    store::utc_day(chrono::Utc::now())
}

async fn usage_rows(app: &TestApp, user: &str) -> Vec<entity::usage::Model> {
    entity::Usage::find()
        .filter(entity::usage::Column::UserId.eq(user))
        .order_by_asc(entity::usage::Column::Model)
        .all(&app.state.db)
        .await
        .unwrap()
}

async fn usage_of(app: &TestApp, user: &str, query: &str) -> Value {
    let response =
        reqwest::Client::new().get(format!("http://{}/v1/usage{query}", app.addr)).bearer_auth(token(user)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_answer_that_crosses_the_quota_finishes_and_the_next_start_is_refused() {
    // "hello there" is 2 prompt tokens; the answer 14 completion tokens: 16 > 10.
    let app = spawn_app_with(&[("DAILY_TOKEN_QUOTA", "10")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hello there" })).await;
    assert_eq!(ack["ok"], json!(true));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end", "the answer that crosses the quota finishes");
    assert_eq!(answer.text(), ANSWER);
    assert_eq!((&answer.final_data["promptTokens"], &answer.final_data["completionTokens"]), (&json!(2), &json!(tokens(ANSWER))));

    let rows = usage_rows(&app, &user).await;
    let expected = entity::usage::Model {
        user_id: user.clone(),
        day: today(),
        model: "gpt-4".into(),
        prompt_tokens: 2,
        completion_tokens: tokens(ANSWER),
        answers: 1,
    };
    assert_eq!(rows, vec![expected]);

    let refused = client.emit_with_ack("chat:start", json!({ "message": "one more" })).await;
    let quota = "the daily token quota is used up; it renews at 00:00 UTC";
    assert_eq!(refused, json!({ "ok": false, "error": { "code": "QUOTA_EXCEEDED", "message": quota } }));
    assert_eq!(client.next_event().await, ("chat:error".to_owned(), json!({ "code": "QUOTA_EXCEEDED", "message": quota })));

    let sse = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&user))
        .json(&json!({ "message": "over SSE" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 429);
    assert_eq!(sse.json::<Value>().await.unwrap(), json!({ "ok": false, "error": { "code": "QUOTA_EXCEEDED", "message": quota } }));
    assert_eq!(app.mock().requests().len(), 1, "no refused start reached the upstream");
    assert_eq!(app.messages(ack["conversationId"].as_str().unwrap()).await.len(), 2, "nothing of a refused start is stored");

    let usage = usage_of(&app, &user, "").await;
    let row = json!({ "day": today(), "model": "gpt-4", "promptTokens": 2, "completionTokens": tokens(ANSWER), "answers": 1 });
    assert_eq!(usage, json!({ "usage": [row] }));
    // Another user has a quota of their own.
    let mut other = app.client(&crate::helpers::user()).await;
    assert_eq!(other.emit_with_ack("chat:start", json!({ "message": "mine" })).await["ok"], json!(true));
    assert_eq!(read_answer(&mut other).await.final_name, "chat:end");
}

#[tokio::test]
async fn usage_counts_every_ended_answer_by_model_and_day() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    for model in ["gpt-4", "gpt-4o-mini", "gpt-4o-mini"] {
        assert_eq!(client.emit_with_ack("chat:start", json!({ "message": "count me", "model": model })).await["ok"], json!(true));
        assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    }
    // A stopped answer counts as an answer; the upstream sent no usage for it.
    assert_eq!(client.emit_with_ack("chat:start", json!({ "message": "stop me" })).await["ok"], json!(true));
    client.until("chat:message").await;
    client.emit_with_ack("chat:stop", json!({})).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:stopped");

    // The second answer of a conversation sends the first one as context: each answer
    // here is in a conversation of its own, so each has 2 prompt tokens.
    let completion = tokens(ANSWER);
    let rows: Vec<(String, i64, i64, i64)> =
        usage_rows(&app, &user).await.into_iter().map(|r| (r.model, r.prompt_tokens, r.completion_tokens, r.answers)).collect();
    assert_eq!(rows, vec![("gpt-4".into(), 2, completion, 2), ("gpt-4o-mini".into(), 4, 2 * completion, 2)]);

    let day = today();
    let usage = usage_of(&app, &user, "").await;
    assert_eq!(
        usage,
        json!({ "usage": [
            { "day": day, "model": "gpt-4", "promptTokens": 2, "completionTokens": completion, "answers": 2 },
            { "day": day, "model": "gpt-4o-mini", "promptTokens": 4, "completionTokens": 2 * completion, "answers": 2 },
        ] })
    );
    assert_eq!(usage_of(&app, &user, &format!("?from={day}&to={day}")).await, usage);
    assert_eq!(usage_of(&app, &user, "?from=2999-01-01").await, json!({ "usage": [] }));
    assert_eq!(usage_of(&app, &user, "?to=2000-01-01").await, json!({ "usage": [] }));
    assert_eq!(usage_of(&app, &crate::helpers::user(), "").await, json!({ "usage": [] }), "each caller sees only their own");
}

#[tokio::test]
async fn concurrent_adds_to_one_row_all_count() {
    let app = spawn_app().await;
    let user = user();
    let tokens = chatwire::chat::Usage { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 };
    let adds = (0..40).map(|_| store::add_usage(&app.state.db, &user, "gpt-4", "2026-03-01", tokens));
    for added in join_all(adds).await {
        added.unwrap();
    }
    let rows = usage_rows(&app, &user).await;
    assert_eq!((rows.len(), rows[0].prompt_tokens, rows[0].completion_tokens, rows[0].answers), (1, 120, 200, 40));
    assert_eq!(store::day_total(&app.state.db, &user, "2026-03-01").await.unwrap(), 320);
    assert_eq!(store::day_total(&app.state.db, &user, "2026-03-02").await.unwrap(), 0);
}

#[tokio::test]
async fn yesterdays_tokens_do_not_count_against_today() {
    let app = spawn_app_with(&[("DAILY_TOKEN_QUOTA", "10")]).await;
    let user = user();
    let tokens = chatwire::chat::Usage { prompt_tokens: 500, completion_tokens: 500, total_tokens: 1000 };
    let yesterday = store::utc_day(chrono::Utc::now() - chrono::Duration::days(1));
    store::add_usage(&app.state.db, &user, "gpt-4", &yesterday, tokens).await.unwrap();
    let mut client = app.client(&user).await;
    assert_eq!(client.emit_with_ack("chat:start", json!({ "message": "a new day" })).await["ok"], json!(true));
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    // Today's own answer (16 tokens) reaches the quota.
    let refused = client.emit_with_ack("chat:start", json!({ "message": "over" })).await;
    assert_eq!(refused["error"]["code"], "QUOTA_EXCEEDED");
}
