//! The daily token quota, checked before any upstream call, and the usage a user reads.
//! The counts themselves are added where an answer's row is finished (`store::finish_answer`).

use chrono::Utc;

use super::{Engine, Parts, unavailable};
use crate::{
    chat::{ChatError, ErrorCode},
    store,
};

/// `QUOTA_EXCEEDED` once `user`'s prompt plus completion tokens of this UTC day reach
/// `DAILY_TOKEN_QUOTA`. An answer that crosses the quota still finishes: the count is
/// only known at its end.
pub(super) async fn check_quota(parts: &Parts, user: &str) -> Result<(), ChatError> {
    let quota = parts.config.daily_token_quota;
    if quota == 0 {
        return Ok(());
    }
    let spent = store::day_total(&parts.db, user, &store::utc_day(Utc::now())).await.map_err(unavailable)?;
    if spent >= quota {
        return Err(ChatError::code(ErrorCode::QuotaExceeded));
    }
    Ok(())
}

/// One row of a user's usage: a model on a UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub answers: u64,
}

impl Engine {
    /// `user`'s usage from `from` to `to` (`YYYY-MM-DD`, inclusive, either open), by day
    /// then model.
    pub async fn usage(&self, user: &str, from: Option<&str>, to: Option<&str>) -> Result<Vec<UsageRow>, ChatError> {
        let rows = store::list_usage(&self.0.db, user, from, to).await.map_err(unavailable)?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|r| UsageRow {
                day: r.day,
                model: r.model,
                prompt_tokens: count(r.prompt_tokens),
                completion_tokens: count(r.completion_tokens),
                answers: count(r.answers),
            })
            .collect())
    }
}
