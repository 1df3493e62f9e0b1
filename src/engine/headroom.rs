//! The node's headroom: how late the runtime runs its tasks (a ticking task measures
//! it), how many answers run here, and how many starts wait for the database. Past a
//! limit of `OVERLOAD_*`, new starts are refused at once with `UNAVAILABLE` and a
//! `retryAfterMs`, `/ready` says `load: down`, and the answers already running keep
//! their pace: nothing started is dropped.
//!
//! The database queue is a gate of as many places as the pool has connections, one per
//! write in flight (a batch of turns, [`store::TurnWriter`], holds one): a start waits
//! at most `OVERLOAD_DB_WAIT_MS` for its turn to be taken, and when `OVERLOAD_DB_QUEUE`
//! starts already wait, a new one is refused without waiting at all. A refusal costs
//! no database call.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::{chat::ChatError, config::OverloadConfig, store};

/// How often the ticking task wakes to measure the scheduling lag.
const TICK: Duration = Duration::from_millis(50);
/// The scheduling lag from which the node counts as busy (its readers' deltas are joined).
const BUSY_LAG: Duration = Duration::from_millis(10);

/// Which limit the node is past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// The runtime runs tasks later than `OVERLOAD_LAG_MS`.
    Lag,
    /// `OVERLOAD_MAX_RUNNING` answers run here.
    Running,
    /// `OVERLOAD_DB_QUEUE` starts wait for the database.
    Database,
}

impl Pressure {
    /// The name the log gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lag => "scheduling lag",
            Self::Running => "running answers",
            Self::Database => "database queue",
        }
    }
}

/// The measures and the limits; one per engine.
pub struct Headroom {
    limits: OverloadConfig,
    /// The latest scheduling lag in µs, decaying by half each tick so a spike is seen.
    lag_us: AtomicU64,
    /// The database's places for writes and the starts waiting for one.
    gate: store::WriteGate,
}

impl Headroom {
    /// Limits from the configuration, a gate of `writers` places (the pool's size).
    pub fn new(limits: OverloadConfig, writers: usize) -> Self {
        let gate = store::WriteGate::new(writers, limits.db_queue, limits.db_wait);
        Self { limits, lag_us: AtomicU64::new(0), gate }
    }

    /// The database gate, which the turn writer shares.
    pub fn gate(&self) -> &store::WriteGate {
        &self.gate
    }

    /// Runs the ticking task until `shutdown`: each tick, how much later than asked it woke.
    pub fn spawn_ticker(self: &std::sync::Arc<Self>, shutdown: CancellationToken) {
        let headroom = self.clone();
        tokio::spawn(async move {
            loop {
                let asked = tokio::time::Instant::now() + TICK;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(asked) => {}
                }
                headroom.record_lag(tokio::time::Instant::now().saturating_duration_since(asked));
            }
        });
    }

    fn record_lag(&self, lag: Duration) {
        let new = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        let old = self.lag_us.load(Ordering::Relaxed);
        self.lag_us.store(new.max(old / 2), Ordering::Relaxed);
    }

    /// The scheduling lag as last measured.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Starts waiting for the database now.
    pub fn db_waiting(&self) -> usize {
        self.gate.waiting()
    }

    /// The first limit the node is past with `running` answers, if any.
    pub fn pressure(&self, running: usize) -> Option<Pressure> {
        let l = &self.limits;
        if !l.lag.is_zero() && self.lag() > l.lag {
            return Some(Pressure::Lag);
        }
        if l.max_running > 0 && running >= l.max_running {
            return Some(Pressure::Running);
        }
        if self.gate.full() {
            return Some(Pressure::Database);
        }
        None
    }

    /// Busy, short of overloaded: the runtime lags `BUSY_LAG` or more (unless lag is not
    /// watched: `OVERLOAD_LAG_MS=0`), or half of `OVERLOAD_MAX_RUNNING` answers run.
    pub fn busy(&self, running: usize) -> bool {
        (!self.limits.lag.is_zero() && self.lag() >= BUSY_LAG)
            || (self.limits.max_running > 0 && running >= self.limits.max_running.div_ceil(2))
    }

    /// How long an answer's deltas are joined before they go out: `max` while the node
    /// is busy (fewer frames for the same tokens), none while it is idle.
    pub fn coalesce_window(&self, running: usize, max: Duration) -> Duration {
        if self.busy(running) { max } else { Duration::ZERO }
    }

    /// The refusal of a start while the node is past a limit.
    pub fn refusal(&self) -> ChatError {
        ChatError::overloaded(u64::try_from(self.limits.retry_after.as_millis()).unwrap_or(u64::MAX))
    }

    /// A place at the database for one start's writes of its own (a regenerate's row),
    /// or the refusal when none frees within `OVERLOAD_DB_WAIT_MS` (or too many starts
    /// wait already).
    pub async fn write_slot(&self) -> Result<OwnedSemaphorePermit, ChatError> {
        self.gate.place().await.ok_or_else(|| self.refusal())
    }
}

