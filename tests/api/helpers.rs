//! `spawn_app`: the real server on port 0 with its own database and the built-in
//! mock model over real HTTP, started through the same entry points as `main`.

use std::{collections::HashMap, net::SocketAddr};

use chatwire::{AppState, Application, Config, providers::mock::MockUpstream};
use jsonwebtoken::{EncodingKey, Header, encode};
use sea_orm::{ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::client::{Client, Credentials};

pub const SECRET: &str = "test-secret-for-chatwire";
pub const ANSWER: &str = "Quantum computers use qubits, which can be zero and one at once. 😀 Done.";

/// A running server for one test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The built-in mock, unless the test points the server at its own upstream.
    mock: Option<MockUpstream>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// The built-in mock model this server talks to.
    pub fn mock(&self) -> &MockUpstream {
        self.mock.as_ref().expect("this test server runs the built-in mock")
    }

    /// A WebSocket client authenticated as `user`.
    pub async fn client(&self, user: &str) -> Client {
        Client::websocket(self.addr, Credentials::token(&token(user))).await.expect("connect")
    }

    /// The messages of a conversation as stored, oldest first.
    pub async fn messages(&self, conversation_id: &str) -> Vec<entity::message::Model> {
        let id = Uuid::parse_str(conversation_id).unwrap();
        entity::Message::find()
            .filter(entity::message::Column::ConversationId.eq(id))
            .order_by_asc(entity::message::Column::Id)
            .all(&self.state.db)
            .await
            .unwrap()
    }

    /// One stored message.
    pub async fn message(&self, id: &str) -> entity::message::Model {
        entity::Message::find_by_id(Uuid::parse_str(id).unwrap()).one(&self.state.db).await.unwrap().expect("stored message")
    }
}

impl TestApp {
    /// Starts the server's shutdown, as SIGTERM does; the database stays readable.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HS256 token for `sub`, as a NestJS `JwtService` signs it (with `iat`, `exp`).
pub fn token(sub: &str) -> String {
    token_with(json!({ "sub": sub }))
}

/// An HS256 token with exactly these claims (plus `iat`, and `exp` unless given).
pub fn token_with(mut claims: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now);
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now + 3600);
    }
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A fresh user id, so tests sharing a database never meet.
pub fn user() -> String {
    format!("user-{}", Uuid::new_v4())
}

/// Starts the server with the default test settings changed by `vars`.
pub async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        chatwire::telemetry::init(chatwire::telemetry::LogFormat::Pretty);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("JWT_SECRET", SECRET),
        ("MOCK_RESPONSE", ANSWER),
        ("MOCK_TOKEN_DELAY_MS", "5"),
        ("CHECKPOINT_INTERVAL_MS", "200"),
        // Tests run side by side on a loaded machine: its scheduling lag is no overload
        // (the overload tests set their own limits).
        ("OVERLOAD_LAG_MS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let url = database_url(&dir).await;
    if url.starts_with("postgres") {
        // Tests run side by side on one PostgreSQL server with 100 connections.
        env.insert("DATABASE_MAX_CONNECTIONS".into(), "4".into());
    }
    env.insert("DATABASE_URL".into(), url);
    for (k, v) in vars {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    let config = Config::from_vars(env).expect("test config");
    let app = Application::build(config).await.expect("server starts");
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let mock = app.mock_upstream().cloned();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp { addr, state, mock, stop: Some(stop), _dir: dir }
}

/// Starts the server with the default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A SQLite file in the test's own directory, or, when `DATABASE_URL` names a
/// PostgreSQL server, a fresh database on it (`chatwire_t_*`, dropped by `.ci/run`).
async fn database_url(dir: &tempfile::TempDir) -> String {
    match fresh_postgres_database().await {
        Some(url) => url,
        None => format!("sqlite://{}/chatwire.db?mode=rwc", dir.path().display()),
    }
}

/// A new, empty database on the PostgreSQL server `DATABASE_URL` names, if it names one.
pub async fn fresh_postgres_database() -> Option<String> {
    let url = std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres"))?;
    let name = format!("chatwire_t_{}", Uuid::new_v4().simple());
    let admin = Database::connect(&url).await.expect("PostgreSQL from DATABASE_URL");
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    admin.close().await.unwrap();
    let (base, _) = url.rsplit_once('/').expect("a database URL with a path");
    // The server ends sessions idle for 10 s: pools of finished tests do not pile up
    // toward the server's connection limit (a live pool reconnects on its next use).
    Some(format!("{base}/{name}?options=-c%20idle_session_timeout%3D10000"))
}

/// Collects one answer's events after `chat:start`: the chunks and the final event.
pub struct Answer {
    pub chunks: Vec<Value>,
    pub final_name: String,
    pub final_data: Value,
    /// Every event name in arrival order.
    pub order: Vec<String>,
}

impl Answer {
    /// The concatenated chunk contents.
    pub fn text(&self) -> String {
        self.chunks.iter().map(|c| c["content"].as_str().unwrap()).collect()
    }
}

/// Reads events until `chat:end`, `chat:stopped` or `chat:error`.
pub async fn read_answer(client: &mut Client) -> Answer {
    let mut chunks = Vec::new();
    let mut order = Vec::new();
    loop {
        let (name, data) = client.next_event().await;
        order.push(name.clone());
        match name.as_str() {
            "chat:message" => chunks.push(data),
            "chat:end" | "chat:stopped" | "chat:error" => {
                return Answer { chunks, final_name: name, final_data: data, order };
            }
            _ => {}
        }
    }
}

/// Checks `seq` counts from 0 and `offset` is the UTF-16 length before each chunk.
pub fn assert_chunks_consistent(chunks: &[Value], message_id: &Value, conversation_id: &Value) {
    let mut offset = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["seq"], json!(i), "seq of chunk {i}");
        assert_eq!(c["offset"], json!(offset), "offset of chunk {i}");
        assert_eq!(c["isComplete"], json!(false));
        assert_eq!(&c["messageId"], message_id);
        assert_eq!(&c["conversationId"], conversation_id);
        offset += c["content"].as_str().unwrap().encode_utf16().count() as u64;
    }
}

/// Stores a turn directly, leaving its answer `streaming` (as a process killed mid-answer
/// leaves it); gives the answer's id.
pub async fn streaming_answer(app: &TestApp, user: &str) -> Uuid {
    let turn = chatwire::store::NewTurn {
        user_id: user.into(),
        conversation_id: None,
        message: "question".into(),
        model: "gpt-4".into(),
        client_message_id: None,
        parent_id: None,
        context_messages: 0,
        preset: None,
        attachments: None,
    };
    chatwire::store::begin_chat(&app.state.db, turn).await.unwrap().assistant_message_id
}

/// Waits until `done` holds; the condition is state the server reaches by itself.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !done().await {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("never: {what}"));
}
