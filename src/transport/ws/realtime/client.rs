//! What a voice client sends, read into what goes upstream: `openai_event` payloads
//! forwarded as their own JSON text (never re-serialized) once their type is allowed,
//! a `session.update` cut to the fields a client may set, and the legacy messages
//! (`text_message`, `audio_data`, `audio_commit`, `audio_clear`) mapped to GA events.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json, value::RawValue};

use super::frames::{Code, Problem};

/// Client event types forwarded upstream (`session.update` only through the filter).
const FORWARDED: [&str; 10] = [
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
];

/// `response.create` overrides the server keeps for itself.
const RESPONSE_KEPT: [&str; 7] = ["instructions", "tools", "tool_choice", "model", "max_output_tokens", "prompt", "temperature"];

/// One client message, decoded.
#[derive(Debug)]
pub enum ClientMessage {
    Ping,
    /// Events for the upstream, in order, as JSON text; `user_text` is what the user
    /// typed, for the transcript; `answer_due` when one asks for a response.
    Upstream {
        events: Vec<String>,
        user_text: Option<String>,
        answer_due: bool,
        refused: Option<Problem>,
    },
    Refused(Problem),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Reads one client message. `fields` are the dotted `session` paths a client may set.
pub fn decode(bytes: &[u8], fields: &[String]) -> ClientMessage {
    let Ok(text) = std::str::from_utf8(bytes) else { return invalid("the message is not UTF-8 JSON") };
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) else {
        return invalid("a message is a JSON object with a string `type`");
    };
    let payload = || envelope.payload.and_then(|p| serde_json::from_str::<Value>(p.get()).ok()).unwrap_or(Value::Null);
    match envelope.kind.as_str() {
        "ping" => ClientMessage::Ping,
        "openai_event" => match envelope.payload {
            Some(raw) => openai_event(raw, fields),
            None => invalid("openai_event needs a payload"),
        },
        "text_message" => match payload().get("text").and_then(Value::as_str) {
            Some(text) if !text.trim().is_empty() => {
                let item = json!({
                    "type": "conversation.item.create",
                    "item": { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": text }] },
                });
                upstream(vec![item.to_string(), response_create()], Some(text.to_owned()), true)
            }
            _ => invalid("text_message needs a non-empty payload.text"),
        },
        "audio_data" => match payload().get("audio").and_then(Value::as_str) {
            Some(audio) if base64::engine::general_purpose::STANDARD.decode(audio).is_ok() => {
                upstream(vec![json!({ "type": "input_audio_buffer.append", "audio": audio }).to_string()], None, false)
            }
            _ => invalid("audio_data needs payload.audio: base64 PCM16"),
        },
        "audio_commit" => upstream(vec![json!({ "type": "input_audio_buffer.commit" }).to_string(), response_create()], None, true),
        "audio_clear" => upstream(vec![json!({ "type": "input_audio_buffer.clear" }).to_string()], None, false),
        other => ClientMessage::Refused(Problem::new(Code::InvalidPayload, format!("unknown message type {:?}", short(other)))),
    }
}

/// An `openai_event`: forwarded as it is when its type is allowed and it overrides
/// nothing the server keeps; a `session.update` keeps only the client's fields.
fn openai_event(raw: &RawValue, fields: &[String]) -> ClientMessage {
    let Ok(Value::Object(event)) = serde_json::from_str::<Value>(raw.get()) else {
        return invalid("openai_event.payload is a JSON object");
    };
    let Some(kind) = event.get("type").and_then(Value::as_str) else { return invalid("openai_event.payload needs a string `type`") };
    if kind == "session.update" {
        return session_update(&event, fields);
    }
    if !FORWARDED.contains(&kind) {
        return ClientMessage::Refused(
            Problem::new(Code::EventNotAllowed, format!("{:?} events are not forwarded", short(kind))).with(json!({ "type": short(kind) })),
        );
    }
    if kind == "response.create" {
        let kept: Vec<&str> = RESPONSE_KEPT.into_iter().filter(|k| event.get("response").and_then(|r| r.get(*k)).is_some()).collect();
        if !kept.is_empty() {
            return ClientMessage::Refused(
                Problem::new(Code::FieldNotAllowed, "the server sets these response fields").with(json!({ "fields": kept })),
            );
        }
    }
    if kind == "conversation.item.create"
        && matches!(event.get("item").and_then(|i| i.get("role")).and_then(Value::as_str), Some("system" | "developer"))
    {
        return ClientMessage::Refused(
            Problem::new(Code::FieldNotAllowed, "the server sets the instructions").with(json!({ "fields": ["item.role"] })),
        );
    }
    let user_text = (kind == "conversation.item.create").then(|| typed_text(&event)).flatten();
    upstream(vec![raw.get().to_owned()], user_text, kind == "response.create" || kind == "input_audio_buffer.commit")
}

/// A client's `session.update` with only the allowed fields kept; what was dropped is
/// answered with an error (and nothing goes upstream when nothing is left).
fn session_update(event: &Map<String, Value>, fields: &[String]) -> ClientMessage {
    let Some(Value::Object(session)) = event.get("session") else { return invalid("session.update needs a session object") };
    let (mut kept, mut dropped) = (Map::new(), Vec::new());
    keep_allowed(session, "", fields, &mut kept, &mut dropped);
    dropped.retain(|path| path != "type");
    let refused = (!dropped.is_empty())
        .then(|| Problem::new(Code::FieldNotAllowed, "the server keeps these session fields").with(json!({ "fields": dropped })));
    if kept.keys().all(|k| k == "type") {
        return ClientMessage::Refused(refused.unwrap_or_else(|| Problem::new(Code::InvalidPayload, "session.update changes nothing")));
    }
    kept.insert("type".into(), json!("realtime"));
    let mut update = json!({ "type": "session.update", "session": kept });
    if let Some(id) = event.get("event_id") {
        update["event_id"] = id.clone();
    }
    ClientMessage::Upstream { events: vec![update.to_string()], user_text: None, answer_due: false, refused }
}

/// Copies into `kept` the parts of `value` whose dotted path is allowed; names the rest.
fn keep_allowed(value: &Map<String, Value>, prefix: &str, fields: &[String], kept: &mut Map<String, Value>, dropped: &mut Vec<String>) {
    for (key, child) in value {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if fields.contains(&path) {
            kept.insert(key.clone(), child.clone());
        } else if let (Value::Object(inner), true) = (child, fields.iter().any(|f| f.starts_with(&format!("{path}.")))) {
            let mut sub = Map::new();
            keep_allowed(inner, &path, fields, &mut sub, dropped);
            if !sub.is_empty() {
                kept.insert(key.clone(), Value::Object(sub));
            }
        } else {
            dropped.push(path);
        }
    }
}

/// The `input_text` of a user message item, for the transcript.
fn typed_text(event: &Map<String, Value>) -> Option<String> {
    let item = event.get("item")?;
    if item.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let parts = item.get("content")?.as_array()?;
    let text: Vec<&str> = parts.iter().filter(|p| p["type"] == "input_text").filter_map(|p| p["text"].as_str()).collect();
    (!text.is_empty()).then(|| text.join("\n"))
}

fn response_create() -> String {
    json!({ "type": "response.create" }).to_string()
}

fn upstream(events: Vec<String>, user_text: Option<String>, answer_due: bool) -> ClientMessage {
    ClientMessage::Upstream { events, user_text, answer_due, refused: None }
}

fn invalid(message: &str) -> ClientMessage {
    ClientMessage::Refused(Problem::new(Code::InvalidPayload, message))
}

/// A client-given name, cut for an error message.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}
