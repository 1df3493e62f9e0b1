//! An answer's row: its periodic checkpoints, its final update, reading it back, and
//! failing the rows of processes that died.

use std::time::Duration;

use chrono::Utc;
use entity::message;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use crate::chat::{AnswerIds, ChatError, ErrorCode, Final, Status, Usage};

/// The end of an answer, written in one update.
#[derive(Clone, Debug)]
pub struct AnswerEnd<'a> {
    /// Whose answer it is: its tokens count into this user's usage.
    pub user_id: &'a str,
    /// The provider that answered, or was tried last (its id: `mock`, `openai`, `groq`, ...).
    pub provider: &'a str,
    pub content: &'a str,
    pub ending: &'a Final,
    /// The bare model name of the provider tried last (a completed answer stores its ending's).
    pub model: &'a str,
    /// The token counts of an answer that did not complete, where known.
    pub partial_usage: Option<Usage>,
    /// Why an answer that did not complete ended (`stopped`, `error`, `shutdown`).
    pub cut_reason: &'a str,
}

/// Finishes an assistant row: content, usage, model, provider, finish reason, error code
/// and status in one update, and adds the answer to its user's usage of the day, in one
/// transaction: an answer is counted exactly when it is stored. Only a row still
/// `streaming` is finished: one another node ended meanwhile (it took this node for dead
/// and told every reader so) keeps the ending its readers were told, and a retried write
/// whose first attempt did commit counts nothing twice.
pub async fn finish_answer(db: &DatabaseConnection, id: Uuid, end: &AnswerEnd<'_>) -> Result<(), DbErr> {
    use sea_orm::sea_query::Expr;
    let as_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let (model, finish_reason, usage, error_code) = match end.ending {
        Final::Complete { model, finish_reason, usage, .. } => (model.as_str(), finish_reason.as_str(), *usage, None),
        Final::Stopped => (end.model, end.cut_reason, end.partial_usage, None),
        Final::Failed(error) => (end.model, end.cut_reason, end.partial_usage, Some(error.code)),
    };
    let now = Utc::now();
    let txn = db.begin().await?;
    let finished = message::Entity::update_many()
        .col_expr(message::Column::Content, Expr::value(end.content))
        .col_expr(message::Column::Status, Expr::value(end.ending.status().as_str()))
        .col_expr(message::Column::FinishReason, Expr::value(finish_reason))
        .col_expr(message::Column::Model, Expr::value(model))
        .col_expr(message::Column::Provider, Expr::value(end.provider))
        .col_expr(message::Column::PromptTokens, Expr::value(usage.map(|u| as_i32(u.prompt_tokens))))
        .col_expr(message::Column::CompletionTokens, Expr::value(usage.map(|u| as_i32(u.completion_tokens))))
        .col_expr(message::Column::TotalTokens, Expr::value(usage.map(|u| as_i32(u.total_tokens))))
        .col_expr(message::Column::ErrorCode, Expr::value(error_code.map(|c| c.as_str())))
        .col_expr(message::Column::UpdatedAt, Expr::value(now))
        .filter(message::Column::Id.eq(id))
        .filter(message::Column::Status.eq(Status::Streaming.as_str()))
        .exec(&txn)
        .await?;
    if finished.rows_affected == 0 {
        tracing::warn!(message_id = %id, "the answer's row had already ended (another node took it over, or a retried write had landed); it keeps that ending");
        return txn.commit().await;
    }
    super::usage::add_usage(&txn, end.user_id, model, &super::usage::utc_day(now), usage.unwrap_or_default()).await?;
    txn.commit().await
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
            .filter(message::Column::Status.eq(Status::Streaming.as_str()))
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}

