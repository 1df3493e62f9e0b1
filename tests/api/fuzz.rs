//! Generated input into every `/ai` event decoder over a real socket: each packet gets an
//! ack (success, or a protocol error code) or, when its framing does not parse, a closed
//! connection; never silence, never a panic. The server serves normally afterwards.

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use serde_json::{Map, Value, json};

use crate::{client::Client, helpers::*};

/// Packets per run: enough to reach every decoder's branches, brief enough for CI.
const CASES: usize = 400;

const EVENTS: [&str; 6] = ["chat:start", "chat:stop", "chat:resume", "chat:join", "chat:leave", "chat:auth"];

/// The codes a refusal may carry.
const CODES: [&str; 10] = [
    "INVALID_PAYLOAD",
    "MESSAGE_TOO_LONG",
    "INVALID_PARAMS",
    "INVALID_MODEL",
    "FORBIDDEN",
    "UNAUTHORIZED",
    "NOT_FOUND",
    "BUSY",
    "RATE_LIMIT",
    "UPSTREAM_ERROR",
];

/// JSON made mostly of the protocol's own field names and edge values.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        Just(json!("01a2011e-ad51-71af-af86-f2c345ea9909")),
        Just(json!("not.a.token")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let names = prop_oneof![
            prop::sample::select(vec![
                "message",
                "userId",
                "conversationId",
                "model",
                "maxTokens",
                "temperature",
                "clientMessageId",
                "systemPrompt",
                "messageId",
                "offset",
                "token",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((names, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The text of an event's argument: well-formed JSON, JSON as JavaScript writes it
/// (lone surrogates, numbers past a double), or anything at all.
pub fn payload_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => prop::sample::select(vec![
            r#"{"message":"cut \ud83d"}"#, r#"{"messageId":"\udc00"}"#, r#"{"message":"x","temperature":1e400}"#,
            r#"{"message":"x","maxTokens":-1E+999}"#, r#"{"offset":1e400,"messageId":"01a2011e-ad51-71af-af86-f2c345ea9909"}"#,
            r#"{"token":"\ud800\ud800"}"#,
        ])
        .prop_map(str::to_owned),
        2 => r#"[\[\]{}",:0-9eE+\-.\\u dDa-f8tnrl]{0,40}"#,
    ]
}

#[tokio::test]
async fn every_generated_packet_gets_an_ack_or_a_close_and_the_server_keeps_serving() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "0"), ("LOOKUPS_PER_MINUTE", "0")]).await;
    let user = user();
    let strategy = (prop::sample::select(EVENTS.to_vec()), payload_text());
    let mut runner = TestRunner::new(Config { rng_seed: proptest::test_runner::RngSeed::Fixed(0xC4A7), ..Config::default() });
    let mut client = app.client(&user).await;
    let (mut acked, mut closed) = (0, 0);
    for _ in 0..CASES {
        let (event, payload) = strategy.new_tree(&mut runner).expect("a case").current();
        let array = format!(r#"["{event}",{payload}]"#);
        let well_formed = serde_json::from_str::<Value>(&array).is_ok();
        match client.ack_or_close(&array).await {
            Some(ack) => {
                acked += 1;
                let code = ack["error"]["code"].as_str();
                assert!(ack["ok"] == json!(true) || code.is_some_and(|c| CODES.contains(&c)), "{array} -> {ack}");
            }
            None => {
                assert!(!well_formed, "a well-formed packet closed its connection: {array}");
                closed += 1;
                client = app.client(&user).await;
            }
        }
    }
    println!("fuzz: {CASES} packets, {acked} acked, {closed} closed their connection");
    assert!(acked > CASES / 2 && closed > 0, "the generator reaches both outcomes ({acked} acked, {closed} closed)");

    let mut fresh = Client::websocket(app.addr, crate::client::Credentials::token(&token(&crate::helpers::user()))).await.unwrap();
    fresh.emit("chat:start", json!({ "message": "after the fuzz" })).await;
    assert_eq!(read_answer(&mut fresh).await.text(), ANSWER);
}
