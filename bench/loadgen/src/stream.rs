//! `stream`: C clients each looping `chat:start` -> `chat:end` over stamped answers.
//!
//! The upstream (the mock in stamp mode, or the ceiling) writes each token as its own
//! write time in microseconds followed by a space, so a client reading a
//! `chat:message` knows every token's delivery lag, even when several tokens were
//! joined into one chunk. Every answer is checked: the tokens received must add up to
//! the `completionTokens` of its `chat:end`, its chunks must arrive in `seq` order, and
//! their concatenation must equal the `content` of the `chat:end`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::IgnoredAny};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::{
    client::{ClientError, Conn, Target},
    idle::round3,
    stats::{Latency, Summary},
    sys,
    wire::{self, Packet},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub target: Target,
    pub secret: String,
    /// Server name written into the result.
    pub label: String,
    pub clients: usize,
    /// `maxTokens` of each `chat:start`: the answer's length in stamp mode.
    pub tokens: u32,
    /// Tokens per second per stream the upstream was told to send (for the report and
    /// the warm-up; the upstream sets the real pace).
    pub rate: f64,
    /// The measurement window.
    pub duration: Duration,
    /// Clients start spread over this time; measuring begins after it.
    /// `None`: one answer's length (tokens / rate), at most 2 s.
    pub warmup: Option<Duration>,
    pub pid: Option<u32>,
    /// The upstream's process id (the mock), to report its CPU use too.
    pub upstream_pid: Option<u32>,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// A client that hears nothing for this long gives up (error `timeout`).
    pub recv_timeout: Duration,
    /// After the window, answers in flight may finish for this long.
    pub drain_timeout: Duration,
    /// User ids are `<prefix><n>`: one user per client.
    pub user_prefix: String,
    pub message: String,
    /// Told when the measurement window opens (the storm starts then).
    pub window_opened: Option<Arc<Notify>>,
}

impl StreamConfig {
    pub fn new(target: Target, secret: impl Into<String>, clients: usize, tokens: u32, rate: f64, duration: Duration) -> Self {
        Self {
            target,
            secret: secret.into(),
            label: "server".into(),
            clients,
            tokens,
            rate,
            duration,
            warmup: None,
            pid: None,
            upstream_pid: None,
            connect_concurrency: 128,
            recv_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            user_prefix: "stream-".into(),
            message: "Benchmark: answer with stamped tokens.".into(),
            window_opened: None,
        }
    }

    fn warmup(&self) -> Duration {
        self.warmup.unwrap_or_else(|| {
            let answer = if self.rate > 0.0 { self.tokens as f64 / self.rate } else { 1.0 };
            Duration::from_secs_f64(answer.clamp(0.0, 2.0))
        })
    }
}

