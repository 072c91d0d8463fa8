//! How a connection ended: the error classification and its close codes.

use std::io;

use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

use crate::{Close, close_code};

/// What went wrong on an established connection, classified by what the server does about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer went away without a close frame (reset, EOF).
    #[error("peer vanished without a close frame")]
    PeerVanished,
    /// The peer broke RFC 6455 (unmasked frame, RSV bits, bad opcode, bad close code, ...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A text message (or close reason) was not valid UTF-8.
    #[error("invalid utf-8 in a text message")]
    InvalidUtf8,
    /// A message or frame was larger than the limit.
    #[error("message too big: {0}")]
    MessageTooBig(String),
    /// Nothing arrived within the idle timeout (no data, no pong).
    #[error("idle timeout: no data or pong received in time")]
    IdleTimeout,
    /// The peer did not read what we sent (write timed out or outbound queue full).
    #[error("slow consumer: {0}")]
    SlowConsumer(SlowConsumer),
    /// Any other I/O failure.
    #[error("i/o error")]
    Io(#[source] io::Error),
}

/// How a peer that does not read showed itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// More messages were queued for it than the outbound queue holds.
    QueueFull,
    /// A write did not complete within the write timeout: the socket cannot take a close frame.
    WriteTimedOut,
    /// tungstenite's write buffer is full.
    WriteBufferFull,
}

impl SlowConsumer {
    /// A short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowConsumer::QueueFull => "outbound queue full",
            SlowConsumer::WriteTimedOut => "write timed out",
            SlowConsumer::WriteBufferFull => "write buffer full",
        }
    }
}

impl std::fmt::Display for SlowConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ConnError {
    /// Whether the socket can still carry a close frame after this error (it cannot after the
    /// peer vanished, an I/O error or a write that timed out).
    pub fn can_send_close(&self) -> bool {
        !matches!(
            self,
            ConnError::PeerVanished
                | ConnError::Io(_)
                | ConnError::SlowConsumer(SlowConsumer::WriteTimedOut)
        )
    }

    /// The close code the client is told, per docs/protocol.md.
    pub fn close(&self) -> Close {
        match self {
            ConnError::PeerVanished | ConnError::Io(_) => {
                Close::new(close_code::INTERNAL_ERROR, "i/o error")
            }
            ConnError::Protocol(_) => Close::new(close_code::PROTOCOL_ERROR, "protocol error"),
            ConnError::InvalidUtf8 => Close::new(close_code::INVALID_PAYLOAD, "invalid utf-8"),
            ConnError::MessageTooBig(_) => {
                Close::new(close_code::MESSAGE_TOO_BIG, "message too big")
            }
            ConnError::IdleTimeout => Close::new(close_code::GOING_AWAY, "idle timeout"),
            ConnError::SlowConsumer(_) => Close::policy("slow consumer"),
        }
    }

    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnError::PeerVanished => "peer_vanished",
            ConnError::Protocol(_) => "protocol",
            ConnError::InvalidUtf8 => "invalid_utf8",
            ConnError::MessageTooBig(_) => "message_too_big",
            ConnError::IdleTimeout => "idle_timeout",
            ConnError::SlowConsumer(_) => "slow_consumer",
            ConnError::Io(_) => "io",
        }
    }

    /// Maps a tungstenite error; `None` means the connection simply ended (closed handshake done).
    pub(crate) fn from_ws(err: WsError) -> Option<ConnError> {
        Some(match err {
            WsError::ConnectionClosed | WsError::AlreadyClosed => return None,
            WsError::Io(e) => ConnError::from_io(e),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                ConnError::PeerVanished
            }
            WsError::Protocol(p) => ConnError::Protocol(p.to_string()),
            WsError::Utf8(_) => ConnError::InvalidUtf8,
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                ConnError::MessageTooBig(format!("{size} bytes, limit {max_size}"))
            }
            WsError::Capacity(c) => ConnError::MessageTooBig(c.to_string()),
            WsError::WriteBufferFull(_) => ConnError::SlowConsumer(SlowConsumer::WriteBufferFull),
            WsError::AttackAttempt => ConnError::Protocol("attack attempt detected".into()),
            other => ConnError::Protocol(other.to_string()),
        })
    }

    pub(crate) fn from_io(e: io::Error) -> ConnError {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => ConnError::PeerVanished,
            _ => ConnError::Io(e),
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// The peer started the close handshake (1000 and friends); not an error.
    PeerClosed {
        /// The peer's close code, if it sent one.
        code: Option<u16>,
        /// The peer's reason.
        reason: String,
    },
    /// The server closed: the handler's decision, shutdown, a revocation.
    ServerClosed(Close),
    /// The connection failed; `close` is what the client was sent, when it could still be written.
    Failed {
        /// What went wrong.
        error: ConnError,
        /// The close frame sent, if the socket was still writable.
        close: Option<Close>,
    },
}

impl Outcome {
    /// The close code sent to the client, if any.
    pub fn close_code_sent(&self) -> Option<u16> {
        match self {
            Outcome::PeerClosed { code, .. } => Some(code.unwrap_or(close_code::NORMAL)),
            Outcome::ServerClosed(c) => Some(c.code),
            Outcome::Failed { close, .. } => close.as_ref().map(|c| c.code),
        }
    }
}
