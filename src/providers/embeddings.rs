//! Embeddings, gathered. Concurrent requests from every client and wire join one queue;
//! a batch of at most `EMBEDDING_BATCH_SIZE` inputs goes when it is full, or
//! `EMBEDDING_BATCH_WAIT_MS` after its first input; at most `EMBEDDING_RATE_LIMIT` calls
//! start in any sliding second, so past that rate inputs wait (and batches fill). Each
//! caller gets exactly its own vectors back, in order. Past `EMBEDDING_QUEUE_LIMIT`
//! waiting inputs, a request is refused with `RATE_LIMIT` at once.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use serde::Deserialize;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Provider, Registry, UpstreamError};
use crate::{
    chat::{ChatError, ErrorCode},
    config::EmbeddingConfig,
};

/// What one request gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The model the vectors come from (`EMBEDDING_MODEL`).
    pub model: String,
    /// One vector per input, in the order given.
    pub vectors: Vec<Vec<f64>>,
    /// This request's share of its batches' prompt tokens.
    pub prompt_tokens: u64,
}

/// The queue's handle; cheap to clone. Its worker stops when the last handle is dropped.
#[derive(Clone)]
pub struct Embedder {
    tx: mpsc::UnboundedSender<Item>,
    /// Inputs waiting for a call: bounded here, so the channel never grows past the limit.
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// One input and where its vector goes.
struct Item {
    text: String,
    slot: usize,
    at: Instant,
    request: Arc<Mutex<Gathering>>,
}

/// One request's vectors as its batches answer.
struct Gathering {
    vectors: Vec<Option<Vec<f64>>>,
    missing: usize,
    tokens: u64,
    model: String,
    reply: Option<oneshot::Sender<Result<Embedded, ChatError>>>,
}

impl Gathering {
    fn fill(&mut self, slot: usize, vector: Vec<f64>, tokens: u64) {
        if let Some(place) = self.vectors.get_mut(slot)
            && place.replace(vector).is_none()
        {
            self.missing -= 1;
            self.tokens += tokens;
        }
        if self.missing == 0
            && let Some(reply) = self.reply.take()
        {
            let vectors = self.vectors.iter_mut().filter_map(Option::take).collect();
            // The caller may have gone (its client disconnected): nobody to tell.
            let _ = reply.send(Ok(Embedded { model: self.model.clone(), vectors, prompt_tokens: self.tokens }));
        }
    }

    /// The first failure answers the request; its other batches' results are dropped.
    fn fail(&mut self, error: ChatError) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(error));
        }
    }

    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_none_or(oneshot::Sender::is_closed)
    }
}

impl Embedder {
    /// Starts the queue's worker (on the current runtime), calling `registry`'s provider
    /// for `settings.model`.
    pub fn spawn(settings: EmbeddingConfig, registry: Registry) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let limit = settings.queue_limit;
        tokio::spawn(gather(rx, settings, registry, queued.clone()));
        Self { tx, queued, limit }
    }

    /// The vectors of `inputs` (already checked: see [`crate::chat::embed::inputs`]).
    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<Embedded, ChatError> {
        let n = inputs.len();
        if self.queued.fetch_add(n, Ordering::SeqCst) + n > self.limit {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(ChatError::new(ErrorCode::RateLimit, "too many embedding requests waiting; try again shortly"));
        }
        let (reply, answer) = oneshot::channel();
        let request =
            Arc::new(Mutex::new(Gathering { vectors: vec![None; n], missing: n, tokens: 0, model: model.to_owned(), reply: Some(reply) }));
        let at = Instant::now();
        for (slot, text) in inputs.into_iter().enumerate() {
            if self.tx.send(Item { text, slot, at, request: request.clone() }).is_err() {
                self.queued.fetch_sub(n - slot, Ordering::SeqCst);
                return Err(ChatError::code(ErrorCode::Unavailable));
            }
        }
        answer.await.unwrap_or_else(|_| Err(ChatError::code(ErrorCode::Unavailable)))
    }
}

/// The starts of the calls in the last second, for the sliding-window rate.
struct Pace {
    starts: VecDeque<Instant>,
    per_second: usize,
}

impl Pace {
    /// Waits until one more call may start, and counts it as started.
    async fn next(&mut self) {
        loop {
            let now = Instant::now();
            while self.starts.front().is_some_and(|s| *s + Duration::from_secs(1) <= now) {
                self.starts.pop_front();
            }
            match self.starts.front() {
                Some(oldest) if self.starts.len() >= self.per_second => tokio::time::sleep_until(*oldest + Duration::from_secs(1)).await,
                _ => break,
            }
        }
        self.starts.push_back(Instant::now());
    }
}

