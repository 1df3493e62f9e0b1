//! The `/ai` requests other than `chat:start`, validated into typed requests at the
//! edge. Never panics, whatever the JSON.

use std::{convert::Infallible, sync::Arc};

use serde_json::Value;
use socketioxide::{adapter::Adapter, handler::FromMessageParts, socket::Socket};
use uuid::Uuid;

use crate::chat::{ChatError, ErrorCode, command::wrong_type, json::parse_lenient};

/// An event's first argument, read as JavaScript wrote it ([`parse_lenient`]): `Ok(None)`
/// when the event came without one, `Err` when its JSON does not parse (too deep, cut).
pub(super) struct Payload(pub Result<Option<Value>, ()>);

impl<A: Adapter> FromMessageParts<A> for Payload {
    type Error = Infallible;

    fn from_message_parts(_: &Arc<Socket<A>>, v: &mut socketioxide::handler::Value, _: &Option<i64>) -> Result<Self, Infallible> {
        // The common parser keeps an event's JSON as text: `["event", arg, ...]`.
        let Some(text) = v.as_str() else {
            return Ok(Self(Err(())));
        };
        Ok(Self(match parse_lenient(text) {
            Ok(Value::Array(mut args)) if !args.is_empty() => Ok((args.len() > 1).then(|| args.swap_remove(1))),
            _ => Err(()),
        }))
    }
}

/// A validated `chat:stop`: a message id, or the socket's current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopRequest {
    pub message_id: Option<Uuid>,
}

impl StopRequest {
    /// Accepts nothing, `null`, `{}` or `{ messageId }`.
    pub fn parse(payload: Option<&Value>) -> Result<Self, ChatError> {
        let obj = match payload {
            None | Some(Value::Null) => return Ok(Self { message_id: None }),
            Some(Value::Object(obj)) => obj,
            Some(_) => {
                return Err(ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"));
            }
        };
        let message_id = match obj.get("messageId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(Uuid::try_parse(s).map_err(|_| ChatError::new(ErrorCode::InvalidParams, "messageId is not a UUID"))?)
            }
            Some(_) => return Err(wrong_type("messageId", "a string")),
        };
        Ok(Self { message_id })
    }
}

/// A validated `chat:resume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeRequest {
    pub message_id: Uuid,
    /// UTF-16 units of the answer the client already has.
    pub offset: u64,
}

impl ResumeRequest {
    /// Accepts `{ messageId, offset? }`.
    pub fn parse(payload: Option<&Value>) -> Result<Self, ChatError> {
        let Some(Value::Object(obj)) = payload else {
            return Err(ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"));
        };
        let message_id = required_uuid(obj.get("messageId"), "messageId")?;
        let offset = match obj.get("offset") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => {
                n.as_u64().ok_or_else(|| ChatError::new(ErrorCode::InvalidParams, "offset must be a whole number"))?
            }
            Some(_) => return Err(wrong_type("offset", "a number")),
        };
        Ok(Self { message_id, offset })
    }
}

/// A validated `chat:join` or `chat:leave`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRequest {
    pub conversation_id: Uuid,
}

impl ConversationRequest {
    /// Accepts `{ conversationId }`.
    pub fn parse(payload: Option<&Value>) -> Result<Self, ChatError> {
        let Some(Value::Object(obj)) = payload else {
            return Err(ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"));
        };
        Ok(Self { conversation_id: required_uuid(obj.get("conversationId"), "conversationId")? })
    }
}

pub(super) fn required_uuid(value: Option<&Value>, field: &str) -> Result<Uuid, ChatError> {
    match value {
        Some(Value::String(s)) => {
            Uuid::try_parse(s).map_err(|_| ChatError::new(ErrorCode::InvalidParams, format!("{field} is not a UUID")))
        }
        None | Some(Value::Null) => Err(ChatError::new(ErrorCode::InvalidPayload, format!("{field} is required"))),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

#[cfg(test)]
mod fuzz {
    //! Arbitrary JSON into the parsers: never a panic, always a protocol code.

    use super::*;
    use crate::chat::command::fuzz::any_json;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn payloads_never_panic(payload in any_json()) {
            let codes = [
                StopRequest::parse(Some(&payload)).err(),
                ResumeRequest::parse(Some(&payload)).err(),
                ConversationRequest::parse(Some(&payload)).err(),
            ];
            for e in codes.into_iter().flatten() {
                prop_assert!(matches!(e.code, ErrorCode::InvalidPayload | ErrorCode::InvalidParams));
            }
        }
    }
}
