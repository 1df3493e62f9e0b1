//! OpenAI-compatible providers over real HTTP/SSE on loopback, each with its own quirks,
//! as the real ones have them. The model name scripts a failure: `fail-503`,
//! `cut-after-2` (two tokens, then the connection breaks), `error-mid` (two tokens, then
//! `data: {"error": ...}`), `no-finish` (ends with no finish reason); any other model
//! answers "Hi from <name>.".

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    response::Response,
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::{Value, json};

/// What sets a fake apart.
#[derive(Clone, Copy, Default)]
pub struct Quirks {
    /// Usage rides on the last content chunk, with its finish reason (Gemini).
    pub usage_on_last_content: bool,
    /// No usage at all, asked for or not.
    pub no_usage: bool,
    /// 422 with a non-OpenAI body when `stream_options` is sent (Mistral).
    pub refuse_stream_options: bool,
    /// `: PROCESSING` comment lines between events (OpenRouter).
    pub comments: bool,
    /// `reasoning` and `reasoning_content` deltas before the answer (vLLM, OpenRouter).
    pub reasoning: bool,
}

#[derive(Clone)]
pub struct QuirkyUpstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    quirks: Quirks,
    /// What `GET /v1/models` lists; `None` answers 404.
    models: Option<Vec<&'static str>>,
    requests: Arc<Mutex<Vec<Value>>>,
    model_lists: Arc<Mutex<usize>>,
}

impl QuirkyUpstream {
    pub async fn start(name: &'static str, quirks: Quirks, models: Option<Vec<&'static str>>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let fake =
            Self { addr: listener.local_addr().unwrap(), name, quirks, models, requests: Arc::default(), model_lists: Arc::default() };
        let app = Router::new().route("/v1/chat/completions", post(chat)).route("/v1/models", get(list_models)).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The chat request bodies received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// How many times `GET /v1/models` was asked.
    pub fn model_lists(&self) -> usize {
        *self.model_lists.lock().unwrap()
    }

    /// The answer this fake gives.
    pub fn answer(&self) -> String {
        format!("Hi from {}.", self.name)
    }
}

async fn list_models(State(fake): State<QuirkyUpstream>) -> Response {
    *fake.model_lists.lock().unwrap() += 1;
    match &fake.models {
        Some(models) => {
            let data: Vec<Value> = models.iter().map(|m| json!({ "id": m, "object": "model", "owned_by": fake.name })).collect();
            Response::new(Body::from(json!({ "object": "list", "data": data }).to_string()))
        }
        None => Response::builder().status(404).body(Body::from("no such route")).unwrap(),
    }
}

fn event(body: Value) -> Bytes {
    Bytes::from(format!("data: {body}\n\n"))
}

fn chunk(delta: Value, finish: Option<&str>, usage: Option<Value>) -> Value {
    let mut c = json!({ "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    c
}

async fn chat(State(fake): State<QuirkyUpstream>, Json(body): Json<Value>) -> Response {
    fake.requests.lock().unwrap().push(body.clone());
    let q = fake.quirks;
    if q.refuse_stream_options && body.get("stream_options").is_some() {
        let detail = json!({ "object": "error", "message": { "detail": [{ "type": "extra_forbidden", "loc": ["body", "stream_options"],
            "msg": "Extra inputs are not permitted" }] }, "type": "invalid_request_error", "param": null, "code": null });
        return Response::builder().status(422).header("content-type", "application/json").body(Body::from(detail.to_string())).unwrap();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model == "fail-503" {
        return Response::builder().status(503).body(Body::from("upstream overloaded")).unwrap();
    }
    let name = fake.name.to_owned();
    let tokens = ["Hi ".to_owned(), "from ".to_owned(), name, ".".to_owned()];
    let usage = json!({ "prompt_tokens": 11, "completion_tokens": tokens.len(), "total_tokens": 11 + tokens.len() });
    let asked_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
    let mut frames: Vec<Bytes> = Vec::new();
    let comment = || Bytes::from_static(b": OPENROUTER PROCESSING\n\n");
    if q.comments {
        frames.push(comment());
    }
    frames.push(event(chunk(json!({ "role": "assistant", "content": "" }), None, None)));
    if q.reasoning {
        frames.push(event(chunk(json!({ "reasoning": "Let me think. " }), None, None)));
        frames.push(event(chunk(json!({ "reasoning_content": "Still thinking. " }), None, None)));
    }
    let (shown, tail) = match model.as_str() {
        "cut-after-2" | "error-mid" => (2, model.as_str()),
        _ => (tokens.len(), model.as_str()),
    };
    for (i, t) in tokens.iter().take(shown).enumerate() {
        if q.comments {
            frames.push(comment());
        }
        let last = i + 1 == tokens.len();
        if last && q.usage_on_last_content && tail != "no-finish" {
            frames.push(event(chunk(json!({ "content": t }), Some("stop"), (!q.no_usage).then(|| usage.clone()))));
        } else {
            frames.push(event(chunk(json!({ "content": t }), None, None)));
        }
    }
    let mut cut = false;
    match tail {
        "cut-after-2" => cut = true,
        "error-mid" => frames.push(event(json!({ "error": { "message": "provider overloaded mid-answer", "code": 502 } }))),
        "no-finish" => {}
        // Groq: usage, when asked for, in `x_groq` on the chunk with the finish reason.
        "x-groq" => {
            let mut finish = chunk(json!({}), Some("stop"), None);
            if asked_usage {
                finish["x_groq"] = json!({ "id": "req_1", "usage": usage });
            }
            frames.push(event(finish));
            frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        _ => {
            if !q.usage_on_last_content {
                frames.push(event(chunk(json!({}), Some("stop"), None)));
                if asked_usage && !q.no_usage {
                    frames.push(event(
                        json!({ "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [], "usage": usage }),
                    ));
                }
            }
            frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    }
    let stream = async_stream::stream! {
        for f in frames {
            tokio::time::sleep(Duration::from_millis(3)).await;
            yield Ok::<_, std::io::Error>(f);
        }
        if cut {
            tokio::time::sleep(Duration::from_millis(50)).await;
            yield Err(std::io::Error::other("connection cut"));
        }
    };
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}