/// What `stream` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamResult {
    pub scenario: String,
    pub server: String,
    pub clients: usize,
    pub connected: usize,
    pub tokens_per_answer: u32,
    pub rate_per_stream: f64,
    /// clients x rate: what the upstream offers when nothing is late.
    pub offered_tokens_per_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Tokens read by clients during the window, per second.
    pub tokens_per_s: f64,
    /// `chat:message` frames read during the window, per second.
    pub frames_per_s: f64,
    /// Tokens per frame during the window (above 1 when chunks were joined).
    pub tokens_per_frame: f64,
    /// Delivery lag of the tokens read during the window: read time - stamp.
    pub lag: Summary,
    /// Per answer started in the window: first `chat:message` read - `chat:start` written.
    /// Lag cannot show a slow start (the upstream stamps tokens when it writes them);
    /// this does.
    pub first_token: Summary,
    /// Answers that ended with `chat:end` (window and drain).
    pub answers: u64,
    /// Sum of `chat:end.completionTokens`: what the upstream sent.
    pub tokens_sent: u64,
    /// Tokens read in the answers that ended.
    pub tokens_received: u64,
    /// tokens_sent - tokens_received. Must be 0.
    pub lost_tokens: i64,
    /// Answers whose `completionTokens` differs from `maxTokens`.
    pub short_answers: u64,
    /// Answers whose chunks do not add up to `chat:end.content`.
    pub content_mismatches: u64,
    /// Chunks whose `seq` is not the next one.
    pub seq_errors: u64,
    /// Words in a chunk that are not stamps.
    pub bad_stamps: u64,
    /// Answers still running when the drain time ran out.
    pub unfinished_answers: u64,
    /// Starts the server refused as busy (`chat:error` with `retryAfterMs`); the client
    /// waited that long, then started again. Not errors: overload's answer.
    #[serde(default)]
    pub refused: u64,
    /// Per refused start: `chat:start` written to its `chat:error` read.
    #[serde(default)]
    pub refused_after: Summary,
    /// Errors by cause: connect failures, `chat:error` codes, timeouts, closed sockets.
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
    /// Server CPU (user + system) during the window, as a share of one core.
    pub server_cpu_cores: Option<f64>,
    /// Server CPU time per token delivered during the window.
    pub server_cpu_us_per_token: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// The upstream's CPU during the window, as a share of one core (it shares the machine).
    pub upstream_cpu_cores: Option<f64>,
    /// The load generator's own CPU during the window, as a share of one core.
    pub loadgen_cpu_cores: Option<f64>,
    /// The whole machine's busy CPU during the window, in cores (`/proc/stat`): minus
    /// the server, the upstream and the load generator, what else was running.
    #[serde(default)]
    pub machine_busy_cores: Option<f64>,
}

impl StreamResult {
    /// True when nothing was lost or went wrong.
    pub fn clean(&self) -> bool {
        self.lost_tokens == 0
            && self.error_count == 0
            && self.content_mismatches == 0
            && self.seq_errors == 0
            && self.bad_stamps == 0
            && self.unfinished_answers == 0
            && self.short_answers == 0
    }
}

/// Per-client counters, summed at the end.
#[derive(Default)]
struct Counts {
    tokens_window: u64,
    frames_window: u64,
    answers: u64,
    tokens_sent: u64,
    tokens_received: u64,
    lost: i64,
    short: u64,
    mismatches: u64,
    seq_errors: u64,
    bad_stamps: u64,
    unfinished: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
}

impl Counts {
    fn error(&mut self, cat: impl Into<String>) {
        *self.errors.entry(cat.into()).or_insert(0) += 1;
    }

