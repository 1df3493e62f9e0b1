//! A minimal Socket.IO v5 / Engine.IO 4 client for the tests, over WebSocket
//! (tokio-tungstenite) or HTTP long-polling (reqwest), speaking the same text
//! packets socket.io-client sends.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

const NS: &str = "/ai";
/// How long a test waits for any one packet before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event { name: String, data: Value },
    Ack { id: u64, data: Value },
}

enum Transport {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Polling { http: reqwest::Client, url: String, queue: VecDeque<String> },
}

/// A connected socket, of `/ai` unless made with [`Client::websocket_to`].
pub struct Client {
    transport: Transport,
    ns: String,
    next_ack: u64,
    /// Events read while waiting for something else, in order.
    backlog: VecDeque<Incoming>,
    /// `chat:active` announcements, kept apart: they come on connect, not in a chat.
    active: VecDeque<Value>,
    /// `chat:title` announcements, kept apart: they come after an answer, not in it.
    titles: VecDeque<Value>,
}

/// How to present credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    pub auth: Option<Value>,
    pub bearer: Option<String>,
    pub query_token: Option<String>,
}

impl Credentials {
    pub fn token(token: &str) -> Self {
        Self { auth: Some(json!({ "token": token })), ..Default::default() }
    }
}

/// The server refused the namespace connect; holds its `message`.
#[derive(Debug)]
pub struct Refused(pub String);

impl Client {
    /// Connects over WebSocket only (socket.io-client `transports: ['websocket']`).
    pub async fn websocket(addr: SocketAddr, creds: Credentials) -> Result<Self, Refused> {
        Self::websocket_to(addr, NS, creds).await
    }

