//! Generic cell rate algorithm: a token bucket stored as one timestamp.
//!
//! The caller passes `now`, so the limiter is deterministic in tests.

use std::time::{Duration, Instant};

/// Rate and burst of one token bucket.
///
/// The state of a bucket is its theoretical arrival time (`tat`): `None` for a full bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Time to earn one token, rounded up so the limiter never exceeds the configured rate.
    interval: Duration,
    /// How far `tat` may run ahead of `now`: `(burst - 1) * interval`.
    tolerance: Duration,
}

impl Gcra {
    /// Returns `None` when `rate_per_sec` is 0 (unlimited). A burst of 0 is treated as 1.
    pub(crate) fn new(rate_per_sec: u32, burst: u32) -> Option<Gcra> {
        if rate_per_sec == 0 {
            return None;
        }
        let interval = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(rate_per_sec)));
        let tolerance = interval * (burst.max(1) - 1);
        Some(Gcra { interval, tolerance })
    }

    /// Takes one token: `Ok` and updates `tat`, or `Err(retry_after)` and leaves `tat` alone.
    pub(crate) fn check(&self, tat: &mut Option<Instant>, now: Instant) -> Result<(), Duration> {
        let ahead = tat.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = Some(now + ahead + self.interval);
        Ok(())
    }
}

/// True when a bucket with this `tat` is full again, so its state can be forgotten.
pub(crate) fn is_full(tat: Option<Instant>, now: Instant) -> bool {
    tat.is_none_or(|t| t <= now)
}

#[cfg(test)]
mod tests;
