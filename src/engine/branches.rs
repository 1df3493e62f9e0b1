//! Branches: where a start's messages go in the conversation's tree and what history
//! the model is sent (the branch to the new question, never its siblings), `chat:edit`
//! and `chat:regenerate` (`BUSY` while an answer runs in the conversation), deleting a
//! message with its subtree, and the tree with its active branch.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
};

use entity::message;
use uuid::Uuid;

use super::{Engine, Parts, unavailable};
use crate::{
    chat::{Branch, ChatError, ErrorCode, HistoryMessage, StartCommand, attachments},
    store,
};

/// Where a start goes in the tree, and what the model is sent before its question.
pub(super) struct Placed {
    /// The earlier messages of the branch, oldest first.
    pub history: Vec<HistoryMessage>,
    /// For a new question, its parent; for a regenerate, the question answered again.
    pub parent_id: Option<Uuid>,
    /// True for a regenerate: no new question is stored.
    pub regenerate: bool,
    /// Held until the answer is registered as running (dropped with this).
    pub _starting: Option<StartingGuard>,
}

/// This node's starts placed in an existing conversation and not yet registered as
/// running, counted per conversation. Between the two the answer is being stored, and
/// an edit or regenerate of the same conversation meeting one is `BUSY`, as it would be
/// a moment later: two of them arriving together from two sockets cannot both run.
#[derive(Default)]
pub(crate) struct Starting(Arc<Mutex<HashMap<Uuid, usize>>>);

impl Starting {
    /// Counts one more start in `conversation_id`; with `alone`, only when none is there.
    fn enter(&self, conversation_id: Uuid, alone: bool) -> Option<StartingGuard> {
        let mut starts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = starts.entry(conversation_id).or_default();
        if alone && *count > 0 {
            return None;
        }
        *count += 1;
        Some(StartingGuard { starts: self.0.clone(), conversation_id })
    }
}

/// One start counted in [`Starting`] until dropped.
pub(super) struct StartingGuard {
    starts: Arc<Mutex<HashMap<Uuid, usize>>>,
    conversation_id: Uuid,
}

