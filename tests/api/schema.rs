//! chatwire's own PostgreSQL schema (PostgreSQL runs only, apart from the config check):
//! beside a NestJS app's TypeORM `conversations` and `messages` tables in `public`,
//! chatwire works in schema `chatwire` and leaves them alone; replicas that migrate at
//! the same moment all succeed.

use std::{collections::HashMap, process::Stdio};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::json;

use crate::helpers::*;

/// The tables TypeORM's `synchronize` makes on PostgreSQL for the NestJS peer's entities
/// (bench/peers/nestjs/src/modules/ai/entities): camel-case quoted columns, varchar(36)
/// ids, no user on messages. The peer's `datetime` columns are `timestamp` on PostgreSQL.
pub const TYPEORM_TABLES: &str = r#"
CREATE TABLE public."conversations" (
    "id" character varying(36) NOT NULL,
    "userId" character varying NOT NULL,
    "title" character varying,
    "createdAt" TIMESTAMP NOT NULL,
    "updatedAt" TIMESTAMP NOT NULL,
    CONSTRAINT "PK_conversations" PRIMARY KEY ("id")
);
CREATE INDEX "IDX_conversations_userId" ON public."conversations" ("userId");
CREATE TABLE public."messages" (
    "id" character varying(36) NOT NULL,
    "conversationId" character varying(36) NOT NULL,
    "role" character varying NOT NULL,
    "content" text NOT NULL,
    "model" character varying,
    "promptTokens" integer,
    "completionTokens" integer,
    "totalTokens" integer,
    "finishReason" character varying,
    "createdAt" TIMESTAMP NOT NULL,
    CONSTRAINT "PK_messages" PRIMARY KEY ("id"),
    CONSTRAINT "FK_messages_conversation" FOREIGN KEY ("conversationId")
        REFERENCES public."conversations"("id") ON DELETE CASCADE
);
CREATE INDEX "IDX_messages_conversationId_createdAt" ON public."messages" ("conversationId", "createdAt");
"#;

/// Rows as the NestJS peer writes them: two users, three conversations.
pub const TYPEORM_ROWS: &str = r#"
INSERT INTO public."conversations" VALUES
    ('0b6f3c52-4a8e-4d2e-9a51-1f0c7e3d9b21', 'alice', 'What is Rust?', '2025-03-01 09:00:00', '2025-03-01 09:00:05.25'),
    ('7d1e9a40-22c3-4f7b-8e6d-5a9b0c1d2e3f', 'alice', 'Second thoughts', '2025-03-02 10:00:00', '2025-03-02 10:01:00'),
    ('f3a2b1c0-9d8e-4f7a-b6c5-d4e3f2a1b0c9', 'bob', 'Quotes "and" \backslashes', '2025-03-03 11:00:00', '2025-03-03 11:00:09');
INSERT INTO public."messages" VALUES
    ('e1c0ffee-0000-4000-8000-000000000001', '0b6f3c52-4a8e-4d2e-9a51-1f0c7e3d9b21', 'user', 'What is Rust?', NULL, NULL, NULL, NULL, NULL, '2025-03-01 09:00:00'),
    ('a1c0ffee-0000-4000-8000-000000000002', '0b6f3c52-4a8e-4d2e-9a51-1f0c7e3d9b21', 'assistant', 'A systems language.', 'gpt-4', 10, 4, 14, 'stop', '2025-03-01 09:00:05.25'),
    ('b2c0ffee-0000-4000-8000-000000000003', '7d1e9a40-22c3-4f7b-8e6d-5a9b0c1d2e3f', 'user', 'Second thoughts', NULL, NULL, NULL, NULL, NULL, '2025-03-02 10:00:00'),
    ('03c0ffee-0000-4000-8000-000000000004', '7d1e9a40-22c3-4f7b-8e6d-5a9b0c1d2e3f', 'assistant', E'Line one\nline two\ttabbed', 'gpt-4o', 20, 6, 26, 'stop', '2025-03-02 10:01:00'),
    ('c4c0ffee-0000-4000-8000-000000000005', 'f3a2b1c0-9d8e-4f7a-b6c5-d4e3f2a1b0c9', 'user', E'Quotes "and" \\backslashes, emoji 😀', NULL, NULL, NULL, NULL, NULL, '2025-03-03 11:00:00'),
    ('d5c0ffee-0000-4000-8000-000000000006', 'f3a2b1c0-9d8e-4f7a-b6c5-d4e3f2a1b0c9', 'assistant', 'Partial', 'gpt-4', NULL, NULL, NULL, 'stopped', '2025-03-03 11:00:09.123456');
