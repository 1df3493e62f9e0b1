//! `idle --storm`: a reconnect storm. N idle clients connect and hold; S clients stream
//! stamped answers; when the streams' measurement window opens, every idle client
//! drops its connection at the same moment and reconnects the way socket.io-client
//! does by default (`reconnectionDelay` 1 s doubling to `reconnectionDelayMax` 5 s,
//! `randomizationFactor` 0.5, a 20 s connect `timeout`). Reported: the time until all
//! are back, the failed connect attempts, and the running answers' delivery lag
//! during the window (the `stream` result, lost tokens included).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    client::{Conn, Target},
    idle::{IdleConfig, round3},
    stats::{Latency, Summary},
    stream::{self, StreamConfig, StreamResult},
    sys,
};

/// socket.io-client's reconnection delays (its `Manager` defaults).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    /// `randomizationFactor`: each delay moves up or down by up to this share.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { min: Duration::from_millis(1000), max: Duration::from_millis(5000), jitter: 0.5 }
    }
}

impl Backoff {
    /// The wait before reconnect attempt `attempt` (0 = the first), for a uniform `rand` in [0, 1):
    /// min x 2^attempt, moved by up to `jitter` of itself (down when the first decimal
    /// digit of `rand` is even, up when odd), capped at `max`.
    pub fn delay(&self, attempt: u32, rand: f64) -> Duration {
        let base = self.min.as_secs_f64() * 1000.0 * 2f64.powi(attempt.min(30) as i32);
        let deviation = (rand * self.jitter * base).floor();
        let ms = if ((rand * 10.0).floor() as u64) & 1 == 0 { base - deviation } else { base + deviation };
        Duration::from_millis(ms.min(self.max.as_secs_f64() * 1000.0).max(0.0) as u64)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The idle clients that drop and reconnect: target, secret, label, pid, how many,
    /// connects in flight while they first connect (the storm itself has no such limit,
    /// like real clients), user prefix, and socket.io-client's 20 s connect `timeout`.
    pub idle: IdleConfig,
    /// The answers streaming meanwhile: their clients, tokens per answer, tokens/s.
    pub streams: usize,
    pub tokens: u32,
    pub rate: f64,
    /// The streams' measurement window, from the drop on.
    pub window: Duration,
    /// A client not back this long after the drop counts as not back.
    pub deadline: Duration,
    pub backoff: Backoff,
}

impl StormConfig {
    pub fn new(target: Target, secret: impl Into<String>, connections: usize, streams: usize) -> Self {
        let mut idle = IdleConfig::new(target, secret, connections);
        idle.user_prefix = "storm-".into();
        idle.connect_timeout = Duration::from_secs(20);
        Self {
            idle,
            streams,
            tokens: 200,
            rate: 50.0,
            window: Duration::from_secs(15),
            deadline: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}

/// What the storm measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StormResult {
    pub scenario: String,
    pub server: String,
    pub connections_requested: usize,
    /// Idle clients connected before the drop.
    pub connected_before: usize,
    /// Of those, back within the deadline.
    pub back: usize,
    pub not_back: usize,
    /// From the drop to the last client back.
    pub all_back_seconds: Option<f64>,
    /// Per client: the drop to its namespace connect answer.
    pub back_after: Summary,
    /// Reconnect attempts that failed, by cause (each was retried after the next delay).
    pub failed_connects: u64,
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Attempts per client that came back (1 = its first attempt worked).
    pub attempts_max: u32,
    /// Server CPU (user + system) from the drop until all were back, in µs per client back.
    pub server_cpu_per_reconnect_us: Option<f64>,
    /// The answers streaming during the storm: lag, first token, lost tokens.
    pub streams: StreamResult,
}

enum Event {
    Up,
    Down,
    Back { after: Duration, attempts: u32 },
    Failed(String),
    NotBack,
}

/// Runs the storm.
pub async fn run(storm: &StormConfig) -> StormResult {
    sys::raise_fd_limit();
    let cfg = &storm.idle;
    let (storm_tx, storm_rx) = watch::channel::<Option<Instant>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut clients = JoinSet::new();
    for i in 0..cfg.connections {
        let auth = serde_json::json!({ "token": sys::mint_jwt(&cfg.secret, &format!("{}{i}", cfg.user_prefix)) });
        let (target, permits, events, limit, backoff, deadline) =
            (cfg.target.clone(), permits.clone(), events_tx.clone(), cfg.connect_timeout, storm.backoff, storm.deadline);
        let (mut storm, mut stop) = (storm_rx.clone(), stop_rx.clone());
        clients.spawn(async move {
            let first = {
                let _permit = permits.acquire_owned().await;
                tokio::time::timeout(limit, Conn::connect(&target, &auth)).await
            };
            let Ok(Ok(mut conn)) = first else {
                let _ = events.send(Event::Down);
                return;
            };
            let _ = events.send(Event::Up);
            // Hold (answering heartbeats) until the storm.
            let dropped_at = loop {
                tokio::select! {
                    r = storm.changed() => match (r, *storm.borrow()) {
                        (Ok(()), Some(at)) => break at,
                        (Ok(()), None) => continue,
                        (Err(_), _) => return,
                    },
                    r = conn.recv() => if r.is_err() {
                        let _ = events.send(Event::NotBack);
                        return;
                    },
                }
            };
            drop(conn);
            let mut attempt = 0;
            let mut conn = loop {
                if dropped_at.elapsed() >= deadline {
                    let _ = events.send(Event::NotBack);
                    return;
                }
                tokio::time::sleep(backoff.delay(attempt, rand::random::<f64>())).await;
                attempt += 1;
                match tokio::time::timeout(limit, Conn::connect(&target, &auth)).await {
                    Ok(Ok(c)) => break c,
                    Ok(Err(e)) => {
                        let _ = events.send(Event::Failed(e.category()));
                    }
                    Err(_) => {
                        let _ = events.send(Event::Failed("timeout".into()));
                    }
                }
            };
            let _ = events.send(Event::Back { after: dropped_at.elapsed(), attempts: attempt });
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    r = conn.recv() => if r.is_err() { return },
                }
            }
        });
    }
    drop(events_tx);

