//! Why the server closes a connection: one typed table of close causes, each with its close
//! code, close reason, log level, `palisade.v1` error name and reconnect advice.
//!
//! Plain-text clients see only the code and the reason (the guide's strings, unchanged);
//! `palisade.v1` clients also get an `error` envelope naming the cause and saying whether and
//! when to reconnect (docs/protocol.md#close-causes, docs/subprotocol.md). The table in
//! docs/protocol.md is checked against [`CloseCause::ALL`] by a test.

use std::time::Duration;

use palisade_jwks::VerifyError;
use palisade_transport::{Close, ConnError, close_code};

/// What a client should do after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Advice {
    /// Reconnect at once: nothing was wrong (an idle connection was reaped).
    Now,
    /// Reconnect after a randomised, growing delay (and not before `retry_after_ms`).
    Backoff,
    /// Fetch a fresh token, then reconnect.
    AfterRefresh,
    /// Do not reconnect: the client, its token or its account is refused.
    Never,
}

impl Advice {
    /// The `reconnect` value of the error envelope.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Advice::Now => "now",
            Advice::Backoff => "backoff",
            Advice::AfterRefresh => "after_refresh",
            Advice::Never => "never",
        }
    }
}

/// The level a server close is logged at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Every cause the server closes a connection for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseCause {
    TokenExpired,
    InvalidToken,
    TokenRevoked,
    NotAuthenticated,
    AuthTimeout,
    SessionTooLong,
    TooManyFailedRefreshes,
    BadEnvelopes,
    RateLimited,
    Revoked,
    TooManySessions,
    SlowConsumer,
    IdleTimeout,
    ShuttingDown,
    Restarting,
    /// Cluster mode: this node missed channel publications (Redis was cut off, or lost the
    /// channel's history); the client resubscribes with `since` and learns what it missed.
    InsufficientState,
    GoingAway,
    OverCapacity,
    ProtocolError,
    InvalidUtf8,
    MessageTooBig,
    InternalError,
    /// Another 1008 decided by the application.
    Policy,
    /// A normal close (1000) by the application.
    Closing,
    /// Any other code the application chose.
    Closed,
}

/// One row of the table.
struct Row {
    code: u16,
    /// The close reason the server sends; empty where the application chooses it.
    reason: &'static str,
    error: &'static str,
    advice: Advice,
    level: Level,
}

const fn row(
    code: u16,
    reason: &'static str,
    error: &'static str,
    advice: Advice,
    level: Level,
) -> Row {
    Row { code, reason, error, advice, level }
}

impl CloseCause {
    /// Every cause, in the order of the table in docs/protocol.md.
    pub(crate) const ALL: [CloseCause; 25] = [
        CloseCause::TokenExpired,
        CloseCause::InvalidToken,
        CloseCause::TokenRevoked,
        CloseCause::NotAuthenticated,
        CloseCause::AuthTimeout,
        CloseCause::SessionTooLong,
        CloseCause::TooManyFailedRefreshes,
        CloseCause::BadEnvelopes,
        CloseCause::RateLimited,
        CloseCause::Revoked,
        CloseCause::TooManySessions,
        CloseCause::SlowConsumer,
        CloseCause::IdleTimeout,
        CloseCause::ShuttingDown,
        CloseCause::Restarting,
        CloseCause::InsufficientState,
        CloseCause::GoingAway,
        CloseCause::OverCapacity,
        CloseCause::ProtocolError,
        CloseCause::InvalidUtf8,
        CloseCause::MessageTooBig,
        CloseCause::InternalError,
        CloseCause::Policy,
        CloseCause::Closing,
        CloseCause::Closed,
    ];

