//! One raw-WebSocket connection as its dialect sees it: its queue of outgoing frames, its
//! user once signed in, and the readers that deliver answers into the queue.

use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Handshake;
use crate::{
    auth::{self, User},
    chat::{AnswerIds, ChatError, ConnectionId, ErrorCode, StartCommand},
    cluster::{Entry, LogReader},
    engine::StartOutcome,
    transport::{Wire, connections::ConnectionSlot},
};

/// What the serve loop does after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// Close codes (RFC 6455).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// A frame on its way to the client.
#[derive(Debug)]
pub(super) enum Outgoing {
    Text(String),
    Ping,
    Close(u16, &'static str),
}

/// A connection's queue, held by a task of its dialect: frames go out in order with the
/// serve loop's own.
#[derive(Clone, Debug)]
pub struct Outbox(mpsc::Sender<Outgoing>);

impl Outbox {
    /// Sends one text frame as it is, waiting for room. False when the connection is gone.
    pub async fn send_text(&self, text: String) -> bool {
        self.0.send(Outgoing::Text(text)).await.is_ok()
    }

    /// Closes the connection after what is queued.
    pub async fn close(&self, code: u16, reason: &'static str) {
        let _ = self.0.send(Outgoing::Close(code, reason)).await;
    }
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInRefused {
    /// No token, or a bad one (the reason goes to the log).
    Unauthorized,
    /// A token of another user than the one this connection signed in as.
    OtherUser,
    /// The user holds `MAX_CONNECTIONS_PER_USER` connections already.
    TooManyConnections,
}

/// One connection, as its dialect handles it.
pub struct Link {
    pub wire: Wire,
    /// The engine's name for this connection (its claim: one answer at a time).
    pub connection: ConnectionId,
    /// This connection's own id (WADI's `clientId`).
    pub id: Uuid,
    pub handshake: Handshake,
    out: mpsc::Sender<Outgoing>,
    /// The user and their connection place, once signed in.
    user: Option<(String, ConnectionSlot)>,
    /// When the signed-in token expires (its `exp`, Unix seconds), if it does.
    expires_at: Option<i64>,
    /// Whether the client was told its token expired (the close comes a grace later).
    pub(super) told_expired: bool,
}

/// A user signed in at the upgrade: who, their connection place, their token's `exp`.
pub type SignedIn = (String, ConnectionSlot, Option<i64>);

impl Link {
    pub(super) fn new(wire: Wire, handshake: Handshake, out: mpsc::Sender<Outgoing>, user: Option<SignedIn>) -> Self {
        let id = Uuid::new_v4();
        let (user, expires_at) = match user {
            Some((user, slot, expires_at)) => (Some((user, slot)), expires_at),
            None => (None, None),
        };
        Self { wire, connection: ConnectionId::new("ws", id), id, handshake, out, user, expires_at, told_expired: false }
    }

    /// True once the signed-in token has expired (and no fresh one came).
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|exp| exp <= chrono::Utc::now().timestamp())
    }

    /// When the serve loop acts on the token's expiry next: at `exp` it tells the client,
    /// `grace` later it closes. `None` when the token does not expire.
    pub(super) fn expiry_deadline(&self, grace: std::time::Duration) -> Option<tokio::time::Instant> {
        let exp_ms = self.expires_at? * 1000 + if self.told_expired { grace.as_millis() as i64 } else { 0 };
        let wait = u64::try_from(exp_ms - chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(wait))
    }

    /// Sends one JSON frame, waiting for room in the queue. False when the connection is gone.
    pub async fn send(&self, frame: Value) -> bool {
        self.out.send(Outgoing::Text(frame.to_string())).await.is_ok()
    }

    /// A handle on this connection's queue for a task of the dialect's own (the voice
    /// proxy's upstream reader).
    pub fn outbox(&self) -> Outbox {
        Outbox(self.out.clone())
    }

    /// Sends a dialect's error frame for a refusal, counted as `/ai` counts `chat:error`s.
    pub async fn refuse(&self, frame: Value, code: ErrorCode) -> bool {
        self.wire.engine.metrics().chat_error(code);
        self.send(frame).await
    }

