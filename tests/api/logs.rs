//! Logs an operator can follow: every line of one answer, from the upstream retries to
//! its last line, names the answer, its conversation, the user and the node, in both
//! `LOG_FORMAT=json` and `pretty`, read from the real binary's output.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::json;

use crate::{
    binary::spawn_binary,
    client::{Client, Credentials},
    fake_upstream::{FakeUpstream, Reply, TOKENS},
    helpers::*,
};

/// The server's settings: the fake upstream fails once (a retry is logged), then answers.
fn upstream_vars(fake: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_BASE_URL", fake.base_url()),
        ("OPENAI_API_KEY", "sk-test".into()),
        ("UPSTREAM_RETRY_BASE_MS", "1".into()),
        ("NODE_ID", "node-7".into()),
    ]
}

/// Lines of the answer's own code (the engine and the upstream client).
fn of_an_answer(target: &str) -> bool {
    target.starts_with("chatwire::engine") || target.starts_with("chatwire::providers")
}

// Blocking log reads: the fake upstream needs a runtime thread of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_json_every_line_of_an_answer_names_it_its_conversation_user_and_node() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "boom")]).await;
    let dir = tempfile::tempdir().unwrap();
    let vars = upstream_vars(&fake);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = spawn_binary(&format!("sqlite://{}/c.db?mode=rwc", dir.path().display()), &vars);
    let user = user();
    let mut client = Client::websocket(child.addr, Credentials::token(&token(&user))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(read_answer(&mut client).await.final_data["content"], TOKENS.concat());

    let mut lines = Vec::new();
    loop {
        let line = child.logs.recv_timeout(Duration::from_secs(10)).expect("the server logs the answer's end");
        let last = line["message"] == "answer ended";
        if line["target"].as_str().is_some_and(of_an_answer) {
            lines.push(line);
        }
        if last {
            break;
        }
    }
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(messages, ["upstream failed before the first token; retrying", "answer ended"]);
    let expected = json!({
        "name": "answer",
        "messageId": ack["messageId"],
        "conversationId": ack["conversationId"],
        "user": user,
        "node": "node-7",
    });
    for line in &lines {
        assert_eq!(line["span"], expected, "{line}");
    }
}

/// A `chatwire serve` logging in the pretty format, its lines as they come (colours off).
struct PrettyChild {
    process: std::process::Child,
    addr: std::net::SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Drop for PrettyChild {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn spawn_pretty(vars: &[(&str, &str)]) -> PrettyChild {
    let mut process = Command::new(env!("CARGO_BIN_EXE_chatwire"))
        .arg("serve")
        .env_clear()
        .envs([
            ("PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("JWT_SECRET", SECRET),
            ("LOG_FORMAT", "pretty"),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ])
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the chatwire binary starts");
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(process.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("the server logs its address");
        if line.contains("chatwire listening") {
            let addr = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("addr=");
            break addr.parse().unwrap();
        }
    };
    PrettyChild { process, addr, lines }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_pretty_format_every_line_of_an_answer_shows_the_same_four_fields() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "boom")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
    let mut vars = upstream_vars(&fake);
    vars.push(("DATABASE_URL", db));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = spawn_pretty(&vars);
    let user = user();
    let mut client = Client::websocket(child.addr, Credentials::token(&token(&user))).await.unwrap();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "hello" })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");

    let mut expected = vec![
        format!("messageId={}", ack["messageId"].as_str().unwrap()),
        format!("conversationId={}", ack["conversationId"].as_str().unwrap()),
        format!("user={user}"),
        "node=node-7".to_owned(),
    ];
    expected.sort();
    let mut lines = Vec::new();
    loop {
        let line = child.lines.recv_timeout(Duration::from_secs(10)).expect("the server logs the answer's end");
        let last = line.contains("answer ended");
        if line.contains(" chatwire::engine") || line.contains(" chatwire::providers") {
            lines.push(line);
        }
        if last {
            break;
        }
    }
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("upstream failed before the first token; retrying"), "{}", lines[0]);
    for line in &lines {
        // `answer{k=v k=v ...}: target: message`, the fields in the order they were recorded.
        let fields = line.split_once("answer{").and_then(|(_, rest)| rest.split_once("}:")).map(|(f, _)| f);
        let mut fields: Vec<String> = fields.unwrap_or_else(|| panic!("no answer span in {line}")).split(' ').map(str::to_owned).collect();
        fields.sort();
        assert_eq!(fields, expected, "{line}");
    }
}
