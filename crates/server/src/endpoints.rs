//! The echo and secure endpoints: firewall at accept and handshake, and the choice of each
//! connection's handler by the negotiated subprotocol: the guide's plain text
//! ([`session::Session`], the core: authentication, sessions, the application, one log line and
//! metric per way a connection ends) or `palisade.v1` ([`v1::V1`], a wrapper around the core).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, StatusCode};
use palisade_firewall::{ConnectionPermit, Decision, DenyReason, Firewall};
use palisade_jwks::Verifier;
use palisade_metrics::{EndpointMetrics, Metrics};
use palisade_transport::{
    Accept, Close, ConnInfo, Context, Endpoint, HandshakeError, HandshakeRequest, Message, Outcome,
    PushKind, Refusal, Rejection,
};

use crate::app::{Handler, Peer};
use crate::audit::Audit;
use crate::close_cause::CloseCause;
use crate::sessions::SessionRegistry;
use session::Session;

mod channels;
mod drain;
mod session;
pub(crate) mod v1;

/// The seed's replies on the secure endpoint.
pub mod replies {
    /// Sent after a valid token.
    pub const AUTHENTICATED: &str = "Authenticated!";
    /// Sent when the token has expired (at authentication or during the session).
    pub const TOKEN_EXPIRED: &str = "Token Expired";
    /// Sent for any other bad token.
    pub const INVALID_TOKEN: &str = "Invalid Token";

    /// The plain-text reply before a close for a refused token.
    pub(crate) fn for_cause(cause: crate::close_cause::CloseCause) -> &'static str {
        match cause {
            crate::close_cause::CloseCause::TokenExpired => TOKEN_EXPIRED,
            _ => INVALID_TOKEN,
        }
    }
}

/// State shared by every connection of a server.
pub(crate) struct State<H> {
    pub(crate) app: Arc<H>,
    /// Every token path verifies through it: the JWKS issuers and the static `[auth]` key.
    pub(crate) codec: Option<Verifier>,
    pub(crate) sessions: SessionRegistry,
    pub(crate) firewall: Firewall,
    pub(crate) metrics: Metrics,
    pub(crate) echo_prefix: Arc<str>,
    pub(crate) auth_timeout: Duration,
    /// The audit trail (off unless `audit.file` is set).
    pub(crate) audit: Audit,
    pub(crate) cluster: crate::cluster::Link,
    /// The node's channels (`[channels]`) and what sessions may do on them.
    pub(crate) channels: Arc<crate::channels::Hub>,
    pub(crate) channel_policy: Arc<crate::channels::Policy>,
    /// Bounds the lines logged for noisy events (peers vanishing, refusals) during a flood.
    noisy_log: DefaultDirectRateLimiter,
}

impl<H> State<H> {
    // One call site (server.rs); each argument is a distinct piece of shared state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        app: Arc<H>,
        codec: Option<Verifier>,
        sessions: SessionRegistry,
        firewall: Firewall,
        metrics: Metrics,
        echo_prefix: &str,
        auth_timeout: Duration,
        audit: Audit,
        cluster: crate::cluster::Link,
        channels: Arc<crate::channels::Hub>,
        channel_policy: Arc<crate::channels::Policy>,
    ) -> State<H> {
        let per_sec = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        State {
            app,
            codec,
            sessions,
            firewall,
            metrics,
            echo_prefix: echo_prefix.into(),
            auth_timeout,
            audit,
            cluster,
            channels,
            channel_policy,
            noisy_log: RateLimiter::direct(Quota::per_second(per_sec)),
        }
    }

    fn may_log_noisy(&self) -> bool {
        self.noisy_log.check().is_ok()
    }
}

/// Which endpoint a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Echo,
    Secure,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Secure => "secure",
        }
    }
}

