//! `loadgen`: see `bench/run.sh` and docs/BENCHMARKS.md.
//!
//! Every scenario prints a human summary, then its result as one line of JSON, last.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use loadgen::{Target, ceiling, cpu, flood, idle, report, storm, stream, sys, ttft};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for chatwire's /ai namespace, and the raw WebSocket ceiling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// The server: http://host:port (ws:// works too). Only loopback is meant.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    #[arg(long, default_value = "/ai")]
    namespace: String,
    /// HS256 secret to mint each client's JWT with.
    #[arg(long, env = "JWT_SECRET", default_value = "bench-secret", hide_env_values = true)]
    secret: String,
    /// The server's process id: RSS and CPU are read from /proc/<pid>.
    #[arg(long)]
    pid: Option<u32>,
    /// The server's name in the result.
    #[arg(long, default_value = "server")]
    label: String,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// A `Cookie` header sent with every handshake, e.g. `chatwire_node=node2` to pin the
    /// clients to one node behind deploy/nginx/chatwire.conf.
    #[arg(long)]
    cookie: Option<String>,
}

impl Common {
    fn target(&self) -> Target {
        let mut target = Target::parse(&self.url, &self.namespace).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
        target.cookie = self.cookie.clone();
        target
    }
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections, hold them, report connect rate and server RSS/CPU per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Wait after the last connect before reading the server's RSS.
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
        /// Keep the connections this long after that.
        #[arg(long, default_value_t = 1000)]
        hold_ms: u64,
        /// A reconnect storm instead: every connection drops at once and reconnects with
        /// socket.io-client's default backoff while --storm-streams answers stream.
        #[arg(long)]
        storm: bool,
        #[arg(long, default_value_t = 200)]
        storm_streams: usize,
        /// The streams' measurement window from the drop on, in seconds.
        #[arg(long, default_value_t = 15.0)]
        storm_window: f64,
        /// Tokens per answer and tokens/s per stream (the upstream sets the real pace).
        #[arg(long, default_value_t = 200)]
        tokens: u32,
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
    /// C clients each looping chat:start -> chat:end over stamped tokens.
    Stream {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// maxTokens per answer.
        #[arg(long, default_value_t = 200)]
        tokens: u32,
        /// Tokens/s per stream the upstream is set to (MOCK_TOKEN_DELAY_MS = 1000 / rate).
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Measurement window in seconds (per step with --saturate).
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Clients start spread over this many seconds before the window (default: one
        /// answer's length, at most 2 s).
        #[arg(long)]
        warmup: Option<f64>,
        /// Give up on a client that hears nothing for this many seconds.
        #[arg(long, default_value_t = 30.0)]
        recv_timeout: f64,
        /// Raise the clients by --factor until lag p99 passes --threshold-ms.
        #[arg(long)]
        saturate: bool,
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        #[arg(long, default_value_t = 100.0)]
        threshold_ms: f64,
        /// With --saturate: also saturated when less than this share of the offered
        /// tokens/s (clients x rate) is delivered.
        #[arg(long, default_value_t = 0.9)]
        min_delivery: f64,
        /// With --saturate: pause between steps, for the server to settle.
        #[arg(long, default_value_t = 2000)]
        pause_ms: u64,
        /// Stop the search here (each client is a socket on both ends).
        #[arg(long, default_value_t = 9000)]
        max_clients: usize,
        /// The upstream mock's process id, to report its CPU use as well.
        #[arg(long)]
        upstream_pid: Option<u32>,
        /// The scenario's name in the result (`overload`: a run at 2x the saturation).
        #[arg(long, default_value = "stream")]
        scenario: String,
    },
    /// Server CPU per delivered token at one fixed load, below saturation.
    Cpu {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// maxTokens per answer.
        #[arg(long, default_value_t = 200)]
        tokens: u32,
        /// Tokens/s per stream the upstream is set to (MOCK_TOKEN_DELAY_MS = 1000 / rate).
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Clients start spread over this many seconds before the window (default: one
        /// whole answer, tokens / rate, so the window sees a steady load).
        #[arg(long)]
        warmup: Option<f64>,
        /// Give up on a client that hears nothing for this many seconds.
        #[arg(long, default_value_t = 30.0)]
        recv_timeout: f64,
        /// Above this lag p99 the server was overloaded and the figure is marked so.
        #[arg(long, default_value_t = 100.0)]
        threshold_ms: f64,
        /// Under this share of the offered tokens/s delivered, likewise.
        #[arg(long, default_value_t = 0.9)]
        min_delivery: f64,
        /// The upstream mock's process id, to report its CPU use as well.
        #[arg(long)]
        upstream_pid: Option<u32>,
    },
    /// chat:starts at a fixed rate; the gateway's time to first token.
    Ttft {
        #[command(flatten)]
        common: Common,
        /// chat:starts per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// The upstream's first-token delay (MOCK_FIRST_TOKEN_DELAY_MS), subtracted.
        #[arg(long, default_value_t = 0)]
        first_token_delay_ms: u64,
        /// maxTokens per answer.
        #[arg(long, default_value_t = 1)]
        tokens: u32,
        /// Sockets in the pool (default: enough for one second of starts, at least 16).
        #[arg(long)]
        connections: Option<usize>,
    },
    /// The raw WebSocket ceiling server: same frames, no Socket.IO, no storage.
    Ceiling {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Tokens/s per answer (token delay = 1000 / rate ms), unless --token-delay-ms.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long)]
        token_delay_ms: Option<u64>,
        #[arg(long, default_value_t = 0)]
        first_token_delay_ms: u64,
    },
    /// Join a run's result files into latest.json, print the table and the ratios line.
    Report {
        /// Folder of result files (one JSON object each) and an optional meta.json.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the joined document.
        #[arg(long)]
        out: PathBuf,
    },
    /// Attack-shaped traffic; prints the server's RSS before, at its peak during, and after.
    Flood {
        #[command(flatten)]
        common: Common,
        /// `lookups` (chat:join floods) or `attachments` (binary attachments of 1 MiB).
        #[arg(long, default_value = "lookups")]
        kind: String,
        #[arg(long, default_value_t = 2)]
        sockets: usize,
        /// Events per socket (lookups) or attachment frames per socket (attachments).
        #[arg(long, default_value_t = 60_000)]
        events: usize,
        /// Events one socket sends before it reads their acks.
        #[arg(long, default_value_t = 12_000)]
        batch: usize,
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Prints the summary, then the JSON line; a closed stdout (`| head`) is not an error.
fn emit<T: std::fmt::Display + serde::Serialize>(result: &T) {
    use std::io::Write;
    let json = serde_json::to_string(result).expect("results serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{result}").and_then(|()| writeln!(out, "{json}")).and_then(|()| out.flush());
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let fd_limit = sys::raise_fd_limit();
    match cli.command {
        Command::Idle { common, connections, settle_ms, hold_ms, storm, storm_streams, storm_window, tokens, rate } => {
            if connections as u64 + 64 > fd_limit {
                eprintln!("warning: {connections} connections but the open-file limit is {fd_limit}");
            }
            if storm {
                let mut cfg = storm::StormConfig::new(common.target(), common.secret.clone(), connections, storm_streams);
                (cfg.idle.label, cfg.idle.pid, cfg.idle.concurrency) = (common.label.clone(), common.pid, common.connect_concurrency);
                (cfg.tokens, cfg.rate, cfg.window) = (tokens, rate, secs(storm_window));
                return emit(&storm::run(&cfg).await);
            }
            let mut cfg = idle::IdleConfig::new(common.target(), common.secret.clone(), connections);
            cfg.label = common.label.clone();
            cfg.pid = common.pid;
            cfg.concurrency = common.connect_concurrency;
            cfg.settle = Duration::from_millis(settle_ms);
            cfg.hold = Duration::from_millis(hold_ms);
            emit(&idle::run(&cfg).await);
        }
        Command::Stream {
            common,
            clients,
            tokens,
            rate,
            duration,
            warmup,
            recv_timeout,
            saturate,
            factor,
            threshold_ms,
            min_delivery,
            pause_ms,
            max_clients,
            upstream_pid,
            scenario,
        } => {
            let mut cfg = stream::StreamConfig::new(common.target(), common.secret.clone(), clients, tokens, rate, secs(duration));
            cfg.label = common.label.clone();
            cfg.pid = common.pid;
            cfg.connect_concurrency = common.connect_concurrency;
            cfg.warmup = warmup.map(secs);
            cfg.recv_timeout = secs(recv_timeout);
            cfg.upstream_pid = upstream_pid;
            if saturate {
                let sat = stream::SaturateConfig {
                    base: cfg,
                    start_clients: clients,
                    factor,
                    max_clients: max_clients.min(fd_limit.saturating_sub(64) as usize),
                    threshold_ms,
                    min_delivery,
                    pause: Duration::from_millis(pause_ms),
                };
                emit(&stream::saturate(&sat).await);
            } else {
                let mut r = stream::run(&cfg).await;
                r.scenario = scenario;
                emit(&r);
            }
        }
        Command::Cpu { common, clients, tokens, rate, duration, warmup, recv_timeout, threshold_ms, min_delivery, upstream_pid } => {
            let mut sc = stream::StreamConfig::new(common.target(), common.secret.clone(), clients, tokens, rate, secs(duration));
            sc.label = common.label.clone();
            sc.pid = common.pid;
            sc.connect_concurrency = common.connect_concurrency;
            sc.warmup = warmup.map(secs);
            sc.recv_timeout = secs(recv_timeout);
            sc.upstream_pid = upstream_pid;
            sc.user_prefix = "cpu-".into();
            emit(&cpu::run(&cpu::CpuConfig { stream: sc, threshold_ms, min_delivery }).await);
        }
        Command::Ttft { common, rate, duration, first_token_delay_ms, tokens, connections } => {
            let mut cfg = ttft::TtftConfig::new(
                common.target(),
                common.secret.clone(),
                rate,
                secs(duration),
                Duration::from_millis(first_token_delay_ms),
            );
            cfg.label = common.label.clone();
            cfg.pid = common.pid;
            cfg.tokens = tokens;
            cfg.pool = connections;
            emit(&ttft::run(&cfg).await);
        }
        Command::Ceiling { host, port, rate, token_delay_ms, first_token_delay_ms } => {
            let token_delay = match token_delay_ms {
                Some(ms) => Duration::from_millis(ms),
                None => Duration::from_secs_f64(1.0 / rate.max(0.001)),
            };
            let addr = format!("{host}:{port}").parse().unwrap_or_else(|e| {
                eprintln!("bad address {host}:{port}: {e}");
                std::process::exit(2)
            });
            let listener = ceiling::bind(addr).unwrap_or_else(|e| {
                eprintln!("cannot listen on {addr}: {e}");
                std::process::exit(1)
            });
            let local = listener.local_addr().expect("bound");
            println!("ceiling listening on {local} (token delay {token_delay:?}, open-file limit {fd_limit})");
            let cfg = ceiling::CeilingConfig { token_delay, first_token_delay: Duration::from_millis(first_token_delay_ms) };
            tokio::select! {
                r = ceiling::serve(listener, cfg) => if let Err(e) = r { eprintln!("{e}") },
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Report { dir, out } => {
            let doc = report::collect(&dir).unwrap_or_else(|e| {
                eprintln!("cannot read {}: {e}", dir.display());
                std::process::exit(1)
            });
            if let Some(parent) = out.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let text = serde_json::to_string_pretty(&doc).expect("report serializes");
            if let Err(e) = std::fs::write(&out, text + "\n") {
                eprintln!("cannot write {}: {e}", out.display());
                std::process::exit(1);
            }
            println!("{}", report::table(&doc));
            println!("goals (docs/BENCHMARKS.md; not test assertions):");
            println!("{}", report::goals_text(&doc));
            println!("{}", report::cpu_line(&doc));
            println!("{}", report::ratios_line(&doc));
        }
        Command::Flood { common, kind, sockets, events, batch, settle_ms } => {
            let cfg = flood::FloodConfig {
                target: common.target(),
                secret: common.secret.clone(),
                label: common.label.clone(),
                pid: common.pid,
                kind,
                sockets,
                events,
                batch,
                settle: Duration::from_millis(settle_ms),
            };
            emit(&flood::run(&cfg).await);
        }
        Command::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            println!("{}", l.local_addr().expect("bound").port());
        }
    }
}