/// The worker: forms batches and starts their calls at the allowed rate.
async fn gather(mut rx: mpsc::UnboundedReceiver<Item>, settings: EmbeddingConfig, registry: Registry, queued: Arc<AtomicUsize>) {
    let mut waiting: VecDeque<Item> = VecDeque::new();
    let mut pace = Pace { starts: VecDeque::new(), per_second: settings.calls_per_second };
    let mut open = true;
    while open || !waiting.is_empty() {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(item) => waiting.push_back(item),
                None => return,
            }
        }
        let deadline = waiting.front().map_or_else(Instant::now, |first| first.at + settings.batch_wait);
        while open && waiting.len() < settings.batch_size {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => waiting.push_back(item),
                    None => open = false,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        pace.next().await;
        // What came while the rate held the call back goes in too: full batches.
        while let Ok(item) = rx.try_recv() {
            waiting.push_back(item);
        }
        let mut batch = Vec::with_capacity(settings.batch_size);
        while batch.len() < settings.batch_size
            && let Some(item) = waiting.pop_front()
        {
            queued.fetch_sub(1, Ordering::SeqCst);
            let gone = item.request.lock().map(|r| r.abandoned()).unwrap_or(true);
            if !gone {
                batch.push(item);
            }
        }
        if !batch.is_empty() {
            tokio::spawn(answer(batch, registry.clone(), settings.model.clone()));
        }
    }
}

/// Makes one upstream call for `batch` and hands each input's vector to its request.
async fn answer(batch: Vec<Item>, registry: Registry, model: String) {
    let texts: Vec<String> = batch.iter().map(|i| i.text.clone()).collect();
    let result = match call(&registry, &model, texts).await {
        Ok((vectors, _)) if vectors.len() != batch.len() => {
            tracing::warn!(asked = batch.len(), got = vectors.len(), "the upstream answered a different number of embeddings");
            Err(ChatError::code(ErrorCode::UpstreamError))
        }
        other => other,
    };
    match result {
        Ok((vectors, tokens)) => {
            // Each input's share of the tokens by its length, rounded so that the shares
            // add up to the call's count exactly.
            let total = batch.iter().map(|i| i.text.chars().count() as u64).sum::<u64>().max(1);
            let (mut before, mut given) = (0u64, 0u64);
            for (item, vector) in batch.iter().zip(vectors) {
                before += item.text.chars().count() as u64;
                let upto = tokens * before / total;
                if let Ok(mut request) = item.request.lock() {
                    request.fill(item.slot, vector, upto - given);
                }
                given = upto;
            }
        }
        Err(error) => {
            for item in &batch {
                if let Ok(mut request) = item.request.lock() {
                    request.fail(error.clone());
                }
            }
        }
    }
}

/// The call itself, on the model's route: its provider, then its fallbacks while a
/// failure is worth one.
async fn call(registry: &Registry, model: &str, texts: Vec<String>) -> Result<(Vec<Vec<f64>>, u64), ChatError> {
    let route = registry.resolve(None, model).await?;
    let mut last = None;
    for target in &route.targets {
        let Some(upstream) = registry.upstream(&target.provider) else { continue };
        match upstream.provider.embed(&target.model, texts.clone()).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!(provider = %target.provider, error = %e, "embedding call failed");
                upstream.provider.record_error(&e);
                let more = e.worth_a_fallback();
                last = Some(e);
                if !more {
                    break;
                }
            }
        }
    }
    Err(last.map_or_else(|| ChatError::code(ErrorCode::UpstreamError), |e| e.to_chat_error()))
}

/// The part of an embeddings response read: the vectors as the upstream wrote their
/// numbers (as f64, so every wire prints the same digits), and the usage when given.
#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingData>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

#[derive(Deserialize)]
struct EmbeddingData {
    index: usize,
    embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct EmbeddingUsage {
    #[serde(default)]
    prompt_tokens: u64,
}

impl Provider {
    /// One embeddings call: the vectors in input order, and the prompt tokens it used.
    pub async fn embed(&self, model: &str, texts: Vec<String>) -> Result<(Vec<Vec<f64>>, u64), UpstreamError> {
        let request = CreateEmbeddingRequest { model: model.to_owned(), input: EmbeddingInput::StringArray(texts), ..Default::default() };
        let response: EmbeddingResponse = tokio::time::timeout(self.first_token_timeout, self.client.embeddings().create_byot(request))
            .await
            .map_err(|_| UpstreamError::Silent)??;
        let mut data = response.data;
        data.sort_by_key(|e| e.index);
        Ok((data.into_iter().map(|e| e.embedding).collect(), response.usage.map_or(0, |u| u.prompt_tokens)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_sliding_second_holds_more_calls_than_the_rate() {
        let mut pace = Pace { starts: VecDeque::new(), per_second: 3 };
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..9 {
            pace.next().await;
            starts.push(Instant::now() - begin);
        }
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 1000, 1000, 1000, 2000, 2000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_after_a_quiet_second_starts_at_once() {
        let mut pace = Pace { starts: VecDeque::new(), per_second: 1 };
        pace.next().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = Instant::now();
        pace.next().await;
        assert_eq!(Instant::now(), before);
    }
}
