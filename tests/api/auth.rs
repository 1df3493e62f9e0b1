//! Socket authentication: where the token may be, what makes it valid, and that
//! every refusal reads exactly `unauthorized`.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::{
    client::{Client, Credentials, Refused},
    helpers::*,
};

async fn refused(app: &TestApp, creds: Credentials) -> String {
    match Client::websocket(app.addr, creds).await {
        Err(Refused(message)) => message,
        Ok(_) => panic!("connection was accepted"),
    }
}

async fn whoami(client: &mut Client) -> String {
    let ack = client.emit_with_ack("chat:start", json!({ "message": "who am I?" })).await;
    ack["conversationId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_bad_credential_is_refused_as_unauthorized() {
    let app = spawn_app_with(&[("JWT_ISSUER", "auth.example"), ("JWT_AUDIENCE", "chat")]).await;
    let good = json!({ "sub": "u1", "iss": "auth.example", "aud": "chat" });
    let now = chrono::Utc::now().timestamp();
    let wrong_secret = encode(
        &Header::default(),
        &json!({ "sub": "u1", "iss": "auth.example", "aud": "chat", "exp": now + 60 }),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let mut expired = good.clone();
    expired["exp"] = json!(now - 10);
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now + 600);
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("evil.example");
    let mut wrong_audience = good.clone();
    wrong_audience["aud"] = json!("billing");
    let no_sub = json!({ "iss": "auth.example", "aud": "chat" });

    let cases = [
        ("no token", Credentials::default()),
        ("garbage", Credentials::token("not.a.jwt")),
        ("wrong secret", Credentials::token(&wrong_secret)),
        ("expired", Credentials::token(&token_with(expired))),
        ("not yet valid", Credentials::token(&token_with(not_yet))),
        ("wrong issuer", Credentials::token(&token_with(wrong_issuer))),
        ("wrong audience", Credentials::token(&token_with(wrong_audience))),
        ("no sub", Credentials::token(&token_with(no_sub))),
        ("alg none", Credentials::token(&format!("eyJhbGciOiJub25lIn0.{}.", "eyJzdWIiOiJ1MSJ9"))),
    ];
    for (what, creds) in cases {
        assert_eq!(refused(&app, creds).await, "unauthorized", "{what}");
    }
    assert!(Client::websocket(app.addr, Credentials::token(&token_with(good))).await.is_ok());
}

#[tokio::test]
async fn the_token_may_come_from_auth_header_or_query() {
    let app = spawn_app().await;
    let (a, b, c) = (user(), user(), user());
    let mut by_auth = Client::websocket(app.addr, Credentials::token(&token(&a))).await.unwrap();
    let mut by_header = Client::websocket(app.addr, Credentials { bearer: Some(token(&b)), ..Default::default() }).await.unwrap();
    let mut by_query = Client::websocket(app.addr, Credentials { query_token: Some(token(&c)), ..Default::default() }).await.unwrap();
    for (client, expected) in [(&mut by_auth, &a), (&mut by_header, &b), (&mut by_query, &c)] {
        let conversation = whoami(client).await;
        let rows = app.messages(&conversation).await;
        assert_eq!(&rows[0].user_id, expected);
    }
    // auth.token wins over the others.
    let creds = Credentials { auth: Some(json!({ "token": token(&a) })), bearer: Some("junk".into()), query_token: Some("junk".into()) };
    assert!(Client::websocket(app.addr, creds).await.is_ok());
}

#[tokio::test]
async fn a_numeric_sub_becomes_the_user_id_and_tokens_without_exp_pass() {
    let app = spawn_app().await;
    let claims = json!({ "sub": 12345, "iat": chrono::Utc::now().timestamp() });
    let nest_style = encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let mut client = Client::websocket(app.addr, Credentials::token(&nest_style)).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hi", "userId": 12345 })).await;
    assert_eq!(ack["ok"], json!(true));
    let rows = app.messages(ack["conversationId"].as_str().unwrap()).await;
    assert_eq!(rows[0].user_id, "12345");
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_a_public_key() {
    for (alg, private, public) in [
        (Algorithm::RS256, include_str!("../fixtures/rsa-private.pem"), include_str!("../fixtures/rsa-public.pem")),
        (Algorithm::ES256, include_str!("../fixtures/ec-private.pem"), include_str!("../fixtures/ec-public.pem")),
    ] {
        let app = spawn_app_with(&[("JWT_SECRET", ""), ("JWT_PUBLIC_KEY", public)]).await;
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        };
        let claims = json!({ "sub": "pk-user", "exp": chrono::Utc::now().timestamp() + 60 });
        let signed = encode(&Header::new(alg), &claims, &key).unwrap();
        assert!(Client::websocket(app.addr, Credentials::token(&signed)).await.is_ok(), "{alg:?}");
        // An HS256 token is refused when only a public key is configured.
        assert_eq!(refused(&app, Credentials::token(&token("pk-user"))).await, "unauthorized");
    }
}

#[tokio::test]
async fn open_mode_takes_the_user_from_auth_user_id() {
    let app = spawn_app_with(&[("JWT_SECRET", "")]).await;
    let creds = Credentials { auth: Some(json!({ "userId": "guest-7" })), ..Default::default() };
    let mut client = Client::websocket(app.addr, creds).await.unwrap();
    let conversation = whoami(&mut client).await;
    assert_eq!(app.messages(&conversation).await[0].user_id, "guest-7");
    // Unnamed connections are users of their own: two testers share nothing.
    let mut first = Client::websocket(app.addr, Credentials::default()).await.unwrap();
    let mut second = Client::websocket(app.addr, Credentials::default()).await.unwrap();
    let (a, b) = (whoami(&mut first).await, whoami(&mut second).await);
    let (a, b) = (app.messages(&a).await[0].user_id.clone(), app.messages(&b).await[0].user_id.clone());
    assert!(a.starts_with("anonymous-") && b.starts_with("anonymous-") && a != b, "{a} {b}");
}

#[tokio::test]
async fn open_mode_takes_the_user_from_the_latest_chat_start_user_id_for_every_later_event() {
    let app = spawn_app_with(&[("JWT_SECRET", "")]).await;
    let creds = Credentials { auth: Some(json!({ "userId": "from-handshake" })), ..Default::default() };
    let mut client = Client::websocket(app.addr, creds).await.unwrap();
    // The NestJS guide's client, as it is written: userId in every chat:start.
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hi", "userId": "guide-user", "conversationId": null })).await;
    assert_eq!(ack["ok"], json!(true));
    read_answer(&mut client).await;
    assert_eq!(app.messages(ack["conversationId"].as_str().unwrap()).await[0].user_id, "guide-user");
    // Later events act as that user: a resume without userId finds the answer.
    let resumed = client.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": 0 })).await;
    assert_eq!(resumed["status"], "complete");
    read_answer(&mut client).await;
    // Another connection naming another user does not reach it.
    let mut other = Client::websocket(app.addr, Credentials::default()).await.unwrap();
    let refused = other.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(refused["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn with_tokens_a_different_payload_user_id_is_still_forbidden() {
    let app = spawn_app().await;
    let user = user();
    let mut client = app.client(&user).await;
    let refused = client.emit_with_ack("chat:start", json!({ "message": "hi", "userId": "someone-else" })).await;
    assert_eq!(refused["error"]["code"], "FORBIDDEN");
    let ok = client.emit_with_ack("chat:start", json!({ "message": "hi", "userId": user, "conversationId": null })).await;
    assert_eq!(ok["ok"], json!(true), "the guide's client, with its own user's id, works");
}
