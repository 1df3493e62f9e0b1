//! Resuming and watching answers: `chat:resume`, `chat:join`, `chat:leave`, and the
//! `chat:active` list sent on connect.
//!
//! A running answer is served from its generation's memory (attach at an offset, then
//! live); a finished one from its stored row. Only the owner reaches either.

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use crate::{
    app::AppState,
    auth::User,
    error::{ChatError, ErrorCode},
    gateway::{ack_logged, emit_logged, user_of},
    generation::{self, byte_index},
    protocol::{ActiveGeneration, Chunk, ConversationRequest, End, ErrorEvent, ResumeRequest, Stopped},
    store::{self, status},
};

/// Sends `chat:active`: the user's running answers and how long each is so far.
pub fn announce_active(socket: &SocketRef, app: &AppState, user: &str) {
    let generations: Vec<_> = app
        .registry
        .of_user(user)
        .iter()
        .map(|g| ActiveGeneration { conversation_id: g.conversation_id, message_id: g.message_id, offset: g.offset() })
        .collect();
    emit_logged(socket, "chat:active", &json!({ "generations": generations }));
}

fn fail(socket: &SocketRef, ack: AckSender, error: ChatError) {
    ack_logged(socket, ack, &json!({ "ok": false, "error": error }));
    emit_logged(socket, "chat:error", &ErrorEvent::bare(&error));
}

fn unavailable(e: sea_orm::DbErr) -> ChatError {
    tracing::error!(error = %e, "database read failed");
    ChatError::code(ErrorCode::Unavailable)
}

/// `chat:resume { messageId, offset }`.
pub async fn chat_resume(socket: SocketRef, State(app): State<AppState>, TryData(payload): TryData<Value>, ack: AckSender) {
    let Some(User(user)) = user_of(&socket) else { return };
    let request = match ResumeRequest::parse(payload.ok().as_ref()) {
        Ok(r) => r,
        Err(e) => return fail(&socket, ack, e),
    };
    if let Some(running) = app.registry.get(request.message_id).filter(|g| g.user_id == user)
        && let Some(offset) = running.attach(socket.clone(), request.offset).await
    {
        let reply = json!({
            "ok": true, "status": status::STREAMING, "messageId": running.message_id,
            "conversationId": running.conversation_id, "offset": offset,
        });
        return ack_logged(&socket, ack, &reply);
    }
    // Not running, or it finished meanwhile: its row is final now.
    let row = match store::find_answer(&app.db, &user, request.message_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return fail(&socket, ack, ChatError::new(ErrorCode::NotFound, "message not found")),
        Err(e) => return fail(&socket, ack, unavailable(e)),
    };
    let (from, offset) = byte_index(&row.content, request.offset);
    let reply = json!({
        "ok": true, "status": row.status, "messageId": row.id, "conversationId": row.conversation_id, "offset": offset,
    });
    ack_logged(&socket, ack, &reply);
    replay_row(&socket, &row, from, offset);
}

/// Sends a stored answer from byte `from` (UTF-16 `offset`) on, then its final event.
fn replay_row(socket: &SocketRef, row: &entity::message::Model, from: usize, offset: u64) {
    let (message_id, conversation_id) = (row.id, row.conversation_id);
    let missed = &row.content[from..];
    if !missed.is_empty() {
        let chunk = Chunk { content: missed, is_complete: false, message_id, conversation_id, seq: 0, offset };
        emit_logged(socket, "chat:message", &chunk);
    }
    let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    match row.status.as_str() {
        status::COMPLETE => {
            let end = End {
                message_id,
                conversation_id,
                total_tokens: count(row.total_tokens),
                model: row.model.as_deref().unwrap_or_default(),
                finish_reason: row.finish_reason.as_deref().unwrap_or("stop"),
                prompt_tokens: count(row.prompt_tokens),
                completion_tokens: count(row.completion_tokens),
                content: &row.content,
            };
            emit_logged(socket, "chat:end", &end);
        }
        status::STOPPED => {
            emit_logged(socket, "chat:stopped", &Stopped { message_id, conversation_id, content: &row.content });
        }
        status::ERROR => {
            let code = row.error_code.as_deref().and_then(ErrorCode::parse).unwrap_or(ErrorCode::UpstreamError);
            let error = ChatError::code(code);
            let event = ErrorEvent {
                message: &error.message,
                code,
                message_id: Some(message_id),
                conversation_id: Some(conversation_id),
            };
            emit_logged(socket, "chat:error", &event);
        }
        // Still streaming elsewhere (another node, or a process that died): the checkpointed text is all there is.
        _ => {}
    }
}

/// `chat:join { conversationId }`: watch a conversation of yours from this socket too.
pub async fn chat_join(socket: SocketRef, State(app): State<AppState>, TryData(payload): TryData<Value>, ack: AckSender) {
    let Some(User(user)) = user_of(&socket) else { return };
    let request = match ConversationRequest::parse(payload.ok().as_ref()) {
        Ok(r) => r,
        Err(e) => return fail(&socket, ack, e),
    };
    match store::owns_conversation(&app.db, &user, request.conversation_id).await {
        Ok(true) => {}
        Ok(false) => return fail(&socket, ack, ChatError::new(ErrorCode::NotFound, "conversation not found")),
        Err(e) => return fail(&socket, ack, unavailable(e)),
    }
    socket.join(generation::room(request.conversation_id));
    let mut generations = Vec::new();
    if let Some(running) = app.registry.in_conversation(request.conversation_id) {
        // The running answer from its start, then live.
        if running.attach(socket.clone(), 0).await.is_some() {
            generations.push(ActiveGeneration {
                conversation_id: running.conversation_id,
                message_id: running.message_id,
                offset: running.offset(),
            });
        }
    }
    ack_logged(&socket, ack, &json!({ "ok": true, "conversationId": request.conversation_id, "generations": generations }));
}

/// `chat:leave { conversationId }`: stop watching.
pub async fn chat_leave(socket: SocketRef, TryData(payload): TryData<Value>, ack: AckSender) {
    match ConversationRequest::parse(payload.ok().as_ref()) {
        Ok(r) => {
            socket.leave(generation::room(r.conversation_id));
            ack_logged(&socket, ack, &json!({ "ok": true, "conversationId": r.conversation_id }));
        }
        Err(e) => fail(&socket, ack, e),
    }
}
