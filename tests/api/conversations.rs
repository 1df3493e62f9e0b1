//! Conversations as trees through the real socket client: edit and regenerate make
//! siblings, a start continues from the active leaf or from `parentMessageId`, the model
//! is sent the branch and never its siblings, `chat:history` returns the tree, and
//! `chat:delete` removes a subtree (stopping an answer running in it).

use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::{client::Client, helpers::*};

/// One turn as the client saw it.
struct Turn {
    ack: Value,
    /// `chat:user-message`, when one came.
    user_message: Option<Value>,
}

/// Sends `event`, then reads its events up to the answer's `chat:end`.
async fn turn(client: &mut Client, event: &str, payload: Value) -> Turn {
    let ack = client.emit_with_ack(event, payload).await;
    assert_eq!(ack["ok"], json!(true), "{event}: {ack}");
    let (end, before) = client.until("chat:end").await;
    assert_eq!(end["messageId"], ack["messageId"]);
    let user_message = before.into_iter().find(|(name, _)| name == "chat:user-message").map(|(_, data)| data);
    if let Some(m) = &user_message {
        assert_eq!(m["messageId"], ack["userMessageId"]);
        assert_eq!(m["parentMessageId"], ack["parentMessageId"], "chat:user-message names the same parent as the ack");
    }
    Turn { ack, user_message }
}

/// The `(role, content)` pairs of the upstream request `index`.
fn sent(app: &TestApp, index: usize) -> Vec<(String, String)> {
    let requests = app.mock().requests();
    let messages = requests[index]["messages"].as_array().unwrap().clone();
    messages.iter().map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap().to_owned())).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(r, c)| ((*r).to_owned(), (*c).to_owned())).collect()
}