    fn add(&mut self, o: Counts) {
        self.tokens_window += o.tokens_window;
        self.frames_window += o.frames_window;
        self.answers += o.answers;
        self.tokens_sent += o.tokens_sent;
        self.tokens_received += o.tokens_received;
        self.lost += o.lost;
        self.short += o.short;
        self.mismatches += o.mismatches;
        self.seq_errors += o.seq_errors;
        self.bad_stamps += o.bad_stamps;
        self.unfinished += o.unfinished;
        self.refused += o.refused;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatEnd {
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatError {
    #[serde(default)]
    code: Option<String>,
    /// Set on a start the server refused because it is busy: wait, then start again.
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// When the clients start and the window runs, in both clocks.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    window_start_us: u64,
    window_end_us: u64,
    window_end: Instant,
    hard_deadline: Instant,
}

struct Shared {
    cfg: StreamConfig,
    lag: Mutex<Latency>,
    first_token: Mutex<Latency>,
    refused: Mutex<Latency>,
}

/// Runs `stream` once.
pub async fn run(cfg: &StreamConfig) -> StreamResult {
    sys::raise_fd_limit();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        lag: Mutex::new(Latency::default()),
        first_token: Mutex::new(Latency::default()),
        refused: Mutex::new(Latency::default()),
    });
    let (sched_tx, sched_rx) = watch::channel::<Option<Schedule>>(None);
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel::<bool>();
    let permits = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let shared = shared.clone();
        let mut sched_rx = sched_rx.clone();
        let connected_tx = connected_tx.clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            let token = sys::mint_jwt(&shared.cfg.secret, &format!("{}{i}", shared.cfg.user_prefix));
            let auth = serde_json::json!({ "token": token });
            let permit = permits.acquire_owned().await.expect("semaphore open");
            let conn = tokio::time::timeout(Duration::from_secs(30), Conn::connect(&shared.cfg.target, &auth)).await;
            drop(permit);
            let conn = match conn {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    counts.error(format!("connect:{}", e.category()));
                    let _ = connected_tx.send(false);
                    return counts;
                }
                Err(_) => {
                    counts.error("connect:timeout");
                    let _ = connected_tx.send(false);
                    return counts;
                }
            };
            let _ = connected_tx.send(true);
            drop(connected_tx);
            let sched = loop {
                if let Some(s) = *sched_rx.borrow_and_update() {
                    break s;
                }
                if sched_rx.changed().await.is_err() {
                    return counts;
                }
            };
            client_loop(i, &shared, conn, sched, &mut counts).await;
            counts
        }));
    }
    drop(connected_tx);
    let mut connected = 0;
    while let Some(ok) = connected_rx.recv().await {
        connected += ok as usize;
    }

    let warmup = cfg.warmup();
    let now = Instant::now();
    let now_us = sys::now_micros();
    let start = now + Duration::from_millis(100);
    let window_start = start + warmup;
    let window_end = window_start + cfg.duration;
    let to_us = |t: Instant| now_us + t.duration_since(now).as_micros() as u64;
    let sched = Schedule {
        start,
        window_start_us: to_us(window_start),
        window_end_us: to_us(window_end),
        window_end,
        hard_deadline: window_end + cfg.drain_timeout,
    };
    let _ = sched_tx.send(Some(sched));

    tokio::time::sleep_until(window_start.into()).await;
    if let Some(opened) = &cfg.window_opened {
        opened.notify_one();
    }
    let cpu_start = sys::sample(cfg.pid);
    let upstream_start = sys::sample(cfg.upstream_pid);
    let me = Some(std::process::id());
    let self_start = sys::sample(me);
    let machine_start = sys::machine_busy_micros();
    tokio::time::sleep_until(window_end.into()).await;
    let machine_end = sys::machine_busy_micros();
    let self_end = sys::sample(me);
    let cpu_end = sys::sample(cfg.pid);
    let upstream_end = sys::sample(cfg.upstream_pid);

    let mut total = Counts::default();
    for t in tasks {
        match t.await {
            Ok(c) => total.add(c),
            Err(_) => total.error("client panicked"),
        }
    }
    let lag = shared.lag.lock().map(|h| h.summary()).unwrap_or_default();
    let first_token = shared.first_token.lock().map(|h| h.summary()).unwrap_or_default();
    let refused_after = shared.refused.lock().map(|h| h.summary()).unwrap_or_default();
    let secs = cfg.duration.as_secs_f64();
    let error_count: u64 = total.errors.values().sum();
    let (server_cpu_cores, server_cpu_us_per_token) = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => {
            let used = b.cpu_us.saturating_sub(a.cpu_us) as f64;
            (Some(round3(used / 1e6 / secs)), (total.tokens_window > 0).then(|| round3(used / total.tokens_window as f64)))
        }
        _ => (None, None),
    };
    StreamResult {
        scenario: "stream".into(),
        server: cfg.label.clone(),
        clients: cfg.clients,
        connected,
        tokens_per_answer: cfg.tokens,
        rate_per_stream: cfg.rate,
        offered_tokens_per_s: round3(cfg.clients as f64 * cfg.rate),
        warmup_s: round3(warmup.as_secs_f64()),
        duration_s: round3(secs),
        tokens_per_s: round3(total.tokens_window as f64 / secs),
        frames_per_s: round3(total.frames_window as f64 / secs),
        tokens_per_frame: if total.frames_window > 0 { round3(total.tokens_window as f64 / total.frames_window as f64) } else { 0.0 },
        lag,
        first_token,
        answers: total.answers,
        tokens_sent: total.tokens_sent,
        tokens_received: total.tokens_received,
        lost_tokens: total.lost,
        short_answers: total.short,
        content_mismatches: total.mismatches,
        seq_errors: total.seq_errors,
        bad_stamps: total.bad_stamps,
        unfinished_answers: total.unfinished,
        refused: total.refused,
        refused_after,
        errors: total.errors,
        error_count,
        server_cpu_cores,
        server_cpu_us_per_token,
        server_rss_kib: cpu_end.map(|s| s.rss_kib),
        upstream_cpu_cores: upstream_start.zip(upstream_end).map(|(a, b)| round3(b.cpu_us.saturating_sub(a.cpu_us) as f64 / 1e6 / secs)),
        loadgen_cpu_cores: self_start.zip(self_end).map(|(a, b)| round3(b.cpu_us.saturating_sub(a.cpu_us) as f64 / 1e6 / secs)),
        machine_busy_cores: machine_start.zip(machine_end).map(|(a, b)| round3(b.saturating_sub(a) as f64 / 1e6 / secs)),
    }
}

