//! `chat:typing { conversationId }`: relayed as `chat:typing { conversationId, userId }`
//! to the user's other sockets that follow the conversation (joined it, started in it or
//! typed in it), never back to the sender, at most once a second per socket and
//! conversation. Sockets of this node only: typing is not worth a cluster round trip.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use socketioxide::extract::{AckSender, SocketRef, State};
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    ack_logged,
    chat::refuse,
    event_permit, log_lost,
    payload::{ConversationRequest, Payload},
    user_of,
};
use crate::{
    auth::User,
    chat::{ChatError, ErrorCode},
    transport::Wire,
};

/// The shortest time between two relays of one socket in one conversation.
const EVERY: Duration = Duration::from_secs(1);

/// Entries past which the ones older than [`EVERY`] (which throttle nothing) are dropped.
const KEPT: usize = 64;

/// When each conversation's typing was last relayed from this socket, for the last
/// second or so: a socket naming ever new conversation ids does not grow it for good.
#[derive(Clone, Default)]
pub(super) struct TypingThrottle(Arc<Mutex<HashMap<Uuid, Instant>>>);

impl TypingThrottle {
    /// True (and counted) when this conversation's last relay is a second old or more.
    fn allow(&self, conversation_id: Uuid) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        match last.get(&conversation_id) {
            Some(at) if now.duration_since(*at) < EVERY => false,
            _ => {
                if last.len() >= KEPT {
                    last.retain(|_, at| now.duration_since(*at) < EVERY);
                }
                last.insert(conversation_id, now);
                true
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or_default()
    }
}

/// The room of `user`'s sockets following a conversation (`chat:title` goes there too).
pub(super) fn room(user: &str, conversation_id: Uuid) -> String {
    format!("typing:{user}:{conversation_id}")
}

/// This socket follows `conversation_id` for typing from now on.
pub(super) fn follow(socket: &SocketRef, user: &str, conversation_id: Uuid) {
    socket.join(room(user, conversation_id));
}

/// This socket no longer follows `conversation_id`.
pub(super) fn unfollow(socket: &SocketRef, user: &str, conversation_id: Uuid) {
    socket.leave(room(user, conversation_id));
}

pub(super) async fn chat_typing(socket: SocketRef, State(wire): State<Wire>, Payload(payload): Payload, ack: AckSender) {
    let Some(_permit) = event_permit(&socket) else {
        return refuse(&socket, ack, ChatError::new(ErrorCode::RateLimit, "too many requests in progress on this connection"));
    };
    let Some(User(user)) = user_of(&socket) else {
        return refuse(&socket, ack, ChatError::code(ErrorCode::Internal));
    };
    let conversation_id = match ConversationRequest::parse(payload.ok().flatten().as_ref()) {
        Ok(r) => r.conversation_id,
        Err(e) => return refuse(&socket, ack, e),
    };
    let throttle = socket.extensions.get::<TypingThrottle>().unwrap_or_default();
    // Throttled first: a flood of typing costs no database reads.
    if !throttle.allow(conversation_id) {
        return ack_logged(&socket, ack, &json!({ "ok": true, "relayed": false }));
    }
    if let Err(e) = wire.engine.check_conversation(&user, conversation_id).await {
        return refuse(&socket, ack, e);
    }
    follow(&socket, &user, conversation_id);
    let typing = json!({ "conversationId": conversation_id, "userId": user });
    if let Err(e) = socket.broadcast().to(room(&user, conversation_id)).emit("chat:typing", &typing).await {
        log_lost(&socket, "chat:typing", &e);
    }
    ack_logged(&socket, ack, &json!({ "ok": true, "relayed": true }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_conversation_is_relayed_once_a_second_and_old_entries_do_not_pile_up() {
        let throttle = TypingThrottle::default();
        let one = Uuid::new_v4();
        assert!(throttle.allow(one));
        assert!(!throttle.allow(one), "within the second");
        tokio::time::advance(EVERY).await;
        assert!(throttle.allow(one), "a second later");
        // A thousand new ids, each a second after the last: the map keeps at most KEPT.
        for _ in 0..1000 {
            tokio::time::advance(EVERY).await;
            assert!(throttle.allow(Uuid::new_v4()));
        }
        assert!(throttle.len() <= KEPT, "{} kept", throttle.len());
        // Many ids within one second are all kept (each still throttles), and go later.
        for _ in 0..100 {
            assert!(throttle.allow(Uuid::new_v4()));
        }
        assert!(throttle.len() >= 100);
        tokio::time::advance(EVERY).await;
        assert!(throttle.allow(one));
        assert_eq!(throttle.len(), 1);
    }
}
