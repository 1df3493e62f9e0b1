//! The engine's reading side: a reader of any answer of a user's at its own offset
//! (running: its log; ended: its stored row), the answers of a conversation as they
//! start, and a user's running answers.

use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use uuid::Uuid;

use super::{ActiveAnswer, Engine, REGISTER_CHECKS, Subscription, stored, unavailable};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Status},
    cluster::LogReader,
    store,
};

impl Engine {
    /// Reads `user`'s answer from `offset` (UTF-16 units): a running one from its log,
    /// a finished one from its stored row, through the same kind of reader.
    ///
    /// A row still `streaming` that no generation here runs was cut by a process that
    /// died: it reads as interrupted, its checkpointed text then `UNAVAILABLE` (status
    /// `error`), as the stale sweep will store it. The row itself is left to the sweep.
    /// In cluster mode, while such a row may still belong to a live node (see
    /// [`Engine::may_run_elsewhere`]), it is refused with `UNAVAILABLE` instead, which
    /// clients ask again after.
    pub async fn subscribe(&self, user: &str, message_id: Uuid, offset: u64) -> Result<Subscription, ChatError> {
        self.allow_lookup(user)?;
        self.0.subscriptions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(running) = self.running_here(user, message_id, offset).await {
            return Ok(running);
        }
        // Not running, or it ended meanwhile: its row is final now.
        let mut stored = self.stored(user, message_id).await?;
        if stored.status == Status::Streaming {
            // A turn's rows are committed a moment before its generation registers; only a
            // repeated `clientMessageId` can know the id that early. Give it that moment.
            for _ in 0..REGISTER_CHECKS {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Some(running) = self.running_here(user, message_id, offset).await {
                    return Ok(running);
                }
            }
            stored = self.stored(user, message_id).await?;
        }
        if stored.status == Status::Streaming && self.may_run_elsewhere(&stored).await {
            return Err(ChatError::new(ErrorCode::Unavailable, "the answer's node is not known yet; try again"));
        }
        if stored.status == Status::Streaming {
            stored.status = Status::Error;
            stored.ending = Some(crate::chat::Final::Failed(ChatError::code(ErrorCode::Unavailable)));
        }
        let (ids, status) = (stored.ids, stored.status);
        let reader = stored::StoredReader::new(stored, offset);
        Ok(Subscription { ids, status, offset: reader.offset(), reader: Box::new(reader) })
    }

    /// Cluster mode: whether a `streaming` row listed by no node may still be running on
    /// one. It may while Redis is unreachable, and for a moment after Redis came back
    /// empty, until every node has listed its answers again (within a lease renewal):
    /// a row that moved within two leases and a checkpoint interval is given that time.
    /// A dead node's answers are closed by the node that takes it over, so refusing
    /// them for that long costs a retry, never a wrong reading.
    async fn may_run_elsewhere(&self, stored: &store::StoredAnswer) -> bool {
        match self.shared_state_ok().await {
            None => false,
            Some(false) => true,
            Some(true) => {
                let config = &self.0.config;
                let recent = config.node_lease * 2 + config.checkpoint_interval;
                let age = chrono::Utc::now().signed_duration_since(stored.updated_at);
                age.to_std().map_or(true, |age| age < recent)
            }
        }
    }

    /// A reader of `user`'s answer running here, if it runs.
    async fn running_here(&self, user: &str, message_id: Uuid, offset: u64) -> Option<Subscription> {
        let running = self.0.directory.get(message_id).await.filter(|a| a.user_id == user)?;
        let reader = self.0.logs.open(message_id, offset).await?;
        let offset = reader.offset();
        Some(Subscription { ids: running.ids, status: Status::Streaming, offset, reader })
    }

    /// `user`'s answer as stored; `NOT_FOUND` when it is not theirs or does not exist.
    async fn stored(&self, user: &str, message_id: Uuid) -> Result<store::StoredAnswer, ChatError> {
        match store::find_answer(&self.0.db, user, message_id).await {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => Err(ChatError::new(ErrorCode::NotFound, "message not found")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The answers running in `user`'s conversation now, then each one started in it
    /// later. `NOT_FOUND` when the conversation is not theirs.
    pub async fn follow(&self, user: &str, conversation_id: Uuid) -> Result<BoxStream<'static, AnswerIds>, ChatError> {
        self.allow_lookup(user)?;
        match store::owns_conversation(&self.0.db, user, conversation_id).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ChatError::new(ErrorCode::NotFound, "conversation not found"));
            }
            Err(e) => return Err(unavailable(e)),
        }
        let user = user.to_owned();
        let answers = self.0.directory.follow(conversation_id);
        Ok(answers.filter(move |a| std::future::ready(a.user_id == user)).map(|a| a.ids).boxed())
    }

    /// `user`'s running answers, oldest first, with their length so far.
    pub async fn active(&self, user: &str) -> Vec<ActiveAnswer> {
        let mut active = Vec::new();
        for answer in self.0.directory.of_user(user).await {
            if let Some(offset) = self.0.logs.length(answer.ids.message_id).await {
                active.push(ActiveAnswer { ids: answer.ids, offset });
            }
        }
        active
    }
}
