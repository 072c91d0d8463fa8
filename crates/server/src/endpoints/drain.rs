//! The close a connection gets when the server drains (shutdown or upgrade), and the
//! `palisade.v1` notice before it (docs/protocol.md, "Drain").
//!
//! | client | upgrade (a successor serves) | shutdown |
//! | --- | --- | --- |
//! | `palisade.v1` | error `restarting` (advice `backoff`) with `retry_after_ms`, then 1012 | error `shutting_down` (advice `backoff`) with `retry_after_ms`, then 1001 |
//! | plain | 1001 `server restarting` | 1001 `server shutting down` |
//!
//! Closes themselves are spread over the drain by the transport ([`palisade_transport::Drain`]);
//! `retry_after_ms` is a further uniform jitter over that same spread, so reconnects arrive
//! spread over the whole drain time even from clients closed at the same moment.

use std::time::Duration;

use palisade_transport::{Close, Message};

use super::v1;
use crate::close_cause::{CloseCause, Failure};

/// The close for a draining connection and, for `palisade.v1`, the envelope sent before it.
pub(crate) fn drain_close(v1: bool, restart: bool, spread: Duration) -> (Close, Option<Message>) {
    let cause = if restart { CloseCause::Restarting } else { CloseCause::ShuttingDown };
    if !v1 {
        // Plain clients keep 1001; only the reason says which drain it is.
        return (Close::new(CloseCause::GoingAway.code(), cause.reason()), None);
    }
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let retry_after_ms = if spread_ms == 0 { 0 } else { rand::random_range(0..spread_ms) };
    let failure = Failure {
        cause,
        detail: format!("{}: reconnect after retry_after_ms", cause.reason()),
        retry_after_ms: Some(retry_after_ms),
    };
    (cause.close(), Some(v1::close_envelope(&failure)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_transport::close_code;

    #[test]
    fn v1_clients_get_a_jittered_retry_after_and_1012_on_upgrade() {
        let (close, notice) = drain_close(true, true, Duration::from_secs(4));
        assert_eq!(close.code, close_code::SERVICE_RESTART);
        let Some(Message::Text(text)) = notice else { panic!("no notice") };
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["reason"], "restarting");
        assert_eq!(v["reconnect"], "backoff");
        assert!(v["retry_after_ms"].as_u64().expect("retry_after_ms") < 4000);

        let (close, notice) = drain_close(false, true, Duration::from_secs(4));
        assert_eq!((close.code, notice), (close_code::GOING_AWAY, None));
        let (close, notice) = drain_close(true, false, Duration::ZERO);
        assert_eq!(close.code, close_code::GOING_AWAY);
        assert!(matches!(notice, Some(Message::Text(t)) if t.contains("\"retry_after_ms\":0")));
    }
}
