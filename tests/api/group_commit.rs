//! Group commit: `chat:start` turns that arrive together are stored in one transaction,
//! each with its own ids and its own result; a bad turn fails only itself. On SQLite and
//! PostgreSQL (`DATABASE_URL`).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chatwire::store::{self, NewIds, NewTurn, StoreError, TurnWriter, WriteGate};
use sea_orm::{EntityTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use crate::{
    helpers::{ANSWER, TestApp, read_answer, spawn_app_with, until, user},
    metrics::scrape,
};

fn new_turn(user: &str, conversation_id: Option<Uuid>, message: &str, key: Option<&str>) -> NewTurn {
    NewTurn {
        user_id: user.into(),
        conversation_id,
        message: message.into(),
        model: "gpt-4".into(),
        client_message_id: key.map(Into::into),
        parent_id: None,
        context_messages: 0,
        preset: None,
        attachments: None,
    }
}

/// A turn writer of its own over the app's database, recording each batch's size.
struct Writer {
    turns: Arc<TurnWriter>,
    gate: WriteGate,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Writer {
    fn over(db: sea_orm::DatabaseConnection) -> Self {
        let gate = WriteGate::new(1, 0, Duration::from_secs(60));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let turns = Arc::new(TurnWriter::spawn(db, gate.clone(), store::MAX_BATCH, move |n| seen.lock().unwrap().push(n)));
        Self { turns, gate, batches }
    }

    /// Writes `turns` while the gate's only place is held, so that they all queue, then
    /// frees it: the writer takes them together. Each turn's result, in order.
    async fn together(&self, turns: Vec<(NewTurn, NewIds)>) -> Vec<Result<store::ChatBegun, StoreError>> {
        self.timed(turns).await.0
    }

    /// [`Self::together`], and how long the writing took once the place was free.
    async fn timed(&self, turns: Vec<(NewTurn, NewIds)>) -> (Vec<Result<store::ChatBegun, StoreError>>, Duration) {
        let held = self.gate.place().await.expect("a free place");
        let n = turns.len();
        let calls: Vec<_> = turns
            .into_iter()
            .map(|(turn, ids)| {
                let writer = self.turns.clone();
                tokio::spawn(async move { writer.write(turn, ids).await })
            })
            .collect();
        until("every turn queued", async || self.gate.waiting() == n).await;
        let freed = std::time::Instant::now();
        drop(held);
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        (results, freed.elapsed())
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

fn is_postgres(app: &TestApp) -> bool {
    sea_orm::ConnectionTrait::get_database_backend(&app.state.db) == sea_orm::DbBackend::Postgres
}

#[tokio::test]
async fn fifty_starts_at_once_are_each_stored_once_with_their_own_ids_and_the_queued_ones_share_one_transaction() {
    // One pooled connection, held by the test while the starts arrive: the first batch
    // waits for it and every later start waits in the queue.
    let app = spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "1"), ("OVERLOAD_DB_WAIT_MS", "60000")]).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let u = user();
        clients.push((app.client(&u).await, u));
    }
    let before = scrape(&app).await;
    let moved = |name: &str, after: &crate::metrics::Scraped| (after.counter(name, &[]) - before.counter(name, &[])) as usize;
    let held = app.state.db.begin().await.unwrap();
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (mut client, u))| {
            tokio::spawn(async move {
                let ack = client.emit_with_ack("chat:start", json!({ "message": format!("question {i}") })).await;
                (i, u, ack, read_answer(&mut client).await)
            })
        })
        .collect();
    until("all 50 turns taken or queued", async || {
        moved("chatwire_store_batched_turns_total", &scrape(&app).await) + app.state.engine.db_waiting() == 50
    })
    .await;
    // The first batch took the turns there were when it began; it waits for the connection.
    let first = moved("chatwire_store_batched_turns_total", &scrape(&app).await);
    held.rollback().await.unwrap();

    let (mut answers, mut conversations, mut questions) = (HashSet::new(), HashSet::new(), HashSet::new());
    for run in runs {
        let (i, u, ack, answer) = run.await.unwrap();
        assert_eq!(ack["ok"], json!(true), "{ack}");
        let (message_id, conversation_id) = (ack["messageId"].as_str().unwrap(), ack["conversationId"].as_str().unwrap());
        assert!(answers.insert(message_id.to_owned()) && conversations.insert(conversation_id.to_owned()));
        assert!(questions.insert(ack["userMessageId"].as_str().unwrap().to_owned()));
        assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", ANSWER.to_owned()));
        assert_eq!((answer.final_data["messageId"].as_str(), answer.final_data["content"].as_str()), (Some(message_id), Some(ANSWER)));
        let rows = app.messages(conversation_id).await;
        let rows: Vec<_> =
            rows.iter().map(|m| (m.id.to_string(), m.user_id.as_str(), m.role.as_str(), m.content.as_str(), m.status.as_str())).collect();
        let question = format!("question {i}");
        assert_eq!(
            rows,
            [
                (ack["userMessageId"].as_str().unwrap().to_owned(), u.as_str(), "user", question.as_str(), "complete"),
                (message_id.to_owned(), u.as_str(), "assistant", ANSWER, "complete"),
            ]
        );
    }
    let after = scrape(&app).await;
    assert_eq!(moved("chatwire_store_batched_turns_total", &after), 50, "each turn in one batch");
    // The one that waited for the connection, then the queued ones, MAX_BATCH at a time.
    assert_eq!(moved("chatwire_store_batches_total", &after), 1 + (50 - first).div_ceil(store::MAX_BATCH), "{first} turns first");
}

