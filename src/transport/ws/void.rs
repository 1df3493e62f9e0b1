//! Void's protocol at `WS_PATH` (default `/ws`): every message, both ways, is
//! `{ type, payload }`.
//!
//! `connect_success` on open; `authenticate { token }` gets `auth_success` or
//! `auth_failure` (with auth on, nothing but `authenticate` and `ping` is served before
//! it: `error { code: "FORBIDDEN" }`); `ping` gets `pong`; `provider_list`,
//! `provider_models { provider }`; `provider_request { provider, model, prompt,
//! temperature, maxTokens, stream }` gets `provider_stream_start`,
//! `provider_stream_chunk { chunk }`..., `provider_stream_end { content, usage }`, or one
//! `provider_response`; failures are `provider_error { code, message }`, malformed
//! messages `error { code, message }`. chatwire's extensions: `payload.requestId`, echoed
//! on every reply to that request; `conversationId`, to go on with a conversation; and
//! `provider_resume { messageId, offset }`, to read an answer again after a drop.

use async_trait::async_trait;
use axum::{
    extract::{State, ws::WebSocketUpgrade},
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Dialect, Flow, Handshake, Link, frames, link::SignInRefused, wadi::short};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Final, StartCommand, Usage},
    cluster::Entry,
    transport::Wire,
};

/// Fields of a `provider_request` passed on to the start as they are.
const START_FIELDS: [&str; 5] = ["model", "temperature", "maxTokens", "conversationId", "clientMessageId"];
/// Longest `requestId` echoed.
const MAX_REQUEST_ID: usize = 128;

pub(super) async fn handler(State(wire): State<Wire>, ws: WebSocketUpgrade, headers: HeaderMap, uri: Uri) -> Response {
    super::upgrade(wire, ws, Handshake { headers, uri }, None, Void)
}

/// One Void connection.
pub(super) struct Void;

/// A decoded message: its type, its payload's fields, and the `requestId` to echo.
struct Request<'a> {
    kind: &'a str,
    payload: Map<String, Value>,
    request_id: Option<Value>,
}

#[async_trait]
impl Dialect for Void {
    async fn open(&mut self, link: &mut Link) -> Flow {
        // Open mode, or a token in the handshake: signed in from the start.
        let handshake_token = crate::auth::request_token(&link.handshake.headers, &link.handshake.uri).is_some();
        if link.wire.auth.is_open() || handshake_token {
            let _ = link.sign_in(None, None).await;
        }
        let open = link.wire.auth.is_open();
        link.send(json!({ "type": "connect_success", "payload": { "clientId": link.id, "authRequired": !open } })).await;
        Flow::Continue
    }

    async fn message(&mut self, link: &mut Link, message: Value) -> Flow {
        let request = match decode(&message) {
            Ok(request) => request,
            Err(e) => {
                link.refuse(self.error(&e), e.code).await;
                return Flow::Continue;
            }
        };
        let id = request.request_id.clone();
        let reply = match request.kind {
            "authenticate" => authenticate(link, &request).await,
            "ping" => frame("pong", json!({ "timestamp": chrono::Utc::now().timestamp_millis() }), &id),
            _ if link.user().is_none() => {
                let e = ChatError::new(ErrorCode::Forbidden, "authenticate first");
                link.refuse(error_frame("error", &e, &id), e.code).await;
                return Flow::Continue;
            }
            "provider_list" => {
                let list = link.wire.engine.providers().providers();
                frame("provider_list", json!({ "providers": list }), &id)
            }
            "provider_models" => match request.payload.get("provider").and_then(Value::as_str) {
                None => error_frame("error", &ChatError::new(ErrorCode::InvalidPayload, "provider must be a string"), &id),
                Some(name) => match link.wire.engine.providers().models(name).await {
                    Some(models) => {
                        let models: Vec<Value> = models.iter().map(|m| json!({ "id": m })).collect();
                        frame("provider_models", json!({ "provider": name, "models": models }), &id)
                    }
                    None => error_frame("provider_error", &ChatError::new(ErrorCode::InvalidModel, "unknown provider"), &id),
                },
            },
            "provider_request" => match start(link, &request).await {
                Ok(()) => return Flow::Continue,
                Err(e) => error_frame("provider_error", &e, &id),
            },
            "provider_resume" => match resume(link, &request).await {
                Ok(()) => return Flow::Continue,
                Err(e) => error_frame("provider_error", &e, &id),
            },
            other => {
                error_frame("error", &ChatError::new(ErrorCode::InvalidPayload, format!("unknown message type {:?}", short(other))), &id)
            }
        };
        if let Some(code) = reply["payload"]["code"].as_str().and_then(ErrorCode::parse) {
            link.refuse(reply, code).await;
        } else {
            link.send(reply).await;
        }
        Flow::Continue
    }

