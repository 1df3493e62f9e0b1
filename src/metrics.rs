//! Prometheus metrics: one registry per [`crate::Application`], never a process-wide
//! recorder, so servers started side by side in one process (the tests) count apart.
//!
//! Every handle is an `Arc` around atomics (histograms: a short mutex), created once at
//! start-up: the hot path (a token) is one atomic add, with no allocation and no lock.
//! Gauges of things that are counted elsewhere anyway (sockets, running answers) are
//! set when `/metrics` is scraped, from those counts, so they cannot drift.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chat::{ErrorCode, Status};

/// The content type of a scrape (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// How often the runtime-lag probe asks to be woken.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(250);

const TTFT_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const ANSWER_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const QUERY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const LAG_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WireLabel {
    wire: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: String,
    code: &'static str,
}

/// This server's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Parts>);

struct Parts {
    registry: Registry,
    socketio_connections: Gauge,
    sse_connections: Gauge,
    answers_running: Gauge,
    /// Pre-made per final status, so ending an answer looks nothing up.
    answers_complete: Counter,
    answers_stopped: Counter,
    answers_error: Counter,
    tokens: Counter,
    ttft: Histogram,
    answer_duration: Histogram,
    upstream_errors: Family<UpstreamLabels, Counter>,
    chat_errors: Family<CodeLabel, Counter>,
    db_query: Histogram,
    runtime_lag: Histogram,
    redis_commands: Counter,
    store_batches: Counter,
    store_batched_turns: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, labelled series of known labels at 0.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Family::<WireLabel, Gauge>::default();
        let answers = Family::<StatusLabel, Counter>::default();
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let chat_errors = Family::<CodeLabel, Counter>::default();
        let (tokens, redis_commands, answers_running) = (Counter::default(), Counter::default(), Gauge::default());
        let (store_batches, store_batched_turns) = (Counter::default(), Counter::default());
        let ttft = Histogram::new(TTFT_BUCKETS);
        let answer_duration = Histogram::new(ANSWER_BUCKETS);
        let db_query = Histogram::new(QUERY_BUCKETS);
        let runtime_lag = Histogram::new(LAG_BUCKETS);
        registry.register("chatwire_connections", "Open connections, by wire", connections.clone());
        registry.register("chatwire_answers_running", "Answers running on this node", answers_running.clone());
        registry.register("chatwire_answers", "Answers ended, by final status", answers.clone());
        registry.register("chatwire_tokens_streamed", "Completion tokens (upstream deltas) streamed", tokens.clone());
        registry.register("chatwire_ttft_seconds", "Time from chat:start to the answer's first token", ttft.clone());
        registry.register(
            "chatwire_answer_duration_seconds",
            "Time from chat:start to the answer's end, whatever the end",
            answer_duration.clone(),
        );
        registry.register(
            "chatwire_upstream_errors",
            "Failed upstream requests (retried attempts included), by provider and error code",
            upstream_errors.clone(),
        );
        registry.register("chatwire_chat_errors", "Errors told to clients (chat:error and SSE refusals), by code", chat_errors.clone());
        registry.register("chatwire_db_query_seconds", "Database statement latency", db_query.clone());
        registry.register("chatwire_runtime_lag_seconds", "How late the runtime wakes a timer", runtime_lag.clone());
        registry.register("chatwire_redis_commands", "Redis round trips (cluster mode)", redis_commands.clone());
        registry.register("chatwire_store_batches", "Transactions that stored chat:start turns (group commit)", store_batches.clone());
        registry.register("chatwire_store_batched_turns", "chat:start turns those transactions took", store_batched_turns.clone());
        let status = |s: Status| answers.get_or_create_owned(&StatusLabel { status: s.as_str() });
        let wire = |w: &'static str| connections.get_or_create_owned(&WireLabel { wire: w });
        Self(Arc::new(Parts {
            socketio_connections: wire("socketio"),
            sse_connections: wire("sse"),
            answers_running,
            answers_complete: status(Status::Complete),
            answers_stopped: status(Status::Stopped),
            answers_error: status(Status::Error),
            tokens,
            ttft,
            answer_duration,
            upstream_errors,
            chat_errors,
            db_query,
            runtime_lag,
            redis_commands,
            store_batches,
            store_batched_turns,
            registry,
        }))
    }

    /// The scrape, in the Prometheus text format, with the live counts set first.
    pub fn encode(&self, socketio_connections: usize, answers_running: usize) -> String {
        let parts = &self.0;
        parts.socketio_connections.set(i64::try_from(socketio_connections).unwrap_or(i64::MAX));
        parts.answers_running.set(i64::try_from(answers_running).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_text::encode(&mut text, &parts.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        text
    }

    /// Counts an open SSE response until the returned guard drops.
    pub fn sse_connection(&self) -> OpenConnection {
        self.0.sse_connections.inc();
        OpenConnection(self.0.sse_connections.clone())
    }

    /// Completion tokens streamed: called once per append, not per token.
    pub fn tokens_streamed(&self, n: u64) {
        if n > 0 {
            self.0.tokens.inc_by(n);
        }
    }

    /// An answer ended with `status`, `duration` after its `chat:start`, its first token
    /// `ttft` after it (none when it had none).
    pub fn answer_ended(&self, status: Status, duration: Duration, ttft: Option<Duration>) {
        let parts = &self.0;
        match status {
            Status::Complete => parts.answers_complete.inc(),
            Status::Stopped => parts.answers_stopped.inc(),
            Status::Error | Status::Streaming => parts.answers_error.inc(),
        };
        parts.answer_duration.observe(duration.as_secs_f64());
        if let Some(ttft) = ttft {
            parts.ttft.observe(ttft.as_secs_f64());
        }
    }

    /// An error told to a client (or a failed answer's final error).
    pub fn chat_error(&self, code: ErrorCode) {
        self.0.chat_errors.get_or_create(&CodeLabel { code: code.as_str() }).inc();
    }

    /// A failed upstream request.
    pub fn upstream_error(&self, provider: &str, code: ErrorCode) {
        self.0.upstream_errors.get_or_create(&UpstreamLabels { provider: provider.to_owned(), code: code.as_str() }).inc();
    }

    /// One database statement took `elapsed`.
    pub fn db_query(&self, elapsed: Duration) {
        self.0.db_query.observe(elapsed.as_secs_f64());
    }

    /// A transaction of `turns` `chat:start` turns was begun (group commit).
    pub fn store_batch(&self, turns: usize) {
        self.0.store_batches.inc();
        self.0.store_batched_turns.inc_by(u64::try_from(turns).unwrap_or(u64::MAX));
    }

    /// The Redis round-trip counter, for the cluster mode's client.
    pub fn redis_commands(&self) -> Counter {
        self.0.redis_commands.clone()
    }

    /// Measures, until `shutdown`, how late the runtime wakes a timer: a runtime whose
    /// threads are blocked or saturated wakes everything late, answers included.
    pub fn spawn_lag_probe(&self, shutdown: CancellationToken) {
        let lag = self.0.runtime_lag.clone();
        tokio::spawn(async move {
            loop {
                let deadline = Instant::now() + LAG_PROBE_EVERY;
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = shutdown.cancelled() => return,
                }
                lag.observe(Instant::now().saturating_duration_since(deadline).as_secs_f64());
            }
        });
    }
}

