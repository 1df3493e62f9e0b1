//! A socket's session: its token's `exp` holds on a live connection (refused after it,
//! closed after the grace period, extended by `chat:auth`), and one user holds at most
//! `MAX_CONNECTIONS_PER_USER` connections across the wires.

use std::time::Duration;

use serde_json::json;

use crate::{
    client::{Client, Credentials, Refused},
    helpers::*,
};

async fn connect(app: &TestApp, token: &str) -> Result<Client, Refused> {
    Client::websocket(app.addr, Credentials::token(token)).await
}

/// A token of `user` that expires `seconds` from now.
fn expiring(user: &str, seconds: i64) -> String {
    token_with(json!({ "sub": user, "exp": chrono::Utc::now().timestamp() + seconds }))
}

#[tokio::test]
async fn after_exp_a_socket_is_told_refused_and_a_fresh_token_of_the_same_user_extends_it() {
    let app = spawn_app_with(&[("TOKEN_EXPIRY_GRACE_SECONDS", "60")]).await;
    let user = user();
    let mut client = connect(&app, &expiring(&user, 2)).await.expect("connects before exp");
    let ack = client.emit_with_ack("chat:start", json!({ "message": "before exp" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    read_answer(&mut client).await;

    let (told, _) = client.until("chat:error").await;
    assert_eq!(told["code"], json!("TOKEN_EXPIRED"), "{told}");
    for (event, payload) in [
        ("chat:start", json!({ "message": "after exp" })),
        ("chat:resume", json!({ "messageId": ack["messageId"] })),
        ("chat:join", json!({ "conversationId": ack["conversationId"] })),
    ] {
        let refused = client.emit_with_ack(event, payload).await;
        assert_eq!(refused["error"]["code"], json!("TOKEN_EXPIRED"), "{event}: {refused}");
        assert_eq!(client.until("chat:error").await.0["code"], json!("TOKEN_EXPIRED"));
    }

    let other = client.emit_with_ack("chat:auth", json!({ "token": token(&crate::helpers::user()) })).await;
    assert_eq!(other["error"]["code"], json!("FORBIDDEN"), "another user's token: {other}");
    let bad = client.emit_with_ack("chat:auth", json!({ "token": "not.a.token" })).await;
    assert_eq!(bad["error"], json!({ "code": "UNAUTHORIZED", "message": "unauthorized" }));
    let missing = client.emit_with_ack("chat:auth", json!({})).await;
    assert_eq!(missing["error"]["code"], json!("INVALID_PAYLOAD"));
    for code in ["FORBIDDEN", "UNAUTHORIZED", "INVALID_PAYLOAD"] {
        assert_eq!(client.until("chat:error").await.0["code"], json!(code));
    }

    let fresh = expiring(&user, 3600);
    let renewed = client.emit_with_ack("chat:auth", json!({ "token": fresh })).await;
    assert_eq!(renewed["ok"], json!(true), "{renewed}");
    assert!(renewed["expiresAt"].as_i64().unwrap() > chrono::Utc::now().timestamp() + 3000);
    let ack = client.emit_with_ack("chat:start", json!({ "message": "after a refresh" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
}

#[tokio::test]
async fn a_socket_whose_token_expired_is_closed_after_the_grace_period_unless_refreshed() {
    let app = spawn_app_with(&[("TOKEN_EXPIRY_GRACE_SECONDS", "1")]).await;
    let user = user();
    let mut stale = connect(&app, &expiring(&user, 1)).await.expect("connects");
    let mut refreshed = connect(&app, &expiring(&user, 1)).await.expect("connects");
    let renewed = refreshed.emit_with_ack("chat:auth", json!({ "token": expiring(&user, 3600) })).await;
    assert_eq!(renewed["ok"], json!(true), "{renewed}");

    let (told, _) = stale.until("chat:error").await;
    assert_eq!(told["code"], json!("TOKEN_EXPIRED"));
    assert!(stale.wait_disconnected(Duration::from_secs(10)).await, "disconnected at exp + grace");
    // The refreshed socket outlives the other's close and still works.
    let ack = refreshed.emit_with_ack("chat:start", json!({ "message": "still in" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(read_answer(&mut refreshed).await.final_name, "chat:end");
}

#[tokio::test]
async fn a_token_that_expired_before_connecting_is_refused_as_unauthorized() {
    let app = spawn_app().await;
    let refused = connect(&app, &expiring(&user(), -5)).await.err().expect("refused");
    assert_eq!(refused.0, "unauthorized");
}

#[tokio::test]
async fn one_user_holds_at_most_max_connections_per_user_across_sockets_and_sse() {
    let app = spawn_app_with(&[("MAX_CONNECTIONS_PER_USER", "2"), ("MOCK_TOKEN_DELAY_MS", "40")]).await;
    let user = user();
    let first = app.client(&user).await;
    let mut second = app.client(&user).await;
    let refused = connect(&app, &token(&user)).await.err().expect("a third socket is refused");
    assert_eq!(refused.0, "RATE_LIMIT");
    let sse = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&user))
        .json(&json!({ "message": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 429);
    let body: serde_json::Value = sse.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("RATE_LIMIT"));
    // Others are not affected, and the refused user's sockets still work.
    let _bystander = app.client(&crate::helpers::user()).await;
    let ack = second.emit_with_ack("chat:start", json!({ "message": "still mine" })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");

    // Leaving gives the place back (the server sees the close a moment later).
    first.close().await;
    let mut third = None;
    for _ in 0..100 {
        if let Ok(c) = connect(&app, &token(&user)).await {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let third = third.expect("a place is free once a socket left");
    // An SSE stream holds a place for its life too.
    drop(third);
    read_answer(&mut second).await;
}
