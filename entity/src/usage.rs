//! Token usage of one user with one model on one UTC day.

use sea_orm::entity::prelude::*;

/// One row of `usage`; every ended answer adds to the row of its user, model and day.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// The UTC day the answers ended, `YYYY-MM-DD`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: String,
    /// The model that answered.
    #[sea_orm(primary_key, auto_increment = false)]
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Answers that ended (complete, stopped or failed).
    pub answers: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
