//! SQLite files (SQLite runs only): what a single file needs to stay fast and whole.

use std::time::Duration;

use sea_orm::{Database, EntityTrait};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

/// A stored answer reaches the database file itself, not only its write-ahead log,
/// within a second or so: a background connection copies the log back (the automatic
/// copy would wait for 1,000 pages, and make a `chat:start` pay for its fsyncs).
#[tokio::test]
async fn stored_answers_are_copied_from_the_write_ahead_log_into_the_database_file() {
    let app = spawn_app().await;
    let Some(file) = app.state.config.database_url.strip_prefix("sqlite://").and_then(|u| u.split('?').next()) else {
        return; // PostgreSQL run
    };
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hi" })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    let id = Uuid::parse_str(ack["messageId"].as_str().unwrap()).unwrap();

    // A copy of the database file alone, without its -wal and -shm files, holds only
    // what has been checkpointed into it.
    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("copy.db");
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::copy(file, &copied).unwrap();
        let Ok(db) = Database::connect(format!("sqlite://{}?mode=ro", copied.display())).await else {
            continue;
        };
        let row = entity::Message::find_by_id(id).one(&db).await;
        db.close().await.unwrap();
        if let Ok(Some(row)) = row
            && row.status == "complete"
        {
            assert_eq!(row.content, ANSWER);
            return;
        }
    }
    panic!("the answer never left the write-ahead log");
}
