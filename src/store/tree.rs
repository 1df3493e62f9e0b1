//! A conversation as a tree: each message has a parent, the conversation an active leaf.
//! The branch to a message (what the model is sent), a new answer to a stored question
//! (a regenerate), and deleting a message with its subtree.

use std::collections::HashSet;

use chrono::Utc;
use entity::{conversation, message};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set, TransactionTrait, sea_query::Expr};
use uuid::Uuid;

use super::{StoreError, turns::new_message};
use crate::chat::Status;

/// The messages from the root to `leaf`, oldest first (empty when `leaf` is not among
/// `messages`). A parent missing from `messages` ends the walk, as does a loop.
pub fn branch_to(messages: &[message::Model], leaf: Uuid) -> Vec<&message::Model> {
    let mut path = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(leaf);
    while let Some(id) = next {
        let Some(m) = messages.iter().find(|m| m.id == id) else { break };
        if !seen.insert(id) {
            break;
        }
        path.push(m);
        next = m.parent_id;
    }
    path.reverse();
    path
}

/// `root` and every message below it, parents before children.
pub fn subtree(messages: &[message::Model], root: Uuid) -> Vec<Uuid> {
    let mut ids = vec![root];
    let mut i = 0;
    while i < ids.len() {
        let parent = ids[i];
        ids.extend(messages.iter().filter(|m| m.parent_id == Some(parent) && !ids.contains(&m.id)).map(|m| m.id).collect::<Vec<_>>());
        i += 1;
    }
    ids
}

/// The conversation's active leaf: the stored one when it is still there, else its last
/// message (rows from before branches, or a tree emptied by deletes).
pub fn active_leaf(conversation: &conversation::Model, messages: &[message::Model]) -> Option<Uuid> {
    conversation.active_leaf_id.filter(|leaf| messages.iter().any(|m| m.id == *leaf)).or_else(|| messages.last().map(|m| m.id))
}

/// What [`begin_answer`] stores: a new answer to a stored question.
pub struct NewAnswer<'a> {
    pub user_id: &'a str,
    pub conversation_id: Uuid,
    /// The question answered again.
    pub question_id: Uuid,
    pub answer_id: Uuid,
    pub model: &'a str,
    pub context_messages: usize,
}

/// Stores the `streaming` row of a new answer to a stored question and makes it the
/// conversation's active leaf, in one transaction.
pub async fn begin_answer(db: &DatabaseConnection, new: NewAnswer<'_>) -> Result<(), StoreError> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let touched = conversation::Entity::update_many()
        .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
        .col_expr(conversation::Column::ActiveLeafId, Expr::value(new.answer_id))
        .filter(conversation::Column::Id.eq(new.conversation_id))
        .filter(conversation::Column::UserId.eq(new.user_id))
        .exec(&txn)
        .await?;
    if touched.rows_affected == 0 {
        return Err(StoreError::NotFound);
    }
    let mut answer = new_message(new.conversation_id, new.answer_id, new.user_id, "assistant", now);
    answer.status = Set(Status::Streaming.as_str().to_owned());
    answer.model = Set(Some(new.model.to_owned()));
    answer.parent_id = Set(Some(new.question_id));
    answer.context_messages = Set(Some(i32::try_from(new.context_messages).unwrap_or(i32::MAX)));
    message::Entity::insert(answer).exec_without_returning(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Deletes these messages of `user`'s conversation and sets its active leaf, in one
/// transaction. Returns how many rows went.
pub async fn delete_messages(
    db: &DatabaseConnection,
    user_id: &str,
    conversation_id: Uuid,
    ids: &[Uuid],
    active_leaf: Option<Uuid>,
) -> Result<u64, DbErr> {
    let txn = db.begin().await?;
    let mut deleted = 0;
    for chunk in ids.chunks(500) {
        deleted += message::Entity::delete_many()
            .filter(message::Column::ConversationId.eq(conversation_id))
            .filter(message::Column::UserId.eq(user_id))
            .filter(message::Column::Id.is_in(chunk.iter().copied()))
            .exec(&txn)
            .await?
            .rows_affected;
    }
    conversation::Entity::update_many()
        .col_expr(conversation::Column::ActiveLeafId, Expr::value(active_leaf))
        .col_expr(conversation::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(conversation::Column::Id.eq(conversation_id))
        .filter(conversation::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(deleted)
}
