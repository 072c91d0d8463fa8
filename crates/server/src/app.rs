//! The application hook: what happens to a client's messages. Echo is the default.

use std::future::Future;
use std::sync::Arc;

use palisade_transport::{Close, ConnInfo, Context, Message};

pub use crate::channels::{Authorization, Denied};
use crate::sessions::{SessionInfo, SessionRegistry};

/// Everything a [`Handler`] knows about the client that sent a message.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Connection id, TCP peer and endpoint name.
    pub conn: ConnInfo,
    /// The client's address (from a trusted proxy's header, else the TCP peer).
    pub client_ip: std::net::IpAddr,
    /// The authenticated session on the secure endpoint; `None` on the echo endpoint.
    pub session: Option<SessionInfo>,
    /// The configured echo prefix (`echo.prefix`).
    pub echo_prefix: Arc<str>,
}

/// Application logic for data messages, on both endpoints (after authentication on the secure
/// one). The default methods implement the guide's echo: text `m` gets `Server received: m`,
/// binary `b` gets the prefix's bytes followed by `b`.
///
/// Implement it to embed Palisade with your own logic; see `examples/chat.rs`.
pub trait Handler: Send + Sync + 'static {
    /// A data message from the client. Reply with `ctx.send(..)`; `Err(close)` closes the
    /// connection with that code.
    fn on_message(
        &self,
        peer: &Peer,
        msg: Message,
        ctx: &mut Context,
    ) -> impl Future<Output = Result<(), Close>> + Send {
        let reply = echo_reply(&peer.echo_prefix, msg);
        async move { ctx.send(reply) }
    }

    /// A session has been authenticated (secure endpoint only).
    fn on_session_start(&self, session: &SessionInfo, sessions: &SessionRegistry) {
        let _ = (session, sessions);
    }

    /// A session has ended, however it ended.
    fn on_session_end(&self, session: &SessionInfo, sessions: &SessionRegistry) {
        let _ = (session, sessions);
    }

    /// May `session` subscribe to `channel`? `grant` is what the token's grants and
    /// `channels.public` decided; the default returns it. Return `Err(Denied::new(".."))` to
    /// refuse (the client gets `permission_denied` with that detail). Also asked again for every
    /// subscription at each token refresh; a refusal then ends it with `permission_revoked`.
    fn authorize_subscribe(
        &self,
        session: &SessionInfo,
        channel: &str,
        grant: Authorization,
    ) -> Authorization {
        let _ = (session, channel);
        grant
    }

    /// May `session` publish to `channel`? `grant` is the token's grants' decision; the
    /// default returns it.
    fn authorize_publish(
        &self,
        session: &SessionInfo,
        channel: &str,
        grant: Authorization,
    ) -> Authorization {
        let _ = (session, channel);
        grant
    }
}

/// The default handler: echo with the configured prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {}

/// The echo reply to `msg`: the same kind of message, prefixed.
pub fn echo_reply(prefix: &str, msg: Message) -> Message {
    match msg {
        Message::Text(t) => {
            let mut out = String::with_capacity(prefix.len() + t.len());
            out.push_str(prefix);
            out.push_str(&t);
            Message::Text(out.into())
        }
        Message::Binary(b) => {
            let mut out = Vec::with_capacity(prefix.len() + b.len());
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(&b);
            Message::Binary(out.into())
        }
    }
}