fn id(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn edits_regenerates_and_a_side_branch_each_send_the_model_their_branch_only() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;

    let first = turn(&mut client, "chat:start", json!({ "message": "q1" })).await;
    assert_eq!(first.ack["parentMessageId"], Value::Null);
    assert_eq!(first.user_message.as_ref().map(|m| m["parentMessageId"].clone()), Some(Value::Null));
    let conversation = id(&first.ack["conversationId"]);
    let (q1, a1) = (id(&first.ack["userMessageId"]), id(&first.ack["messageId"]));

    // A start on the conversation continues from its active leaf.
    let second = turn(&mut client, "chat:start", json!({ "message": "q2", "conversationId": conversation })).await;
    assert_eq!(id(&second.ack["parentMessageId"]), a1);
    let (q2, a2) = (id(&second.ack["userMessageId"]), id(&second.ack["messageId"]));
    assert_eq!(sent(&app, 1), pairs(&[("user", "q1"), ("assistant", ANSWER), ("user", "q2")]));

    // Two edits of q2: siblings of q2 under a1; the model never sees q2 or its answer.
    let mut edits = Vec::new();
    for (n, text) in ["q2 edited", "q2 edited again"].into_iter().enumerate() {
        let edit = turn(&mut client, "chat:edit", json!({ "messageId": q2, "message": text })).await;
        assert_eq!(id(&edit.ack["parentMessageId"]), a1);
        assert_eq!(id(&edit.ack["conversationId"]), conversation);
        assert!(edit.user_message.is_some(), "an edit stores a new question");
        assert_eq!(sent(&app, 2 + n), pairs(&[("user", "q1"), ("assistant", ANSWER), ("user", text)]));
        edits.push((id(&edit.ack["userMessageId"]), id(&edit.ack["messageId"])));
    }
    let (q2b, a2b) = edits[0].clone();

    // Two regenerates of the first edit's answer: siblings of it under its question.
    let mut regenerated = Vec::new();
    for n in 0..2 {
        let again = turn(&mut client, "chat:regenerate", json!({ "messageId": a2b })).await;
        assert_eq!(id(&again.ack["parentMessageId"]), q2b);
        assert_eq!(id(&again.ack["userMessageId"]), q2b);
        assert!(again.user_message.is_none(), "a regenerate stores no question");
        assert_eq!(sent(&app, 4 + n), pairs(&[("user", "q1"), ("assistant", ANSWER), ("user", "q2 edited")]));
        regenerated.push(id(&again.ack["messageId"]));
    }

    // Continuing from the first branch's answer, though another branch is active.
    let side = turn(&mut client, "chat:start", json!({ "message": "q3", "conversationId": conversation, "parentMessageId": a2 })).await;
    assert_eq!(id(&side.ack["parentMessageId"]), a2);
    assert_eq!(sent(&app, 6), pairs(&[("user", "q1"), ("assistant", ANSWER), ("user", "q2"), ("assistant", ANSWER), ("user", "q3")]));
    assert!(side.user_message.is_some());
    let (q3, a3) = (id(&side.ack["userMessageId"]), id(&side.ack["messageId"]));

    // The tree as chat:history tells it, and as stored.
    let history = client.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    assert_eq!(history["ok"], json!(true));
    assert_eq!(id(&history["activeLeafId"]), a3);
    let told: Vec<(String, Value, String, bool)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (id(&m["id"]), m["parentId"].clone(), id(&m["role"]), m["active"].as_bool().unwrap()))
        .collect();
    let (q2c, a2c) = edits[1].clone();
    let expected = [
        (q1.clone(), Value::Null, "user", true),
        (a1.clone(), json!(q1), "assistant", true),
        (q2.clone(), json!(a1), "user", true),
        (a2.clone(), json!(q2), "assistant", true),
        (q2b.clone(), json!(a1), "user", false),
        (a2b.clone(), json!(q2b), "assistant", false),
        (q2c, json!(a1), "user", false),
        (a2c, json!(edits[1].0), "assistant", false),
        (regenerated[0].clone(), json!(q2b), "assistant", false),
        (regenerated[1].clone(), json!(q2b), "assistant", false),
        (q3.clone(), json!(a2), "user", true),
        (a3.clone(), json!(q3), "assistant", true),
    ];
    let expected: Vec<(String, Value, String, bool)> = expected.into_iter().map(|(i, p, r, a)| (i, p, r.to_owned(), a)).collect();
    assert_eq!(told, expected);
    for m in history["messages"].as_array().unwrap() {
        assert_eq!(m["attachments"], json!([]));
        assert_eq!(m["status"], json!("complete"));
    }

    let rows = app.messages(&conversation).await;
    let stored: Vec<(String, Value)> =
        rows.iter().map(|m| (m.id.to_string(), m.parent_id.map_or(Value::Null, |p| json!(p.to_string())))).collect();
    let told_links: Vec<(String, Value)> = told.iter().map(|(i, p, _, _)| (i.clone(), p.clone())).collect();
    assert_eq!(stored, told_links, "the stored tree is the one the client was told");
    // Each answer records how many earlier messages went with its question.
    let context: Vec<Option<i32>> = rows.iter().filter(|m| m.role == "assistant").map(|m| m.context_messages).collect();
    assert_eq!(context, vec![Some(0), Some(2), Some(2), Some(2), Some(2), Some(2), Some(4)]);
    let stored_leaf = entity::Conversation::find_by_id(uuid::Uuid::parse_str(&conversation).unwrap())
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .active_leaf_id;
    assert_eq!(stored_leaf.map(|l| l.to_string()), Some(a3));
}

/// Reads events until the final event of answer `message_id`.
async fn until_final_of(client: &mut Client, message_id: &Value) -> (String, Value) {
    loop {
        let (name, data) = client.next_event().await;
        if matches!(name.as_str(), "chat:end" | "chat:stopped" | "chat:error") && &data["messageId"] == message_id {
            return (name, data);
        }
    }
}

