//! `ttft`: `chat:start`s at a fixed rate (open loop) and the gateway's time to first token.
//!
//! A pool of connected sockets takes the starts in turn (the one free the longest
//! goes next, so every socket carries load): at each scheduled instant a free
//! socket sends `chat:start` and times the first `chat:message`. The schedule never
//! waits for answers (no coordinated omission); a start that finds no free socket is
//! counted as `skipped`, which means the pool was too small or the server too slow.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::IgnoredAny};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    client::{Conn, Target},
    idle::round3,
    stats::{Latency, Summary},
    sys,
    wire::{self, Packet},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct TtftConfig {
    pub target: Target,
    pub secret: String,
    pub label: String,
    /// `chat:start`s per second.
    pub rate: f64,
    pub duration: Duration,
    /// The upstream's configured delay before its first token, subtracted from each time.
    pub first_token_delay: Duration,
    /// `maxTokens` per answer (short answers keep sockets free).
    pub tokens: u32,
    /// Sockets in the pool; `None`: enough for a second of answers, at least 16.
    pub pool: Option<usize>,
    pub pid: Option<u32>,
    pub recv_timeout: Duration,
    pub user_prefix: String,
}

impl TtftConfig {
    pub fn new(target: Target, secret: impl Into<String>, rate: f64, duration: Duration, first_token_delay: Duration) -> Self {
        Self {
            target,
            secret: secret.into(),
            label: "server".into(),
            rate,
            duration,
            first_token_delay,
            tokens: 1,
            pool: None,
            pid: None,
            recv_timeout: Duration::from_secs(30),
            user_prefix: "ttft-".into(),
        }
    }

    fn pool(&self) -> usize {
        self.pool.unwrap_or_else(|| {
            let busy = self.first_token_delay.as_secs_f64() + 1.0;
            ((self.rate * busy).ceil() as usize).max(16)
        })
    }
}

/// What `ttft` measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TtftResult {
    pub scenario: String,
    pub server: String,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub first_token_delay_ms: f64,
    pub tokens_per_answer: u32,
    pub pool: usize,
    pub connected: usize,
    pub requests_sent: u64,
    /// Starts that found no free socket (not sent).
    pub skipped: u64,
    pub first_tokens: u64,
    pub answers: u64,
    /// First `chat:message` read - `chat:start` written - the upstream's first-token delay.
    pub ttft_gateway: Summary,
    /// First `chat:message` read - `chat:start` written.
    pub ttft_raw: Summary,
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
}