#[tokio::test]
async fn a_start_no_batch_takes_within_the_wait_is_refused_with_retry_after_ms_and_stores_nothing() {
    let app =
        spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "1"), ("OVERLOAD_DB_WAIT_MS", "200"), ("OVERLOAD_RETRY_AFTER_MS", "1500")]).await;
    let (first_user, later_user) = (user(), user());
    let (mut first, mut later) = (app.client(&first_user).await, app.client(&later_user).await);
    let before = scrape(&app).await;
    let moved = |name: &str, after: &crate::metrics::Scraped| (after.counter(name, &[]) - before.counter(name, &[])) as usize;
    let held = app.state.db.begin().await.unwrap();
    // The first start's batch holds the only place, waiting for the connection.
    let first_ack = tokio::spawn(async move { (first.emit_with_ack("chat:start", json!({ "message": "first" })).await, first) });
    until("the first turn taken", async || moved("chatwire_store_batched_turns_total", &scrape(&app).await) == 1).await;
    let refused = later.emit_with_ack("chat:start", json!({ "message": "later" })).await;
    assert_eq!(
        refused,
        json!({ "ok": false, "error": { "code": "UNAVAILABLE", "message": "the server is busy; try again shortly", "retryAfterMs": 1500 } })
    );
    // Told as chat:error too, as every refusal is.
    let (told, _) = later.until("chat:error").await;
    assert_eq!(told, refused["error"]);
    held.rollback().await.unwrap();
    let (ack, mut first) = first_ack.await.unwrap();
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(read_answer(&mut first).await.final_name, "chat:end");
    assert!(store::list_conversations(&app.state.db, &later_user, None, 10).await.unwrap().items.is_empty(), "nothing stored");
    assert_eq!(moved("chatwire_store_batched_turns_total", &scrape(&app).await), 1, "the refused turn was never written");
    // The socket stays usable: the same start goes through now.
    let again = later.emit_with_ack("chat:start", json!({ "message": "later" })).await;
    assert_eq!(again["ok"], json!(true), "{again}");
    let answer = read_answer(&mut later).await;
    assert_eq!((answer.final_name.as_str(), &answer.final_data["messageId"]), ("chat:end", &again["messageId"]));
}

#[tokio::test]
async fn the_same_client_message_id_from_two_sockets_at_once_is_stored_once_and_both_get_the_first_ack() {
    let app = spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "1"), ("OVERLOAD_DB_WAIT_MS", "60000")]).await;
    let u = user();
    let (mut a, mut b) = (app.client(&u).await, app.client(&u).await);
    let start = json!({ "message": "once only", "clientMessageId": "together-1" });
    let (first, second) = tokio::join!(a.emit_with_ack("chat:start", start.clone()), b.emit_with_ack("chat:start", start.clone()));
    assert_eq!(first["ok"], json!(true), "{first}");
    assert_eq!(second, first);
    let rows = app.messages(first["conversationId"].as_str().unwrap()).await;
    let keys: Vec<_> = rows.iter().map(|m| (m.role.as_str(), m.client_message_id.as_deref())).collect();
    assert_eq!(keys, [("user", Some("together-1")), ("assistant", None)]);
}