/// One listener's endpoint.
pub(crate) struct WsEndpoint<H> {
    pub(crate) kind: Kind,
    pub(crate) state: Arc<State<H>>,
    pub(crate) metrics: EndpointMetrics,
    /// The `palisade.v1` subprotocol's settings (secure endpoint); `None` when it is off.
    pub(crate) v1: Option<v1::Settings>,
}

impl<H: Handler> Endpoint for WsEndpoint<H> {
    type Admission = ConnectionPermit;
    type Handler = Conn<H>;

    fn admit(&self, peer: SocketAddr) -> Result<ConnectionPermit, Refusal> {
        match self.state.firewall.admit(peer.ip(), Instant::now()) {
            Ok(permit) => Ok(permit),
            Err(reason) => {
                self.refused(peer, peer.ip(), reason);
                match reason {
                    DenyReason::TooManyConnections | DenyReason::TooManyConnectionsFromIp => {
                        Err(Refusal::Http(Rejection::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "server over capacity; try again later",
                        )))
                    }
                    _ => Err(Refusal::Drop),
                }
            }
        }
    }

    fn handshake(
        &self,
        info: &ConnInfo,
        _permit: &ConnectionPermit,
        req: &HandshakeRequest,
    ) -> Result<(Accept, Conn<H>), Rejection> {
        let fw = &self.state.firewall;
        let headers = req.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let client_ip =
            fw.client_ip(info.peer.ip(), header("x-forwarded-for"), header("forwarded"));
        // Behind a trusted proxy the TCP peer is the proxy: bans apply to the forwarded client.
        if client_ip != info.peer.ip() && fw.is_banned(client_ip, Instant::now()) {
            self.refused(info.peer, client_ip, DenyReason::Banned);
            return Err(Rejection::new(StatusCode::FORBIDDEN, "forbidden"));
        }
        match fw.check_handshake_rate(client_ip, Instant::now()) {
            Decision::Allow => {}
            Decision::Throttle { retry_after } => {
                self.refused(info.peer, client_ip, DenyReason::RateLimited);
                // Round up: a client retrying after this many whole seconds is admitted.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let r =
                    Rejection::new(StatusCode::TOO_MANY_REQUESTS, "too many handshakes; slow down")
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return Err(r);
            }
            Decision::Deny(reason) => {
                self.refused(info.peer, client_ip, reason);
                return Err(Rejection::new(StatusCode::FORBIDDEN, "forbidden"));
            }
        }
        if let Some(reason) = fw.check_origin(header("origin")).deny_reason() {
            self.refused(info.peer, client_ip, reason);
            return Err(Rejection::new(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        let mut session = Session::new(
            self.kind,
            self.state.clone(),
            self.metrics.clone(),
            fw.message_limiter(),
            Peer {
                conn: info.clone(),
                client_ip,
                session: None,
                echo_prefix: self.state.echo_prefix.clone(),
            },
        );
        let mut accept = Accept::default();
        let v1_settings = match &self.v1 {
            Some(settings) if self.kind == Kind::Secure && v1::offered(req) => {
                accept.subprotocol = Some(v1::PROTOCOL.into());
                Some(settings.clone())
            }
            _ => None,
        };
        if self.kind == Kind::Secure {
            let bearer = header("authorization").and_then(crate::http_auth::bearer_token);
            if let Some(token) = bearer {
                // The handshake hook cannot wait: a token needing a key fetch is refused (the
                // fetch starts) and the client retries.
                match session.verify_now(token) {
                    Ok(claims) => session.authenticated_by_header(claims),
                    Err(e) => {
                        let body = CloseCause::of_token_error(&e).reason();
                        return Err(Rejection::new(StatusCode::UNAUTHORIZED, body));
                    }
                }
            }
        }
        let conn = match v1_settings {
            Some(settings) => Conn::V1(v1::V1::new(session, settings)),
            None => Conn::Plain(session),
        };
        Ok((accept, conn))
    }

    fn handshake_failed(&self, info: &ConnInfo, error: &HandshakeError) {
        let endpoint = self.kind.name();
        match error {
            // Counted where they were decided.
            HandshakeError::Refused(_) | HandshakeError::NotAdmitted(_) => {}
            HandshakeError::PeerVanished | HandshakeError::Io(_) => {
                self.state.metrics.handshake_refused(endpoint, error.kind());
                tracing::debug!(conn = %info.id, peer = %info.peer, endpoint, kind = error.kind(), "handshake abandoned");
            }
            _ => {
                self.state.metrics.handshake_refused(endpoint, error.kind());
                if self.state.may_log_noisy() {
                    tracing::warn!(conn = %info.id, peer = %info.peer, endpoint, kind = error.kind(), error = %error, "handshake failed");
                }
            }
        }
    }
}

impl<H> WsEndpoint<H> {
    fn refused(&self, peer: SocketAddr, client_ip: IpAddr, reason: DenyReason) {
        let endpoint = self.kind.name();
        self.state.metrics.handshake_refused(endpoint, reason.as_str());
        self.state.audit.refused(client_ip, reason.as_str());
        if self.state.may_log_noisy() {
            tracing::warn!(peer = %peer, client_ip = %client_ip, endpoint, kind = reason.as_str(), "connection refused");
        }
    }
}

/// One connection's transport handler, picked at the handshake by the negotiated subprotocol:
/// the guide's plain text ([`Session`] itself) or `palisade.v1` ([`v1::V1`], which wraps a
/// [`Session`]).
// Inline, as the `palisade.v1` state was before the split: boxing the larger variant would add
// an allocation to every `palisade.v1` connection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn<H> {
    Plain(Session<H>),
    V1(v1::V1<H>),
}

// The futures are `Either`s rather than `async` blocks: one of the two handlers' futures and no
// more, since the connection's task holds `on_message`'s for the connection's life.
impl<H: Handler> palisade_transport::Handler for Conn<H> {
    fn on_open(&mut self, ctx: &mut Context) -> impl Future<Output = Result<(), Close>> + Send {
        match self {
            Conn::Plain(s) => Either::Left(s.on_open(ctx)),
            Conn::V1(v) => Either::Right(v.on_open(ctx)),
        }
    }

    fn on_message(
        &mut self,
        msg: Message,
        ctx: &mut Context,
    ) -> impl Future<Output = Result<(), Close>> + Send {
        match self {
            Conn::Plain(s) => Either::Left(s.on_message(msg, ctx)),
            Conn::V1(v) => Either::Right(v.on_message(msg, ctx)),
        }
    }

    fn on_deadline(&mut self, ctx: &mut Context) -> impl Future<Output = Result<(), Close>> + Send {
        match self {
            Conn::Plain(s) => Either::Left(s.on_deadline(ctx)),
            Conn::V1(v) => Either::Right(v.on_deadline(ctx)),
        }
    }

    fn on_push(&mut self, msg: Message, kind: PushKind) -> Message {
        match self {
            Conn::Plain(s) => s.on_push(msg, kind),
            Conn::V1(v) => v.on_push(msg, kind),
        }
    }

    fn on_drain(&mut self, restart: bool, spread: Duration) -> Close {
        match self {
            Conn::Plain(s) => s.on_drain(restart, spread),
            Conn::V1(v) => v.on_drain(restart, spread),
        }
    }

    fn on_closing(&mut self, close: &Close) -> Option<Message> {
        match self {
            Conn::Plain(s) => s.on_closing(close),
            Conn::V1(v) => v.on_closing(close),
        }
    }

    fn on_sent(&mut self, messages: usize, bytes: usize) {
        match self {
            Conn::Plain(s) => s.on_sent(messages, bytes),
            Conn::V1(v) => v.on_sent(messages, bytes),
        }
    }

    fn on_close(&mut self, info: &ConnInfo, outcome: &Outcome) {
        match self {
            Conn::Plain(s) => s.on_close(info, outcome),
            Conn::V1(v) => v.on_close(info, outcome),
        }
    }
}