/// One client: starts answers until the window closes, checking each one.
async fn client_loop(i: usize, shared: &Shared, mut conn: Conn, sched: Schedule, counts: &mut Counts) {
    let cfg = &shared.cfg;
    let warmup = cfg.warmup();
    let offset = warmup.mul_f64(i as f64 / cfg.clients.max(1) as f64);
    tokio::time::sleep_until((sched.start + offset).into()).await;
    let request = serde_json::json!({ "message": cfg.message, "maxTokens": cfg.tokens });
    let mut lags: Vec<u64> = Vec::with_capacity(cfg.tokens as usize + 16);
    let mut content = String::new();
    'answers: while Instant::now() < sched.window_end {
        let started = Instant::now();
        let started_in_window = sys::now_micros() >= sched.window_start_us;
        if let Err(e) = conn.emit("chat:start", &request).await {
            counts.error(e.category());
            break;
        }
        let mut first_seen = false;
        content.clear();
        let mut received: u64 = 0;
        let mut next_seq: u64 = 0;
        loop {
            let limit = (Instant::now() + cfg.recv_timeout).min(sched.hard_deadline);
            let text = match tokio::time::timeout_at(limit.into(), conn.recv()).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    counts.error(e.category());
                    break 'answers;
                }
                Err(_) if Instant::now() >= sched.hard_deadline => {
                    counts.unfinished += 1;
                    break 'answers;
                }
                Err(_) => {
                    counts.error(ClientError::Timeout.category());
                    break 'answers;
                }
            };
            let now_us = sys::now_micros();
            let args = match wire::parse(&text) {
                Ok(Packet::Event { args, .. }) => args,
                Ok(Packet::Disconnect { .. }) => {
                    counts.error("disconnected");
                    break 'answers;
                }
                Ok(_) => continue,
                Err(_) => {
                    counts.error("protocol");
                    continue;
                }
            };
            let Some(name) = wire::event_name(args) else {
                counts.error("protocol");
                continue;
            };
            match &*name {
                "chat:message" => {
                    let Ok((_, msg)) = serde_json::from_str::<(IgnoredAny, ChatMessage)>(args) else {
                        counts.error("bad chat:message");
                        continue;
                    };
                    if !first_seen {
                        first_seen = true;
                        if started_in_window && let Ok(mut h) = shared.first_token.lock() {
                            h.record(started.elapsed().as_micros() as u64);
                        }
                    }
                    if let Some(seq) = msg.seq {
                        if seq != next_seq {
                            counts.seq_errors += 1;
                        }
                        next_seq = seq + 1;
                    }
                    let in_window = now_us >= sched.window_start_us && now_us < sched.window_end_us;
                    for word in msg.content.split_ascii_whitespace() {
                        match word.parse::<u64>() {
                            Ok(stamp) => {
                                received += 1;
                                if in_window {
                                    lags.push(now_us.saturating_sub(stamp));
                                }
                            }
                            Err(_) => counts.bad_stamps += 1,
                        }
                    }
                    if in_window {
                        counts.frames_window += 1;
                    }
                    content.push_str(&msg.content);
                    if lags.len() >= 4096 {
                        flush(shared, &mut lags, counts);
                    }
                }
                "chat:end" => {
                    let end = serde_json::from_str::<(IgnoredAny, ChatEnd)>(args).map(|(_, e)| e);
                    let Ok(end) = end else {
                        counts.error("bad chat:end");
                        break 'answers;
                    };
                    let sent = end.completion_tokens.unwrap_or(0);
                    counts.answers += 1;
                    counts.tokens_sent += sent;
                    counts.tokens_received += received;
                    counts.lost += sent as i64 - received as i64;
                    if sent != u64::from(cfg.tokens) {
                        counts.short += 1;
                    }
                    if end.content.is_some_and(|c| c != content) {
                        counts.mismatches += 1;
                    }
                    flush(shared, &mut lags, counts);
                    break;
                }
                "chat:error" => {
                    let error = serde_json::from_str::<(IgnoredAny, ChatError)>(args).ok().map(|(_, e)| e);
                    flush(shared, &mut lags, counts);
                    if let Some(ChatError { retry_after_ms: Some(wait), .. }) = error {
                        // A refusal of a busy server: not an error but its overload
                        // answer. Timed, then the client waits as told, like a real one.
                        counts.refused += 1;
                        if let Ok(mut h) = shared.refused.lock() {
                            h.record(started.elapsed().as_micros() as u64);
                        }
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        break;
                    }
                    let code = error.and_then(|e| e.code).unwrap_or_else(|| "unknown".into());
                    counts.error(format!("chat:error:{code}"));
                    break;
                }
                "chat:stopped" => {
                    counts.error("chat:stopped");
                    flush(shared, &mut lags, counts);
                    break;
                }
                _ => {}
            }
        }
    }
    // Lags of an unfinished answer still count for the window.
    flush(shared, &mut lags, counts);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
}

