//! `chatwire import` as a process: exact rows, the report of bad lines, the summary,
//! idempotence, `--strict`, an imported conversation continued over `/ai`, and the
//! documented export of the NestJS peer's TypeORM tables (PostgreSQL runs only).

use std::{
    path::Path,
    process::{Command, Output},
};

use chrono::{DateTime, Utc};
use entity::{conversation, message};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{helpers::*, schema};

/// A database for one test: a fresh PostgreSQL database when `DATABASE_URL` names a
/// server, else a SQLite file in `dir`.
async fn database(dir: &Path) -> String {
    match fresh_postgres_database().await {
        Some(url) => url,
        None => format!("sqlite://{}/chatwire.db?mode=rwc", dir.display()),
    }
}

fn import(url: &str, file: &Path, strict: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatwire"));
    command.arg("import").arg("--jsonl").arg(file);
    if strict {
        command.arg("--strict");
    }
    command.env_clear().envs([("DATABASE_URL", url), ("RUST_LOG", "off")]).output().expect("the chatwire binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// chatwire's pool on the test's database (its schema when PostgreSQL).
async fn open(url: &str) -> DatabaseConnection {
    chatwire::store::connect(url, Some(2), "chatwire").await.expect("the database")
}

/// Every conversation, oldest first, after checking that each holds one branch: each
/// message's parent is the message before it in time, and the active leaf is the last.
async fn conversations(db: &DatabaseConnection) -> Vec<conversation::Model> {
    let rows = conversation::Entity::find().order_by_asc(conversation::Column::CreatedAt).all(db).await.unwrap();
    for c in &rows {
        let messages = messages_of(db, c.id).await;
        let parents: Vec<Option<Uuid>> = messages.iter().map(|m| m.parent_id).collect();
        let previous: Vec<Option<Uuid>> = std::iter::once(None).chain(messages.iter().map(|m| Some(m.id))).take(messages.len()).collect();
        assert_eq!(parents, previous, "conversation {} is one branch in time order", c.id);
        assert_eq!(c.active_leaf_id, messages.last().map(|m| m.id), "the active leaf of {} is its last message", c.id);
    }
    rows.into_iter().map(|c| conversation::Model { active_leaf_id: None, ..c }).collect()
}

/// A conversation's messages in time order.
async fn messages_of(db: &DatabaseConnection, conversation_id: Uuid) -> Vec<message::Model> {
    message::Entity::find()
        .filter(message::Column::ConversationId.eq(conversation_id))
        .order_by_asc(message::Column::CreatedAt)
        .order_by_asc(message::Column::Id)
        .all(db)
        .await
        .unwrap()
}

async fn all_messages(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find().order_by_asc(message::Column::Id).all(db).await.unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const A: &str = "3f2b8c1e-6d4a-4e9b-a7c2-1b0e5f9d8a76";
const A_Q1: &str = "9e000000-0000-4000-8000-00000000000a";
const A_R1: &str = "1a000000-0000-4000-8000-00000000000b";
const A_Q2: &str = "f0000000-0000-4000-8000-00000000000c";
const A_R2: &str = "00000000-0000-4000-8000-00000000000d";
/// 81 characters, some of them several bytes long.
const LONG_QUESTION: &str = "Ünïcödé question that runs past eighty characters so its title is cut there: 😀😀😀😀😀";

/// Three users, five conversations, fourteen lines of which two are bad (7 and 12) and
/// one blank (15, not counted).
fn history() -> String {
    let lines = [
        // Conversation A (alice), UUID ids out of time order.
        json!({"id": A_Q1, "userId": "alice", "conversationId": A, "role": "user", "content": "First question", "createdAt": "2025-01-10T08:00:00Z"}),
        json!({"id": A_R1, "userId": "alice", "conversationId": A, "role": "assistant", "content": "First answer", "model": "gpt-4", "promptTokens": 5, "completionTokens": 2, "totalTokens": 7, "createdAt": "2025-01-10T08:00:03.5Z"}),
        json!({"id": A_Q2, "userId": "alice", "conversationId": A, "role": "user", "content": "Second question", "createdAt": "2025-01-10T09:00:05+01:00"}),
        json!({"id": A_R2, "userId": "alice", "conversationId": A, "role": "assistant", "content": "Second answer", "model": "gpt-4", "promptTokens": 12, "completionTokens": 3, "totalTokens": 15, "createdAt": "2025-01-10T08:00:09Z"}),
        // c-2 (alice): ids that are not UUIDs.
        json!({"id": "m-1", "userId": "alice", "conversationId": "c-2", "role": "user", "content": "Hello there", "createdAt": "2025-01-11T10:00:00Z"}),
        json!({"id": "m-2", "userId": "alice", "conversationId": "c-2", "role": "assistant", "content": "Hi!", "model": null, "createdAt": "2025-01-11T10:00:01Z"}),
        // Line 7: bad role.
        json!({"id": "m-3", "userId": "alice", "conversationId": "c-2", "role": "tool", "content": "x", "createdAt": "2025-01-11T10:00:02Z"}),
        // c-3 (bob): integer ids, a system message.
        json!({"id": 101, "userId": "bob", "conversationId": 3, "role": "system", "content": "Be terse.", "createdAt": "2025-01-12T00:00:00Z"}),
        json!({"id": 102, "userId": "bob", "conversationId": 3, "role": "user", "content": "Why?", "createdAt": "2025-01-12T00:00:01Z"}),
        json!({"id": 103, "userId": "bob", "conversationId": 3, "role": "assistant", "content": "Because.", "createdAt": "2025-01-12T00:00:02Z"}),
        // c-4 (bob): no id.
        json!({"userId": "bob", "conversationId": "c-4", "role": "user", "content": "No id here", "createdAt": "2025-01-13T00:00:00Z"}),
        // Line 12: c-2 is alice's.
        json!({"id": "m-9", "userId": "carol", "conversationId": "c-2", "role": "user", "content": "Mine now?", "createdAt": "2025-01-13T00:00:00Z"}),
        // c-5 (carol): the answer comes first in the file.
        json!({"id": "c5-r", "userId": "carol", "conversationId": "c-5", "role": "assistant", "content": "Answered", "createdAt": "2025-01-14T12:00:30Z"}),
        json!({"id": "c5-q", "userId": "carol", "conversationId": "c-5", "role": "user", "content": LONG_QUESTION, "createdAt": "2025-01-14T12:00:00Z"}),
    ];
    let mut file: String = lines.iter().map(|l| format!("{l}\n")).collect();
    file.push('\n');
    file
}

const REPORT: &str = "line 7: role must be \"user\", \"assistant\" or \"system\", not \"tool\"\n\
                      line 12: conversation \"c-2\" belongs to another user than \"carol\"\n";

#[tokio::test]
async fn a_jsonl_history_is_imported_once_with_bad_lines_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history()).unwrap();

    let out = import(&url, &file, false);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), REPORT);
    assert_eq!(text(&out.stdout), "imported 12 lines, 0 already present, skipped 2\n");

    let db = open(&url).await;
    let (a, c2, c3, c4, c5) = (
        Uuid::parse_str(A).unwrap(),
        chatwire::import::mapped("c-2"),
        chatwire::import::mapped("3"),
        chatwire::import::mapped("c-4"),
        chatwire::import::mapped("c-5"),
    );
    assert_eq!(c2, Uuid::new_v5(&chatwire::import::ID_NAMESPACE, b"c-2"), "other ids map to UUIDv5s");
    let expected_title: String = LONG_QUESTION.chars().take(80).collect();
    let conversation = |id, user: &str, title: &str, created: &str, updated: &str| conversation::Model {
        id,
        user_id: user.into(),
        title: title.into(),
        created_at: at(created),
        updated_at: at(updated),
        active_leaf_id: None,
        preset: None,
    };
    assert_eq!(
        conversations(&db).await,
        [
            conversation(a, "alice", "First question", "2025-01-10T08:00:00Z", "2025-01-10T08:00:09Z"),
            conversation(c2, "alice", "Hello there", "2025-01-11T10:00:00Z", "2025-01-11T10:00:01Z"),
            conversation(c3, "bob", "Why?", "2025-01-12T00:00:00Z", "2025-01-12T00:00:02Z"),
            conversation(c4, "bob", "No id here", "2025-01-13T00:00:00Z", "2025-01-13T00:00:00Z"),
            conversation(c5, "carol", &expected_title, "2025-01-14T12:00:00Z", "2025-01-14T12:00:30Z"),
        ]
    );
    assert_eq!(expected_title.chars().count(), 80);

    let summary = |rows: Vec<message::Model>| -> Vec<(String, String, String, String)> {
        rows.into_iter().map(|m| (m.id.to_string(), m.user_id, m.role, m.content)).collect()
    };
    let s = |x: &str| x.to_owned();
    assert_eq!(
        summary(messages_of(&db, a).await),
        [
            (s(A_Q1), s("alice"), s("user"), s("First question")),
            (s(A_R1), s("alice"), s("assistant"), s("First answer")),
            (s(A_Q2), s("alice"), s("user"), s("Second question")),
            (s(A_R2), s("alice"), s("assistant"), s("Second answer")),
        ],
        "UUID ids kept, in time order (09:00:05+01:00 is 08:00:05Z), not id order"
    );
    let mapped = |id: &str| chatwire::import::mapped(id).to_string();
    assert_eq!(
        summary(messages_of(&db, c2).await),
        [(mapped("m-1"), s("alice"), s("user"), s("Hello there")), (mapped("m-2"), s("alice"), s("assistant"), s("Hi!"))]
    );
    assert_eq!(
        summary(messages_of(&db, c3).await),
        [
            (mapped("101"), s("bob"), s("system"), s("Be terse.")),
            (mapped("102"), s("bob"), s("user"), s("Why?")),
            (mapped("103"), s("bob"), s("assistant"), s("Because.")),
        ]
    );
    let c4_rows = messages_of(&db, c4).await;
    assert_eq!(c4_rows.len(), 1);
    assert_eq!((c4_rows[0].user_id.as_str(), c4_rows[0].content.as_str()), ("bob", "No id here"));
    assert_eq!(c4_rows[0].id.get_version_num(), 5, "an id made from the content");
    assert_eq!(
        summary(messages_of(&db, c5).await),
        [(mapped("c5-q"), s("carol"), s("user"), s(LONG_QUESTION)), (mapped("c5-r"), s("carol"), s("assistant"), s("Answered"))]
    );

    let all = all_messages(&db).await;
    assert_eq!(all.len(), 12);
    assert!(all.iter().all(|m| m.status == "complete" && m.finish_reason.is_none() && m.client_message_id.is_none()));
    assert!(all.iter().all(|m| m.created_at == m.updated_at));
    let answer = all.iter().find(|m| m.id.to_string() == A_R2).unwrap();
    assert_eq!(
        (answer.model.as_deref(), answer.prompt_tokens, answer.completion_tokens, answer.total_tokens, answer.created_at),
        (Some("gpt-4"), Some(12), Some(3), Some(15), at("2025-01-10T08:00:09Z"))
    );
    let untold = all.iter().find(|m| m.id.to_string() == mapped("m-2")).unwrap();
    assert_eq!((untold.model.as_deref(), untold.total_tokens), (None, None));
    let (before_conversations, before_messages) = (conversations(&db).await, all);

    // The same file again: nothing new, the same report.
    let again = import(&url, &file, false);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", text(&again.stderr));
    assert_eq!(text(&again.stderr), REPORT);
    assert_eq!(text(&again.stdout), "imported 0 lines, 12 already present, skipped 2\n");
    assert_eq!(conversations(&db).await, before_conversations);
    assert_eq!(all_messages(&db).await, before_messages);
}

