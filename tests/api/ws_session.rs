//! Token expiry on live raw WebSockets, in every dialect: at `exp` the client is told
//! `TOKEN_EXPIRED` and new answers are refused so; `TOKEN_EXPIRY_GRACE_SECONDS` later the
//! connection closes with 1008, unless a fresh token of the same user came through the
//! dialect's auth message (Void `authenticate`, WADI `auth`). And shutdown closes every
//! dialect's connections with 1001.

use serde_json::{Value, json};

use crate::{
    helpers::*,
    ws_client::{Ended, Ws},
};

/// A token of `user` that expires `secs` seconds from now.
fn expiring(user: &str, secs: i64) -> String {
    token_with(json!({ "sub": user, "exp": chrono::Utc::now().timestamp() + secs }))
}

/// The code of a dialect's error frame (Void's is in `payload`).
fn code(frame: &Value) -> Option<&str> {
    frame["code"].as_str().or(frame["payload"]["code"].as_str())
}

/// Reads until the dialect's error frame with `TOKEN_EXPIRED`, skipping nothing else.
async fn told_expired(ws: &mut Ws, dialect: &str) {
    let frame = ws.next().await;
    assert_eq!(code(&frame), Some("TOKEN_EXPIRED"), "{dialect}: {frame}");
}

/// A connection of each dialect signed in with `token` (Void and WADI through their auth
/// message, canyon at the upgrade).
async fn connect(app: &TestApp, dialect: &str, token: &str) -> Ws {
    match dialect {
        "void" => {
            let mut ws = Ws::connect(app.addr, "/ws").await;
            assert_eq!(ws.next().await["type"], "connect_success");
            ws.send(json!({ "type": "authenticate", "payload": { "token": token } })).await;
            assert_eq!(ws.next().await["type"], "auth_success");
            ws
        }
        "canyon" => Ws::connect(app.addr, &format!("/ws/client-1?token={token}")).await,
        _ => {
            let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}", uuid::Uuid::new_v4())).await;
            assert_eq!(ws.next().await["type"], "connected");
            ws.send(json!({ "type": "auth", "token": token })).await;
            assert_eq!(ws.next().await["type"], "authenticated");
            ws
        }
    }
}

/// Each dialect's message that starts an answer.
fn start(dialect: &str) -> Value {
    match dialect {
        "void" => json!({ "type": "provider_request", "payload": { "prompt": "Hello", "stream": true } }),
        "canyon" => json!({ "type": "chat_message", "message": { "content": "Hello", "role": "user" }, "history": [] }),
        _ => json!({ "type": "message", "content": "Hello" }),
    }
}

#[tokio::test]
async fn at_exp_every_dialect_is_told_refuses_new_answers_and_closes_with_1008_after_the_grace() {
    let app = spawn_app_with(&[("TOKEN_EXPIRY_GRACE_SECONDS", "1")]).await;
    for dialect in ["void", "canyon", "wadi"] {
        let user = user();
        let mut ws = connect(&app, dialect, &expiring(&user, 2)).await;
        told_expired(&mut ws, dialect).await;
        ws.send(start(dialect)).await;
        let refused = ws.next().await;
        assert_eq!(code(&refused), Some("TOKEN_EXPIRED"), "{dialect}: {refused}");
        assert_eq!(ws.closed().await, Ended::Closed(1008), "{dialect}");
    }
}

#[tokio::test]
async fn a_fresh_token_of_the_same_user_extends_a_void_or_wadi_connection_and_on_void_another_users_is_refused() {
    // Unextended, the close would come at the first exp + 4 s; extended, the next thing
    // the client hears is the second token's expiry, 2 s earlier than that.
    let app = spawn_app_with(&[("TOKEN_EXPIRY_GRACE_SECONDS", "4"), ("MOCK_TOKEN_DELAY_MS", "0")]).await;
    for dialect in ["void", "wadi"] {
        let user = user();
        let mut ws = connect(&app, dialect, &expiring(&user, 2)).await;
        told_expired(&mut ws, dialect).await;
        let ok = if dialect == "void" { "auth_success" } else { "authenticated" };
        if dialect == "void" {
            // Another user's token changes nothing (WADI closes with 1008 on one, as on any bad token).
            ws.send(json!({ "type": "authenticate", "payload": { "token": token(&crate::helpers::user()) } })).await;
            let refused = ws.next().await;
            assert_eq!(refused["type"], "auth_failure", "another user's token was taken: {refused}");
        }
        let fresh = expiring(&user, 4);
        let auth = if dialect == "void" {
            json!({ "type": "authenticate", "payload": { "token": fresh } })
        } else {
            json!({ "type": "auth", "token": fresh })
        };
        ws.send(auth).await;
        assert_eq!(ws.next().await["type"], ok, "{dialect}");
        ws.send(start(dialect)).await;
        let end = if dialect == "void" { "provider_stream_end" } else { "complete" };
        let (done, _) = ws.until(end).await;
        assert_eq!(done["payload"]["content"].as_str().or(done["fullOutput"].as_str()), Some(ANSWER), "{dialect}");
        told_expired(&mut ws, dialect).await;
        assert_eq!(ws.closed().await, Ended::Closed(1008), "{dialect}");
    }
}

#[tokio::test]
async fn shutdown_closes_every_dialects_connection_with_1001() {
    let app = spawn_app().await;
    let t = token(&user());
    let mut sockets = Vec::new();
    for dialect in ["void", "canyon", "wadi"] {
        sockets.push((dialect, connect(&app, dialect, &t).await));
    }
    drop(app);
    for (dialect, mut ws) in sockets {
        assert_eq!(ws.closed().await, Ended::Closed(1001), "{dialect}");
    }
}
