//! The `/ai` namespace: the NestJS `AiGateway`'s Socket.IO wire over the engine.
//!
//! socketioxide sends the namespace CONNECT packet before it runs the (spawned) connect
//! handler, so a client may emit before that handler has run. The event handlers are
//! therefore registered by the auth middleware, which socketioxide awaits before it
//! answers CONNECT: an event sent right after `connect` is never lost.

mod chat;
mod edit;
mod follow;
mod observer;
mod payload;
mod reader;
mod session;
mod titles;
mod typing;

pub use observer::{ConnectedAt, Notice, Observer, Watching};
pub use titles::spawn_titles;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::{
    ParserConfig, SocketIo,
    extract::{AckSender, SocketRef, State, TryData},
    handler::ConnectHandler,
    layer::SocketIoLayer,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    auth::{self, AuthError, Session, Unauthorized, User},
    chat::ConnectionId,
    transport::{Wire, events::ActiveGeneration},
};

/// The namespace existing clients connect to.
pub const NAMESPACE: &str = "/ai";
/// Initial WebSocket read buffer per connection (the default, 4 KiB, is mostly idle).
const WS_READ_BUFFER: usize = 1024;
/// The protocol has no binary payloads: a packet announcing binary attachments closes its
/// socket (socketioxide would otherwise wait a minute for up to 10,000 of them, 10 MB).
const MAX_BINARY_ATTACHMENTS: usize = 0;
/// How long a partial binary packet may wait for its attachments (none are accepted anyway).
const ATTACHMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The Socket.IO layer for the router, and its handle (to count and close sockets).
/// `observer`, when given, is told what happens on `/ai` (the admin view watches it).
pub fn layer(wire: Wire, observer: Option<Observer>) -> (SocketIoLayer, SocketIo) {
    let config = wire.config.clone();
    // Largest packet accepted from a client: 1 MB, as Node's Socket.IO (`maxHttpBufferSize`),
    // and room for a `chat:start` with `MAX_ATTACHMENTS` images of 5 MiB as data URLs.
    let max_payload = crate::chat::attachments::max_start_bytes(config.conversations.max_attachments);
    let (layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_buffer_size(config.socket_buffer_packets)
        // Client frames are small; a large message still grows the buffer as needed.
        .ws_read_buffer_size(WS_READ_BUFFER)
        .max_payload(max_payload as u64)
        .ws_max_message_size(max_payload)
        // A client may send a packet as one frame (Node's `ws` does): tungstenite's default
        // frame limit, 16 MiB, would close a socket sending four images.
        .ws_max_frame_size(max_payload)
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(MAX_BINARY_ATTACHMENTS)
                .max_incoming_binary_buf_size(0)
                .packet_completion_timeout(ATTACHMENT_TIMEOUT),
        )
        .with_state(wire)
        .with_state(observer::Watch(observer))
        .build_layer();
    io.ns(NAMESPACE, on_connect.with(authenticate));
    // Nothing happens on `/`, but socket.io-client 2.x must be able to join it first.
    io.ns("/", (async |_: SocketRef| {}).with(authenticate_root));
    (layer, io)
}

/// Sockets connected to `/ai` now.
pub fn connections(io: &SocketIo) -> usize {
    io.of(NAMESPACE).map(|ns| ns.sockets().len()).unwrap_or(0)
}

/// Why a connect to `/ai` is refused; socketioxide sends the text as it is.
#[derive(Debug)]
enum ConnectRefused {
    /// Whatever the reason: `unauthorized`, the reason goes to the log.
    Unauthorized,
    /// The user holds `MAX_CONNECTIONS_PER_USER` connections already.
    TooManyConnections,
}

impl std::fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized => Unauthorized.fmt(f),
            Self::TooManyConnections => f.write_str("RATE_LIMIT"),
        }
    }
}

impl From<Unauthorized> for ConnectRefused {
    fn from(_: Unauthorized) -> Self {
        Self::Unauthorized
    }
}

/// The `/ai` connect middleware: verifies, takes the user's connection place, then
/// registers the chat handlers (before any `.await`).
async fn authenticate(
    socket: SocketRef,
    auth: TryData<Value>,
    state: State<Wire>,
    State(watch): State<observer::Watch>,
) -> Result<(), ConnectRefused> {
    let wire = state.0.clone();
    let verified = identify(&socket, auth, state).await?;
    let Some(slot) = wire.connections.acquire(&verified.user.0) else {
        tracing::info!(sid = %socket.id, "connection refused: the user is at MAX_CONNECTIONS_PER_USER");
        return Err(ConnectRefused::TooManyConnections);
    };
    session::open(&socket, &wire, Some(slot), verified.expires_at);
    let metrics = wire.engine.metrics().clone();
    socket.extensions.insert(reader::Subscriptions::default());
    socket.extensions.insert(InFlight(Arc::new(Semaphore::new(wire.config.socket_events_in_flight))));
    socket.extensions.insert(DropLogged::default());
    socket.extensions.insert(typing::TypingThrottle::default());
    // `refuse` counts each error it sends, from wherever it is called.
    socket.extensions.insert(metrics);
    socket.on("chat:start", chat::chat_start);
    socket.on("chat:stop", chat::chat_stop);
    socket.on("chat:resume", follow::chat_resume);
    socket.on("chat:join", follow::chat_join);
    socket.on("chat:leave", follow::chat_leave);
    socket.on("chat:auth", session::chat_auth);
    socket.on("chat:providers", chat::chat_providers);
    socket.on("embed", chat::embed);
    socket.on("chat:edit", edit::chat_edit);
    socket.on("chat:regenerate", edit::chat_regenerate);
    socket.on("chat:history", edit::chat_history);
    socket.on("chat:delete", edit::chat_delete);
    socket.on("chat:typing", typing::chat_typing);
    socket.on_disconnect(chat::on_disconnect);
    observer::connected(&socket, &watch);
    Ok(())
}

