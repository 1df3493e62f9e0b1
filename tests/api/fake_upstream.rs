//! A scripted OpenAI-compatible upstream over real HTTP/SSE, for fault tests:
//! each request takes the next [`Reply`] of the script (a normal answer once it is empty).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, body::Body, extract::State, http::StatusCode, response::Response, routing::post};
use bytes::Bytes;
use serde_json::{Value, json};

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Streams these tokens, a finish reason, usage and `[DONE]`.
    Answer(Vec<&'static str>),
    /// Answers with this status and an OpenAI-style error body.
    Status(u16, &'static str),
    /// Streams these tokens, then breaks the connection.
    CutAfter(Vec<&'static str>),
    /// Streams these tokens, then sends nothing more while keeping the connection open.
    SilentAfter(Vec<&'static str>),
    /// Streams these tokens and ends cleanly, but with no finish reason and no `[DONE]`.
    EndWithoutFinish(Vec<&'static str>),
    /// The whole answer (tokens, finish reason, usage, `[DONE]`) in one write.
    Burst(Vec<String>),
    /// The answer in writes of this many tokens each, 5 ms apart.
    Bursts(Vec<String>, usize),
    /// A whole answer, as [`Reply::Answer`], with this many milliseconds before each token.
    Slow(Vec<String>, u64),
}

/// The default answer's tokens.
pub const TOKENS: [&str; 4] = ["All ", "good ", "here", "."];

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Reply>>>,
    hits: Arc<Mutex<usize>>,
}

impl FakeUpstream {
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let fake = Self { addr: listener.local_addr().unwrap(), script: Arc::new(Mutex::new(script.into())), hits: Arc::default() };
        let app = Router::new().route("/v1/chat/completions", post(reply)).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many chat requests arrived.
    pub fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> Bytes {
    let delta = content.map(|c| json!({ "content": c })).unwrap_or(json!({}));
    let body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn reply(State(fake): State<FakeUpstream>, Json(_body): Json<Value>) -> Response {
    *fake.hits.lock().unwrap() += 1;
    let next = fake.script.lock().unwrap().pop_front().unwrap_or(Reply::Answer(TOKENS.to_vec()));
    let gap = match &next {
        Reply::Slow(_, ms) => Duration::from_millis(*ms),
        _ => Duration::from_millis(5),
    };
    let sse = |frames: Vec<Result<Bytes, std::io::Error>>, then: Tail| {
        let stream = async_stream::stream! {
            for f in frames {
                tokio::time::sleep(gap).await;
                yield f;
            }
            match then {
                Tail::Hang => std::future::pending::<()>().await,
                Tail::Break => {
                    // Let the last token reach the client before the connection breaks.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    yield Err(std::io::Error::other("connection cut"));
                }
                Tail::End => {}
            }
        };
        Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
    };
    let tokens = |t: &[&str]| t.iter().map(|t| Ok(chunk(Some(t), None))).collect::<Vec<_>>();
    let answer = |t: &[&str]| {
        let mut frames = tokens(t);
        frames.push(Ok(chunk(None, Some("stop"))));
        let usage = json!({ "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4", "choices": [],
            "usage": { "prompt_tokens": 7, "completion_tokens": t.len(), "total_tokens": 7 + t.len() } });
        frames.push(Ok(Bytes::from(format!("data: {usage}\n\ndata: [DONE]\n\n"))));
        frames
    };
    match next {
        Reply::Answer(t) => sse(answer(&t), Tail::End),
        Reply::Burst(t) => {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            let body: Vec<u8> = answer(&t).into_iter().flat_map(|f| f.unwrap().to_vec()).collect();
            sse(vec![Ok(Bytes::from(body))], Tail::End)
        }
        Reply::Bursts(t, n) => {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            let frames: Vec<Bytes> = answer(&t).into_iter().map(Result::unwrap).collect();
            let writes = frames.chunks(n).map(|group| Ok(Bytes::from(group.concat()))).collect();
            sse(writes, Tail::End)
        }
        Reply::Slow(t, _) => {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            sse(answer(&t), Tail::End)
        }
        Reply::Status(status, code) => {
            let error = json!({ "error": { "message": "scripted failure", "type": "server_error", "param": null, "code": code } });
            Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(error.to_string()))
                .unwrap()
        }
        Reply::CutAfter(t) => sse(tokens(&t), Tail::Break),
        Reply::SilentAfter(t) => sse(tokens(&t), Tail::Hang),
        Reply::EndWithoutFinish(t) => sse(tokens(&t), Tail::End),
    }
}

enum Tail {
    End,
    Break,
    Hang,
}
