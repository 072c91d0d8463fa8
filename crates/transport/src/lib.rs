//! The WebSocket layer of Palisade: accept TCP connections, optionally run a TLS handshake
//! (rustls, see [`TransportConfig::tls`]), run the HTTP upgrade through a hook that may refuse
//! it, then drive each connection in its own task with size limits, keepalive, an idle timeout,
//! a bounded outbound queue and a close code for every way a connection ends.
//!
//! The main pieces:
//!
//! - [`Endpoint`]: what an application plugs in — admission at TCP accept, the decision at the
//!   handshake (which also creates the connection's [`Handler`]) and the report of handshakes that
//!   failed.
//! - [`Handler`]: per-connection logic, called for each message and at a deadline it sets.
//! - [`serve`]: the accept loop; one task per connection, graceful shutdown with close 1001.
//! - [`ConnError`] and [`Outcome`]: how a connection ended, classified, with the close code sent.
//!
//! This crate knows nothing of tokens, users or sessions, and installs no logger: it emits
//! `tracing` events at debug level only and leaves the reporting of errors to the endpoint.
//!
//! ```no_run
//! use std::sync::Arc;
//! use palisade_transport::{
//!     Accept, Close, ConnInfo, Context, Endpoint, Handler, HandshakeRequest, Message, Refusal,
//!     Rejection, TransportConfig,
//! };
//!
//! struct Echo;
//! impl Handler for Echo {
//!     async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
//!         ctx.send(msg)
//!     }
//! }
//!
//! struct EchoEndpoint;
//! impl Endpoint for EchoEndpoint {
//!     type Admission = ();
//!     type Handler = Echo;
//!     fn admit(&self, _peer: std::net::SocketAddr) -> Result<(), Refusal> {
//!         Ok(())
//!     }
//!     fn handshake(
//!         &self,
//!         _info: &ConnInfo,
//!         _admission: &(),
//!         _req: &HandshakeRequest,
//!     ) -> Result<(Accept, Echo), Rejection> {
//!         Ok((Accept::default(), Echo))
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let tracker = tokio_util::task::TaskTracker::new();
//! let config = Arc::new(TransportConfig::secure_defaults());
//! palisade_transport::serve(listener, "echo", Arc::new(EchoEndpoint), config, shutdown, tracker).await;
//! # Ok(())
//! # }
//! ```

mod connection;
mod drain;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod listener;
mod read_ahead;
mod tls;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// Shared UTF-8 text: the payload of [`Message::Text`].
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use connection::{ConnHandle, Context, Handler, PushKind, SendError};
pub use drain::Drain;
pub use error::{ConnError, Outcome, SlowConsumer};
pub use handshake::{Accept, HandshakeError, HandshakeRequest, Rejection};
pub use listener::{ConnId, ConnInfo, Endpoint, Refusal, serve};

/// Close codes from RFC 6455 section 7.4.1 that Palisade sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, idle timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: authentication, rate limit, revocation, slow consumer.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message was larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting (an upgrade); reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server is over capacity; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Limits and timeouts of the transport. Every field is documented in docs/configuration.md.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest message (after reassembly of fragments) accepted from a client.
    pub max_message_bytes: usize,
    /// Largest single frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Largest HTTP request head at the handshake.
    pub max_request_head_bytes: usize,
    /// Bytes tungstenite reads per call, and the read buffer every connection keeps (see the
    /// `read_ahead` note in docs/benchmarks.md: a busy connection still reads up to 64 KiB per
    /// system call). Small keeps idle connections cheap.
    pub read_buffer_bytes: usize,
    /// Replies are collected up to this many bytes before a write goes to the socket (all
    /// queued replies are flushed once the read side has nothing more).
    pub write_buffer_bytes: usize,
    /// Time allowed from TCP accept to a completed upgrade.
    pub handshake_timeout: Duration,
    /// A connection on which nothing (data, ping or pong) arrives for this long is closed.
    pub idle_timeout: Duration,
    /// Interval between server pings; `Duration::ZERO` turns pings off.
    pub ping_interval: Duration,
    /// Messages that may wait for the socket; a slower reader is closed with 1008.
    pub outbound_queue: usize,
    /// Time a single write may block on a peer that does not read.
    pub write_timeout: Duration,
    /// Time to wait for the peer's close frame after sending ours.
    pub close_timeout: Duration,
    /// TLS (`wss://`): when set, every admitted connection does a TLS handshake with this rustls
    /// configuration before the upgrade, within `handshake_timeout`. The caller builds it (and
    /// can swap certificates through a `rustls::server::ResolvesServerCert`); this crate reads
    /// no files.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How open connections are closed at shutdown (all at once unless [`Drain::begin`] was
    /// called).
    pub drain: Arc<Drain>,
}

impl TransportConfig {
    /// Defaults meant for the public internet: 64 KiB messages, 10 s handshakes, 60 s idle.
    pub fn secure_defaults() -> TransportConfig {
        TransportConfig {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024,
            max_request_head_bytes: 8 * 1024,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            outbound_queue: 256,
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            tls: None,
            drain: Arc::default(),
        }
    }
}

/// A data message, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (always valid UTF-8): a [`Utf8Bytes`], which is a [`bytes::Bytes`] known
    /// to hold UTF-8, so a received text reaches the handler without a copy and one text can
    /// be sent to many connections without one (`String` and `&'static str` convert with
    /// `.into()`; it derefs to `&str`).
    Text(Utf8Bytes),
    /// A binary message: a [`bytes::Bytes`], so a payload moves between the socket buffers and
    /// the application without a copy (`Vec<u8>` converts with `.into()`).
    Binary(bytes::Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Message {
        Message::Text(text.into())
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A close the server sends: an RFC 6455 code and a short reason (at most 123 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The close code, see [`close_code`].
    pub code: u16,
    /// A short human-readable reason.
    pub reason: Cow<'static, str>,
}

impl Close {
    /// A close with this code and reason.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Close {
        Close { code, reason: reason.into() }
    }

    /// Normal closure (1000).
    pub fn normal() -> Close {
        Close::new(close_code::NORMAL, "")
    }

    /// Policy violation (1008) with a reason.
    pub fn policy(reason: impl Into<Cow<'static, str>>) -> Close {
        Close::new(close_code::POLICY_VIOLATION, reason)
    }
}

#[cfg(test)]
mod tests;