"#;

/// A fresh PostgreSQL database holding the NestJS peer's tables and rows in `public`,
/// or `None` on SQLite runs.
pub async fn typeorm_database() -> Option<(String, DatabaseConnection)> {
    let url = fresh_postgres_database().await?;
    let db = Database::connect(&url).await.expect("the fresh database");
    db.execute_unprepared(TYPEORM_TABLES).await.expect("TypeORM tables");
    db.execute_unprepared(TYPEORM_ROWS).await.expect("TypeORM rows");
    Some((url, db))
}

/// Every row of a table as text, in a fixed order: for before/after comparisons.
pub async fn dump(db: &DatabaseConnection, table: &str) -> Vec<String> {
    let sql = format!("SELECT t::text AS row FROM {table} t ORDER BY t::text");
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect(table);
    rows.iter().map(|r| r.try_get::<String>("", "row").expect("row text")).collect()
}

/// The tables of a schema with their columns, sorted.
async fn tables_of(db: &DatabaseConnection, schema: &str) -> HashMap<String, Vec<String>> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = $1 ORDER BY 1, 2",
            [schema.into()],
        ))
        .await
        .expect("information_schema.columns");
    let mut tables: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let (t, c): (String, String) = (row.try_get("", "t").unwrap(), row.try_get("", "c").unwrap());
        tables.entry(t).or_default().push(c);
    }
    tables
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect(sql).expect("a row");
    row.try_get::<i64>("", "n").expect("a count named n")
}

/// chatwire's tables and their columns, as the migrations make them.
fn chatwire_tables() -> HashMap<String, Vec<String>> {
    let cols = |c: &[&str]| {
        let mut c: Vec<String> = c.iter().map(|s| s.to_string()).collect();
        c.sort();
        c
    };
    HashMap::from([
        ("conversations".to_owned(), cols(&["id", "user_id", "title", "created_at", "updated_at", "active_leaf_id", "preset"])),
        (
            "messages".to_owned(),
            cols(&[
                "id",
                "conversation_id",
                "user_id",
                "role",
                "content",
                "model",
                "provider",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "finish_reason",
                "status",
                "client_message_id",
                "error_code",
                "parent_id",
                "attachments",
                "context_messages",
                "created_at",
                "updated_at",
            ]),
        ),
        ("usage".to_owned(), cols(&["user_id", "day", "model", "prompt_tokens", "completion_tokens", "answers"])),
        ("seaql_migrations".to_owned(), cols(&["version", "applied_at"])),
    ])
}

/// The migrations recorded in `schema`, against the migrator's list.
async fn assert_fully_migrated(db: &DatabaseConnection, schema: &str) {
    use migration::MigratorTrait;
    let sql = format!("SELECT version FROM {schema}.seaql_migrations ORDER BY version");
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect("seaql_migrations");
    let applied: Vec<String> = rows.iter().map(|r| r.try_get("", "version").unwrap()).collect();
    let expected: Vec<String> = migration::Migrator::migrations().iter().map(|m| m.name().to_owned()).collect();
    assert_eq!(applied, expected, "every migration recorded once");
    assert_eq!(tables_of(db, schema).await, chatwire_tables());
}