    /// Connects to namespace `ns` over WebSocket only.
    pub async fn websocket_to(addr: SocketAddr, ns: &str, creds: Credentials) -> Result<Self, Refused> {
        let mut url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        if let Some(t) = &creds.query_token {
            url.push_str(&format!("&token={t}"));
        }
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        if let Some(b) = &creds.bearer {
            request.headers_mut().insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        // A small receive window, as a phone on a slow link has: a burst backs up into the server.
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(64 * 1024).unwrap();
        let stream = tcp.connect(addr).await.expect("tcp connect");
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config))
            .await
            .expect("websocket handshake");
        let transport = Transport::Ws(Box::new(ws));
        let mut client =
            Self { transport, ns: ns.to_owned(), next_ack: 0, backlog: VecDeque::new(), active: VecDeque::new(), titles: VecDeque::new() };
        let open = client.recv_raw().await;
        assert!(open.starts_with('0'), "expected an Engine.IO open packet, got {open}");
        client.join_namespace(creds.auth).await?;
        Ok(client)
    }

    /// Connects over HTTP long-polling only.
    pub async fn polling(addr: SocketAddr, creds: Credentials) -> Result<Self, Refused> {
        let http = reqwest::Client::new();
        let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
        let body = http.get(&base).send().await.unwrap().text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
        let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());
        let transport = Transport::Polling { http, url, queue: VecDeque::new() };
        let mut client =
            Self { transport, ns: NS.to_owned(), next_ack: 0, backlog: VecDeque::new(), active: VecDeque::new(), titles: VecDeque::new() };
        client.join_namespace(creds.auth).await?;
        Ok(client)
    }

    async fn join_namespace(&mut self, auth: Option<Value>) -> Result<(), Refused> {
        let auth = auth.map(|a| a.to_string()).unwrap_or_default();
        let ns = self.ns.clone();
        self.send_raw(format!("0{ns},{auth}")).await;
        // The first packet on the namespace answers the connect: accepted or refused.
        let packet = self.recv_raw().await;
        if let Some(body) = packet.strip_prefix(&format!("0{ns},")) {
            assert!(serde_json::from_str::<Value>(body).unwrap()["sid"].is_string());
            return Ok(());
        }
        if let Some(body) = packet.strip_prefix(&format!("4{ns},")) {
            let err: Value = serde_json::from_str(body).unwrap();
            return Err(Refused(err["message"].as_str().unwrap_or_default().to_owned()));
        }
        panic!("unexpected packet while connecting: {packet}");
    }

    /// `socket.emit(event, data)`.
    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_raw(format!("2{},{}", self.ns, json!([event, data]))).await;
    }

    /// `socket.emit(event)` with no argument at all.
    pub async fn emit_bare(&mut self, event: &str) {
        self.send_raw(format!("2{},{}", self.ns, json!([event]))).await;
    }

    /// `socket.emit(event, data)` that may fail to go out (the server may close the
    /// connection while a large packet is still being sent): true when it went out.
    pub async fn try_emit(&mut self, event: &str, data: Value) -> bool {
        let Transport::Ws(ws) = &mut self.transport else { panic!("websocket only") };
        ws.send(Message::text(format!("42{},{}", self.ns, json!([event, data])))).await.is_ok()
    }

    /// Sends a raw Socket.IO packet (for malformed-input tests).
    pub async fn send_packet(&mut self, packet: String) {
        self.send_raw(packet).await;
    }

    /// `socket.emitWithAck(event, data)`: sends and waits for the ack, keeping other events.
    pub async fn emit_with_ack(&mut self, event: &str, data: Value) -> Value {
        self.emit_text_with_ack(&json!([event, data]).to_string()).await
    }

    /// Like [`Self::emit_with_ack`], with the event's JSON array written by the test
    /// (for JSON that `serde_json` would not write: lone surrogates, `1e400`).
    pub async fn emit_text_with_ack(&mut self, array: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_raw(format!("2{},{id}{array}", self.ns)).await;
        let mut held = Vec::new();
        let ack = loop {
            match self.recv_fresh().await {
                Incoming::Ack { id: got, data } if got == id => break data,
                other => held.push(other),
            }
        };
        // Held events came after those already waiting: arrival order is kept.
        self.backlog.extend(held);
        ack
    }

    /// The next event or ack, in arrival order.
    pub async fn next(&mut self) -> Incoming {
        match self.backlog.pop_front() {
            Some(e) => e,
            None => self.recv_fresh().await,
        }
    }

    /// The next event (acks are skipped), as `(name, data)`.
    pub async fn next_event(&mut self) -> (String, Value) {
        loop {
            if let Incoming::Event { name, data } = self.next().await {
                return (name, data);
            }
        }
    }

    /// Waits for the named event, returning it and the events before it.
    pub async fn until(&mut self, wanted: &str) -> (Value, Vec<(String, Value)>) {
        let mut before = Vec::new();
        loop {
            let (name, data) = self.next_event().await;
            if name == wanted {
                return (data, before);
            }
            before.push((name, data));
        }
    }

    /// True when nothing arrives within `wait`.
    pub async fn is_quiet_for(&mut self, wait: Duration) -> bool {
        if !self.backlog.is_empty() {
            return false;
        }
        match tokio::time::timeout(wait, self.recv_fresh()).await {
            Ok(e) => {
                self.backlog.push_back(e);
                false
            }
            Err(_) => true,
        }
    }

    /// True when the server closes the connection within `wait` (anything else read is dropped).
    pub async fn wait_closed(&mut self, wait: Duration) -> bool {
        let Transport::Ws(ws) = &mut self.transport else { panic!("websocket only") };
        let closed = async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(wait, closed).await.is_ok()
    }

    /// Sends the event array `array` (any text) asking for an ack, and waits for that ack
    /// (`Some`) or for the server to close the connection (`None`); other packets are
    /// dropped. Panics when neither comes within [`RECV_TIMEOUT`]: input left unanswered.
    pub async fn ack_or_close(&mut self, array: &str) -> Option<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let Transport::Ws(ws) = &mut self.transport else { panic!("websocket only") };
        if ws.send(Message::text(format!("42{NS},{id}{array}"))).await.is_err() {
            return None;
        }
        let answer = async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        let _ = ws.send(Message::text("3")).await;
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Some(Incoming::Ack { id: got, data }) = t.strip_prefix('4').and_then(|p| parse(p, NS))
                            && got == id
                        {
                            return Some(data);
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, answer).await.unwrap_or_else(|_| panic!("no ack and no close for {array}"))
    }

    /// True when the server disconnects this socket from the namespace (`socket.disconnect()`,
    /// the Socket.IO DISCONNECT packet) within `wait`; everything read before is dropped.
    pub async fn wait_disconnected(&mut self, wait: Duration) -> bool {
        let disconnect = format!("1{NS},");
        tokio::time::timeout(wait, async { while self.recv_raw_inner().await != disconnect {} }).await.is_ok()
    }

    /// Closes the transport abruptly.
    pub async fn close(self) {
        if let Transport::Ws(mut ws) = self.transport {
            let _ = ws.as_mut().close(None).await;
        }
    }

    async fn recv_fresh(&mut self) -> Incoming {
        loop {
            let packet = self.recv_raw().await;
            match parse(&packet, &self.ns) {
                Some(Incoming::Event { name, data }) if name == "chat:active" => self.active.push_back(data),
                Some(Incoming::Event { name, data }) if name == "chat:title" => self.titles.push_back(data),
                Some(parsed) => return parsed,
                None => {}
            }
        }
    }

    /// The next `chat:title` announcement (events read meanwhile are kept, in order).
    pub async fn title(&mut self) -> Value {
        self.apart("chat:title").await
    }

    /// The `chat:title` announcements read so far and not yet taken.
    pub fn titles_seen(&mut self) -> Vec<Value> {
        self.titles.drain(..).collect()
    }

    /// The next `chat:active` announcement (each connect sends one).
    pub async fn active(&mut self) -> Value {
        self.apart("chat:active").await
    }

    /// The next `wanted` of the events kept apart (`chat:active`, `chat:title`); the
    /// others read meanwhile are kept where they belong.
    async fn apart(&mut self, wanted: &str) -> Value {
        loop {
            let queue = if wanted == "chat:title" { &mut self.titles } else { &mut self.active };
            if let Some(data) = queue.pop_front() {
                return data;
            }
            let packet = self.recv_raw().await;
            match parse(&packet, &self.ns) {
                Some(Incoming::Event { name, data }) if name == wanted => return data,
                Some(Incoming::Event { name, data }) if name == "chat:active" => self.active.push_back(data),
                Some(Incoming::Event { name, data }) if name == "chat:title" => self.titles.push_back(data),
                Some(other) => self.backlog.push_back(other),
                None => {}
            }
        }
    }

    async fn send_raw(&mut self, packet: String) {
        match &mut self.transport {
            Transport::Ws(ws) => ws.send(Message::text(format!("4{packet}"))).await.expect("ws send"),
            Transport::Polling { http, url, .. } => {
                let res = http.post(url.as_str()).body(format!("4{packet}")).send().await.expect("polling post");
                assert!(res.status().is_success(), "polling post: {}", res.status());
            }
        }
    }

    /// The next Socket.IO packet (Engine.IO framing removed), answering pings on the way.
    async fn recv_raw(&mut self) -> String {
        tokio::time::timeout(RECV_TIMEOUT, self.recv_raw_inner()).await.expect("timed out waiting for the server")
    }

    async fn recv_raw_inner(&mut self) -> String {
        loop {
            let frame = match &mut self.transport {
                Transport::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(_)) => continue,
                    other => panic!("websocket ended: {other:?}"),
                },
                Transport::Polling { http, url, queue } => {
                    if queue.is_empty() {
                        let body = http.get(url.as_str()).send().await.expect("poll").text().await.expect("poll body");
                        queue.extend(body.split('\u{1e}').map(str::to_owned));
                    }
                    match queue.pop_front() {
                        Some(f) => f,
                        None => continue,
                    }
                }
            };
            if frame == "2" {
                self.send_engine("3").await;
                continue;
            }
            if let Some(rest) = frame.strip_prefix('4') {
                return rest.to_owned();
            }
            if frame.starts_with('0') {
                return frame;
            }
        }
    }

    async fn send_engine(&mut self, frame: &str) {
        match &mut self.transport {
            Transport::Ws(ws) => {
                let _ = ws.send(Message::text(frame.to_owned())).await;
            }
            Transport::Polling { http, url, .. } => {
                let _ = http.post(url.as_str()).body(frame.to_owned()).send().await;
            }
        }
    }
}

/// Parses `2/ai,["name",data]` and `3/ai,<id>[data]`. An event of several arguments
/// (the admin namespace's) has them all, as an array, for its `data`.
fn parse(packet: &str, ns: &str) -> Option<Incoming> {
    let kind = packet.chars().next()?;
    let rest = packet[1..].strip_prefix(&format!("{ns},"))?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let (id, body) = rest.split_at(digits);
    let args: Vec<Value> = serde_json::from_str(body).ok()?;
    match kind {
        '2' => {
            let mut args = args.into_iter();
            let name = args.next()?.as_str()?.to_owned();
            let mut rest: Vec<Value> = args.collect();
            let data = if rest.len() > 1 { Value::Array(rest) } else { rest.pop().unwrap_or(Value::Null) };
            Some(Incoming::Event { name, data })
        }
        '3' => Some(Incoming::Ack { id: id.parse().ok()?, data: args.into_iter().next().unwrap_or(Value::Null) }),
        _ => None,
    }
}