    fn error(&self, error: &ChatError) -> Value {
        error_frame("error", error, &None)
    }
}

/// `{ type, payload }` with `payload` an object (absent or null: empty) and a `requestId`
/// that is a string of at most 128 characters or a number.
fn decode(message: &Value) -> Result<Request<'_>, ChatError> {
    let malformed = || ChatError::new(ErrorCode::InvalidPayload, "a message is { type: string, payload: object }");
    let fields = message.as_object().ok_or_else(malformed)?;
    let kind = fields.get("type").and_then(Value::as_str).ok_or_else(malformed)?;
    let payload = match fields.get("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(malformed()),
    };
    let request_id = match payload.get("requestId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID => Some(Value::String(s.clone())),
        Some(n @ Value::Number(_)) => Some(n.clone()),
        Some(_) => {
            return Err(ChatError::new(ErrorCode::InvalidPayload, "requestId must be a string of at most 128 characters or a number"));
        }
    };
    Ok(Request { kind, payload, request_id })
}

/// [`decode`]'s type and `requestId`, for the decoder's property test.
#[cfg(test)]
pub(super) fn decode_for_tests(message: &Value) -> Result<(String, Option<Value>), ChatError> {
    decode(message).map(|r| (r.kind.to_owned(), r.request_id))
}

async fn authenticate(link: &mut Link, request: &Request<'_>) -> Value {
    let id = &request.request_id;
    let token = request.payload.get("token").and_then(Value::as_str);
    if token.is_none() && !link.wire.auth.is_open() {
        return frame("auth_failure", json!({ "code": "UNAUTHORIZED", "message": "unauthorized" }), id);
    }
    match link.sign_in(token, request.payload.get("userId")).await {
        Ok(user) => frame("auth_success", json!({ "userId": user }), id),
        Err(SignInRefused::TooManyConnections) => {
            frame("auth_failure", json!({ "code": "RATE_LIMIT", "message": "too many open connections for this user" }), id)
        }
        Err(_) => frame("auth_failure", json!({ "code": "UNAUTHORIZED", "message": "unauthorized" }), id),
    }
}

/// The provider a request names, or the default one.
/// `provider_request`: an answer, streamed or in one `provider_response`.
async fn start(link: &mut Link, request: &Request<'_>) -> Result<(), ChatError> {
    let payload = &request.payload;
    let named = match payload.get("provider") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ChatError::new(ErrorCode::InvalidPayload, "provider must be a string")),
    };
    let stream = match payload.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ChatError::new(ErrorCode::InvalidPayload, "stream must be a boolean")),
    };
    let mut start = Map::new();
    if let Some(prompt) = payload.get("prompt") {
        start.insert("message".into(), prompt.clone());
    }
    for name in START_FIELDS {
        if let Some(v) = payload.get(name) {
            start.insert(name.into(), v.clone());
        }
    }
    if let Some(named) = named {
        start.insert("provider".into(), Value::String(named.to_owned()));
    }
    let user = link.user().unwrap_or_default().to_owned();
    let command = StartCommand::parse(&Value::Object(start), &user, &link.wire.config)
        .map_err(|e| if e.message == "message is required" { ChatError::new(e.code, "prompt is required") } else { e })?;
    // Who is asked first (a fallback may answer instead: `provider_stream_end` says who did).
    let route = link.wire.engine.providers().resolve(command.provider.as_deref(), &command.model).await?;
    let (provider, model) = (route.primary().provider.clone(), route.primary().model.clone());
    let (ids, reader) = link.start(command).await?;
    let id = request.request_id.clone();
    if stream {
        let started = json!({ "provider": provider, "model": model, "messageId": ids.message_id, "conversationId": ids.conversation_id });
        link.send(frame("provider_stream_start", started, &id)).await;
    }
    link.deliver(ids, reader, move |entry| encode(entry, ids, stream, &id), None);
    Ok(())
}

