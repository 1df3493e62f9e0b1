//! canyon's protocol at `/ws/{client_id}`: flat JSON objects with a `type`.
//!
//! `chat_message { message: { content, role }, history: [{ role, content }] }` gets
//! `response_start`, `response_chunk { content }`..., `response_complete { content }`;
//! `ping` gets `pong`; failures are `error { message, code }`. The client's `history` is
//! what the model sees, as canyon had it; the exchange is stored in the conversation of
//! (user, client id). The token (`?token=` or a Bearer header) is checked at the
//! handshake: none or a bad one is HTTP 401.

use async_trait::async_trait;
use axum::{
    extract::{Path, State, ws::WebSocketUpgrade},
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Dialect, Flow, Handshake, Link, frames,
    wadi::{short, typed},
};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Final, HistoryMessage, StartCommand},
    cluster::Entry,
    http::api::{self, ApiError},
    transport::Wire,
};

/// The namespace of the conversation ids made from (user, client id).
const CONVERSATIONS: Uuid = Uuid::from_u128(0x6a0f_3c52_8f0e_4b1e_9d43_51c7_2f7d_0a11);

pub(super) async fn handler(
    State(wire): State<Wire>,
    Path(client_id): Path<String>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let claimed = api::query_value(&uri, "userId").map(Value::String);
    let (user, expires_at) = match api::caller_session(&wire.auth, &headers, &uri, claimed.as_ref()).await {
        Ok(signed_in) => signed_in,
        Err(refused) => return refused.into_response(),
    };
    let Some(slot) = wire.connections.acquire(&user) else {
        return ApiError::new(ErrorCode::RateLimit, "too many open connections for this user").into_response();
    };
    let conversation = Uuid::new_v5(&CONVERSATIONS, format!("{user}\u{0}{client_id}").as_bytes());
    super::upgrade(wire, ws, Handshake { headers, uri }, Some((user, slot, expires_at)), Canyon { conversation })
}

/// One canyon connection.
pub(super) struct Canyon {
    /// The conversation of (user, client id).
    conversation: Uuid,
}

#[async_trait]
impl Dialect for Canyon {
    async fn open(&mut self, _link: &mut Link) -> Flow {
        Flow::Continue
    }

    async fn message(&mut self, link: &mut Link, message: Value) -> Flow {
        let refused = match typed(&message) {
            Some(("ping", _)) => {
                link.send(json!({ "type": "pong" })).await;
                return Flow::Continue;
            }
            Some(("chat_message", fields)) => match self.chat(link, fields).await {
                Ok(()) => return Flow::Continue,
                Err(e) => e,
            },
            Some((other, _)) => ChatError::new(ErrorCode::InvalidPayload, format!("unknown message type {:?}", short(other))),
            None => ChatError::new(ErrorCode::InvalidPayload, "a message is a JSON object with a string `type`"),
        };
        link.refuse(self.error(&refused), refused.code).await;
        Flow::Continue
    }

    fn error(&self, error: &ChatError) -> Value {
        super::typed_error(error)
    }
}

impl Canyon {
    async fn chat(&self, link: &mut Link, fields: &Map<String, Value>) -> Result<(), ChatError> {
        let content = fields.get("message").and_then(|m| m.get("content")).filter(|c| c.is_string());
        let Some(content) = content else {
            return Err(ChatError::new(ErrorCode::InvalidPayload, "message.content must be a string"));
        };
        let config = &link.wire.config;
        let history = history(fields.get("history"), config.max_message_chars, config.max_history_messages)?;
        let payload = json!({ "message": content, "conversationId": self.conversation });
        let user = link.user().unwrap_or_default().to_owned();
        let mut command = StartCommand::parse(&payload, &user, config)?;
        command.history = Some(history);
        link.wire.engine.claim_conversation(&user, self.conversation).await?;
        let (ids, reader) = link.start(command).await?;
        link.send(json!({ "type": "response_start", "messageId": ids.message_id, "conversationId": ids.conversation_id })).await;
        link.deliver(ids, reader, move |entry| frame(entry, ids), None);
        Ok(())
    }
}

/// The client's `history`: `[{ role, content }]`, roles `user`, `assistant` or `system`,
/// each at most `max_chars` UTF-16 units; the last `keep` go to the model.
pub(crate) fn history(raw: Option<&Value>, max_chars: usize, keep: u64) -> Result<Vec<HistoryMessage>, ChatError> {
    let items = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ChatError::new(ErrorCode::InvalidPayload, "history must be an array")),
    };
    let wrong = || ChatError::new(ErrorCode::InvalidPayload, "each history item is { role: user|assistant|system, content: string }");
    let skip = items.len().saturating_sub(usize::try_from(keep).unwrap_or(usize::MAX));
    let mut history = Vec::with_capacity(items.len() - skip);
    for item in &items[skip..] {
        let role = item.get("role").and_then(Value::as_str).filter(|r| matches!(*r, "user" | "assistant" | "system")).ok_or_else(wrong)?;
        let content = item.get("content").and_then(Value::as_str).ok_or_else(wrong)?;
        if crate::chat::text::utf16_len(content) > max_chars as u64 {
            return Err(ChatError::new(ErrorCode::MessageTooLong, format!("a history message is longer than {max_chars} characters")));
        }
        history.push(HistoryMessage::new(role, crate::chat::text::storable(content).into_owned()));
    }
    Ok(history)
}

/// canyon's frame for one log entry, as text.
fn frame(entry: &Entry, ids: AnswerIds) -> Option<String> {
    let end = match entry {
        Entry::Text { text, .. } => return frames::text(&frames::CanyonChunk { content: text, kind: "response_chunk" }),
        Entry::Final(ending) => match &ending.outcome {
            Final::Complete { .. } => json!({ "type": "response_complete", "content": ending.content, "messageId": ids.message_id }),
            Final::Stopped => {
                json!({ "type": "response_complete", "content": ending.content, "stopped": true, "messageId": ids.message_id })
            }
            Final::Failed(e) => json!({ "type": "error", "message": e.message, "code": e.code, "messageId": ids.message_id }),
        },
    };
    Some(end.to_string())
}