#[tokio::test]
async fn strict_imports_nothing_when_a_line_is_bad_and_everything_when_none_is() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history()).unwrap();

    let out = import(&url, &file, true);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("{REPORT}chatwire: nothing imported: 2 bad lines (--strict)\n"));
    assert_eq!(text(&out.stdout), "");
    let db = open(&url).await;
    assert_eq!(conversations(&db).await, []);
    assert_eq!(all_messages(&db).await, []);

    // Only the ownership check needs the database: a file whose one bad line is that.
    let only_owner: String = history().lines().filter(|l| !l.contains("\"tool\"")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &only_owner).unwrap();
    let out = import(&url, &file, true);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "line 11: conversation \"c-2\" belongs to another user than \"carol\"\n\
         chatwire: nothing imported: 1 bad lines (--strict)\n"
    );
    assert_eq!(all_messages(&db).await, []);

    let clean: String = only_owner.lines().filter(|l| !l.contains("carol") || l.contains("c-5")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, clean).unwrap();
    let out = import(&url, &file, true);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout), "imported 12 lines, 0 already present, skipped 0\n");
    assert_eq!(conversations(&db).await.len(), 5);
    assert_eq!(all_messages(&db).await.len(), 12);
}

#[tokio::test]
async fn an_imported_conversation_continues_over_ai_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history()).unwrap();
    assert_eq!(import(&url, &file, false).status.code(), Some(0));

    let app = spawn_app_with(&[("DATABASE_URL", &url)]).await;
    let mut alice = app.client("alice").await;
    let ack = alice.emit_with_ack("chat:start", json!({ "message": "Third question", "conversationId": A })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["conversationId"], A);
    let answer = read_answer(&mut alice).await;
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.order[0], "chat:user-message", "no chat:conversation: it exists");
    assert_eq!(
        app.mock().requests()[0]["messages"],
        json!([
            { "role": "user", "content": "First question" },
            { "role": "assistant", "content": "First answer" },
            { "role": "user", "content": "Second question" },
            { "role": "assistant", "content": "Second answer" },
            { "role": "user", "content": "Third question" },
        ]),
        "the imported history in time order, then the new message"
    );

    // A conversation imported under a non-UUID id continues under its mapped id; the
    // system message of the file is part of the history.
    let mut bob = app.client("bob").await;
    let c3 = chatwire::import::mapped("3").to_string();
    let ack = bob.emit_with_ack("chat:start", json!({ "message": "Really?", "conversationId": c3 })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    read_answer(&mut bob).await;
    assert_eq!(
        app.mock().requests()[1]["messages"],
        json!([
            { "role": "system", "content": "Be terse." },
            { "role": "user", "content": "Why?" },
            { "role": "assistant", "content": "Because." },
            { "role": "user", "content": "Really?" },
        ])
    );

    // Another user may not continue it.
    let mut carol = app.client("carol").await;
    let refused = carol.emit_with_ack("chat:start", json!({ "message": "Let me in", "conversationId": A })).await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "NOT_FOUND");

    let db = open(&url).await;
    let rows = messages_of(&db, Uuid::parse_str(A).unwrap()).await;
    assert_eq!(rows.len(), 6);
    assert_eq!((rows[4].content.as_str(), rows[5].content.as_str(), rows[5].status.as_str()), ("Third question", ANSWER, "complete"));
}

