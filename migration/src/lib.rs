//! chatwire's schema migrations; the server runs them at start-up.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_conversations_and_messages;
mod m20261122_000002_add_error_code;
mod m20261201_000003_messages_by_time;
mod m20261210_000004_message_provider;
mod m20261210_000005_usage;
mod m20261220_000006_branches;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_conversations_and_messages::Migration),
            Box::new(m20261122_000002_add_error_code::Migration),
            Box::new(m20261201_000003_messages_by_time::Migration),
            Box::new(m20261210_000004_message_provider::Migration),
            Box::new(m20261210_000005_usage::Migration),
            Box::new(m20261220_000006_branches::Migration),
        ]
    }
}
