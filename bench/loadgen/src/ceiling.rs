//! The ceiling: a bare tokio-tungstenite server that pushes the same frames as the
//! gateway, with no Socket.IO library, no storage and no upstream.
//!
//! It speaks just enough of the framing for the load generator: the Engine.IO open
//! packet, the namespace connect (any auth is accepted), and on `chat:start` the
//! `chat:conversation` and `chat:user-message` frames, `maxTokens` stamped
//! `chat:message` frames paced by an interval like the mock's, and a `chat:end` with
//! `completionTokens`. What the load generator measures against it is what this
//! machine can deliver at all.

use std::{
    io,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    time::{Instant, Interval, MissedTickBehavior},
};
use tokio_tungstenite::{
    accept_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{
    sys,
    wire::{self, Packet},
};

/// How the ceiling answers.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Time between tokens of one answer (the mock's `MOCK_TOKEN_DELAY_MS`).
    pub token_delay: Duration,
    /// Delay before the first token (the mock's `MOCK_FIRST_TOKEN_DELAY_MS`).
    pub first_token_delay: Duration,
}

/// Binds with a large listen backlog, so a connect burst loses no SYNs.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts connections until the process ends.
pub async fn serve(listener: TcpListener, cfg: CeilingConfig) -> io::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, cfg).await;
        });
    }
}

static IDS: AtomicU64 = AtomicU64::new(1);

/// A UUID-shaped id, so frames are as long as the gateway's.
fn next_id() -> String {
    format!("00000000-0000-4000-8000-{:012x}", IDS.fetch_add(1, Ordering::Relaxed))
}

struct Generation {
    nsp: String,
    message_id: String,
    conversation_id: String,
    remaining: u64,
    total: u64,
    prompt_tokens: u64,
    seq: u64,
    content: String,
    /// The first token is due at once (no first-token delay): no timer round trip.
    due_now: bool,
    pace: Interval,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatMessage<'a> {
    content: &'a str,
    is_complete: bool,
    message_id: &'a str,
    conversation_id: &'a str,
    seq: u64,
    offset: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatEnd<'a> {
    message_id: &'a str,
    conversation_id: &'a str,
    total_tokens: u64,
    model: &'a str,
    finish_reason: &'a str,
    prompt_tokens: u64,
    completion_tokens: u64,
    content: &'a str,
}

async fn next_tick(generation: &mut Option<Generation>) {
    match generation {
        Some(g) if g.due_now => g.due_now = false,
        Some(g) => {
            g.pace.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn connection(tcp: TcpStream, cfg: CeilingConfig) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let _ = tcp.set_nodelay(true);
    let ws_config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut ws = accept_async_with_config(tcp, Some(ws_config)).await?;
    let sid = next_id();
    let open = format!("0{{\"sid\":\"{sid}\",\"upgrades\":[],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}}");
    ws.send(Message::Text(open.into())).await?;
    let mut generation: Option<Generation> = None;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                let out = handle(&text, &sid, &mut generation, &cfg);
                for frame in out {
                    ws.send(Message::Text(frame.into())).await?;
                }
            }
            () = next_tick(&mut generation) => {
                let Some(g) = generation.as_mut() else { continue };
                let token = format!("{} ", sys::now_micros());
                let offset = g.content.len();
                let frame = wire::event_frame(&g.nsp, None, "chat:message", &ChatMessage {
                    content: &token,
                    is_complete: false,
                    message_id: &g.message_id,
                    conversation_id: &g.conversation_id,
                    seq: g.seq,
                    offset,
                });
                g.content.push_str(&token);
                g.seq += 1;
                g.remaining -= 1;
                ws.send(Message::Text(frame.into())).await?;
                if g.remaining == 0 {
                    let end = wire::event_frame(&g.nsp, None, "chat:end", &ChatEnd {
                        message_id: &g.message_id,
                        conversation_id: &g.conversation_id,
                        total_tokens: g.prompt_tokens + g.total,
                        model: "gpt-4",
                        finish_reason: "stop",
                        prompt_tokens: g.prompt_tokens,
                        completion_tokens: g.total,
                        content: &g.content,
                    });
                    generation = None;
                    ws.send(Message::Text(end.into())).await?;
                }
            }
        }
    }
}

