//! Conversations as trees: each message has a parent (the message it answers or follows)
//! and each conversation an active leaf, the end of the branch a client sees. Messages
//! also keep their image attachments and, for answers, how many earlier messages the
//! model was sent; a conversation keeps the system-prompt preset it was started with.
//!
//! Rows stored before this migration become one branch: each message's parent is the
//! message before it (by `created_at`, then id, the order the model saw), and the active
//! leaf is the conversation's last message.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Each message's parent: the message just before it in its conversation.
const LINK_MESSAGES: &str = "UPDATE messages SET parent_id = (\
    SELECT p.id FROM messages p WHERE p.conversation_id = messages.conversation_id \
    AND (p.created_at < messages.created_at OR (p.created_at = messages.created_at AND p.id < messages.id)) \
    ORDER BY p.created_at DESC, p.id DESC LIMIT 1)";

/// Each conversation's active leaf: its last message.
const SET_LEAVES: &str = "UPDATE conversations SET active_leaf_id = (\
    SELECT m.id FROM messages m WHERE m.conversation_id = conversations.id \
    ORDER BY m.created_at DESC, m.id DESC LIMIT 1)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [uuid_null(Messages::ParentId), text_null(Messages::Attachments), integer_null(Messages::ContextMessages)] {
            manager.alter_table(Table::alter().table(Messages::Table).add_column(column).to_owned()).await?;
        }
        for column in [uuid_null(Conversations::ActiveLeafId), string_null(Conversations::Preset)] {
            manager.alter_table(Table::alter().table(Conversations::Table).add_column(column).to_owned()).await?;
        }
        manager.create_index(Index::create().name("idx_messages_parent").table(Messages::Table).col(Messages::ParentId).to_owned()).await?;
        let db = manager.get_connection();
        db.execute_unprepared(LINK_MESSAGES).await?;
        db.execute_unprepared(SET_LEAVES).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("idx_messages_parent").table(Messages::Table).to_owned()).await?;
        for column in [Messages::ParentId, Messages::Attachments, Messages::ContextMessages] {
            manager.alter_table(Table::alter().table(Messages::Table).drop_column(column).to_owned()).await?;
        }
        for column in [Conversations::ActiveLeafId, Conversations::Preset] {
            manager.alter_table(Table::alter().table(Conversations::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

// `Messages::ContextMessages` is the column `context_messages` of table `messages`.
#[allow(clippy::enum_variant_names)]
#[derive(DeriveIden)]
enum Messages {
    Table,
    ParentId,
    Attachments,
    ContextMessages,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    ActiveLeafId,
    Preset,
}
