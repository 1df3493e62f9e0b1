//! The dialects' chunk frames, typed. One is written for every piece of every answer,
//! so it is serialized straight to its text rather than built as a `serde_json::Value`
//! first (a map, a `String` per key and value, then the text). The fields are in
//! alphabetical order: the text is exactly what the `json!` form printed, so clients
//! see the same bytes.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// canyon's `response_chunk`.
#[derive(Serialize)]
pub struct CanyonChunk<'a> {
    pub content: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// WADI's `chunk`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WadiChunk<'a> {
    pub content: &'a str,
    pub message_id: Uuid,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// Void's `provider_stream_chunk`: `{ payload, type }`.
#[derive(Serialize)]
pub struct VoidChunk<'a> {
    pub payload: VoidChunkPayload<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// The payload of [`VoidChunk`], with the request's `requestId` when it had one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoidChunkPayload<'a> {
    pub chunk: &'a str,
    pub message_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a Value>,
}

/// The frame's text. Serializing these types cannot fail (string keys, no maps of
/// other keys); were it to, the frame is left out and the reason logged.
pub fn text<T: Serialize>(frame: &T) -> Option<String> {
    serde_json::to_string(frame).inspect_err(|e| tracing::error!(error = %e, "a frame could not be written")).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEXTS: [&str; 4] = ["Hello", "", "quote \" backslash \\ newline \n tab \t", "héllo 👋 \u{1}"];

    #[test]
    fn each_typed_chunk_is_the_text_its_json_form_printed() {
        let id = Uuid::now_v7();
        for content in TEXTS {
            assert_eq!(
                text(&CanyonChunk { content, kind: "response_chunk" }).as_deref(),
                Some(json!({ "type": "response_chunk", "content": content }).to_string().as_str())
            );
            assert_eq!(
                text(&WadiChunk { content, message_id: id, kind: "chunk" }).as_deref(),
                Some(json!({ "type": "chunk", "content": content, "messageId": id }).to_string().as_str())
            );
            for request_id in [None, Some(json!("r1")), Some(json!(7))] {
                let mut payload = json!({ "chunk": content, "messageId": id });
                if let Some(r) = &request_id {
                    payload["requestId"] = r.clone();
                }
                let typed = VoidChunk {
                    payload: VoidChunkPayload { chunk: content, message_id: id, request_id: request_id.as_ref() },
                    kind: "provider_stream_chunk",
                };
                assert_eq!(
                    text(&typed).as_deref(),
                    Some(json!({ "type": "provider_stream_chunk", "payload": payload }).to_string().as_str())
                );
            }
        }
    }
}
