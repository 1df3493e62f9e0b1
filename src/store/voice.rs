//! Voice sessions: a conversation per session, and its transcripts as messages, stored
//! as each one is complete (the user's input transcription, the assistant's transcript
//! or text with the response's usage).

use chrono::Utc;
use entity::{conversation, message, usage};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set, TransactionTrait};
use uuid::Uuid;

use super::{add_usage, turns::new_message, utc_day};
use crate::chat::{Status, Usage};

/// One finished piece of a voice session's transcript.
pub struct VoiceMessage<'a> {
    pub user_id: &'a str,
    pub conversation_id: Uuid,
    /// `user` or `assistant`.
    pub role: &'a str,
    pub content: &'a str,
    /// The realtime model (assistant rows).
    pub model: Option<&'a str>,
    /// The response's tokens (assistant rows of a `response.done`).
    pub usage: Option<Usage>,
    /// `complete`, or `error` for an answer cut off by a fault.
    pub status: Status,
    /// The upstream's `response.done` status, or ours (`error`, `shutdown`).
    pub finish_reason: Option<&'a str>,
    /// The code the client was told, for a cut answer.
    pub error_code: Option<&'a str>,
}

/// Creates the conversation of a new voice session of `user_id`.
pub async fn begin_voice_session<C: ConnectionTrait>(db: &C, user_id: &str, title: &str) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let row = conversation::ActiveModel {
        id: Set(id),
        user_id: Set(user_id.to_owned()),
        title: Set(title.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        active_leaf_id: Set(None),
        // The voice preset is the session's, not one of the chat presets later turns reuse.
        preset: Set(None),
    };
    conversation::Entity::insert(row).exec_without_returning(db).await?;
    Ok(id)
}

/// Stores one message of a voice session after the one before it, bumps the conversation
/// (its active leaf is this message), and adds the usage to the user's day, in one
/// transaction.
pub async fn add_voice_message(db: &DatabaseConnection, m: &VoiceMessage<'_>) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let mut row = new_message(m.conversation_id, id, m.user_id, m.role, now);
    row.content = Set(m.content.to_owned());
    row.status = Set(m.status.as_str().to_owned());
    row.model = Set(m.model.map(str::to_owned));
    row.provider = Set(m.model.map(|_| "realtime".to_owned()));
    row.finish_reason = Set(m.finish_reason.map(str::to_owned));
    row.error_code = Set(m.error_code.map(str::to_owned));
    if let Some(u) = m.usage {
        let count = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
        row.prompt_tokens = Set(count(u.prompt_tokens));
        row.completion_tokens = Set(count(u.completion_tokens));
        row.total_tokens = Set(count(u.total_tokens));
    }
    let txn = db.begin().await?;
    // A session is one branch: each message follows the conversation's active leaf, and
    // becomes it.
    let leaf = conversation::Entity::find_by_id(m.conversation_id).one(&txn).await?.and_then(|c| c.active_leaf_id);
    row.parent_id = Set(leaf);
    message::Entity::insert(row).exec_without_returning(&txn).await?;
    conversation::Entity::update_many()
        .col_expr(conversation::Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
        .col_expr(conversation::Column::ActiveLeafId, sea_orm::sea_query::Expr::value(id))
        .filter(conversation::Column::Id.eq(m.conversation_id))
        .exec(&txn)
        .await?;
    if let (Some(usage), Some(model)) = (m.usage, m.model) {
        add_usage(&txn, m.user_id, model, &utc_day(now), usage).await?;
    }
    txn.commit().await?;
    Ok(id)
}

/// `user`'s prompt plus completion tokens of `day` on `model` alone.
pub async fn model_day_total<C: ConnectionTrait>(db: &C, user_id: &str, model: &str, day: &str) -> Result<u64, DbErr> {
    let row = usage::Entity::find()
        .filter(usage::Column::UserId.eq(user_id))
        .filter(usage::Column::Day.eq(day))
        .filter(usage::Column::Model.eq(model))
        .one(db)
        .await?;
    let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(row.map_or(0, |r| tokens(r.prompt_tokens) + tokens(r.completion_tokens)))
}
