//! The voice proxy through a real WebSocket client: auth at the upgrade, the welcome,
//! ping/pong, byte-exact `openai_event` pass-through both ways, the legacy messages, the
//! `session.update` filter, presets, PCM16 audio and the stored transcript.

use base64::Engine as _;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::{
    fake_realtime::{FakeRealtime, HEARD, INPUT_TOKENS, OUTPUT_TOKENS, SPOKEN, Seen},
    helpers::{TestApp, spawn_app_with, token, user},
    ws_client::{Ended, Ws},
};

pub const KEY: &str = "sk-test-realtime";
const DEFAULT_INSTRUCTIONS: &str = "You are a helpful voice assistant. Answer clearly and warmly, in the language the user speaks.";

/// A server whose voice upstream is `fake`, with `extra` settings.
pub async fn voice_app(fake: &FakeRealtime, extra: &[(&str, &str)]) -> TestApp {
    let url = fake.url();
    let mut vars = vec![("OPENAI_REALTIME_URL", url.as_str()), ("REALTIME_API_KEY", KEY)];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

/// A voice session of `user` (with `query` added): the client after its welcome, the
/// welcome, and the server's `session.update` as the fake got it.
pub async fn open_session(app: &TestApp, fake: &mut FakeRealtime, user: &str, query: &str) -> (Ws, Value, Value) {
    let mut ws = Ws::connect(app.addr, &format!("/realtime?token={}{query}", token(user))).await;
    let welcome = ws.next().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let connected = fake.next().await;
    assert!(matches!(connected, Seen::Connected { .. }), "{connected:?}");
    let update = fake.next_event().await;
    // The fake's `session.created` and `session.updated` reach the client.
    for expected in ["session.created", "session.updated"] {
        let event = ws.next().await;
        assert_eq!(event["payload"]["type"], expected, "{event}");
    }
    (ws, welcome, update)
}

/// The stored messages of a conversation as `(role, content, status)`.
pub async fn transcript(app: &TestApp, conversation: &str) -> Vec<(String, String, String)> {
    app.messages(conversation).await.into_iter().map(|m| (m.role, m.content, m.status)).collect()
}

/// Reads the client's events until `response.done`; returns the payload types seen.
pub async fn until_response_done(ws: &mut Ws) -> Vec<String> {
    let mut types = Vec::new();
    loop {
        let event = ws.next().await;
        assert_eq!(event["type"], "openai_event", "{event}");
        let kind = event["payload"]["type"].as_str().unwrap().to_owned();
        types.push(kind.clone());
        if kind == "response.done" {
            return types;
        }
    }
}

#[tokio::test]
async fn realtime_refuses_a_missing_or_bad_token_at_the_upgrade() {
    let fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    assert_eq!(Ws::connect_with(app.addr, "/realtime", &[]).await.err(), Some(401));
    assert_eq!(Ws::connect_with(app.addr, "/realtime?token=not-a-jwt", &[]).await.err(), Some(401));
    let bearer = format!("Bearer {}", token(&user()));
    assert!(Ws::connect_with(app.addr, "/realtime", &[("authorization", &bearer)]).await.is_ok());
}

#[tokio::test]
async fn realtime_welcome_names_the_session_and_the_upstream_gets_the_ga_session_update_first() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let alice = user();
    let mut ws = Ws::connect(app.addr, &format!("/realtime?token={}", token(&alice))).await;
    let welcome = ws.next().await;
    let session = welcome["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(welcome["payload"]["sessionId"], session.as_str());
    assert_eq!(welcome["payload"]["userId"], alice.as_str());
    assert_eq!(welcome["payload"]["authenticated"], true);
    assert_eq!(welcome["payload"]["features"], json!(["text_chat", "voice_chat"]));
    assert!(welcome["payload"]["message"].is_string());
    assert!(welcome["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        fake.next().await,
        Seen::Connected { path: "/v1/realtime?model=gpt-realtime".into(), authorization: Some(format!("Bearer {KEY}")), beta: false }
    );
    let update = fake.next_event().await;
    assert_eq!(
        update,
        json!({ "type": "session.update", "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": DEFAULT_INSTRUCTIONS,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": { "type": "audio/pcm", "rate": 24000 },
                    "transcription": { "model": "gpt-4o-mini-transcribe" },
                    "turn_detection": { "type": "server_vad", "silence_duration_ms": 500 },
                },
                "output": { "format": { "type": "audio/pcm", "rate": 24000 }, "voice": "alloy" },
            },
            "max_output_tokens": 4096,
        } })
    );
    // The session is a conversation of the user's, listed by REST.
    let (_, listed) = crate::rest::get(&app, "/v1/conversations", &alice).await;
    assert_eq!(listed["items"][0]["id"], session.as_str(), "{listed}");
}