/// The root namespace's connect middleware. Socket.IO v2 clients (protocol v4) join `/`
/// before any other namespace; they must hold a valid token there too.
async fn authenticate_root(socket: SocketRef, auth: TryData<Value>, state: State<Wire>) -> Result<(), Unauthorized> {
    identify(&socket, auth, state).await.map(drop)
}

/// Verifies the socket's credentials (handshake `auth.token`, then the request's
/// Bearer header or `?token=`) and stores its [`User`].
async fn identify(socket: &SocketRef, TryData(auth): TryData<Value>, State(wire): State<Wire>) -> Result<Session, Unauthorized> {
    let auth = auth.ok();
    let verified = if wire.auth.is_open() {
        // Each anonymous connection is a user of its own: testers share nothing.
        let user =
            auth::claimed_user(auth.as_ref().and_then(|a| a.get("userId"))).unwrap_or_else(|| User(format!("anonymous-{}", socket.id)));
        Session { user, expires_at: None }
    } else {
        let handshake = match auth.as_ref().and_then(|a| a.get("token")) {
            Some(Value::String(t)) if !t.is_empty() => Some(t.as_str().into()),
            _ => None,
        };
        let token = handshake.or_else(|| auth::request_token(&socket.req_parts().headers, &socket.req_parts().uri)).ok_or_else(|| {
            tracing::info!(sid = %socket.id, reason = %AuthError::Missing, "connection refused");
            Unauthorized
        })?;
        wire.auth.verify_session(&token).await.map_err(|reason| {
            tracing::info!(sid = %socket.id, %reason, "connection refused");
            Unauthorized
        })?
    };
    socket.extensions.insert(verified.user.clone());
    Ok(verified)
}

/// The connect handler, run once the client knows it is connected: tells it which of
/// its answers are running, so that it can resume them.
async fn on_connect(socket: SocketRef, State(wire): State<Wire>) {
    tracing::debug!(sid = %socket.id, "connected");
    if let Some(User(user)) = user_of(&socket) {
        let generations: Vec<ActiveGeneration> = wire.engine.active(&user).await.into_iter().map(Into::into).collect();
        emit_logged(&socket, "chat:active", &json!({ "generations": generations }));
    }
}

/// The events a socket may have in progress at once (socketioxide spawns a task per
/// event; a flood of them must not pile up waiting for the database).
#[derive(Clone)]
struct InFlight(Arc<Semaphore>);

/// A permit for one event of this socket, or `None` when it has too many in progress.
fn event_permit(socket: &SocketRef) -> Option<OwnedSemaphorePermit> {
    socket.extensions.get::<InFlight>()?.0.try_acquire_owned().ok()
}

/// Whether this socket's first lost event was logged: later ones go to debug only, so a
/// client that floods and never reads cannot flood the log too.
#[derive(Clone, Default)]
struct DropLogged(Arc<AtomicBool>);

fn user_of(socket: &SocketRef) -> Option<User> {
    socket.extensions.get::<User>()
}

/// The engine's name for this socket.
fn connection_id(socket: &SocketRef) -> ConnectionId {
    ConnectionId::new("sio", socket.id)
}

/// Sends an event the client must see; a failure is logged, never ignored.
fn emit_logged<T: Serialize + ?Sized>(socket: &SocketRef, event: &'static str, data: &T) {
    match socket.emit(event, data) {
        Ok(()) => observer::sent(socket, event, data),
        Err(e) => log_lost(socket, event, &e),
    }
}

fn ack_logged<T: Serialize + ?Sized>(socket: &SocketRef, ack: AckSender, data: &T) {
    if let Err(e) = ack.send(data) {
        log_lost(socket, "ack", &e);
    }
}

/// The first event a socket loses is a WARN; the rest of that socket's are DEBUG.
fn log_lost(socket: &SocketRef, event: &str, error: &dyn std::fmt::Display) {
    let first = socket.extensions.get::<DropLogged>().is_none_or(|d| !d.0.swap(true, Ordering::Relaxed));
    if first {
        tracing::warn!(sid = %socket.id, event, error = %error, "event not delivered (later losses on this socket are logged at debug)");
    } else {
        tracing::debug!(sid = %socket.id, event, error = %error, "event not delivered");
    }
}
