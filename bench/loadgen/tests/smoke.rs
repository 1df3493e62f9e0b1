//! CI smoke run of the load generator at tiny sizes: against the real `chatwire serve`
//! binary (built-in mock in stamp mode) and against the in-process ceiling. It asserts
//! zero lost tokens, zero errors and well-formed results; never timings.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use loadgen::{Conn, Target, ceiling, client::ClientError, cpu, idle, storm, stream, ttft};

const SECRET: &str = "smoke-secret";

/// The chatwire binary: `CHATWIRE_BIN`, else the workspace's debug build.
fn chatwire_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHATWIRE_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/chatwire")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the server when the test ends, however it ends.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn health_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn start_chatwire() -> Server {
    start_chatwire_with(&[])
}

/// `chatwire serve` with the smoke settings changed by `vars`.
fn start_chatwire_with(vars: &[(&str, &str)]) -> Server {
    let bin = chatwire_bin();
    assert!(bin.exists(), "no chatwire binary at {} (build it with `cargo build --bin chatwire`, or set CHATWIRE_BIN)", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .arg("serve")
        // A stray .env in the working directory must not change the settings.
        .current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("NODE_ENV")
        .env_remove("JWT_PUBLIC_KEY")
        .env_remove("JWT_ISSUER")
        .env_remove("JWT_AUDIENCE")
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", SECRET)
        .env("MOCK_STAMP", "true")
        .env("MOCK_TOKEN_DELAY_MS", "5")
        // A loaded test machine's scheduling lag is no overload: every start must run.
        .env("OVERLOAD_LAG_MS", "0")
        .env("DATABASE_URL", format!("sqlite://{}/smoke.db?mode=rwc", dir.path().display()))
        .env("RATE_LIMIT_PER_MINUTE", "0")
        .env("MAX_CONCURRENT_STREAMS_PER_USER", "1000")
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut server = Server { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health_ok(port) {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("chatwire exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "chatwire did not answer /health within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn assert_clean_stream(r: &stream::StreamResult, clients: usize, tokens: u32) {
    assert_eq!(r.scenario, "stream");
    assert_eq!(r.connected, clients, "{r:#?}");
    assert_eq!(r.error_count, 0, "errors: {:?}", r.errors);
    assert!(r.errors.is_empty());
    assert_eq!(r.lost_tokens, 0, "{r:#?}");
    assert!(r.answers > 0, "{r:#?}");
    assert_eq!(r.tokens_sent, r.tokens_received);
    assert_eq!(r.tokens_sent, r.answers * u64::from(tokens), "every answer has exactly maxTokens tokens");
    assert_eq!(r.short_answers, 0);
    assert_eq!(r.content_mismatches, 0);
    assert_eq!(r.seq_errors, 0);
    assert_eq!(r.bad_stamps, 0);
    assert_eq!(r.unfinished_answers, 0);
    assert!(r.clean());
    assert!(r.lag.count > 0 && r.tokens_per_s > 0.0 && r.frames_per_s > 0.0, "{r:#?}");
    assert!(r.lag.p50_ms <= r.lag.p99_ms && r.lag.p99_ms <= r.lag.max_ms, "{:?}", r.lag);
    // Answers started in the window, each timed to its first token.
    assert!(r.first_token.count > 0 && r.first_token.count <= r.answers + r.clients as u64, "{:?}", r.first_token);
    assert!(r.tokens_per_frame >= 1.0);
    // The JSON line is one object that reads back as the same result.
    let json = serde_json::to_string(r).unwrap();
    assert!(!json.contains('\n'));
    assert_eq!(&serde_json::from_str::<stream::StreamResult>(&json).unwrap(), r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_clean_against_chatwire() {
    let server = start_chatwire();
    let pid = server.child.id();
    let target = Target::parse(&format!("http://127.0.0.1:{}", server.port), "/ai").unwrap();

    // A wrong secret is refused the way the protocol says.
    let bad = loadgen::sys::mint_jwt("not-the-secret", "intruder");
    match Conn::connect(&target, &serde_json::json!({ "token": bad })).await {
        Err(ClientError::Refused(m)) => assert_eq!(m, "unauthorized"),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a wrong secret was accepted"),
    }

    let mut cfg = stream::StreamConfig::new(target.clone(), SECRET, 5, 20, 200.0, Duration::from_secs(2));
    cfg.label = "chatwire".into();
    cfg.pid = Some(pid);
    let r = stream::run(&cfg).await;
    eprintln!("{r}");
    assert_clean_stream(&r, 5, 20);
    assert_eq!(r.server, "chatwire");
    assert!(r.server_cpu_cores.is_some() && r.server_rss_kib.is_some());

    // The headline scenario: the stream machinery at a fixed load, with the server's CPU
    // per token and whether it kept up (it easily does at this size).
    let mut fixed = cfg.clone();
    fixed.user_prefix = "cpu-".into();
    fixed.duration = Duration::from_secs(1);
    let c = cpu::run(&cpu::CpuConfig { stream: fixed, threshold_ms: 60_000.0, min_delivery: 0.0 }).await;
    eprintln!("{c}");
    assert_eq!(c.run.scenario, "cpu");
    let mut as_stream = c.run.clone();
    as_stream.scenario = "stream".into();
    assert_clean_stream(&as_stream, 5, 20);
    assert!(c.below_saturation && c.overload.is_none(), "{c:#?}");
    assert!(c.run.server_cpu_us_per_token.is_some_and(|t| t > 0.0), "{c:#?}");
    // Its starts are spread over one whole answer (20 tokens at 200 tok/s).
    assert_eq!(c.run.warmup_s, 0.1);
    let json = serde_json::to_string(&c).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["scenario"], "cpu");
    assert_eq!(v["below_saturation"], true);
    assert_eq!(serde_json::from_str::<cpu::CpuResult>(&json).unwrap(), c);

    // Two saturation steps; the threshold is out of reach so the cap ends the search.
    let mut base = cfg.clone();
    base.duration = Duration::from_secs(1);
    base.user_prefix = "sat-".into();
    let sat = stream::saturate(&stream::SaturateConfig {
        base,
        start_clients: 2,
        factor: 2.0,
        max_clients: 4,
        threshold_ms: 60_000.0,
        min_delivery: 0.0,
        pause: Duration::from_millis(100),
    })
    .await;
    eprintln!("{sat}");
    assert_eq!(sat.steps.iter().map(|s| s.clients).collect::<Vec<_>>(), vec![2, 4]);
    assert!(!sat.reached);
    assert_eq!(sat.lost_tokens, 0);
    assert!(sat.errors.is_empty(), "{:?}", sat.errors);
    assert_eq!(sat.saturation.as_ref().map(|s| s.clients), Some(4));

    let mut t = ttft::TtftConfig::new(target.clone(), SECRET, 20.0, Duration::from_secs(1), Duration::ZERO);
    t.label = "chatwire".into();
    t.tokens = 3;
    let tr = ttft::run(&t).await;
    eprintln!("{tr}");
    assert_eq!(tr.error_count, 0, "{:?}", tr.errors);
    assert!(tr.requests_sent > 0);
    assert_eq!(tr.first_tokens, tr.requests_sent);
    assert_eq!(tr.answers, tr.requests_sent);
    assert_eq!(tr.ttft_gateway.count, tr.requests_sent);
    serde_json::to_string(&tr).unwrap();

    let mut i = idle::IdleConfig::new(target, SECRET, 50);
    i.label = "chatwire".into();
    i.pid = Some(pid);
    i.settle = Duration::from_millis(300);
    i.hold = Duration::from_millis(300);
    let ir = idle::run(&i).await;
    eprintln!("{ir}");
    assert_eq!(ir.connected, 50, "{:?}", ir.errors);
    assert_eq!(ir.failed, 0);
    assert!(ir.errors.is_empty(), "{:?}", ir.errors);
    assert!(ir.connect_rate_per_s > 0.0);
    assert!(ir.rss_per_conn_kib.is_some() && ir.cpu_per_connect_us.is_some());
    assert_eq!(ir.connect_latency.count, 50);
    let json = serde_json::to_string(&ir).unwrap();
    assert_eq!(serde_json::from_str::<idle::IdleResult>(&json).unwrap(), ir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_speaks_the_same_frames() {
    let listener = ceiling::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(ceiling::serve(
        listener,
        ceiling::CeilingConfig { token_delay: Duration::from_millis(5), first_token_delay: Duration::ZERO },
    ));
    let target = Target::parse(&format!("http://{addr}"), "/ai").unwrap();
    let mut cfg = stream::StreamConfig::new(target.clone(), SECRET, 5, 20, 200.0, Duration::from_secs(1));
    cfg.label = "ceiling".into();
    let r = stream::run(&cfg).await;
    assert_clean_stream(&r, 5, 20);

    let tr = ttft::run(&ttft::TtftConfig::new(target, SECRET, 20.0, Duration::from_millis(500), Duration::ZERO)).await;
    assert_eq!(tr.error_count, 0, "{:?}", tr.errors);
    assert_eq!(tr.first_tokens, tr.requests_sent);
    server.abort();
}

/// Sockets waiting in the `ttft` pool answer the server's heartbeats: with a 150 ms
/// ping and every socket idle for most of a second between its starts, a pool that
/// did not would lose its sockets to the heartbeat timeout and its starts with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_keeps_its_waiting_sockets_alive() {
    let server = start_chatwire_with(&[("PING_INTERVAL_MS", "150"), ("PING_TIMEOUT_MS", "150")]);
    let target = Target::parse(&format!("http://127.0.0.1:{}", server.port), "/ai").unwrap();
    let mut t = ttft::TtftConfig::new(target, SECRET, 20.0, Duration::from_secs(2), Duration::ZERO);
    t.pool = Some(16);
    let tr = ttft::run(&t).await;
    eprintln!("{tr}");
    assert_eq!(tr.connected, 16);
    assert_eq!(tr.error_count, 0, "{:?}", tr.errors);
    // Every start sent on a pooled socket was answered: none had lost its socket. How
    // many starts found every socket busy (`skipped`) depends on the machine's load.
    assert_eq!((tr.first_tokens, tr.answers), (tr.requests_sent, tr.requests_sent));
    assert!(tr.requests_sent > 16, "sockets were used again after waiting: {} starts on 16", tr.requests_sent);
}

/// The reconnect storm: every idle client drops at the moment the streams' window
/// opens, and each comes back through socket.io-client's backoff (its first delay is
/// 0.5 to 1.5 s) while the answers stream on, none losing a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_brings_every_client_back_while_answers_stream() {
    let server = start_chatwire();
    let target = Target::parse(&format!("http://127.0.0.1:{}", server.port), "/ai").unwrap();
    let mut cfg = storm::StormConfig::new(target, SECRET, 200, 5);
    cfg.idle.label = "chatwire".into();
    cfg.idle.pid = Some(server.child.id());
    (cfg.tokens, cfg.rate, cfg.window) = (20, 200.0, Duration::from_secs(2));
    let r = storm::run(&cfg).await;
    eprintln!("{r}");
    assert_eq!(r.scenario, "storm");
    assert_eq!((r.connected_before, r.back, r.not_back), (200, 200, 0), "{r:#?}");
    assert_eq!(r.failed_connects, 0, "{:?}", r.failed_by_cause);
    assert!(r.failed_by_cause.is_empty());
    assert_eq!(r.back_after.count, 200);
    // Nobody reconnects before the backoff's smallest first delay (1 s - 50 %).
    assert!(r.back_after.p50_ms >= 500.0 && r.all_back_seconds.is_some_and(|s| s >= 0.5), "{r:#?}");
    assert!(r.attempts_max >= 1);
    assert!(r.server_cpu_per_reconnect_us.is_some());
    assert_clean_stream(&r.streams, 5, 20);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<storm::StormResult>(&json).unwrap(), r);
}

/// Past OVERLOAD_MAX_RUNNING the server refuses starts with `retryAfterMs`: the stream
/// clients count and time those refusals apart from errors, wait as told, and start
/// again; the answers that ran lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_are_counted_and_timed_apart_from_errors() {
    let server = start_chatwire_with(&[("OVERLOAD_MAX_RUNNING", "2"), ("OVERLOAD_RETRY_AFTER_MS", "50")]);
    let target = Target::parse(&format!("http://127.0.0.1:{}", server.port), "/ai").unwrap();
    let mut cfg = stream::StreamConfig::new(target, SECRET, 6, 20, 200.0, Duration::from_secs(2));
    cfg.warmup = Some(Duration::ZERO);
    let r = stream::run(&cfg).await;
    eprintln!("{r}");
    assert!(r.refused > 0, "{r:#?}");
    assert_eq!(r.refused_after.count, r.refused);
    assert_eq!(r.error_count, 0, "a refusal is no error: {:?}", r.errors);
    assert_eq!(r.lost_tokens, 0);
    assert!(r.answers > 0 && r.short_answers == 0 && r.content_mismatches == 0, "{r:#?}");
}
