//! The wire error code of a failed answer, so a client that resumes it later is told
//! the same thing as the client that saw it fail.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Messages::Table).add_column(string_null(Messages::ErrorCode)).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Messages::Table).drop_column(Messages::ErrorCode).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ErrorCode,
}
