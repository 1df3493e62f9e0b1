//! A Socket.IO client connection over a plain WebSocket: handshake, events, heartbeats.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, Utf8Bytes, protocol::WebSocketConfig},
};

use crate::wire::{self, Packet};

/// Any failure of a connection, with a short category for the result counters.
#[derive(Debug)]
pub enum ClientError {
    /// TCP connect or WebSocket upgrade failed.
    Connect(String),
    /// The server refused the namespace connect (`44/ai,{"message":..}`).
    Refused(String),
    /// The server closed the connection or the socket failed.
    Closed(String),
    /// A packet that does not parse or is not what the protocol says comes next.
    Protocol(String),
    /// Nothing arrived in time.
    Timeout,
}

impl ClientError {
    /// A short name to count errors by.
    pub fn category(&self) -> String {
        match self {
            ClientError::Connect(_) => "connect".into(),
            ClientError::Refused(m) => format!("refused:{m}"),
            ClientError::Closed(_) => "closed".into(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Timeout => "timeout".into(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Refused(m) => write!(f, "connect refused: {m}"),
            ClientError::Closed(e) => write!(f, "connection closed: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::Timeout => write!(f, "timed out"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Where to connect: a server's address and the namespace.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub namespace: String,
    /// The Engine.IO path, `/socket.io/` by default.
    pub path: String,
}

impl Target {
    /// Reads `http://host:port`, `ws://host:port/...` or `host:port`. The path of the URL,
    /// if any, is ignored: the Engine.IO path is `path`.
    pub fn parse(url: &str, namespace: &str) -> Result<Self, String> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .map_err(|e| format!("bad url {url:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("bad url {url:?}: no address"))?;
        let namespace = if namespace.starts_with('/') { namespace.to_owned() } else { format!("/{namespace}") };
        Ok(Self { addr, namespace, path: "/socket.io/".into() })
    }

    fn ws_url(&self) -> String {
        format!("ws://{}{}?EIO=4&transport=websocket", self.addr, self.path)
    }
}

/// WebSocket settings for a client: small buffers, so ten thousand idle sockets stay cheap.
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// One Socket.IO connection to one namespace.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    namespace: String,
    /// The namespace socket id the server gave.
    pub sid: String,
}

impl Conn {
    /// Opens the WebSocket, reads the open packet and connects to the namespace with
    /// `auth` (for example `{"token": jwt}`).
    pub async fn connect(target: &Target, auth: &impl Serialize) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(target.addr).await.map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (ws, _) = client_async_with_config(target.ws_url(), tcp, Some(client_ws_config()))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let mut conn = Self { ws, namespace: target.namespace.clone(), sid: String::new() };
        let open = conn.next_text().await?;
        if !matches!(wire::parse(&open), Ok(Packet::Open(_))) {
            return Err(ClientError::Protocol(format!("expected the open packet, got {:.80}", open.as_str())));
        }
        conn.send_text(wire::connect_frame(&conn.namespace, auth)).await?;
        loop {
            let text = conn.next_text().await?;
            match wire::parse(&text).map_err(|e| ClientError::Protocol(e.to_string()))? {
                Packet::Ping => conn.send_text("3".into()).await?,
                Packet::Connect { nsp, data } if nsp == conn.namespace => {
                    conn.sid = serde_json::from_str::<serde_json::Value>(data)
                        .ok()
                        .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned))
                        .unwrap_or_default();
                    return Ok(conn);
                }
                Packet::ConnectError { data, .. } => {
                    let message = serde_json::from_str::<serde_json::Value>(data)
                        .ok()
                        .and_then(|v| v.get("message").and_then(|s| s.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| data.to_owned());
                    return Err(ClientError::Refused(message));
                }
                Packet::Close => {
                    return Err(ClientError::Closed("engine close during connect".into()));
                }
                _ => continue,
            }
        }
    }

    /// The namespace this connection is in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Sends `42/ai,["name",data]`.
    pub async fn emit(&mut self, name: &str, data: &impl Serialize) -> Result<(), ClientError> {
        let frame = wire::event_frame(&self.namespace, None, name, data);
        self.send_text(frame).await
    }

    /// Sends `42/ai,id["name",data]`, asking for an acknowledgement.
    pub async fn emit_with_ack(&mut self, id: u64, name: &str, data: &impl Serialize) -> Result<(), ClientError> {
        let frame = wire::event_frame(&self.namespace, Some(id), name, data);
        self.send_text(frame).await
    }

    /// The next Socket.IO message (engine type `4`), answering heartbeats on the way.
    /// Parse it with [`wire::parse`].
    pub async fn recv(&mut self) -> Result<Utf8Bytes, ClientError> {
        loop {
            let text = self.next_text().await?;
            match text.as_bytes().first() {
                Some(b'4') => return Ok(text),
                Some(b'2') => self.send_text("3".into()).await?,
                Some(b'1') => return Err(ClientError::Closed("engine close".into())),
                _ => continue,
            }
        }
    }

    /// [`Conn::recv`] with a time limit.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Utf8Bytes, ClientError> {
        tokio::time::timeout(limit, self.recv()).await.map_err(|_| ClientError::Timeout)?
    }

    /// Sends a close frame and waits briefly for the server's.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::Text(text.into())).await.map_err(|e| ClientError::Closed(e.to_string()))
    }

    async fn next_text(&mut self) -> Result<Utf8Bytes, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(frame.map(|f| f.reason.to_string()).unwrap_or_default()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                None => return Err(ClientError::Closed("end of stream".into())),
            }
        }
    }
}

impl Conn {
    /// Sends an Engine.IO text frame as it is (for attack-shaped traffic).
    pub async fn send_raw_text(&mut self, text: String) -> Result<(), ClientError> {
        self.send_text(text).await
    }

    /// Sends one binary WebSocket frame (a Socket.IO attachment).
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<(), ClientError> {
        self.ws.send(Message::Binary(data.into())).await.map_err(|e| ClientError::Closed(e.to_string()))
    }
}