#[tokio::test]
async fn beside_typeorm_tables_in_public_chatwire_works_in_its_own_schema_and_touches_nothing_else() {
    let Some((url, db)) = typeorm_database().await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    let public_before = (tables_of(&db, "public").await, dump(&db, "public.conversations").await, dump(&db, "public.messages").await);
    assert_eq!(public_before.1.len(), 3);
    assert_eq!(public_before.2.len(), 6);

    let app = spawn_app_with(&[("DATABASE_URL", &url)]).await;
    let user = user();
    let mut client = app.client(&user).await;
    let first = client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    let second = client.emit_with_ack("chat:start", json!({ "message": "again", "conversationId": first["conversationId"] })).await;
    assert_eq!(second["ok"], true, "{second}");
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.text(), ANSWER);
    assert_eq!(
        app.mock().requests()[1]["messages"],
        json!([
            { "role": "user", "content": "hello" },
            { "role": "assistant", "content": ANSWER },
            { "role": "user", "content": "again" },
        ]),
        "the history is chatwire's, never the public tables' rows"
    );

    assert_fully_migrated(&db, "chatwire").await;
    let conversation = first["conversationId"].as_str().unwrap();
    assert_eq!(count(&db, "SELECT count(*) AS n FROM chatwire.conversations").await, 1);
    let sql = format!("SELECT count(*) AS n FROM chatwire.conversations WHERE id = '{conversation}' AND user_id = '{user}'");
    assert_eq!(count(&db, &sql).await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM chatwire.messages").await, 4);
    let sql = format!("SELECT count(*) AS n FROM chatwire.messages WHERE conversation_id = '{conversation}' AND status = 'complete'");
    assert_eq!(count(&db, &sql).await, 4);
    // The server's pool reads the same rows: unqualified names resolve to chatwire's schema.
    assert_eq!(app.messages(conversation).await.len(), 4);

    let public_after = (tables_of(&db, "public").await, dump(&db, "public.conversations").await, dump(&db, "public.messages").await);
    assert_eq!(public_after, public_before, "schema public is untouched");
    let schemas = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT DISTINCT table_schema::text AS s FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        ))
        .await
        .unwrap();
    let schemas: Vec<String> = schemas.iter().map(|r| r.try_get("", "s").unwrap()).collect();
    assert_eq!(schemas, ["chatwire", "public"]);
}

#[tokio::test]
async fn a_schema_named_by_database_schema_is_created_and_used() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    let app = spawn_app_with(&[("DATABASE_URL", &url), ("DATABASE_SCHEMA", "tenant_7")]).await;
    let mut client = app.client(&user()).await;
    client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    let db = Database::connect(&url).await.unwrap();
    assert_fully_migrated(&db, "tenant_7").await;
    assert_eq!(count(&db, "SELECT count(*) AS n FROM tenant_7.messages").await, 2);
    assert!(tables_of(&db, "chatwire").await.is_empty(), "no default schema made");
    assert!(tables_of(&db, "public").await.is_empty(), "nothing in public");
}

#[tokio::test]
async fn three_migrate_processes_started_at_once_all_succeed() {
    // Several rounds: the race this prevents needs only two processes to meet once.
    for round in 0..3 {
        let Some(url) = fresh_postgres_database().await else {
            eprintln!("skipped: needs DATABASE_URL=postgres://...");
            return;
        };
        let children: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_chatwire"))
                    .arg("migrate")
                    .env_clear()
                    .envs([("DATABASE_URL", url.as_str()), ("RUST_LOG", "warn")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("the chatwire binary starts")
            })
            .collect();
        let outputs = tokio::task::spawn_blocking(move || {
            children.into_iter().map(|c| c.wait_with_output().expect("migrate finishes")).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        for (i, out) in outputs.iter().enumerate() {
            assert!(
                out.status.success(),
                "round {round}, process {i}: {:?}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let db = Database::connect(&url).await.unwrap();
        assert_fully_migrated(&db, "chatwire").await;
        let indexes = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT indexname::text AS i FROM pg_indexes WHERE schemaname = 'chatwire' ORDER BY 1",
            ))
            .await
            .unwrap();
        let indexes: Vec<String> = indexes.iter().map(|r| r.try_get("", "i").unwrap()).collect();
        assert_eq!(
            indexes,
            [
                "conversations_pkey",
                "idx_conversations_user",
                "idx_messages_client_key",
                "idx_messages_conversation",
                "idx_messages_conversation_time",
                "idx_messages_parent",
                "messages_pkey",
                "seaql_migrations_pkey",
                "usage_pkey",
            ]
        );
        db.close().await.unwrap();
    }
}

#[test]
fn database_schema_must_be_a_plain_identifier() {
    let config = |schema: &str| chatwire::Config::from_vars(HashMap::from([("DATABASE_SCHEMA".to_owned(), schema.to_owned())]));
    assert_eq!(config("").unwrap().database_schema, "chatwire", "unset or empty: the default");
    assert_eq!(config("tenant_7").unwrap().database_schema, "tenant_7");
    for bad in ["Chatwire", "7days", "chat-wire", "chat wire", "x\";DROP TABLE t;--", "pg_mine", &"a".repeat(64)] {
        let err = config(bad).expect_err(bad).to_string();
        assert!(err.starts_with("DATABASE_SCHEMA: "), "{err}");
        assert!(err.contains("not a plain SQL identifier"), "{err}");
    }
}