#[derive(Default)]
struct Shared {
    raw: Latency,
    gateway: Latency,
    first_tokens: u64,
    answers: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct ChatError {
    #[serde(default)]
    code: Option<String>,
}

/// Runs `ttft`.
pub async fn run(cfg: &TtftConfig) -> TtftResult {
    sys::raise_fd_limit();
    let pool = cfg.pool();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (free_tx, mut free_rx) = mpsc::unbounded_channel::<usize>();
    let permits = Arc::new(Semaphore::new(128));
    let mut senders = Vec::with_capacity(pool);
    let mut tasks = Vec::with_capacity(pool);
    for i in 0..pool {
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        senders.push(tx);
        let target = cfg.target.clone();
        let token = sys::mint_jwt(&cfg.secret, &format!("{}{i}", cfg.user_prefix));
        let shared = shared.clone();
        let free_tx = free_tx.clone();
        let permits = permits.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore open");
            let auth = serde_json::json!({ "token": token });
            let conn = tokio::time::timeout(Duration::from_secs(30), Conn::connect(&target, &auth)).await;
            drop(permit);
            match conn {
                Ok(Ok(conn)) => {
                    let _ = free_tx.send(i);
                    worker(i, conn, rx, free_tx, &shared, &cfg).await;
                    true
                }
                Ok(Err(e)) => {
                    note(&shared, format!("connect:{}", e.category()));
                    false
                }
                Err(_) => {
                    note(&shared, "connect:timeout".into());
                    false
                }
            }
        }));
    }
    drop(free_tx);
    // Wait until the pool is connected: every socket reports once, free or failed.
    let mut free = std::collections::VecDeque::with_capacity(pool);
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    while free.len() + failed(&shared) < pool && Instant::now() < connect_deadline {
        match tokio::time::timeout(Duration::from_millis(50), free_rx.recv()).await {
            Ok(Some(i)) => free.push_back(i),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let connected = free.len();

    let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + cfg.duration;
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let mut k = 0u32;
    loop {
        let at = start + period * k;
        if at >= end {
            break;
        }
        k += 1;
        tokio::time::sleep_until(at.into()).await;
        while let Ok(i) = free_rx.try_recv() {
            free.push_back(i);
        }
        match free.pop_front() {
            Some(i) if senders[i].send(()).is_ok() => sent += 1,
            _ => skipped += 1,
        }
    }
    // Let the answers in flight finish, then close the pool.
    let drain_deadline = Instant::now() + cfg.recv_timeout;
    while free.len() < connected && Instant::now() < drain_deadline {
        match tokio::time::timeout(Duration::from_millis(100), free_rx.recv()).await {
            Ok(Some(i)) => free.push_back(i),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    drop(senders);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let s = shared.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
    TtftResult {
        scenario: "ttft".into(),
        server: cfg.label.clone(),
        rate_per_s: cfg.rate,
        duration_s: round3(cfg.duration.as_secs_f64()),
        first_token_delay_ms: round3(cfg.first_token_delay.as_secs_f64() * 1000.0),
        tokens_per_answer: cfg.tokens,
        pool,
        connected,
        requests_sent: sent,
        skipped,
        first_tokens: s.first_tokens,
        answers: s.answers,
        ttft_gateway: s.gateway.summary(),
        ttft_raw: s.raw.summary(),
        error_count: s.errors.values().sum(),
        errors: s.errors,
    }
}

fn note(shared: &Mutex<Shared>, cat: String) {
    if let Ok(mut s) = shared.lock() {
        *s.errors.entry(cat).or_insert(0) += 1;
    }
}

fn failed(shared: &Mutex<Shared>) -> usize {
    shared.lock().map(|s| s.errors.iter().filter(|(k, _)| k.starts_with("connect:")).map(|(_, v)| *v as usize).sum()).unwrap_or(0)
}

/// One pooled socket: on each command, one `chat:start` timed to its first token.
async fn worker(
    i: usize,
    mut conn: Conn,
    mut commands: mpsc::UnboundedReceiver<()>,
    free: mpsc::UnboundedSender<usize>,
    shared: &Mutex<Shared>,
    cfg: &TtftConfig,
) {
    let request = serde_json::json!({ "message": "Benchmark: time to first token.", "maxTokens": cfg.tokens });
    let delay_us = cfg.first_token_delay.as_micros() as i64;
    loop {
        // A free socket still answers the server's heartbeats, or the server closes it
        // (after 5 s on chatwire's defaults) and the next start sent on it is lost.
        let command = tokio::select! {
            command = commands.recv() => command,
            idle = conn.recv() => match idle {
                Ok(_) => continue,
                Err(e) => {
                    note(shared, e.category());
                    return;
                }
            },
        };
        if command.is_none() {
            break;
        }
        let sent_at = Instant::now();
        if let Err(e) = conn.emit("chat:start", &request).await {
            note(shared, e.category());
            return;
        }
        let mut first = true;
        loop {
            let text = match conn.recv_timeout(cfg.recv_timeout).await {
                Ok(t) => t,
                Err(e) => {
                    note(shared, e.category());
                    return;
                }
            };
            let elapsed = sent_at.elapsed();
            let Ok(Packet::Event { args, .. }) = wire::parse(&text) else {
                continue;
            };
            match wire::event_name(args).as_deref() {
                Some("chat:message") if first => {
                    first = false;
                    let raw = elapsed.as_micros() as i64;
                    if let Ok(mut s) = shared.lock() {
                        s.first_tokens += 1;
                        s.raw.record_signed(raw);
                        s.gateway.record_signed(raw - delay_us);
                    }
                }
                Some("chat:end") => {
                    if let Ok(mut s) = shared.lock() {
                        s.answers += 1;
                    }
                    break;
                }
                Some("chat:error") => {
                    let code = serde_json::from_str::<(IgnoredAny, ChatError)>(args)
                        .ok()
                        .and_then(|(_, e)| e.code)
                        .unwrap_or_else(|| "unknown".into());
                    note(shared, format!("chat:error:{code}"));
                    break;
                }
                Some("chat:stopped") => {
                    note(shared, "chat:stopped".into());
                    break;
                }
                _ => {}
            }
        }
        if free.send(i).is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
}

impl std::fmt::Display for TtftResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ttft [{}]: {} starts/s for {:.1} s, pool {} ({} connected), upstream first-token delay {} ms",
            self.server, self.rate_per_s, self.duration_s, self.pool, self.connected, self.first_token_delay_ms
        )?;
        writeln!(f, "  sent {} skipped {} first tokens {} answers {}", self.requests_sent, self.skipped, self.first_tokens, self.answers)?;
        writeln!(f, "  gateway TTFT      {}", self.ttft_gateway)?;
        writeln!(f, "  raw TTFT          {}", self.ttft_raw)?;
        write!(f, "  errors            {} {:?}", self.error_count, self.errors)
    }
}
