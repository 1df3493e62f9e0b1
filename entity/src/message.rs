//! A message of a conversation: the user's question or the model's answer.

use sea_orm::entity::prelude::*;

/// One row of `messages`. Rows of a conversation are ordered by `id` (UUIDv7) and form
/// a tree through `parent_id`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// UUIDv7, so that ordering by id is ordering by creation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// Copied from the conversation so that ownership checks need no join.
    pub user_id: String,
    /// `user`, `assistant` (or `system`).
    pub role: String,
    /// The full text; for a streaming answer, the last checkpoint of it.
    #[sea_orm(column_type = "Text")]
    pub content: String,
    /// The model that answered (assistant rows only).
    pub model: Option<String>,
    /// The upstream that answered: `mock`, or the host of `OPENAI_BASE_URL` (assistant
    /// rows stored since the column exists).
    pub provider: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    /// The upstream's reason (`stop`, `length`, ...) or ours (`stopped`, `error`, `shutdown`).
    pub finish_reason: Option<String>,
    /// `complete` for user rows; `streaming`, `complete`, `stopped` or `error` for answers.
    pub status: String,
    /// The wire code a failed answer's client was given (`UPSTREAM_ERROR`, ...).
    pub error_code: Option<String>,
    /// The client's idempotency key, on the user row of a `chat:start`.
    pub client_message_id: Option<String>,
    /// The message this one follows: a question's previous answer, an answer's question.
    /// `None` for a conversation's first messages (the roots of its tree).
    pub parent_id: Option<Uuid>,
    /// A question's images, as the JSON array the client sent (`[{ "type": "image", "url" }]`).
    #[sea_orm(column_type = "Text", nullable)]
    pub attachments: Option<String>,
    /// An answer's count of earlier messages sent to the model with its question.
    pub context_messages: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::conversation::Entity",
        from = "Column::ConversationId",
        to = "super::conversation::Column::Id",
        on_delete = "Cascade"
    )]
    Conversation,
}

impl Related<super::conversation::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Conversation.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
