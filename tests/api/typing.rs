//! Typing between sockets: `chat:typing { conversationId }` reaches the user's other
//! sockets that follow the conversation as `{ conversationId, userId }`, never the sender,
//! at most once a second per socket and conversation (counted, not timed).

use serde_json::{Value, json};

use crate::{client::Client, helpers::*};

/// Starts a conversation with a one-token answer and waits for its end.
async fn conversation(client: &mut Client) -> Value {
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hi", "maxTokens": 1 })).await;
    let answer = read_answer(client).await;
    assert_eq!(answer.final_name, "chat:end", "{:?}", answer.final_data);
    ack["conversationId"].clone()
}

#[tokio::test]
async fn typing_reaches_the_users_other_followers_once_a_second_and_never_the_sender() {
    let app = spawn_app().await;
    let me = user();
    let (mut a, mut b, mut c) = (app.client(&me).await, app.client(&me).await, app.client(&me).await);
    let (one, two, three) = (conversation(&mut a).await, conversation(&mut a).await, conversation(&mut a).await);
    for id in [&one, &two, &three] {
        assert_eq!(b.emit_with_ack("chat:join", json!({ "conversationId": id })).await["ok"], json!(true));
    }
    assert_eq!(c.emit_with_ack("chat:join", json!({ "conversationId": three })).await["ok"], json!(true));

    // Ten in a row from A in conversation one: the first is relayed, the rest are not.
    let mut relayed = Vec::new();
    for _ in 0..10 {
        relayed.push(a.emit_with_ack("chat:typing", json!({ "conversationId": one })).await);
    }
    assert_eq!(relayed[0], json!({ "ok": true, "relayed": true }));
    assert!(relayed[1..].iter().all(|r| *r == json!({ "ok": true, "relayed": false })), "{relayed:?}");
    // The throttle is per conversation: two is relayed at once.
    assert_eq!(a.emit_with_ack("chat:typing", json!({ "conversationId": two })).await["relayed"], json!(true));

    // B gets one relay for one, then the one for two: nothing more came for one.
    let (first, _) = b.until("chat:typing").await;
    assert_eq!(first, json!({ "conversationId": one, "userId": me }));
    let (second, _) = b.until("chat:typing").await;
    assert_eq!(second, json!({ "conversationId": two, "userId": me }));

    // B types in three: A and C get it, and it is the first typing either sees, so A
    // was never sent its own and C (not following one or two) nothing else.
    assert_eq!(b.emit_with_ack("chat:typing", json!({ "conversationId": three })).await["relayed"], json!(true));
    for follower in [&mut a, &mut c] {
        let (typing, _) = follower.until("chat:typing").await;
        assert_eq!(typing, json!({ "conversationId": three, "userId": me }));
    }

    // Another user's conversation is not found; a bad payload is refused; both sockets stay usable.
    let mut stranger = app.client(&user()).await;
    let refused = stranger.emit_with_ack("chat:typing", json!({ "conversationId": one })).await;
    assert_eq!(refused["error"]["code"], json!("NOT_FOUND"));
    let bad = stranger.emit_with_ack("chat:typing", json!({ "conversationId": 5 })).await;
    assert_eq!(bad["error"]["code"], json!("INVALID_PAYLOAD"));
    for code in ["NOT_FOUND", "INVALID_PAYLOAD"] {
        assert_eq!(stranger.until("chat:error").await.0["code"], json!(code));
    }
    assert!(conversation(&mut stranger).await.is_string());
}