/// Moves the lags read so far into the shared histogram; each is a token read in the window.
fn flush(shared: &Shared, lags: &mut Vec<u64>, counts: &mut Counts) {
    if lags.is_empty() {
        return;
    }
    counts.tokens_window += lags.len() as u64;
    if let Ok(mut h) = shared.lag.lock() {
        for &l in lags.iter() {
            h.record(l);
        }
    }
    lags.clear();
}

impl std::fmt::Display for StreamResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stream [{}]: {} clients ({} connected), {} tokens/answer at {} tok/s, window {:.1} s after {:.1} s warm-up",
            self.server, self.clients, self.connected, self.tokens_per_answer, self.rate_per_stream, self.duration_s, self.warmup_s
        )?;
        writeln!(
            f,
            "  delivered         {:.0} tokens/s (offered {:.0}), {:.0} frames/s, {:.2} tokens/frame",
            self.tokens_per_s, self.offered_tokens_per_s, self.frames_per_s, self.tokens_per_frame
        )?;
        writeln!(f, "  lag               {}", self.lag)?;
        writeln!(f, "  first token       {}", self.first_token)?;
        writeln!(
            f,
            "  answers           {} ended; tokens sent {} received {} lost {}",
            self.answers, self.tokens_sent, self.tokens_received, self.lost_tokens
        )?;
        writeln!(
            f,
            "  checks            short {} mismatched {} seq {} bad stamps {} unfinished {}",
            self.short_answers, self.content_mismatches, self.seq_errors, self.bad_stamps, self.unfinished_answers
        )?;
        if self.refused > 0 {
            writeln!(f, "  refused as busy   {} starts, answered after {}", self.refused, self.refused_after)?;
        }
        if let (Some(c), Some(t)) = (self.server_cpu_cores, self.server_cpu_us_per_token) {
            writeln!(f, "  server CPU        {c:.2} cores, {t:.2} us/token")?;
        }
        if let Some(u) = self.upstream_cpu_cores {
            writeln!(f, "  upstream CPU      {u:.2} cores")?;
        }
        if let Some(l) = self.loadgen_cpu_cores {
            writeln!(f, "  loadgen CPU       {l:.2} cores")?;
        }
        if let Some(m) = self.machine_busy_cores {
            writeln!(f, "  machine busy      {m:.2} cores (everything)")?;
        }
        write!(f, "  errors            {} {:?}", self.error_count, self.errors)
    }
}