/// An open connection of a wire counted by a guard; the gauge goes down when it drops.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_scrape_from_the_start_and_errors_from_their_first() {
        let metrics = Metrics::new();
        let text = metrics.encode(2, 1);
        for line in [
            "# TYPE chatwire_connections gauge",
            "chatwire_connections{wire=\"socketio\"} 2",
            "chatwire_connections{wire=\"sse\"} 0",
            "chatwire_answers_running 1",
            "chatwire_answers_total{status=\"complete\"} 0",
            "chatwire_answers_total{status=\"stopped\"} 0",
            "chatwire_answers_total{status=\"error\"} 0",
            "chatwire_tokens_streamed_total 0",
            "# TYPE chatwire_ttft_seconds histogram",
            "# TYPE chatwire_answer_duration_seconds histogram",
            "# TYPE chatwire_db_query_seconds histogram",
            "# TYPE chatwire_runtime_lag_seconds histogram",
            "chatwire_redis_commands_total 0",
            "chatwire_store_batches_total 0",
            "chatwire_store_batched_turns_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        // Series of errors appear with their first error.
        assert!(!text.contains("chatwire_chat_errors") && !text.contains("chatwire_upstream_errors"));
        metrics.chat_error(ErrorCode::Busy);
        metrics.upstream_error("mock", ErrorCode::UpstreamTimeout);
        let text = metrics.encode(0, 0);
        assert!(text.lines().any(|l| l == "chatwire_chat_errors_total{code=\"BUSY\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "chatwire_upstream_errors_total{provider=\"mock\",code=\"UPSTREAM_TIMEOUT\"} 1"), "{text}");
        let sse = metrics.sse_connection();
        assert!(metrics.encode(0, 0).contains("chatwire_connections{wire=\"sse\"} 1"));
        drop(sse);
        assert!(metrics.encode(0, 0).contains("chatwire_connections{wire=\"sse\"} 0"));
    }

    #[test]
    fn the_grafana_dashboard_reads_only_metrics_that_exist() {
        let metrics = Metrics::new();
        metrics.chat_error(ErrorCode::Internal);
        metrics.upstream_error("mock", ErrorCode::UpstreamError);
        let text = metrics.encode(0, 0);
        let dashboard = include_str!("../docs/grafana-dashboard.json");
        let mut named = 0;
        for (at, _) in dashboard.match_indices("chatwire_") {
            let name: String = dashboard[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            assert!(text.contains(&format!("\n{name}")), "the dashboard reads {name}, which /metrics does not have");
            named += 1;
        }
        assert!(named >= 11, "every metric has a panel");
    }
}