    /// The signed-in user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(user, _)| user.as_str())
    }

    /// Signs the connection in with `token`, else the handshake's (a Bearer header or
    /// `?token=`). In open mode the user is the one `claimed` names (a payload's
    /// `userId`), else `?userId=`, else an anonymous user of this connection's own.
    /// Signing in again with the same user's token is fine; another user's is refused.
    pub async fn sign_in(&mut self, token: Option<&str>, claimed: Option<&Value>) -> Result<&str, SignInRefused> {
        let auth = self.wire.auth.clone();
        let user = if auth.is_open() {
            let query = self.handshake.query("userId").map(Value::String);
            match auth::claimed_user(claimed).or_else(|| auth::claimed_user(query.as_ref())) {
                Some(User(user)) => user,
                None => self.user().map_or_else(|| format!("anonymous-{}", self.id), str::to_owned),
            }
        } else {
            let handshake = auth::request_token(&self.handshake.headers, &self.handshake.uri);
            let Some(token) = token.map(std::borrow::Cow::Borrowed).or(handshake) else {
                tracing::debug!(connection = %self.connection, "no token");
                return Err(SignInRefused::Unauthorized);
            };
            match auth.verify_session(&token).await {
                Ok(auth::Session { user: User(user), expires_at }) => {
                    // A fresh token of the same user extends the connection (checked below).
                    if self.user.as_ref().is_none_or(|(current, _)| *current == user) {
                        self.expires_at = expires_at;
                        self.told_expired = false;
                    }
                    user
                }
                Err(reason) => {
                    tracing::info!(connection = %self.connection, %reason, "token refused");
                    return Err(SignInRefused::Unauthorized);
                }
            }
        };
        match &self.user {
            Some((current, _)) if *current == user => {}
            Some(_) if !auth.is_open() => return Err(SignInRefused::OtherUser),
            _ => {
                let slot = self.wire.connections.acquire(&user).ok_or(SignInRefused::TooManyConnections)?;
                self.user = Some((user, slot));
            }
        }
        Ok(self.user().unwrap_or_default())
    }

    /// Starts an answer for the signed-in user on this connection: its ids and its log
    /// from the start (a repeated `clientMessageId` gets the first answer's).
    pub async fn start(&self, command: StartCommand) -> Result<(AnswerIds, Box<dyn LogReader>), ChatError> {
        let Some(user) = self.user() else { return Err(ChatError::code(ErrorCode::Unauthorized)) };
        if self.expired() {
            return Err(ChatError::code(ErrorCode::TokenExpired));
        }
        match self.wire.engine.start(&self.connection, user, command).await? {
            StartOutcome::Started(started) => Ok((started.ids, started.reader)),
            StartOutcome::Repeated { ids, .. } => Ok((ids, self.wire.engine.subscribe(user, ids.message_id, 0).await?.reader)),
        }
    }

    /// Delivers an answer's log to this connection: `encode` turns each entry into the
    /// text of the dialect's frame (or none). The reader waits for room in the queue before each read,
    /// so text that came meanwhile is joined into one frame. `then`, when given, closes
    /// the connection after the final frame.
    pub fn deliver<F>(&self, ids: AnswerIds, mut reader: Box<dyn LogReader>, mut encode: F, then: Option<(u16, &'static str)>)
    where
        F: FnMut(&Entry) -> Option<String> + Send + 'static,
    {
        let out = self.out.clone();
        let frame_max = self.wire.config.frame_max_bytes();
        self.wire.deliveries.spawn(async move {
            loop {
                let Ok(permit) = out.reserve().await else {
                    tracing::debug!(message_id = %ids.message_id, "connection gone; delivery ends");
                    return;
                };
                let Some(entry) = reader.next(frame_max).await else { return };
                if let Some(frame) = encode(&entry) {
                    permit.send(Outgoing::Text(frame));
                } else {
                    drop(permit);
                }
                if let Entry::Final(_) = entry {
                    if let Some((code, reason)) = then {
                        let _ = out.send(Outgoing::Close(code, reason)).await;
                    }
                    return;
                }
            }
        });
    }
}
