//! The migration to conversation trees, on a database that holds history from before
//! it: each message's parent becomes the message before it, each conversation's active
//! leaf its last message. On SQLite, and on PostgreSQL when `DATABASE_URL` names one.

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, Database, EntityTrait, QueryOrder,
    sea_query::{Alias, Query},
};
use uuid::Uuid;

use crate::{client::Client, helpers::*};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test]
async fn history_from_before_branches_becomes_one_branch_per_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let url = match fresh_postgres_database().await {
        Some(url) => url,
        None => format!("sqlite://{}/old.db?mode=rwc", dir.path().display()),
    };
    let db = Database::connect(&url).await.unwrap();
    // The schema as it was: every migration before the branches one.
    let before = Migrator::migrations().len() - 1;
    Migrator::up(&db, Some(u32::try_from(before).unwrap())).await.unwrap();

    let (talk, single, empty) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (id, created) in [(talk, "2026-01-01T10:00:00Z"), (single, "2026-01-02T10:00:00Z"), (empty, "2026-01-03T10:00:00Z")] {
        let insert = Query::insert()
            .into_table(Alias::new("conversations"))
            .columns(["id", "user_id", "title", "created_at", "updated_at"].map(Alias::new))
            .values_panic([id.into(), "alice".into(), "old".into(), at(created).into(), at(created).into()])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }
    // Two turns of `talk` (each pair shares its time, told apart by id, as chat:start
    // stores them) written out of order, a message of `single`, none in `empty`.
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let rows = [
        (ids[3], talk, "assistant", "a2", "2026-01-01T10:05:00Z"),
        (ids[0], talk, "user", "q1", "2026-01-01T10:00:00Z"),
        (ids[2], talk, "user", "q2", "2026-01-01T10:05:00Z"),
        (ids[1], talk, "assistant", "a1", "2026-01-01T10:00:00Z"),
        (ids[4], single, "user", "only", "2026-01-02T10:00:00Z"),
    ];
    for (id, conversation, role, content, created) in rows {
        let insert = Query::insert()
            .into_table(Alias::new("messages"))
            .columns(["id", "conversation_id", "user_id", "role", "content", "status", "created_at", "updated_at"].map(Alias::new))
            .values_panic([
                id.into(),
                conversation.into(),
                "alice".into(),
                role.into(),
                content.into(),
                "complete".into(),
                at(created).into(),
                at(created).into(),
            ])
            .to_owned();
        db.execute(&insert).await.unwrap();
    }

    Migrator::up(&db, None).await.unwrap();

    let messages = entity::Message::find().order_by_asc(entity::message::Column::Id).all(&db).await.unwrap();
    type Link = (Uuid, Option<Uuid>, Option<i32>, Option<String>);
    let links: Vec<Link> = messages.iter().map(|m| (m.id, m.parent_id, m.context_messages, m.attachments.clone())).collect();
    assert_eq!(
        links,
        vec![
            (ids[0], None, None, None),
            (ids[1], Some(ids[0]), None, None),
            (ids[2], Some(ids[1]), None, None),
            (ids[3], Some(ids[2]), None, None),
            (ids[4], None, None, None),
        ]
    );
    let conversations = entity::Conversation::find().order_by_asc(entity::conversation::Column::Id).all(&db).await.unwrap();
    let leaves: Vec<(Uuid, Option<Uuid>, Option<String>)> =
        conversations.iter().map(|c| (c.id, c.active_leaf_id, c.preset.clone())).collect();
    assert_eq!(leaves, vec![(talk, Some(ids[3]), None), (single, Some(ids[4]), None), (empty, None, None)]);
    db.close().await.unwrap();

    // The server starts on the migrated database (its tables in `public`, where this
    // test made them) and continues the branch.
    let app = spawn_app_with(&[("DATABASE_URL", &url), ("DATABASE_SCHEMA", "public")]).await;
    let mut client = Client::websocket(app.addr, crate::client::Credentials::token(&token("alice"))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", serde_json::json!({ "message": "q3", "conversationId": talk })).await;
    assert_eq!(ack["ok"], serde_json::json!(true), "{ack}");
    assert_eq!(ack["parentMessageId"], serde_json::json!(ids[3]));
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    let sent: Vec<String> =
        app.mock().requests()[0]["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sent, ["q1", "a1", "q2", "a2", "q3"]);
}
