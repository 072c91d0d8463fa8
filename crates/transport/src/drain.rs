//! How open connections end at shutdown: all at once (the default), or spread over a time so
//! that clients which reconnect on close do not all come back in the same instant (a deploy).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::ConnId;

/// Shared by every connection of a server through [`crate::TransportConfig::drain`]. Call
/// [`Drain::begin`] before cancelling the shutdown token given to [`crate::serve`]; without it
/// every connection is sent 1001 at once.
///
/// ```
/// use std::time::Duration;
/// use palisade_transport::Drain;
///
/// let drain = Drain::default();
/// drain.begin(Duration::from_secs(10), true);
/// assert_eq!(drain.spread(), Duration::from_secs(10));
/// assert!(drain.restart());
/// ```
#[derive(Debug, Default)]
pub struct Drain {
    spread_ms: AtomicU64,
    restart: AtomicBool,
}

impl Drain {
    /// Spread the closes of open connections over `spread` (each connection picks its moment
    /// from its id, so the closes are evenly spaced); `restart` says a successor process serves
    /// on the same sockets (an upgrade), passed on to [`crate::Handler::on_drain`].
    pub fn begin(&self, spread: Duration, restart: bool) {
        let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        self.spread_ms.store(ms, Ordering::Relaxed);
        self.restart.store(restart, Ordering::Relaxed);
    }

    /// The time over which closes are spread (zero: all at once).
    pub fn spread(&self) -> Duration {
        Duration::from_millis(self.spread_ms.load(Ordering::Relaxed))
    }

    /// Whether a successor serves on the same sockets.
    pub fn restart(&self) -> bool {
        self.restart.load(Ordering::Relaxed)
    }

    /// When, after the drain began, connection `id` is closed: a point of `[0, spread)` from
    /// a multiplicative hash of the id, so consecutive ids land far apart and any set of open
    /// connections is spread nearly evenly.
    pub(crate) fn delay(&self, id: ConnId) -> Duration {
        let spread = self.spread_ms.load(Ordering::Relaxed);
        if spread == 0 {
            return Duration::ZERO;
        }
        let fraction = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32; // in [0, 2^32)
        Duration::from_millis(((u128::from(fraction) * u128::from(spread)) >> 32) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_spread_over_the_whole_interval() {
        let drain = Drain::default();
        assert_eq!(drain.delay(ConnId(7)), Duration::ZERO);
        drain.begin(Duration::from_secs(10), false);
        let mut buckets = [0usize; 10];
        for id in 1..=1000 {
            let d = drain.delay(ConnId(id));
            assert!(d < Duration::from_secs(10));
            buckets[(d.as_secs()) as usize] += 1;
        }
        // 1000 consecutive ids over ten one-second buckets: each gets close to 100.
        assert!(buckets.iter().all(|&n| (80..=120).contains(&n)), "{buckets:?}");
    }
}