/// The `\copy` line of docs/IMPORT.md, and the SELECT inside it.
fn documented_export() -> (String, String) {
    let doc = include_str!("../../docs/IMPORT.md");
    let line = doc.lines().find(|l| l.starts_with("\\copy (")).expect("docs/IMPORT.md has a \\copy line").to_owned();
    let select = line
        .strip_prefix("\\copy (")
        .and_then(|rest| rest.split_once(") TO 'history.jsonl'"))
        .map(|(select, _)| select.to_owned())
        .expect("the \\copy line exports a SELECT to 'history.jsonl'");
    (line, select)
}

#[tokio::test]
async fn the_documented_export_of_typeorm_tables_imports_into_chatwire() {
    let Some((url, nest)) = schema::typeorm_database().await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    let public_before = (schema::dump(&nest, "public.conversations").await, schema::dump(&nest, "public.messages").await);
    let (copy, select) = documented_export();
    let rows = nest.query_all_raw(Statement::from_string(DbBackend::Postgres, select)).await.expect("the documented SELECT runs");
    let lines: Vec<String> = rows.iter().map(|r| r.try_get_by_index::<Value>(0).expect("one JSON column").to_string()).collect();
    assert_eq!(lines.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.jsonl");
    // psql's \copy itself when psql is installed (its output format is the point of the
    // CSV options); the same SELECT's rows otherwise.
    let psql = Command::new("psql").arg("--version").output().is_ok_and(|o| o.status.success());
    if psql {
        let script = dir.path().join("export.psql");
        std::fs::write(&script, format!("{copy}\n")).unwrap();
        let plain_url = url.split_once('?').map_or(url.as_str(), |(base, _)| base);
        let out = Command::new("psql")
            .args([plain_url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "psql: {}", text(&out.stderr));
        let exported = std::fs::read_to_string(&file).unwrap();
        let parsed: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
        let expected: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed, expected, "\\copy writes each object as it is");
    } else {
        eprintln!("psql not installed: writing the documented SELECT's rows instead of running \\copy");
        std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    let out = import(&url, &file, true);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "imported 6 lines, 0 already present, skipped 0\n");

    let db = open(&url).await;
    let conversation = |id: &str, user: &str, title: &str, created: &str, updated: &str| conversation::Model {
        id: Uuid::parse_str(id).unwrap(),
        user_id: user.into(),
        title: title.into(),
        created_at: at(created),
        updated_at: at(updated),
        active_leaf_id: None,
        preset: None,
    };
    assert_eq!(
        conversations(&db).await,
        [
            conversation(
                "0b6f3c52-4a8e-4d2e-9a51-1f0c7e3d9b21",
                "alice",
                "What is Rust?",
                "2025-03-01T09:00:00Z",
                "2025-03-01T09:00:05.25Z"
            ),
            conversation(
                "7d1e9a40-22c3-4f7b-8e6d-5a9b0c1d2e3f",
                "alice",
                "Second thoughts",
                "2025-03-02T10:00:00Z",
                "2025-03-02T10:01:00Z"
            ),
            conversation(
                "f3a2b1c0-9d8e-4f7a-b6c5-d4e3f2a1b0c9",
                "bob",
                "Quotes \"and\" \\backslashes, emoji 😀",
                "2025-03-03T11:00:00Z",
                "2025-03-03T11:00:09.123456Z"
            ),
        ]
    );
    let all = all_messages(&db).await;
    let got: Vec<_> = all
        .iter()
        .map(|m| (m.id.to_string(), m.role.as_str(), m.content.as_str(), m.model.as_deref(), m.total_tokens, m.created_at))
        .collect();
    assert_eq!(
        got,
        [
            (
                "03c0ffee-0000-4000-8000-000000000004".to_owned(),
                "assistant",
                "Line one\nline two\ttabbed",
                Some("gpt-4o"),
                Some(26),
                at("2025-03-02T10:01:00Z")
            ),
            (
                "a1c0ffee-0000-4000-8000-000000000002".to_owned(),
                "assistant",
                "A systems language.",
                Some("gpt-4"),
                Some(14),
                at("2025-03-01T09:00:05.25Z")
            ),
            ("b2c0ffee-0000-4000-8000-000000000003".to_owned(), "user", "Second thoughts", None, None, at("2025-03-02T10:00:00Z")),
            (
                "c4c0ffee-0000-4000-8000-000000000005".to_owned(),
                "user",
                "Quotes \"and\" \\backslashes, emoji 😀",
                None,
                None,
                at("2025-03-03T11:00:00Z")
            ),
            (
                "d5c0ffee-0000-4000-8000-000000000006".to_owned(),
                "assistant",
                "Partial",
                Some("gpt-4"),
                None,
                at("2025-03-03T11:00:09.123456Z")
            ),
            ("e1c0ffee-0000-4000-8000-000000000001".to_owned(), "user", "What is Rust?", None, None, at("2025-03-01T09:00:00Z")),
        ]
    );
    let public_after = (schema::dump(&nest, "public.conversations").await, schema::dump(&nest, "public.messages").await);
    assert_eq!(public_after, public_before, "the TypeORM tables are untouched");
}

#[tokio::test]
async fn repeated_ids_and_malformed_lines_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let url = database(dir.path()).await;
    let file = dir.path().join("history.jsonl");
    let line = |id: &str, conversation: &str, created: &str| {
        json!({"id": id, "userId": "dave", "conversationId": conversation, "role": "user", "content": "Hi", "createdAt": created})
            .to_string()
    };
    let lines = [
        line("m-1", "c-1", "2025-02-01T00:00:00Z"),
        line("m-1", "c-1", "2025-02-01T00:00:00Z"), // the same line again: already present
        line("m-1", "c-9", "2025-02-01T00:00:00Z"), // the id in another conversation
        line("m-2", "c-1", "2025-02-01 00:00:00"),  // no zone
        "{\"id\": \"m-3\",".to_owned(),
        "[1, 2]".to_owned(),
        json!({"id": "m-4", "userId": "", "conversationId": "c-1", "role": "user", "content": "Hi", "createdAt": "2025-02-01T00:00:00Z"}).to_string(),
        json!({"id": "m-5", "userId": "dave", "conversationId": "c-1", "role": "assistant", "content": 7, "createdAt": "2025-02-01T00:00:00Z"}).to_string(),
        json!({"id": "m-6", "userId": "dave", "conversationId": "c-1", "role": "assistant", "content": "ok", "totalTokens": -1, "createdAt": "2025-02-01T00:00:01Z"}).to_string(),
        json!({"id": "m-7", "conversationId": "c-1", "role": "user", "content": "Hi", "createdAt": "2025-02-01T00:00:00Z"}).to_string(),
    ];
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = import(&url, &file, false);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let reported: Vec<&str> = stderr.lines().collect();
    assert_eq!(reported.len(), 8, "{stderr}");
    assert_eq!(reported[0], "line 3: message id \"m-1\" is already used in another conversation");
    assert!(reported[1].starts_with("line 4: createdAt \"2025-02-01 00:00:00\" is not an ISO 8601 time with a zone"), "{stderr}");
    assert!(reported[2].starts_with("line 5: not valid JSON: "), "{stderr}");
    assert_eq!(reported[3], "line 6: not a JSON object");
    assert_eq!(reported[4], "line 7: userId must be a non-empty string or an integer");
    assert_eq!(reported[5], "line 8: content must be a string");
    assert_eq!(reported[6], "line 9: totalTokens must be a whole number from 0 to 2147483647, not -1");
    assert_eq!(reported[7], "line 10: missing userId");
    assert_eq!(text(&out.stdout), "imported 1 lines, 1 already present, skipped 8\n");
    let db = open(&url).await;
    let rows = all_messages(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id, rows[0].conversation_id), (chatwire::import::mapped("m-1"), chatwire::import::mapped("c-1")));
    assert_eq!(conversations(&db).await.len(), 1, "no conversation for c-9");
}
