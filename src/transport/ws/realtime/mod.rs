//! The voice proxy: a raw WebSocket at `REALTIME_PATH` speaking Smriti's protocol
//! (`welcome`, `openai_event` both ways, `ping`/`pong`, `error { message, details }`, the
//! legacy `text_message` and `audio_*` messages) in front of the OpenAI Realtime API.
//!
//! The server stays in charge: the token is checked at the upgrade (401), the preset's
//! instructions, model, voice and output limit are the server's, a client's
//! `session.update` is cut to an allowlist, and sessions are capped in length, count,
//! idleness and daily tokens. Each session is a conversation whose transcripts are
//! stored as its messages. The serve loop (`super::serve`) gives it the frame limits,
//! the message rate, keep-alive and shutdown.

mod client;
mod frames;
mod session;
mod transcript;
mod upstream;

use std::time::Duration;

use async_trait::async_trait;
use axum::{
    extract::{FromRequestParts, Request, State, ws::WebSocketUpgrade},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Dialect, Flow, Handshake, Link, link::close};
use crate::{
    auth::{self, User},
    chat::{ChatError, ErrorCode},
    http::api::ApiError,
    transport::{Wire, connections::UserConnections},
};
use client::ClientMessage;
use frames::{Code, Problem};
use session::{Command, Session};

/// Client messages a session may have queued before the connection waits for it.
const COMMAND_QUEUE: usize = 64;
/// How long shutdown waits for a session to store its transcript and say goodbye.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// What the voice route shares.
#[derive(Clone)]
pub struct Realtime {
    wire: Wire,
    /// Open sessions by user, capped by `REALTIME_MAX_SESSIONS_PER_USER`.
    sessions: UserConnections,
}

impl Realtime {
    pub fn new(wire: Wire) -> Self {
        let sessions = UserConnections::new(wire.config.realtime.max_sessions_per_user);
        Self { wire, sessions }
    }
}

/// Takes WebSocket upgrades at `REALTIME_PATH` (a layer over every route, so `/` can be
/// the path and a plain `GET /` still reaches the service info); passes the rest on.
pub async fn intercept(State(realtime): State<Realtime>, request: Request, next: Next) -> Response {
    let is_upgrade =
        request.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade || request.uri().path() != realtime.wire.config.realtime.path {
        return next.run(request).await;
    }
    let (mut parts, _body) = request.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let handshake = Handshake { headers: parts.headers, uri: parts.uri };
    let Some((user, authenticated, expires_at)) = authenticate(&realtime.wire, &handshake).await else {
        return ApiError::from(ChatError::code(ErrorCode::Unauthorized)).into_response();
    };
    let Some(slot) = realtime.wire.connections.acquire(&user) else {
        return ApiError::from(ChatError::new(ErrorCode::RateLimit, "too many connections for this user")).into_response();
    };
    let voice = Voice { realtime: realtime.clone(), authenticated, expires_at, commands: None, task: None, session: None };
    // The session ends at the token's `exp` itself (no refresh message in this protocol),
    // so the serve loop's own expiry is not asked for.
    super::upgrade(realtime.wire, ws, handshake, Some((user, slot, None)), voice)
}

/// The user of a handshake, whether a token proved it and until when (`exp`, Unix
/// seconds); `None` refuses it (401). In open mode the user is `?userId=`, else an
/// anonymous one of this connection.
async fn authenticate(wire: &Wire, handshake: &Handshake) -> Option<(String, bool, Option<i64>)> {
    if wire.auth.is_open() {
        let claimed = handshake.query("userId").map(Value::String);
        let user = auth::claimed_user(claimed.as_ref()).map_or_else(|| format!("anonymous-{}", uuid::Uuid::new_v4()), |User(u)| u);
        return Some((user, false, None));
    }
    let token = auth::request_token(&handshake.headers, &handshake.uri)?;
    match wire.auth.verify_session(&token).await {
        Ok(auth::Session { user: User(user), expires_at }) => Some((user, true, expires_at)),
        Err(reason) => {
            tracing::info!(%reason, "voice token refused");
            None
        }
    }
}

/// One voice connection.
struct Voice {
    realtime: Realtime,
    authenticated: bool,
    /// When the token expires (Unix seconds): the session ends then.
    expires_at: Option<i64>,
    /// To the session's task, once it runs.
    commands: Option<mpsc::Sender<Command>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The session's id (its conversation's).
    session: Option<String>,
}

