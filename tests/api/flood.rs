//! A flood of lookups from one authenticated socket costs the flooder, not the node:
//! its lookups are rate-limited per user and its events in progress are bounded, so a
//! bystander's chat goes on and the flooder's socket stays usable.

use std::time::Duration;

use serde_json::json;

use crate::{client::Incoming, helpers::*};

#[tokio::test]
async fn a_flood_of_joins_is_rate_limited_and_a_bystander_chats_on() {
    let app = spawn_app_with(&[("LOOKUPS_PER_MINUTE", "100")]).await;
    let flooder = user();
    let mut socket = app.client(&flooder).await;
    let ack = socket.emit_with_ack("chat:start", json!({ "message": "mine" })).await;
    read_answer(&mut socket).await;
    let join = json!(["chat:join", { "conversationId": ack["conversationId"] }]);
    for id in 0..2000 {
        socket.send_packet(format!("2/ai,{}{}", 10_000 + id, join)).await;
    }
    // Meanwhile another user chats as usual.
    let mut bystander = app.client(&user()).await;
    let started = bystander.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(started["ok"], json!(true), "{started}");
    assert_eq!(read_answer(&mut bystander).await.final_name, "chat:end");

    let (mut served, mut limited) = (0, 0);
    while !socket.is_quiet_for(Duration::from_millis(1000)).await {
        match socket.next().await {
            Incoming::Ack { data, .. } if data["ok"] == json!(true) => served += 1,
            Incoming::Ack { data, .. } => {
                assert_eq!(data["error"]["code"], "RATE_LIMIT", "{data}");
                limited += 1;
            }
            Incoming::Event { name, data } => assert_eq!((name.as_str(), &data["code"]), ("chat:error", &json!("RATE_LIMIT"))),
        }
    }
    eprintln!("2000 joins: {served} served, {limited} refused");
    assert!(served <= 100, "at most the bucket of 100 lookups reached the database: {served}");
    // Refusals answer at once; those that meet the full buffer of a socket that is not
    // reading are dropped (the flooder loses its own replies, nobody else's).
    assert!(limited >= 1, "the rest were refused at once: {limited}");
    // The flooder's socket still works: starts have their own limit.
    let again = socket.emit_with_ack("chat:start", json!({ "message": "still here?" })).await;
    assert_eq!(again["ok"], json!(true), "{again}");
}

#[tokio::test]
async fn a_repeated_client_message_id_counts_as_a_lookup() {
    let app = spawn_app_with(&[("LOOKUPS_PER_MINUTE", "3")]).await;
    let mut socket = app.client(&user()).await;
    let first = socket.emit_with_ack("chat:start", json!({ "message": "once", "clientMessageId": "k1" })).await;
    read_answer(&mut socket).await;
    for _ in 0..2 {
        let again = socket.emit_with_ack("chat:start", json!({ "message": "once", "clientMessageId": "k1" })).await;
        assert_eq!(again["messageId"], first["messageId"], "a repeat gets the first ack");
    }
    let limited = socket.emit_with_ack("chat:start", json!({ "message": "once", "clientMessageId": "k1" })).await;
    assert_eq!(limited["error"]["code"], "RATE_LIMIT", "the fourth lookup of the minute is refused before the database");
}
