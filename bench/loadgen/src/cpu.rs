//! `cpu`: the server's CPU time per delivered token, at one fixed load below every
//! server's saturation.
//!
//! It is the `stream` scenario at a load chosen in advance (the same clients, tokens
//! per answer and rate for every server), with the clients' starts spread over one
//! whole answer so the window sees a steady load. The server's CPU time (user +
//! system, all threads) over the window is divided by the tokens the clients read in
//! it. The result records whether the server kept up with that load (lag p99 under the
//! saturation threshold, at least `min_delivery` of the offered tokens/s delivered,
//! nothing lost): a figure taken from an overloaded server is marked as such, since
//! past saturation a server batches, queues and sheds, and its cost per token is no
//! longer what it costs under normal load.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stream::{self, StreamConfig, StreamResult};

/// What to run.
#[derive(Debug, Clone)]
pub struct CpuConfig {
    /// The fixed load; `warmup` `None` means one answer's length (tokens / rate).
    pub stream: StreamConfig,
    /// The saturation search's lag threshold: above it the server was overloaded.
    pub threshold_ms: f64,
    /// Under this share of the offered tokens/s delivered, the server was overloaded.
    pub min_delivery: f64,
}

/// What `cpu` measured: the `stream` result (scenario `cpu`) and whether the server
/// kept up with the load.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuResult {
    #[serde(flatten)]
    pub run: StreamResult,
    pub threshold_ms: f64,
    pub min_delivery: f64,
    /// True when the server kept up: clean, lag p99 <= threshold, delivery >= min_delivery.
    pub below_saturation: bool,
    /// Why not, when it did not.
    pub overload: Option<String>,
}

/// Runs the fixed load once.
pub async fn run(cfg: &CpuConfig) -> CpuResult {
    let mut sc = cfg.stream.clone();
    if sc.warmup.is_none() && sc.rate > 0.0 {
        // Starts spread over a whole answer: every moment of the window has the same
        // number of answers running, at every stage of their lives.
        sc.warmup = Some(Duration::from_secs_f64(sc.tokens as f64 / sc.rate));
    }
    let mut run = stream::run(&sc).await;
    run.scenario = "cpu".into();
    let overload = if !run.clean() {
        Some(format!(
            "not clean: lost {}, errors {:?}, short {}, unfinished {}",
            run.lost_tokens, run.errors, run.short_answers, run.unfinished_answers
        ))
    } else if run.lag.p99_ms > cfg.threshold_ms {
        Some(format!("lag p99 {:.1} ms > {} ms", run.lag.p99_ms, cfg.threshold_ms))
    } else if run.tokens_per_s < cfg.min_delivery * run.offered_tokens_per_s {
        Some(format!(
            "delivered {:.0} of {:.0} offered tokens/s (under {:.0} %)",
            run.tokens_per_s,
            run.offered_tokens_per_s,
            cfg.min_delivery * 100.0
        ))
    } else {
        None
    };
    CpuResult { run, threshold_ms: cfg.threshold_ms, min_delivery: cfg.min_delivery, below_saturation: overload.is_none(), overload }
}

impl std::fmt::Display for CpuResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.run;
        writeln!(
            f,
            "cpu [{}]: fixed load {} clients x {} tok/s ({:.0} tokens/s offered), {} tokens/answer",
            r.server, r.clients, r.rate_per_stream, r.offered_tokens_per_s, r.tokens_per_answer
        )?;
        match r.server_cpu_us_per_token {
            Some(t) => writeln!(
                f,
                "  CPU per token     {t:.2} us ({:.3} cores for {:.0} tokens/s)",
                r.server_cpu_cores.unwrap_or_default(),
                r.tokens_per_s
            )?,
            None => writeln!(f, "  CPU per token     not measured (no --pid, or no tokens)")?,
        }
        match &self.overload {
            None => writeln!(
                f,
                "  below saturation  yes (lag p99 {:.2} <= {} ms, delivered {:.1} % of offered)",
                r.lag.p99_ms,
                self.threshold_ms,
                pct(r.tokens_per_s, r.offered_tokens_per_s)
            )?,
            Some(why) => writeln!(f, "  below saturation  NO, the figure is of an overloaded server: {why}")?,
        }
        write!(f, "{r}")
    }
}

fn pct(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b * 100.0 } else { 0.0 }
}
