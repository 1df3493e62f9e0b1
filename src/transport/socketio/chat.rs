//! `chat:start`, `chat:stop` and disconnects on `/ai`, and the start shared with
//! `chat:edit` and `chat:regenerate`.

use serde_json::Value;
use socketioxide::{
    extract::{AckSender, SocketRef, State},
    socket::DisconnectReason,
};

use super::{
    ack_logged, connection_id, emit_logged, event_permit, observer,
    payload::{Payload, StopRequest},
    reader, user_of,
};
use crate::{
    auth::{self, User},
    chat::{ChatError, ErrorCode, StartCommand},
    engine::StartOutcome,
    metrics::Metrics,
    transport::{
        Wire,
        events::{ConversationCreated, ErrorEvent, StartAck, StopAck, UserMessageStored},
    },
};

/// Refuses a request: the ack (if asked) and `chat:error` both say why.
pub(super) fn refuse(socket: &SocketRef, ack: AckSender, error: ChatError) {
    if let Some(metrics) = socket.extensions.get::<Metrics>() {
        metrics.chat_error(error.code);
    }
    ack_logged(socket, ack, &StartAck::err(error.clone()));
    emit_logged(socket, "chat:error", &ErrorEvent::bare(&error));
}

pub(super) async fn chat_start(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:start", payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    // In open mode a connection is whoever its latest chat:start says (as the NestJS
    // gateway took `userId` from the payload), for every event from then on.
    if wire.auth.is_open()
        && let Some(named) = payload.as_ref().ok().and_then(Option::as_ref).and_then(|p| auth::claimed_user(p.get("userId")))
    {
        socket.extensions.insert(named);
    }
    let parsed = admitted(&socket, payload).and_then(|(user, p)| StartCommand::parse(&p, &user, &wire.config).map(|c| (user, c)));
    let (user, command) = match parsed {
        Ok(admitted) => admitted,
        Err(e) => return refuse(&socket, ack, e),
    };
    start(&socket, &wire, ack, &user, command).await;
}

/// The user of a request that starts an answer, and its payload object; refused when the
/// socket's session has expired.
pub(super) fn admitted(socket: &SocketRef, payload: Result<Option<Value>, ()>) -> Result<(String, Value), ChatError> {
    let Some(User(user)) = user_of(socket) else {
        return Err(ChatError::code(ErrorCode::Internal));
    };
    if super::session::expired(socket) {
        return Err(super::session::expired_error());
    }
    let payload = payload.ok().flatten().ok_or_else(|| ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"))?;
    Ok((user, payload))
}

/// Starts the answer of a `chat:start`, `chat:edit` or `chat:regenerate`: the ack, then
/// `chat:conversation` (a new one), `chat:user-message` (a new question) and the answer.
pub(super) async fn start(socket: &SocketRef, wire: &Wire, ack: AckSender, user: &str, command: StartCommand) {
    let message = command.message.clone();
    let connection = connection_id(socket);
    let started = match wire.engine.start(&connection, user, command).await {
        Ok(StartOutcome::Started(started)) => started,
        Ok(StartOutcome::Repeated { ids, user_message_id, parent_message_id }) => {
            return ack_logged(socket, ack, &StartAck::ok(ids, user_message_id, parent_message_id));
        }
        Err(e) => return refuse(socket, ack, e),
    };
    let ids = started.ids;
    super::typing::follow(socket, user, ids.conversation_id);
    ack_logged(socket, ack, &StartAck::ok(ids, started.user_message_id, started.parent_message_id));
    if started.created {
        emit_logged(socket, "chat:conversation", &ConversationCreated { conversation_id: ids.conversation_id });
    }
    if started.new_question {
        let stored = UserMessageStored {
            message_id: started.user_message_id,
            content: &message,
            conversation_id: ids.conversation_id,
            parent_message_id: started.parent_message_id,
        };
        emit_logged(socket, "chat:user-message", &stored);
    }
    // The answer goes to this socket (and to those that ask for it), not to every
    // socket that once talked in the conversation.
    reader::deliver(wire, socket, ids, started.reader, None);
    // A socket that left while its turn was being stored was not seen by `on_disconnect`.
    if !socket.connected() {
        wire.engine.connection_closed(&connection).await;
    }
}

pub(super) async fn chat_stop(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:stop", payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    let Some(User(user)) = user_of(&socket) else {
        return;
    };
    // No argument at all is "this socket's current answer"; anything that does not parse
    // (too deep, not JSON) is refused, and stops nothing.
    let Ok(payload) = payload else {
        tracing::debug!(sid = %socket.id, "chat:stop payload does not parse");
        return refuse(&socket, ack, ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"));
    };
    let request = match StopRequest::parse(payload.as_ref()) {
        Ok(r) => r,
        Err(error) => return refuse(&socket, ack, error),
    };
    let stopped = match request.message_id {
        // Another user's answer, or one that is not running, is simply not stopped.
        Some(id) => wire.engine.stop(&user, id).await.unwrap_or(false),
        None => wire.engine.stop_connection(&connection_id(&socket)).await,
    };
    ack_logged(&socket, ack, &StopAck { ok: true, stopped });
}

/// `chat:providers`: every provider with its bare model ids, for a model picker.
pub(super) async fn chat_providers(socket: SocketRef, State(wire): State<Wire>, ack: AckSender) {
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    let providers: Vec<serde_json::Value> = wire
        .engine
        .providers()
        .catalog()
        .await
        .into_iter()
        .map(|(p, models)| {
            let models: Vec<serde_json::Value> = models.into_iter().map(|id| serde_json::json!({ "id": id })).collect();
            serde_json::json!({ "id": p.id, "name": p.name, "default": p.default, "models": models })
        })
        .collect();
    ack_logged(&socket, ack, &serde_json::json!({ "ok": true, "providers": providers }));
}

/// `embed { input }`: the vectors, through the shared batching queue. A refusal is told
/// in the ack only: `chat:error` is about chats.
pub(super) async fn embed(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "embed", payload.as_ref().ok().and_then(Option::as_ref));
    let embedded = async {
        let _permit = event_permit(&socket)
            .ok_or_else(|| ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"))?;
        let User(user) = user_of(&socket).ok_or_else(|| ChatError::code(ErrorCode::Internal))?;
        if super::session::expired(&socket) {
            return Err(super::session::expired_error());
        }
        let payload = payload
            .ok()
            .flatten()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"))?;
        wire.engine.embed(&user, payload.get("input")).await
    };
    match embedded.await {
        Ok(done) => ack_logged(&socket, ack, &serde_json::json!({ "ok": true, "embeddings": done.vectors, "model": done.model })),
        Err(error) => {
            if let Some(metrics) = socket.extensions.get::<Metrics>() {
                metrics.chat_error(error.code);
            }
            ack_logged(&socket, ack, &StartAck::err(error));
        }
    }
}

pub(super) async fn on_disconnect(socket: SocketRef, State(wire): State<Wire>, reason: DisconnectReason) {
    observer::disconnected(&socket, reason);
    super::session::close(&socket);
    reader::Subscriptions::of(&socket).close();
    wire.engine.connection_closed(&connection_id(&socket)).await;
    tracing::debug!(sid = %socket.id, "disconnected");
}
