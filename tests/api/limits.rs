//! Per-user limits: the start rate and concurrent answers, both `RATE_LIMIT`.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn starts_over_the_per_minute_rate_are_refused_per_user() {
    let app = spawn_app_with(&[("RATE_LIMIT_PER_MINUTE", "2")]).await;
    let user = user();
    let mut client = app.client(&user).await;
    for _ in 0..2 {
        client.emit("chat:start", json!({ "message": "hi" })).await;
        assert_eq!(read_answer(&mut client).await.final_name, "chat:end");
    }
    let ack = client.emit_with_ack("chat:start", json!({ "message": "one more" })).await;
    assert_eq!(ack["error"]["code"], "RATE_LIMIT");
    assert_eq!(client.next_event().await.1["code"], "RATE_LIMIT");
    // Another user has a bucket of their own.
    let mut other = app.client(&crate::helpers::user()).await;
    assert_eq!(other.emit_with_ack("chat:start", json!({ "message": "hi" })).await["ok"], json!(true));
    assert_eq!(read_answer(&mut other).await.final_name, "chat:end");
    assert_eq!(app.mock().requests().len(), 3);
}

#[tokio::test]
async fn concurrent_answers_per_user_are_capped_across_sockets() {
    let app = spawn_app_with(&[("MAX_CONCURRENT_STREAMS_PER_USER", "1"), ("MOCK_TOKEN_DELAY_MS", "20")]).await;
    let user = user();
    let mut tab1 = app.client(&user).await;
    let mut tab2 = app.client(&user).await;
    assert_eq!(tab1.emit_with_ack("chat:start", json!({ "message": "long" })).await["ok"], json!(true));
    let refused = tab2.emit_with_ack("chat:start", json!({ "message": "also" })).await;
    assert_eq!(refused["error"]["code"], "RATE_LIMIT");
    assert_eq!(read_answer(&mut tab1).await.final_name, "chat:end");
    assert_eq!(app.state.engine.users_tracked(), 0, "finished users are forgotten");
    // Once the first answer ended, the second tab may start.
    assert_eq!(tab2.emit_with_ack("chat:start", json!({ "message": "now" })).await["ok"], json!(true));
}