/// How to look for the saturation point.
#[derive(Debug, Clone)]
pub struct SaturateConfig {
    /// Each step is a `stream` run with this config and more clients.
    pub base: StreamConfig,
    pub start_clients: usize,
    pub factor: f64,
    pub max_clients: usize,
    /// Saturated when lag p99 exceeds this.
    pub threshold_ms: f64,
    /// Saturated too when the clients read less than this share of the offered tokens/s
    /// (clients x rate): answers then start late, which lag cannot show.
    pub min_delivery: f64,
    /// Pause between steps, for the server to settle.
    pub pause: Duration,
}

/// One step of the search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub clients: usize,
    pub connected: usize,
    pub tokens_per_s: f64,
    pub frames_per_s: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub first_token_p99_ms: f64,
    pub lost_tokens: i64,
    pub error_count: u64,
    /// No loss, no error, every answer whole.
    pub clean: bool,
    pub offered_tokens_per_s: f64,
    pub server_cpu_cores: Option<f64>,
}

impl From<&StreamResult> for Step {
    fn from(r: &StreamResult) -> Self {
        Self {
            clients: r.clients,
            connected: r.connected,
            tokens_per_s: r.tokens_per_s,
            frames_per_s: r.frames_per_s,
            lag_p50_ms: r.lag.p50_ms,
            lag_p99_ms: r.lag.p99_ms,
            lag_max_ms: r.lag.max_ms,
            first_token_p99_ms: r.first_token.p99_ms,
            lost_tokens: r.lost_tokens,
            error_count: r.error_count,
            clean: r.clean(),
            offered_tokens_per_s: r.offered_tokens_per_s,
            server_cpu_cores: r.server_cpu_cores,
        }
    }
}

/// What the search found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaturateResult {
    pub scenario: String,
    pub server: String,
    pub threshold_ms: f64,
    pub min_delivery: f64,
    pub tokens_per_answer: u32,
    pub rate_per_stream: f64,
    pub step_duration_s: f64,
    pub steps: Vec<Step>,
    /// The clean step under the threshold that delivered the most tokens/s.
    pub saturation: Option<Step>,
    /// The highest tokens/s any clean step delivered.
    pub best_tokens_per_s: f64,
    /// True when a step went over the threshold, failed or delivered less than the one
    /// before; false when the search hit `max_clients` first, so the real point is higher.
    pub reached: bool,
    pub stopped_because: String,
    /// Errors and losses of every step together.
    pub lost_tokens: i64,
    pub errors: BTreeMap<String, u64>,
}

