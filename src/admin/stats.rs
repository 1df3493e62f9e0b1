//! The admin page's chart data: once a second the engine's counters are sampled into a
//! ring of the last [`SAMPLES`] seconds (10 minutes), each sample what happened in its
//! second. A snapshot ends with the second in progress, so the samples always add up to
//! the counters since start-up (until the ring wraps).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Totals};

/// Seconds kept.
pub const SAMPLES: usize = 600;
/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What happened in one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// The end of the second, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Tokens streamed.
    pub tokens: u64,
    /// Answers that ended with an error.
    pub failed: u64,
    /// Starts refused.
    pub refused: u64,
    /// Answers running at its end.
    pub running: usize,
}

/// The last seconds, and the counters at the start of the second in progress.
#[derive(Default)]
pub struct Ring(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    baseline: Totals,
    samples: VecDeque<Sample>,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn since(now: Totals, baseline: Totals, at: SystemTime, running: usize) -> Sample {
    Sample {
        at: millis(at),
        tokens: now.tokens.saturating_sub(baseline.tokens),
        failed: now.failed.saturating_sub(baseline.failed),
        refused: now.refused.saturating_sub(baseline.refused),
        running,
    }
}

impl Ring {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Samples go in whole; a poisoned ring is still consistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the second in progress with the counters `now`.
    pub fn record(&self, now: Totals, at: SystemTime, running: usize) {
        let mut inner = self.lock();
        let sample = since(now, inner.baseline, at, running);
        if inner.samples.len() >= SAMPLES {
            inner.samples.pop_front();
        }
        inner.samples.push_back(sample);
        inner.baseline = now;
    }

    /// The kept seconds, oldest first, then the second in progress as of `now`.
    pub fn snapshot(&self, now: Totals, at: SystemTime, running: usize) -> Vec<Sample> {
        let inner = self.lock();
        inner.samples.iter().copied().chain(std::iter::once(since(now, inner.baseline, at, running))).collect()
    }
}

/// Samples `engine` into `ring` every [`INTERVAL`] until `shutdown`.
pub fn spawn_sampler(ring: Arc<Ring>, engine: Engine, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => ring.record(engine.totals(), SystemTime::now(), engine.running()),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(tokens: u64, failed: u64) -> Totals {
        Totals { tokens, failed, refused: 0 }
    }

    #[test]
    fn each_sample_is_its_second_and_the_snapshot_adds_up_to_the_counters() {
        let ring = Ring::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        ring.record(totals(5, 0), t0, 1);
        ring.record(totals(12, 1), t0 + INTERVAL, 1);
        let samples = ring.snapshot(totals(15, 1), t0 + Duration::from_millis(1500), 0);
        let got: Vec<_> = samples.iter().map(|s| (s.at, s.tokens, s.failed, s.running)).collect();
        assert_eq!(got, [(1_000_000, 5, 0, 1), (1_001_000, 7, 1, 1), (1_001_500, 3, 0, 0)]);
        assert_eq!(samples.iter().map(|s| s.tokens).sum::<u64>(), 15);
    }

    #[test]
    fn the_ring_keeps_the_last_ten_minutes() {
        let ring = Ring::default();
        for i in 0..(SAMPLES as u64 + 5) {
            ring.record(totals(i, 0), UNIX_EPOCH + Duration::from_secs(i), 0);
        }
        let samples = ring.snapshot(totals(SAMPLES as u64 + 4, 0), UNIX_EPOCH, 0);
        assert_eq!(samples.len(), SAMPLES + 1);
        assert_eq!(samples[0].at, 5_000, "the oldest seconds are gone");
    }
}
