//! What goes over the wire to an OpenAI-compatible provider, as chatwire's own types
//! (async-openai's "bring your own types" calls): the request, so `stream_options` can
//! be left out for a provider that refuses it, and a lenient chunk, so the quirks of
//! each provider are read rather than refused:
//! - usage on any chunk (Gemini puts it on the last content chunk; Groq in `x_groq`);
//! - `reasoning` / `reasoning_content` deltas (vLLM, OpenRouter), kept apart from the text;
//! - `data: {"error": ...}` mid-stream (OpenRouter), and finish reasons async-openai's
//!   enum does not know (`error`).
//!
//! Below async-openai, [`send`] is the HTTP service: an error body that is not
//! OpenAI-shaped (Mistral's 422 `{"detail": ...}`, a numeric `code`, plain text) is
//! rewritten into `{"error": {...}}` so async-openai keeps the status code.

use async_openai::{error::OpenAIError, middleware::HttpRequestFactory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chat::{HistoryMessage, Usage};

/// A streaming chat completion request.
#[derive(Serialize)]
pub(super) struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<RequestMessage<'a>>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
}

#[derive(Serialize)]
pub(super) struct RequestMessage<'a> {
    pub role: &'a str,
    pub content: Content<'a>,
}

/// A message's content: its text, or, for a question with images, OpenAI's content
/// parts (the text, then one `image_url` part per image).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Content<'a> {
    Text(&'a str),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Part<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
pub(super) struct ImageUrl<'a> {
    pub url: &'a str,
}

impl<'a> RequestMessage<'a> {
    pub fn of(m: &'a HistoryMessage) -> Self {
        let role = match m.role.as_str() {
            "system" => "system",
            "assistant" => "assistant",
            _ => "user",
        };
        let content = match (role, m.images.is_empty()) {
            ("user", false) => Content::Parts(
                std::iter::once(Part::Text { text: &m.content })
                    .chain(m.images.iter().map(|url| Part::ImageUrl { image_url: ImageUrl { url } }))
                    .collect(),
            ),
            _ => Content::Text(&m.content),
        };
        Self { role, content }
    }
}

/// One `chat.completion.chunk`, every field optional.
#[derive(Deserialize, Default)]
pub(super) struct Chunk {
    #[serde(default)]
    pub choices: Vec<ChoiceChunk>,
    #[serde(default)]
    pub usage: Option<UsageChunk>,
    #[serde(default)]
    pub x_groq: Option<GroqExtra>,
    /// A provider's error reported inside the stream.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Deserialize, Default)]
pub(super) struct ChoiceChunk {
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct GroqExtra {
    #[serde(default)]
    pub usage: Option<UsageChunk>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub(super) struct UsageChunk {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

impl UsageChunk {
    pub fn usage(self) -> Usage {
        let total = if self.total_tokens == 0 { self.prompt_tokens + self.completion_tokens } else { self.total_tokens };
        Usage { prompt_tokens: self.prompt_tokens, completion_tokens: self.completion_tokens, total_tokens: total }
    }
}

impl Chunk {
    /// The provider's message of an error reported in the stream, if this chunk is one.
    pub fn error_message(&self) -> Option<String> {
        let error = self.error.as_ref().filter(|e| !e.is_null())?;
        Some(match error.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => error.to_string(),
        })
    }
}

/// The HTTP service under async-openai: sends the request and makes any error body
/// OpenAI-shaped, keeping its status.
pub(super) async fn send(http: reqwest::Client, factory: HttpRequestFactory) -> Result<reqwest::Response, OpenAIError> {
    let request = factory.build().await?;
    let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
    let status = response.status();
    if status.is_success() || status.is_server_error() {
        // async-openai reads a 5xx body as text whatever it is.
        return Ok(response);
    }
    let body = response.bytes().await.map_err(OpenAIError::Reqwest)?;
    let shaped = openai_error_body(&body);
    let rebuilt = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(shaped)
        .map_err(|e| OpenAIError::InvalidArgument(e.to_string()))?;
    Ok(reqwest::Response::from(rebuilt))
}

/// `{"error": {"message", "type", "param", "code"}}` with string fields, from any body.
fn openai_error_body(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = |v: Option<&Value>| match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(other) => json!(other.to_string()),
    };
    let shaped = match parsed.as_ref().and_then(|v| v.get("error")).filter(|e| e.is_object()) {
        Some(error) => json!({
            "message": match text(error.get("message")) { Value::Null => json!(error.to_string()), m => m },
            "type": text(error.get("type")),
            "param": text(error.get("param")),
            "code": text(error.get("code")),
        }),
        None => json!({
            "message": String::from_utf8_lossy(&body[..body.len().min(2000)]),
            "type": parsed.as_ref().map_or(Value::Null, |v| text(v.get("type"))),
            "param": Value::Null,
            "code": Value::Null,
        }),
    };
    json!({ "error": shaped }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_with_images_is_sent_as_content_parts_and_any_other_as_text() {
        let mut question = HistoryMessage::new("user", "what is this?");
        let text = serde_json::to_value(RequestMessage::of(&question)).unwrap();
        assert_eq!(text, json!({ "role": "user", "content": "what is this?" }));
        question.images = vec!["https://x.io/a.png".into(), "data:image/png;base64,iVBO".into()];
        let parts = serde_json::to_value(RequestMessage::of(&question)).unwrap();
        assert_eq!(
            parts,
            json!({ "role": "user", "content": [
                { "type": "text", "text": "what is this?" },
                { "type": "image_url", "image_url": { "url": "https://x.io/a.png" } },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBO" } },
            ] })
        );
    }

    #[test]
    fn any_error_body_becomes_openai_shaped() {
        let mistral = br#"{"object":"error","message":{"detail":[{"loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]},"type":"invalid_request_error"}"#;
        let v: Value = serde_json::from_str(&openai_error_body(mistral)).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("stream_options"));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let numeric: Value = serde_json::from_str(&openai_error_body(br#"{"error":{"message":"slow down","code":429}}"#)).unwrap();
        assert_eq!(numeric["error"], json!({"message": "slow down", "type": null, "param": null, "code": "429"}));
        let plain: Value = serde_json::from_str(&openai_error_body(b"Too Many Requests")).unwrap();
        assert_eq!(plain["error"]["message"], "Too Many Requests");
    }
}