/// `provider_resume { messageId, offset? }`: an answer of the user's from `offset`, as a stream.
async fn resume(link: &mut Link, request: &Request<'_>) -> Result<(), ChatError> {
    if link.expired() {
        return Err(ChatError::code(ErrorCode::TokenExpired));
    }
    let message_id = request.payload.get("messageId").and_then(Value::as_str).and_then(|s| Uuid::try_parse(s).ok());
    let Some(message_id) = message_id else { return Err(ChatError::new(ErrorCode::InvalidParams, "messageId must be a UUID")) };
    let offset = match request.payload.get("offset") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| ChatError::new(ErrorCode::InvalidParams, "offset must be a whole number"))?,
    };
    let user = link.user().unwrap_or_default().to_owned();
    let s = link.wire.engine.subscribe(&user, message_id, offset).await?;
    let (ids, id) = (s.ids, request.request_id.clone());
    let started =
        json!({ "messageId": ids.message_id, "conversationId": ids.conversation_id, "offset": s.offset, "status": s.status.as_str() });
    link.send(frame("provider_stream_start", started, &id)).await;
    link.deliver(ids, s.reader, move |entry| encode(entry, ids, true, &id), None);
    Ok(())
}

/// Void's frame for one log entry: chunks when streaming, then the end (or the one response).
fn encode(entry: &Entry, ids: AnswerIds, stream: bool, id: &Option<Value>) -> Option<String> {
    let (message_id, conversation_id) = (ids.message_id, ids.conversation_id);
    let end = match entry {
        Entry::Text { text, .. } => {
            let payload = frames::VoidChunkPayload { chunk: text, message_id, request_id: id.as_ref() };
            return stream.then(|| frames::text(&frames::VoidChunk { payload, kind: "provider_stream_chunk" })).flatten();
        }
        Entry::Final(ending) => {
            let kind = if stream { "provider_stream_end" } else { "provider_response" };
            let mut end =
                json!({ "content": ending.content, "usage": Value::Null, "messageId": message_id, "conversationId": conversation_id });
            match &ending.outcome {
                Final::Complete { usage, provider, model, .. } => {
                    end["usage"] = usage.as_ref().map_or(Value::Null, usage_of);
                    (end["provider"], end["model"]) = (json!(provider), json!(model));
                }
                Final::Stopped => end["stopped"] = json!(true),
                Final::Failed(e) => {
                    let failed =
                        json!({ "code": e.code, "message": e.message, "messageId": message_id, "conversationId": conversation_id });
                    return Some(frame("provider_error", failed, id).to_string());
                }
            }
            frame(kind, end, id)
        }
    };
    Some(end.to_string())
}

/// `{ promptTokens, completionTokens, totalTokens }` (null when the upstream sent none).
fn usage_of(usage: &Usage) -> Value {
    json!({ "promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens, "totalTokens": usage.total_tokens })
}

/// `{ type, payload }`, with the request's `requestId` in the payload.
fn frame(kind: &str, mut payload: Value, id: &Option<Value>) -> Value {
    if let (Some(id), Some(fields)) = (id, payload.as_object_mut()) {
        fields.insert("requestId".into(), id.clone());
    }
    json!({ "type": kind, "payload": payload })
}

fn error_frame(kind: &str, error: &ChatError, id: &Option<Value>) -> Value {
    frame(kind, Value::Object(error.fields()), id)
}
