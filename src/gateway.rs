//! The `/ai` namespace: connect, `chat:start`, `chat:stop`, disconnect.
//!
//! Handlers are registered synchronously in the connect handler, before anything
//! awaits, so an event sent right after `connect` is never lost.

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
    generation::{self, GenerationSpec, StopReason},
    protocol::{ConversationCreated, ErrorEvent, StartAck, StartRequest, StopAck, StopRequest, UserMessageStored},
    store::{self, HistoryMessage, NewTurn, StoreError},
    upstream::ChatCall,
};

/// The namespace existing clients connect to.
pub const NAMESPACE: &str = "/ai";

/// Registers the event handlers of a freshly authenticated socket.
pub async fn on_connect(socket: SocketRef) {
    socket.on("chat:start", chat_start);
    socket.on("chat:stop", chat_stop);
    socket.on_disconnect(on_disconnect);
    tracing::debug!(sid = %socket.id, "connected");
}

fn user_of(socket: &SocketRef) -> Option<User> {
    socket.extensions.get::<User>()
}

/// Sends an event the client must see; a failure is logged, never ignored.
fn emit_logged<T: Serialize + ?Sized>(socket: &SocketRef, event: &str, data: &T) {
    if let Err(e) = socket.emit(event, data) {
        tracing::warn!(sid = %socket.id, event, error = %e, "emit failed");
    }
}

fn ack_logged<T: Serialize + ?Sized>(socket: &SocketRef, ack: AckSender, data: &T) {
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
    // Claimed before the first await: two quick starts on one socket cannot both pass.
    let Some(claim) = app.registry.claim_socket(socket.id) else {
        return refuse(&socket, ack, ChatError::code(ErrorCode::Busy));
    };
    let turn = NewTurn {
        user_id: &user,
        conversation_id: request.conversation_id,
        message: &request.message,
        model: &request.model,
        client_message_id: request.client_message_id.as_deref(),
        history_limit: app.config.max_history_messages,
    };
    let begun = match store::begin_chat(&app.db, turn).await {
        Ok(b) => b,
        Err(e) => {
            if !matches!(e, StoreError::NotFound) {
                tracing::error!(sid = %socket.id, error = %e, "storing chat:start failed");
            }
            return refuse(&socket, ack, e.to_chat_error());
        }
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

    let call = ChatCall {
        messages: context(&app, &request, begun.history),
        model: request.model,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    };
    let spec = GenerationSpec {
        message_id: begun.assistant_message_id,
        conversation_id: begun.conversation_id,
        user_id: user,
        origin: socket.id,
        call,
    };
    generation::spawn(app, io, spec, claim);
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
    if app.config.on_disconnect == OnDisconnect::Cancel {
        if let Some(generation) = app.registry.by_socket(socket.id) {
            generation.stop(StopReason::Disconnect);
        }
    }
    tracing::debug!(sid = %socket.id, "disconnected");
}
