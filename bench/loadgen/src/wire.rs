//! Engine.IO 4 / Socket.IO 5 text framing, just the part a WebSocket-only client uses.
//!
//! An Engine.IO packet is one WebSocket text message whose first character is its
//! type (`0` open, `1` close, `2` ping, `3` pong, `4` message, `6` noop). A message
//! carries one Socket.IO packet: its type digit (`0` connect, `1` disconnect,
//! `2` event, `3` ack, `4` connect error), then `/nsp,` unless the namespace is `/`,
//! then an optional ack id in decimal, then the JSON payload.

use std::fmt::Write as _;

use serde::Serialize;

/// One Socket.IO packet, borrowed from the text it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open: the JSON handshake (`sid`, `pingInterval`, ...).
    Open(&'a str),
    /// Engine.IO close.
    Close,
    /// Engine.IO ping (the server's heartbeat); the client answers with a pong.
    Ping,
    /// Engine.IO pong.
    Pong,
    /// Engine.IO noop or anything this client has no use for.
    Noop,
    /// Socket.IO connect, with its JSON data (`{"sid":..}` from a server, auth from a client).
    Connect { nsp: &'a str, data: &'a str },
    /// Socket.IO disconnect.
    Disconnect { nsp: &'a str },
    /// Socket.IO event: `args` is the whole JSON array, event name first.
    Event { nsp: &'a str, ack: Option<u64>, args: &'a str },
    /// Socket.IO acknowledgement: `args` is the JSON array of the ack's arguments.
    Ack { nsp: &'a str, id: u64, args: &'a str },
    /// Socket.IO connect error, with its JSON data (`{"message":..}`).
    ConnectError { nsp: &'a str, data: &'a str },
}

/// Why a text is not a packet this client understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPacket(pub String);

impl std::fmt::Display for BadPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed packet: {}", self.0)
    }
}

impl std::error::Error for BadPacket {}

/// Parses one Engine.IO text packet.
pub fn parse(text: &str) -> Result<Packet<'_>, BadPacket> {
    let bad = || BadPacket(text.chars().take(80).collect());
    let mut chars = text.char_indices();
    let (_, engine) = chars.next().ok_or_else(bad)?;
    match engine {
        '0' => return Ok(Packet::Open(&text[1..])),
        '1' => return Ok(Packet::Close),
        '2' => return Ok(Packet::Ping),
        '3' => return Ok(Packet::Pong),
        '4' => {}
        '5' | '6' => return Ok(Packet::Noop),
        _ => return Err(bad()),
    }
    let kind = text.as_bytes().get(1).copied().ok_or_else(bad)?;
    let mut rest = &text[2..];
    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => {
                nsp = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                // `41/ai` with nothing after it: the namespace runs to the end.
                nsp = rest;
                rest = "";
            }
        }
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 { Some(rest[..digits].parse::<u64>().map_err(|_| bad())?) } else { None };
    let body = &rest[digits..];
    match kind {
        b'0' => Ok(Packet::Connect { nsp, data: body }),
        b'1' => Ok(Packet::Disconnect { nsp }),
        b'2' => Ok(Packet::Event { nsp, ack: id, args: body }),
        b'3' => Ok(Packet::Ack { nsp, id: id.ok_or_else(bad)?, args: body }),
        b'4' => Ok(Packet::ConnectError { nsp, data: body }),
        // 5 and 6 are binary events and acks, which this protocol never uses.
        _ => Err(bad()),
    }
}

/// The event name at the head of an event's JSON array, without a full parse.
/// Event names here never contain quotes or escapes; one that does is decoded properly.
pub fn event_name(args: &str) -> Option<std::borrow::Cow<'_, str>> {
    let rest = args.trim_start().strip_prefix('[')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    if name.contains('\\') {
        let full: (String,) = serde_json::from_str(&format!("[{}]", first_json_string(args)?)).ok()?;
        return Some(full.0.into());
    }
    Some(name.into())
}

fn first_json_string(args: &str) -> Option<&str> {
    let start = args.find('"')?;
    let bytes = args.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(&args[start..=i]),
            _ => i += 1,
        }
    }
    None
}

