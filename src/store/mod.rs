//! Conversations and messages in the database: plain async functions over a
//! [`DatabaseConnection`], grouped by what they touch, testable without any wire, and
//! the writer that stores `chat:start` turns arriving together in one transaction.

mod answers;
mod batch;
mod history;
mod imports;
mod tree;
mod turns;
mod usage;
mod voice;

pub use crate::chat::HistoryMessage;
pub use answers::{
    AnswerEnd, StoredAnswer, checkpoint_answers, fail_interrupted, fail_stale_answers, find_answer, find_answer_by_id, finish_answer,
};
pub use batch::{MAX_BATCH, TurnWriter, WriteGate};
pub use history::{
    ConversationPage, ConversationSummary, PageKey, conversation_messages, delete_conversation, find_conversation, find_message,
    list_conversations, rename_conversation, set_made_title,
};
pub use imports::{ImportMode, ImportResult, ImportedMessage, Refusal, import_messages};
pub use tree::{NewAnswer, active_leaf, begin_answer, branch_to, delete_messages, subtree};
pub use turns::{
    ChatBegun, ConversationClaim, NewIds, NewTurn, TurnIds, begin_chat, begin_chat_with, claim_conversation, find_turn, first_title,
    owns_conversation,
};
pub use usage::{add_usage, day_total, list_usage, utc_day};
pub use voice::{VoiceMessage, add_voice_message, begin_voice_session, model_day_total};

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};

use crate::chat::{ChatError, ErrorCode};

/// A database failure, kept apart from "not yours / not there".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conversation not found")]
    NotFound,
    #[error("a chat:start with this clientMessageId is already stored")]
    DuplicateKey,
    /// The database's queue was full, or no write took the turn in time: nothing stored.
    #[error("the database is too busy to take the turn")]
    Overloaded,
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl StoreError {
    /// What the client is told; the cause is logged by the caller.
    pub fn to_chat_error(&self) -> ChatError {
        match self {
            Self::NotFound => ChatError::new(ErrorCode::NotFound, "conversation not found"),
            Self::DuplicateKey => ChatError::code(ErrorCode::Internal),
            Self::Overloaded => ChatError::code(ErrorCode::Unavailable),
            Self::Db(e) => db_error(e),
        }
    }
}

/// What the client is told about a database error: `UNAVAILABLE` (try again) only when
/// it is a connection or capacity problem; a statement the database refuses, which will
/// fail the same way again, is `INTERNAL`.
pub fn db_error(e: &DbErr) -> ChatError {
    ChatError::code(if is_transient(e) { ErrorCode::Unavailable } else { ErrorCode::Internal })
}

/// True when `e` is about reaching the database (no connection, a pool timeout, a broken
/// link, a server shutting down or overloaded, a lock or serialization conflict), not
/// about the statement itself: the same statement may well succeed later.
pub fn is_transient(e: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error};
    let runtime = match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(r) | DbErr::Query(r) => r,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        Error::Io(_) | Error::Tls(_) | Error::Protocol(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed => true,
        Error::Database(db) => {
            let sqlite = db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some();
            db.code().is_some_and(|code| if sqlite { sqlite_transient(&code) } else { sqlstate_transient(&code) })
        }
        _ => false,
    }
}

/// PostgreSQL's SQLSTATE classes 08 (connection), 53 (resources), 57 (operator
/// intervention: shutdown, cancel), and 40001/40P01 (serialization, deadlock).
fn sqlstate_transient(code: &str) -> bool {
    ["08", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "40001" || code == "40P01"
}

/// SQLite's BUSY (5) and LOCKED (6), with their extended codes (the low byte).
fn sqlite_transient(code: &str) -> bool {
    matches!(code.parse::<u32>().map(|n| n & 0xff), Ok(5 | 6))
}

/// How many pooled connections [`connect`] opens for `url`.
pub fn pool_size(url: &str, max_connections: Option<u32>) -> u32 {
    max_connections.unwrap_or(if url.starts_with("sqlite:") { 1 } else { 16 })
}

/// Connects with at most `max_connections` pooled connections (`None`: 1 for SQLite,
/// 16 otherwise), tunes SQLite for a server's write pattern, and runs the migrations.
/// On PostgreSQL every connection works in `schema` (see [`migrate`]); SQLite ignores it.
///
/// SQLite has one writer at a time. With several connections, a writer that finds the
/// lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ms, ...) instead of queueing,
/// which under load put 100 ms and more in front of `chat:start`s. One connection makes
/// every statement queue in order on the pool; reads are short enough not to mind.
pub async fn connect(url: &str, max_connections: Option<u32>, schema: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = base_options(url);
    options.idle_timeout(Duration::from_secs(60)).max_connections(pool_size(url, max_connections));
    // WAL lets readers run beside the writer; with it, `synchronous=NORMAL` is still
    // crash-safe (a power cut may lose the last commits, never corrupt) and spares an
    // fsync per commit, which is most of a chat:start's cost.
    options.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
    });
    // The schema is the whole `search_path`, set in the startup packet (no extra round
    // trip per connection): unqualified names never resolve to `public`. It comes after
    // any `options` of the URL, so it wins over a `search_path` set there.
    let search_path = schema.to_owned();
    options.map_sqlx_postgres_opts(move |o| o.options([("search_path", search_path.as_str())]));
    let db = Database::connect(options).await?;
    migrate(&db, schema).await?;
    Ok(db)
}

