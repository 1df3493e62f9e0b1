//! JWT_JWKS_URL against a JWKS server on loopback: RS256, ES256 and EdDSA keys, rotation
//! to a new `kid`, unknown keys refused, the server down at start-up and later; and the Clerk and
//! Supabase aliases.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::{
    helpers::*,
    ws_client::{Ended, Ws},
};

const KEYS: &str = include_str!("../fixtures/jwks-keys.json");

/// A JWKS server whose key set the test changes; counts its fetches.
#[derive(Clone)]
struct JwksServer {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<Mutex<usize>>,
    /// The `max-age` the set is served with, in seconds.
    max_age: Arc<Mutex<u64>>,
    /// Stops the listener: its signal, and the task that ends once every connection closed.
    running: Arc<Mutex<Option<Running>>>,
}

/// A running listener's stop signal and its task.
type Running = (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

impl JwksServer {
    async fn start_on(listener: tokio::net::TcpListener, kids: &[&str]) -> Self {
        let server = Self { keys: Arc::default(), fetches: Arc::default(), max_age: Arc::new(Mutex::new(3600)), running: Arc::default() };
        server.publish(kids);
        server.listen(listener);
        server
    }

    /// A server of `kids` on a port of its own.
    async fn start(kids: &[&str]) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Self::start_on(listener, kids).await, addr)
    }

    /// Serves the set on `listener` (again, after `down`).
    fn listen(&self, listener: tokio::net::TcpListener) {
        let app = Router::new().route("/.well-known/jwks.json", get(serve)).with_state(self.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        *self.running.lock().unwrap() = Some((stop, task));
    }

    /// Takes the server down: the port refuses connections once this returns.
    async fn down(&self) {
        let (stop, task) = self.running.lock().unwrap().take().expect("the JWKS server runs");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    fn publish(&self, kids: &[&str]) {
        let all: Value = serde_json::from_str(KEYS).unwrap();
        *self.keys.lock().unwrap() = kids.iter().map(|kid| all[kid.split('-').next().unwrap()].clone()).collect();
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().unwrap()
    }
}

async fn serve(State(s): State<JwksServer>) -> impl IntoResponse {
    *s.fetches.lock().unwrap() += 1;
    let keys = s.keys.lock().unwrap().clone();
    let cache = format!("public, max-age={}", s.max_age.lock().unwrap());
    ([(header::CACHE_CONTROL, cache)], axum::Json(json!({ "keys": keys })))
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/.well-known/jwks.json")
}

/// A token for `sub` signed with the fixture key of `alg`, naming `kid`.
fn signed(alg: Algorithm, kid: &str, sub: &str) -> String {
    let key = match alg {
        Algorithm::RS256 if kid == "rsa-2" => EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rsa2-private.pem")).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rsa-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(include_bytes!("../fixtures/ec-private.pem")).unwrap(),
        _ => EncodingKey::from_ed_pem(include_bytes!("../fixtures/ed-private.pem")).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let now = chrono::Utc::now().timestamp();
    encode(&header, &json!({ "sub": sub, "iat": now, "exp": now + 600 }), &key).unwrap()
}

/// The user a WADI chat connection signs in as with `token`, or how it was closed.
async fn sign_in(app: &TestApp, token: &str) -> Result<(), Ended> {
    let mut ws = Ws::connect(app.addr, &format!("/ws/chat/{}", uuid::Uuid::new_v4())).await;
    ws.next().await;
    ws.send(json!({ "type": "auth", "token": token })).await;
    ws.next_or_end().await.map(|m| assert_eq!(m["type"], "authenticated"))
}

/// Waits until `/health` says the key set has loaded (the start-up fetch runs in the background).
async fn wait_loaded(app: &TestApp) {
    for _ in 0..400 {
        if health(app).await["jwks"] == "loaded" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the JWKS never loaded");
}

/// The HTTP status of `GET /v1/status` with `token`.
async fn rest_status(app: &TestApp, token: &str) -> u16 {
    let response = reqwest::Client::new().get(format!("http://{}/v1/status", app.addr)).bearer_auth(token).send().await.unwrap();
    response.status().as_u16()
}

async fn health(app: &TestApp) -> Value {
    reqwest::get(format!("http://{}/health", app.addr)).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn jwks_keys_verify_rotation_fetches_the_new_kid_and_unknown_keys_are_refused() {
    let (jwks, addr) = JwksServer::start(&["rsa-1"]).await;
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("JWT_JWKS_URL", &url(addr))]).await;
    wait_loaded(&app).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
    // Rotation: new kids appear; a token naming one fetches the set again.
    jwks.publish(&["rsa-1", "ec-1", "ed-1"]);
    let before = jwks.fetches();
    assert_eq!(sign_in(&app, &signed(Algorithm::ES256, "ec-1", "bob")).await, Ok(()));
    assert_eq!(jwks.fetches(), before + 1);
    assert_eq!(sign_in(&app, &signed(Algorithm::EdDSA, "ed-1", "carol")).await, Ok(()), "no fetch needed: ed-1 came with ec-1");
    assert_eq!(jwks.fetches(), before + 1);
    // A key no JWKS publishes, under an unknown kid or a known one, is refused; within 10 s
    // of the last fetch for an unknown kid, no fetch is made.
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-2", "mallory")).await, Err(Ended::Closed(1008)));
    let forged = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        encode(&header, &json!({ "sub": "mallory" }), &EncodingKey::from_rsa_pem(include_bytes!("../fixtures/rsa2-private.pem")).unwrap())
            .unwrap()
    };
    assert_eq!(sign_in(&app, &forged).await, Err(Ended::Closed(1008)));
    assert_eq!(jwks.fetches(), before + 1);
    // The same keys serve the other wires: /ai and SSE.
    let mut ai = crate::client::Client::websocket(app.addr, crate::client::Credentials::token(&signed(Algorithm::EdDSA, "ed-1", "dave")))
        .await
        .unwrap();
    ai.active().await;
    assert_eq!(rest_status(&app, &signed(Algorithm::RS256, "rsa-2", "x")).await, 401);
}

#[tokio::test]
async fn with_the_jwks_server_down_at_start_up_tokens_are_refused_until_the_keys_load() {
    // A port nobody listens on yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("JWT_JWKS_URL", &url(addr))]).await;
    assert_eq!(health(&app).await["jwks"], "missing");
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Err(Ended::Closed(1008)));
    let canyon = Ws::connect_with(app.addr, &format!("/ws/c?token={}", signed(Algorithm::RS256, "rsa-1", "alice")), &[]).await;
    assert_eq!(canyon.err(), Some(401));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    JwksServer::start_on(listener, &["rsa-1"]).await;
    // The background fetch retries (0.5 s, then doubling); /health says when it loaded.
    wait_loaded(&app).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
}

