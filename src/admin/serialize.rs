//! Sockets, times and reasons as the `@socket.io/admin-ui` protocol spells them.
//!
//! A socket is `{ id, clientId, transport, nsp, data, handshake, rooms }`; `data` holds
//! its user (from the verified token), `handshake` its address, headers and query. The
//! credentials in them (`Authorization`, `Cookie`, `?token=`) are never sent.

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::extract::ConnectInfo;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use socketioxide::{TransportType, extract::SocketRef, socket::DisconnectReason};

use crate::{auth::User, transport::socketio::ConnectedAt};

/// What stands in for a credential.
const REDACTED: &str = "[redacted]";
/// Headers that carry credentials.
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A time as the admin UI reads it (JavaScript's `Date` in JSON).
pub fn iso(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The transport's name.
pub fn transport(socket: &SocketRef) -> &'static str {
    match socket.transport_type() {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

/// The client's address, as the accept loop saw it.
pub fn address(parts: &http::request::Parts) -> Option<SocketAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Socket.IO's name for why a socket left.
pub fn reason(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::MultipleHttpPollingError | DisconnectReason::TransportError => "transport error",
        DisconnectReason::PacketParsingError => "parse error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client namespace disconnect",
        DisconnectReason::ServerNSDisconnect => "server namespace disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

/// A socket of any namespace, as `all_sockets` and `socket_connected` carry it.
pub fn socket(socket: &SocketRef) -> Value {
    let parts = socket.req_parts();
    let connected_at = socket.extensions.get::<ConnectedAt>().map_or_else(SystemTime::now, |c| c.0);
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value =
            if SECRET_HEADERS.contains(&name.as_str()) { REDACTED.into() } else { String::from_utf8_lossy(value.as_bytes()).into_owned() };
        headers.insert(name.as_str().to_owned(), Value::String(value));
    }
    // The query as sent, but for the token.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .map(|(k, v)| {
            let v = if k == "token" { REDACTED.into() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    let url = match parts.uri.query() {
        None => parts.uri.path().to_owned(),
        Some(_) => format!("{}?{}", parts.uri.path(), form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish()),
    };
    let query: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let data = match socket.extensions.get::<User>() {
        Some(User(user)) => json!({ "user": user }),
        None => json!({}),
    };
    // Every socket is in a room of its own id, as in Node.js.
    let id = socket.id.to_string();
    let rooms: Vec<String> =
        std::iter::once(id.clone()).chain(socket.rooms().into_iter().map(|r| r.into_owned()).filter(|r| *r != id)).collect();
    json!({
        "id": id,
        "clientId": id,
        "transport": transport(socket),
        "nsp": socket.ns(),
        "data": data,
        "handshake": {
            "address": address(parts).map(|a| a.ip().to_canonical().to_string()),
            "headers": headers,
            "query": query,
            "issued": connected_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "secure": false,
            "time": DateTime::<Utc>::from(connected_at).to_rfc2822(),
            "url": url,
            "xdomain": parts.headers.contains_key(http::header::ORIGIN),
        },
        "rooms": rooms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_what_javascript_dates_serialize_to() {
        assert_eq!(iso(UNIX_EPOCH + std::time::Duration::from_millis(1_764_662_400_123)), "2025-12-02T08:00:00.123Z");
    }
}