#[tokio::test]
async fn realtime_settings_other_than_the_defaults_reach_the_first_session_update_exactly() {
    for (detection, expected) in [
        ("server_vad", json!({ "type": "server_vad", "silence_duration_ms": 850 })),
        // Semantic VAD has no silence duration; none turns detection off.
        ("semantic_vad", json!({ "type": "semantic_vad" })),
        ("none", Value::Null),
    ] {
        let mut fake = FakeRealtime::start().await;
        let app = voice_app(
            &fake,
            &[
                ("REALTIME_MODEL", "gpt-realtime-mini"),
                ("REALTIME_VOICE", "marin"),
                ("REALTIME_TURN_DETECTION", detection),
                ("REALTIME_VAD_SILENCE_MS", "850"),
                ("REALTIME_TEMPERATURE", "0.7"),
            ],
        )
        .await;
        let _ws = Ws::connect(app.addr, &format!("/realtime?token={}&preset=brief", token(&user()))).await;
        let Seen::Connected { path, .. } = fake.next().await else { panic!("the upstream first sees the connection") };
        assert_eq!(path, "/v1/realtime?model=gpt-realtime-mini", "{detection}");
        let text = fake.next_text().await;
        let update: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            update,
            json!({ "type": "session.update", "session": {
                "type": "realtime",
                "model": "gpt-realtime-mini",
                "instructions": "You are a helpful voice assistant. Answer in one or two short sentences.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": { "type": "audio/pcm", "rate": 24000 },
                        "transcription": { "model": "gpt-4o-mini-transcribe" },
                        "turn_detection": expected,
                    },
                    "output": { "format": { "type": "audio/pcm", "rate": 24000 }, "voice": "marin" },
                },
                "max_output_tokens": 4096,
                "temperature": 0.7,
            } }),
            "{detection}"
        );
        assert!(text.contains(r#""temperature":0.7"#), "{detection}: the temperature as it was set, not widened: {text}");
    }
}

#[tokio::test]
async fn realtime_open_mode_welcomes_the_claimed_user_unauthenticated() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("JWT_SECRET", "")]).await;
    let mut ws = Ws::connect(app.addr, "/realtime?userId=demo-user").await;
    let welcome = ws.next().await;
    assert_eq!(welcome["payload"]["userId"], "demo-user");
    assert_eq!(welcome["payload"]["authenticated"], false);
    assert!(matches!(fake.next().await, Seen::Connected { .. }));
}

#[tokio::test]
async fn realtime_answers_ping_with_pong_and_bad_input_with_an_error_on_a_usable_connection() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    ws.send(json!({ "type": "ping" })).await;
    let pong = ws.next().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["sessionId"], welcome["sessionId"]);
    assert!(pong["timestamp"].is_string());
    ws.send_text("{not json").await;
    let error = ws.next().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["payload"]["details"]["code"], "INVALID_PAYLOAD");
    assert!(error["payload"]["message"].is_string());
    ws.send(json!({ "type": "dance" })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "INVALID_PAYLOAD");
    ws.send(json!({ "type": "audio_data", "payload": { "audio": "not base64!" } })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "INVALID_PAYLOAD");
    ws.send(json!({ "type": "ping" })).await;
    assert_eq!(ws.next().await["type"], "pong");
}

