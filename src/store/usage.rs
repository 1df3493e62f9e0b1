//! Token usage per user, model and UTC day: the atomic add when an answer ends, the
//! day's total the quota compares with, and the rows `/v1/usage` lists.

use chrono::{DateTime, Utc};
use entity::usage;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};

use crate::chat::Usage;

/// The UTC day of `at`, as the `usage` table keys it: `YYYY-MM-DD`.
pub fn utc_day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// Adds one ended answer and its tokens to the row of `user`, `model` and `day`, in one
/// `INSERT ... ON CONFLICT DO UPDATE SET x = usage.x + excluded.x`: atomic on SQLite and
/// PostgreSQL alike, so answers ending at once on several nodes all count.
pub async fn add_usage<C: ConnectionTrait>(db: &C, user_id: &str, model: &str, day: &str, tokens: Usage) -> Result<(), DbErr> {
    let row = usage::ActiveModel {
        user_id: Set(user_id.to_owned()),
        day: Set(day.to_owned()),
        model: Set(model.to_owned()),
        prompt_tokens: Set(i64::from(tokens.prompt_tokens)),
        completion_tokens: Set(i64::from(tokens.completion_tokens)),
        answers: Set(1),
    };
    let add = |column: usage::Column| (column, Expr::col((usage::Entity, column)).add(Expr::col((Alias::new("excluded"), column))));
    let mut upsert = OnConflict::columns([usage::Column::UserId, usage::Column::Day, usage::Column::Model]);
    for column in [usage::Column::PromptTokens, usage::Column::CompletionTokens, usage::Column::Answers] {
        let (column, sum) = add(column);
        upsert.value(column, sum);
    }
    usage::Entity::insert(row).on_conflict(upsert).exec_without_returning(db).await.map(drop)
}

/// `user`'s prompt plus completion tokens of `day`, all models together.
pub async fn day_total<C: ConnectionTrait>(db: &C, user_id: &str, day: &str) -> Result<u64, DbErr> {
    let rows = usage::Entity::find().filter(usage::Column::UserId.eq(user_id)).filter(usage::Column::Day.eq(day)).all(db).await?;
    let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(rows.iter().map(|r| tokens(r.prompt_tokens) + tokens(r.completion_tokens)).sum())
}

/// `user`'s rows from `from` to `to` (both `YYYY-MM-DD`, inclusive, either open), by day
/// then model.
pub async fn list_usage<C: ConnectionTrait>(
    db: &C,
    user_id: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<usage::Model>, DbErr> {
    let mut query = usage::Entity::find().filter(usage::Column::UserId.eq(user_id));
    if let Some(from) = from {
        query = query.filter(usage::Column::Day.gte(from));
    }
    if let Some(to) = to {
        query = query.filter(usage::Column::Day.lte(to));
    }
    query.order_by_asc(usage::Column::Day).order_by_asc(usage::Column::Model).all(db).await
}
