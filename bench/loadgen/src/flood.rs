//! `flood`: what an attacker's traffic costs the server's memory. Prints the server's
//! RSS before, at its peak during, and after the flood (its sockets closed, a settle).
//!
//! Kinds:
//! - `lookups`: S sockets of one user each send E `chat:join`s of unknown conversations,
//!   pipelined in batches, every one asking for an ack (the hardening finding: one
//!   socket's 60,000 lookups took the server from 16 MB to 1.28 GB);
//! - `attachments`: C sockets each announce a binary attachment and send it, 1 MiB a
//!   frame (the finding: 10 MB parked per connection).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::{
    client::{Conn, Target},
    sys,
    wire::{self, Packet},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub target: Target,
    pub secret: String,
    pub label: String,
    pub pid: Option<u32>,
    /// `lookups` or `attachments`.
    pub kind: String,
    pub sockets: usize,
    /// Events per socket (`lookups`), or attachment frames per socket (`attachments`).
    pub events: usize,
    /// Events in flight from one socket before it reads their acks.
    pub batch: usize,
    /// Wait after the sockets close before reading RSS again.
    pub settle: Duration,
}

/// What `flood` measured.
#[derive(Debug, Serialize)]
pub struct FloodResult {
    pub scenario: &'static str,
    pub server: String,
    pub kind: String,
    pub sockets: usize,
    pub events_sent: u64,
    pub acks: u64,
    /// Acks that refused (`RATE_LIMIT` and the like).
    pub refused: u64,
    /// Events whose ack never came (the server dropped it: the client was not reading).
    pub unanswered: u64,
    /// Sockets the server closed during the flood.
    pub closed_by_server: u64,
    pub seconds: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl std::fmt::Display for FloodResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        writeln!(
            f,
            "flood {} [{}]: {} sockets, {} sent, {} acked ({} refused), {} unanswered, {} closed by the server, {:.1} s",
            self.kind,
            self.server,
            self.sockets,
            self.events_sent,
            self.acks,
            self.refused,
            self.unanswered,
            self.closed_by_server,
            self.seconds
        )?;
        write!(f, "  server RSS: before {}, peak {}, after {}", mib(self.rss_before_kib), mib(self.rss_peak_kib), mib(self.rss_after_kib))
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    acks: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    closed: AtomicU64,
}

/// Runs the flood and samples the server's RSS every 20 ms throughout.
pub async fn run(cfg: &FloodConfig) -> FloodResult {
    let before = cfg.pid.and_then(sys::rss_kib);
    let peak = Arc::new(AtomicU64::new(before.unwrap_or(0)));
    let sampler = cfg.pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = sys::rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let token = sys::mint_jwt(&cfg.secret, "flood-user");
    let mut tasks = JoinSet::new();
    for _ in 0..cfg.sockets {
        let (cfg, counts, token) = (cfg.clone(), counts.clone(), token.clone());
        tasks.spawn(async move {
            let Ok(conn) = Conn::connect(&cfg.target, &serde_json::json!({ "token": token })).await else {
                counts.closed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let outcome = match cfg.kind.as_str() {
                "attachments" => attachments(conn, &cfg, &counts).await,
                _ => lookups(conn, &cfg, &counts).await,
            };
            if outcome.is_none() {
                counts.closed.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        });
    }
    // Every socket stays open until all have finished, so the peak sees them together.
    let mut open = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(conn)) = done {
            open.push(conn);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for conn in open {
        conn.close().await;
    }
    tokio::time::sleep(cfg.settle).await;
    if let Some(s) = sampler {
        s.abort();
    }
    FloodResult {
        scenario: "flood",
        server: cfg.label.clone(),
        kind: cfg.kind.clone(),
        sockets: cfg.sockets,
        events_sent: counts.sent.load(Ordering::Relaxed),
        acks: counts.acks.load(Ordering::Relaxed),
        refused: counts.refused.load(Ordering::Relaxed),
        unanswered: counts.dropped.load(Ordering::Relaxed),
        closed_by_server: counts.closed.load(Ordering::Relaxed),
        seconds,
        rss_before_kib: before,
        rss_peak_kib: cfg.pid.map(|_| peak.load(Ordering::Relaxed)),
        rss_after_kib: cfg.pid.and_then(sys::rss_kib),
    }
}

/// `chat:join`s of random conversations, `batch` at a time, then their acks.
async fn lookups(mut conn: Conn, cfg: &FloodConfig, counts: &Counts) -> Option<Conn> {
    let nsp = conn.namespace().to_owned();
    let mut next_id = 1u64;
    let mut left = cfg.events;
    while left > 0 {
        let n = left.min(cfg.batch.max(1));
        for _ in 0..n {
            let data = serde_json::json!({ "conversationId": uuid_like(next_id) });
            conn.send_raw_text(wire::event_frame(&nsp, Some(next_id), "chat:join", &data)).await.ok()?;
            next_id += 1;
        }
        counts.sent.fetch_add(n as u64, Ordering::Relaxed);
        let mut acked = 0;
        while acked < n {
            // A server that bounds what it queues for a socket that does not read drops
            // the acks past its buffer: after a quiet spell the rest count as dropped.
            let text = match conn.recv_timeout(Duration::from_secs(2)).await {
                Ok(text) => text,
                Err(crate::client::ClientError::Timeout) => {
                    counts.dropped.fetch_add((n - acked) as u64, Ordering::Relaxed);
                    break;
                }
                Err(_) => return None,
            };
            if let Ok(Packet::Ack { args, .. }) = wire::parse(&text) {
                acked += 1;
                counts.acks.fetch_add(1, Ordering::Relaxed);
                if args.contains("\"ok\":false") {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        left -= n;
    }
    Some(conn)
}

/// A binary-event header announcing one attachment, then `events` frames of 1 MiB.
async fn attachments(mut conn: Conn, cfg: &FloodConfig, counts: &Counts) -> Option<Conn> {
    let header = format!("451-{},[\"chat:start\",{{\"_placeholder\":true,\"num\":0}}]", conn.namespace());
    conn.send_raw_text(header).await.ok()?;
    counts.sent.fetch_add(1, Ordering::Relaxed);
    for _ in 0..cfg.events {
        conn.send_binary(vec![0x42; 1 << 20]).await.ok()?;
        counts.sent.fetch_add(1, Ordering::Relaxed);
    }
    // The server either closed the socket (then a read fails) or holds the data.
    match conn.recv_timeout(Duration::from_secs(2)).await {
        Err(crate::client::ClientError::Timeout) => Some(conn),
        Err(_) => None,
        Ok(_) => Some(conn),
    }
}

/// A well-formed UUID that no conversation has.
fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}
