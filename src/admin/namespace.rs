//! The `/admin` namespace: the `@socket.io/admin-ui` server protocol.
//!
//! Login is the handshake's `auth`: `{ username, password }` (then the server sends a
//! `session` id), or `{ sessionId }` of an earlier login. Anything else is refused with
//! exactly `unauthorized`. Once connected the socket gets `config` (the supported
//! features), `all_sockets` and `server_stats`, then the feed. The UI's actions on `/ai`
//! sockets: `_disconnect`, `join` and `leave`, each on one socket (its id), the sockets
//! of a room, or every socket of the namespace. `emit` (sending arbitrary events to chat
//! clients) is not offered.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::{
    extract::{SocketRef, TryData},
    handler::ConnectHandler,
    socket::Sid,
};

use super::{NAMESPACE, Shared, feed, serialize};
use crate::{
    auth::Unauthorized,
    transport::socketio::{self, Watching},
};

/// What the UI may do here (`EMIT` is left out on purpose).
const FEATURES: [&str; 8] = ["JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"];

/// A session id given at login, sent once connected.
#[derive(Clone)]
struct NewSession(String);

/// The `/ai` observer reports while an admin socket holds this.
#[derive(Clone)]
struct Watcher {
    _watching: Arc<Watching>,
}

/// `join` / `leave`: `(nsp, room, filter?)`.
#[derive(Deserialize)]
struct RoomAction(String, String, #[serde(default)] Option<String>);

/// `_disconnect`: `(nsp, close, filter?)`.
#[derive(Deserialize)]
struct DisconnectAction(String, bool, #[serde(default)] Option<String>);

/// Adds the namespace.
pub fn register(shared: &Arc<Shared>) {
    // `Shared` holds the Socket.IO handle, which holds these handlers: weak, or neither is ever freed.
    let on_connect = {
        let shared = Arc::downgrade(shared);
        async move |socket: SocketRef| {
            if let Some(shared) = shared.upgrade() {
                welcome(&shared, &socket);
            }
        }
    };
    let admit = {
        let shared = Arc::downgrade(shared);
        async move |socket: SocketRef, TryData(auth): TryData<Value>| match shared.upgrade() {
            Some(shared) => admit(shared, socket, auth.ok()).await,
            None => Err(Unauthorized),
        }
    };
    shared.io.ns(NAMESPACE, on_connect.with(admit));
}

/// The connect middleware: the handlers first (socketioxide may deliver events before
/// the connect handler runs), then the credentials.
async fn admit(shared: Arc<Shared>, socket: SocketRef, auth: Option<Value>) -> Result<(), Unauthorized> {
    for (event, leave) in [("join", false), ("leave", true)] {
        let shared = shared.clone();
        socket.on(event, async move |TryData(args): TryData<RoomAction>| match args {
            Ok(RoomAction(nsp, room, filter)) => rooms(&shared, &nsp, &room, filter.as_deref(), leave),
            Err(e) => tracing::debug!(event, error = %e, "admin action does not parse"),
        });
    }
    let disconnecting = shared.clone();
    socket.on("_disconnect", async move |TryData(args): TryData<DisconnectAction>| match args {
        Ok(DisconnectAction(nsp, _close, filter)) => disconnect(&disconnecting, &nsp, filter.as_deref()),
        Err(e) => tracing::debug!(error = %e, "admin action does not parse"),
    });
    socket.on_disconnect(async |socket: SocketRef| {
        socket.extensions.remove::<Watcher>();
    });
    let field = |name: &str| auth.as_ref().and_then(|a| a.get(name)).and_then(Value::as_str);
    if field("sessionId").is_some_and(|id| shared.login.has_session(id)) {
        return Ok(());
    }
    let ip = serialize::address(socket.req_parts()).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        tracing::info!(%ip, "admin connection refused: no credentials");
        return Err(Unauthorized);
    };
    match shared.login.check(ip, username, password).await {
        Ok(()) => {
            socket.extensions.insert(NewSession(shared.login.open_session()));
            tracing::info!(%ip, sid = %socket.id, "admin connected");
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(%ip, %reason, "admin connection refused");
            Err(Unauthorized)
        }
    }
}

/// What a new admin socket is told first; the feed runs from then on.
fn welcome(shared: &Shared, socket: &SocketRef) {
    socket.extensions.insert(Watcher { _watching: Arc::new(shared.observer.watch()) });
    let mut sockets: Vec<Value> = Vec::new();
    for ns in [socketio::NAMESPACE, NAMESPACE] {
        sockets.extend(shared.io.of(ns).map(|ns| ns.sockets()).unwrap_or_default().iter().map(serialize::socket));
    }
    let mut sent = Vec::new();
    if let Some(NewSession(id)) = socket.extensions.get::<NewSession>() {
        sent.push(socket.emit("session", &id));
    }
    sent.push(socket.emit("config", &json!({ "supportedFeatures": FEATURES })));
    sent.push(socket.emit("all_sockets", &sockets));
    sent.push(socket.emit("server_stats", &feed::server_stats(shared, Vec::new())));
    for e in sent.into_iter().filter_map(Result::err) {
        tracing::warn!(sid = %socket.id, error = %e, "admin welcome not delivered");
    }
}

/// The `/ai` sockets an action is for: the one with this id, else the room's, else all.
fn targets(shared: &Shared, nsp: &str, filter: Option<&str>) -> Vec<SocketRef> {
    let Some(ns) = shared.io.of(nsp).filter(|_| nsp == socketio::NAMESPACE) else {
        tracing::debug!(nsp, "admin action on a namespace it does not act on");
        return Vec::new();
    };
    match filter {
        None => ns.sockets(),
        Some(filter) => match filter.parse::<Sid>().ok().and_then(|sid| ns.get_socket(sid)) {
            Some(socket) => vec![socket],
            None => ns.within(filter.to_owned()).sockets(),
        },
    }
}

fn rooms(shared: &Shared, nsp: &str, room: &str, filter: Option<&str>, leave: bool) {
    for socket in targets(shared, nsp, filter) {
        let sid = socket.id.to_string();
        if leave {
            socket.leave(room.to_owned());
            feed::to_admins(shared, "room_left", &(nsp, room, sid, serialize::iso(SystemTime::now())));
        } else {
            socket.join(room.to_owned());
            feed::to_admins(shared, "room_joined", &(nsp, room, sid, serialize::iso(SystemTime::now())));
        }
    }
}

fn disconnect(shared: &Shared, nsp: &str, filter: Option<&str>) {
    for socket in targets(shared, nsp, filter) {
        let sid = socket.id;
        match socket.disconnect() {
            Ok(()) => tracing::info!(%sid, "socket disconnected by an admin"),
            Err(e) => tracing::warn!(%sid, error = %e, "admin disconnect failed"),
        }
    }
}
