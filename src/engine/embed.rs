//! Embeddings for any wire: the inputs checked, then the shared batching queue.

use serde_json::Value;

use super::Engine;
use crate::{
    chat::{ChatError, ErrorCode, embed},
    providers::Embedded,
};

impl Engine {
    /// The model embeddings come from (`EMBEDDING_MODEL`).
    pub fn embedding_model(&self) -> &str {
        &self.0.config.embeddings.model
    }

    /// The vectors of a request's `input` (a string or an array of strings) for `user`,
    /// from `EMBEDDING_MODEL`. The queue is shared by every user and wire: past its
    /// limit the request is refused with `RATE_LIMIT` at once.
    pub async fn embed(&self, user: &str, input: Option<&Value>) -> Result<Embedded, ChatError> {
        let inputs = embed::inputs(input, self.0.config.max_message_chars)?;
        if self.0.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ChatError::new(ErrorCode::Unavailable, "the server is shutting down; try again"));
        }
        let started = tokio::time::Instant::now();
        let embedded = self.0.embedder.embed(self.embedding_model(), inputs).await;
        match &embedded {
            Ok(e) => tracing::debug!(user, inputs = e.vectors.len(), elapsed = ?started.elapsed(), "embedded"),
            Err(e) => tracing::debug!(user, code = e.code.as_str(), "embedding refused"),
        }
        embedded
    }
}
