//! Log lines that a flood or an outage would repeat thousands of times are written at
//! most once per interval, with the count of those left out.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How often a throttled line may be written.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// One recurring log line's state; `static` where the line is written.
pub struct LogThrottle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new() -> Self {
        Self { state: Mutex::new((None, 0)) }
    }

    /// `Some(occurrences not logged since the last line)` when this one should be logged.
    pub fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_written_and_the_rest_of_the_interval_counted() {
        let throttle = LogThrottle::new();
        assert_eq!(throttle.hit(), Some(0));
        assert_eq!((throttle.hit(), throttle.hit()), (None, None));
        throttle.state.lock().unwrap().0 = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(throttle.hit(), Some(2), "the next line says how many were left out");
    }
}
