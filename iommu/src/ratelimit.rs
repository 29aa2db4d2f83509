//! Rate limiting for log lines a guest can provoke (blocked DMA, blocked interrupts, device
//! errors): a guest that faults in a loop must not flood the host's stderr or disk.
//!
//! The lowest crate of the workspace carries it so that `devices` and the VMM share one
//! implementation; the VT-d model is its first user.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per window by [`warn_limited!`] at each call site.
pub const DEFAULT_BURST: u32 = 10;
/// The window of [`warn_limited!`].
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);

/// Lets `burst` events through per `window`; counts the ones it holds back.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter that passes `burst` events per `window` (usable in a `static`).
    pub const fn new(burst: u32, window: Duration) -> Self {
        RateLimiter {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether an event at `now` may pass. `Some(n)`: it may, and `n` events were held back
    /// since the last one that passed; `None`: hold it back.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            s.window_start = Some(now);
            s.passed = 0;
        }
        if s.passed < self.burst {
            s.passed += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// [`check_at`](Self::check_at) now.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }
}

#[doc(hidden)]
pub use log as __log;

/// `log::warn!`, limited to [`DEFAULT_BURST`] lines per [`DEFAULT_WINDOW`] at this call site;
/// the first line after a quiet spell says how many were held back.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new(
            $crate::ratelimit::DEFAULT_BURST,
            $crate::ratelimit::DEFAULT_WINDOW,
        );
        if let Some(held) = LIMIT.check() {
            if held > 0 {
                $crate::ratelimit::__log::warn!("({held} similar messages suppressed)");
            }
            $crate::ratelimit::__log::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_burst_exhausted_holds_back_then_reports_count() {
        let l = RateLimiter::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), None);
        assert_eq!(l.check_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn warn_limited_macro_compiles_in_a_loop() {
        for i in 0..100 {
            warn_limited!("line {i}");
        }
    }
}
