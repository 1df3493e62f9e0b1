//! Resuming and watching answers on `/ai`: `chat:resume`, `chat:join`, `chat:leave`.
//! Only the owner reaches an answer; everyone else is told `NOT_FOUND`.

use futures::StreamExt;
use serde_json::json;
use socketioxide::extract::{AckSender, SocketRef, State};

use super::{
    ack_logged,
    chat::refuse,
    event_permit, observer,
    payload::{ConversationRequest, Payload, ResumeRequest},
    reader::{self, Subscriptions},
    user_of,
};
use crate::{
    auth::User,
    chat::{ChatError, ErrorCode},
    transport::{Wire, events::ActiveGeneration},
};

/// `chat:resume { messageId, offset }`: the missed text, then live or the stored end.
pub(super) async fn chat_resume(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:resume", payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    let Some(User(user)) = user_of(&socket) else {
        return;
    };
    if super::session::expired(&socket) {
        return refuse(&socket, ack, super::session::expired_error());
    }
    let request = match ResumeRequest::parse(payload.ok().flatten().as_ref()) {
        Ok(r) => r,
        Err(e) => return refuse(&socket, ack, e),
    };
    let subscriptions = Subscriptions::of(&socket);
    // The socket's earlier reader of this answer stops now, not after the new one is ready.
    subscriptions.stop_reading(request.message_id);
    let subscription = match wire.engine.subscribe(&user, request.message_id, request.offset).await {
        Ok(s) => s,
        Err(e) => return refuse(&socket, ack, e),
    };
    if !subscriptions.allow_replay(request.message_id, subscription.offset, wire.config.socket_buffer_bytes as u64) {
        let error = ChatError::new(ErrorCode::RateLimit, "this connection asked for the same answer too often; reconnect to resume");
        return refuse(&socket, ack, error);
    }
    let ids = subscription.ids;
    let reply = json!({
        "ok": true, "status": subscription.status.as_str(), "messageId": ids.message_id,
        "conversationId": ids.conversation_id, "offset": subscription.offset,
    });
    ack_logged(&socket, ack, &reply);
    reader::deliver(&wire, &socket, ids, subscription.reader, None);
}

/// `chat:join { conversationId }`: watch a conversation of yours from this socket too:
/// its running answer from the start, then each later one, until `chat:leave`.
pub(super) async fn chat_join(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:join", payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    let Some(User(user)) = user_of(&socket) else {
        return;
    };
    if super::session::expired(&socket) {
        return refuse(&socket, ack, super::session::expired_error());
    }
    let request = match ConversationRequest::parse(payload.ok().flatten().as_ref()) {
        Ok(r) => r,
        Err(e) => return refuse(&socket, ack, e),
    };
    let conversation_id = request.conversation_id;
    let mut answers = match wire.engine.follow(&user, conversation_id).await {
        Ok(answers) => answers,
        Err(e) => return refuse(&socket, ack, e),
    };
    let generations: Vec<ActiveGeneration> =
        wire.engine.active(&user).await.into_iter().filter(|a| a.ids.conversation_id == conversation_id).map(Into::into).collect();
    super::typing::follow(&socket, &user, conversation_id);
    ack_logged(&socket, ack, &json!({ "ok": true, "conversationId": conversation_id, "generations": generations }));
    let subscriptions = Subscriptions::of(&socket);
    let task = tokio::spawn({
        let (socket, subscriptions) = (socket.clone(), subscriptions.clone());
        async move {
            while let Some(ids) = answers.next().await {
                // Its own answers (and ones it resumed) already have their reader.
                if subscriptions.reads(ids.message_id) {
                    continue;
                }
                match wire.engine.subscribe(&user, ids.message_id, 0).await {
                    Ok(s) => reader::deliver(&wire, &socket, ids, s.reader, Some(conversation_id)),
                    Err(e) => {
                        tracing::debug!(sid = %socket.id, error = %e, "followed answer not readable")
                    }
                }
            }
        }
    });
    subscriptions.follow(conversation_id, task.abort_handle());
}

/// `chat:leave { conversationId }`: stop watching.
pub(super) async fn chat_leave(socket: SocketRef, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:leave", payload.as_ref().ok().and_then(Option::as_ref));
    match ConversationRequest::parse(payload.ok().flatten().as_ref()) {
        Ok(r) => {
            Subscriptions::of(&socket).leave(r.conversation_id);
            if let Some(User(user)) = user_of(&socket) {
                super::typing::unfollow(&socket, &user, r.conversation_id);
            }
            ack_logged(&socket, ack, &json!({ "ok": true, "conversationId": r.conversation_id }));
        }
        Err(e) => refuse(&socket, ack, e),
    }
}