#[async_trait]
impl Dialect for Voice {
    async fn open(&mut self, link: &mut Link) -> Flow {
        let config = &self.realtime.wire.config.realtime;
        let user = link.user().unwrap_or_default().to_owned();
        let preset = link.handshake.query("preset").unwrap_or_else(|| "default".into());
        let Some(instructions) = config.presets.get(&preset).cloned() else {
            let names: Vec<&String> = config.presets.keys().collect();
            let problem = Problem::new(Code::InvalidPreset, format!("unknown preset {:?}", preset.chars().take(64).collect::<String>()))
                .with(json!({ "presets": names }));
            return self.refuse(link, &problem, close::POLICY).await;
        };
        let Some(slot) = self.realtime.sessions.acquire(&user) else {
            let problem = Problem::new(Code::RateLimit, "too many voice sessions for this user")
                .with(json!({ "maxSessions": config.max_sessions_per_user }));
            return self.refuse(link, &problem, close::POLICY).await;
        };
        let engine = self.realtime.wire.engine.clone();
        let conversation = match engine.begin_voice_session(&user, &format!("Voice session ({preset})")).await {
            Ok(id) => id,
            Err(e) if e.code == ErrorCode::QuotaExceeded => {
                return self.refuse(link, &Problem::new(Code::QuotaExceeded, e.message), close::POLICY).await;
            }
            Err(_) => {
                return self
                    .refuse(link, &Problem::new(Code::Unavailable, "voice sessions are unavailable; try again"), close::INTERNAL)
                    .await;
            }
        };
        let id = conversation.to_string();
        if !link.outbox().send_text(frames::welcome(&id, &user, self.authenticated, &preset)).await {
            return Flow::Close(close::NORMAL, "gone");
        }
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let session = Session {
            config: config.clone(),
            engine: engine.clone(),
            user: user.clone(),
            id: id.clone(),
            instructions,
            outbox: link.outbox(),
            transcript: transcript::Transcript::new(engine, user, conversation, config.model.clone()),
            slot: Some(slot),
            token_expires: self.expires_at.map(|exp| {
                let left = exp.saturating_sub(chrono::Utc::now().timestamp());
                tokio::time::Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
            }),
        };
        self.task = Some(tokio::spawn(session.run(queue)));
        self.commands = Some(commands);
        self.session = Some(id);
        Flow::Continue
    }

    async fn frame(&mut self, link: &mut Link, bytes: &[u8]) -> Flow {
        let session = self.session.as_deref();
        match client::decode(bytes, &self.realtime.wire.config.realtime.client_fields) {
            ClientMessage::Ping => {
                link.outbox().send_text(frames::pong(session)).await;
            }
            ClientMessage::Refused(problem) => self.tell(link, &problem).await,
            ClientMessage::Upstream { events, user_text, answer_due, refused } => {
                if let Some(problem) = refused {
                    self.tell(link, &problem).await;
                }
                if let Some(commands) = &self.commands {
                    // A session that ended drops what still comes; the connection closes.
                    let _ = commands.send(Command::Upstream { events, user_text, answer_due }).await;
                }
            }
        }
        Flow::Continue
    }

    async fn message(&mut self, link: &mut Link, message: Value) -> Flow {
        self.frame(link, message.to_string().as_bytes()).await
    }

    fn error(&self, error: &ChatError) -> Value {
        let code = if error.code == ErrorCode::RateLimit { Code::RateLimit } else { Code::InvalidPayload };
        let text = frames::error(&Problem::new(code, error.message.clone()), self.session.as_deref());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn closing(&mut self, _link: &mut Link, code: u16) {
        if code != close::GOING_AWAY {
            return;
        }
        if let Some(commands) = &self.commands {
            let (done, stored) = oneshot::channel();
            if commands.send(Command::Shutdown(done)).await.is_ok() {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, stored).await;
            }
        }
    }

    async fn closed(&mut self, _link: &mut Link) {
        // The session sees its queue close, stores what was said and closes the upstream.
        self.commands = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Voice {
    /// An `error` frame for a refusal; the connection stays.
    async fn tell(&self, link: &Link, problem: &Problem) {
        link.wire.engine.metrics().chat_error(ErrorCode::InvalidPayload);
        link.outbox().send_text(frames::error(problem, self.session.as_deref())).await;
    }

    /// An `error` frame, then the close.
    async fn refuse(&self, link: &Link, problem: &Problem, code: u16) -> Flow {
        link.outbox().send_text(frames::error(problem, None)).await;
        Flow::Close(code, "refused")
    }
}
