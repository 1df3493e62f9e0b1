//! Conversations and messages in the database: plain async functions over a
//! [`DatabaseConnection`], testable without any socket.

use std::time::Duration;

use chrono::Utc;
use entity::{conversation, message};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::error::{ChatError, ErrorCode};

/// Message statuses as stored.
pub mod status {
    pub const STREAMING: &str = "streaming";
    pub const COMPLETE: &str = "complete";
    pub const STOPPED: &str = "stopped";
    pub const ERROR: &str = "error";
}

/// A database failure, kept apart from "not yours / not there".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conversation not found")]
    NotFound,
    #[error("a chat:start with this clientMessageId is already stored")]
    DuplicateKey,
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl StoreError {
    /// What the client is told; the cause is logged by the caller.
    pub fn to_chat_error(&self) -> ChatError {
        match self {
            Self::NotFound => ChatError::new(ErrorCode::NotFound, "conversation not found"),
            Self::DuplicateKey => ChatError::code(ErrorCode::Internal),
            Self::Db(_) => ChatError::code(ErrorCode::Unavailable),
        }
    }
}

/// Connects with at most `max_connections` pooled connections (`None`: 1 for SQLite,
/// 16 otherwise), tunes SQLite for a server's write pattern, and runs the migrations.
///
/// SQLite has one writer at a time. With several connections, a writer that finds the
/// lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ms, ...) instead of queueing,
/// which under load put 100 ms and more in front of `chat:start`s. One connection makes
/// every statement queue in order on the pool; reads are short enough not to mind.
pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    let mut options = base_options(url);
    options
        .idle_timeout(Duration::from_secs(60))
        .max_connections(max_connections.unwrap_or(if sqlite { 1 } else { 16 }));
    // WAL lets readers run beside the writer; with it, `synchronous=NORMAL` is still
    // crash-safe (a power cut may lose the last commits, never corrupt) and spares an
    // fsync per commit, which is most of a chat:start's cost.
    options.map_sqlx_sqlite_opts(|o| {
        o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
    });
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// What every pool opened here shares: no statement logging, bounded waits.
fn base_options(url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
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
pub async fn spawn_wal_checkpointer(url: &str) -> Result<(), DbErr> {
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
            tick.tick().await;
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

/// What the model needs to see of one earlier message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMessage {
    pub role: String,
    pub content: String,
}

/// What [`begin_chat`] stored.
#[derive(Clone, Copy, Debug)]
pub struct ChatBegun {
    pub conversation_id: Uuid,
    /// True when the conversation was created by this call.
    pub created: bool,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

/// What a chat turn stores before the model is called.
pub struct NewTurn<'a> {
    pub user_id: &'a str,
    pub conversation_id: Option<Uuid>,
    pub message: &'a str,
    pub model: &'a str,
    pub client_message_id: Option<&'a str>,
}

/// The last `limit` messages of `user`'s conversation, oldest first: what the model sees
/// before the new message. `NotFound` when the conversation is not `user`'s.
pub async fn conversation_history(
    db: &DatabaseConnection,
    user_id: &str,
    conversation_id: Uuid,
    limit: u64,
) -> Result<Vec<HistoryMessage>, StoreError> {
    if !owns_conversation(db, user_id, conversation_id).await? {
        return Err(StoreError::NotFound);
    }
    Ok(load_history(db, conversation_id, limit).await?)
}

/// Stores the user message and the assistant's `streaming` row in one transaction,
/// creating the conversation when none is given. Four statements in all (begin, the
/// conversation, both messages, commit): each is a round trip to the database.
pub async fn begin_chat(db: &DatabaseConnection, turn: NewTurn<'_>) -> Result<ChatBegun, StoreError> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let (conversation_id, created) = match turn.conversation_id {
        Some(id) => {
            let touched = conversation::Entity::update_many()
                .col_expr(conversation::Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
                .filter(conversation::Column::Id.eq(id))
                .filter(conversation::Column::UserId.eq(turn.user_id))
                .exec(&txn)
                .await?;
            if touched.rows_affected == 0 {
                return Err(StoreError::NotFound);
            }
            (id, false)
        }
        None => {
            let id = Uuid::now_v7();
            let conversation = conversation::ActiveModel {
                id: Set(id),
                user_id: Set(turn.user_id.to_owned()),
                title: Set(turn.message.chars().take(80).collect()),
                created_at: Set(now),
                updated_at: Set(now),
            };
            conversation::Entity::insert(conversation).exec_without_returning(&txn).await?;
            (id, true)
        }
    };
    let user_message_id = Uuid::now_v7();
    let mut question = new_message(conversation_id, user_message_id, turn.user_id, "user", now);
    question.content = Set(turn.message.to_owned());
    question.status = Set(status::COMPLETE.to_owned());
    question.client_message_id = Set(turn.client_message_id.map(str::to_owned));
    let assistant_message_id = Uuid::now_v7();
    let mut answer = new_message(conversation_id, assistant_message_id, turn.user_id, "assistant", now);
    answer.content = Set(String::new());
    answer.status = Set(status::STREAMING.to_owned());
    answer.model = Set(Some(turn.model.to_owned()));
    if let Err(e) = message::Entity::insert_many([question, answer]).exec_without_returning(&txn).await {
        return Err(match e.sql_err() {
            // Only the question carries a unique key (`clientMessageId`).
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => StoreError::DuplicateKey,
            _ => e.into(),
        });
    }
    txn.commit().await?;
    Ok(ChatBegun { conversation_id, created, user_message_id, assistant_message_id })
}

fn new_message(conversation_id: Uuid, id: Uuid, user_id: &str, role: &str, now: chrono::DateTime<Utc>) -> message::ActiveModel {
    message::ActiveModel {
        id: Set(id),
        conversation_id: Set(conversation_id),
        user_id: Set(user_id.to_owned()),
        role: Set(role.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        model: Set(None),
        prompt_tokens: Set(None),
        completion_tokens: Set(None),
        total_tokens: Set(None),
        finish_reason: Set(None),
        client_message_id: Set(None),
        error_code: Set(None),
        content: Set(String::new()),
        status: Set(String::new()),
    }
}

/// The last `limit` messages with text, oldest first. Failed answers with no text are skipped.
async fn load_history<C: ConnectionTrait>(db: &C, conversation_id: Uuid, limit: u64) -> Result<Vec<HistoryMessage>, DbErr> {
    let mut rows = message::Entity::find()
        .filter(message::Column::ConversationId.eq(conversation_id))
        .filter(message::Column::Content.ne(""))
        .order_by_desc(message::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows.into_iter().map(|m| HistoryMessage { role: m.role, content: m.content }).collect())
}

/// The end of an answer, written in one update.
#[derive(Clone, Debug)]
pub struct AnswerEnd<'a> {
    pub content: &'a str,
    pub status: &'a str,
    pub finish_reason: &'a str,
    pub model: &'a str,
    pub usage: Option<Usage>,
    /// What the client was told, for failed answers.
    pub error_code: Option<ErrorCode>,
}

/// Token counts from the upstream's usage chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Finishes an assistant row: content, usage, model, finish reason and status together.
pub async fn finish_answer(db: &DatabaseConnection, id: Uuid, end: &AnswerEnd<'_>) -> Result<(), DbErr> {
    let as_i32 = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    message::ActiveModel {
        id: Set(id),
        content: Set(end.content.to_owned()),
        status: Set(end.status.to_owned()),
        finish_reason: Set(Some(end.finish_reason.to_owned())),
        model: Set(Some(end.model.to_owned())),
        prompt_tokens: Set(end.usage.and_then(|u| as_i32(u.prompt_tokens))),
        completion_tokens: Set(end.usage.and_then(|u| as_i32(u.completion_tokens))),
        total_tokens: Set(end.usage.and_then(|u| as_i32(u.total_tokens))),
        error_code: Set(end.error_code.map(|c| c.as_str().to_owned())),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(db)
    .await
    .map(drop)
}

/// Writes the partial texts of streaming answers in one transaction, so a crash loses
/// only the last moments. Rows that have ended meanwhile are left as they are.
pub async fn checkpoint_answers(db: &DatabaseConnection, answers: &[(Uuid, String)]) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    let now = Utc::now();
    for (id, content) in answers {
        message::Entity::update_many()
            .col_expr(message::Column::Content, sea_orm::sea_query::Expr::value(content.as_str()))
            .col_expr(message::Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
            .filter(message::Column::Id.eq(*id))
            .filter(message::Column::Status.eq(status::STREAMING))
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}

/// The ids of an earlier `chat:start` of `user` with this `clientMessageId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnIds {
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

/// Finds the turn a repeated `clientMessageId` refers to, if it was stored.
pub async fn find_turn(db: &DatabaseConnection, user_id: &str, client_message_id: &str) -> Result<Option<TurnIds>, DbErr> {
    let Some(question) = message::Entity::find()
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::ClientMessageId.eq(client_message_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    // The answer row is inserted right after the question, in the same transaction.
    let answer = message::Entity::find()
        .filter(message::Column::ConversationId.eq(question.conversation_id))
        .filter(message::Column::Id.gt(question.id))
        .filter(message::Column::Role.eq("assistant"))
        .order_by_asc(message::Column::Id)
        .one(db)
        .await?;
    Ok(answer.map(|a| TurnIds {
        conversation_id: question.conversation_id,
        user_message_id: question.id,
        assistant_message_id: a.id,
    }))
}

/// An assistant message of `user`, or `None` when it does not exist or is someone else's.
pub async fn find_answer(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<Option<message::Model>, DbErr> {
    message::Entity::find_by_id(id)
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::Role.eq("assistant"))
        .one(db)
        .await
}

/// True when the conversation exists and belongs to `user`.
pub async fn owns_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<bool, DbErr> {
    Ok(conversation::Entity::find_by_id(id)
        .filter(conversation::Column::UserId.eq(user_id))
        .one(db)
        .await?
        .is_some())
}

/// Answers still `streaming` whose row has not moved for `stale_after`: their process
/// died (a live generation checkpoints well within that). Marks them failed, keeping
/// their checkpointed text, so clients resuming them are told. Safe with several nodes.
pub async fn fail_stale_answers(db: &DatabaseConnection, stale_after: Duration) -> Result<u64, DbErr> {
    let cutoff = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let res = message::Entity::update_many()
        .col_expr(message::Column::Status, sea_orm::sea_query::Expr::value(status::ERROR))
        .col_expr(message::Column::FinishReason, sea_orm::sea_query::Expr::value("interrupted"))
        .col_expr(message::Column::ErrorCode, sea_orm::sea_query::Expr::value(ErrorCode::Unavailable.as_str()))
        .filter(message::Column::Status.eq(status::STREAMING))
        .filter(message::Column::UpdatedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