/// Raises the number of clients by `factor` until lag p99 passes the threshold.
///
/// The search also ends when a step loses tokens or errs, and when a step delivers
/// fewer tokens/s than the one before: past that peak a server is behind in a way the
/// stamps cannot show (an upstream that cannot write is stamped late, by design: the lag
/// runs from the upstream's write). The saturation point is the clean step under the
/// threshold that delivered the most tokens/s.
pub async fn saturate(cfg: &SaturateConfig) -> SaturateResult {
    let mut steps: Vec<Step> = Vec::new();
    let mut errors = BTreeMap::new();
    let mut lost = 0;
    let mut clients = cfg.start_clients.max(1);
    let mut reached = true;
    let stopped_because;
    loop {
        let mut step_cfg = cfg.base.clone();
        step_cfg.clients = clients;
        step_cfg.user_prefix = format!("{}{}-", cfg.base.user_prefix, steps.len());
        let r = run(&step_cfg).await;
        eprintln!(
            "  saturate [{}] {clients} clients: {:.0} tok/s (offered {:.0}), lag p99 {:.1} ms, first token p99 {:.1} ms, lost {}, errors {}",
            r.server, r.tokens_per_s, r.offered_tokens_per_s, r.lag.p99_ms, r.first_token.p99_ms, r.lost_tokens, r.error_count
        );
        let mut step = Step::from(&r);
        step.clean = r.clean();
        lost += r.lost_tokens;
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        let previous = steps.last().map(|s| s.tokens_per_s);
        steps.push(step);
        if r.lag.p99_ms > cfg.threshold_ms {
            stopped_because = format!("lag p99 {:.1} ms > {} ms at {clients} clients", r.lag.p99_ms, cfg.threshold_ms);
            break;
        }
        if !r.clean() {
            stopped_because = format!("errors or losses at {clients} clients (lost {}, errors {:?})", r.lost_tokens, r.errors);
            break;
        }
        if r.tokens_per_s < cfg.min_delivery * r.offered_tokens_per_s {
            stopped_because = format!(
                "delivered {:.0} of {:.0} offered tokens/s (under {:.0} %) at {clients} clients",
                r.tokens_per_s,
                r.offered_tokens_per_s,
                cfg.min_delivery * 100.0
            );
            break;
        }
        if let Some(p) = previous.filter(|p| r.tokens_per_s < *p) {
            stopped_because = format!("throughput fell from {p:.0} to {:.0} tokens/s at {clients} clients", r.tokens_per_s);
            break;
        }
        let next = ((clients as f64) * cfg.factor).ceil() as usize;
        if next > cfg.max_clients || next <= clients {
            reached = false;
            stopped_because = format!("reached the client cap ({}) without passing {} ms", cfg.max_clients, cfg.threshold_ms);
            break;
        }
        clients = next;
        tokio::time::sleep(cfg.pause).await;
    }
    let saturation = steps
        .iter()
        .filter(|s| s.clean && s.lag_p99_ms <= cfg.threshold_ms && s.tokens_per_s >= cfg.min_delivery * s.offered_tokens_per_s)
        .max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s))
        .cloned();
    let best = steps.iter().filter(|s| s.clean).map(|s| s.tokens_per_s).fold(0.0, f64::max);
    SaturateResult {
        scenario: "saturate".into(),
        server: cfg.base.label.clone(),
        threshold_ms: cfg.threshold_ms,
        min_delivery: cfg.min_delivery,
        tokens_per_answer: cfg.base.tokens,
        rate_per_stream: cfg.base.rate,
        step_duration_s: round3(cfg.base.duration.as_secs_f64()),
        steps,
        saturation,
        best_tokens_per_s: best,
        reached,
        stopped_because,
        lost_tokens: lost,
        errors,
    }
}

impl std::fmt::Display for SaturateResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "saturate [{}]: lag p99 threshold {} ms", self.server, self.threshold_ms)?;
        for s in &self.steps {
            writeln!(
                f,
                "  {:>6} clients  {:>9.0} tok/s  {:>9.0} frames/s  lag p50 {:>8.2} ms  p99 {:>8.2} ms  first token p99 {:>8.2} ms  lost {}  errors {}",
                s.clients, s.tokens_per_s, s.frames_per_s, s.lag_p50_ms, s.lag_p99_ms, s.first_token_p99_ms, s.lost_tokens, s.error_count
            )?;
        }
        match &self.saturation {
            Some(s) => writeln!(
                f,
                "  saturation point  {} clients, {:.0} tokens/s{}",
                s.clients,
                s.tokens_per_s,
                if self.reached { "" } else { " (not reached: cap)" }
            )?,
            None => writeln!(f, "  saturation point  below the first step")?,
        }
        write!(f, "  stopped because   {}", self.stopped_because)
    }
}
