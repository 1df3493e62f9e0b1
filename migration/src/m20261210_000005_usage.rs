//! Token usage per user, model and UTC day: what `/v1/usage` shows and the daily quota
//! counts. Each ended answer adds to its row with one atomic upsert, so nodes sharing a
//! database count into the same rows.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Usage::Table)
                    .if_not_exists()
                    .col(string(Usage::UserId))
                    // `YYYY-MM-DD` (UTC): the same text, and the same order, on every database.
                    .col(string(Usage::Day))
                    .col(string(Usage::Model))
                    .col(big_integer(Usage::PromptTokens).default(0))
                    .col(big_integer(Usage::CompletionTokens).default(0))
                    .col(big_integer(Usage::Answers).default(0))
                    .primary_key(Index::create().col(Usage::UserId).col(Usage::Day).col(Usage::Model))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Usage::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Usage {
    Table,
    UserId,
    Day,
    Model,
    PromptTokens,
    CompletionTokens,
    Answers,
}
