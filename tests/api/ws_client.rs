//! A raw WebSocket JSON client (tokio-tungstenite) for the Void, canyon and WADI dialects.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame},
};

use crate::client::RECV_TIMEOUT;

/// A connected raw WebSocket.
pub struct Ws {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How the connection ended, or what the handshake got instead.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Ws {
    /// Connects to `path` (with its query), with these extra headers.
    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        for (name, value) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Self { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connect to {path}: {e}"),
        }
    }

    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::connect_with(addr, path, &[]).await.expect("the upgrade is accepted")
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next JSON message; panics on a close.
    pub async fn next(&mut self) -> Value {
        match self.next_or_end().await {
            Ok(v) => v,
            Err(ended) => panic!("expected a message, the connection ended: {ended:?}"),
        }
    }

    /// The next frame of any kind, pings included (tungstenite answers a ping itself, on
    /// the next read).
    pub async fn next_frame(&mut self) -> Message {
        match tokio::time::timeout(RECV_TIMEOUT, self.socket.next()).await.expect("a frame in time") {
            Some(Ok(message)) => message,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next text frame exactly as sent; panics on a close.
    pub async fn next_text(&mut self) -> String {
        loop {
            let received = tokio::time::timeout(RECV_TIMEOUT, self.socket.next()).await.expect("a frame in time");
            match received {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON message, or how the connection ended.
    pub async fn next_or_end(&mut self) -> Result<Value, Ended> {
        loop {
            let received = tokio::time::timeout(RECV_TIMEOUT, self.socket.next()).await.expect("a frame in time");
            match received {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("JSON text")),
                Some(Ok(Message::Close(frame))) => return Err(Ended::Closed(frame.map_or(1005, |f: CloseFrame| f.code.into()))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Reads until a message of `kind`; returns it and what came before.
    pub async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let message = self.next().await;
            if message["type"] == kind {
                return (message, before);
            }
            before.push(message);
        }
    }

    /// The close code the server ends with, skipping messages before it.
    pub async fn closed(&mut self) -> Ended {
        loop {
            if let Err(ended) = self.next_or_end().await {
                return ended;
            }
        }
    }

    /// Drops the TCP connection without a close handshake.
    pub fn drop_now(self) {
        drop(self);
    }
}