    fn row(self) -> Row {
        use Advice::*;
        use Level::*;
        use close_code::*;
        match self {
            CloseCause::TokenExpired => {
                row(POLICY_VIOLATION, "token expired", "token_expired", AfterRefresh, Warn)
            }
            CloseCause::InvalidToken => {
                row(POLICY_VIOLATION, "invalid token", "invalid_token", Never, Warn)
            }
            CloseCause::TokenRevoked => {
                row(POLICY_VIOLATION, "token revoked", "token_revoked", Never, Warn)
            }
            CloseCause::NotAuthenticated => {
                row(POLICY_VIOLATION, "authentication required", "not_authenticated", Never, Warn)
            }
            CloseCause::AuthTimeout => {
                row(POLICY_VIOLATION, "authentication timeout", "auth_timeout", Backoff, Warn)
            }
            CloseCause::SessionTooLong => {
                row(POLICY_VIOLATION, "session too long", "session_too_long", AfterRefresh, Warn)
            }
            CloseCause::TooManyFailedRefreshes => row(
                POLICY_VIOLATION,
                "too many failed refreshes",
                "too_many_failed_refreshes",
                Never,
                Warn,
            ),
            CloseCause::BadEnvelopes => {
                row(POLICY_VIOLATION, "too many bad envelopes", "bad_envelope", Never, Warn)
            }
            CloseCause::RateLimited => {
                row(POLICY_VIOLATION, "rate limit exceeded", "rate_limited", Backoff, Warn)
            }
            CloseCause::Revoked => row(POLICY_VIOLATION, "session revoked", "revoked", Never, Warn),
            CloseCause::TooManySessions => row(
                POLICY_VIOLATION,
                "too many sessions for this user",
                "too_many_sessions",
                Backoff,
                Warn,
            ),
            CloseCause::SlowConsumer => {
                row(POLICY_VIOLATION, "slow consumer", "slow_consumer", Backoff, Warn)
            }
            CloseCause::IdleTimeout => row(GOING_AWAY, "idle timeout", "idle_timeout", Now, Info),
            CloseCause::ShuttingDown => {
                row(GOING_AWAY, "server shutting down", "shutting_down", Backoff, Info)
            }
            CloseCause::Restarting => {
                row(SERVICE_RESTART, "server restarting", "restarting", Backoff, Info)
            }
            CloseCause::InsufficientState => {
                row(SERVICE_RESTART, "channel state lost", "insufficient_state", Backoff, Warn)
            }
            CloseCause::GoingAway => row(GOING_AWAY, "", "going_away", Backoff, Info),
            CloseCause::OverCapacity => row(TRY_AGAIN_LATER, "", "over_capacity", Backoff, Warn),
            CloseCause::ProtocolError => {
                row(PROTOCOL_ERROR, "protocol error", "protocol_error", Never, Error)
            }
            CloseCause::InvalidUtf8 => {
                row(INVALID_PAYLOAD, "invalid utf-8", "invalid_utf8", Never, Error)
            }
            CloseCause::MessageTooBig => {
                row(MESSAGE_TOO_BIG, "message too big", "message_too_big", Never, Error)
            }
            CloseCause::InternalError => {
                row(INTERNAL_ERROR, "internal error", "internal_error", Backoff, Error)
            }
            CloseCause::Policy => row(POLICY_VIOLATION, "", "policy", Never, Warn),
            CloseCause::Closing => row(NORMAL, "", "closing", Never, Debug),
            CloseCause::Closed => row(0, "", "closed", Never, Error),
        }
    }

    /// The close code (0 for [`CloseCause::Closed`]: the application's).
    pub(crate) fn code(self) -> u16 {
        self.row().code
    }

    /// The close reason the server sends (empty where the application chooses it).
    pub(crate) fn reason(self) -> &'static str {
        self.row().reason
    }

    /// The `reason` of the `palisade.v1` error envelope.
    pub(crate) fn error_name(self) -> &'static str {
        self.row().error
    }

    /// What the client should do.
    pub(crate) fn advice(self) -> Advice {
        self.row().advice
    }

    /// The level the close is logged at.
    pub(crate) fn level(self) -> Level {
        self.row().level
    }

    /// The close this cause sends.
    pub(crate) fn close(self) -> Close {
        Close::new(self.code(), self.reason())
    }

    /// The cause of a connection failure the transport classified (its close, when it could
    /// send one, is `error.close()`, whose cause this is).
    pub(crate) fn of_error(error: &ConnError) -> CloseCause {
        match error {
            ConnError::PeerVanished | ConnError::Io(_) => CloseCause::InternalError,
            ConnError::Protocol(_) => CloseCause::ProtocolError,
            ConnError::InvalidUtf8 => CloseCause::InvalidUtf8,
            ConnError::MessageTooBig(_) => CloseCause::MessageTooBig,
            ConnError::IdleTimeout => CloseCause::IdleTimeout,
            ConnError::SlowConsumer(_) => CloseCause::SlowConsumer,
        }
    }

    /// The cause for a refused token: expired, or invalid for any other reason.
    pub(crate) fn of_token_error(error: &VerifyError) -> CloseCause {
        if error.is_expired() { CloseCause::TokenExpired } else { CloseCause::InvalidToken }
    }

    /// The cause of a close decided anywhere (transport, registry, firewall, application): the
    /// row whose code and reason match, else the row for the code with any reason.
    pub(crate) fn of(close: &Close) -> CloseCause {
        let exact = CloseCause::ALL.into_iter().find(|c| {
            let row = c.row();
            row.code == close.code && !row.reason.is_empty() && row.reason == close.reason
        });
        if let Some(cause) = exact {
            return cause;
        }
        match close.code {
            close_code::NORMAL => CloseCause::Closing,
            close_code::GOING_AWAY => CloseCause::GoingAway,
            close_code::SERVICE_RESTART => CloseCause::Restarting,
            close_code::PROTOCOL_ERROR => CloseCause::ProtocolError,
            close_code::INVALID_PAYLOAD => CloseCause::InvalidUtf8,
            close_code::MESSAGE_TOO_BIG => CloseCause::MessageTooBig,
            close_code::INTERNAL_ERROR => CloseCause::InternalError,
            close_code::TRY_AGAIN_LATER => CloseCause::OverCapacity,
            close_code::POLICY_VIOLATION => CloseCause::Policy,
            _ => CloseCause::Closed,
        }
    }
}

