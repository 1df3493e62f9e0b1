//! The one seam to the model: async-openai's streaming chat completions against
//! any OpenAI-compatible base URL (the built-in mock included).

use std::{future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use async_openai::middleware::{ReqwestService, retry::OpenAIRetryLayer};
use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
        ChatCompletionRequestUserMessage, ChatCompletionResponseStream, ChatCompletionStreamOptions, CreateChatCompletionRequest,
        FinishReason,
    },
};
use futures::StreamExt;
use tokio::time::Sleep;
use tracing::Instrument;

use crate::{
    chat::{ChatError, ErrorCode, HistoryMessage, Usage},
    metrics::Metrics,
};

/// A client for one upstream, cloned cheaply into every generation.
#[derive(Clone)]
pub struct Provider {
    client: Client<OpenAIConfig>,
    first_token_timeout: Duration,
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
}

impl UpstreamError {
    /// The client's view of the failure.
    pub fn to_chat_error(&self) -> ChatError {
        ChatError::code(match self {
            Self::InvalidModel(_) => ErrorCode::InvalidModel,
            Self::RateLimited(_) => ErrorCode::RateLimit,
            Self::Silent => ErrorCode::UpstreamTimeout,
            Self::Unavailable(_) | Self::Failed(_) => ErrorCode::UpstreamError,
        })
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
        let http = tower::ServiceBuilder::new().layer(OpenAIRetryLayer::new(0)).service(ReqwestService::new(reqwest::Client::new()));
        let client = Client::with_config(config).with_http_service(http);
        Self { client, first_token_timeout: timeouts.0, idle_timeout: timeouts.1, retry, errors: None }
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

    /// Opens the stream, retrying connect errors, 429 and 5xx with jittered backoff.
    pub async fn open(&self, call: ChatCall) -> Result<UpstreamStream, UpstreamError> {
        let mut attempt = 1;
        loop {
            match self.open_once(call.clone()).await {
                Err(e @ (UpstreamError::Unavailable(_) | UpstreamError::RateLimited(_))) if attempt < self.retry.attempts => {
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

    async fn open_once(&self, call: ChatCall) -> Result<UpstreamStream, UpstreamError> {
        let messages = call.messages.into_iter().map(to_request_message).collect();
        #[allow(deprecated)] // `max_tokens` is what every OpenAI-compatible server understands.
        let request = CreateChatCompletionRequest {
            model: call.model,
            messages,
            max_tokens: Some(call.max_tokens),
            temperature: Some(call.temperature),
            stream: Some(true),
            stream_options: Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None }),
            ..Default::default()
        };
        let opened = tokio::time::timeout(self.first_token_timeout, self.client.chat().create_stream(request))
            .await
            .map_err(|_| UpstreamError::Silent)??;
        let deadline = tokio::time::Instant::now() + self.first_token_timeout;
        Ok(UpstreamStream { inner: opened, idle_timeout: self.idle_timeout, deadline, timer: Box::pin(tokio::time::sleep_until(deadline)) })
    }
}

/// `delay` scaled by a random factor in 0.5..1.5, so failing clients do not retry in step.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.5))
}

fn to_request_message(m: HistoryMessage) -> ChatCompletionRequestMessage {
    match m.role.as_str() {
        "system" => ChatCompletionRequestSystemMessage::from(m.content).into(),
        "assistant" => ChatCompletionRequestAssistantMessage::from(m.content).into(),
        _ => ChatCompletionRequestUserMessage::from(m.content).into(),
    }
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
    inner: ChatCompletionResponseStream,
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
        let mut piece = Piece {
            usage: chunk.usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            }),
            ..Piece::default()
        };
        if let Some(choice) = chunk.choices.into_iter().next() {
            piece.delta = choice.delta.content.filter(|c| !c.is_empty());
            piece.finish_reason = choice.finish_reason.map(finish_reason_name);
        }
        if piece.delta.is_some() {
            self.deadline = tokio::time::Instant::now() + self.idle_timeout;
        }
        Ok(Some(piece))
    }
}

fn finish_reason_name(r: FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::FunctionCall => "function_call",
    }
    .to_owned()
}
