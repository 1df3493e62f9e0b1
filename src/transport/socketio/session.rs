//! A socket's session: its place among its user's connections, and its token's `exp`.
//!
//! A socket whose token expires gets `chat:error TOKEN_EXPIRED`; from then on it may
//! not start, resume or join, and it is closed `TOKEN_EXPIRY_GRACE_SECONDS` later unless
//! it sends `chat:auth { token }` with a fresh token of the same user first.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{ack_logged, chat::refuse, emit_logged, payload::Payload, user_of};
use crate::{
    auth::Session,
    chat::{ChatError, ErrorCode},
    transport::{Wire, connections::ConnectionSlot, events::ErrorEvent},
};

/// What a socket holds for its life; dropped (and its place given back) when it closes.
#[derive(Clone)]
pub(super) struct SocketSession {
    _slot: Option<ConnectionSlot>,
    /// The token's `exp` (Unix seconds); `None` never expires.
    expiry: Arc<watch::Sender<Option<i64>>>,
    /// Whether the task that closes expired sockets runs for this one.
    watched: Arc<AtomicBool>,
    /// Ends that task when the socket closes.
    closed: CancellationToken,
}

/// Sets up the session of a socket that just authenticated (no `.await`: the connect
/// middleware registers handlers right after).
pub(super) fn open(socket: &SocketRef, wire: &Wire, slot: Option<ConnectionSlot>, expires_at: Option<i64>) {
    let session = SocketSession {
        _slot: slot,
        expiry: Arc::new(watch::channel(expires_at).0),
        watched: Arc::default(),
        closed: CancellationToken::new(),
    };
    socket.extensions.insert(session.clone());
    watch(socket, &session, wire.config.token_expiry_grace);
}

/// Ends the session's tasks; the socket is gone.
pub(super) fn close(socket: &SocketRef) {
    if let Some(session) = socket.extensions.remove::<SocketSession>() {
        session.closed.cancel();
    }
}

/// True once the socket's token has expired (and no fresh one came).
pub(super) fn expired(socket: &SocketRef) -> bool {
    socket.extensions.get::<SocketSession>().and_then(|s| *s.expiry.borrow()).is_some_and(|exp| exp <= now_ms() / 1000)
}

/// The refusal of an event sent after the token expired.
pub(super) fn expired_error() -> ChatError {
    ChatError::code(ErrorCode::TokenExpired)
}

/// `chat:auth { token }`: a fresh token for the same user extends the session.
pub(super) async fn chat_auth(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    let token = payload.ok().flatten().and_then(|p| p.get("token").and_then(Value::as_str).map(str::to_owned));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::InvalidPayload, "token is required"));
    };
    let Some(session) = socket.extensions.get::<SocketSession>() else {
        return;
    };
    let Session { user, expires_at } = match wire.auth.is_open() {
        true => return ack_logged(&socket, ack, &json!({ "ok": true, "expiresAt": null })),
        false => match wire.auth.verify_session(&token).await {
            Ok(s) => s,
            Err(reason) => {
                tracing::info!(sid = %socket.id, %reason, "chat:auth refused");
                return refuse(&socket, ack, ChatError::code(ErrorCode::Unauthorized));
            }
        },
    };
    if user_of(&socket).as_ref() != Some(&user) {
        tracing::info!(sid = %socket.id, "chat:auth refused: the token names another user");
        return refuse(&socket, ack, ChatError::new(ErrorCode::Forbidden, "the token names another user"));
    }
    session.expiry.send_replace(expires_at);
    watch(&socket, &session, wire.config.token_expiry_grace);
    ack_logged(&socket, ack, &json!({ "ok": true, "expiresAt": expires_at }));
}

/// Starts the task that tells and then closes the socket at `exp`, once per socket and
/// only when its token has an `exp`.
fn watch(socket: &SocketRef, session: &SocketSession, grace: Duration) {
    if session.expiry.borrow().is_none() || session.watched.swap(true, Ordering::AcqRel) {
        return;
    }
    let (socket, expiry, closed) = (socket.clone(), session.expiry.subscribe(), session.closed.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = closed.cancelled() => {}
            () = close_when_expired(&socket, expiry, grace) => {}
        }
    });
}

async fn close_when_expired(socket: &SocketRef, mut expiry: watch::Receiver<Option<i64>>, grace: Duration) {
    loop {
        let Some(exp) = *expiry.borrow_and_update() else {
            if expiry.changed().await.is_err() {
                return;
            }
            continue;
        };
        let at = Instant::now() + Duration::from_millis(u64::try_from(exp * 1000 - now_ms()).unwrap_or(0));
        tokio::select! {
            changed = expiry.changed() => if changed.is_err() { return } else { continue },
            () = tokio::time::sleep_until(at) => {}
        }
        emit_logged(socket, "chat:error", &ErrorEvent::bare(&expired_error()));
        tokio::select! {
            changed = expiry.changed() => if changed.is_err() { return } else { continue },
            () = tokio::time::sleep(grace) => {}
        }
        tracing::info!(sid = %socket.id, "closing a socket whose token expired");
        if let Err(e) = socket.clone().disconnect() {
            tracing::debug!(sid = %socket.id, error = %e, "socket already closed");
        }
        return;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
