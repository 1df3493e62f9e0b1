//! Cluster mode: several nodes on one PostgreSQL database and one Redis. An answer runs
//! on the node that got its `chat:start`; every other node lists, joins, resumes and
//! stops it, counts its user's limits, and closes it when its node dies (kill -9).
//!
//! These run in the PostgreSQL pass (`DATABASE_URL=postgres://...`) against the Redis
//! of `TEST_REDIS_URL` (default the local one). Without Redis they are skipped, except
//! under `CI=true`, where a missing Redis fails them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    helpers::*,
};

/// A long answer, so a test can act while it streams.
const LONG: &str = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five 😀 end.";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Redis database of one test's cluster: clusters of tests running side by side
/// must not take each other's dead nodes over (one Redis database per cluster).
fn redis_db(index: u8) -> String {
    format!("{}/{index}", redis_url().trim_end_matches('/'))
}

/// A shared fresh database and a reachable Redis, or `None`: the SQLite pass, or (outside
/// CI) no Redis.
async fn cluster_env() -> Option<String> {
    let Some(db) = fresh_postgres_database().await else {
        eprintln!("skipped: cluster tests run in the PostgreSQL pass");
        return None;
    };
    let redis = chatwire::cluster::Redis::open(&redis_url()).expect("a redis URL");
    if !redis.reachable().await {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs Redis at {}", redis_url());
        eprintln!("skipped: no Redis at {}", redis_url());
        return None;
    }
    Some(db)
}

/// `n` nodes on `db` and the Redis database `redis_index`, with `vars` on top of the test defaults.
async fn nodes(db: &str, redis_index: u8, n: usize, vars: &[(&str, &str)]) -> Vec<TestApp> {
    let redis = redis_db(redis_index);
    let mut all = Vec::new();
    for i in 0..n {
        let id = format!("test-node-{i}");
        let mut v: Vec<(&str, &str)> =
            vec![("DATABASE_URL", db), ("REDIS_URL", &redis), ("NODE_ID", &id), ("MOCK_TOKEN_DELAY_MS", "25"), ("MOCK_RESPONSE", LONG)];
        v.extend_from_slice(vars);
        all.push(spawn_app_with(&v).await);
    }
    all
}

fn utf16(s: &str) -> u64 {
    s.encode_utf16().count() as u64
}

/// Reads `n` chunks; their text.
async fn chunks(client: &mut Client, n: usize) -> String {
    let mut text = String::new();
    for _ in 0..n {
        let (chunk, _) = client.until("chat:message").await;
        text.push_str(chunk["content"].as_str().unwrap());
    }
    text
}