impl Drop for StartingGuard {
    fn drop(&mut self) {
        let mut starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut count) = starts.entry(self.conversation_id) {
            *count.get_mut() = count.get().saturating_sub(1);
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

fn busy() -> ChatError {
    ChatError::new(ErrorCode::Busy, "an answer is running in this conversation")
}

fn message_not_found() -> ChatError {
    ChatError::new(ErrorCode::NotFound, "message not found")
}

/// Places `command` in its conversation: sets the conversation (and, for a regenerate,
/// the question) from the message it names, and reads the branch's history. Ownership is
/// checked here: another user's conversation or message reads as missing.
pub(super) async fn place(parts: &Parts, user: &str, command: &mut StartCommand) -> Result<Placed, ChatError> {
    let sent = command.history.take();
    let (conversation_id, target) = match command.branch {
        Branch::Continue(_) => match command.conversation_id {
            Some(id) => (id, None),
            None => return Ok(Placed { history: sent.unwrap_or_default(), parent_id: None, regenerate: false, _starting: None }),
        },
        Branch::Edit(id) | Branch::Regenerate(id) => {
            let m = store::find_message(&parts.db, user, id).await.map_err(unavailable)?.ok_or_else(message_not_found)?;
            (m.conversation_id, Some(m))
        }
    };
    let Some((conversation, messages)) = store::conversation_messages(&parts.db, user, conversation_id).await.map_err(unavailable)? else {
        return Err(ChatError::new(ErrorCode::NotFound, "conversation not found"));
    };
    command.conversation_id = Some(conversation_id);
    // A conversation keeps its preset while it is still configured.
    if command.preset.is_none() {
        command.preset = conversation.preset.clone().filter(|p| parts.config.system_prompt_presets.contains_key(p));
    }
    // An edit or regenerate is counted only when no other start is being stored in the
    // conversation, then checked against the answers already running: of two arriving
    // together, the second meets the first in one place or the other.
    let alone = matches!(command.branch, Branch::Edit(_) | Branch::Regenerate(_));
    let starting = parts.starting.enter(conversation_id, alone).ok_or_else(busy)?;
    let (parent_id, question_parent, regenerate) = match (command.branch, target) {
        (Branch::Continue(Some(parent)), _) => {
            if !messages.iter().any(|m| m.id == parent) {
                return Err(message_not_found());
            }
            (Some(parent), Some(parent), false)
        }
        (Branch::Continue(None), _) => {
            let leaf = store::active_leaf(&conversation, &messages);
            (leaf, leaf, false)
        }
        (Branch::Edit(_), Some(edited)) => {
            if edited.role != "user" {
                return Err(ChatError::new(ErrorCode::InvalidParams, "only a user message can be edited"));
            }
            refuse_while_running(parts, user, conversation_id).await?;
            (edited.parent_id, edited.parent_id, false)
        }
        (Branch::Regenerate(_), Some(answer)) => {
            let question = answer.parent_id.and_then(|p| messages.iter().find(|m| m.id == p));
            let Some(question) = question.filter(|q| answer.role == "assistant" && q.role == "user") else {
                return Err(ChatError::new(ErrorCode::InvalidParams, "only an answer to a stored question can be regenerated"));
            };
            refuse_while_running(parts, user, conversation_id).await?;
            command.message = question.content.clone();
            command.attachments = attachments::stored(question.attachments.as_deref());
            (Some(question.id), question.parent_id, true)
        }
        (Branch::Edit(_) | Branch::Regenerate(_), None) => return Err(message_not_found()),
    };
    let history = match sent {
        Some(sent) => sent,
        None => history_to(&messages, question_parent, parts.config.max_history_messages),
    };
    Ok(Placed { history, parent_id, regenerate, _starting: Some(starting) })
}

/// Stores the turn where [`place`] put it: the question and its answer's `streaming` row
/// (with the turns of other starts arriving together: the turn writer), or, for a
/// regenerate, the new answer's row alone. Either waits for a place at the database gate.
pub(super) async fn store(
    parts: &Parts,
    turn: store::NewTurn,
    ids: store::NewIds,
    placed: &Placed,
) -> Result<store::ChatBegun, store::StoreError> {
    let Some(question_id) = placed.parent_id.filter(|_| placed.regenerate) else {
        return parts.turns.write(turn, ids).await;
    };
    let conversation_id = turn.conversation_id.ok_or(store::StoreError::NotFound)?;
    let answer = store::NewAnswer {
        user_id: &turn.user_id,
        conversation_id,
        question_id,
        answer_id: ids.assistant_message_id,
        model: &turn.model,
        context_messages: turn.context_messages,
    };
    let slot = parts.headroom.write_slot().await.map_err(|_| store::StoreError::Overloaded)?;
    store::begin_answer(&parts.db, answer).await?;
    drop(slot);
    Ok(store::ChatBegun { conversation_id, created: false, user_message_id: question_id, assistant_message_id: ids.assistant_message_id })
}

/// The last `limit` messages with text on the branch ending at `leaf`, oldest first.
/// Failed answers with no text are skipped.
fn history_to(messages: &[message::Model], leaf: Option<Uuid>, limit: u64) -> Vec<HistoryMessage> {
    let Some(leaf) = leaf else {
        return Vec::new();
    };
    let branch: Vec<&message::Model> = store::branch_to(messages, leaf).into_iter().filter(|m| !m.content.is_empty()).collect();
    let skip = branch.len().saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    branch[skip..]
        .iter()
        .map(|m| HistoryMessage {
            role: m.role.clone(),
            content: m.content.clone(),
            images: attachments::stored_urls(m.attachments.as_deref()),
        })
        .collect()
}

/// `BUSY` while any answer of `user` runs in the conversation.
async fn refuse_while_running(parts: &Parts, user: &str, conversation_id: Uuid) -> Result<(), ChatError> {
    if parts.directory.of_user(user).await.iter().any(|a| a.ids.conversation_id == conversation_id) {
        return Err(busy());
    }
    Ok(())
}

/// What `chat:delete` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub conversation_id: Uuid,
    /// The message and its subtree, parents first.
    pub deleted: Vec<Uuid>,
    /// The conversation's active leaf now: the deleted message's parent.
    pub active_leaf_id: Option<Uuid>,
}

impl Engine {
    /// `NOT_FOUND` unless the conversation is `user`'s.
    pub async fn check_conversation(&self, user: &str, id: Uuid) -> Result<(), ChatError> {
        match store::owns_conversation(&self.0.db, user, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ChatError::new(ErrorCode::NotFound, "conversation not found")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Deletes `user`'s message and everything below it. Answers running in that subtree
    /// are stopped first and waited for until stored and ended; the active leaf moves to
    /// the message's parent, or, for a root, to the newest message left (none when none
    /// is): what the conversation reads as from then on.
    pub async fn delete_message(&self, user: &str, id: Uuid) -> Result<Deleted, ChatError> {
        let db = &self.0.db;
        let m = store::find_message(db, user, id).await.map_err(unavailable)?.ok_or_else(message_not_found)?;
        let Some((_, messages)) = store::conversation_messages(db, user, m.conversation_id).await.map_err(unavailable)? else {
            return Err(message_not_found());
        };
        let deleted = store::subtree(&messages, id);
        let doomed: HashSet<Uuid> = deleted.iter().copied().collect();
        for answer in self.0.directory.of_user(user).await {
            if doomed.contains(&answer.ids.message_id) {
                self.stop_and_wait(answer.ids).await;
            }
        }
        let leaf = m.parent_id.or_else(|| messages.iter().rev().find(|left| !doomed.contains(&left.id)).map(|left| left.id));
        store::delete_messages(db, user, m.conversation_id, &deleted, leaf).await.map_err(unavailable)?;
        Ok(Deleted { conversation_id: m.conversation_id, deleted, active_leaf_id: leaf })
    }
}

/// The tree of a conversation as a client reads it.
impl super::ConversationDetail {
    /// The end of the active branch.
    pub fn active_leaf(&self) -> Option<Uuid> {
        store::active_leaf(&self.conversation, &self.messages)
    }

    /// The messages of the active branch.
    pub fn active_branch(&self) -> HashSet<Uuid> {
        self.active_leaf().map(|leaf| store::branch_to(&self.messages, leaf).into_iter().map(|m| m.id).collect()).unwrap_or_default()
    }
}