    // Every client reports Up or Down once; one that lost its connection before the
    // storm also reports NotBack.
    let (mut connected_before, mut settled, mut lost_before) = (0, 0, 0);
    while settled < cfg.connections {
        match events.recv().await {
            Some(Event::Up) => (connected_before, settled) = (connected_before + 1, settled + 1),
            Some(Event::Down) => settled += 1,
            Some(Event::NotBack) => lost_before += 1,
            Some(_) => {}
            None => break,
        }
    }

    // The streams start now; the drop comes when their window opens.
    let opened = Arc::new(Notify::new());
    let mut sc = StreamConfig::new(cfg.target.clone(), cfg.secret.clone(), storm.streams, storm.tokens, storm.rate, storm.window);
    sc.label = cfg.label.clone();
    sc.pid = cfg.pid;
    sc.user_prefix = format!("{}stream-", cfg.user_prefix);
    sc.window_opened = Some(opened.clone());
    let streams = tokio::spawn(async move { stream::run(&sc).await });
    opened.notified().await;
    let dropped_at = Instant::now();
    let cpu_before = sys::sample(cfg.pid);
    let _ = storm_tx.send(Some(dropped_at));

    let (mut back, mut not_back, mut failed, mut attempts_max) = (0, lost_before, 0u64, 0);
    let mut failed_by_cause = BTreeMap::new();
    let mut back_after = Latency::default();
    let mut last_back = None;
    let mut cpu_after = None;
    while back + not_back < connected_before {
        match events.recv().await {
            Some(Event::Back { after, attempts }) => {
                back += 1;
                attempts_max = attempts_max.max(attempts);
                back_after.record(after.as_micros() as u64);
                last_back = Some(after);
                if back + not_back == connected_before {
                    cpu_after = sys::sample(cfg.pid);
                }
            }
            Some(Event::NotBack) => not_back += 1,
            Some(Event::Failed(cause)) => {
                failed += 1;
                *failed_by_cause.entry(cause).or_insert(0) += 1;
            }
            Some(Event::Up) | Some(Event::Down) => {}
            None => break,
        }
    }
    let streams = streams.await.unwrap_or_default();
    let _ = stop_tx.send(true);
    while clients.join_next().await.is_some() {}

    let server_cpu_per_reconnect_us = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if back > 0 => Some(round3(b.cpu_us.saturating_sub(a.cpu_us) as f64 / back as f64)),
        _ => None,
    };
    StormResult {
        scenario: "storm".into(),
        server: cfg.label.clone(),
        connections_requested: cfg.connections,
        connected_before,
        back,
        not_back,
        all_back_seconds: (not_back == 0).then_some(()).and(last_back).map(|d| round3(d.as_secs_f64())),
        back_after: back_after.summary(),
        failed_connects: failed,
        failed_by_cause,
        attempts_max,
        server_cpu_per_reconnect_us,
        streams,
    }
}

impl std::fmt::Display for StormResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "storm [{}]: {} of {} idle clients dropped at once, {} back, {} not back",
            self.server, self.connected_before, self.connections_requested, self.back, self.not_back
        )?;
        match self.all_back_seconds {
            Some(s) => writeln!(f, "  all back after    {s:.2} s")?,
            None => writeln!(f, "  all back after    never (within the deadline)")?,
        }
        writeln!(f, "  back after        {}", self.back_after)?;
        writeln!(
            f,
            "  failed connects   {} {:?} (attempts per client at most {})",
            self.failed_connects, self.failed_by_cause, self.attempts_max
        )?;
        if let Some(c) = self.server_cpu_per_reconnect_us {
            writeln!(f, "  CPU per reconnect {c:.1} us")?;
        }
        writeln!(
            f,
            "  streams meanwhile ({} answers, {} lost tokens, errors {:?})",
            self.streams.clients, self.streams.lost_tokens, self.streams.errors
        )?;
        writeln!(f, "    lag             {}", self.streams.lag)?;
        write!(f, "    first token     {}", self.streams.first_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_socket_io_clients_backoff() {
        let b = Backoff::default();
        // rand 0.0: first digit 0 (even), no deviation.
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(1000));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(2000));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(4000));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(5000), "capped at the max");
        // rand 0.25: digit 2 (even), down by floor(0.25 x 0.5 x 1000) = 125.
        assert_eq!(b.delay(0, 0.25), Duration::from_millis(875));
        // rand 0.35: digit 3 (odd), up by 175.
        assert_eq!(b.delay(0, 0.35), Duration::from_millis(1175));
        // rand 0.99 on the third attempt: 4000 + 1980, capped.
        assert_eq!(b.delay(2, 0.99), Duration::from_millis(5000));
    }
}
