//! Voice sessions for the Realtime proxy: each is a conversation of its user, its
//! transcripts are messages, and its tokens count against `REALTIME_DAILY_TOKENS`.

use chrono::Utc;
use uuid::Uuid;

use super::{Engine, unavailable};
use crate::{
    chat::{ChatError, ErrorCode},
    store::{self, VoiceMessage},
};

impl Engine {
    /// Opens a voice session of `user`: its conversation's id. `QUOTA_EXCEEDED` when the
    /// user's realtime tokens of this UTC day already reach the daily cap.
    pub async fn begin_voice_session(&self, user: &str, title: &str) -> Result<Uuid, ChatError> {
        self.check_voice_quota(user).await?;
        store::begin_voice_session(&self.0.db, user, title).await.map_err(unavailable)
    }

    /// `QUOTA_EXCEEDED` once `user`'s realtime tokens of this UTC day reach `REALTIME_DAILY_TOKENS`.
    pub async fn check_voice_quota(&self, user: &str) -> Result<(), ChatError> {
        let realtime = &self.0.config.realtime;
        if realtime.daily_tokens == 0 {
            return Ok(());
        }
        let spent = store::model_day_total(&self.0.db, user, &realtime.model, &store::utc_day(Utc::now())).await.map_err(unavailable)?;
        if spent >= realtime.daily_tokens {
            return Err(ChatError::new(ErrorCode::QuotaExceeded, "the daily voice token quota is used up"));
        }
        Ok(())
    }

    /// Stores one transcript message of a voice session (and its usage).
    pub async fn record_voice_message(&self, message: &VoiceMessage<'_>) -> Result<Uuid, ChatError> {
        store::add_voice_message(&self.0.db, message).await.map_err(unavailable)
    }
}
