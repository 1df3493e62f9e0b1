//! Hardening: keys of both kinds at once, the Bearer scheme in any case, what `GET /`
//! tells strangers, a `chat:stop` that does not parse, message lengths in UTF-16
//! units, and what the binary says about a database URL and an open model list.

use std::{net::SocketAddr, process::Command};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::{
    binary::spawn_binary_with,
    client::{Client, Credentials, Incoming, Refused},
    helpers::*,
};

const RSA_PRIVATE: &str = include_str!("../fixtures/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../fixtures/rsa-public.pem");
const EC_PRIVATE: &str = include_str!("../fixtures/ec-private.pem");

fn signed(alg: Algorithm, key: &EncodingKey, sub: &str) -> String {
    let claims = json!({ "sub": sub, "exp": chrono::Utc::now().timestamp() + 60 });
    encode(&Header::new(alg), &claims, key).unwrap()
}

async fn connect_message(app: &TestApp, token: &str) -> Result<(), String> {
    Client::websocket(app.addr, Credentials::token(token)).await.map(drop).map_err(|Refused(m)| m)
}

#[tokio::test]
async fn with_a_secret_and_a_public_key_each_token_is_checked_with_the_key_of_its_alg() {
    let app = spawn_app_with(&[("JWT_PUBLIC_KEY", RSA_PUBLIC)]).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    assert_eq!(connect_message(&app, &token("hs-user")).await, Ok(()), "HS256 with JWT_SECRET");
    assert_eq!(connect_message(&app, &signed(Algorithm::RS256, &rsa, "rs-user")).await, Ok(()), "RS256 with JWT_PUBLIC_KEY");

    let wrong_secret = signed(Algorithm::HS256, &EncodingKey::from_secret(b"not-the-secret"), "u1");
    let other_alg = signed(Algorithm::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), "u1");
    // Algorithm confusion: the public key, which anyone has, used as an HS256 secret.
    let confused = signed(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), "u1");
    let rs_header_hs_body = {
        let hs = token("u1");
        let rs = signed(Algorithm::RS256, &rsa, "u1");
        let (rs_head, _) = rs.split_once('.').unwrap();
        let (_, hs_rest) = hs.split_once('.').unwrap();
        format!("{rs_head}.{hs_rest}")
    };
    for (what, t) in [
        ("wrong secret", wrong_secret),
        ("ES256 without its key", other_alg),
        ("public key as secret", confused),
        ("RS256 header on an HS256 signature", rs_header_hs_body),
    ] {
        assert_eq!(connect_message(&app, &t).await, Err("unauthorized".to_owned()), "{what}");
    }
}

/// Opens a long-polling session whose handshake carries `authorization`, and joins `/ai`:
/// the namespace's answer packet.
async fn polling_connect_with_header(addr: SocketAddr, authorization: &str) -> String {
    let http = reqwest::Client::new();
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let open = http.get(&base).header("authorization", authorization).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());
    let posted = http.post(&url).body("40/ai,").send().await.unwrap();
    assert_eq!(posted.status(), 200);
    // A polling response may carry several Engine.IO packets, separated by 0x1e.
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    let packets: Vec<&str> = body.split('\u{1e}').collect();
    packets.iter().find(|p| p.starts_with("40/ai,") || p.starts_with("44/ai,")).map_or(body.clone(), |p| (*p).to_owned())
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_on_ai_and_sse() {
    let app = spawn_app().await;
    let user = user();
    for scheme in ["BEARER", "bearer", "BeArEr"] {
        let answer = polling_connect_with_header(app.addr, &format!("{scheme} {}", token(&user))).await;
        assert!(answer.starts_with("40/ai,{\"sid\":"), "{scheme} on /ai: {answer}");
    }
    assert_eq!(polling_connect_with_header(app.addr, "BEARER not.a.jwt").await, "44/ai,{\"message\":\"unauthorized\"}");

    let http = reqwest::Client::new();
    let sse = http
        .post(format!("http://{}/v1/chat", app.addr))
        .header("authorization", format!("BEARER {}", token(&user)))
        .json(&json!({ "message": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let body = sse.text().await.unwrap();
    assert!(body.starts_with("event: chat:ack\n"), "{body}");
    assert!(body.contains("event: chat:end\n"), "{body}");
    let refused = http
        .post(format!("http://{}/v1/chat", app.addr))
        .header("authorization", "BEARER junk")
        .json(&json!({ "message": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

#[tokio::test]
async fn get_root_tells_only_name_and_version_and_counts_need_a_token() {
    let app = spawn_app().await;
    let _client = app.client(&user()).await;
    let http = reqwest::Client::new();
    let root = http.get(format!("http://{}/", app.addr)).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.json::<Value>().await.unwrap(), json!({ "name": "chatwire", "version": env!("CARGO_PKG_VERSION") }));

    let status_url = format!("http://{}/v1/status", app.addr);
    let unauthorized = json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "unauthorized" } });
    for (what, request) in [
        ("no token", http.get(&status_url)),
        ("bad token", http.get(&status_url).bearer_auth("junk")),
        ("wrong secret", http.get(&status_url).bearer_auth(signed(Algorithm::HS256, &EncodingKey::from_secret(b"x"), "u"))),
    ] {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 401, "{what}");
        assert_eq!(res.json::<Value>().await.unwrap(), unauthorized, "{what}");
    }
    let res = http.get(&status_url).header("authorization", format!("BEARER {}", token("operator"))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({ "connections": 1, "generations": 0 }));
    let by_query = http.get(format!("{status_url}?token={}", token("operator"))).send().await.unwrap();
    assert_eq!(by_query.json::<Value>().await.unwrap(), json!({ "connections": 1, "generations": 0 }));
}

#[tokio::test]
async fn a_chat_stop_that_does_not_parse_is_refused_and_stops_nothing() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "40")]).await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "go" })).await;
    assert_eq!(ack["ok"], json!(true));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    client.send_packet(format!("2/ai,900[\"chat:stop\",{deep}]")).await;
    let mut events = Vec::new();
    let refusal = loop {
        match client.next().await {
            Incoming::Ack { id: 900, data } => break data,
            Incoming::Event { name, data } => events.push((name, data)),
            Incoming::Ack { .. } => {}
        }
    };
    assert_eq!(refusal, json!({ "ok": false, "error": { "code": "INVALID_PAYLOAD", "message": "payload must be an object" } }));
    // The refusal's chat:error comes after its ack; the answer goes on to its end.
    let end = loop {
        let (name, data) = client.next_event().await;
        match name.as_str() {
            "chat:end" | "chat:stopped" => break (name, data),
            _ => events.push((name, data)),
        }
    };
    let errors: Vec<&Value> = events.iter().filter(|(name, _)| name == "chat:error").map(|(_, data)| data).collect();
    assert_eq!(errors, vec![&json!({ "code": "INVALID_PAYLOAD", "message": "payload must be an object" })]);
    assert_eq!(end.0, "chat:end", "the answer went on");
    assert_eq!(end.1["content"], ANSWER);

    // No argument at all still stops the socket's current answer.
    let ack = client.emit_with_ack("chat:start", json!({ "message": "again" })).await;
    assert_eq!(ack["ok"], json!(true));
    client.until("chat:message").await;
    client.send_packet("2/ai,901[\"chat:stop\"]".to_owned()).await;
    let stop = loop {
        if let Incoming::Ack { id: 901, data } = client.next().await {
            break data;
        }
    };
    assert_eq!(stop, json!({ "ok": true, "stopped": true }));
    assert_eq!(read_answer(&mut client).await.final_name, "chat:stopped");
}

