//! The voice proxy when things fail: the upstream refuses (401, 429), drops or goes
//! silent mid-response, the client drops, the server shuts down. The client is told
//! why with `error.details.code`, and what was said so far is stored.

use serde_json::json;

use crate::{
    fake_realtime::{FakeRealtime, Mode, SPOKEN, Seen},
    helpers::{token, user},
    realtime::{open_session, transcript, voice_app},
    ws_client::{Ended, Ws},
};

#[tokio::test]
async fn realtime_upstream_refusals_are_errors_with_their_reason_then_a_close() {
    for (status, code) in [(401, "UPSTREAM_UNAUTHORIZED"), (429, "UPSTREAM_RATE_LIMIT"), (500, "UPSTREAM_ERROR")] {
        let mut fake = FakeRealtime::start().await;
        fake.set_mode(Mode::Refuse(status));
        let app = voice_app(&fake, &[]).await;
        let mut ws = Ws::connect(app.addr, &format!("/realtime?token={}", token(&user()))).await;
        let welcome = ws.next().await;
        assert_eq!(welcome["type"], "welcome");
        assert!(matches!(fake.next().await, Seen::Connected { .. }));
        let error = ws.next().await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["sessionId"], welcome["sessionId"]);
        assert_eq!(error["payload"]["details"], json!({ "code": code, "status": status }));
        assert_eq!(ws.closed().await, Ended::Closed(1011));
    }
}

/// Asks for an answer and reads up to its first transcript delta.
async fn start_answer(ws: &mut Ws, fake: &mut FakeRealtime) {
    ws.send(json!({ "type": "text_message", "payload": { "text": "Tell me a story" } })).await;
    assert_eq!(fake.next_event().await["type"], "conversation.item.create");
    assert_eq!(fake.next_event().await["type"], "response.create");
    loop {
        let event = ws.next().await;
        if event["payload"]["type"] == "response.output_audio_transcript.delta" {
            return;
        }
    }
}

#[tokio::test]
async fn realtime_upstream_dropping_mid_response_is_an_error_and_the_partial_answer_is_stored() {
    let mut fake = FakeRealtime::start().await;
    fake.set_mode(Mode::DropMidResponse);
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    start_answer(&mut ws, &mut fake).await;
    let error = ws.next().await;
    assert_eq!(error["payload"]["details"]["code"], "UPSTREAM_ERROR", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1011));
    let session = welcome["sessionId"].as_str().unwrap();
    assert_eq!(
        transcript(&app, session).await,
        [("user".into(), "Tell me a story".into(), "complete".into()), ("assistant".into(), SPOKEN[0].into(), "error".into())]
    );
    let answer = app.messages(session).await.pop().unwrap();
    assert_eq!(answer.error_code.as_deref(), Some("UPSTREAM_ERROR"));
}

#[tokio::test]
async fn realtime_upstream_gone_silent_mid_response_times_out_and_stores_the_partial_answer() {
    let mut fake = FakeRealtime::start().await;
    fake.set_mode(Mode::SilentMidResponse);
    let app = voice_app(&fake, &[("REALTIME_UPSTREAM_IDLE_TIMEOUT_MS", "300")]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    start_answer(&mut ws, &mut fake).await;
    let error = ws.next().await;
    assert_eq!(error["payload"]["details"]["code"], "UPSTREAM_TIMEOUT", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1011));
    assert_eq!(fake.next().await, Seen::Closed);
    let stored = transcript(&app, welcome["sessionId"].as_str().unwrap()).await;
    assert_eq!(stored[1], ("assistant".into(), SPOKEN[0].into(), "error".into()));
}

#[tokio::test]
async fn realtime_client_dropping_closes_the_upstream_after_storing_the_transcript() {
    let mut fake = FakeRealtime::start().await;
    fake.set_mode(Mode::SilentMidResponse);
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    start_answer(&mut ws, &mut fake).await;
    ws.drop_now();
    // The transcript is stored before the upstream is closed.
    assert_eq!(fake.next().await, Seen::Closed);
    let session = welcome["sessionId"].as_str().unwrap();
    assert_eq!(
        transcript(&app, session).await,
        [("user".into(), "Tell me a story".into(), "complete".into()), ("assistant".into(), SPOKEN[0].into(), "stopped".into())]
    );
    assert_eq!(app.messages(session).await[1].finish_reason.as_deref(), Some("client_closed"));
}

#[tokio::test]
async fn realtime_shutdown_ends_sessions_with_a_final_error_and_stores_them() {
    let mut fake = FakeRealtime::start().await;
    fake.set_mode(Mode::SilentMidResponse);
    let mut app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    start_answer(&mut ws, &mut fake).await;
    app.shut_down();
    let error = ws.next().await;
    assert_eq!(error["payload"]["details"]["code"], "SHUTDOWN", "{error}");
    assert_eq!(ws.closed().await, Ended::Closed(1001));
    assert_eq!(fake.next().await, Seen::Closed);
    let session = welcome["sessionId"].as_str().unwrap();
    let stored = app.messages(session).await;
    assert_eq!((stored[1].content.as_str(), stored[1].status.as_str()), (SPOKEN[0], "stopped"));
    assert_eq!(stored[1].finish_reason.as_deref(), Some("shutdown"));
}