/// An answer as stored, read back for a reader that comes after it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    pub ids: AnswerIds,
    pub status: Status,
    pub content: String,
    /// How it ended; `None` while its row is still `streaming` (its process runs
    /// elsewhere, or died and is not swept yet).
    pub ending: Option<Final>,
    /// When the row last moved (written, checkpointed or ended).
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// An assistant message of `user`, or `None` when it does not exist or is someone else's.
pub async fn find_answer(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<Option<StoredAnswer>, DbErr> {
    let row = message::Entity::find_by_id(id)
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::Role.eq("assistant"))
        .one(db)
        .await?;
    Ok(row.map(stored_answer))
}

/// Any user's assistant message by id (for a node closing another node's answer).
pub async fn find_answer_by_id(db: &DatabaseConnection, id: Uuid) -> Result<Option<StoredAnswer>, DbErr> {
    let row = message::Entity::find_by_id(id).filter(message::Column::Role.eq("assistant")).one(db).await?;
    Ok(row.map(stored_answer))
}

fn stored_answer(row: message::Model) -> StoredAnswer {
    let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let counted = row.prompt_tokens.is_some() || row.completion_tokens.is_some() || row.total_tokens.is_some();
    let status = Status::parse(&row.status);
    let ending = match status {
        Status::Streaming => None,
        Status::Complete => Some(Final::Complete {
            provider: row.provider.clone().unwrap_or_default(),
            model: row.model.clone().unwrap_or_default(),
            finish_reason: row.finish_reason.clone().unwrap_or_else(|| "stop".into()),
            usage: counted.then(|| Usage {
                prompt_tokens: count(row.prompt_tokens),
                completion_tokens: count(row.completion_tokens),
                total_tokens: count(row.total_tokens),
            }),
        }),
        Status::Stopped => Some(Final::Stopped),
        Status::Error => {
            let code = row.error_code.as_deref().and_then(ErrorCode::parse).unwrap_or(ErrorCode::UpstreamError);
            Some(Final::Failed(ChatError::code(code)))
        }
    };
    StoredAnswer {
        ids: AnswerIds { message_id: row.id, conversation_id: row.conversation_id },
        status,
        content: row.content,
        ending,
        updated_at: row.updated_at,
    }
}

/// Answers still `streaming` whose row has not moved for `stale_after`: their process
/// died (a live generation checkpoints well within that). Marks them failed, keeping
/// their checkpointed text. Safe with several nodes. No reader waits on such a row to be
/// told: a resume of a `streaming` row no generation runs already reads it as
/// interrupted, with the same text and `UNAVAILABLE` this writes.
pub async fn fail_stale_answers(db: &DatabaseConnection, stale_after: Duration) -> Result<u64, DbErr> {
    let cutoff = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    let res = message::Entity::update_many()
        .col_expr(message::Column::Status, sea_orm::sea_query::Expr::value(Status::Error.as_str()))
        .col_expr(message::Column::FinishReason, sea_orm::sea_query::Expr::value("interrupted"))
        .col_expr(message::Column::ErrorCode, sea_orm::sea_query::Expr::value(ErrorCode::Unavailable.as_str()))
        .filter(message::Column::Status.eq(Status::Streaming.as_str()))
        .filter(message::Column::UpdatedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Fails one answer still `streaming` with `content`: the text a node that died had put
/// in its log, closed by another node. Rows that have ended meanwhile are left as they are.
pub async fn fail_interrupted(db: &DatabaseConnection, id: Uuid, content: &str) -> Result<u64, DbErr> {
    let res = message::Entity::update_many()
        .col_expr(message::Column::Content, sea_orm::sea_query::Expr::value(content))
        .col_expr(message::Column::Status, sea_orm::sea_query::Expr::value(Status::Error.as_str()))
        .col_expr(message::Column::FinishReason, sea_orm::sea_query::Expr::value("interrupted"))
        .col_expr(message::Column::ErrorCode, sea_orm::sea_query::Expr::value(ErrorCode::Unavailable.as_str()))
        .col_expr(message::Column::UpdatedAt, sea_orm::sea_query::Expr::value(Utc::now()))
        .filter(message::Column::Id.eq(id))
        .filter(message::Column::Status.eq(Status::Streaming.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
