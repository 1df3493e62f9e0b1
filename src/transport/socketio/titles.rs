//! `chat:title { conversationId, title }`: a new conversation's title, once the model made
//! it, to the user's sockets on this node that follow the conversation (the socket that
//! started it among them: those that started an answer in it, joined it or typed in it).

use serde_json::json;
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{NAMESPACE, typing};
use crate::engine::{Engine, Titled};

/// Announces every title the engine makes, until `shutdown`.
pub fn spawn_titles(io: &SocketIo, engine: &Engine, shutdown: CancellationToken) {
    let (io, mut titles) = (io.clone(), engine.titles());
    tokio::spawn(async move {
        loop {
            let titled = tokio::select! {
                () = shutdown.cancelled() => return,
                titled = titles.recv() => titled,
            };
            match titled {
                Ok(Titled { user_id, conversation_id, title: Some(title) }) => {
                    let Some(ns) = io.of(NAMESPACE) else { continue };
                    let event = json!({ "conversationId": conversation_id, "title": title });
                    if let Err(e) = ns.to(typing::room(&user_id, conversation_id)).emit("chat:title", &event).await {
                        tracing::debug!(%conversation_id, error = %e, "chat:title not delivered to every follower");
                    }
                }
                Ok(Titled { title: None, .. }) => {}
                Err(RecvError::Lagged(missed)) => tracing::warn!(missed, "titles made faster than sent; some were not announced"),
                Err(RecvError::Closed) => return,
            }
        }
    });
}
