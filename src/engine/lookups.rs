//! Lookups a start makes before it runs: the per-user bucket they are paid from, and the
//! earlier start a repeated `clientMessageId` names.

use std::time::Duration;

use super::{Engine, StartOutcome, unavailable};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode},
    store,
};

impl Engine {
    /// Takes one lookup from `user`'s bucket: a flood of resumes or joins costs the
    /// flooder, not the database every other user waits on.
    pub(super) fn allow_lookup(&self, user: &str) -> Result<(), ChatError> {
        if self.0.lookups.allow(user) {
            return Ok(());
        }
        Err(ChatError::new(ErrorCode::RateLimit, "too many lookups; try again shortly"))
    }

    /// The ids of an earlier start with this key, if stored. With `wait`, gives an
    /// in-flight first attempt a moment to commit.
    pub(super) async fn repeated(&self, user: &str, key: &str, wait: bool) -> Result<Option<StartOutcome>, ChatError> {
        let attempts = if wait { 20 } else { 1 };
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            match store::find_turn(&self.0.db, user, key).await {
                Ok(Some(t)) => {
                    let ids = AnswerIds { message_id: t.assistant_message_id, conversation_id: t.conversation_id };
                    let (user_message_id, parent_message_id) = (t.user_message_id, t.parent_id);
                    return Ok(Some(StartOutcome::Repeated { ids, user_message_id, parent_message_id }));
                }
                Ok(None) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(None)
    }
}
