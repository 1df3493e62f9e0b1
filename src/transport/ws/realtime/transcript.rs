//! A voice session's transcript as it is stored: what the user typed or said (its input
//! transcription) and each response's transcript or text with its usage, a message
//! each, written when it is complete. A response cut short is stored with what it had.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use crate::{
    chat::{Status, Usage},
    engine::Engine,
    store::VoiceMessage,
};

/// The session's transcript so far, and the responses still being spoken.
pub struct Transcript {
    engine: Engine,
    user: String,
    conversation: Uuid,
    model: String,
    /// Text of each running response, by `response_id`, in the order they began.
    running: BTreeMap<String, (u64, String)>,
    began: u64,
}

impl Transcript {
    pub fn new(engine: Engine, user: String, conversation: Uuid, model: String) -> Self {
        Self { engine, user, conversation, model, running: BTreeMap::new(), began: 0 }
    }

    /// Stores what the user typed.
    pub async fn user_said(&self, text: &str) {
        self.store("user", text, None, Status::Complete, None, None).await;
    }

    /// Reads one upstream event: transcription, transcript and text deltas, `response.done`.
    /// Returns the tokens of a finished response.
    pub async fn upstream_event(&mut self, event: &Value) -> Option<Usage> {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
        let text = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default();
        match kind {
            "conversation.item.input_audio_transcription.completed" => {
                let said = text("transcript").trim();
                if !said.is_empty() {
                    self.store("user", said, None, Status::Complete, None, None).await;
                }
                None
            }
            "response.output_audio_transcript.delta" | "response.output_text.delta" => {
                let id = text("response_id").to_owned();
                self.began += 1;
                let began = self.began;
                self.running.entry(id).or_insert_with(|| (began, String::new())).1.push_str(text("delta"));
                None
            }
            "response.done" => {
                let response = event.get("response").unwrap_or(&Value::Null);
                let id = response.get("id").and_then(Value::as_str).unwrap_or_default();
                let spoken = self.running.remove(id).map(|(_, text)| text).unwrap_or_else(|| output_text(response));
                let usage = usage(response);
                let status = response.get("status").and_then(Value::as_str).unwrap_or("completed");
                if !spoken.is_empty() || usage.is_some() {
                    let stored = if status == "failed" { Status::Error } else { Status::Complete };
                    self.store("assistant", &spoken, usage, stored, Some(status), None).await;
                }
                usage
            }
            _ => None,
        }
    }

    /// Stores what running responses said before the session ended (`reason`, `code`).
    pub async fn cut(&mut self, status: Status, reason: &str, code: Option<&str>) {
        let mut cut: Vec<(u64, String)> = std::mem::take(&mut self.running).into_values().collect();
        cut.sort();
        for (_, text) in cut {
            self.store("assistant", &text, None, status, Some(reason), code).await;
        }
    }

    async fn store(&self, role: &str, content: &str, usage: Option<Usage>, status: Status, reason: Option<&str>, code: Option<&str>) {
        let message = VoiceMessage {
            user_id: &self.user,
            conversation_id: self.conversation,
            role,
            content,
            model: (role == "assistant").then_some(self.model.as_str()),
            usage,
            status,
            finish_reason: reason,
            error_code: code,
        };
        if let Err(e) = self.engine.record_voice_message(&message).await {
            tracing::error!(conversation = %self.conversation, code = e.code.as_str(), "a voice transcript message was not stored");
        }
    }
}

/// `response.usage`: input tokens (text and audio) as prompt, output tokens as completion.
fn usage(response: &Value) -> Option<Usage> {
    let usage = response.get("usage")?;
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let (prompt_tokens, completion_tokens) = (count("input_tokens"), count("output_tokens"));
    Some(Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) })
}

/// The transcript or text in a finished response's output, when no delta carried it.
fn output_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response.get("output").and_then(Value::as_array).into_iter().flatten() {
        for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = part.get("transcript").or_else(|| part.get("text")).and_then(Value::as_str) {
                text.push_str(t);
            }
        }
    }
    text
}