#[tokio::test]
async fn message_too_long_counts_utf16_units() {
    // A context large enough for the longest message: only the character limit refuses here.
    let app = spawn_app_with(&[("MAX_MESSAGE_CHARS", "32000"), ("MODEL_CONTEXT_TOKENS", "100000")]).await;
    let mut client = app.client(&user()).await;
    let over = "😀".repeat(16_001);
    let refused = client.emit_with_ack("chat:start", json!({ "message": over })).await;
    assert_eq!(refused["error"]["code"], "MESSAGE_TOO_LONG", "16,001 emoji are 32,002 UTF-16 units");
    let refused = client.emit_with_ack("chat:start", json!({ "message": "hi", "systemPrompt": over })).await;
    assert_eq!(refused["error"]["code"], "MESSAGE_TOO_LONG", "systemPrompt too");
    let ok = client.emit_with_ack("chat:start", json!({ "message": "😀".repeat(16_000) })).await;
    assert_eq!(ok["ok"], json!(true), "{ok}");
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `chatwire serve` to its end; its exit code, stdout and stderr.
fn run_to_end(vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatwire"))
        .arg("serve")
        .env_clear()
        .envs([("PORT", "0"), ("HOST", "127.0.0.1"), ("JWT_SECRET", SECRET), ("LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .envs(vars.iter().copied())
        .output()
        .expect("the chatwire binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_database_url_is_named_and_its_password_never_printed() {
    let typo = "postgress://app:hunter2-secret@127.0.0.1:5432/chat";
    let (code, stdout, stderr) = run_to_end(&[("DATABASE_URL", typo)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "DATABASE_URL: \"postgress://app:***@127.0.0.1:5432/chat\" is neither sqlite:... nor postgres://... (postgresql://...)\nchatwire: configuration error, not started"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"), "{stdout}{stderr}");

    let unreachable = format!("postgres://app:hunter2-secret@127.0.0.1:{}/chat", dead_port());
    let (code, stdout, stderr) = run_to_end(&[("DATABASE_URL", &unreachable)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("chatwire: DATABASE_URL: cannot open the database: "), "{stderr}");
    assert!(stdout.contains("DATABASE_URL: cannot open the database: "), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"), "{stdout}{stderr}");
}

fn allowed_models_warnings(child: &crate::binary::Child) -> Vec<&Value> {
    child.startup.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("ALLOWED_MODELS is unset"))).collect()
}

#[test]
fn a_real_upstream_without_allowed_models_is_warned_about_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
    let upstream = format!("http://127.0.0.1:{}/v1", dead_port());
    let base = [("HOST", "127.0.0.1"), ("JWT_SECRET", SECRET), ("DATABASE_URL", db.as_str())];

    let child = spawn_binary_with(&base, &[("OPENAI_BASE_URL", &upstream), ("OPENAI_API_KEY", "sk-test")]);
    let warnings = allowed_models_warnings(&child);
    assert_eq!(warnings.len(), 1, "{:?}", child.startup);
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(
        warnings[0]["message"],
        "ALLOWED_MODELS is unset: clients may ask the upstream for any model it serves, on your key; set ALLOWED_MODELS to the models you mean to pay for"
    );
    drop(child);

    let listed = spawn_binary_with(&base, &[("OPENAI_BASE_URL", &upstream), ("OPENAI_API_KEY", "sk-test"), ("ALLOWED_MODELS", "gpt-4")]);
    assert!(allowed_models_warnings(&listed).is_empty(), "{:?}", listed.startup);
    drop(listed);
    let mock = spawn_binary_with(&base, &[]);
    assert!(allowed_models_warnings(&mock).is_empty(), "the mock costs nothing: {:?}", mock.startup);
}