#[tokio::test]
async fn edit_and_regenerate_are_busy_while_an_answer_runs_in_the_conversation() {
    // 200 ms a token: the second answer is still running when the other socket asks.
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "200")]).await;
    let me = user();
    let mut first = app.client(&me).await;
    let mut other = app.client(&me).await;
    let started = first.emit_with_ack("chat:start", json!({ "message": "q1", "maxTokens": 1 })).await;
    until_final_of(&mut first, &started["messageId"]).await;
    let conversation = started["conversationId"].clone();
    let running = first.emit_with_ack("chat:start", json!({ "message": "q2", "conversationId": conversation })).await;
    assert_eq!(running["ok"], json!(true));

    for (event, payload) in [
        ("chat:edit", json!({ "messageId": started["userMessageId"], "message": "q1 again" })),
        ("chat:regenerate", json!({ "messageId": started["messageId"] })),
    ] {
        let refused = other.emit_with_ack(event, payload).await;
        assert_eq!(refused, json!({ "ok": false, "error": { "code": "BUSY", "message": "an answer is running in this conversation" } }));
        let (error, _) = other.until("chat:error").await;
        assert_eq!(error["code"], json!("BUSY"));
    }
    // Another user's message reads as missing; a question cannot be regenerated, nor an answer edited.
    let mut stranger = app.client(&user()).await;
    let missing = stranger.emit_with_ack("chat:regenerate", json!({ "messageId": started["messageId"] })).await;
    assert_eq!(missing["error"]["code"], json!("NOT_FOUND"));
    let wrong = other.emit_with_ack("chat:edit", json!({ "messageId": started["messageId"], "message": "x" })).await;
    assert_eq!(wrong["error"]["code"], json!("INVALID_PARAMS"));
    let wrong = other.emit_with_ack("chat:regenerate", json!({ "messageId": started["userMessageId"] })).await;
    assert_eq!(wrong["error"]["code"], json!("INVALID_PARAMS"));
    let hidden = stranger.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    assert_eq!(hidden["error"]["code"], json!("NOT_FOUND"));

    assert_eq!(until_final_of(&mut first, &running["messageId"]).await.0, "chat:end");
    // Once it has ended, the same edit goes through, on the same socket that was refused.
    let edited = other.emit_with_ack("chat:edit", json!({ "messageId": started["userMessageId"], "message": "q1 again" })).await;
    assert_eq!(edited["ok"], json!(true), "{edited}");
    assert_eq!(edited["parentMessageId"], Value::Null, "q1 is a root, and so is its edit");
}

#[tokio::test]
async fn deleting_a_subtree_stops_the_answer_running_in_it_and_moves_the_active_leaf_to_the_parent() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "200")]).await;
    let me = user();
    let mut client = app.client(&me).await;
    let mut other = app.client(&me).await;
    let first = client.emit_with_ack("chat:start", json!({ "message": "q1", "maxTokens": 1 })).await;
    until_final_of(&mut client, &first["messageId"]).await;
    let conversation = id(&first["conversationId"]);
    let running = client.emit_with_ack("chat:start", json!({ "message": "q2", "conversationId": conversation })).await;
    assert_eq!(running["ok"], json!(true));

    let deleted = other.emit_with_ack("chat:delete", json!({ "messageId": running["userMessageId"] })).await;
    assert_eq!(
        deleted,
        json!({
            "ok": true,
            "conversationId": conversation,
            "deleted": [running["userMessageId"], running["messageId"]],
            "activeLeafId": first["messageId"],
        })
    );
    // The running answer was stopped (and stored) before its row went.
    assert_eq!(until_final_of(&mut client, &running["messageId"]).await.0, "chat:stopped");
    let rows: Vec<String> = app.messages(&conversation).await.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(rows, vec![id(&first["userMessageId"]), id(&first["messageId"])]);

    let history = client.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    assert_eq!(history["activeLeafId"], first["messageId"]);
    // The next start continues from the parent.
    let next = client.emit_with_ack("chat:start", json!({ "message": "q3", "conversationId": conversation, "maxTokens": 1 })).await;
    assert_eq!(next["parentMessageId"], first["messageId"]);
    until_final_of(&mut client, &next["messageId"]).await;

    let gone = other.emit_with_ack("chat:delete", json!({ "messageId": running["messageId"] })).await;
    assert_eq!(gone["error"]["code"], json!("NOT_FOUND"));
    let bad = other.emit_with_ack("chat:delete", json!({ "messageId": "nope" })).await;
    assert_eq!(bad["error"]["code"], json!("INVALID_PARAMS"));
}