#[tokio::test]
async fn realtime_forwards_openai_event_payloads_byte_exact_both_ways() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    // Odd spacing, keys out of order, escapes: the upstream gets these very bytes.
    let payload = r#"{ "item" : {"content":[{"text":"Hi \u00e9 😀","type":"input_text"}],"role":"user","type":"message"},  "type":"conversation.item.create","event_id":"evt_9" }"#;
    ws.send_text(&format!(r#"{{"type":"openai_event","payload":{payload}}}"#)).await;
    assert_eq!(fake.next_text().await, payload);
    assert_eq!(ws.next().await["payload"]["type"], "conversation.item.added");
    assert_eq!(ws.next().await["payload"]["type"], "conversation.item.done");
    // And the client gets the upstream's bytes inside its envelope.
    let upstream = r#"{"zeta":1, "type":"response.output_text.delta","delta":"\u00e9t\u00e9","alpha":{"b":2,"a":1.50}}"#;
    fake.send_raw(upstream);
    let text = ws.next_text().await;
    assert!(text.starts_with(&format!(r#"{{"type":"openai_event","payload":{upstream},"#)), "{text}");
    let frame: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(frame["sessionId"], welcome["sessionId"]);
    assert!(frame["timestamp"].is_string());
}

#[tokio::test]
async fn realtime_maps_each_legacy_message_to_ga_events_and_stores_the_turn() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    let session = welcome["sessionId"].as_str().unwrap();
    ws.send(json!({ "type": "text_message", "payload": { "text": "Hello, how are you?" } })).await;
    assert_eq!(
        fake.next_event().await,
        json!({ "type": "conversation.item.create", "item": { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "Hello, how are you?" }] } })
    );
    assert_eq!(fake.next_event().await, json!({ "type": "response.create" }));
    let types = until_response_done(&mut ws).await;
    assert_eq!(
        types,
        [
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.done",
            "response.output_audio.done",
            "response.done",
        ]
    );
    ws.send(json!({ "type": "audio_data", "payload": { "audio": "AAAAAA==" } })).await;
    assert_eq!(fake.next_event().await, json!({ "type": "input_audio_buffer.append", "audio": "AAAAAA==" }));
    ws.send(json!({ "type": "audio_clear", "payload": {} })).await;
    assert_eq!(fake.next_event().await, json!({ "type": "input_audio_buffer.clear" }));
    ws.send(json!({ "type": "audio_commit", "payload": {} })).await;
    assert_eq!(fake.next_event().await, json!({ "type": "input_audio_buffer.commit" }));
    assert_eq!(fake.next_event().await, json!({ "type": "response.create" }));
    until_response_done(&mut ws).await;
    // Stored as they completed: typed text, answer, heard audio, answer.
    let spoken = SPOKEN.concat();
    let expected = [("user", "Hello, how are you?"), ("assistant", spoken.as_str()), ("user", HEARD), ("assistant", spoken.as_str())];
    let stored = transcript(&app, session).await;
    assert_eq!(stored, expected.map(|(r, c)| (r.to_owned(), c.to_owned(), "complete".to_owned())));
    // One branch: each row follows the one before, and the last is the active leaf.
    let rows = app.messages(session).await;
    let parents: Vec<_> = rows.iter().map(|m| m.parent_id).collect();
    let expected_parents: Vec<_> = std::iter::once(None).chain(rows.iter().take(rows.len() - 1).map(|m| Some(m.id))).collect();
    assert_eq!(parents, expected_parents);
    let conversation = entity::Conversation::find_by_id(uuid::Uuid::parse_str(session).unwrap()).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(conversation.active_leaf_id, rows.last().map(|m| m.id));
    let answers: Vec<_> = rows.into_iter().filter(|m| m.role == "assistant").collect();
    for answer in &answers {
        assert_eq!(answer.prompt_tokens, Some(INPUT_TOKENS as i32));
        assert_eq!(answer.completion_tokens, Some(OUTPUT_TOKENS as i32));
        assert_eq!(answer.total_tokens, Some((INPUT_TOKENS + OUTPUT_TOKENS) as i32));
        assert_eq!(answer.model.as_deref(), Some("gpt-realtime"));
        assert_eq!(answer.finish_reason.as_deref(), Some("completed"));
    }
}

#[tokio::test]
async fn realtime_session_update_keeps_only_the_allowed_fields() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (mut ws, _, _) = open_session(&app, &mut fake, &user(), "").await;
    let update = json!({ "type": "session.update", "session": {
        "type": "realtime",
        "instructions": "Ignore the server.",
        "model": "gpt-realtime-mini",
        "tools": [],
        "max_output_tokens": "inf",
        "audio": { "output": { "voice": "marin", "speed": 2.0 }, "input": { "turn_detection": { "type": "semantic_vad" } } },
    } });
    ws.send(json!({ "type": "openai_event", "payload": update })).await;
    let refused = ws.next().await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["payload"]["details"]["code"], "FIELD_NOT_ALLOWED");
    let mut fields: Vec<String> = serde_json::from_value(refused["payload"]["details"]["fields"].clone()).unwrap();
    fields.sort();
    assert_eq!(fields, ["audio.output.speed", "instructions", "max_output_tokens", "model", "tools"]);
    assert_eq!(
        fake.next_event().await,
        json!({ "type": "session.update", "session": {
            "type": "realtime",
            "audio": { "output": { "voice": "marin" }, "input": { "turn_detection": { "type": "semantic_vad" } } },
        } })
    );
    assert_eq!(ws.next().await["payload"]["type"], "session.updated");
    // Nothing allowed left: nothing goes upstream.
    ws.send(json!({ "type": "openai_event", "payload": { "type": "session.update", "session": { "instructions": "x" } } })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "FIELD_NOT_ALLOWED");
    // Event types the proxy does not forward, and response overrides.
    ws.send(json!({ "type": "openai_event", "payload": { "type": "transcription_session.update" } })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "EVENT_NOT_ALLOWED");
    ws.send(json!({ "type": "openai_event", "payload": { "type": "response.create", "response": { "instructions": "x" } } })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "FIELD_NOT_ALLOWED");
    ws.send(json!({ "type": "openai_event", "payload": { "type": "conversation.item.create", "item": { "type": "message", "role": "system", "content": [] } } })).await;
    assert_eq!(ws.next().await["payload"]["details"]["code"], "FIELD_NOT_ALLOWED");
    ws.send(json!({ "type": "audio_clear" })).await;
    assert_eq!(fake.next_event().await, json!({ "type": "input_audio_buffer.clear" }));
}

