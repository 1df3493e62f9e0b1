//! A conversation belongs to exactly one user and holds an ordered list of messages.

use sea_orm::entity::prelude::*;

/// One row of `conversations`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    /// UUIDv7: ordered by creation time, unguessable enough to hand to clients.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The token's user; the only one who may read or extend the conversation.
    pub user_id: String,
    /// The start of the first message, for conversation lists.
    pub title: String,
    pub created_at: DateTimeUtc,
    /// Bumped on every new message, so lists can sort by recent activity.
    pub updated_at: DateTimeUtc,
    /// The last message of the branch the user sees and continues.
    pub active_leaf_id: Option<Uuid>,
    /// The system-prompt preset (`SYSTEM_PROMPT_PRESETS`) it was started with.
    pub preset: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::message::Entity")]
    Message,
}

impl Related<super::message::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Message.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
