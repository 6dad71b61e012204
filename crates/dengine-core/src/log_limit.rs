//! [`LogLimiter`]: how often a repeated warning may be written.
//!
//! Every refusal at a trust boundary (a forged peer message, a connection over the limit, a
//! failed `accept`) is logged — but a flood of them must not fill the disk or drown the
//! useful lines. Runtimes and transports keep one limiter per kind of event: the first few
//! events of a window are logged, the rest are counted and reported with the next line that
//! is logged. Pure: the caller passes the time, so the core stays free of clocks.

use std::time::{Duration, Instant};

/// Allows at most `burst` log lines per `window` for one kind of event.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines per `window`.
    pub const fn new(window: Duration, burst: u32) -> Self {
        LogLimiter {
            window,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Ten lines per ten seconds: the default for refusals.
    pub const fn per_ten_seconds() -> Self {
        Self::new(Duration::from_secs(10), 10)
    }

    /// Records one event at `now`. Returns `Some(suppressed)` when this event should be
    /// logged — `suppressed` is the number of events of this kind left unlogged since the
    /// last line (say so in the line) — or `None` to stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_silence_then_the_count() {
        let mut l = LogLimiter::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.allow(t0 + Duration::from_secs(5)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(12)), None);
    }
}
