//! A fake OpenAI Realtime upstream: a tokio-tungstenite server on loopback that records
//! every connection's request and text frames, answers in the GA shape (items, audio
//! buffer, a response of audio and transcript deltas with usage) and can be told to fail.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
};

/// The assistant's spoken transcript, in its deltas.
pub const SPOKEN: [&str; 2] = ["Hello", " there, friend."];
/// What the fake's transcription of the user's audio says.
pub const HEARD: &str = "What is the weather like?";
/// The usage every response reports.
pub const INPUT_TOKENS: u64 = 40;
pub const OUTPUT_TOKENS: u64 = 25;

/// How the fake behaves for the connections after it is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Refuses the upgrade with this status.
    Refuse(u16),
    /// On `response.create`: `response.created`, one transcript delta, then the TCP
    /// connection breaks.
    DropMidResponse,
    /// On `response.create`: `response.created`, one transcript delta, then nothing.
    SilentMidResponse,
}

/// What the fake saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A connection: its path with query, its `Authorization` header and whether an
    /// `OpenAI-Beta` header came.
    Connected { path: String, authorization: Option<String>, beta: bool },
    /// A text frame exactly as received.
    Text(String),
    /// The connection ended (a close frame or the end of the stream).
    Closed,
}

pub struct FakeRealtime {
    pub addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    mode: Arc<Mutex<Mode>>,
    /// Raw text frames to send on the current connection.
    push: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
}

impl FakeRealtime {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let push = Arc::new(Mutex::new(None));
        let (m, p) = (mode.clone(), push.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone(), *m.lock().unwrap(), p.clone()));
            }
        });
        Self { addr, seen, mode, push }
    }

    /// The URL for `OPENAI_REALTIME_URL`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The next thing the fake saw.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(crate::client::RECV_TIMEOUT, self.seen.recv())
            .await
            .expect("the fake saw something in time")
            .expect("fake running")
    }

    /// The next text frame, as received.
    pub async fn next_text(&mut self) -> String {
        match self.next().await {
            Seen::Text(text) => text,
            other => panic!("expected a text frame upstream, got {other:?}"),
        }
    }

    /// The next text frame, as JSON.
    pub async fn next_event(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).unwrap()
    }

    /// Sends this raw text to the client's session, as the upstream's event.
    pub fn send_raw(&self, text: &str) {
        self.push.lock().unwrap().as_ref().expect("a connection").send(text.to_owned()).unwrap();
    }
}

/// One upstream connection, as the mode at its accept says.
#[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
async fn serve(
    stream: tokio::net::TcpStream,
    seen: mpsc::UnboundedSender<Seen>,
    mode: Mode,
    push: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
) {
    let record = seen.clone();
    let callback = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let _ = record.send(Seen::Connected { path, authorization: header("authorization"), beta: header("openai-beta").is_some() });
        if let Mode::Refuse(status) = mode {
            let mut refused = ErrorResponse::new(Some(json!({ "error": { "message": "refused by the fake" } }).to_string()));
            *refused.status_mut() = StatusCode::from_u16(status).unwrap();
            return Err(refused);
        }
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let (tx, mut pushed) = mpsc::unbounded_channel();
    *push.lock().unwrap() = Some(tx);
    let send = |event: Value| Message::Text(event.to_string().into());
    let _ = socket.send(send(json!({ "type": "session.created", "event_id": "event_1", "session": { "type": "realtime" } }))).await;
    let mut responses = 0;
    loop {
        let received = tokio::select! {
            r = socket.next() => r,
            Some(text) = pushed.recv() => {
                let _ = socket.send(Message::Text(text.into())).await;
                continue;
            }
        };
        let text = match received {
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let _ = seen.send(Seen::Text(text.clone()));
        let event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut replies = Vec::new();
        match event["type"].as_str().unwrap_or_default() {
            "session.update" => replies.push(json!({ "type": "session.updated", "session": event["session"] })),
            "conversation.item.create" => {
                let item = json!({ "id": "item_user", "type": "message", "role": "user", "content": event["item"]["content"] });
                replies.push(json!({ "type": "conversation.item.added", "item": item }));
                replies.push(json!({ "type": "conversation.item.done", "item": item }));
            }
            "input_audio_buffer.commit" => {
                replies.push(json!({ "type": "input_audio_buffer.committed", "item_id": "item_audio" }));
                replies.push(json!({ "type": "conversation.item.input_audio_transcription.completed", "item_id": "item_audio", "content_index": 0, "transcript": HEARD }));
            }
            "input_audio_buffer.clear" => replies.push(json!({ "type": "input_audio_buffer.cleared" })),
            "response.create" => {
                responses += 1;
                let id = format!("resp_{responses}");
                replies.push(json!({ "type": "response.created", "response": { "id": id, "status": "in_progress" } }));
                replies.push(json!({ "type": "response.output_audio.delta", "response_id": id, "item_id": "item_a", "delta": "AAABAAIA" }));
                replies.push(
                    json!({ "type": "response.output_audio_transcript.delta", "response_id": id, "item_id": "item_a", "delta": SPOKEN[0] }),
                );
                if matches!(mode, Mode::DropMidResponse | Mode::SilentMidResponse) {
                    for reply in replies {
                        let _ = socket.send(send(reply)).await;
                    }
                    if mode == Mode::DropMidResponse {
                        let _ = seen.send(Seen::Closed);
                        return;
                    }
                    continue;
                }
                replies.push(
                    json!({ "type": "response.output_audio_transcript.delta", "response_id": id, "item_id": "item_a", "delta": SPOKEN[1] }),
                );
                replies.push(json!({ "type": "response.output_audio_transcript.done", "response_id": id, "item_id": "item_a", "transcript": SPOKEN.concat() }));
                replies.push(json!({ "type": "response.output_audio.done", "response_id": id, "item_id": "item_a" }));
                replies.push(json!({ "type": "response.done", "response": {
                    "id": id, "status": "completed",
                    "output": [{ "id": "item_a", "type": "message", "role": "assistant", "content": [{ "type": "output_audio", "transcript": SPOKEN.concat() }] }],
                    "usage": {
                        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS, "input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                        "input_token_details": { "text_tokens": 30, "audio_tokens": 10 },
                        "output_token_details": { "text_tokens": 5, "audio_tokens": 20 }
                    }
                } }));
            }
            _ => {}
        }
        for reply in replies {
            let _ = socket.send(send(reply)).await;
        }
    }
    let _ = seen.send(Seen::Closed);
}
