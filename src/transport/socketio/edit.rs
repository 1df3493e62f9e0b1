//! The conversation tree on `/ai`: `chat:edit` (a new question beside a stored one),
//! `chat:regenerate` (a new answer beside a stored one), `chat:history` (the tree with its
//! active branch) and `chat:delete` (a message and its subtree).

use serde_json::{Map, Value, json};
use socketioxide::extract::{AckSender, SocketRef, State};
use uuid::Uuid;

use super::{
    ack_logged,
    chat::{admitted, refuse, start},
    event_permit, observer,
    payload::{Payload, required_uuid},
    user_of,
};
use crate::{
    auth::User,
    chat::{Branch, ChatError, ErrorCode, StartCommand},
    config::Config,
    engine::ConversationDetail,
    transport::Wire,
};

fn busy_socket() -> ChatError {
    ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection")
}

/// The payload's `field` as a UUID.
fn uuid_field(payload: &Value, field: &str) -> Result<Uuid, ChatError> {
    match payload {
        Value::Object(obj) => required_uuid(obj.get(field), field),
        _ => Err(ChatError::new(ErrorCode::InvalidPayload, "payload must be an object")),
    }
}

/// `chat:edit { messageId, message, ...the options of chat:start }`.
pub(super) async fn chat_edit(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    branch(socket, wire, payload, ack, "chat:edit", |p, user, config| {
        let edited = uuid_field(p, "messageId")?;
        let mut command = StartCommand::parse(p, user, config)?;
        command.branch = Branch::Edit(edited);
        Ok(command)
    })
    .await;
}

/// `chat:regenerate { messageId, ...the options of chat:start but message }`.
pub(super) async fn chat_regenerate(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    branch(socket, wire, payload, ack, "chat:regenerate", |p, user, config| {
        let answer = uuid_field(p, "messageId")?;
        // The question is the stored one (set by the engine); the options parse as a
        // start's. No new question is stored, so there is no key to repeat it by.
        let mut options: Map<String, Value> = p.as_object().cloned().unwrap_or_default();
        options.insert("message".into(), json!("(regenerate)"));
        for field in ["clientMessageId", "conversationId", "parentMessageId", "attachments"] {
            options.remove(field);
        }
        let mut command = StartCommand::parse(&Value::Object(options), user, config)?;
        command.branch = Branch::Regenerate(answer);
        Ok(command)
    })
    .await;
}

/// A start placed in the tree by `command` (from the payload, for the user).
async fn branch(
    socket: SocketRef,
    wire: Wire,
    payload: Result<Option<Value>, ()>,
    ack: AckSender,
    event: &'static str,
    command: impl FnOnce(&Value, &str, &Config) -> Result<StartCommand, ChatError>,
) {
    observer::received(&socket, event, payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, busy_socket());
    };
    match admitted(&socket, payload).and_then(|(user, p)| command(&p, &user, &wire.config).map(|c| (user, c))) {
        Ok((user, command)) => start(&socket, &wire, ack, &user, command).await,
        Err(e) => refuse(&socket, ack, e),
    }
}

/// `chat:history { conversationId }`: the tree, each message with its parent and whether
/// it is on the active branch.
pub(super) async fn chat_history(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, busy_socket());
    };
    let Some(User(user)) = user_of(&socket) else {
        return refuse(&socket, ack, ChatError::code(ErrorCode::Internal));
    };
    let id = match payload.ok().flatten().ok_or(()).map_err(|()| ChatError::new(ErrorCode::InvalidPayload, "payload must be an object")) {
        Ok(p) => uuid_field(&p, "conversationId"),
        Err(e) => Err(e),
    };
    let detail = match id {
        Ok(id) => wire.engine.conversation(&user, id).await,
        Err(e) => Err(e),
    };
    match detail {
        Ok(detail) => ack_logged(&socket, ack, &tree(&detail)),
        Err(e) => refuse(&socket, ack, e),
    }
}

/// The `chat:history` ack of a conversation.
pub(crate) fn tree(detail: &ConversationDetail) -> Value {
    let active = detail.active_branch();
    let messages: Vec<Value> = detail
        .messages
        .iter()
        .map(|m| {
            let attachments = m.attachments.as_deref().and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or_else(|| json!([]));
            let mut item = json!({
                "id": m.id,
                "parentId": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "attachments": attachments,
                "active": active.contains(&m.id),
            });
            if let Some(n) = m.context_messages {
                item["contextMessages"] = json!(n);
            }
            item
        })
        .collect();
    json!({
        "ok": true,
        "conversationId": detail.conversation.id,
        "activeLeafId": detail.active_leaf(),
        "messages": messages,
    })
}

/// `chat:delete { messageId }`: the message and its subtree; a running answer in it is
/// stopped first.
pub(super) async fn chat_delete(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    observer::received(&socket, "chat:delete", payload.as_ref().ok().and_then(Option::as_ref));
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, busy_socket());
    };
    let id = admitted(&socket, payload).and_then(|(user, p)| Ok((user, uuid_field(&p, "messageId")?)));
    let deleted = match id {
        Ok((user, id)) => wire.engine.delete_message(&user, id).await,
        Err(e) => Err(e),
    };
    match deleted {
        Ok(d) => ack_logged(
            &socket,
            ack,
            &json!({ "ok": true, "conversationId": d.conversation_id, "deleted": d.deleted, "activeLeafId": d.active_leaf_id }),
        ),
        Err(e) => refuse(&socket, ack, e),
    }
}
