//! Clients that hold connections without using them: silent, one header byte at a
//! time, too many from one address, binary attachments the protocol never uses, and
//! readers that stop reading while the server is told to stop. Each is cut within a
//! bounded time, and real chats go on meanwhile.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    helpers::*,
};

/// How long any test here waits for the server to act before it fails.
const BOUND: Duration = Duration::from_secs(5);

/// Short deadlines, so the attackers are cut quickly.
const SHORT: [(&str, &str); 2] = [("HEADER_READ_TIMEOUT_MS", "300"), ("HTTP_IDLE_TIMEOUT_MS", "300")];

/// A plain TCP connection (no request sent), or `None` if the connect fails.
async fn raw(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect(addr).await.ok()
}

/// Reads (and drops) whatever comes until the server closes the connection; true when
/// it does so within `wait`.
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, closed).await.is_ok()
}

/// Starts a request and then sends one more header byte every `every`, never ending
/// the head; returns how long the server kept the connection (`None`: longer than `BOUND`).
async fn trickle_headers(addr: SocketAddr, every: Duration) -> Option<Duration> {
    let mut tcp = raw(addr).await?;
    let started = Instant::now();
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ").await.ok()?;
    let mut buf = [0u8; 256];
    while started.elapsed() < BOUND {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(every) => {
                if tcp.write_all(b"a").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

/// `GET /health` on a connection of its own; its status line, or `None` when refused.
async fn health(addr: SocketAddr) -> Option<String> {
    let mut tcp = raw(addr).await?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, tcp.read_to_end(&mut answer)).await.ok()?.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().map(str::to_owned)
}

/// `/health` answers 200 within `BOUND` (a freed slot is seen once the server reads the close).
async fn health_comes_back(addr: SocketAddr) -> bool {
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if health(addr).await.is_some_and(|status| status.contains(" 200 ")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_client_sending_one_header_byte_at_a_time_is_cut_at_the_header_deadline() {
    let app = spawn_app_with(&SHORT).await;
    let kept = trickle_headers(app.addr, Duration::from_millis(100)).await;
    assert!(kept.is_some_and(|d| d < Duration::from_secs(2)), "kept for {kept:?}");
    assert_eq!(health(app.addr).await.as_deref(), Some("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_connection_that_never_sends_anything_is_closed() {
    let app = spawn_app_with(&SHORT).await;
    let mut silent = raw(app.addr).await.expect("connect");
    assert!(closed_within(&mut silent, BOUND).await, "a silent connection stays open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(&[("HEADER_READ_TIMEOUT_MS", "10000"), ("HTTP_IDLE_TIMEOUT_MS", "300")]).await;
    let mut tcp = raw(app.addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request sent");
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(closed_within(&mut tcp, BOUND).await, "an idle keep-alive connection stays open");
}

#[tokio::test]
async fn one_address_gets_max_connections_per_ip_and_a_freed_place_is_given_again() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS_PER_IP", "5"), ("HEADER_READ_TIMEOUT_MS", "30000")]).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(raw(app.addr).await.expect("connect"));
    }
    let mut sixth = raw(app.addr).await.expect("the kernel accepts it");
    assert!(closed_within(&mut sixth, Duration::from_secs(2)).await, "the 6th connection from one address is kept");
    let refused = health(app.addr).await;
    assert!(!refused.as_deref().is_some_and(|s| s.contains(" 200 ")), "over the cap, /health is refused too: {refused:?}");
    // Held connections stay usable; one given back makes room for a new one.
    assert!(held[0].write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.is_ok());
    drop(held.pop());
    assert!(health_comes_back(app.addr).await, "a freed place is not given again");
}

#[tokio::test]
async fn max_connections_caps_all_clients_together() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS", "3"), ("HEADER_READ_TIMEOUT_MS", "30000")]).await;
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| raw(app.addr))).await;
    let mut fourth = raw(app.addr).await.expect("the kernel accepts it");
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await, "the connection over MAX_CONNECTIONS is kept");
    drop(held);
    assert!(health_comes_back(app.addr).await);
}

#[tokio::test]
async fn websocket_chats_outlive_the_header_and_idle_deadlines() {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
    let app = spawn_app_with(&[SHORT[0], SHORT[1], ("MOCK_RESPONSE", long), ("MOCK_TOKEN_DELAY_MS", "60")]).await;
    let mut client = app.client(&user()).await;
    // Idle for longer than both deadlines before the chat, then a chat that lasts about a second.
    assert!(client.is_quiet_for(Duration::from_millis(800)).await);
    let started = Instant::now();
    client.emit("chat:start", json!({ "message": "count" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!((answer.final_name.as_str(), answer.text().as_str()), ("chat:end", long));
    assert!(started.elapsed() > Duration::from_millis(600), "the chat outlasted the deadlines");
}

#[tokio::test]
async fn a_packet_announcing_binary_attachments_closes_its_socket_and_others_chat_on() {
    let app = spawn_app().await;
    let mut attacker = app.client(&user()).await;
    attacker.send_packet(r#"55000-/ai,["chat:start",{"_placeholder":true,"num":0}]"#.to_owned()).await;
    assert!(attacker.wait_closed(Duration::from_secs(2)).await, "the socket waits for 5000 attachments");

    let mut client = app.client(&user()).await;
    client.emit("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
}

/// A TCP connection that reads at most 4 KiB before its window closes.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let tcp = TcpSocket::new_v4().expect("socket");
    let _ = tcp.set_recv_buffer_size(4096);
    tcp.connect(addr).await.expect("tcp connect")
}

#[tokio::test]
async fn sigterm_finishes_within_grace_and_close_timeout_while_clients_stop_reading() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    // Stamp mode: an answer of exactly `maxTokens` tokens of 17 bytes, 2 MB, as fast as it goes.
    let mut child = spawn_binary(
        &db_url,
        &[
            ("MOCK_STAMP", "true"),
            ("MOCK_TOKEN_DELAY_MS", "0"),
            ("SHUTDOWN_GRACE_SECONDS", "1"),
            ("MAX_TOKENS_LIMIT", "128000"),
            ("MODEL_CONTEXT_TOKENS", "200000"),
        ],
    );
    let addr = child.addr;
    // A WebSocket whose client asks for a long answer and then never reads again.
    let mut ws = Client::websocket(addr, Credentials::token(&token(&user()))).await.expect("connect");
    ws.emit("chat:start", json!({ "message": "long", "maxTokens": 128_000 })).await;
    // The same over SSE, on a raw connection with a tiny window.
    let mut sse = small_window(addr).await;
    let body = json!({ "message": "long", "maxTokens": 128_000 }).to_string();
    let request = format!(
        "POST /v1/chat HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        token(&user()),
        body.len()
    );
    sse.write_all(request.as_bytes()).await.expect("request sent");
    // And a request head that never ends.
    let mut half = raw(addr).await.expect("connect");
    half.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").await.expect("half a request");
    // Each reader sees its answer begin, then stops reading.
    tokio::time::timeout(BOUND, ws.until("chat:message")).await.expect("the WebSocket answer starts");
    let mut head = [0u8; 12];
    tokio::time::timeout(BOUND, sse.read_exact(&mut head)).await.expect("the SSE answer starts").expect("read");
    assert_eq!(&head, b"HTTP/1.1 200");
    tokio::time::sleep(Duration::from_millis(500)).await; // the windows fill

    let killed = Command::new("kill").args(["-TERM", &child.process.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let signalled = Instant::now();
    let pid = child.process.id();
    let status = tokio::task::spawn_blocking(move || {
        while signalled.elapsed() < Duration::from_secs(30) {
            match child.process.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return None,
            }
        }
        None // `child` drops here and kills the server
    })
    .await
    .expect("waiter");
    println!("shutdown with readers that stopped reading took {:?} (pid {pid})", signalled.elapsed());
    let status = status.expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    drop((ws, sse, half));
}

#[tokio::test]
async fn under_a_low_open_file_limit_a_flood_of_idle_connections_is_refused_without_accept_errors() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    // `ulimit -n 128`, then the server, its per-address cap out of the way.
    let mut process = Command::new("sh")
        .args(["-c", "ulimit -n 128 && exec \"$0\" serve", env!("CARGO_BIN_EXE_chatwire")])
        .env_clear()
        .envs([("PORT", "0"), ("LOG_FORMAT", "json"), ("RUST_LOG", "info"), ("HOST", "127.0.0.1"), ("JWT_SECRET", SECRET)])
        .envs([("DATABASE_URL", db_url.as_str()), ("MAX_CONNECTIONS_PER_IP", "100000"), ("HEADER_READ_TIMEOUT_MS", "30000")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the chatwire binary starts");
    let lines = BufReader::new(process.stdout.take().expect("stdout")).lines();
    // A failing assertion still leaves no server running.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let process = Killed(process);
    let (tx, logs) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or_default());
        }
    });
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        let line = logs.recv_timeout(BOUND).expect("the server logs its address");
        if line["message"] == "chatwire listening" {
            break line["addr"].as_str().and_then(|a| a.parse().ok()).expect("an address");
        }
        seen.push(line);
    };
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Some(tcp) = raw(addr).await {
            held.push(tcp);
        }
    }
    // The last one is refused at once: the server stays below the limit instead of failing accept.
    let mut last = held.pop().expect("connections");
    assert!(closed_within(&mut last, Duration::from_secs(2)).await, "over the lowered MAX_CONNECTIONS, a connection is kept");
    drop(held);
    assert!(health_comes_back(addr).await, "/health answers again once the flood is gone");
    drop(process);
    seen.extend(logs.try_iter());
    let accept_errors = seen.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("accept error"))).count();
    assert_eq!(accept_errors, 0, "accept failed for lack of file descriptors");
    assert!(
        seen.iter().any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("MAX_CONNECTIONS is above the open-file limit"))),
        "the lowered cap is logged"
    );
}
