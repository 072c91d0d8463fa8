//! The close a connection gets when the server drains (shutdown or upgrade), and the
//! `palisade.v1` notice before it (docs/protocol.md, "Drain").
//!
//! | client | upgrade (a successor serves) | shutdown |
//! | --- | --- | --- |
//! | `palisade.v1` | error `server_restart` with `retry_after_ms`, then 1012 | error `shutting_down` with `retry_after_ms`, then 1001 |
//! | plain | 1001 `server restarting` | 1001 `server shutting down` |
//!
//! Closes themselves are spread over the drain by the transport ([`palisade_transport::Drain`]);
//! `retry_after_ms` is a further uniform jitter over that same spread, so reconnects arrive
//! spread over the whole drain time even from clients closed at the same moment.

use std::time::Duration;

use palisade_transport::{Close, Message, close_code};

use super::v1;

/// The close for a draining connection and, for `palisade.v1`, the envelope sent before it.
pub(crate) fn drain_close(v1: bool, restart: bool, spread: Duration) -> (Close, Option<Message>) {
    let (reason, close) = match (v1, restart) {
        (true, true) => {
            ("server_restart", Close::new(close_code::SERVICE_RESTART, "server restarting"))
        }
        (false, true) => return (Close::new(close_code::GOING_AWAY, "server restarting"), None),
        (true, false) => {
            ("shutting_down", Close::new(close_code::GOING_AWAY, "server shutting down"))
        }
        (false, false) => {
            return (Close::new(close_code::GOING_AWAY, "server shutting down"), None);
        }
    };
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let retry_after_ms = if spread_ms == 0 { 0 } else { rand::random_range(0..spread_ms) };
    let detail = format!("{}: reconnect after retry_after_ms", close.reason);
    (close, Some(v1::retry_envelope(reason, &detail, retry_after_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_clients_get_a_jittered_retry_after_and_1012_on_upgrade() {
        let (close, notice) = drain_close(true, true, Duration::from_secs(4));
        assert_eq!(close.code, close_code::SERVICE_RESTART);
        let Some(Message::Text(text)) = notice else { panic!("no notice") };
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["reason"], "server_restart");
        assert!(v["retry_after_ms"].as_u64().expect("retry_after_ms") < 4000);

        let (close, notice) = drain_close(false, true, Duration::from_secs(4));
        assert_eq!((close.code, notice), (close_code::GOING_AWAY, None));
        let (close, notice) = drain_close(true, false, Duration::ZERO);
        assert_eq!(close.code, close_code::GOING_AWAY);
        assert!(matches!(notice, Some(Message::Text(t)) if t.contains("\"retry_after_ms\":0")));
    }
}