impl super::Engine {
    /// The first headroom limit this node is past, if any (what `/ready` reports).
    pub fn pressure(&self) -> Option<Pressure> {
        self.0.headroom.pressure(self.running())
    }

    /// Starts waiting for their turn to be written (the database queue).
    pub fn db_waiting(&self) -> usize {
        self.0.headroom.db_waiting()
    }

    /// `Err` with the refusal (`UNAVAILABLE`, `retryAfterMs`) while the node is past a limit.
    pub(super) fn headroom_left(&self) -> Result<(), ChatError> {
        static LOG: crate::throttle::LogThrottle = crate::throttle::LogThrottle::new();
        let Some(pressure) = self.pressure() else { return Ok(()) };
        if let Some(suppressed) = LOG.hit() {
            let h = &self.0.headroom;
            tracing::warn!(
                pressure = pressure.as_str(),
                lag_ms = h.lag().as_millis() as u64,
                running = self.running(),
                db_waiting = h.db_waiting(),
                suppressed,
                "overloaded: refusing new starts (logged at most every 30 s)"
            );
        }
        Err(self.0.headroom.refusal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lag_ms: u64, max_running: usize, db_queue: usize, db_wait_ms: u64) -> OverloadConfig {
        OverloadConfig {
            lag: Duration::from_millis(lag_ms),
            max_running,
            db_queue,
            db_wait: Duration::from_millis(db_wait_ms),
            retry_after: Duration::from_millis(750),
        }
    }

    #[test]
    fn each_limit_is_named_when_passed_and_zero_turns_it_off() {
        let h = Headroom::new(limits(100, 3, 2, 1000), 1);
        assert_eq!(h.pressure(2), None);
        assert_eq!(h.pressure(3), Some(Pressure::Running));
        h.record_lag(Duration::from_millis(150));
        assert_eq!(h.pressure(0), Some(Pressure::Lag));
        // The lag decays by half each tick: 150 → 75 ms is under the limit again.
        h.record_lag(Duration::ZERO);
        assert_eq!((h.lag(), h.pressure(0)), (Duration::from_millis(75), None));
        let off = Headroom::new(limits(0, 0, 0, 1000), 1);
        off.record_lag(Duration::from_secs(10));
        assert_eq!(off.pressure(1_000_000), None);
    }

    #[test]
    fn deltas_are_joined_only_while_the_node_is_busy_and_within_the_bound() {
        let max = Duration::from_millis(30);
        let h = Headroom::new(limits(250, 4, 0, 1000), 1);
        assert_eq!(h.coalesce_window(1, max), Duration::ZERO, "idle: each delta at once");
        assert_eq!(h.coalesce_window(2, max), max, "half the running limit is busy");
        h.record_lag(Duration::from_millis(12));
        assert_eq!(h.coalesce_window(0, max), max, "a lagging runtime is busy");
        assert_eq!(h.coalesce_window(0, Duration::ZERO), Duration::ZERO, "a bound of 0 turns it off");
        h.record_lag(Duration::ZERO);
        assert_eq!(h.coalesce_window(0, max), Duration::ZERO, "6 ms of lag is idle again");
    }

    #[test]
    fn a_refusal_is_unavailable_with_retry_after_ms() {
        let refused = Headroom::new(limits(0, 0, 0, 1), 1).refusal();
        assert_eq!(refused.code, crate::chat::ErrorCode::Unavailable);
        assert_eq!(refused.retry_after_ms, Some(750));
        assert_eq!(serde_json::to_value(&refused).unwrap()["retryAfterMs"], 750);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_cannot_get_the_database_soon_is_refused_and_a_full_queue_refuses_at_once() {
        let h = std::sync::Arc::new(Headroom::new(limits(0, 0, 1, 200), 1));
        let held = h.write_slot().await.unwrap();
        // One waits (the queue's one place); it is refused when the wait runs out.
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.write_slot().await.map(drop) }
        });
        while h.db_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.pressure(0), Some(Pressure::Database));
        // The queue is full: the next is refused without waiting (no time passes).
        let before = tokio::time::Instant::now();
        assert_eq!(h.write_slot().await.err().and_then(|e| e.retry_after_ms), Some(750));
        assert_eq!(tokio::time::Instant::now(), before);
        assert_eq!(waiter.await.unwrap().err().map(|e| e.code), Some(crate::chat::ErrorCode::Unavailable));
        assert_eq!(h.db_waiting(), 0);
        // Freed, the gate serves the next start at once.
        drop(held);
        assert!(h.write_slot().await.is_ok());
    }
}
