//! The serve loop every raw-WebSocket dialect runs on: one task reads the client's
//! frames and hands each JSON message to the dialect; one writes the connection's queue
//! (replies and answer frames, in order) to the socket.

use std::{num::NonZeroU32, time::Duration};

use async_trait::async_trait;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use governor::{Quota, RateLimiter};

use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use super::{
    Handshake,
    link::{Flow, Link, Outgoing, SignedIn, close},
};
use crate::{
    chat::{ChatError, ErrorCode},
    transport::Wire,
};

/// Frames a connection may have queued (replies and answer frames) before its readers wait.
const QUEUE_FRAMES: usize = 16;
/// After the server's close frame, how long the client has to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One protocol over the serve loop: it decodes the client's messages into engine calls
/// and encodes log entries into its frames.
#[async_trait]
pub trait Dialect: Send + 'static {
    /// The connection is open (WADI's `connected`, Void's `connect_success`).
    async fn open(&mut self, link: &mut Link) -> Flow;
    /// One JSON message from the client.
    async fn message(&mut self, link: &mut Link, message: Value) -> Flow;
    /// The dialect's error frame for a refusal (malformed JSON, the rate limit, ...).
    fn error(&self, error: &ChatError) -> Value;
    /// One text or binary message as it came: read as JSON, then [`Dialect::message`]. A
    /// dialect that forwards what clients send unchanged reads the bytes itself.
    async fn frame(&mut self, link: &mut Link, bytes: &[u8]) -> Flow {
        match crate::chat::json::parse_lenient_bytes(bytes) {
            Ok(message) => self.message(link, message).await,
            Err(_) => {
                let refused = ChatError::new(ErrorCode::InvalidPayload, "the message is not JSON");
                link.refuse(self.error(&refused), refused.code).await;
                Flow::Continue
            }
        }
    }
    /// The server is about to close the connection with `code` (1001: shutdown): the last
    /// frames the dialect owes go out before the close frame.
    async fn closing(&mut self, _link: &mut Link, _code: u16) {}
    /// The connection is gone.
    async fn closed(&mut self, _link: &mut Link) {}
}

/// Serves one upgraded connection until it closes.
pub(super) async fn serve<D: Dialect>(socket: WebSocket, wire: Wire, handshake: Handshake, user: Option<SignedIn>, mut dialect: D) {
    let (sink, mut stream) = socket.split();
    let (out, queue) = mpsc::channel(QUEUE_FRAMES);
    let mut writer = tokio::spawn(write(sink, queue));
    let closing = wire.closing.clone();
    let ping_every = wire.config.ws.ping_interval;
    let idle_limit = ping_every + wire.config.ping_timeout;
    let per_second = NonZeroU32::new(wire.config.ws.messages_per_second).unwrap_or(NonZeroU32::MIN);
    let limiter =
        RateLimiter::direct(Quota::per_second(per_second).allow_burst(per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1))));
    let mut link = Link::new(wire, handshake, out.clone(), user);
    let mut flow = dialect.open(&mut link).await;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    let mut client_closed = false;
    let grace = link.wire.config.token_expiry_grace;
    while flow == Flow::Continue && !client_closed {
        // Re-read each turn: a fresh token (the dialect's auth message) moves it.
        let expiry = link.expiry_deadline(grace);
        tokio::select! {
            received = stream.next() => {
                heard = Instant::now();
                flow = match received {
                    None => break,
                    Some(Ok(Message::Text(text))) => handle(&mut dialect, &mut link, &limiter, text.as_bytes()).await,
                    Some(Ok(Message::Binary(bytes))) => handle(&mut dialect, &mut link, &limiter, &bytes).await,
                    // tungstenite answers pings and queues the reply to a close itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(_))) => {
                        client_closed = true;
                        Flow::Continue
                    }
                    Some(Err(e)) => refused_frame(e),
                };
            }
            _ = ping.tick() => {
                if heard.elapsed() >= idle_limit {
                    tracing::debug!(connection = %link.connection, "no pong in time; closing");
                    flow = Flow::Close(close::NORMAL, "idle timeout");
                } else if out.send(Outgoing::Ping).await.is_err() {
                    break;
                }
            }
            () = closing.cancelled() => flow = Flow::Close(close::GOING_AWAY, "server shutting down"),
            () = until(expiry) => flow = expire(&mut dialect, &mut link).await,
        }
    }
    if let Flow::Close(code, reason) = flow {
        dialect.closing(&mut link, code).await;
        // The queue goes out first, then the close frame.
        if out.send(Outgoing::Close(code, reason)).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await;
        }
    }
    writer.abort();
    drop(out);
    // The client's answer to our close frame, or tungstenite's to the client's, comes
    // and goes as the stream is read to its end.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { while stream.next().await.is_some() {} }).await;
    dialect.closed(&mut link).await;
    link.wire.engine.connection_closed(&link.connection).await;
}

/// Sleeps until `deadline`; forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The token's expiry: at `exp` the client is told `TOKEN_EXPIRED` (new answers are
/// refused so; a fresh token of the same user through the dialect's auth message
/// extends the connection); `TOKEN_EXPIRY_GRACE_SECONDS` later it is closed with 1008.
async fn expire<D: Dialect>(dialect: &mut D, link: &mut Link) -> Flow {
    if link.told_expired {
        tracing::info!(connection = %link.connection, "closing a connection whose token expired");
        return Flow::Close(close::POLICY, "token expired");
    }
    link.told_expired = true;
    let expired = ChatError::code(ErrorCode::TokenExpired);
    link.refuse(dialect.error(&expired), expired.code).await;
    Flow::Continue
}

/// One message: counted against the connection's rate, then the dialect's.
async fn handle<D: Dialect>(dialect: &mut D, link: &mut Link, limiter: &governor::DefaultDirectRateLimiter, bytes: &[u8]) -> Flow {
    if limiter.check().is_err() {
        let refused = ChatError::new(ErrorCode::RateLimit, "too many messages on this connection; slow down");
        link.refuse(dialect.error(&refused), refused.code).await;
        return Flow::Continue;
    }
    dialect.frame(link, bytes).await
}

/// A frame the socket refused to read: over `WS_MAX_MESSAGE_BYTES` closes with 1009;
/// anything else (a protocol error, a reset) ends the connection.
fn refused_frame(error: axum::Error) -> Flow {
    tracing::debug!(%error, "a frame was refused");
    let too_big = error.into_inner().downcast::<tungstenite::Error>().is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
    if too_big { Flow::Close(close::TOO_BIG, "message too big") } else { Flow::Close(close::POLICY, "protocol error") }
}

/// Writes the queue to the socket, in order, until a close frame or the socket is gone.
async fn write(mut sink: SplitSink<WebSocket, Message>, mut queue: mpsc::Receiver<Outgoing>) {
    while let Some(frame) = queue.recv().await {
        let (message, last) = match frame {
            Outgoing::Text(text) => (Message::Text(text.into()), false),
            Outgoing::Ping => (Message::Ping(Default::default()), false),
            Outgoing::Close(code, reason) => (Message::Close(Some(CloseFrame { code, reason: reason.into() })), true),
        };
        if sink.send(message).await.is_err() || last {
            return;
        }
    }
}
