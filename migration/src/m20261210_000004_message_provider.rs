//! Which upstream wrote an answer (`mock`, or the host of `OPENAI_BASE_URL`), so a
//! history read shows where each answer came from.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Messages::Table).add_column(string_null(Messages::Provider)).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Messages::Table).drop_column(Messages::Provider).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Provider,
}
