//! A client that leaves mid-answer, and a server that is told to stop (SIGTERM on
//! the real binary): every answer ends in a stored row matching what clients saw.

use std::{process::Command, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    helpers::*,
};

const LONG: &str = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five";

/// Starts a chat, reads its first chunk, drops the socket, and waits for the answer's final row.
async fn leave_mid_answer(app: &TestApp) -> entity::message::Model {
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "count" })).await;
    client.until("chat:message").await;
    client.close().await;
    let id = ack["messageId"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        let row = app.message(&id).await;
        if row.status != "streaming" {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the answer never ended");
}

#[tokio::test]
async fn by_default_an_answer_whose_client_left_is_finished_and_stored() {
    let app = spawn_app_with(&[("MOCK_RESPONSE", LONG), ("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let row = leave_mid_answer(&app).await;
    assert_eq!((row.status.as_str(), row.content.as_str(), row.finish_reason.as_deref()), ("complete", LONG, Some("stop")));
    assert!(app.state.engine.wait_idle(Duration::from_secs(5)).await, "the answer leaves the registry after its row");
}

#[tokio::test]
async fn with_on_disconnect_cancel_the_partial_answer_is_stored_as_stopped() {
    let app = spawn_app_with(&[("MOCK_RESPONSE", LONG), ("MOCK_TOKEN_DELAY_MS", "20"), ("ON_DISCONNECT", "cancel")]).await;
    let row = leave_mid_answer(&app).await;
    assert_eq!((row.status.as_str(), row.finish_reason.as_deref()), ("stopped", Some("stopped")));
    assert!(!row.content.is_empty() && row.content.len() < LONG.len() && LONG.starts_with(&row.content));
    assert!(app.state.engine.wait_idle(Duration::from_secs(5)).await, "the answer leaves the registry after its row");
}

#[tokio::test]
async fn sigterm_lets_short_answers_finish_and_cuts_long_ones_with_their_partial_text_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    let mut child = spawn_binary(&db_url, &[("MOCK_RESPONSE", LONG), ("MOCK_TOKEN_DELAY_MS", "100"), ("SHUTDOWN_GRACE_SECONDS", "1")]);
    let connect = |user: &str| Client::websocket(child.addr, Credentials::token(&token(user)));
    let mut long = connect(&user()).await.unwrap();
    let mut short = connect(&user()).await.unwrap();
    let long_ack = long.emit_with_ack("chat:start", json!({ "message": "long" })).await;
    let short_ack = short.emit_with_ack("chat:start", json!({ "message": "short", "maxTokens": 5 })).await;
    let (first, _) = long.until("chat:message").await;

    let killed = Command::new("kill").args(["-TERM", &child.process.id().to_string()]).status().unwrap();
    assert!(killed.success());

    let short_answer = read_answer(&mut short).await;
    assert_eq!(short_answer.final_name, "chat:end", "an answer that ends within the grace period completes");
    let mut long_answer = read_answer(&mut long).await;
    long_answer.chunks.insert(0, first);
    assert_eq!(long_answer.final_name, "chat:error");
    assert_eq!(long_answer.final_data["code"], "UNAVAILABLE");
    assert_eq!(long_answer.final_data["messageId"], long_ack["messageId"]);

    let status = tokio::task::spawn_blocking(move || child.process.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");

    let db = sea_orm::Database::connect(&db_url).await.unwrap();
    let row = |id: &Value| entity::Message::find_by_id(uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap()).one(&db);
    use sea_orm::EntityTrait;
    let long_row = row(&long_ack["messageId"]).await.unwrap().unwrap();
    assert_eq!((long_row.status.as_str(), long_row.finish_reason.as_deref()), ("error", Some("shutdown")));
    assert!(!long_row.content.is_empty() && LONG.starts_with(&long_row.content) && long_row.content.len() < LONG.len());
    assert_eq!(long_row.content, long_answer.text(), "the client got exactly the stored partial answer");
    let short_row = row(&short_ack["messageId"]).await.unwrap().unwrap();
    assert_eq!((short_row.status.as_str(), short_row.content.as_str()), ("complete", "one two three four five "));
}

#[tokio::test]
async fn a_crash_loses_at_most_the_last_checkpoint_and_the_next_start_marks_the_answer_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    let vars = [
        ("MOCK_RESPONSE", LONG),
        ("MOCK_TOKEN_DELAY_MS", "100"),
        ("CHECKPOINT_INTERVAL_MS", "200"),
        ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "500"),
        ("UPSTREAM_IDLE_TIMEOUT_MS", "500"),
    ];
    let mut child = spawn_binary(&db_url, &vars);
    let user = user();
    let mut client = Client::websocket(child.addr, Credentials::token(&token(&user))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "count" })).await;
    let mut received = String::new();
    for _ in 0..8 {
        let (chunk, _) = client.until("chat:message").await;
        received.push_str(chunk["content"].as_str().unwrap());
    }
    child.process.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.process.wait().unwrap();

    let db = sea_orm::Database::connect(&db_url).await.unwrap();
    let id = uuid::Uuid::parse_str(ack["messageId"].as_str().unwrap()).unwrap();
    use sea_orm::EntityTrait;
    let row = entity::Message::find_by_id(id).one(&db).await.unwrap().unwrap();
    assert_eq!(row.status, "streaming");
    assert!(!row.content.is_empty() && received.starts_with(&row.content), "checkpoint {:?} of {received:?}", row.content);
    let checkpoint = row.content.clone();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restarted = spawn_binary(&db_url, &vars);
    let mut row = row;
    for _ in 0..100 {
        row = entity::Message::find_by_id(id).one(&db).await.unwrap().unwrap();
        if row.status != "streaming" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (row.status.as_str(), row.finish_reason.as_deref(), row.content.as_str()),
        ("error", Some("interrupted"), checkpoint.as_str())
    );

    let mut client = Client::websocket(restarted.addr, Credentials::token(&token(&user))).await.unwrap();
    let resumed = client.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": 0 })).await;
    assert_eq!(resumed["status"], "error");
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.text(), checkpoint);
    assert_eq!(answer.final_data["code"], "UNAVAILABLE");
    let mut restarted = restarted;
    restarted.process.kill().unwrap();
    restarted.process.wait().unwrap();
}

#[tokio::test]
async fn with_on_disconnect_cancel_a_client_gone_before_its_turn_is_stored_stops_the_answer() {
    let app = spawn_app_with(&[("MOCK_RESPONSE", LONG), ("MOCK_TOKEN_DELAY_MS", "20"), ("ON_DISCONNECT", "cancel")]).await;
    let who = user();
    let mut client = app.client(&who).await;
    // Gone while the server is still storing the turn, before any ack or chunk.
    client.emit("chat:start", json!({ "message": "count" })).await;
    client.close().await;
    let answer = || {
        entity::Message::find()
            .filter(entity::message::Column::UserId.eq(who.as_str()))
            .filter(entity::message::Column::Role.eq("assistant"))
            .one(&app.state.db)
    };
    for _ in 0..100 {
        if let Some(row) = answer().await.unwrap()
            && row.status != "streaming"
        {
            assert_eq!((row.status.as_str(), row.finish_reason.as_deref()), ("stopped", Some("stopped")));
            assert!(row.content.len() < LONG.len(), "stopped early, not finished: {:?}", row.content);
            assert!(app.state.engine.wait_idle(Duration::from_secs(5)).await, "the answer leaves the registry after its row");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the answer never ended");
}
