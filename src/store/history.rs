//! A user's history as the REST routes read and change it: conversations a page at a
//! time with their last message, one conversation with its messages, a new title, and
//! deleting a conversation with its messages.
//!
//! Every query filters on the user: another user's conversation reads as missing.

use chrono::{DateTime, Utc};
use entity::{conversation, message};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use uuid::Uuid;

/// Where a page of conversations starts: after this `(updated_at, id)`, in the list's
/// order (`updated_at` descending, then `id` descending, so ties keep one order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageKey {
    pub updated_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A conversation as a list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: conversation::Model,
    /// Its latest message (by `created_at`, then id), if it has any.
    pub last_message: Option<message::Model>,
}

/// One page of a user's conversations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationPage {
    pub items: Vec<ConversationSummary>,
    /// The key to continue after, when more conversations follow.
    pub next: Option<PageKey>,
}

/// At most `limit` of `user`'s conversations after `after`, most recently updated first.
pub async fn list_conversations(
    db: &DatabaseConnection,
    user_id: &str,
    after: Option<PageKey>,
    limit: u64,
) -> Result<ConversationPage, DbErr> {
    let mut query = conversation::Entity::find().filter(conversation::Column::UserId.eq(user_id));
    if let Some(key) = after {
        query = query.filter(
            Condition::any()
                .add(conversation::Column::UpdatedAt.lt(key.updated_at))
                .add(Condition::all().add(conversation::Column::UpdatedAt.eq(key.updated_at)).add(conversation::Column::Id.lt(key.id))),
        );
    }
    // One more than asked: whether it exists says whether a next page does.
    let mut rows =
        query.order_by_desc(conversation::Column::UpdatedAt).order_by_desc(conversation::Column::Id).limit(limit + 1).all(db).await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = rows.last().filter(|_| more).map(|c| PageKey { updated_at: c.updated_at, id: c.id });
    let mut last = last_messages(db, rows.iter().map(|c| c.id).collect()).await?;
    let items = rows
        .into_iter()
        .map(|conversation| {
            let last_message = last.iter().position(|m| m.conversation_id == conversation.id).map(|i| last.swap_remove(i));
            ConversationSummary { conversation, last_message }
        })
        .collect();
    Ok(ConversationPage { items, next })
}

/// The latest message of each of these conversations, in one query: a message is its
/// conversation's latest when the conversation's messages, newest first, start with it.
async fn last_messages(db: &DatabaseConnection, conversations: Vec<Uuid>) -> Result<Vec<message::Model>, DbErr> {
    if conversations.is_empty() {
        return Ok(Vec::new());
    }
    let newer = Alias::new("newer");
    let latest = Query::select()
        .column((newer.clone(), message::Column::Id))
        .from_as(message::Entity, newer.clone())
        .and_where(Expr::col((newer.clone(), message::Column::ConversationId)).equals((message::Entity, message::Column::ConversationId)))
        .order_by((newer.clone(), message::Column::CreatedAt), sea_orm::Order::Desc)
        .order_by((newer, message::Column::Id), sea_orm::Order::Desc)
        .limit(1)
        .to_owned();
    message::Entity::find()
        .filter(message::Column::ConversationId.is_in(conversations))
        .filter(Expr::col((message::Entity, message::Column::Id)).in_subquery(latest))
        .all(db)
        .await
}

/// `user`'s conversation, or `None` when it does not exist or is someone else's.
pub async fn find_conversation<C: ConnectionTrait>(db: &C, user_id: &str, id: Uuid) -> Result<Option<conversation::Model>, DbErr> {
    conversation::Entity::find_by_id(id).filter(conversation::Column::UserId.eq(user_id)).one(db).await
}

/// `user`'s conversation and all its messages in order (`created_at`, then id, as the
/// model sees them), or `None` when it is not theirs.
pub async fn conversation_messages(
    db: &DatabaseConnection,
    user_id: &str,
    id: Uuid,
) -> Result<Option<(conversation::Model, Vec<message::Model>)>, DbErr> {
    let Some(conversation) = find_conversation(db, user_id, id).await? else {
        return Ok(None);
    };
    let messages = message::Entity::find()
        .filter(message::Column::ConversationId.eq(id))
        .order_by_asc(message::Column::CreatedAt)
        .order_by_asc(message::Column::Id)
        .all(db)
        .await?;
    Ok(Some((conversation, messages)))
}

/// Sets the title of `user`'s conversation; `None` when it is not theirs. The list's
/// order is left alone: `updated_at` moves with messages only.
pub async fn rename_conversation(
    db: &DatabaseConnection,
    user_id: &str,
    id: Uuid,
    title: &str,
) -> Result<Option<conversation::Model>, DbErr> {
    let renamed = conversation::Entity::update_many()
        .col_expr(conversation::Column::Title, Expr::value(title))
        .filter(conversation::Column::Id.eq(id))
        .filter(conversation::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    if renamed.rows_affected == 0 {
        return Ok(None);
    }
    find_conversation(db, user_id, id).await
}

/// Sets the title the model made on `user`'s conversation, only while it still has the
/// title it was created with (`created_with`): a title set meanwhile (`PATCH`) is kept.
/// False when nothing changed (renamed or deleted meanwhile). `updated_at` does not move.
pub async fn set_made_title(db: &DatabaseConnection, user_id: &str, id: Uuid, created_with: &str, title: &str) -> Result<bool, DbErr> {
    let set = conversation::Entity::update_many()
        .col_expr(conversation::Column::Title, Expr::value(title))
        .filter(conversation::Column::Id.eq(id))
        .filter(conversation::Column::UserId.eq(user_id))
        .filter(conversation::Column::Title.eq(created_with))
        .exec(db)
        .await?;
    Ok(set.rows_affected > 0)
}

/// Deletes `user`'s conversation and its messages in one transaction. False when it is
/// not theirs (or already gone).
pub async fn delete_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    if find_conversation(&txn, user_id, id).await?.is_none() {
        return Ok(false);
    }
    // Not left to the foreign key's cascade: the messages go whatever the database enforces.
    message::Entity::delete_many().filter(message::Column::ConversationId.eq(id)).exec(&txn).await?;
    let deleted = conversation::Entity::delete_many()
        .filter(conversation::Column::Id.eq(id))
        .filter(conversation::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(deleted.rows_affected > 0)
}

/// A message of `user` (question or answer), or `None` when it is not theirs.
pub async fn find_message(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<Option<message::Model>, DbErr> {
    message::Entity::find_by_id(id).filter(message::Column::UserId.eq(user_id)).one(db).await
}
