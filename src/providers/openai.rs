//! The one seam to the model: async-openai's streaming chat completions against
//! any OpenAI-compatible base URL (the built-in mock included).

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::Duration,
};

use async_openai::{Client, config::OpenAIConfig, error::OpenAIError, types::stream::StreamResponse};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Sleep;
use tracing::Instrument;

use super::wire::{self, ChatRequest, Chunk, RequestMessage};
use crate::{
    chat::{ChatError, ErrorCode, HistoryMessage, Usage},
    metrics::Metrics,
};

/// A client for one upstream, cloned cheaply into every generation.
#[derive(Clone)]
pub struct Provider {
    pub(super) client: Client<OpenAIConfig>,
    /// Set once the provider refused `stream_options` (Mistral answers 422): never sent again.
    no_stream_options: Arc<AtomicBool>,
    pub(super) first_token_timeout: Duration,
    idle_timeout: Duration,
    retry: RetryPolicy,
    /// Where failed requests are counted, and the provider's name there.
    errors: Option<(Metrics, Arc<str>)>,
}

/// How failures before the first token are retried: connect errors, 429 and 5xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first backoff; each next one doubles, with ±50% jitter.
    pub base_delay: Duration,
}

/// One call's parameters, passed on exactly as the client gave them.
#[derive(Clone, Debug)]
pub struct ChatCall {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f32,
    /// System prompt(s), history and the new user message, in order.
    pub messages: Vec<HistoryMessage>,
}

/// Why the upstream did not give (all of) an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("model unknown to the upstream: {0}")]
    InvalidModel(String),
    #[error("upstream rate limit: {0}")]
    RateLimited(String),
    #[error("upstream went silent past its deadline")]
    Silent,
    /// Connect errors and 5xx: worth another attempt before the first token.
    #[error("upstream unreachable or failing: {0}")]
    Unavailable(String),
    #[error("upstream failed: {0}")]
    Failed(String),
    /// `data: {"error": ...}` inside the stream.
    #[error("upstream reported an error in the stream: {0}")]
    Reported(String),
}

impl UpstreamError {
    /// The client's view of the failure.
    pub fn to_chat_error(&self) -> ChatError {
        ChatError::code(match self {
            Self::InvalidModel(_) => ErrorCode::InvalidModel,
            Self::RateLimited(_) => ErrorCode::RateLimit,
            Self::Silent => ErrorCode::UpstreamTimeout,
            Self::Unavailable(_) | Self::Failed(_) | Self::Reported(_) => ErrorCode::UpstreamError,
        })
    }

    /// Whether another provider may be tried: the failure came before the first token and
    /// is the provider's (unreachable, 5xx, 429, silent, an error in place of an answer).
    pub fn worth_a_fallback(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::RateLimited(_) | Self::Silent | Self::Reported(_))
    }
}

