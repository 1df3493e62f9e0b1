//! The admin view: off unless configured; the `@socket.io/admin-ui` protocol on
//! `/admin` (login, `config`, `all_sockets`, the feed of `/ai` sockets and events, the
//! UI's actions); chatwire's own page and its API behind HTTP Basic (the running
//! answers, the counters, stopping an answer as its owner would).

use serde_json::{Value, json};

use crate::{
    binary::{refused_start, spawn_binary},
    client::{Client, Credentials, Refused},
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

const ADMIN: &str = "ops";
const PASSWORD: &str = "correct horse battery";
const FEATURES: [&str; 8] = ["JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"];

/// A server with the admin view on (a cheap bcrypt cost: the tests check many logins).
async fn admin_app(extra: &[(&str, &str)]) -> TestApp {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let mut vars = vec![("ADMIN_USERNAME", ADMIN), ("ADMIN_PASSWORD", hash.as_str()), ("NODE_ID", "node-test")];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

async fn admin_socket(app: &TestApp, auth: Value) -> Result<Client, Refused> {
    Client::websocket_to(app.addr, "/admin", Credentials { auth: Some(auth), ..Default::default() }).await
}

/// A logged-in admin socket, past its welcome (`config`, `all_sockets`, `server_stats`).
async fn logged_in_admin(app: &TestApp) -> (Client, Vec<Value>) {
    let mut admin = admin_socket(app, json!({ "username": ADMIN, "password": PASSWORD })).await.expect("admin login");
    let (sockets, _) = admin.until("all_sockets").await;
    admin.until("server_stats").await;
    (admin, sockets.as_array().cloned().unwrap_or_default())
}

fn get(app: &TestApp, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(format!("http://{}{path}", app.addr))
}

fn post(app: &TestApp, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().post(format!("http://{}{path}", app.addr)).basic_auth(ADMIN, Some(PASSWORD))
}

async fn json_of(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Events of the admin feed until `last` says it is done, keeping those about `sid`.
async fn feed_until(admin: &mut Client, sid: &str, last: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    loop {
        let (name, data) = admin.next_event().await;
        if data[1] == sid || data[0]["id"] == sid {
            let done = last(&name, &data);
            seen.push((name, data));
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn unset_the_admin_view_does_not_exist() {
    let app = spawn_app().await;
    let refused = admin_socket(&app, json!({ "username": ADMIN, "password": PASSWORD })).await.err().map(|Refused(m)| m);
    assert_eq!(refused.as_deref(), Some("Invalid namespace"));
    for path in ["/admin", "/admin/api/stats", "/admin/api/answers"] {
        assert_eq!(get(&app, path).basic_auth(ADMIN, Some(PASSWORD)).send().await.unwrap().status(), 404, "{path}");
    }
}

#[tokio::test]
async fn the_page_asks_for_basic_credentials_and_counts_failed_logins_per_address() {
    let app = admin_app(&[]).await;
    let response = get(&app, "/admin").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Basic realm=\"chatwire admin\", charset=\"UTF-8\"");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "unauthorized" } })
    );

    let page = get(&app, "/admin").basic_auth(ADMIN, Some(PASSWORD)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("<script src=\"/admin/admin.js\"></script>"));
    assert_eq!(get(&app, "/admin/admin.js").basic_auth(ADMIN, Some(PASSWORD)).send().await.unwrap().status(), 200);

    // A success is remembered, so only failures spend the address's attempts: 1 + 9 of 10.
    for _ in 0..9 {
        assert_eq!(get(&app, "/admin").basic_auth(ADMIN, Some("guess")).send().await.unwrap().status(), 401);
    }
    assert_eq!(get(&app, "/admin").basic_auth("root", Some(PASSWORD)).send().await.unwrap().status(), 429, "the 11th check");
    assert_eq!(get(&app, "/admin").basic_auth(ADMIN, Some(PASSWORD)).send().await.unwrap().status(), 200, "remembered");
}

#[tokio::test]
async fn the_api_lists_running_answers_and_counters_and_the_stop_button_stops_as_the_owner_would() {
    let fake = FakeUpstream::start(vec![Reply::SilentAfter(vec!["one ", "two ", "three "]), Reply::Status(400, "bad request")]).await;
    let app = admin_app(&[("OPENAI_BASE_URL", &fake.base_url()), ("OPENAI_API_KEY", "sk-test"), ("UPSTREAM_ATTEMPTS", "1")]).await;
    let user = user();
    let mut owner = app.client(&user).await;
    let ack = owner.emit_with_ack("chat:start", json!({ "message": "count" })).await;
    let (message_id, conversation_id) = (ack["messageId"].clone(), ack["conversationId"].clone());
    let mut text = String::new();
    while text != "one two three " {
        let (chunk, _) = owner.until("chat:message").await;
        text.push_str(chunk["content"].as_str().unwrap());
    }

    let (status, mut listed) = json_of(get(&app, "/admin/api/answers").basic_auth(ADMIN, Some(PASSWORD))).await;
    assert_eq!(status, 200);
    let answer = &mut listed["answers"][0];
    assert!(answer["startedAt"].as_str().unwrap().ends_with('Z') && answer["ageMs"].is_u64(), "{answer}");
    answer["startedAt"] = json!("t");
    answer["ageMs"] = json!(0);
    let expected = json!({ "messageId": message_id, "conversationId": conversation_id, "userId": user, "model": "gpt-4", "tokens": 3, "startedAt": "t", "ageMs": 0, "node": "node-test" });
    assert_eq!(listed, json!({ "node": "node-test", "answers": [expected] }));

    // Cross-site or header-less posts are refused and stop nothing.
    let stop_path = format!("/admin/api/answers/{}/stop", message_id.as_str().unwrap());
    assert_eq!(json_of(post(&app, &stop_path)).await.0, 403);
    assert_eq!(json_of(post(&app, &stop_path).header("x-chatwire-admin", "1").header("origin", "http://chat.example")).await.0, 403);
    assert_eq!(json_of(post(&app, &stop_path).header("x-chatwire-admin", "1")).await, (200, json!({ "ok": true, "stopped": true })));
    let (end, _) = owner.until("chat:stopped").await;
    assert_eq!(end, json!({ "messageId": message_id, "conversationId": conversation_id, "content": "one two three " }));
    let row = app.message(message_id.as_str().unwrap()).await;
    assert_eq!((row.content.as_str(), row.status.as_str(), row.finish_reason.as_deref()), ("one two three ", "stopped", Some("stopped")));
    assert_eq!(json_of(get(&app, "/admin/api/answers").basic_auth(ADMIN, Some(PASSWORD))).await.1["answers"], json!([]));
    assert_eq!(json_of(post(&app, &stop_path).header("x-chatwire-admin", "1")).await.1, json!({ "ok": true, "stopped": false }));
    assert_eq!(json_of(post(&app, "/admin/api/answers/nope/stop").header("x-chatwire-admin", "1")).await.0, 400);

    // One answer that fails upstream, one start refused (another user's conversation).
    owner.emit("chat:start", json!({ "message": "x" })).await;
    assert_eq!(read_answer(&mut owner).await.final_name, "chat:error");
    let mut stranger = app.client(&crate::helpers::user()).await;
    let refused = stranger.emit_with_ack("chat:start", json!({ "message": "x", "conversationId": conversation_id })).await;
    assert_eq!(refused["error"]["code"], "NOT_FOUND");

    let (status, mut stats) = json_of(get(&app, "/admin/api/stats").basic_auth(ADMIN, Some(PASSWORD))).await;
    assert_eq!(status, 200);
    let node = &mut stats["nodes"][0];
    let samples = node["samples"].take();
    let sum = |field: &str| samples.as_array().unwrap().iter().map(|s| s[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("tokens"), sum("failed"), sum("refused")), (3, 1, 1), "the samples add up to the counters");
    assert!(node["uptimeSeconds"].is_u64() && node["startedAt"].is_string() && node["hostname"].is_string());
    for field in ["uptimeSeconds", "startedAt", "hostname"] {
        node[field] = json!(null);
    }
    let expected = json!({
        "id": "node-test", "hostname": null, "pid": std::process::id(), "startedAt": null, "uptimeSeconds": null,
        "sockets": 2, "running": 0, "totals": { "tokens": 3, "failed": 1, "refused": 1 },
        "feed": { "dropped": 0, "undelivered": 0 }, "samples": null,
    });
    assert_eq!(stats, json!({ "intervalMs": 1000, "nodes": [expected] }));
}

#[tokio::test]
async fn the_admin_namespace_wants_the_right_credentials_then_sends_config_and_a_session() {
    let app = admin_app(&[]).await;
    for auth in [
        json!({ "username": ADMIN, "password": "wrong" }),
        json!({ "username": "root", "password": PASSWORD }),
        json!({}),
        json!({ "sessionId": "made-up" }),
    ] {
        let refused = admin_socket(&app, auth.clone()).await.err().map(|Refused(m)| m);
        assert_eq!(refused.as_deref(), Some("unauthorized"), "{auth}");
    }
    let mut admin = admin_socket(&app, json!({ "username": ADMIN, "password": PASSWORD })).await.expect("the right password");
    let (config, before) = admin.until("config").await;
    assert_eq!(config, json!({ "supportedFeatures": FEATURES }));
    let sessions: Vec<&Value> = before.iter().filter(|(name, _)| name == "session").map(|(_, id)| id).collect();
    assert_eq!(sessions.len(), 1, "{before:?}");
    let session = sessions[0].as_str().unwrap().to_owned();
    assert!(session.len() == 32 && session.chars().all(|c| c.is_ascii_hexdigit()), "{session}");
    let (stats, _) = admin.until("server_stats").await;
    assert_eq!((&stats["serverId"], &stats["pid"]), (&json!("node-test"), &json!(std::process::id())));
    assert_eq!(
        stats["namespaces"],
        json!([{ "name": "/", "socketsCount": 0 }, { "name": "/ai", "socketsCount": 0 }, { "name": "/admin", "socketsCount": 1 }])
    );

    // The UI comes back after a reload with its session alone.
    let mut again = admin_socket(&app, json!({ "sessionId": session })).await.expect("the session");
    let (_, before) = again.until("config").await;
    assert!(before.iter().all(|(name, _)| name != "session"), "{before:?}");
}

#[tokio::test]
async fn all_sockets_lists_the_ai_sockets_with_their_users_and_no_credentials() {
    let app = admin_app(&[]).await;
    let user = user();
    let bearer = Credentials { bearer: Some(token(&user)), ..Default::default() };
    let _chat = Client::websocket(app.addr, bearer).await.unwrap();
    let (_admin, sockets) = logged_in_admin(&app).await;
    let ai: Vec<&Value> = sockets.iter().filter(|s| s["nsp"] == "/ai").collect();
    assert_eq!(ai.len(), 1, "{sockets:?}");
    let socket = ai[0];
    let sid = socket["id"].as_str().unwrap();
    assert_eq!((&socket["clientId"], &socket["transport"], &socket["data"]), (&json!(sid), &json!("websocket"), &json!({ "user": user })));
    assert_eq!(socket["rooms"], json!([sid]));
    let handshake = &socket["handshake"];
    assert_eq!((&handshake["address"], &handshake["headers"]["authorization"]), (&json!("127.0.0.1"), &json!("[redacted]")));
    assert_eq!(
        (&handshake["url"], &handshake["query"]["transport"]),
        (&json!("/socket.io/?EIO=4&transport=websocket"), &json!("websocket"))
    );
    assert!(handshake["issued"].is_u64() && handshake["time"].is_string());
    assert_eq!(sockets.iter().filter(|s| s["nsp"] == "/admin").count(), 1, "the admin's own socket is listed too");
}

#[tokio::test]
async fn a_new_socket_and_its_chat_arrive_on_the_feed() {
    let app = admin_app(&[]).await;
    let (mut admin, _) = logged_in_admin(&app).await;
    let user = user();
    let mut chat = app.client(&user).await;
    let (connected, _) = admin.until("socket_connected").await;
    let sid = connected[0]["id"].as_str().unwrap().to_owned();
    assert_eq!((&connected[0]["nsp"], &connected[0]["data"]), (&json!("/ai"), &json!({ "user": user })));
    assert!(connected[1].as_str().unwrap().ends_with('Z'), "{connected}");

    chat.emit("chat:start", json!({ "message": "hello admin" })).await;
    assert_eq!(read_answer(&mut chat).await.final_name, "chat:end");
    let feed = feed_until(&mut admin, &sid, |name, data| name == "event_sent" && data[2][0] == "chat:end").await;
    let received: Vec<&Value> = feed.iter().filter(|(n, _)| n == "event_received").map(|(_, d)| d).collect();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (&received[0][0], &received[0][1], &received[0][2]),
        (&json!("/ai"), &json!(sid), &json!(["chat:start", { "message": "hello admin" }]))
    );
    let sent: Vec<&str> =
        feed.iter().filter(|(n, _)| n == "event_sent").map(|(_, d)| d[2][0].as_str().unwrap()).filter(|e| *e != "chat:active").collect();
    let chunks = sent.iter().filter(|e| **e == "chat:message").count();
    assert!(chunks >= 1);
    let mut expected = vec!["chat:conversation", "chat:user-message"];
    expected.extend(std::iter::repeat_n("chat:message", chunks));
    expected.push("chat:end");
    assert_eq!(sent, expected);
    assert_eq!(feed.last().unwrap().1[2][1]["content"], ANSWER);

    chat.close().await;
    let left = feed_until(&mut admin, &sid, |name, _| name == "socket_disconnected").await;
    let (_, data) = left.last().unwrap();
    assert_eq!((&data[0], &data[1], &data[2]), (&json!("/ai"), &json!(sid), &json!("transport close")));
}