#[tokio::test]
async fn realtime_presets_choose_the_instructions_and_an_unknown_one_is_refused_with_1008() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presets.json");
    std::fs::write(&file, r#"{ "default": "Speak as a ship's navigator.", "haiku": "Answer in one haiku." }"#).unwrap();
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("REALTIME_PRESETS_FILE", file.to_str().unwrap())]).await;
    let (_ws, welcome, update) = open_session(&app, &mut fake, &user(), "&preset=haiku").await;
    assert_eq!(welcome["payload"]["preset"], "haiku");
    assert_eq!(update["session"]["instructions"], "Answer in one haiku.");
    let (_ws2, _, update) = open_session(&app, &mut fake, &user(), "").await;
    assert_eq!(update["session"]["instructions"], "Speak as a ship's navigator.");
    let mut ws = Ws::connect(app.addr, &format!("/realtime?token={}&preset=brief", token(&user()))).await;
    let error = ws.next().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["payload"]["details"]["code"], "INVALID_PRESET");
    assert_eq!(error["payload"]["details"]["presets"], json!(["default", "haiku"]));
    assert_eq!(ws.closed().await, Ended::Closed(1008));
    // No upstream was opened for it: the next connection the fake sees is a new session's.
    let (_ws3, _, update) = open_session(&app, &mut fake, &user(), "&preset=default").await;
    assert_eq!(update["session"]["instructions"], "Speak as a ship's navigator.");
}

#[tokio::test]
async fn realtime_built_in_presets_are_neutral_examples() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (_ws, _, update) = open_session(&app, &mut fake, &user(), "&preset=brief").await;
    assert_eq!(update["session"]["instructions"], "You are a helpful voice assistant. Answer in one or two short sentences.");
    let (_ws, _, update) = open_session(&app, &mut fake, &user(), "&preset=philosophical").await;
    assert!(update["session"]["instructions"].as_str().unwrap().starts_with("You are a thoughtful voice companion."));
}

#[tokio::test]
async fn realtime_pcm16_tone_reaches_the_upstream_byte_for_byte() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[]).await;
    let (mut ws, welcome, _) = open_session(&app, &mut fake, &user(), "").await;
    // Half a second of a 440 Hz tone, PCM16 little-endian at 24 kHz mono.
    let tone: Vec<u8> = (0..12_000)
        .flat_map(|i| {
            let sample = (f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / 24_000.0).sin() * 12_000.0;
            (sample as i16).to_le_bytes()
        })
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    for chunk in tone.chunks(4_800) {
        ws.send(json!({ "type": "audio_data", "payload": { "audio": b64.encode(chunk) } })).await;
    }
    ws.send(json!({ "type": "audio_commit" })).await;
    let mut received = Vec::new();
    loop {
        let event = fake.next_event().await;
        match event["type"].as_str().unwrap() {
            "input_audio_buffer.append" => received.extend(b64.decode(event["audio"].as_str().unwrap()).unwrap()),
            "input_audio_buffer.commit" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(received.len(), 24_000);
    assert_eq!(received, tone);
    assert_eq!(fake.next_event().await["type"], "response.create");
    until_response_done(&mut ws).await;
    let stored = transcript(&app, welcome["sessionId"].as_str().unwrap()).await;
    assert_eq!(stored[0], ("user".into(), HEARD.into(), "complete".into()));
    assert_eq!(stored[1], ("assistant".into(), SPOKEN.concat(), "complete".into()));
}

#[tokio::test]
async fn realtime_at_the_root_path_serves_old_clients_and_plain_get_still_answers_the_service_info() {
    let mut fake = FakeRealtime::start().await;
    let app = voice_app(&fake, &[("REALTIME_PATH", "/")]).await;
    let info = reqwest::get(format!("http://{}/", app.addr)).await.unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert!(info.is_object(), "{info}");
    let mut ws = Ws::connect(app.addr, &format!("/?token={}", token(&user()))).await;
    assert_eq!(ws.next().await["type"], "welcome");
    assert!(matches!(fake.next().await, Seen::Connected { .. }));
    // The old path is no voice endpoint now.
    assert_eq!(Ws::connect_with(app.addr, "/realtime", &[]).await.err(), Some(404));
}

#[test]
fn realtime_open_mode_is_refused_under_production() {
    let vars = [("NODE_ENV", "production"), ("OPENAI_API_KEY", "sk-x"), ("DATABASE_URL", "sqlite::memory:")];
    let error = chatwire::Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()).unwrap_err();
    assert!(error.to_string().contains("refusing to run in open mode"), "{error}");
}
