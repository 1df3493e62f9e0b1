//! Checkpoints: every streaming answer's partial text, written together each interval.

use std::time::Duration;

use chatwire::store;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

async fn row(app: &TestApp, id: Uuid) -> entity::message::Model {
    app.message(&id.to_string()).await
}

#[tokio::test]
async fn one_round_writes_every_offered_text_and_leaves_ended_answers_alone() {
    // A long interval: the test runs the rounds itself.
    let app = spawn_app_with(&[("CHECKPOINT_INTERVAL_MS", "600000")]).await;
    let checkpoints = &app.state.engine.checkpoints();
    let (a, b, ended) = (streaming_answer(&app, "u1").await, streaming_answer(&app, "u2").await, streaming_answer(&app, "u3").await);
    let ending = chatwire::chat::Final::Complete {
        provider: "mock".into(),
        model: "gpt-4".into(),
        finish_reason: "stop".into(),
        usage: Some(Default::default()),
    };
    let end = store::AnswerEnd {
        user_id: "u",
        provider: "mock",
        content: "final",
        ending: &ending,
        model: "gpt-4",
        partial_usage: None,
        cut_reason: "",
    };
    store::finish_answer(&app.state.db, ended, &end).await.unwrap();

    checkpoints.offer(a, "a old".into());
    checkpoints.offer(a, "a newer".into());
    checkpoints.offer(b, "b".into());
    checkpoints.offer(ended, "late".into());
    assert_eq!(checkpoints.pending(), 3, "one pending text per answer, the newest");
    assert_eq!(checkpoints.write_pending(&app.state.db).await.unwrap(), 3);
    assert_eq!(checkpoints.pending(), 0);

    let (ra, rb, re) = (row(&app, a).await, row(&app, b).await, row(&app, ended).await);
    assert_eq!((ra.content.as_str(), ra.status.as_str()), ("a newer", "streaming"));
    assert_eq!((rb.content.as_str(), rb.status.as_str()), ("b", "streaming"));
    assert_eq!((re.content.as_str(), re.status.as_str()), ("final", "complete"), "an ended answer keeps its final text");

    // A forgotten answer (its final row is being written) is not checkpointed.
    checkpoints.offer(a, "a forgotten".into());
    checkpoints.forget(a);
    assert_eq!(checkpoints.write_pending(&app.state.db).await.unwrap(), 0);
    assert_eq!(row(&app, a).await.content, "a newer");
}

#[tokio::test]
async fn a_failed_round_keeps_its_texts_for_the_next_one() {
    let app = spawn_app_with(&[("CHECKPOINT_INTERVAL_MS", "600000")]).await;
    let id = streaming_answer(&app, "u1").await;
    let checkpoints = &app.state.engine.checkpoints();
    checkpoints.offer(id, "kept".into());
    // A database that refuses every statement.
    let closed = app.state.db.clone();
    closed.close_by_ref().await.unwrap();
    assert!(checkpoints.write_pending(&app.state.db).await.is_err());
    assert_eq!(checkpoints.pending(), 1, "the failed text waits for the next round");
}

#[tokio::test]
async fn streaming_answers_are_checkpointed_while_they_run() {
    let words: String = (0..200).map(|i| format!("w{i} ")).collect();
    let words = words.trim_end().to_owned();
    let app = spawn_app_with(&[("MOCK_RESPONSE", &words), ("MOCK_TOKEN_DELAY_MS", "10"), ("CHECKPOINT_INTERVAL_MS", "150")]).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut client = app.client(&format!("cp-{n}")).await;
        let ack = client.emit_with_ack("chat:start", json!({ "message": "long" })).await;
        ids.push(ack["messageId"].as_str().unwrap().to_owned());
        clients.push(client);
    }
    // Two writer rounds in, every answer has a partial text stored and is still running.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in &ids {
        let row = app.message(id).await;
        assert_eq!(row.status, "streaming");
        assert!(!row.content.is_empty() && words.starts_with(&row.content), "checkpoint {:?}", row.content);
    }
    for client in &mut clients {
        let answer = read_answer(client).await;
        assert_eq!(answer.final_name, "chat:end");
        assert_eq!(answer.text(), words);
    }
    assert_eq!(app.state.engine.checkpoints().pending(), 0, "nothing is left pending for ended answers");
}