fn push_nsp(out: &mut String, nsp: &str) {
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

/// `40/ai,{data}`: a client's connect request with its auth, or a server's answer.
pub fn connect_frame(nsp: &str, data: &impl Serialize) -> String {
    let mut out = String::from("40");
    push_nsp(&mut out, nsp);
    out.push_str(&serde_json::to_string(data).unwrap_or_else(|_| "{}".into()));
    out
}

/// `44/ai,{"message":..}`: a server refusing a connect.
pub fn connect_error_frame(nsp: &str, message: &str) -> String {
    let mut out = String::from("44");
    push_nsp(&mut out, nsp);
    out.push_str(&serde_json::json!({ "message": message }).to_string());
    out
}

/// `42/ai,[id]["name",data]`: an event, asking for an acknowledgement when `ack` is given.
pub fn event_frame(nsp: &str, ack: Option<u64>, name: &str, data: &impl Serialize) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("42");
    push_nsp(&mut out, nsp);
    if let Some(id) = ack {
        let _ = write!(out, "{id}");
    }
    out.push_str(&serde_json::to_string(&(name, data)).unwrap_or_else(|_| "[]".into()));
    out
}

/// `43/ai,id[data]`: the acknowledgement of event `id`.
pub fn ack_frame(nsp: &str, id: u64, data: &impl Serialize) -> String {
    let mut out = String::from("43");
    push_nsp(&mut out, nsp);
    let _ = write!(out, "{id}");
    out.push_str(&serde_json::to_string(&(data,)).unwrap_or_else(|_| "[]".into()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_engine_packets() {
        assert_eq!(parse("0{\"sid\":\"x\"}").unwrap(), Packet::Open("{\"sid\":\"x\"}"));
        assert_eq!(parse("2").unwrap(), Packet::Ping);
        assert_eq!(parse("3").unwrap(), Packet::Pong);
        assert_eq!(parse("1").unwrap(), Packet::Close);
        assert_eq!(parse("6").unwrap(), Packet::Noop);
        assert!(parse("").is_err());
        assert!(parse("9").is_err());
    }

    #[test]
    fn parses_socketio_packets() {
        assert_eq!(parse("40/ai,{\"sid\":\"a\"}").unwrap(), Packet::Connect { nsp: "/ai", data: "{\"sid\":\"a\"}" });
        assert_eq!(parse("40{\"sid\":\"a\"}").unwrap(), Packet::Connect { nsp: "/", data: "{\"sid\":\"a\"}" });
        assert_eq!(parse("41/ai,").unwrap(), Packet::Disconnect { nsp: "/ai" });
        assert_eq!(parse("41/ai").unwrap(), Packet::Disconnect { nsp: "/ai" });
        assert_eq!(
            parse("42/ai,[\"chat:message\",{\"content\":\"1 \"}]").unwrap(),
            Packet::Event { nsp: "/ai", ack: None, args: "[\"chat:message\",{\"content\":\"1 \"}]" }
        );
        assert_eq!(parse("42/ai,17[\"chat:start\",{}]").unwrap(), Packet::Event { nsp: "/ai", ack: Some(17), args: "[\"chat:start\",{}]" });
        assert_eq!(parse("43/ai,5[{\"ok\":true}]").unwrap(), Packet::Ack { nsp: "/ai", id: 5, args: "[{\"ok\":true}]" });
        assert_eq!(
            parse("44/ai,{\"message\":\"unauthorized\"}").unwrap(),
            Packet::ConnectError { nsp: "/ai", data: "{\"message\":\"unauthorized\"}" }
        );
        assert!(parse("43/ai,[1]").is_err(), "an ack needs an id");
    }

    #[test]
    fn builds_frames_that_parse_back() {
        let f = event_frame("/ai", None, "chat:start", &json!({"message": "hi", "maxTokens": 3}));
        assert_eq!(f, "42/ai,[\"chat:start\",{\"maxTokens\":3,\"message\":\"hi\"}]");
        let f = event_frame("/ai", Some(4), "chat:start", &json!({}));
        assert_eq!(f, "42/ai,4[\"chat:start\",{}]");
        assert_eq!(connect_frame("/ai", &json!({"token": "t"})), "40/ai,{\"token\":\"t\"}");
        assert_eq!(connect_frame("/", &json!({})), "40{}");
        assert_eq!(ack_frame("/ai", 4, &json!({"ok": true})), "43/ai,4[{\"ok\":true}]");
        assert_eq!(connect_error_frame("/ai", "unauthorized"), "44/ai,{\"message\":\"unauthorized\"}");
    }

    #[test]
    fn reads_event_names_cheaply() {
        assert_eq!(event_name("[\"chat:end\",{}]").as_deref(), Some("chat:end"));
        assert_eq!(event_name(" [ \"x\" ]").as_deref(), Some("x"));
        assert_eq!(event_name("[\"a\\\"b\",1]").as_deref(), Some("a\"b"));
        assert_eq!(event_name("{}"), None);
    }
}
