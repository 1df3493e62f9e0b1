//! The store's hardening: U+0000 in answers and messages (stored as U+FFFD on every
//! database, and the client told exactly what is stored), one bad checkpoint never
//! failing the others, an interrupted answer resuming as interrupted, and checkpoints
//! reaching the row within the bound the README states.

use std::time::Duration;

use chatwire::store::{self, NewTurn};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    client::Client,
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

/// A server talking to `fake`.
async fn app_for(fake: &FakeUpstream, vars: &[(&str, &str)]) -> TestApp {
    let base = fake.base_url();
    let mut all = vec![("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", "sk-test")];
    all.extend_from_slice(vars);
    spawn_app_with(&all).await
}

fn is_postgres(app: &TestApp) -> bool {
    app.state.db.get_database_backend() == sea_orm::DbBackend::Postgres
}

/// Polls the row until `done` holds, failing after `limit`.
async fn row_until(app: &TestApp, id: &str, limit: Duration, what: &str, done: impl Fn(&entity::message::Model) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row = app.message(id).await;
        if done(&row) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: row is {:?} / {:?}", row.status, row.content);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_nul_in_an_answer_is_stored_as_a_replacement_character_and_chat_end_says_the_same() {
    let fake = FakeUpstream::start(vec![Reply::Answer(vec!["Nul ", "here\u{0}", " end"])]).await;
    let app = app_for(&fake, &[]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let answer = read_answer(&mut client).await;
    let expected = "Nul here\u{FFFD} end";
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.final_data["content"], json!(expected));
    assert_eq!(answer.text(), expected, "the stream is the stored text");
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str(), row.finish_reason.as_deref()), ("complete", expected, Some("stop")));
}

#[tokio::test]
async fn a_user_message_with_a_nul_is_stored_with_the_replacement_and_answered() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "a\u{0}b" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let (stored, _) = client.until("chat:user-message").await;
    assert_eq!(stored["content"], json!("a\u{FFFD}b"));
    let answer = read_answer(&mut client).await;
    assert_eq!((answer.final_name.as_str(), answer.final_data["content"].as_str()), ("chat:end", Some(ANSWER)));
    let rows = app.messages(ack["conversationId"].as_str().unwrap()).await;
    let rows: Vec<(&str, &str, &str)> = rows.iter().map(|m| (m.role.as_str(), m.content.as_str(), m.status.as_str())).collect();
    assert_eq!(rows, [("user", "a\u{FFFD}b", "complete"), ("assistant", ANSWER, "complete")]);
}

#[tokio::test]
async fn while_a_nul_answer_streams_another_users_checkpoint_is_written() {
    let tokens = |first: &str| -> Vec<String> { std::iter::once(first.to_owned()).chain((0..40).map(|i| format!("t{i} "))).collect() };
    let script = vec![Reply::Slow(tokens("nul\u{0} "), 50), Reply::Slow(tokens("other "), 50)];
    let fake = FakeUpstream::start(script).await;
    let app = app_for(&fake, &[("CHECKPOINT_INTERVAL_MS", "150")]).await;
    let (mut nul, mut other) = (app.client(&user()).await, app.client(&user()).await);
    let nul_ack = nul.emit_with_ack("chat:start", json!({ "message": "one" })).await;
    nul.until("chat:message").await;
    let other_ack = other.emit_with_ack("chat:start", json!({ "message": "two" })).await;
    let (nul_id, other_id) = (nul_ack["messageId"].as_str().unwrap(), other_ack["messageId"].as_str().unwrap());
    // Mid-answer (both run for two seconds), the other answer's row holds its text.
    row_until(&app, other_id, Duration::from_secs(1), "the other answer's checkpoint", |r| {
        r.status == "streaming" && r.content.starts_with("other t")
    })
    .await;
    row_until(&app, nul_id, Duration::from_secs(1), "the nul answer's checkpoint", |r| {
        r.status == "streaming" && r.content.starts_with("nul\u{FFFD} t")
    })
    .await;
    for (client, first) in [(&mut nul, "nul\u{FFFD} "), (&mut other, "other ")] {
        let answer = read_answer(client).await;
        let expected: String = std::iter::once(first.to_owned()).chain((0..40).map(|i| format!("t{i} "))).collect();
        assert_eq!((answer.final_name.as_str(), answer.final_data["content"].as_str()), ("chat:end", Some(expected.as_str())));
    }
}

