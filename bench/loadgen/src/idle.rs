//! `idle`: open N connections, hold them, and measure what they cost the server.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    client::{Conn, Target},
    stats::{Latency, Summary},
    sys,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    pub target: Target,
    pub secret: String,
    /// Server name written into the result.
    pub label: String,
    pub connections: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// The server's process id, for RSS and CPU from `/proc`.
    pub pid: Option<u32>,
    /// Wait after the last connect before reading the server's RSS.
    pub settle: Duration,
    /// How long to hold the connections after that (heartbeats keep being answered).
    pub hold: Duration,
    /// User ids are `<prefix><n>`: one user per connection.
    pub user_prefix: String,
    /// Time limit for one connect.
    pub connect_timeout: Duration,
}

impl IdleConfig {
    pub fn new(target: Target, secret: impl Into<String>, connections: usize) -> Self {
        Self {
            target,
            secret: secret.into(),
            label: "server".into(),
            connections,
            concurrency: 128,
            pid: None,
            settle: Duration::from_secs(2),
            hold: Duration::from_secs(1),
            user_prefix: "idle-".into(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// What `idle` measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdleResult {
    pub scenario: String,
    pub server: String,
    pub connections_requested: usize,
    pub connected: usize,
    pub failed: usize,
    /// Failed connects by cause, and connections lost while held (`dropped`).
    pub errors: BTreeMap<String, u64>,
    pub connect_seconds: f64,
    /// Connections established per second over the whole burst.
    pub connect_rate_per_s: f64,
    /// Time from TCP connect to the namespace's connect answer, per connection.
    pub connect_latency: Summary,
    pub server_before: Option<sys::ProcSample>,
    pub server_after: Option<sys::ProcSample>,
    /// (RSS after - RSS before) / connected, in KiB.
    pub rss_per_conn_kib: Option<f64>,
    /// Server CPU time (user + system) spent from before the first connect to the
    /// RSS reading, divided by the connections made.
    pub cpu_per_connect_us: Option<f64>,
    pub held_seconds: f64,
    pub dropped_while_held: u64,
}

/// Runs `idle`.
pub async fn run(cfg: &IdleConfig) -> IdleResult {
    sys::raise_fd_limit();
    let tokens: Vec<String> = (0..cfg.connections).map(|i| sys::mint_jwt(&cfg.secret, &format!("{}{i}", cfg.user_prefix))).collect();

    let before = sys::sample(cfg.pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut holders = JoinSet::new();
    let start = Instant::now();
    for token in tokens {
        let target = cfg.target.clone();
        let permits = permits.clone();
        let done = done_tx.clone();
        let mut stop = stop_rx.clone();
        let limit = cfg.connect_timeout;
        holders.spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore open");
            let t = Instant::now();
            let auth = serde_json::json!({ "token": token });
            drop(token);
            let conn = tokio::time::timeout(limit, Conn::connect(&target, &auth)).await;
            drop(permit);
            let mut conn = match conn {
                Ok(Ok(c)) => {
                    let _ = done.send(Ok(t.elapsed()));
                    c
                }
                Ok(Err(e)) => {
                    let _ = done.send(Err(e.category()));
                    return false;
                }
                Err(_) => {
                    let _ = done.send(Err("timeout".into()));
                    return false;
                }
            };
            drop(done);
            // Hold: answer heartbeats until told to stop. `true` means it stayed up.
            loop {
                tokio::select! {
                    _ = stop.changed() => return true,
                    r = conn.recv() => if r.is_err() { return false },
                }
            }
        });
    }
    drop(done_tx);

    let mut latency = Latency::default();
    let mut errors = BTreeMap::new();
    let mut connected = 0;
    let mut failed = 0;
    while let Some(r) = done_rx.recv().await {
        match r {
            Ok(d) => {
                connected += 1;
                latency.record(d.as_micros() as u64);
            }
            Err(cat) => {
                failed += 1;
                *errors.entry(cat).or_insert(0) += 1;
            }
        }
    }
    let connect_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.settle).await;
    let after = sys::sample(cfg.pid);
    let held_from = Instant::now();
    tokio::time::sleep(cfg.hold).await;
    let _ = stop_tx.send(true);
    let mut dropped: u64 = 0;
    while let Some(r) = holders.join_next().await {
        if let Ok(false) = r {
            dropped += 1;
        }
    }
    // The failed connects also returned false; only count the ones that were up.
    let dropped = dropped.saturating_sub(failed as u64);
    if dropped > 0 {
        errors.insert("dropped".into(), dropped);
    }

    let (rss_per_conn_kib, cpu_per_connect_us) = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => (
            Some(round3((a.rss_kib as f64 - b.rss_kib as f64) / connected as f64)),
            Some(round3(a.cpu_us.saturating_sub(b.cpu_us) as f64 / connected as f64)),
        ),
        _ => (None, None),
    };
    IdleResult {
        scenario: "idle".into(),
        server: cfg.label.clone(),
        connections_requested: cfg.connections,
        connected,
        failed,
        errors,
        connect_seconds: round3(connect_seconds),
        connect_rate_per_s: round3(if connect_seconds > 0.0 { connected as f64 / connect_seconds } else { 0.0 }),
        connect_latency: latency.summary(),
        server_before: before,
        server_after: after,
        rss_per_conn_kib,
        cpu_per_connect_us,
        held_seconds: round3(held_from.elapsed().as_secs_f64()),
        dropped_while_held: dropped,
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl std::fmt::Display for IdleResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "idle [{}]: {} of {} connections", self.server, self.connected, self.connections_requested)?;
        writeln!(f, "  connect rate      {:.0} conn/s ({:.2} s)", self.connect_rate_per_s, self.connect_seconds)?;
        writeln!(f, "  connect latency   {}", self.connect_latency)?;
        if let (Some(b), Some(a)) = (self.server_before, self.server_after) {
            writeln!(f, "  server RSS        {} KiB -> {} KiB", b.rss_kib, a.rss_kib)?;
        }
        match self.rss_per_conn_kib {
            Some(r) => writeln!(f, "  RSS per conn      {r:.2} KiB")?,
            None => writeln!(f, "  RSS per conn      n/a (no --pid)")?,
        }
        if let Some(c) = self.cpu_per_connect_us {
            writeln!(f, "  CPU per connect   {c:.1} us")?;
        }
        write!(f, "  errors            {:?}", self.errors)
    }
}
