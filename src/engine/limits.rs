//! Per-user limits on `chat:start`: a token bucket (`RATE_LIMIT_PER_MINUTE`) and a
//! cap on concurrent generations (`MAX_CONCURRENT_STREAMS_PER_USER`, enforced by the
//! registry). Idle users' buckets are swept, so memory follows active users only.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

/// governor's limiter keyed by user id.
type KeyedLimiter<C> = RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The per-user token bucket; `None` inside when the limit is off.
#[derive(Clone)]
pub struct StartRateLimiter<C: Clock = DefaultClock> {
    limiter: Option<Arc<KeyedLimiter<C>>>,
}

impl StartRateLimiter {
    /// `per_minute` starts a minute, with a burst of the same size; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self { limiter: NonZeroU32::new(per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n)))) }
    }

    /// Sweeps every `period` until `shutdown`.
    pub fn spawn_sweeper(&self, period: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let this = self.clone();
        if this.limiter.is_some() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => this.sweep(),
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        }
    }
}

impl<C: Clock> StartRateLimiter<C> {
    /// Takes one start from `user`'s bucket; false when it is empty.
    pub fn allow(&self, user: &str) -> bool {
        match &self.limiter {
            None => true,
            Some(l) => l.check_key(&user.to_owned()).is_ok(),
        }
    }

    /// Forgets users whose buckets are full again (they are as good as new).
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Users with a bucket in memory.
    pub fn tracked_users(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(per_minute: u32, clock: &FakeRelativeClock) -> StartRateLimiter<FakeRelativeClock> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap());
        StartRateLimiter { limiter: Some(Arc::new(RateLimiter::dashmap_with_clock(quota, clock.clone()))) }
    }

    #[test]
    fn a_bucket_empties_and_refills() {
        let clock = FakeRelativeClock::default();
        let l = limiter(2, &clock);
        assert!(l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"), "users have their own buckets");
        clock.advance(Duration::from_secs(30));
        assert!(l.allow("a"));
    }

    #[test]
    fn idle_users_are_swept() {
        let clock = FakeRelativeClock::default();
        let l = limiter(10, &clock);
        for i in 0..1000 {
            assert!(l.allow(&format!("user-{i}")));
        }
        assert_eq!(l.tracked_users(), 1000);
        clock.advance(Duration::from_secs(61));
        l.sweep();
        assert_eq!(l.tracked_users(), 0);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let l = StartRateLimiter::new(0);
        assert!((0..1000).all(|_| l.allow("a")));
        assert_eq!(l.tracked_users(), 0);
    }
}
