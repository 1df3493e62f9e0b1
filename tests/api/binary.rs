//! The real binary as a child process, its JSON log read line by line: what it says
//! at start-up, its address, and every line after.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use crate::helpers::SECRET;

/// A running `chatwire serve`.
pub struct Child {
    pub process: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// The lines logged before "chatwire listening" (the start-up summary among them).
    pub startup: Vec<Value>,
    /// Every line logged after it.
    pub logs: mpsc::Receiver<Value>,
}

impl Child {
    /// The next logged line whose message is `message`, within 10 s.
    pub fn logged(&self, message: &str) -> Value {
        loop {
            let line = self.logs.recv_timeout(Duration::from_secs(10)).expect("the server logs it");
            if line["message"] == message {
                return line;
            }
        }
    }
}

impl Drop for Child {
    /// A test that fails midway still leaves no server running.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts the binary with the test defaults (JWT, JSON logs, port 0) and `vars` on top.
pub fn spawn_binary(db_url: &str, vars: &[(&str, &str)]) -> Child {
    // The lag watch off: a loaded CI machine running a debug build is no overload.
    spawn_binary_with(&[("HOST", "127.0.0.1"), ("JWT_SECRET", SECRET), ("DATABASE_URL", db_url), ("OVERLOAD_LAG_MS", "0")], vars)
}

/// Starts the binary with only `base` and `vars` (plus port 0 and JSON logs).
pub fn spawn_binary_with(base: &[(&str, &str)], vars: &[(&str, &str)]) -> Child {
    // The test's own HTTPS-capable clients (reqwest) need the process's crypto provider.
    chatwire::install_crypto_provider();
    let mut process = Command::new(env!("CARGO_BIN_EXE_chatwire"))
        .arg("serve")
        .env_clear()
        .envs([("PORT", "0"), ("LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .envs(base.iter().copied())
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the chatwire binary starts");
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut startup = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        let log: Value = serde_json::from_str(&line).unwrap_or_default();
        if log["message"] == "chatwire listening" {
            break log["addr"].as_str().unwrap().parse().unwrap();
        }
        startup.push(log);
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or_default());
        }
    });
    Child { process, addr, startup, logs }
}

/// Runs the binary to its end with exactly these variables; its exit code and stderr.
pub fn refused_start(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatwire"))
        .arg("serve")
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("the chatwire binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}
