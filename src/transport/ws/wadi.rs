//! WADI's protocol: flat JSON objects with a `type`.
//!
//! - `/ws/chat/{conversationId}`: `connected { clientId }` on open; `auth { token }` gets
//!   `authenticated` (a bad token, or another user's conversation, closes with 1008; an
//!   unknown id is created for the user); `message { content }` gets `start`, `chunk {
//!   content }`..., `complete { fullOutput }`; `stop` ends the answer with `complete {
//!   fullOutput, stopped: true }`. Failures are `error { message, code }`.
//! - `/ws/runs/{runId}/stream[?offset=]`: watches one answer of the user's (the run id is
//!   its message id), on any wire, from its start or the offset, then live, then
//!   `complete` (its `fullOutput` always the whole answer) and a normal close.

use async_trait::async_trait;
use axum::{
    extract::{Path, State, ws::WebSocketUpgrade},
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Dialect, Flow, Handshake, Link, after, frames,
    link::{SignInRefused, close},
};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Final, StartCommand},
    cluster::Entry,
    transport::Wire,
};

/// Fields of a `message` passed on to the start as they are (chatwire's extensions).
const START_FIELDS: [&str; 4] = ["model", "temperature", "maxTokens", "clientMessageId"];

pub(super) async fn chat_handler(
    State(wire): State<Wire>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    super::upgrade(wire, ws, Handshake { headers, uri }, None, Wadi { kind: Kind::Chat { path: id, conversation: None } })
}

pub(super) async fn run_handler(
    State(wire): State<Wire>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    super::upgrade(wire, ws, Handshake { headers, uri }, None, Wadi { kind: Kind::Run { path: id, watching: false } })
}

/// One WADI connection.
pub(super) struct Wadi {
    kind: Kind,
}

enum Kind {
    /// A chat in the path's conversation, once it is known to be the user's.
    Chat { path: String, conversation: Option<Uuid> },
    /// A watcher of one answer.
    Run { path: String, watching: bool },
}

#[async_trait]
impl Dialect for Wadi {
    async fn open(&mut self, link: &mut Link) -> Flow {
        link.send(json!({ "type": "connected", "clientId": link.id })).await;
        // A token in the handshake (`?token=`, a Bearer header), or open mode, needs no `auth`.
        let handshake_token = crate::auth::request_token(&link.handshake.headers, &link.handshake.uri).is_some();
        if link.wire.auth.is_open() || handshake_token {
            return self.authorize(link, None).await;
        }
        Flow::Continue
    }

    async fn message(&mut self, link: &mut Link, message: Value) -> Flow {
        let Some((kind, fields)) = typed(&message) else {
            let e = ChatError::new(ErrorCode::InvalidPayload, "a message is a JSON object with a string `type`");
            link.refuse(self.error(&e), e.code).await;
            return Flow::Continue;
        };
        match kind {
            "auth" => {
                let Some(token) = fields.get("token").and_then(Value::as_str) else {
                    return Flow::Close(close::POLICY, "unauthorized");
                };
                let flow = self.authorize(link, Some(token)).await;
                if flow == Flow::Continue {
                    link.send(json!({ "type": "authenticated" })).await;
                }
                flow
            }
            "message" => self.chat(link, fields).await,
            "stop" => {
                // A stop ends the answer with `complete { stopped: true }`; with nothing
                // running it is told so, so that every message gets an answer.
                let stopped = match (&self.kind, link.user()) {
                    (Kind::Chat { .. }, Some(_)) => link.wire.engine.stop_connection(&link.connection).await,
                    (Kind::Run { .. }, Some(user)) => match run_id(&self.kind) {
                        Some(run) => link.wire.engine.stop(user, run).await.unwrap_or(false),
                        None => false,
                    },
                    (_, None) => return self.refuse(link, ChatError::new(ErrorCode::Unauthorized, "send auth first")).await,
                };
                if stopped {
                    Flow::Continue
                } else {
                    self.refuse(link, ChatError::new(ErrorCode::NotFound, "nothing is running to stop")).await
                }
            }
            _ => self.refuse(link, ChatError::new(ErrorCode::InvalidPayload, format!("unknown message type {:?}", short(kind)))).await,
        }
    }

    fn error(&self, error: &ChatError) -> Value {
        super::typed_error(error)
    }
}

impl Wadi {
    async fn refuse(&self, link: &Link, error: ChatError) -> Flow {
        link.refuse(self.error(&error), error.code).await;
        Flow::Continue
    }