#[tokio::test]
async fn the_ui_actions_join_leave_and_disconnect_an_ai_socket() {
    let app = admin_app(&[]).await;
    let _chat = app.client(&user()).await;
    let (mut ops, sockets) = logged_in_admin(&app).await;
    let sid = sockets.iter().find(|s| s["nsp"] == "/ai").unwrap()["id"].as_str().unwrap().to_owned();
    let action = |args: Value| format!("2/admin,{args}");

    ops.send_packet(action(json!(["join", "/ai", "vip", sid]))).await;
    let (joined, _) = ops.until("room_joined").await;
    assert_eq!((&joined[0], &joined[1], &joined[2]), (&json!("/ai"), &json!("vip"), &json!(sid)));
    let (_, listed) = logged_in_admin(&app).await;
    assert_eq!(listed.iter().find(|s| s["id"] == sid).unwrap()["rooms"], json!([sid, "vip"]));

    ops.send_packet(action(json!(["leave", "/ai", "vip"]))).await;
    let (left, _) = ops.until("room_left").await;
    assert_eq!((&left[1], &left[2]), (&json!("vip"), &json!(sid)));

    ops.send_packet(action(json!(["_disconnect", "/ai", false, sid]))).await;
    let (gone, _) = ops.until("socket_disconnected").await;
    assert_eq!((&gone[1], &gone[2]), (&json!(sid), &json!("server namespace disconnect")));
    let (_, stats) = json_of(get(&app, "/admin/api/stats").basic_auth(ADMIN, Some(PASSWORD))).await;
    assert_eq!(stats["nodes"][0]["sockets"], 0);
}

#[tokio::test]
async fn the_binary_makes_the_hash_and_says_where_the_admin_view_is() {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let mut hashing = Command::new(env!("CARGO_BIN_EXE_chatwire"))
        .args(["hash-password", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hashing.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = hashing.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$2b$04$") && bcrypt::verify(PASSWORD, &hash).unwrap(), "{hash}");

    let dir = tempfile::tempdir().unwrap();
    let child =
        spawn_binary(&format!("sqlite://{}/c.db?mode=rwc", dir.path().display()), &[("ADMIN_USERNAME", ADMIN), ("ADMIN_PASSWORD", &hash)]);
    let said = format!("admin: http://127.0.0.1:{}/admin and the /admin namespace, as {ADMIN}", child.addr.port());
    assert!(child.startup.iter().filter_map(|l| l["message"].as_str()).any(|m| m.trim_start() == said), "{:?}", child.startup);
    let (code, stderr) = refused_start(&[("ADMIN_USERNAME", ADMIN)]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("ADMIN_PASSWORD: is unset but ADMIN_USERNAME is set"), "{stderr}");
}