impl From<OpenAIError> for UpstreamError {
    fn from(e: OpenAIError) -> Self {
        match &e {
            OpenAIError::ApiError(api) => {
                let status = api.status_code.as_u16();
                let code = api.api_error.code.as_deref().unwrap_or_default();
                if status == 404 || code == "model_not_found" {
                    Self::InvalidModel(e.to_string())
                } else if status == 429 && api.api_error.r#type.as_deref() != Some("insufficient_quota") {
                    Self::RateLimited(e.to_string())
                } else if api.status_code.is_server_error() {
                    Self::Unavailable(e.to_string())
                } else {
                    Self::Failed(e.to_string())
                }
            }
            OpenAIError::Reqwest(r) if r.is_connect() || r.is_timeout() => Self::Unavailable(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// One piece of a streamed answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Piece {
    pub delta: Option<String>,
    /// Reasoning text (`reasoning`, `reasoning_content`): not part of the answer, and not
    /// stored; it keeps the stream alive for the idle timeout.
    pub reasoning: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

impl Provider {
    /// A provider for `base_url` (ending in `/v1` for most servers).
    pub fn new(base_url: &str, api_key: &str, timeouts: (Duration, Duration), retry: RetryPolicy) -> Self {
        // reqwest is built without a default TLS crypto provider and panics without one.
        crate::install_crypto_provider();
        let config = OpenAIConfig::new().with_api_base(base_url).with_api_key(api_key);
        // Retries are ours (jittered, counted per generation), so async-openai's own layer is off.
        let http = reqwest::Client::new();
        let service = tower::service_fn(move |factory| wire::send(http.clone(), factory));
        let client = Client::with_config(config).with_http_service(service);
        let no_stream_options = Arc::default();
        Self { client, no_stream_options, first_token_timeout: timeouts.0, idle_timeout: timeouts.1, retry, errors: None }
    }

    /// Never sends `stream_options` (the `stream_options = false` switch).
    pub fn without_stream_options(self) -> Self {
        self.no_stream_options.store(true, Ordering::Relaxed);
        self
    }

    /// Counts this provider's failed requests in `metrics`, as `provider`.
    pub fn with_metrics(mut self, provider: &str, metrics: &Metrics) -> Self {
        self.errors = Some((metrics.clone(), provider.into()));
        self
    }

    /// Counts one failed request (an attempt that is retried counts too).
    pub fn record_error(&self, error: &UpstreamError) {
        if let Some((metrics, provider)) = &self.errors {
            metrics.upstream_error(provider, error.to_chat_error().code);
        }
    }

    /// Starts opening the stream in the background, so the model works on the answer
    /// while the caller does something else (stores the turn). Dropping the result
    /// aborts the request. It logs in the caller's span.
    pub fn start_open(&self, call: ChatCall) -> OpeningStream {
        let provider = self.clone();
        OpeningStream(tokio::spawn(async move { provider.open(call).await }.in_current_span()))
    }

    /// Opens the stream and reads it up to its first piece of text, retrying connect
    /// errors, 429, 5xx and an error in place of an answer, with jittered backoff. A
    /// provider refusing `stream_options` is asked again without, and remembered.
    pub async fn open(&self, call: ChatCall) -> Result<UpstreamStream, UpstreamError> {
        let mut attempt = 1;
        loop {
            let stream_options = !self.no_stream_options.load(Ordering::Relaxed);
            let result = match self.open_once(&call, stream_options).await {
                Err(Refusal::StreamOptions(e)) if stream_options => {
                    tracing::info!(error = %e, "the provider refused stream_options; asking again without, from now on");
                    self.no_stream_options.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(Refusal::StreamOptions(e)) => Err(UpstreamError::from(e)),
                Err(Refusal::Other(e)) => Err(e),
                Ok(opened) => Ok(opened),
            };
            match result {
                Err(e @ (UpstreamError::Unavailable(_) | UpstreamError::RateLimited(_) | UpstreamError::Reported(_)))
                    if attempt < self.retry.attempts =>
                {
                    self.record_error(&e);
                    let delay = jittered(self.retry.base_delay * 2u32.saturating_pow(attempt - 1));
                    tracing::info!(attempt, ?delay, error = %e, "upstream failed before the first token; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn open_once(&self, call: &ChatCall, stream_options: bool) -> Result<UpstreamStream, Refusal> {
        let request = ChatRequest {
            model: &call.model,
            messages: call.messages.iter().map(RequestMessage::of).collect(),
            max_tokens: call.max_tokens,
            temperature: call.temperature,
            stream: true,
            stream_options: stream_options.then(|| json!({ "include_usage": true })),
        };
        let deadline = tokio::time::Instant::now() + self.first_token_timeout;
        let opened = tokio::time::timeout_at(deadline, self.client.chat().create_stream_byot::<_, Chunk>(request))
            .await
            .map_err(|_| Refusal::Other(UpstreamError::Silent))?
            .map_err(|e| if stream_options && refuses_stream_options(&e) { Refusal::StreamOptions(e) } else { Refusal::Other(e.into()) })?;
        let mut stream = UpstreamStream {
            inner: opened,
            buffered: VecDeque::new(),
            idle_timeout: self.idle_timeout,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        };
        // Up to the first piece of text, a failure is one before the first token: worth
        // another attempt, or another provider.
        loop {
            let piece = stream.read().await.map_err(Refusal::Other)?;
            let last = piece.as_ref().is_none_or(|p| p.delta.is_some() || p.finish_reason.is_some());
            stream.buffered.push_back(piece);
            if last {
                return Ok(stream);
            }
        }
    }
}

/// Why one attempt failed: `stream_options` refused, or anything else.
enum Refusal {
    StreamOptions(OpenAIError),
    Other(UpstreamError),
}

/// A 422, or a 400 naming `stream_options`: the provider does not take the field.
fn refuses_stream_options(e: &OpenAIError) -> bool {
    match e {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            status == 422 || (status == 400 && api.api_error.message.contains("stream_options"))
        }
        _ => false,
    }
}

/// `delay` scaled by a random factor in 0.5..1.5, so failing clients do not retry in step.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.5))
}

/// A stream being opened by [`Provider::start_open`]. Dropped, it aborts the request
/// (or closes the stream, once open), so the upstream stops working on the answer.
pub struct OpeningStream(tokio::task::JoinHandle<Result<UpstreamStream, UpstreamError>>);

impl OpeningStream {
    /// Waits for the stream to be open. Cancel-safe.
    pub async fn opened(&mut self) -> Result<UpstreamStream, UpstreamError> {
        match (&mut self.0).await {
            Ok(opened) => opened,
            Err(e) => Err(UpstreamError::Failed(format!("opening the stream stopped: {e}"))),
        }
    }
}

impl Drop for OpeningStream {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open answer stream with its silence timeouts.
pub struct UpstreamStream {
    inner: StreamResponse<Chunk>,
    /// Pieces read while opening (up to the first text), given out first.
    buffered: VecDeque<Option<Piece>>,
    idle_timeout: Duration,
    /// When silence becomes a timeout: the first-token limit, then the idle limit after each
    /// piece of text. Kept here so a caller may drop and re-call [`Self::next`] freely.
    deadline: tokio::time::Instant,
    /// Fires at or before `deadline`. Moving a timer per token costs more than the token's
    /// own bookkeeping, so it is set once and, when it fires early, moved to the deadline.
    timer: Pin<Box<Sleep>>,
}

impl UpstreamStream {
    /// The next piece, `None` at the end of the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Piece>, UpstreamError> {
        match self.buffered.pop_front() {
            Some(piece) => Ok(piece),
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Result<Option<Piece>, UpstreamError> {
        let Self { inner, deadline, timer, .. } = self;
        let item = std::future::poll_fn(|cx| {
            if let Poll::Ready(item) = inner.poll_next_unpin(cx) {
                return Poll::Ready(Ok(item));
            }
            loop {
                std::task::ready!(timer.as_mut().poll(cx));
                if tokio::time::Instant::now() >= *deadline {
                    return Poll::Ready(Err(UpstreamError::Silent));
                }
                timer.as_mut().reset(*deadline);
            }
        })
        .await?;
        let Some(chunk) = item.transpose()? else {
            return Ok(None);
        };
        if let Some(message) = chunk.error_message() {
            return Err(UpstreamError::Reported(message));
        }
        let usage = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)).map(wire::UsageChunk::usage);
        let mut piece = Piece { usage, ..Piece::default() };
        if let Some(choice) = chunk.choices.into_iter().next() {
            let delta = choice.delta;
            piece.delta = delta.content.filter(|c| !c.is_empty());
            piece.reasoning = delta.reasoning.or(delta.reasoning_content).filter(|r| !r.is_empty());
            piece.finish_reason = choice.finish_reason.filter(|r| !r.is_empty());
        }
        if piece.finish_reason.as_deref() == Some("error") {
            return Err(UpstreamError::Reported("the stream finished with `error`".into()));
        }
        if piece.delta.is_some() || piece.reasoning.is_some() {
            self.deadline = tokio::time::Instant::now() + self.idle_timeout;
        }
        Ok(Some(piece))
    }
}
