//! The `/ai` namespace: connect, `chat:start`, `chat:stop`, disconnect.
//!
//! socketioxide sends the namespace CONNECT packet before it runs the (spawned) connect
//! handler, so a client may emit before that handler has run. The event handlers are
//! therefore registered by the auth middleware, which socketioxide awaits before it
//! answers CONNECT: an event sent right after `connect` is never lost.

use serde::Serialize;
use serde_json::Value;
use socketioxide::{
    SocketIo,
    extract::{AckSender, SocketRef, State, TryData},
};

use crate::{
    app::AppState,
    auth::User,
    config::OnDisconnect,
    error::{ChatError, ErrorCode},
    generation::{self, ClaimRefused, GenerationSpec, StopReason},
    resume,
    protocol::{ConversationCreated, ErrorEvent, StartAck, StartRequest, StopAck, StopRequest, UserMessageStored},
    store::{self, HistoryMessage, NewTurn, StoreError},
    upstream::ChatCall,
};

/// The namespace existing clients connect to.
pub const NAMESPACE: &str = "/ai";

/// Registers the event handlers of a freshly authenticated socket. Called by the
/// connect middleware, before the client learns it is connected.
pub fn register_handlers(socket: &SocketRef) {
    socket.on("chat:start", chat_start);
    socket.on("chat:stop", chat_stop);
    socket.on("chat:resume", resume::chat_resume);
    socket.on("chat:join", resume::chat_join);
    socket.on("chat:leave", resume::chat_leave);
    socket.on_disconnect(on_disconnect);
}

/// The connect handler, run once the client knows it is connected: tells it which of
/// its answers are running, so that it can resume them.
pub async fn on_connect(socket: SocketRef, State(app): State<AppState>) {
    tracing::debug!(sid = %socket.id, "connected");
    if let Some(User(user)) = user_of(&socket) {
        resume::announce_active(&socket, &app, &user);
    }
}

pub(crate) fn user_of(socket: &SocketRef) -> Option<User> {
    socket.extensions.get::<User>()
}

/// Sends an event the client must see; a failure is logged, never ignored.
pub(crate) fn emit_logged<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) {
    if let Err(e) = socket.emit(event, data) {
        tracing::warn!(sid = %socket.id, event, error = %e, "emit failed");
    }
}

pub(crate) fn ack_logged<T: Serialize + ?Sized>(socket: &SocketRef, ack: AckSender, data: &T) {
    if let Err(e) = ack.send(data) {
        tracing::warn!(sid = %socket.id, error = %e, "ack failed");
    }
}

/// Refuses a `chat:start`: the ack (if asked) and `chat:error` both say why.
fn refuse(socket: &SocketRef, ack: AckSender, error: ChatError) {
    ack_logged(socket, ack, &StartAck::err(error.clone()));
    emit_logged(socket, "chat:error", &ErrorEvent::bare(&error));
}

