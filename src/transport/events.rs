//! The `/ai` events, with the exact field names of PROTOCOL.md, and the one place a
//! final event is built from a log's final entry, live or replayed. The SSE wire sends
//! the same payloads.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Final},
    cluster::Ending,
    engine::ActiveAnswer,
};

/// The `chat:start` acknowledgement.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StartAck {
    #[serde(rename_all = "camelCase")]
    Ok {
        ok: bool,
        conversation_id: Uuid,
        user_message_id: Uuid,
        message_id: Uuid,
        /// The new question's parent (for a regenerate, the question answered again);
        /// `null` for a conversation's first question.
        parent_message_id: Option<Uuid>,
    },
    Err {
        ok: bool,
        error: ChatError,
    },
}

impl StartAck {
    pub fn ok(ids: AnswerIds, user_message_id: Uuid, parent_message_id: Option<Uuid>) -> Self {
        Self::Ok { ok: true, conversation_id: ids.conversation_id, user_message_id, message_id: ids.message_id, parent_message_id }
    }
    pub fn err(error: ChatError) -> Self {
        Self::Err { ok: false, error }
    }
}

/// `chat:conversation`: a conversation was created.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationCreated {
    pub conversation_id: Uuid,
}

/// `chat:user-message`: the user's message is stored.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMessageStored<'a> {
    pub message_id: Uuid,
    pub content: &'a str,
    pub conversation_id: Uuid,
    /// The message it follows; `null` for a conversation's first question.
    pub parent_message_id: Option<Uuid>,
}

/// `chat:message`: a chunk of the answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Chunk<'a> {
    pub content: &'a str,
    pub is_complete: bool,
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub seq: u64,
    /// UTF-16 length of the answer before this chunk.
    pub offset: u64,
}

impl<'a> Chunk<'a> {
    /// The chunk of `content` at `offset`, the reader's `seq`-th.
    pub fn new(ids: AnswerIds, content: &'a str, offset: u64, seq: u64) -> Self {
        Self { content, is_complete: false, message_id: ids.message_id, conversation_id: ids.conversation_id, seq, offset }
    }
}

/// `chat:end`: the answer is complete and stored.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct End<'a> {
    message_id: Uuid,
    conversation_id: Uuid,
    /// `null` (with the two others) when the provider sent no usage.
    total_tokens: Option<u32>,
    /// The bare model name of who answered (its provider is in the stored row).
    model: &'a str,
    finish_reason: &'a str,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    content: &'a str,
}

/// `chat:stopped`: the answer was stopped; `content` is the stored partial answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stopped<'a> {
    message_id: Uuid,
    conversation_id: Uuid,
    content: &'a str,
}

/// `chat:error`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEvent<'a> {
    pub message: &'a str,
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    /// A refused start's `retryAfterMs` (the node is overloaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl<'a> ErrorEvent<'a> {
    /// An error about no particular answer.
    pub fn bare(error: &'a ChatError) -> Self {
        Self { message: &error.message, code: error.code, message_id: None, conversation_id: None, retry_after_ms: error.retry_after_ms }
    }
}

/// `chat:stop`'s acknowledgement.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StopAck {
    pub ok: bool,
    pub stopped: bool,
}

/// One running answer, as `chat:active` and `chat:join` list them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveGeneration {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    /// UTF-16 length of the answer so far.
    pub offset: u64,
}

impl From<ActiveAnswer> for ActiveGeneration {
    fn from(a: ActiveAnswer) -> Self {
        Self { conversation_id: a.ids.conversation_id, message_id: a.ids.message_id, offset: a.offset }
    }
}

/// The final event of an answer: its name and payload. The one place it is built.
pub fn final_event(ids: AnswerIds, ending: &Ending) -> (&'static str, Value) {
    let (message_id, conversation_id) = (ids.message_id, ids.conversation_id);
    let content = ending.content.as_str();
    let payload = match &ending.outcome {
        Final::Complete { model, finish_reason, usage, .. } => serde_json::to_value(End {
            message_id,
            conversation_id,
            total_tokens: usage.map(|u| u.total_tokens),
            model,
            finish_reason,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            content,
        }),
        Final::Stopped => serde_json::to_value(Stopped { message_id, conversation_id, content }),
        Final::Failed(error) => serde_json::to_value(ErrorEvent {
            message: &error.message,
            code: error.code,
            message_id: Some(message_id),
            conversation_id: Some(conversation_id),
            retry_after_ms: None,
        }),
    };
    let name = match ending.outcome {
        Final::Complete { .. } => "chat:end",
        Final::Stopped => "chat:stopped",
        Final::Failed(_) => "chat:error",
    };
    (name, payload.unwrap_or(Value::Null))
}