#[tokio::test]
async fn deleting_a_root_moves_the_active_leaf_to_the_newest_message_left_and_the_ack_says_so() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    let first = turn(&mut client, "chat:start", json!({ "message": "q1" })).await;
    let conversation = id(&first.ack["conversationId"]);
    // An edit of the first question is a second root.
    let edit = turn(&mut client, "chat:edit", json!({ "messageId": first.ack["userMessageId"], "message": "q1 again" })).await;
    assert_eq!(edit.ack["parentMessageId"], Value::Null);

    let deleted = client.emit_with_ack("chat:delete", json!({ "messageId": edit.ack["userMessageId"] })).await;
    let expected = json!({
        "ok": true,
        "conversationId": conversation,
        "deleted": [edit.ack["userMessageId"], edit.ack["messageId"]],
        "activeLeafId": first.ack["messageId"],
    });
    assert_eq!(deleted, expected);
    let history = client.emit_with_ack("chat:history", json!({ "conversationId": conversation })).await;
    assert_eq!(history["activeLeafId"], first.ack["messageId"], "the leaf the ack named");
    let active: Vec<(Value, Value)> =
        history["messages"].as_array().unwrap().iter().map(|m| (m["id"].clone(), m["active"].clone())).collect();
    assert_eq!(active, [(first.ack["userMessageId"].clone(), json!(true)), (first.ack["messageId"].clone(), json!(true))]);
    let next = turn(&mut client, "chat:start", json!({ "message": "q2", "conversationId": conversation })).await;
    assert_eq!(next.ack["parentMessageId"], first.ack["messageId"]);

    // The last root gone, nothing is left and there is no leaf.
    let all = client.emit_with_ack("chat:delete", json!({ "messageId": first.ack["userMessageId"] })).await;
    assert_eq!((all["ok"].clone(), all["activeLeafId"].clone()), (json!(true), Value::Null));
    assert!(app.messages(&conversation).await.is_empty());
}

#[tokio::test]
async fn of_two_edits_arriving_together_from_two_sockets_one_runs_and_the_other_is_busy() {
    use entity::conversation;
    use sea_orm::{ColumnTrait, QueryFilter, TransactionTrait, sea_query::Expr};

    // Three pooled connections: the test holds the conversation's row in a write of its
    // own, so the first edit is placed (its upstream request goes out) and then waits to
    // store its turn, while the second edit can still read the conversation.
    let app = spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "3")]).await;
    let me = user();
    let (mut first, mut second) = (app.client(&me).await, app.client(&me).await);
    let q1 = turn(&mut first, "chat:start", json!({ "message": "q1" })).await;
    let conversation = id(&q1.ack["conversationId"]);
    // The title is written to the conversation's row after the answer: not while it is held.
    assert_eq!(first.title().await["conversationId"], json!(conversation));
    let question = q1.ack["userMessageId"].clone();
    let asked = app.mock().requests().len();

    let held = app.state.db.begin().await.unwrap();
    conversation::Entity::update_many()
        .col_expr(conversation::Column::Title, Expr::col(conversation::Column::Title))
        .filter(conversation::Column::Id.eq(uuid::Uuid::parse_str(&conversation).unwrap()))
        .exec(&held)
        .await
        .unwrap();
    let edit = json!({ "messageId": question, "message": "first edit" });
    let running = tokio::spawn(async move {
        let ack = first.emit_with_ack("chat:edit", edit).await;
        (first, ack)
    });
    until("the first edit placed and its upstream opened", async || app.mock().requests().len() > asked).await;

    // The first edit's answer is not running yet (its turn is being stored): still BUSY.
    let busy = json!({ "ok": false, "error": { "code": "BUSY", "message": "an answer is running in this conversation" } });
    let refused = second.emit_with_ack("chat:edit", json!({ "messageId": question, "message": "second edit" })).await;
    assert_eq!(refused, busy);
    let refused = second.emit_with_ack("chat:regenerate", json!({ "messageId": q1.ack["messageId"] })).await;
    assert_eq!(refused, busy);
    held.rollback().await.unwrap();

    let (mut first, ack) = running.await.unwrap();
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let (end, _) = first.until("chat:end").await;
    assert_eq!(end["messageId"], ack["messageId"]);
    assert_eq!(app.mock().requests().len(), asked + 1, "the refused ones asked the model nothing");
    let rows = app.messages(&conversation).await;
    let mut rows: Vec<_> =
        rows.iter().map(|m| (m.id.to_string(), m.parent_id.map(|p| p.to_string()), m.role.as_str(), m.status.as_str())).collect();
    let (a1, q2, a2) = (id(&q1.ack["messageId"]), id(&ack["userMessageId"]), id(&ack["messageId"]));
    let mut expected = vec![
        (id(&question), None, "user", "complete"),
        (a1, Some(id(&question)), "assistant", "complete"),
        (q2.clone(), None, "user", "complete"),
        (a2, Some(q2), "assistant", "complete"),
    ];
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected, "q1, its answer, the first edit and its answer; nothing of the second");
}
