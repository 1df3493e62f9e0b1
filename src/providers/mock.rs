//! A built-in OpenAI-compatible model over real HTTP and SSE.
//!
//! It serves `POST /v1/chat/completions` (streaming), `POST /v1/embeddings` (the same
//! vector for the same text, always) and `GET /v1/models`. With no
//! upstream configured, chatwire starts one on loopback and points its ordinary
//! client at it, so demos, tests and benchmarks run async-openai's real code path.
//! `chatwire mock-upstream --port N` runs it alone. A title request (its system message
//! is [`title::INSTRUCTION`]) is answered with the question's first six words, quoted.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response, Sse, sse::Event},
    routing::{get, post},
    serve::ListenerExt,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{chat::title, config::MockConfig};

/// A running mock: its address and every request body it received.
#[derive(Clone)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    titles: Arc<Mutex<Vec<Value>>>,
}

impl MockUpstream {
    /// Serves the mock on `listener` in a background task.
    pub fn spawn(listener: TcpListener, config: MockConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (requests, titles) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let state = MockState { config: Arc::new(config), requests: requests.clone(), titles: titles.clone() };
        tokio::spawn(async move {
            // Without TCP_NODELAY the first token after the headers waits for a delayed ACK (~40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, router(state)).await {
                tracing::error!(error = %e, "mock upstream stopped");
            }
        });
        Ok(Self { addr, requests, titles })
    }

    /// Binds loopback on a free port and serves.
    pub async fn start(config: MockConfig) -> std::io::Result<Self> {
        Self::spawn(TcpListener::bind(("127.0.0.1", 0)).await?, config)
    }

    /// The base URL to give an OpenAI client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The JSON bodies of the chat requests received so far, title requests aside.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The JSON bodies of the title requests received so far.
    pub fn title_requests(&self) -> Vec<Value> {
        self.titles.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct MockState {
    config: Arc<MockConfig>,
    requests: Arc<Mutex<Vec<Value>>>,
    titles: Arc<Mutex<Vec<Value>>>,
}

/// The mock's count of a message's tokens: its text's words, a content part's too.
fn content_tokens(content: &Value) -> usize {
    match content {
        Value::String(text) => tokenize(text).len(),
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(|t| tokenize(t).len()).sum(),
        _ => 0,
    }
}

/// The question of a title request, if `body` is one.
fn title_question(body: &Value) -> Option<&str> {
    let messages = body.get("messages")?.as_array()?;
    if messages.first()?.get("content")?.as_str()? != title::INSTRUCTION {
        return None;
    }
    title::question_of(messages.get(1)?.get("content")?.as_str()?)
}

/// The mock's title for `question`: its first six words, quoted, and a newline.
fn mock_title(question: &str) -> String {
    format!("\"{}\"\n", question.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
}

/// The largest request the mock reads: room for 16 images of 5 MiB as data URLs.
const MAX_REQUEST_BYTES: usize = 128 << 20;

/// The mock's routes, also usable inside another router.
fn router(state: MockState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        // Requests with images as data URLs are larger than axum's default of 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "gpt-4", "object": "model", "owned_by": "chatwire-mock"}]}))
}

/// Dimensions of the mock's embeddings.
pub const EMBEDDING_DIMENSIONS: usize = 8;

/// The mock's vector for `text`: each dimension in -1..=1, from a hash of the text
/// (FNV-1a, seeded per dimension), so a test can tell whose vector it got.
pub fn embedding_of(text: &str) -> Vec<f32> {
    (0..EMBEDDING_DIMENSIONS as u64)
        .map(|dim| {
            let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ dim, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
            (hash % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

async fn embeddings(Json(body): Json<Value>) -> Response {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() {
        let error = json!({"error": {"message": "input must be a string or an array of strings", "type": "invalid_request_error", "param": "input", "code": null}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    let tokens: usize = inputs.iter().map(|i| tokenize(i).len()).sum();
    let data: Vec<Value> =
        inputs.iter().enumerate().map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding_of(text)})).collect();
    let model = body.get("model").cloned().unwrap_or_else(|| json!("mock-embedding"));
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response()
}

/// Splits text into tokens: each is a word plus the whitespace after it.
pub fn tokenize(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            if i > start && !text[start..i].trim().is_empty() {
                tokens.push(&text[start..i]);
                start = i;
            }
            in_space = false;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

/// Most tokens one stamped answer may have.
const MAX_STAMPED_TOKENS: usize = 100_000;

/// A token that says when it was written: microseconds since the Unix epoch and a space.
/// Clients on the same host subtract it from their read time to get delivery lag.
pub fn stamp_token() -> String {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    format!("{micros} ")
}

/// A `chat.completion.chunk` carrying one token, written directly: benchmarks share the
/// machine with the mock, so its per-token cost stays small.
fn content_chunk(created: u64, model: &str, token: &str) -> String {
    let (model, token) = (Value::from(model), Value::from(token));
    format!(
        r#"{{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":{created},"model":{model},"choices":[{{"index":0,"delta":{{"content":{token}}},"finish_reason":null}}]}}"#
    )
}

async fn chat_completions(State(state): State<MockState>, Json(body): Json<Value>) -> Response {
    let title = title_question(&body).map(mock_title);
    if let Ok(mut log) = if title.is_some() { state.titles.lock() } else { state.requests.lock() } {
        log.push(body.clone());
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("gpt-4").to_owned();
    if model.starts_with("unknown") {
        let error = json!({"error": {"message": format!("The model `{model}` does not exist"), "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
        return (StatusCode::NOT_FOUND, Json(error)).into_response();
    }
    let max_tokens = body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64).unwrap_or(u64::MAX);
    let prompt_tokens: usize =
        body.get("messages").and_then(Value::as_array).map(|ms| ms.iter().map(|m| content_tokens(&m["content"])).sum()).unwrap_or(0);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);

    let config = state.config.clone();
    // A title request is answered with its title, never stamped.
    let stamp = config.stamp && title.is_none();
    let response = title.unwrap_or_else(|| config.response.clone());
    let stream = async_stream::stream! {
        let all = tokenize(&response);
        let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
        // Stamp mode answers exactly `max_tokens` tokens (benchmarks set the length that way).
        let n = if stamp { limit.clamp(1, MAX_STAMPED_TOKENS) } else { all.len().min(limit) };
        let finish = if !stamp && n < all.len() { "length" } else { "stop" };
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let chunk = |delta: Value, finish: Value| json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if !config.first_token_delay.is_zero() {
            tokio::time::sleep(config.first_token_delay).await;
        }
        yield Ok::<_, Infallible>(Event::default().data(chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string()));
        // An interval keeps the configured rate, where a sleep per token would drift slower.
        let start = tokio::time::Instant::now();
        let mut pace = (!config.token_delay.is_zero())
            .then(|| tokio::time::interval_at(start + config.token_delay, config.token_delay));
        for i in 0..n {
            // The first token goes at once, each next one a delay later.
            if let (Some(pace), true) = (pace.as_mut(), i > 0) {
                pace.tick().await;
            }
            // `n` never passes the text's length outside stamp mode.
            let token = if stamp { stamp_token() } else { all.get(i).copied().unwrap_or_default().to_owned() };
            yield Ok(Event::default().data(content_chunk(created, &model, &token)));
        }
        yield Ok(Event::default().data(chunk(json!({}), json!(finish)).to_string()));
        if include_usage {
            let usage = json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n},
            });
            yield Ok(Event::default().data(usage.to_string()));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(stream).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{EMBEDDING_DIMENSIONS, content_chunk, embedding_of, mock_title, title_question, tokenize};
    use crate::chat::title;

    #[test]
    fn a_title_request_is_told_by_its_instruction_and_answered_with_the_questions_first_words() {
        let messages: Vec<Value> = title::request("one two three four five six seven", "an answer")
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let body = json!({ "model": "gpt-4", "messages": messages });
        assert_eq!(title_question(&body), Some("one two three four five six seven"));
        assert_eq!(title_question(&json!({ "messages": [{"role": "user", "content": "Question:\nhi"}] })), None);
        let said = mock_title("one two three four five six seven");
        assert_eq!(said, "\"one two three four five six\"\n");
        assert_eq!(title::clean(&said).as_deref(), Some("one two three four five six"));
    }

    #[test]
    fn the_mock_embedding_is_the_same_for_the_same_text_and_differs_between_texts() {
        let one = embedding_of("one");
        assert_eq!(one, embedding_of("one"));
        assert_ne!(one, embedding_of("two"));
        assert_eq!(one.len(), EMBEDDING_DIMENSIONS);
        assert!(one.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn a_content_chunk_is_the_json_a_provider_sends() {
        let chunk: Value = serde_json::from_str(&content_chunk(7, "gpt-4", "say \"hi\"\n")).expect("valid JSON");
        let expected = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4",
            "choices": [{"index": 0, "delta": {"content": "say \"hi\"\n"}, "finish_reason": null}],
        });
        assert_eq!(chunk, expected);
    }

    #[test]
    fn tokens_are_words_with_their_trailing_space() {
        assert_eq!(tokenize("Hello brave  new\nworld"), vec!["Hello ", "brave  ", "new\n", "world"]);
        assert_eq!(tokenize("  lead"), vec!["  lead"]);
        assert_eq!(tokenize(""), Vec::<&str>::new());
        assert_eq!(tokenize("end "), vec!["end "]);
    }
}
