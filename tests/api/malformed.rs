//! Thousands of malformed packets over real sockets: the server answers or drops
//! the offending connection, never panics, keeps serving, and does not grow.

use std::time::Duration;

use serde_json::json;

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    helpers::*,
};

/// The resident memory of process `pid`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// Events whose framing does not parse: socketioxide (like Node's Socket.IO) closes
/// the connection that sent them.
const BROKEN_FRAMES: [&str; 4] = [r#"2/ai,[]"#, r#"2/ai,[42]"#, r#"2/ai,[null,{}]"#, r#"2/ai,["chat:start",{"message":"#];

/// Well-framed events that carry nonsense for `/ai`: answered, and the socket stays.
fn bad_packets() -> Vec<String> {
    [
        r#"2/ai,["chat:start"]"#,
        r#"2/ai,["chat:start",null]"#,
        r#"2/ai,["chat:start",[1,2,3]]"#,
        r#"2/ai,["chat:start",{"message":{"nested":true}}]"#,
        r#"2/ai,["chat:start",{"message":"x","temperature":"hot"}]"#,
        r#"2/ai,["chat:start",{"message":"x","maxTokens":1e300}]"#,
        r#"2/ai,["chat:start",{"message":"x","conversationId":"../../etc"}]"#,
        r#"2/ai,["chat:start","just text"]"#,
        r#"2/ai,["chat:stop","x"]"#,
        r#"2/ai,["chat:stop",{"messageId":5}]"#,
        r#"2/ai,["chat:unknown",{"a":1}]"#,
        r#"2/ai,7["chat:start",{}]"#,
        r#"2/other,["chat:start",{"message":"wrong namespace"}]"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

// The server runs as a process of its own, so its memory is measured apart from the
// other tests of this binary (some send images of 5 MiB). Its start-up log is read blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_packets_leaves_the_server_serving_and_flat() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display());
    let db = fresh_postgres_database().await.unwrap_or(sqlite);
    let vars = [("RATE_LIMIT_PER_MINUTE", "0"), ("MOCK_RESPONSE", ANSWER), ("MOCK_TOKEN_DELAY_MS", "5"), ("OVERLOAD_LAG_MS", "0")];
    let child = spawn_binary(&db, &vars);
    let pid = child.process.id();
    let user = user();
    let connect = || Client::websocket(child.addr, Credentials::token(&token(&user)));
    let mut warm = connect().await.unwrap();
    warm.emit("chat:start", json!({ "message": "warm up" })).await;
    read_answer(&mut warm).await;
    let before = rss_kib(pid);

    let packets = bad_packets();
    let mut sent = 0;
    for _round in 0..12 {
        let mut sockets = Vec::new();
        for _ in 0..4 {
            let mut client = connect().await.unwrap();
            for _ in 0..5 {
                for p in &packets {
                    client.send_packet(p.clone()).await;
                    sent += 1;
                }
            }
            sockets.push(client);
        }
        // A socket that only sent bad input is still usable.
        let mut survivor = sockets.pop().unwrap();
        let ack = survivor.emit_with_ack("chat:start", json!({ "message": "still there?" })).await;
        assert_eq!(ack["ok"], json!(true), "{ack}");
        let (end, _) = survivor.until("chat:end").await;
        assert_eq!(end["content"], ANSWER);
        for s in sockets {
            s.close().await;
        }
        survivor.close().await;
    }
    assert!(sent >= 3000, "sent {sent}");
    // Broken framing closes only that connection.
    for frame in BROKEN_FRAMES {
        let mut broken = connect().await.unwrap();
        broken.send_packet(frame.to_owned()).await;
        assert!(broken.wait_closed(Duration::from_secs(5)).await, "{frame} closes its connection");
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    eprintln!("{sent} malformed packets: RSS {before} KiB -> {after} KiB");
    assert!(after < before + 32 * 1024, "RSS grew from {before} KiB to {after} KiB");

    let mut fresh = connect().await.unwrap();
    fresh.emit("chat:start", json!({ "message": "a valid chat" })).await;
    let answer = read_answer(&mut fresh).await;
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", ANSWER.to_owned()));
}

#[tokio::test]
async fn an_over_long_message_under_the_packet_limit_is_message_too_long() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "x".repeat(900_000) })).await;
    assert_eq!(ack["error"]["code"], "MESSAGE_TOO_LONG");
    client.emit("chat:start", json!({ "message": "short" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.order[0], "chat:error");
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
}

#[tokio::test]
async fn a_packet_over_the_transport_limit_closes_only_its_connection() {
    let app = spawn_app().await;
    let mut bystander = app.client(&user()).await;
    let mut offender: Client = app.client(&user()).await;
    // Over the packet limit, which leaves room for MAX_ATTACHMENTS (4) images of 5 MiB.
    let over = chatwire::chat::attachments::max_start_bytes(4) + 1;
    // The server may close the connection before the packet is even sent whole.
    if offender.try_emit("chat:start", json!({ "message": "x".repeat(over) })).await {
        assert!(offender.wait_closed(Duration::from_secs(5)).await);
    }
    bystander.emit("chat:start", json!({ "message": "fine" })).await;
    assert_eq!(read_answer(&mut bystander).await.final_name, "chat:end");
}
