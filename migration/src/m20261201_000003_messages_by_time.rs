//! Messages ordered by time within a conversation. A conversation's history is read in
//! `createdAt` order (ties by id): imported messages keep ids that are not time-ordered
//! UUIDv7s, so id order alone would shuffle them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_conversation_time")
                    .table(Messages::Table)
                    .col(Messages::ConversationId)
                    .col(Messages::CreatedAt)
                    .col(Messages::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("idx_messages_conversation_time").table(Messages::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ConversationId,
    CreatedAt,
    Id,
}