/// The `palisade.v1` error envelope's fields for a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) cause: CloseCause,
    pub(crate) detail: String,
    /// When the client may reconnect (rate limits, shutdown), in milliseconds.
    pub(crate) retry_after_ms: Option<u64>,
}

impl Failure {
    pub(crate) fn new(cause: CloseCause, detail: impl Into<String>) -> Failure {
        Failure { cause, detail: detail.into(), retry_after_ms: None }
    }

    /// With a delay before which a reconnect would be refused again (rounded up to whole ms).
    pub(crate) fn retry_after(mut self, after: Duration) -> Failure {
        let ms = after.as_millis() + u128::from(!after.subsec_nanos().is_multiple_of(1_000_000));
        self.retry_after_ms = Some(u64::try_from(ms).unwrap_or(u64::MAX));
        self
    }

    /// The failure for a close decided outside the subprotocol: the detail is the close reason.
    pub(crate) fn for_close(close: &Close) -> Failure {
        let cause = CloseCause::of(close);
        let detail = if close.reason.is_empty() {
            cause.error_name().replace('_', " ")
        } else {
            close.reason.to_string()
        };
        Failure::new(cause, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_round_trips_through_its_close() {
        for cause in CloseCause::ALL {
            if cause.reason().is_empty() {
                continue;
            }
            assert_eq!(CloseCause::of(&cause.close()), cause, "{cause:?}");
        }
    }

    #[test]
    fn plain_text_strings_are_the_guides() {
        assert_eq!(CloseCause::TokenExpired.close(), Close::policy("token expired"));
        assert_eq!(CloseCause::AuthTimeout.close(), Close::policy("authentication timeout"));
        assert_eq!(CloseCause::Revoked.close(), Close::policy("session revoked"));
        assert_eq!(CloseCause::RateLimited.close(), Close::policy("rate limit exceeded"));
        assert_eq!(
            CloseCause::ShuttingDown.close(),
            Close::new(close_code::GOING_AWAY, "server shutting down")
        );
    }

    #[test]
    fn transport_errors_map_to_the_cause_of_their_close() {
        use palisade_transport::SlowConsumer;
        let errors = [
            ConnError::PeerVanished,
            ConnError::Io(std::io::Error::other("x")),
            ConnError::Protocol("x".into()),
            ConnError::InvalidUtf8,
            ConnError::MessageTooBig("x".into()),
            ConnError::IdleTimeout,
            ConnError::SlowConsumer(SlowConsumer::QueueFull),
            ConnError::SlowConsumer(SlowConsumer::WriteTimedOut),
        ];
        for error in errors {
            let cause = CloseCause::of_error(&error);
            assert_eq!(CloseCause::of(&error.close()), cause, "{error}");
            assert_eq!(error.close().code, cause.code(), "{error}");
        }
    }

    #[test]
    fn unknown_reasons_fall_back_by_code() {
        assert_eq!(CloseCause::of(&Close::policy("no swearing")), CloseCause::Policy);
        assert_eq!(CloseCause::of(&Close::new(1001, "bye")), CloseCause::GoingAway);
        assert_eq!(CloseCause::of(&Close::new(1012, "new binary")), CloseCause::Restarting);
        assert_eq!(CloseCause::of(&Close::new(4000, "app")), CloseCause::Closed);
        assert_eq!(CloseCause::of(&Close::normal()), CloseCause::Closing);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_milliseconds() {
        let f = Failure::new(CloseCause::RateLimited, "x").retry_after(Duration::from_micros(1500));
        assert_eq!(f.retry_after_ms, Some(2));
        let f = Failure::new(CloseCause::RateLimited, "x").retry_after(Duration::from_millis(7));
        assert_eq!(f.retry_after_ms, Some(7));
    }

    #[test]
    fn the_protocol_doc_table_matches_the_enum() {
        let doc = include_str!("../../../docs/protocol.md");
        let start = doc.find("<!-- close-causes -->").expect("docs/protocol.md lacks the marker");
        let rows: Vec<Vec<String>> = doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').to_string())
                    .collect()
            })
            .collect();
        let want: Vec<Vec<String>> = CloseCause::ALL
            .into_iter()
            .map(|c| {
                let code = if c.code() == 0 { "app".to_string() } else { c.code().to_string() };
                let reason = if c.reason().is_empty() { "other" } else { c.reason() };
                vec![
                    c.error_name().to_string(),
                    code,
                    reason.to_string(),
                    c.advice().as_str().to_string(),
                ]
            })
            .collect();
        let got: Vec<Vec<String>> = rows.iter().map(|r| r[..4.min(r.len())].to_vec()).collect();
        assert_eq!(got, want, "docs/protocol.md's close-cause table differs from close_cause.rs");
    }
}