async fn stored(app: &TestApp, message_id: &Value) -> entity::message::Model {
    for _ in 0..400 {
        let row = app.message(message_id.as_str().unwrap()).await;
        if row.status != "streaming" {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the answer was never stored as ended");
}

#[tokio::test]
async fn another_node_lists_joins_and_resumes_an_answer_and_every_socket_ends_with_the_stored_text() {
    let Some(db) = cluster_env().await else { return };
    let nodes = nodes(&db, 2, 2, &[]).await;
    let user = user();
    let mut on_a = nodes[0].client(&user).await;
    let ack = on_a.emit_with_ack("chat:start", json!({ "message": "share" })).await;
    let head = chunks(&mut on_a, 3).await;

    let mut on_b = nodes[1].client(&user).await;
    let active = on_b.active().await;
    assert_eq!(active["generations"][0]["messageId"], ack["messageId"], "node B lists node A's answer: {active}");
    assert!(active["generations"][0]["offset"].as_u64().unwrap() >= utf16(&head));
    let joined = on_b.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
    assert_eq!(joined["ok"], json!(true), "{joined}");
    assert_eq!(joined["generations"][0]["messageId"], ack["messageId"]);
    let watched = read_answer(&mut on_b).await;
    assert_eq!(watched.chunks[0]["offset"], json!(0), "the watcher on B gets the answer from its start");
    assert_chunks_consistent(&watched.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!(watched.text(), LONG);
    assert_eq!(watched.final_name, "chat:end");

    let mut resumer = nodes[1].client(&user).await;
    let resumed = resumer.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": utf16(&head) })).await;
    assert_eq!(resumed["ok"], json!(true), "{resumed}");
    let rest = read_answer(&mut resumer).await;
    assert_eq!(format!("{head}{}", rest.text()), LONG);

    let (end, _) = on_a.until("chat:end").await;
    assert_eq!(end["content"], watched.final_data["content"]);
    let row = stored(&nodes[1], &ack["messageId"]).await;
    assert_eq!((row.content.as_str(), row.status.as_str()), (LONG, "complete"));

    // Another user sees nothing of it on any node.
    let mut stranger = nodes[1].client(&crate::helpers::user()).await;
    assert_eq!(stranger.active().await, json!({ "generations": [] }));
}

#[tokio::test]
async fn a_stop_sent_through_another_node_stops_the_answer_and_the_row_holds_what_both_sockets_got() {
    let Some(db) = cluster_env().await else { return };
    let nodes = nodes(&db, 3, 3, &[]).await;
    let user = user();
    let mut on_a = nodes[0].client(&user).await;
    let ack = on_a.emit_with_ack("chat:start", json!({ "message": "stop me" })).await;
    chunks(&mut on_a, 2).await;
    let mut on_b = nodes[1].client(&user).await;
    on_b.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
    chunks(&mut on_b, 1).await;

    let mut on_c = nodes[2].client(&user).await;
    let stop = on_c.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(stop, json!({ "ok": true, "stopped": true }), "the stop reaches node A");
    let (stopped_a, _) = on_a.until("chat:stopped").await;
    let (stopped_b, _) = on_b.until("chat:stopped").await;
    assert_eq!(stopped_a["content"], stopped_b["content"]);
    let row = stored(&nodes[2], &ack["messageId"]).await;
    assert_eq!(row.status, "stopped");
    assert_eq!(json!(row.content), stopped_a["content"]);
    assert!(row.content.len() < LONG.len(), "stopped early");

    let again = on_c.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(again, json!({ "ok": true, "stopped": false }), "it runs nowhere now");
}

#[tokio::test]
async fn limits_and_repeated_client_message_ids_count_across_nodes() {
    let Some(db) = cluster_env().await else { return };
    let nodes = nodes(&db, 4, 2, &[("MAX_CONCURRENT_STREAMS_PER_USER", "1"), ("RATE_LIMIT_PER_MINUTE", "3")]).await;
    let user = user();
    let mut on_a = nodes[0].client(&user).await;
    let first = on_a.emit_with_ack("chat:start", json!({ "message": "one", "clientMessageId": "k-1" })).await;
    assert_eq!(first["ok"], json!(true));

    let mut on_b = nodes[1].client(&user).await;
    let repeated = on_b.emit_with_ack("chat:start", json!({ "message": "one", "clientMessageId": "k-1" })).await;
    assert_eq!(repeated, first, "a repeat on another node gets the first ack");
    let limited = on_b.emit_with_ack("chat:start", json!({ "message": "two" })).await;
    assert_eq!(limited["error"]["code"], "RATE_LIMIT", "one answer at once, counted on every node: {limited}");
    read_answer(&mut on_a).await;
    let conversation = first["conversationId"].as_str().unwrap();
    assert_eq!(nodes[1].messages(conversation).await.len(), 2, "the repeat started nothing");

    // Starts per minute: one on A, one refused on B by the concurrency limit (it counts
    // as a start), so one more is left anywhere, then none.
    let third = on_b.emit_with_ack("chat:start", json!({ "message": "three" })).await;
    assert_eq!(third["ok"], json!(true), "{third}");
    read_answer(&mut on_b).await;
    let fourth = on_a.emit_with_ack("chat:start", json!({ "message": "four" })).await;
    assert_eq!(fourth["error"]["code"], "RATE_LIMIT", "the bucket is shared: {fourth}");
}

#[tokio::test]
async fn a_node_killed_mid_answer_loses_nothing_a_client_saw_and_another_node_closes_it() {
    let Some(db) = cluster_env().await else { return };
    let redis = redis_db(9);
    let lease = "1000";
    let doomed =
        spawn_binary(&db, &[("REDIS_URL", &redis), ("NODE_LEASE_MS", lease), ("MOCK_TOKEN_DELAY_MS", "25"), ("MOCK_RESPONSE", LONG)]);
    let survivor = &nodes(&db, 9, 1, &[("NODE_LEASE_MS", lease)]).await[0];
    let user = user();
    let mut client = Client::websocket(doomed.addr, Credentials::token(&token(&user))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "die midway" })).await;
    let head = chunks(&mut client, 8).await;
    let mut doomed = doomed;
    doomed.process.kill().unwrap();
    doomed.process.wait().unwrap();
    let killed = Instant::now();

    let mut again = survivor.client(&user).await;
    let resumed = again.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": utf16(&head) })).await;
    assert_eq!(resumed["ok"], json!(true), "{resumed}");
    let rest = read_answer(&mut again).await;
    let closed = killed.elapsed();
    assert_eq!(rest.final_name, "chat:error");
    assert_eq!(rest.final_data["code"], "UNAVAILABLE");
    assert_eq!(rest.final_data["messageId"], ack["messageId"]);
    let got = format!("{head}{}", rest.text());
    let row = stored(survivor, &ack["messageId"]).await;
    assert_eq!(row.content, got, "the stored row is exactly what the client got");
    assert!(LONG.starts_with(&got));
    assert_eq!((row.status.as_str(), row.error_code.as_deref()), ("error", Some("UNAVAILABLE")));
    eprintln!(
        "kill -9 mid-answer: the client had {} chars before the kill, {} in all; {} stored; closed {closed:?} after the kill (lease {lease} ms)",
        utf16(&head),
        utf16(&got),
        utf16(&row.content)
    );

    // A resume from the start on the survivor replays the stored row: the same text.
    let mut late = survivor.client(&user).await;
    late.emit_with_ack("chat:resume", json!({ "messageId": ack["messageId"], "offset": 0 })).await;
    let replay = read_answer(&mut late).await;
    assert_eq!((replay.text(), replay.final_data["code"].clone()), (got, json!("UNAVAILABLE")));
}

#[tokio::test]
async fn health_names_the_node_and_its_redis() {
    let Some(db) = cluster_env().await else { return };
    let node = &nodes(&db, 6, 1, &[]).await[0];
    let body: Value = reqwest::get(format!("http://{}/health", node.addr)).await.unwrap().json().await.unwrap();
    assert_eq!((&body["nodeId"], &body["redis"], &body["status"]), (&json!("test-node-0"), &json!("ok"), &json!("ok")));
}

#[tokio::test]
async fn metrics_count_the_nodes_redis_round_trips() {
    let Some(db) = cluster_env().await else { return };
    let node = &nodes(&db, 13, 1, &[("MOCK_RESPONSE", "counted in redis")]).await[0];
    let before = crate::metrics::scrape(node).await.counter("chatwire_redis_commands_total", &[]);
    let mut client = node.client(&user()).await;
    client.emit("chat:start", json!({ "message": "count me" })).await;
    let (end, _) = client.until("chat:end").await;
    assert_eq!(end["content"], json!("counted in redis"));
    let after = crate::metrics::scrape(node).await.counter("chatwire_redis_commands_total", &[]);
    // A start claims, appends and ends through Redis: several round trips at least.
    assert!(after >= before + 3.0, "redis commands went from {before} to {after}");
}

#[tokio::test]
async fn each_nodes_admin_page_lists_every_node_of_the_cluster() {
    let Some(db) = cluster_env().await else { return };
    let hash = bcrypt::hash("pw", 4).unwrap();
    let nodes = nodes(&db, 14, 2, &[("ADMIN_USERNAME", "ops"), ("ADMIN_PASSWORD", &hash), ("MOCK_TOKEN_DELAY_MS", "300")]).await;
    let listed = |node: &TestApp| {
        let url = format!("http://{}/admin/api/stats", node.addr);
        async move {
            let body: Value = reqwest::Client::new().get(url).basic_auth("ops", Some("pw")).send().await.unwrap().json().await.unwrap();
            let mut ids: Vec<String> = body["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
            let first = ids.first().cloned();
            ids.sort();
            (first, ids)
        }
    };
    // Each node publishes its row every 2 s; wait for the other's to arrive.
    for (i, node) in nodes.iter().enumerate() {
        let mut seen = listed(node).await;
        for _ in 0..100 {
            if seen.1.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = listed(node).await;
        }
        let this = format!("test-node-{i}");
        assert_eq!(seen.0.as_deref(), Some(this.as_str()), "a node lists itself first");
        assert_eq!(seen.1, ["test-node-0", "test-node-1"], "node {i} lists both nodes");
    }
    // An answer running on node 1 is listed on node 0's page, and its Stop reaches it.
    let mut client = nodes[1].client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "seen from the other node" })).await;
    let admin = reqwest::Client::new();
    let mut listed = Value::Null;
    for _ in 0..100 {
        let body: Value = admin
            .get(format!("http://{}/admin/api/answers", nodes[0].addr))
            .basic_auth("ops", Some("pw"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(a) = body["answers"].as_array().and_then(|a| a.iter().find(|a| a["messageId"] == ack["messageId"])) {
            listed = a.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["node"], json!("test-node-1"), "{listed}");
    let stop = admin
        .post(format!("http://{}/admin/api/answers/{}/stop", nodes[0].addr, ack["messageId"].as_str().unwrap()))
        .basic_auth("ops", Some("pw"))
        .header("x-chatwire-admin", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(stop.json::<Value>().await.unwrap(), json!({ "ok": true, "stopped": true }));
    let (stopped, _) = client.until("chat:stopped").await;
    assert_eq!(stopped["messageId"], ack["messageId"]);
}

/// A private `redis-server` on a free port, killed with the test (the shared one is
/// never disturbed).
struct PrivateRedis {
    port: u16,
    process: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, process: None };
        redis.restart();
        redis
    }

    /// Starts it again on the same port, empty (no persistence: the worst case).
    fn restart(&mut self) {
        let process = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.process = Some(process);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn health(app: &TestApp) -> Value {
    reqwest::get(format!("http://{}/health", app.addr)).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn while_redis_is_down_running_answers_finish_and_starts_are_unavailable_then_the_nodes_recover() {
    let Some(db) = cluster_env().await else { return };
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let id = format!("restart-node-{i}");
        let vars =
            [("DATABASE_URL", db.as_str()), ("REDIS_URL", &url), ("NODE_ID", &id), ("MOCK_TOKEN_DELAY_MS", "40"), ("MOCK_RESPONSE", LONG)];
        nodes.push(spawn_app_with(&vars).await);
    }
    let user = user();
    let mut on_a = nodes[0].client(&user).await;
    let ack = on_a.emit_with_ack("chat:start", json!({ "message": "through the outage" })).await;
    chunks(&mut on_a, 3).await;
    let mut on_b = nodes[1].client(&user).await;
    on_b.emit_with_ack("chat:join", json!({ "conversationId": ack["conversationId"] })).await;
    chunks(&mut on_b, 1).await;

    redis.kill();
    let mut other = nodes[0].client(&user).await;
    let asked = Instant::now();
    let refused = other.emit_with_ack("chat:start", json!({ "message": "now?" })).await;
    eprintln!("chat:start while Redis is down: {refused} after {:?}", asked.elapsed());
    assert_eq!(refused["error"]["code"], "UNAVAILABLE");
    let down = health(&nodes[0]).await;
    assert_eq!((&down["redis"], &down["status"]), (&json!("unreachable"), &json!("ok")));
    let ready = reqwest::get(format!("http://{}/ready", nodes[0].addr)).await.unwrap();
    assert_eq!(ready.status(), 503, "a node without Redis takes no new traffic");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], json!("down"), "{ready}");

    let (end, _) = on_a.until("chat:end").await;
    assert_eq!(end["content"], json!(LONG), "the running answer finishes on its node");
    assert_eq!(stored(&nodes[0], &ack["messageId"]).await.content, LONG);

    redis.restart();
    let back = Instant::now();
    let watched = read_answer(&mut on_b).await;
    assert_eq!(
        (watched.final_name.as_str(), watched.final_data["content"].clone()),
        ("chat:end", json!(LONG)),
        "the watcher on B ends too"
    );
    // The nodes reconnect by themselves: cross-node starts, lists and stops work again.
    let second = loop {
        let ack = other.emit_with_ack("chat:start", json!({ "message": "again" })).await;
        if ack["ok"] == json!(true) {
            break ack;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no start within 10 s of Redis coming back: {ack}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listed = loop {
        let mut on_b2 = nodes[1].client(&user).await;
        let active = on_b2.active().await;
        if active["generations"].as_array().is_some_and(|g| g.iter().any(|a| a["messageId"] == second["messageId"])) {
            break on_b2;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "node B never listed the new answer: {active}");
    };
    let mut on_b2 = listed;
    // Node A subscribes again on its next lease renewal.
    loop {
        let stop = on_b2.emit_with_ack("chat:stop", json!({ "messageId": second["messageId"] })).await;
        if stop == json!({ "ok": true, "stopped": true }) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no stop across nodes within 10 s: {stop}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.until("chat:stopped").await;
    eprintln!("cluster recovered {:?} after Redis came back", back.elapsed());
    assert_eq!(health(&nodes[1]).await["redis"], "ok");
}

#[tokio::test]
async fn a_redis_that_lost_its_data_gets_every_running_answer_listed_again() {
    let Some(db) = cluster_env().await else { return };
    let redis = PrivateRedis::start();
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let id = format!("relist-node-{i}");
        let vars = [
            ("DATABASE_URL", db.as_str()),
            ("REDIS_URL", &url),
            ("NODE_ID", &id),
            ("MOCK_TOKEN_DELAY_MS", "150"),
            ("MOCK_RESPONSE", LONG),
            ("NODE_LEASE_MS", "600"),
        ];
        nodes.push(spawn_app_with(&vars).await);
    }
    let user = user();
    let mut on_a = nodes[0].client(&user).await;
    let ack = on_a.emit_with_ack("chat:start", json!({ "message": "outlive the flush" })).await;
    chunks(&mut on_a, 1).await;
    let shared = chatwire::cluster::Redis::open(&url).unwrap();
    shared.query::<String>(&redis::cmd("FLUSHALL")).await.unwrap();

    let flushed = Instant::now();
    loop {
        let mut on_b = nodes[1].client(&user).await;
        let active = on_b.active().await;
        if active["generations"][0]["messageId"] == ack["messageId"] {
            let stop = on_b.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
            assert_eq!(stop, json!({ "ok": true, "stopped": true }));
            break;
        }
        assert!(flushed.elapsed() < Duration::from_secs(10), "node B never listed the answer again: {active}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stopped, _) = on_a.until("chat:stopped").await;
    assert_eq!(json!(stored(&nodes[1], &ack["messageId"]).await.content), stopped["content"]);
}

#[test]
fn redis_with_sqlite_refuses_to_start_and_says_why() {
    let (code, stderr) = crate::binary::refused_start(&[
        ("JWT_SECRET", SECRET),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("DATABASE_URL", "sqlite://never.db?mode=rwc"),
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("REDIS_URL: cluster mode needs a database every node shares"), "{stderr}");
}
