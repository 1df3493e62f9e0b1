//! A chat turn: the user message and the answer's `streaming` row stored together, and
//! the turn a repeated key refers to.

use chrono::Utc;
use entity::{conversation, message};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait};
use uuid::Uuid;

use super::StoreError;
use crate::chat::Status;

/// What [`begin_chat`] stored.
#[derive(Clone, Copy, Debug)]
pub struct ChatBegun {
    pub conversation_id: Uuid,
    /// True when the conversation was created by this call.
    pub created: bool,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

/// The ids of a turn, made before it is stored, so that what is logged meanwhile (the
/// upstream request opens while the turn is stored) can name the answer already.
#[derive(Clone, Copy, Debug)]
pub struct NewIds {
    /// Used only when the turn starts a conversation.
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

impl NewIds {
    /// Time-ordered ids, in the order of the rows: a conversation's messages sort by id.
    pub fn generate() -> Self {
        let conversation_id = Uuid::now_v7();
        let user_message_id = Uuid::now_v7();
        Self { conversation_id, user_message_id, assistant_message_id: Uuid::now_v7() }
    }
}

/// What a chat turn stores before the model is called.
pub struct NewTurn<'a> {
    pub user_id: &'a str,
    pub conversation_id: Option<Uuid>,
    pub message: &'a str,
    pub model: &'a str,
    pub client_message_id: Option<&'a str>,
    /// The message the question follows (the branch's leaf, or the edited message's
    /// parent); `None` for a conversation's first question.
    pub parent_id: Option<Uuid>,
    /// How many earlier messages go to the model with the question.
    pub context_messages: usize,
    /// The system-prompt preset used, stored on the conversation.
    pub preset: Option<&'a str>,
    /// The question's images as stored (`[{ "type": "image", "url" }]`), if any.
    pub attachments: Option<&'a str>,
}

/// The title a conversation is created with: its first question's first 80 characters
/// (until the model's title, if any, replaces it).
pub fn first_title(question: &str) -> String {
    question.chars().take(80).collect()
}

/// Stores the user message and the assistant's `streaming` row in one transaction,
/// creating the conversation when none is given. Four statements in all (begin, the
/// conversation, both messages, commit): each is a round trip to the database.
pub async fn begin_chat(db: &DatabaseConnection, turn: NewTurn<'_>) -> Result<ChatBegun, StoreError> {
    begin_chat_with(db, turn, NewIds::generate()).await
}

/// [`begin_chat`] with ids made beforehand.
pub async fn begin_chat_with(db: &DatabaseConnection, turn: NewTurn<'_>, ids: NewIds) -> Result<ChatBegun, StoreError> {
    let NewIds { conversation_id: new_conversation_id, user_message_id, assistant_message_id } = ids;
    let txn = db.begin().await?;
    let now = Utc::now();
    let (conversation_id, created) = match turn.conversation_id {
        Some(id) => {
            let mut update = conversation::Entity::update_many()
                .col_expr(conversation::Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
                .col_expr(conversation::Column::ActiveLeafId, sea_orm::sea_query::Expr::value(assistant_message_id));
            if let Some(preset) = turn.preset {
                update = update.col_expr(conversation::Column::Preset, sea_orm::sea_query::Expr::value(preset));
            }
            let touched =
                update.filter(conversation::Column::Id.eq(id)).filter(conversation::Column::UserId.eq(turn.user_id)).exec(&txn).await?;
            if touched.rows_affected == 0 {
                return Err(StoreError::NotFound);
            }
            (id, false)
        }
        None => {
            let id = new_conversation_id;
            let conversation = conversation::ActiveModel {
                id: Set(id),
                user_id: Set(turn.user_id.to_owned()),
                title: Set(first_title(turn.message)),
                created_at: Set(now),
                updated_at: Set(now),
                active_leaf_id: Set(Some(assistant_message_id)),
                preset: Set(turn.preset.map(str::to_owned)),
            };
            conversation::Entity::insert(conversation).exec_without_returning(&txn).await?;
            (id, true)
        }
    };
    let mut question = new_message(conversation_id, user_message_id, turn.user_id, "user", now);
    question.content = Set(turn.message.to_owned());
    question.status = Set(Status::Complete.as_str().to_owned());
    question.client_message_id = Set(turn.client_message_id.map(str::to_owned));
    question.parent_id = Set(turn.parent_id);
    question.attachments = Set(turn.attachments.map(str::to_owned));
    let mut answer = new_message(conversation_id, assistant_message_id, turn.user_id, "assistant", now);
    answer.content = Set(String::new());
    answer.status = Set(Status::Streaming.as_str().to_owned());
    answer.model = Set(Some(turn.model.to_owned()));
    answer.parent_id = Set(Some(user_message_id));
    answer.context_messages = Set(Some(i32::try_from(turn.context_messages).unwrap_or(i32::MAX)));
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

pub(super) fn new_message(conversation_id: Uuid, id: Uuid, user_id: &str, role: &str, now: chrono::DateTime<Utc>) -> message::ActiveModel {
    message::ActiveModel {
        id: Set(id),
        conversation_id: Set(conversation_id),
        user_id: Set(user_id.to_owned()),
        role: Set(role.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        model: Set(None),
        provider: Set(None),
        prompt_tokens: Set(None),
        completion_tokens: Set(None),
        total_tokens: Set(None),
        finish_reason: Set(None),
        client_message_id: Set(None),
        error_code: Set(None),
        content: Set(String::new()),
        status: Set(String::new()),
        parent_id: Set(None),
        attachments: Set(None),
        context_messages: Set(None),
    }
}

/// The ids of an earlier `chat:start` of `user` with this `clientMessageId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnIds {
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
    /// The question's parent.
    pub parent_id: Option<Uuid>,
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
        parent_id: question.parent_id,
    }))
}

/// True when the conversation exists and belongs to `user`.
pub async fn owns_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<bool, DbErr> {
    Ok(conversation::Entity::find_by_id(id).filter(conversation::Column::UserId.eq(user_id)).one(db).await?.is_some())
}

/// Whose a conversation with a client-chosen id is, after [`claim_conversation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationClaim {
    /// It was `user`'s already.
    Owned,
    /// It did not exist; it is now `user`'s.
    Created,
    /// It is another user's.
    Foreign,
}

/// Makes sure the conversation `id` exists, creating it for `user` when it does not (a
/// wire whose clients name their conversations: WADI's path, canyon's client id).
pub async fn claim_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid, title: &str) -> Result<ConversationClaim, DbErr> {
    let now = Utc::now();
    let conversation = conversation::ActiveModel {
        id: Set(id),
        user_id: Set(user_id.to_owned()),
        title: Set(title.chars().take(80).collect()),
        created_at: Set(now),
        updated_at: Set(now),
        active_leaf_id: Set(None),
        preset: Set(None),
    };
    // Two connections may claim the same new id at once: the first insert wins.
    let inserted =
        conversation::Entity::insert(conversation).on_conflict_do_nothing_on([conversation::Column::Id]).exec_without_returning(db).await?;
    if matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        return Ok(ConversationClaim::Created);
    }
    Ok(if owns_conversation(db, user_id, id).await? { ConversationClaim::Owned } else { ConversationClaim::Foreign })
}