#[tokio::test]
async fn a_turn_in_a_conversation_that_is_not_its_users_fails_alone_and_the_batch_stores_the_others_in_order() {
    let app = spawn_app_with(&[]).await;
    let (owner, intruder, other) = (user(), user(), user());
    let theirs = store::begin_chat(&app.state.db, new_turn(&owner, None, "mine", None)).await.unwrap();
    let writer = Writer::over(app.state.db.clone());
    let ids: Vec<NewIds> = (0..5).map(|_| NewIds::generate()).collect();
    let mut with_preset = new_turn(&owner, Some(theirs.conversation_id), "and once more", None);
    with_preset.preset = Some("brief".into());
    let turns = vec![
        (new_turn(&other, None, "a new one", None), ids[0]),
        (new_turn(&intruder, Some(theirs.conversation_id), "let me in", None), ids[1]),
        (new_turn(&owner, Some(theirs.conversation_id), "mine again", None), ids[2]),
        (new_turn(&intruder, None, "my own", None), ids[3]),
        (with_preset, ids[4]),
    ];
    let results = writer.together(turns).await;
    assert_eq!(writer.batches(), [5], "one transaction");
    let [created, refused, continued, own, again] = <[_; 5]>::try_from(results).unwrap();
    let created = created.unwrap();
    assert_eq!(
        (created.conversation_id, created.created, created.user_message_id, created.assistant_message_id),
        (ids[0].conversation_id, true, ids[0].user_message_id, ids[0].assistant_message_id)
    );
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    let continued = continued.unwrap();
    assert_eq!((continued.conversation_id, continued.created), (theirs.conversation_id, false));
    assert_eq!(own.unwrap().conversation_id, ids[3].conversation_id);
    assert_eq!(again.unwrap().assistant_message_id, ids[4].assistant_message_id);

    let rows = app.messages(&theirs.conversation_id.to_string()).await;
    let rows: Vec<_> = rows.iter().map(|m| (m.id, m.user_id.as_str(), m.content.as_str(), m.status.as_str())).collect();
    assert_eq!(
        rows,
        [
            (theirs.user_message_id, owner.as_str(), "mine", "complete"),
            (theirs.assistant_message_id, owner.as_str(), "", "streaming"),
            (ids[2].user_message_id, owner.as_str(), "mine again", "complete"),
            (ids[2].assistant_message_id, owner.as_str(), "", "streaming"),
            (ids[4].user_message_id, owner.as_str(), "and once more", "complete"),
            (ids[4].assistant_message_id, owner.as_str(), "", "streaming"),
        ]
    );
    let conversation = entity::conversation::Entity::find_by_id(theirs.conversation_id).one(&app.state.db).await.unwrap().unwrap();
    // The later of two turns in one conversation wins, as if written one after the other.
    assert_eq!(
        (conversation.user_id.as_str(), conversation.active_leaf_id, conversation.preset.as_deref()),
        (owner.as_str(), Some(ids[4].assistant_message_id), Some("brief"))
    );
    assert!(store::find_message(&app.state.db, &intruder, ids[1].user_message_id).await.unwrap().is_none());
    for (id, who, text) in [(ids[0], &other, "a new one"), (ids[3], &intruder, "my own")] {
        let rows = app.messages(&id.conversation_id.to_string()).await;
        let rows: Vec<_> = rows.iter().map(|m| (m.id, m.user_id.as_str(), m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(rows, [(id.user_message_id, who.as_str(), "user", text), (id.assistant_message_id, who.as_str(), "assistant", "")]);
    }
}

#[tokio::test]
async fn a_repeated_client_message_id_in_a_batch_fails_only_that_turn_as_a_repeat() {
    let app = spawn_app_with(&[]).await;
    let (u, v) = (user(), user());
    let earlier = store::begin_chat(&app.state.db, new_turn(&u, None, "stored before", Some("k0"))).await.unwrap();
    let writer = Writer::over(app.state.db.clone());
    let ids: Vec<NewIds> = (0..4).map(|_| NewIds::generate()).collect();
    let turns = vec![
        (new_turn(&u, None, "first", Some("k1")), ids[0]),
        (new_turn(&u, None, "first again", Some("k1")), ids[1]),
        (new_turn(&u, None, "stored before, again", Some("k0")), ids[2]),
        (new_turn(&v, None, "the same key, another user", Some("k1")), ids[3]),
    ];
    let results = writer.together(turns).await;
    assert_eq!(writer.batches(), [4]);
    let [first, again, before, other] = <[_; 4]>::try_from(results).unwrap();
    assert_eq!(first.unwrap().assistant_message_id, ids[0].assistant_message_id);
    assert!(matches!(again, Err(StoreError::DuplicateKey)), "{again:?}");
    assert!(matches!(before, Err(StoreError::DuplicateKey)), "{before:?}");
    assert_eq!(other.unwrap().assistant_message_id, ids[3].assistant_message_id);
    // What a repeat is answered with: the earlier turn's ids.
    let found = store::find_turn(&app.state.db, &u, "k1").await.unwrap().unwrap();
    assert_eq!((found.user_message_id, found.assistant_message_id), (ids[0].user_message_id, ids[0].assistant_message_id));
    let found = store::find_turn(&app.state.db, &u, "k0").await.unwrap().unwrap();
    assert_eq!(found.assistant_message_id, earlier.assistant_message_id);
    for refused in [ids[1], ids[2]] {
        assert!(store::find_message(&app.state.db, &u, refused.user_message_id).await.unwrap().is_none());
        assert!(store::find_conversation(&app.state.db, &u, refused.conversation_id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_only_its_turn() {
    let app = spawn_app_with(&[]).await;
    let u = user();
    let writer = Writer::over(app.state.db.clone());
    let ids: Vec<NewIds> = (0..3).map(|_| NewIds::generate()).collect();
    // PostgreSQL refuses U+0000 in text (the engine replaces it before the store).
    let turns = vec![
        (new_turn(&u, None, "good", None), ids[0]),
        (new_turn(&u, None, "a\u{0}b", None), ids[1]),
        (new_turn(&u, None, "good too", None), ids[2]),
    ];
    let results = writer.together(turns).await;
    assert_eq!(writer.batches(), [3]);
    let codes: Vec<_> = results.iter().map(|r| r.as_ref().map(|b| b.assistant_message_id).map_err(|e| e.to_chat_error().code)).collect();
    let refused = if is_postgres(&app) { Err(chatwire::chat::ErrorCode::Internal) } else { Ok(ids[1].assistant_message_id) };
    assert_eq!(codes, [Ok(ids[0].assistant_message_id), refused, Ok(ids[2].assistant_message_id)]);
    for stored in [ids[0], ids[2]] {
        assert_eq!(app.messages(&stored.conversation_id.to_string()).await.len(), 2);
    }
}

/// Prints the round trips per start for 1, 8, 32 and 64 turns at once (docs/BENCHMARKS.md,
/// "Group commit"), and checks the statement counts they come from.
#[tokio::test]
async fn a_batch_costs_the_same_statements_as_one_turn_whatever_its_size() {
    let app = spawn_app_with(&[]).await;
    let mut db = app.state.db.clone();
    let statements = Arc::new(AtomicUsize::new(0));
    let counted = statements.clone();
    store::time_statements(&mut db, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let writer = Writer::over(db);
    let u = user();
    let backend = if is_postgres(&app) { "PostgreSQL" } else { "SQLite" };
    for n in [1usize, 8, 32, 64] {
        for continued in [false, true] {
            let mut turns = Vec::new();
            for i in 0..n {
                let conversation = match continued {
                    true => Some(store::begin_chat(&app.state.db, new_turn(&u, None, "earlier", None)).await.unwrap().conversation_id),
                    false => None,
                };
                turns.push((new_turn(&u, conversation, &format!("turn {i}"), None), NewIds::generate()));
            }
            let before = statements.load(Ordering::Relaxed);
            let (results, elapsed) = writer.timed(turns).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let counted = statements.load(Ordering::Relaxed) - before;
            // At most MAX_BATCH turns a transaction: 64 turns are two batches.
            let batches = n.div_ceil(store::MAX_BATCH);
            assert_eq!(counted, 2 * batches, "{n} turns, continued: {continued}: the conversations' statement and the messages' per batch");
            // BEGIN and COMMIT are round trips too (the statement callback does not see them).
            let trips = counted + 2 * batches;
            println!(
                "group commit on {backend}: {n:2} turns at once ({}), {batches} transaction(s): {counted} statements + BEGIN + COMMIT = {trips} round trips, {:.2} per start (before: 4); {:.2} ms in all",
                if continued { "continued conversations" } else { "new conversations" },
                trips as f64 / n as f64,
                elapsed.as_secs_f64() * 1000.0,
            );
        }
    }
    assert_eq!(writer.batches(), [1, 1, 8, 8, 32, 32, 32, 32, 32, 32]);
    // Timed, not asserted: 64 turns one after the other, each alone in its transaction,
    // straight to the store (as before group commit) and through the idle writer.
    let started = std::time::Instant::now();
    for i in 0..64 {
        store::begin_chat(&app.state.db, new_turn(&u, None, &format!("alone {i}"), None)).await.unwrap();
    }
    let direct = started.elapsed();
    let started = std::time::Instant::now();
    for i in 0..64 {
        writer.turns.write(new_turn(&u, None, &format!("idle {i}"), None), NewIds::generate()).await.unwrap();
    }
    let idle = started.elapsed();
    assert_eq!(writer.batches().len(), 10 + 64, "an idle writer writes each turn alone");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "group commit on {backend}: 64 turns one after the other: {:.2} ms straight to the store, {:.2} ms through the idle writer",
        ms(direct),
        ms(idle)
    );
}