    /// Signs in and checks the path's resource is the user's: the conversation (created
    /// when unknown) or the run (then watched).
    async fn authorize(&mut self, link: &mut Link, token: Option<&str>) -> Flow {
        let user = match link.sign_in(token, None).await {
            Ok(user) => user.to_owned(),
            Err(SignInRefused::TooManyConnections) => {
                let e = ChatError::new(ErrorCode::RateLimit, "too many open connections for this user");
                link.refuse(self.error(&e), e.code).await;
                return Flow::Close(close::POLICY, "RATE_LIMIT");
            }
            Err(_) => return Flow::Close(close::POLICY, "unauthorized"),
        };
        match &mut self.kind {
            Kind::Chat { path, conversation } => {
                if conversation.is_some() {
                    return Flow::Continue;
                }
                let Ok(id) = Uuid::try_parse(path) else { return Flow::Close(close::POLICY, "conversation not found") };
                match link.wire.engine.claim_conversation(&user, id).await {
                    Ok(_) => *conversation = Some(id),
                    Err(e) if e.code == ErrorCode::Forbidden => return Flow::Close(close::POLICY, "forbidden"),
                    Err(e) => return failed(link, self.error(&e), e.code).await,
                }
                Flow::Continue
            }
            Kind::Run { path, watching } => {
                if *watching {
                    return Flow::Continue;
                }
                let Ok(run) = Uuid::try_parse(path) else { return Flow::Close(close::POLICY, "run not found") };
                let asked = link.handshake.query("offset").and_then(|o| o.parse::<u64>().ok()).unwrap_or(0);
                match link.wire.engine.subscribe(&user, run, asked).await {
                    Ok(s) => {
                        *watching = true;
                        // The engine clamps an offset beyond the text; the watcher waits for it instead.
                        link.deliver(s.ids, s.reader, move |entry| frame(entry, s.ids, asked), Some((close::NORMAL, "complete")));
                        Flow::Continue
                    }
                    Err(e) if e.code == ErrorCode::NotFound => Flow::Close(close::POLICY, "run not found"),
                    Err(e) => failed(link, self.error(&e), e.code).await,
                }
            }
        }
    }

    /// `message { content }`: an answer in the path's conversation.
    async fn chat(&mut self, link: &mut Link, fields: &Map<String, Value>) -> Flow {
        let Kind::Chat { conversation: Some(conversation), .. } = self.kind else {
            let e = match self.kind {
                Kind::Run { .. } => ChatError::new(ErrorCode::InvalidPayload, "a run stream takes no messages"),
                Kind::Chat { .. } => ChatError::new(ErrorCode::Unauthorized, "send auth first"),
            };
            return self.refuse(link, e).await;
        };
        let Some(content) = fields.get("content").filter(|c| c.is_string()) else {
            return self.refuse(link, ChatError::new(ErrorCode::InvalidPayload, "content must be a string")).await;
        };
        let mut payload = Map::new();
        payload.insert("message".into(), content.clone());
        payload.insert("conversationId".into(), json!(conversation));
        for name in START_FIELDS {
            if let Some(v) = fields.get(name) {
                payload.insert(name.into(), v.clone());
            }
        }
        let user = link.user().unwrap_or_default().to_owned();
        let started = match StartCommand::parse(&Value::Object(payload), &user, &link.wire.config) {
            Ok(command) => link.start(command).await,
            Err(e) => Err(e),
        };
        match started {
            Ok((ids, reader)) => {
                link.send(json!({ "type": "start", "messageId": ids.message_id, "conversationId": ids.conversation_id })).await;
                link.deliver(ids, reader, move |entry| frame(entry, ids, 0), None);
                Flow::Continue
            }
            Err(e) => self.refuse(link, e).await,
        }
    }
}

/// An error that leaves the connection without its resource: the error, then 1011 for
/// the server's own trouble, 1008 for the rest (a rate limit, say).
async fn failed(link: &Link, frame: Value, code: ErrorCode) -> Flow {
    link.refuse(frame, code).await;
    match code {
        ErrorCode::Internal | ErrorCode::Unavailable => Flow::Close(close::INTERNAL, "internal error"),
        _ => Flow::Close(close::POLICY, code.as_str()),
    }
}

/// The run id of a run stream's path.
fn run_id(kind: &Kind) -> Option<Uuid> {
    match kind {
        Kind::Run { path, .. } => Uuid::try_parse(path).ok(),
        Kind::Chat { .. } => None,
    }
}

/// WADI's frame for one log entry; text before `skip` (a watcher's offset) is left out.
fn frame(entry: &Entry, ids: AnswerIds, skip: u64) -> Option<String> {
    match entry {
        Entry::Text { text, offset, end } => {
            let text = after(text, *offset, skip);
            if *end <= skip || text.is_empty() {
                return None;
            }
            frames::text(&frames::WadiChunk { content: text, message_id: ids.message_id, kind: "chunk" })
        }
        Entry::Final(ending) => Some(match &ending.outcome {
            Final::Complete { .. } => {
                json!({ "type": "complete", "fullOutput": ending.content, "messageId": ids.message_id, "conversationId": ids.conversation_id })
            }
            Final::Stopped => json!({
                "type": "complete", "fullOutput": ending.content, "stopped": true,
                "messageId": ids.message_id, "conversationId": ids.conversation_id,
            }),
            Final::Failed(e) => json!({ "type": "error", "message": e.message, "code": e.code, "messageId": ids.message_id }),
        }
        .to_string()),
    }
}

/// A message's `type` and its fields, when it is an object with a string `type`.
pub(super) fn typed(message: &Value) -> Option<(&str, &Map<String, Value>)> {
    let fields = message.as_object()?;
    Some((fields.get("type")?.as_str()?, fields))
}

/// At most 64 bytes of a client's string, for an error message.
pub(super) fn short(s: &str) -> &str {
    crate::chat::text::prefix_within(s, 64)
}