#[tokio::test]
async fn one_checkpoint_the_database_refuses_does_not_keep_the_others_from_being_written() {
    let app = spawn_app_with(&[("CHECKPOINT_INTERVAL_MS", "600000")]).await;
    let (bad, good) = (streaming_answer(&app, "u1").await, streaming_answer(&app, "u2").await);
    let checkpoints = app.state.engine.checkpoints();
    // PostgreSQL refuses U+0000 in text; offered directly, past the generation's replacement.
    checkpoints.offer(bad, "bad\u{0}".into());
    checkpoints.offer(good, "good".into());
    let written = checkpoints.write_pending(&app.state.db).await.unwrap();
    let (bad_row, good_row) = (app.message(&bad.to_string()).await, app.message(&good.to_string()).await);
    assert_eq!((good_row.content.as_str(), good_row.status.as_str()), ("good", "streaming"));
    if is_postgres(&app) {
        assert_eq!((written, bad_row.content.as_str()), (1, ""));
    } else {
        assert_eq!((written, bad_row.content.as_str()), (2, "bad\u{0}"));
    }
    assert_eq!(checkpoints.pending(), 0, "a refused text is not retried every round");
}

/// A row left `streaming` by a process that died, with its last checkpoint.
async fn interrupted_answer(app: &TestApp, user: &str) -> Uuid {
    let id = streaming_answer(app, user).await;
    store::checkpoint_answers(&app.state.db, &[(id, "partial 😀 text".to_owned())]).await.unwrap();
    id
}

#[tokio::test]
async fn an_interrupted_answer_resumes_as_interrupted_on_ai() {
    let app = spawn_app().await;
    let user = user();
    let id = interrupted_answer(&app, &user).await;
    let mut client: Client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:resume", json!({ "messageId": id })).await;
    assert_eq!((ack["ok"].clone(), ack["status"].clone(), ack["offset"].clone()), (json!(true), json!("error"), json!(0)), "{ack}");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut client)).await.expect("the resume ends");
    assert_eq!(answer.text(), "partial 😀 text");
    assert_eq!(answer.final_name, "chat:error");
    assert_eq!(answer.final_data["code"], json!("UNAVAILABLE"));
    assert_eq!(answer.final_data["messageId"], json!(id.to_string()));
    // From an offset: only the rest, then the same error.
    let ack = client.emit_with_ack("chat:resume", json!({ "messageId": id, "offset": 8 })).await;
    assert_eq!((ack["status"].clone(), ack["offset"].clone()), (json!("error"), json!(8)));
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut client)).await.expect("the resume ends");
    assert_eq!((answer.text().as_str(), answer.final_data["code"].as_str()), ("😀 text", Some("UNAVAILABLE")));
    // Its row is left to the stale sweep (it is younger than the stale threshold).
    let row = app.message(&id.to_string()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("streaming", "partial 😀 text"));
}

#[tokio::test]
async fn an_interrupted_answer_resumes_as_interrupted_on_sse() {
    let app = spawn_app().await;
    let user = user();
    let id = interrupted_answer(&app, &user).await;
    let url = format!("http://{}/v1/answers/{id}/events", app.addr);
    let response = reqwest::Client::new().get(url).bearer_auth(token(&user)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = response.bytes_stream().eventsource().map(|e| {
        let e = e.unwrap();
        (e.event, serde_json::from_str::<Value>(&e.data).unwrap())
    });
    let events: Vec<(String, Value)> = tokio::time::timeout(Duration::from_secs(5), events.collect()).await.expect("the stream ends");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["chat:message", "chat:error"]);
    assert_eq!(events[0].1["content"], json!("partial 😀 text"));
    assert_eq!(events[1].1["code"], json!("UNAVAILABLE"));
    assert_eq!(events[1].1["messageId"], json!(id.to_string()));
}