async fn chat_start(
    socket: SocketRef,
    io: SocketIo,
    State(app): State<AppState>,
    TryData(payload): TryData<Value>,
    ack: AckSender,
) {
    let Some(User(user)) = user_of(&socket) else {
        return refuse(&socket, ack, ChatError::code(ErrorCode::Internal));
    };
    let request = match payload
        .map_err(|_| ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"))
        .and_then(|p| StartRequest::parse(&p, &user, &app.config))
    {
        Ok(r) => r,
        Err(e) => return refuse(&socket, ack, e),
    };
    let key = request.client_message_id.as_deref();
    if let Some(key) = key {
        match replay(&app, &user, key, false).await {
            Ok(Some(ack_ok)) => return ack_logged(&socket, ack, &ack_ok),
            Ok(None) => {}
            Err(e) => return refuse(&socket, ack, e),
        }
    }
    if !app.start_limiter.allow(&user) {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many chats started; try again shortly"));
    }
    let claim = match app.registry.claim_socket(socket.id, &user, app.config.max_concurrent_streams_per_user) {
        Ok(claim) => claim,
        Err(ClaimRefused::UserLimit) => {
            return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many answers streaming at once"));
        }
        Err(ClaimRefused::Busy) => {
            // A retry of the start that is still being stored on this socket is not BUSY.
            if let Some(key) = key
                && let Ok(Some(ack_ok)) = replay(&app, &user, key, true).await
            {
                return ack_logged(&socket, ack, &ack_ok);
            }
            return refuse(&socket, ack, ChatError::code(ErrorCode::Busy));
        }
    };
    let history = match request.conversation_id {
        Some(id) => match store::conversation_history(&app.db, &user, id, app.config.max_history_messages).await {
            Ok(history) => history,
            Err(e) => return refuse_stored(&socket, ack, e),
        },
        None => Vec::new(),
    };
    let call = ChatCall {
        messages: context(&app, &request, history),
        model: request.model.clone(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    };
    // The model starts on the answer while the turn is stored: its time to first token
    // and the database's writes overlap. A start refused below drops (aborts) the request.
    let upstream = app.provider.start_open(call);
    let turn = NewTurn {
        user_id: &user,
        conversation_id: request.conversation_id,
        message: &request.message,
        model: &request.model,
        client_message_id: request.client_message_id.as_deref(),
    };
    let begun = match store::begin_chat(&app.db, turn).await {
        Ok(b) => b,
        Err(StoreError::DuplicateKey) => {
            // Another socket stored the same key first: answer with its ids.
            drop((claim, upstream));
            return match replay(&app, &user, key.unwrap_or_default(), true).await {
                Ok(Some(ack_ok)) => ack_logged(&socket, ack, &ack_ok),
                Ok(None) => refuse(&socket, ack, ChatError::code(ErrorCode::Internal)),
                Err(e) => refuse(&socket, ack, e),
            };
        }
        Err(e) => return refuse_stored(&socket, ack, e),
    };
    ack_logged(&socket, ack, &StartAck::ok(begun.conversation_id, begun.user_message_id, begun.assistant_message_id));
    if begun.created {
        emit_logged(&socket, "chat:conversation", &ConversationCreated { conversation_id: begun.conversation_id });
    }
    emit_logged(
        &socket,
        "chat:user-message",
        &UserMessageStored {
            message_id: begun.user_message_id,
            content: &request.message,
            conversation_id: begun.conversation_id,
        },
    );
    // A socket follows one conversation at a time: the one it is talking in.
    let room = generation::room(begun.conversation_id);
    let stale: Vec<_> = socket.rooms().into_iter().filter(|r| r.starts_with("conversation:") && **r != room).collect();
    socket.leave(stale);
    socket.join(room);

    let spec = GenerationSpec {
        message_id: begun.assistant_message_id,
        conversation_id: begun.conversation_id,
        user_id: user,
        origin: socket.id,
        model: request.model,
        upstream,
    };
    let cancel_if_gone = app.config.on_disconnect == OnDisconnect::Cancel;
    let registry = app.registry.clone();
    generation::spawn(app, io, spec, claim);
    // A socket that left while its turn was being stored was not found by `on_disconnect`.
    if cancel_if_gone && !socket.connected()
        && let Some(generation) = registry.by_socket(socket.id)
    {
        generation.stop(StopReason::Disconnect);
    }
}

/// Refuses a `chat:start` the database could not take; the cause goes to the log.
fn refuse_stored(socket: &SocketRef, ack: AckSender, error: StoreError) {
    if !matches!(error, StoreError::NotFound) {
        tracing::error!(sid = %socket.id, error = %error, "storing chat:start failed");
    }
    refuse(socket, ack, error.to_chat_error());
}

/// The first ack of an earlier `chat:start` with the same `clientMessageId`, if stored.
/// With `wait`, gives an in-flight first attempt a moment to commit.
async fn replay(app: &AppState, user: &str, key: &str, wait: bool) -> Result<Option<StartAck>, ChatError> {
    let attempts = if wait { 20 } else { 1 };
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        match store::find_turn(&app.db, user, key).await {
            Ok(Some(ids)) => {
                return Ok(Some(StartAck::ok(ids.conversation_id, ids.user_message_id, ids.assistant_message_id)));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "looking up clientMessageId failed");
                return Err(ChatError::code(ErrorCode::Unavailable));
            }
        }
    }
    Ok(None)
}

/// The messages sent upstream: system prompt(s), the conversation so far, the new message.
fn context(app: &AppState, request: &StartRequest, history: Vec<HistoryMessage>) -> Vec<HistoryMessage> {
    let system = |content: &String| HistoryMessage { role: "system".into(), content: content.clone() };
    app.config
        .system_prompt
        .iter()
        .chain(request.system_prompt.iter())
        .map(system)
        .chain(history)
        .chain(std::iter::once(HistoryMessage { role: "user".into(), content: request.message.clone() }))
        .collect()
}

async fn chat_stop(socket: SocketRef, State(app): State<AppState>, TryData(payload): TryData<Value>, ack: AckSender) {
    let Some(User(user)) = user_of(&socket) else { return };
    let request = match StopRequest::parse(payload.ok().as_ref()) {
        Ok(r) => r,
        Err(error) => {
            ack_logged(&socket, ack, &serde_json::json!({ "ok": false, "error": error }));
            emit_logged(&socket, "chat:error", &ErrorEvent::bare(&error));
            return;
        }
    };
    let target = match request.message_id {
        // Another user's generation is treated as absent.
        Some(id) => app.registry.get(id).filter(|g| g.user_id == user),
        None => app.registry.by_socket(socket.id),
    };
    if let Some(generation) = &target {
        generation.stop(StopReason::User);
    }
    ack_logged(&socket, ack, &StopAck { ok: true, stopped: target.is_some() });
}

async fn on_disconnect(socket: SocketRef, State(app): State<AppState>) {
    if app.config.on_disconnect == OnDisconnect::Cancel
        && let Some(generation) = app.registry.by_socket(socket.id)
    {
        generation.stop(StopReason::Disconnect);
    }
    tracing::debug!(sid = %socket.id, "disconnected");
}
