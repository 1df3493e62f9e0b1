//! Generated frames into each raw WebSocket dialect over a real connection: every frame,
//! text or binary, JSON or not, shaped like the dialect's messages or not, gets an answer
//! or a close with a code; never silence, never a panic. One connection a frame, so all
//! that comes after the frame is its answer.

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngSeed, TestRunner},
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    fuzz::{json_value, payload_text},
    helpers::*,
    ws_client::{Ended, Ws},
};

/// Frames per dialect.
const CASES: usize = 150;

/// The close codes a dialect may end a connection with for what a client sent.
const CLOSES: [u16; 3] = [1003, 1008, 1009];

/// A frame: mostly the dialects' own message shapes with generated fields, else any
/// JSON text, JSON as JavaScript writes it, anything at all, or binary.
fn frames() -> impl Strategy<Value = Message> {
    let kinds = prop::sample::select(vec![
        "authenticate",
        "auth",
        "ping",
        "provider_list",
        "provider_models",
        "provider_request",
        "provider_stream",
        "provider_resume",
        "chat_message",
        "message",
        "stop",
        "dance",
    ]);
    prop_oneof![
        4 => (kinds.clone(), json_value()).prop_map(|(kind, payload)| Message::text(json!({ "type": kind, "payload": payload }).to_string())),
        3 => (kinds, json_value(), json_value(), json_value()).prop_map(|(kind, message, content, history)| {
            Message::text(json!({ "type": kind, "message": message, "content": content, "history": history, "token": content }).to_string())
        }),
        3 => payload_text().prop_map(Message::text),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
    ]
}

/// A connection ready for a frame: past each dialect's greeting and authentication.
async fn ready(app: &TestApp, dialect: &str, case: usize) -> Ws {
    let user = user();
    match dialect {
        "void" => {
            let mut ws = Ws::connect(app.addr, "/ws").await;
            assert_eq!(ws.next().await["type"], "connect_success");
            ws.send(json!({ "type": "authenticate", "payload": { "token": token(&user) } })).await;
            assert_eq!(ws.next().await["type"], "auth_success");
            ws
        }
        "canyon" => Ws::connect(app.addr, &format!("/ws/client-{case}?token={}", token(&user))).await,
        _ => {
            let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}", uuid::Uuid::new_v4())).await;
            assert_eq!(ws.next().await["type"], "connected");
            ws.send(json!({ "type": "auth", "token": token(&user) })).await;
            assert_eq!(ws.next().await["type"], "authenticated");
            ws
        }
    }
}

#[tokio::test]
async fn every_generated_frame_gets_an_answer_or_a_close_in_every_dialect() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "0"), ("LOOKUPS_PER_MINUTE", "0"), ("RATE_LIMIT_PER_MINUTE", "0")]).await;
    for dialect in ["void", "canyon", "wadi"] {
        let mut runner = TestRunner::new(Config { rng_seed: RngSeed::Fixed(0x5EED), ..Config::default() });
        let strategy = frames();
        let (mut answered, mut closed) = (0, 0);
        for case in 0..CASES {
            let frame = strategy.new_tree(&mut runner).expect("a case").current();
            let shown = format!("{frame:?}");
            let mut ws = ready(&app, dialect, case).await;
            ws.send_raw(frame).await;
            match ws.next_or_end().await {
                Ok(answer) => {
                    answered += 1;
                    assert!(answer["type"].is_string(), "{dialect}: {shown} -> {answer}");
                }
                Err(Ended::Closed(code)) => {
                    closed += 1;
                    assert!(CLOSES.contains(&code), "{dialect}: {shown} closed with {code}");
                }
                Err(Ended::Dropped) => panic!("{dialect}: {shown} dropped the connection without a close frame"),
            }
        }
        println!("ws fuzz {dialect}: {CASES} frames, {answered} answered, {closed} closed");
        assert!(answered > CASES / 2, "{dialect}: the generator reaches the decoders ({answered} answered, {closed} closed)");
    }
    // And the server still serves each dialect.
    let mut ws = ready(&app, "wadi", 0).await;
    ws.send(json!({ "type": "message", "content": "after the fuzz" })).await;
    let (complete, _) = ws.until("complete").await;
    assert_eq!(complete["fullOutput"], ANSWER);
}