#[tokio::test]
async fn checkpoints_reach_the_row_within_the_bound_the_readme_states() {
    // README: a checkpoint is stored at most 1¼ intervals after its text arrived. With a
    // one-second interval, every check below allows 1.5 s: text offered only on the
    // generation's own tick, then stored on the writer's, can be 2 intervals late.
    let words: String = (0..100).map(|i| format!("w{i} ")).collect();
    let app =
        spawn_app_with(&[("MOCK_RESPONSE", words.trim_end()), ("MOCK_TOKEN_DELAY_MS", "40"), ("CHECKPOINT_INTERVAL_MS", "1000")]).await;
    let app = &app;
    // Answers started 200 ms apart: their ticks fall at different points of the writer's.
    let runs = (0..5u64).map(|n| async move {
        tokio::time::sleep(Duration::from_millis(200 * n)).await;
        let mut client = app.client(&user()).await;
        let ack = client.emit_with_ack("chat:start", json!({ "message": "count" })).await;
        let id = ack["messageId"].as_str().unwrap().to_owned();
        let mut seen = String::new();
        let mut chunks = 0;
        loop {
            let (name, data) = client.next_event().await;
            match name.as_str() {
                "chat:message" => {
                    seen.push_str(data["content"].as_str().unwrap());
                    chunks += 1;
                    if chunks % 5 == 0 {
                        let what = format!("the checkpoint of {} bytes", seen.len());
                        row_until(app, &id, Duration::from_millis(1500), &what, |r| r.content.starts_with(&seen)).await;
                    }
                }
                "chat:end" => return data["content"].as_str().unwrap().to_owned(),
                "chat:error" | "chat:stopped" => panic!("{name} {data}"),
                _ => {}
            }
        }
    });
    for content in futures::future::join_all(runs).await {
        assert_eq!(content, words.trim_end());
    }
}

#[tokio::test]
async fn a_statement_the_database_refuses_is_internal_not_unavailable() {
    let app = spawn_app().await;
    // Past the command's replacement, straight to the store: PostgreSQL refuses U+0000.
    let turn = NewTurn {
        user_id: "u1".into(),
        conversation_id: None,
        message: "a\u{0}b".into(),
        model: "gpt-4".into(),
        client_message_id: None,
        parent_id: None,
        context_messages: 0,
        preset: None,
        attachments: None,
    };
    let stored = store::begin_chat(&app.state.db, turn).await;
    if is_postgres(&app) {
        let error = stored.expect_err("PostgreSQL refuses NUL");
        assert_eq!(error.to_chat_error().code, chatwire::chat::ErrorCode::Internal, "{error}");
    } else {
        assert!(stored.is_ok(), "SQLite stores it as given");
    }
}

#[tokio::test]
async fn an_imported_message_with_a_nul_is_stored_with_the_replacement() {
    let app = spawn_app().await;
    let (conversation_id, id) = (Uuid::now_v7(), Uuid::now_v7());
    let message = store::ImportedMessage {
        id,
        conversation_id,
        user_id: "importer".into(),
        role: "user".into(),
        content: "old\u{0}text".into(),
        model: None,
        prompt_tokens: None,
        completion_tokens: None,
        total_tokens: None,
        created_at: chrono::Utc::now(),
    };
    let result = store::import_messages(&app.state.db, &[message], store::ImportMode::AllOrNothing).await.unwrap();
    assert_eq!(result.imported, 1);
    let rows = app.messages(&conversation_id.to_string()).await;
    let rows: Vec<(Uuid, &str, &str)> = rows.iter().map(|m| (m.id, m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(rows, [(id, "user", "old\u{FFFD}text")]);
}

#[tokio::test]
async fn an_answer_another_node_ended_keeps_that_ending_when_its_generation_finishes_later() {
    // As in a cluster where this node was cut off from Redis and taken for dead: another
    // node stored the log's text as interrupted and told every reader so.
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "30")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "Hello" })).await;
    let id: Uuid = ack["messageId"].as_str().unwrap().parse().unwrap();
    client.until("chat:message").await;
    assert_eq!(store::fail_interrupted(&app.state.db, id, "what the log held").await.unwrap(), 1);
    // This node's generation runs to its end; its own reader hears it end.
    let (end, _) = client.until("chat:end").await;
    assert_eq!(end["content"], ANSWER);
    let row = app.message(&id.to_string()).await;
    assert_eq!(
        (row.status.as_str(), row.content.as_str(), row.finish_reason.as_deref(), row.error_code.as_deref()),
        ("error", "what the log held", Some("interrupted"), Some("UNAVAILABLE")),
        "the later finish overwrote the ending other readers were told"
    );
    assert_eq!((row.total_tokens, row.provider), (None, None));
    let usage = entity::Usage::find().filter(entity::usage::Column::UserId.eq(user.as_str())).all(&app.state.db).await.unwrap();
    assert!(usage.is_empty(), "an answer that was not stored was counted: {usage:?}");
}
