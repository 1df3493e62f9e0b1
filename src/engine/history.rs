//! A user's history for the REST routes: pages of conversations, one conversation with
//! its messages, a new title, deleting a conversation (its running answers are stopped
//! and stored first), and one message. Someone else's id reads as missing: `NOT_FOUND`.

use std::time::Duration;

use entity::{conversation, message};
use uuid::Uuid;

use super::{Engine, unavailable};
pub use crate::store::{ConversationPage, ConversationSummary, PageKey};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, StopReason},
    cluster::Entry,
    store,
};

/// How long a delete waits for a stopped answer to be stored and ended before it
/// deletes anyway (a stopped generation stores its row within moments).
const STOPPED_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A conversation and all its messages, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationDetail {
    pub conversation: conversation::Model,
    pub messages: Vec<message::Model>,
}

fn not_found(what: &str) -> ChatError {
    ChatError::new(ErrorCode::NotFound, format!("{what} not found"))
}

impl Engine {
    /// At most `limit` of `user`'s conversations after `after`, most recently updated first.
    pub async fn conversations(&self, user: &str, after: Option<PageKey>, limit: u64) -> Result<ConversationPage, ChatError> {
        store::list_conversations(&self.0.db, user, after, limit).await.map_err(unavailable)
    }

    /// `user`'s conversation with its messages.
    pub async fn conversation(&self, user: &str, id: Uuid) -> Result<ConversationDetail, ChatError> {
        match store::conversation_messages(&self.0.db, user, id).await.map_err(unavailable)? {
            Some((conversation, messages)) => Ok(ConversationDetail { conversation, messages }),
            None => Err(not_found("conversation")),
        }
    }

    /// Makes sure `user` may talk in the conversation `id`, creating it for them when it
    /// does not exist (wires whose clients name conversations). True when it was created;
    /// `FORBIDDEN` when it is another user's.
    pub async fn claim_conversation(&self, user: &str, id: Uuid) -> Result<bool, ChatError> {
        match store::claim_conversation(&self.0.db, user, id, "").await {
            Ok(store::ConversationClaim::Created) => Ok(true),
            Ok(store::ConversationClaim::Owned) => Ok(false),
            Ok(store::ConversationClaim::Foreign) => Err(ChatError::new(ErrorCode::Forbidden, "this conversation is another user's")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Sets the title of `user`'s conversation (already validated by the caller).
    pub async fn rename_conversation(&self, user: &str, id: Uuid, title: &str) -> Result<conversation::Model, ChatError> {
        store::rename_conversation(&self.0.db, user, id, title).await.map_err(unavailable)?.ok_or_else(|| not_found("conversation"))
    }

    /// Deletes `user`'s conversation and its messages. Answers running in it are stopped
    /// first, and each is waited for until its row is stored and its final event is out
    /// (`chat:stopped` to whoever reads it), so nothing writes to the rows once they are gone.
    pub async fn delete_conversation(&self, user: &str, id: Uuid) -> Result<(), ChatError> {
        if store::find_conversation(&self.0.db, user, id).await.map_err(unavailable)?.is_none() {
            return Err(not_found("conversation"));
        }
        let running = self.0.directory.of_user(user).await.into_iter().filter(|a| a.ids.conversation_id == id);
        for answer in running {
            self.stop_and_wait(answer.ids).await;
        }
        match store::delete_conversation(&self.0.db, user, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_found("conversation")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Stops a running answer and waits until its row is stored and its final event is
    /// out (`chat:stopped` to whoever reads it), so nothing writes to the row afterwards.
    pub(super) async fn stop_and_wait(&self, ids: AnswerIds) {
        let message_id = ids.message_id;
        // Attached before the stop, at the end of the text: the next entry that
        // matters is the final one, appended once the row is stored.
        let reader = self.0.logs.open(message_id, u64::MAX).await;
        self.0.directory.stop(message_id, StopReason::User).await;
        if let Some(mut reader) = reader {
            let ended = async {
                while let Some(entry) = reader.next(usize::MAX).await {
                    if matches!(entry, Entry::Final(_)) {
                        break;
                    }
                }
            };
            if tokio::time::timeout(STOPPED_ANSWER_WAIT, ended).await.is_err() {
                tracing::warn!(%message_id, conversation_id = %ids.conversation_id, "a stopped answer did not end in time; deleting anyway");
            }
        }
    }

    /// One of `user`'s messages (a question or an answer).
    pub async fn message(&self, user: &str, id: Uuid) -> Result<message::Model, ChatError> {
        store::find_message(&self.0.db, user, id).await.map_err(unavailable)?.ok_or_else(|| not_found("message"))
    }
}
