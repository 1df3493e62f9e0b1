//! The voice proxy's limits, each ending or refusing a session with its code in
//! `error.details.code`: session length (with `session_expiring` first), sessions per
//! user, idleness, and daily tokens.

use serde_json::json;

use crate::{
    fake_realtime::{FakeRealtime, INPUT_TOKENS, OUTPUT_TOKENS, Seen},
    helpers::{token, user},
    realtime::{open_session, until_response_done, voice_app},
    ws_client::{Ended, Ws},
};

#[tokio::test]
async fn realtime_session_length_is_capped_with_a_warning_first() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("REALTIME_MAX_SESSION_SECONDS", "2")]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    let expiring = ws.next().await;
    assert_eq!(expiring["type"], "session_expiring");
    assert_eq!(expiring["payload"], json!({ "secondsLeft": 1 }));
    assert_eq!(expiring["sessionId"], welcome["sessionId"]);
    let error = ws.next().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["payload"]["details"], json!({ "code": "SESSION_LIMIT", "maxSeconds": 2 }));
    assert_eq!(ws.closed().await, Ended::Closed(1000));
    assert_eq!(fake.next().await, Seen::Closed);
}

#[tokio::test]
async fn realtime_sessions_per_user_are_capped() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("REALTIME_MAX_SESSIONS_PER_USER", "1")]).await;
    let alice = user();
    let (first, _, _) = open_session(&app, &mut fake, &alice, "").await;
    let mut second = Ws::connect(app.addr, &format!("/realtime?token={}", token(&alice))).await;
    let error = second.next().await;
    assert_eq!(error["payload"]["details"], json!({ "code": "RATE_LIMIT", "maxSessions": 1 }));
    assert_eq!(second.closed().await, Ended::Closed(1008));
    // Another user is not held back, and the place comes back when the first session ends.
    let _other = open_session(&app, &mut fake, &user(), "").await;
    drop(first);
    assert_eq!(fake.next().await, Seen::Closed);
    open_session(&app, &mut fake, &alice, "").await;
}

#[tokio::test]
async fn realtime_idle_sessions_end() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("REALTIME_IDLE_TIMEOUT_SECONDS", "1")]).await;
    let (mut ws, _, _) = open_session(&app, &mut fake, &user(), "").await;
    let error = ws.next().await;
    assert_eq!(error["payload"]["details"]["code"], "IDLE_TIMEOUT", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1000));
    assert_eq!(fake.next().await, Seen::Closed);
}

#[tokio::test]
async fn realtime_daily_tokens_end_the_session_and_refuse_the_next() {
    let mut fake = FakeRealtime::start().await;
    let quota = (INPUT_TOKENS + OUTPUT_TOKENS - 1).to_string();
    let app = voice_app(&fake, &[("REALTIME_DAILY_TOKENS", &quota)]).await;
    let alice = user();
    let (mut ws, _, _) = open_session(&app, &mut fake, &alice, "").await;
    ws.send(json!({ "type": "text_message", "payload": { "text": "Hi" } })).await;
    until_response_done(&mut ws).await;
    let error = ws.next().await;
    assert_eq!(error["payload"]["details"]["code"], "QUOTA_EXCEEDED", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1000));
    let (_, usage) = crate::rest::get(&app, "/v1/usage", &alice).await;
    assert_eq!(usage["usage"][0]["model"], "gpt-realtime", "{usage}");
    let mut next = Ws::connect(app.addr, &format!("/realtime?token={}", token(&alice))).await;
    let error = next.next().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["payload"]["details"]["code"], "QUOTA_EXCEEDED");
    assert_eq!(next.closed().await, Ended::Closed(1008));
}

#[tokio::test]
async fn realtime_sessions_end_when_the_token_expires() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let token = crate::helpers::token_with(json!({ "sub": user(), "exp": exp }));
    let mut ws = Ws::connect(app.addr, &format!("/realtime?token={token}")).await;
    assert_eq!(ws.next().await["type"], "welcome");
    let error = ws.until("error").await.0;
    assert_eq!(error["payload"]["details"]["code"], "TOKEN_EXPIRED", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1008));
    assert!(matches!(fake.next().await, Seen::Connected { .. }));
}