#[tokio::test]
async fn with_the_jwks_server_down_later_cached_kids_pass_unknown_ones_are_refused_and_its_return_serves_new_kids() {
    let (jwks, addr) = JwksServer::start(&["rsa-1"]).await;
    // No wait between fetches for unknown kids, so the return is seen without sleeping 10 s.
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("JWT_JWKS_URL", &url(addr)), ("JWT_JWKS_REFRESH_SECONDS", "0")]).await;
    wait_loaded(&app).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));

    jwks.down().await;
    let fetched = jwks.fetches();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the JWKS port refuses connections");
    // The cached key still verifies, on every wire; /health still says the keys are there.
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
    let canyon = Ws::connect_with(app.addr, &format!("/ws/c?token={}", signed(Algorithm::RS256, "rsa-1", "alice")), &[]).await;
    assert!(canyon.is_ok());
    assert_eq!(health(&app).await["jwks"], "loaded");
    // An unknown kid tries the JWKS, which is down: refused at once (1008, 401), and the
    // server goes on serving.
    assert_eq!(sign_in(&app, &signed(Algorithm::ES256, "ec-1", "bob")).await, Err(Ended::Closed(1008)));
    let canyon = Ws::connect_with(app.addr, &format!("/ws/c?token={}", signed(Algorithm::ES256, "ec-1", "bob")), &[]).await;
    assert_eq!(canyon.err(), Some(401));
    assert_eq!(rest_status(&app, &signed(Algorithm::ES256, "ec-1", "bob")).await, 401);
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
    assert_eq!(jwks.fetches(), fetched, "nothing reached the JWKS while it was down");

    // Back, with a new kid: the next token naming it fetches the set and is accepted.
    jwks.publish(&["rsa-1", "ec-1"]);
    jwks.listen(tokio::net::TcpListener::bind(addr).await.unwrap());
    assert_eq!(sign_in(&app, &signed(Algorithm::ES256, "ec-1", "bob")).await, Ok(()));
    assert_eq!(jwks.fetches(), fetched + 1);
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
}

#[tokio::test]
async fn the_set_is_fetched_again_once_its_max_age_has_passed_and_a_key_dropped_from_it_is_refused() {
    let (jwks, addr) = JwksServer::start(&["rsa-1"]).await;
    // 10 s, the shortest the server keeps a set; the default without max-age is 600 s.
    *jwks.max_age.lock().unwrap() = 10;
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("JWT_JWKS_URL", &url(addr))]).await;
    wait_loaded(&app).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
    assert_eq!(jwks.fetches(), 1);

    // rsa-1 is retired: until the set's max-age passes the cached key still verifies,
    // with no fetch; then the server fetches the set by itself, and rsa-1 is refused.
    jwks.publish(&["ec-1"]);
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Ok(()));
    assert_eq!(jwks.fetches(), 1, "a cached kid asks the JWKS nothing");
    until("the set fetched again after its max-age", async || jwks.fetches() == 2).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::ES256, "ec-1", "bob")).await, Ok(()));
    assert_eq!(jwks.fetches(), 2, "ec-1 came with the new set");
    // rsa-1 is now an unknown kid: one fetch to look for it, then refused.
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "rsa-1", "alice")).await, Err(Ended::Closed(1008)));
    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn clerk_jwt_key_and_supabase_jwt_secret_are_aliases() {
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("CLERK_JWT_KEY", include_str!("../fixtures/rsa-public.pem"))]).await;
    assert_eq!(sign_in(&app, &signed(Algorithm::RS256, "any", "clerk-user")).await, Ok(()));
    assert!(health(&app).await.get("jwks").is_none());

    let secret = "supabase-secret";
    let app = spawn_app_with(&[("JWT_SECRET", ""), ("SUPABASE_JWT_SECRET", secret)]).await;
    let mint = |claims: Value| encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap();
    let exp = chrono::Utc::now().timestamp() + 600;
    assert_eq!(sign_in(&app, &mint(json!({ "sub": "sb-user", "aud": "authenticated", "exp": exp }))).await, Ok(()));
    assert_eq!(sign_in(&app, &mint(json!({ "sub": "sb-user", "aud": "anon", "exp": exp }))).await, Err(Ended::Closed(1008)));
    assert_eq!(sign_in(&app, &mint(json!({ "sub": "sb-user", "exp": exp }))).await, Err(Ended::Closed(1008)));
}