/// Times every statement run on `db` and on its clones made from now on (those of its
/// transactions included): `observe` gets each one's execution time, without the wait for
/// a pooled connection. A closure, so the store knows nothing of what records it.
pub fn time_statements(db: &mut DatabaseConnection, observe: impl Fn(Duration) + Send + Sync + 'static) {
    db.set_metric_callback(move |info| observe(info.elapsed));
}

/// The advisory lock key that serializes migrations across processes: the bytes of
/// "chatwire" read as a big-endian integer. Advisory locks are per database, so
/// servers on other databases of the same PostgreSQL never wait for each other.
const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"chatwire");

/// Runs the pending migrations. On PostgreSQL, any number of processes may call this
/// at once: one transaction takes a transaction-level advisory lock, creates `schema`
/// when it is missing, migrates and commits, so the next process finds the work done.
///
/// The lock belongs to the transaction's own connection, the one every migration
/// statement runs on (a migration's own transaction is a savepoint inside it), and it
/// ends with the transaction: a failed migration rolls back and releases it, and a
/// process that dies releases it with its connection. A session-level lock taken on a
/// pooled connection would instead go back to the pool still held when an error skipped
/// the unlock.
pub async fn migrate(db: &DatabaseConnection, schema: &str) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let named = |what: &str, e: DbErr| DbErr::Migration(format!("{what} (schema {schema:?}): {e}"));
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        .await
        .map_err(|e| named("taking the migration lock", e))?;
    let exists = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS found FROM pg_namespace WHERE nspname = $1",
            [schema.into()],
        ))
        .await
        .map_err(|e| named("looking for the schema", e))?
        .is_some();
    if !exists {
        // Checked first, so a role without CREATE on the database can use a schema an
        // administrator made for it. The name is a plain identifier (see the config).
        txn.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await.map_err(|e| named("creating the schema", e))?;
        warn_about_tables_in_public(&txn, schema).await;
    }
    Migrator::up(&txn, None).await.map_err(|e| named("running the migrations", e))?;
    txn.commit().await.map_err(|e| named("committing the migrations", e))
}

/// A deployment from before `DATABASE_SCHEMA` keeps its tables in `public`; starting it
/// in a new, empty schema would look like lost history, so say where the old tables are.
async fn warn_about_tables_in_public<C: ConnectionTrait>(db: &C, schema: &str) {
    let probe = Statement::from_string(
        DbBackend::Postgres,
        "SELECT 1 AS found FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'seaql_migrations'",
    );
    if let Ok(Some(_)) = db.query_one_raw(probe).await {
        tracing::warn!(
            schema,
            "created an empty schema, but schema public holds a migration table (chatwire's tables from before DATABASE_SCHEMA?); set DATABASE_SCHEMA=public to keep using them"
        );
    }
}

/// What every pool opened here shares: no statement logging, bounded waits.
fn base_options(url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).connect_timeout(Duration::from_secs(5)).acquire_timeout(Duration::from_secs(5));
    options
}

/// How often a SQLite file's write-ahead log is copied back into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// SQLite copies its write-ahead log back into the database file once the log reaches
/// 1,000 pages, on the connection whose commit crossed the mark, and that copy ends in
/// fsyncs: milliseconds added to whichever `chat:start` was unlucky (p99 time to first
/// token 6.9 ms with it, 4.6 ms without). A connection of its own makes the copy every
/// half second instead, beside the writer: a passive checkpoint never waits for it or
/// blocks it. The automatic checkpoint stays as the backstop. Nothing to do for
/// PostgreSQL or an in-memory database.
pub async fn spawn_wal_checkpointer(url: &str, shutdown: tokio_util::sync::CancellationToken) -> Result<(), DbErr> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(());
    }
    let mut options = base_options(url);
    options.min_connections(1).max_connections(1);
    let db = Database::connect(options).await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WAL_CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)").await {
                Ok(_) => failing = false,
                // Logged once per run of failures; the automatic checkpoint still works.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "copying the write-ahead log into the database failed");
                }
                Err(_) => {}
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{ConnAcquireErr, RuntimeErr, sqlx::Error};

    use super::*;

    fn sqlx(e: Error) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
    }

    #[test]
    fn only_connection_problems_are_unavailable() {
        let code = |e: DbErr| StoreError::Db(e).to_chat_error().code;
        assert_eq!(code(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)), ErrorCode::Unavailable);
        assert_eq!(code(sqlx(Error::PoolClosed)), ErrorCode::Unavailable);
        assert_eq!(code(sqlx(Error::Io(std::io::Error::other("reset")))), ErrorCode::Unavailable);
        assert_eq!(code(DbErr::Exec(RuntimeErr::Internal("refused".into()))), ErrorCode::Internal);
        assert_eq!(code(sqlx(Error::RowNotFound)), ErrorCode::Internal);
        assert_eq!(code(DbErr::RecordNotUpdated), ErrorCode::Internal);
        assert!(sqlstate_transient("08006") && sqlstate_transient("57P01") && sqlstate_transient("40P01"));
        assert!(!sqlstate_transient("22021") && !sqlstate_transient("23505"));
        assert!(sqlite_transient("5") && sqlite_transient("517") && !sqlite_transient("19") && !sqlite_transient("2067"));
    }
}