/// The frames to answer one client packet with.
fn handle(text: &str, sid: &str, generation: &mut Option<Generation>, cfg: &CeilingConfig) -> Vec<String> {
    let Ok(packet) = wire::parse(text) else {
        return Vec::new();
    };
    match packet {
        Packet::Ping => vec!["3".into()],
        Packet::Connect { nsp, .. } => {
            vec![wire::connect_frame(nsp, &serde_json::json!({ "sid": sid }))]
        }
        Packet::Event { nsp, ack, args } => {
            let Ok(mut parts) = serde_json::from_str::<Vec<Value>>(args) else {
                return Vec::new();
            };
            let name = parts.first().and_then(Value::as_str).unwrap_or_default().to_owned();
            let data = if parts.len() > 1 { parts.swap_remove(1) } else { Value::Null };
            match name.as_str() {
                "chat:start" => start(nsp, ack, &data, generation, cfg),
                "chat:stop" => {
                    let mut out = Vec::new();
                    let stopped = generation.is_some();
                    if let Some(g) = generation.take() {
                        out.push(wire::event_frame(
                            nsp,
                            None,
                            "chat:stopped",
                            &serde_json::json!({ "messageId": g.message_id, "conversationId": g.conversation_id, "content": g.content }),
                        ));
                    }
                    if let Some(id) = ack {
                        out.push(wire::ack_frame(nsp, id, &serde_json::json!({ "ok": true, "stopped": stopped })));
                    }
                    out
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

fn start(nsp: &str, ack: Option<u64>, data: &Value, generation: &mut Option<Generation>, cfg: &CeilingConfig) -> Vec<String> {
    let mut out = Vec::new();
    if generation.is_some() {
        let error = serde_json::json!({ "code": "BUSY", "message": "a generation is already running" });
        match ack {
            Some(id) => out.push(wire::ack_frame(nsp, id, &serde_json::json!({ "ok": false, "error": error }))),
            None => out.push(wire::event_frame(nsp, None, "chat:error", &error)),
        }
        return out;
    }
    let message = data.get("message").and_then(Value::as_str).unwrap_or_default();
    let tokens = data.get("maxTokens").and_then(Value::as_u64).unwrap_or(16).clamp(1, 100_000);
    let conversation_id = next_id();
    let user_message_id = next_id();
    let message_id = next_id();
    if let Some(id) = ack {
        out.push(wire::ack_frame(
            nsp,
            id,
            &serde_json::json!({ "ok": true, "conversationId": conversation_id, "userMessageId": user_message_id, "messageId": message_id }),
        ));
    }
    out.push(wire::event_frame(nsp, None, "chat:conversation", &serde_json::json!({ "conversationId": conversation_id })));
    out.push(wire::event_frame(
        nsp,
        None,
        "chat:user-message",
        &serde_json::json!({ "messageId": user_message_id, "content": message, "conversationId": conversation_id }),
    ));
    let period = cfg.token_delay.max(Duration::from_micros(1));
    // Like the mock: the first token after the first-token delay, then one per period.
    let due_now = cfg.first_token_delay.is_zero();
    let first = if due_now { period } else { cfg.first_token_delay };
    let mut pace = tokio::time::interval_at(Instant::now() + first, period);
    pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
    *generation = Some(Generation {
        nsp: nsp.to_owned(),
        message_id,
        conversation_id,
        remaining: tokens,
        total: tokens,
        prompt_tokens: message.split_whitespace().count() as u64,
        seq: 0,
        content: String::with_capacity(tokens as usize * 17),
        due_now,
        pace,
    });
    out
}
