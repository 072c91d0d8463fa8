//! The core of one connection, on either endpoint: authentication (every token path is
//! verified, logged, counted, audited and banned on here), the session registry, the
//! application's [`Handler`] calls, and one log line and metric per way a connection ends.
//!
//! [`Session`] speaks the guide's plain text itself (it is the transport handler of every
//! connection that negotiated no subprotocol) and offers the `palisade.v1` wrapper
//! ([`super::v1::V1`]) a small API: [`Session::verify`], [`Session::open_session`] and
//! [`Session::session_started`], [`Session::refreshed`], [`Session::deliver`] and
//! [`Session::ended`]. Its fields are private to this module.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_digest::Fingerprint;
use palisade_firewall::{Decision, MessageLimiter};
use palisade_jwks::VerifyError;
use palisade_metrics::EndpointMetrics;
use palisade_token::{Claims, TokenError};
use palisade_transport::{Close, ConnInfo, Context, Message, Outcome, close_code};

use super::{Kind, State, replies};
use crate::app::{Handler, Peer};
use crate::audit;
use crate::close_cause::{CloseCause, Failure, Level};
use crate::sessions::{SessionId, SessionInfo, unix_now};

/// Where a connection stands with authentication.
enum Auth {
    /// The echo endpoint: no authentication.
    Open,
    /// Secure endpoint, waiting for the first message to carry the token.
    Waiting,
    /// Secure endpoint, token accepted from the `Authorization` header at the handshake.
    FromHeader(Claims),
    /// Secure endpoint, session running.
    Session { id: SessionId, expires_at: Option<u64> },
}

/// [`Auth`] as the `palisade.v1` wrapper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// No authentication (echo endpoint).
    Open,
    /// Waiting for a token.
    Waiting,
    /// A token from the handshake's header, before `on_open` starts its session.
    FromHeader,
    /// Session running.
    Session,
}

/// One connection's core, on either endpoint; the transport handler of plain-text connections.
pub(crate) struct Session<H> {
    kind: Kind,
    state: Arc<State<H>>,
    metrics: EndpointMetrics,
    limiter: MessageLimiter,
    peer: Peer,
    auth: Auth,
}

impl<H> Session<H> {
    /// A new connection: open on the echo endpoint, waiting for a token on the secure one.
    pub(super) fn new(
        kind: Kind,
        state: Arc<State<H>>,
        metrics: EndpointMetrics,
        limiter: MessageLimiter,
        peer: Peer,
    ) -> Session<H> {
        let auth = match kind {
            Kind::Echo => Auth::Open,
            Kind::Secure => Auth::Waiting,
        };
        Session { kind, state, metrics, limiter, peer, auth }
    }

    /// The state shared by every connection of the server.
    pub(super) fn shared(&self) -> &State<H> {
        &self.state
    }

    /// The client, and its session once it has started.
    pub(super) fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The endpoint's name, for logs and metrics.
    pub(super) fn endpoint(&self) -> &'static str {
        self.kind.name()
    }

    /// Where the connection stands with authentication.
    pub(super) fn stage(&self) -> Stage {
        match self.auth {
            Auth::Open => Stage::Open,
            Auth::Waiting => Stage::Waiting,
            Auth::FromHeader(_) => Stage::FromHeader,
            Auth::Session { .. } => Stage::Session,
        }
    }

    /// The running session's id.
    pub(super) fn session_id(&self) -> Option<&SessionId> {
        match &self.auth {
            Auth::Session { id, .. } => Some(id),
            _ => None,
        }
    }

    /// `auth.leeway_secs`: a session ends this long after its token's `exp`.
    pub(super) fn leeway(&self) -> u64 {
        self.state.codec.as_ref().map(|c| c.leeway_secs()).unwrap_or(0)
    }
}

impl<H: Handler> Session<H> {
    /// Verifies a token from the first message or a `palisade.v1` auth or refresh envelope,
    /// waiting for at most one fetch of its issuer's keys.
    pub(super) async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let result = match &self.state.codec {
            // Boxed: verifying (which may fetch an issuer's keys) is a large future that would
            // otherwise size every connection's task for good, for a call made once per token.
            Some(verifier) => Box::pin(verifier.verify(token, unix_now())).await,
            None => Err(VerifyError::Token(TokenError::UnknownKey)),
        };
        self.verified(token, result)
    }

    /// Verifies a token of the `Authorization: Bearer` header, without waiting.
    pub(super) fn verify_now(&self, token: &str) -> Result<Claims, VerifyError> {
        let result = match &self.state.codec {
            Some(verifier) => verifier.verify_now(token, unix_now()),
            None => Err(VerifyError::Token(TokenError::UnknownKey)),
        };
        self.verified(token, result)
    }

    /// The handshake's header carried these valid claims: `on_open` starts the session.
    pub(super) fn authenticated_by_header(&mut self, claims: Claims) {
        self.auth = Auth::FromHeader(claims);
    }

    /// The one place every token path's outcome is logged, counted, audited and banned on.
    fn verified(
        &self,
        token: &str,
        result: Result<Claims, VerifyError>,
    ) -> Result<Claims, VerifyError> {
        let endpoint = self.kind.name();
        let fp = Fingerprint::of(token.as_bytes());
        match &result {
            Ok(claims) => {
                self.state.metrics.auth(endpoint, "ok");
                self.state.audit.record(|| audit::auth_ok(&self.peer, claims, fp));
                tracing::info!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint, user_id = %claims.user_id, token = %fp, "authenticated");
            }
            Err(e) => {
                let outcome = if e.is_expired() { "expired" } else { "invalid" };
                self.state.metrics.auth(endpoint, outcome);
                self.state.audit.record(|| audit::auth_failed(&self.peer, e.kind(), Some(fp)));
                tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint, kind = e.kind(), token = %fp, error = %e, "authentication failed");
                if let Some(ban) =
                    self.state.firewall.record_auth_failure(self.peer.client_ip, Instant::now())
                {
                    self.state
                        .audit
                        .record(|| audit::ban(self.peer.client_ip, ban, "auth_failures"));
                    tracing::warn!(client_ip = %self.peer.client_ip, ban_secs = ban.as_secs(), "address banned after repeated authentication failures");
                    self.state.cluster.ban(self.peer.client_ip, ban);
                }
            }
        }
        result
    }

    /// The connection is open: counts it and arms the authentication timeout. Returns the
    /// claims of the handshake's header, whose session the caller starts.
    pub(super) fn opened(&mut self, ctx: &mut Context) -> Option<Claims> {
        self.metrics.connection_opened();
        match std::mem::replace(&mut self.auth, Auth::Open) {
            Auth::FromHeader(claims) => Some(claims),
            Auth::Waiting => {
                self.auth = Auth::Waiting;
                ctx.set_deadline(Some(Instant::now() + self.state.auth_timeout));
                None
            }
            other => {
                self.auth = other;
                None
            }
        }
    }

    /// A message arrived: counts it and applies the message rate limit.
    pub(super) fn received(&mut self, msg: &Message) -> Result<(), Failure> {
        self.metrics.message_in(msg.len());
        let decision = self.limiter.check(Instant::now());
        if decision.is_allow() {
            return Ok(());
        }
        let mut failure = Failure::new(CloseCause::RateLimited, "too many messages; slow down");
        if let Decision::Throttle { retry_after } = decision {
            failure = failure.retry_after(retry_after);
        }
        Err(failure)
    }

    /// Opens the session of verified claims: revocation, registry and cluster. The caller then
    /// greets the client and calls [`Session::session_started`]. A refusal is the cause of the
    /// close; for `TokenRevoked` the caller says so first.
    pub(super) async fn open_session(
        &mut self,
        claims: &Claims,
        ctx: &mut Context,
    ) -> Result<SessionInfo, CloseCause> {
        if self.state.cluster.is_revoked(claims) {
            self.state.metrics.auth(self.kind.name(), "revoked");
            tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), user_id = %claims.user_id, kind = "token_revoked", "authentication refused: the token has been revoked");
            return Err(CloseCause::TokenRevoked);
        }
        let expires_at = claims.exp.map(|e| e.saturating_add(self.leeway()));
        let info = SessionInfo {
            id: SessionId::random(),
            user_id: claims.user_id.clone(),
            conn: self.peer.conn.id,
            peer: self.peer.conn.peer,
            endpoint: self.kind.name().to_string(),
            started: unix_now(),
            expires: claims.exp,
        };
        if let Err(e) = self.state.sessions.register(info.clone(), ctx.handle()) {
            tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), user_id = %info.user_id, kind = "too_many_sessions", error = %e, "session refused");
            return Err(CloseCause::TooManySessions);
        }
        if let Err(max) = self.state.cluster.open(&info, claims).await {
            self.state.sessions.unregister(&info.id);
            tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), user_id = %info.user_id, kind = "too_many_sessions", max, "session refused: the user's sessions on all nodes reach the cap");
            return Err(CloseCause::TooManySessions);
        }
        self.state.metrics.set_sessions_active(self.state.sessions.len() as i64);
        self.auth = Auth::Session { id: info.id.clone(), expires_at };
        Ok(info)
    }

    /// The client has been told its session started: the application and the audit trail
    /// hear of it, and the application's [`Peer`] carries it from now on.
    pub(super) fn session_started(&mut self, info: SessionInfo) {
        self.state.app.on_session_start(&info, &self.state.sessions);
        self.state.audit.record(|| audit::session_start(&info, self.peer.client_ip));
        self.peer.session = Some(info);
    }

    /// A refresh replaced the session's token: its new `exp` (Unix seconds).
    pub(super) fn refreshed(&mut self, exp: Option<u64>) {
        let leeway = self.leeway();
        let Auth::Session { id, expires_at } = &mut self.auth else { return };
        *expires_at = exp.map(|e| e.saturating_add(leeway));
        self.state.sessions.set_expiry(id, exp);
        if let Some(session) = &mut self.peer.session {
            session.expires = exp;
        }
    }

    /// Hands a data message to the application (on the echo endpoint, or in a session).
    pub(super) async fn deliver(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        let started = Instant::now();
        let app = self.state.app.clone();
        let result = app.on_message(&self.peer, msg, ctx).await;
        self.metrics.message_handled(started.elapsed());
        result
    }

    /// The deadline passed before a session started: the authentication timeout.
    pub(super) fn auth_deadline(&self) -> Result<(), Close> {
        match self.auth {
            Auth::Waiting => {
                self.state.metrics.auth(self.kind.name(), "timeout");
                self.state.audit.record(|| audit::auth_failed(&self.peer, "timeout", None));
                Err(CloseCause::AuthTimeout.close())
            }
            _ => Ok(()),
        }
    }

    /// Messages were written to the socket.
    pub(super) fn sent(&mut self, messages: usize, bytes: usize) {
        self.metrics.messages_out(messages, bytes);
    }

    /// The connection has ended: its log line and metrics, and the end of its session.
    pub(super) fn ended(&mut self, outcome: &Outcome) {
        self.metrics.connection_closed();
        self.log_outcome(outcome);
        if let Auth::Session { id, .. } = &self.auth {
            self.state.sessions.unregister(id);
            self.state.cluster.close(id);
            self.state.metrics.set_sessions_active(self.state.sessions.len() as i64);
            if let Some(info) = &self.peer.session {
                self.state.audit.record(|| audit::session_end(info, outcome));
                self.state.app.on_session_end(info, &self.state.sessions);
            }
        }
    }

    /// Starts a plain-text session: deadline at token expiry, `Authenticated!`.
    async fn start_plain(&mut self, claims: Claims, ctx: &mut Context) -> Result<(), Close> {
        let info = match self.open_session(&claims, ctx).await {
            Ok(info) => info,
            Err(CloseCause::TokenRevoked) => {
                ctx.send(Message::Text(replies::INVALID_TOKEN.into()))?;
                return Err(CloseCause::TokenRevoked.close());
            }
            Err(cause) => return Err(cause.close()),
        };
        let expires_at = match &self.auth {
            Auth::Session { expires_at, .. } => *expires_at,
            _ => None,
        };
        ctx.set_deadline(expires_at.map(deadline_for));
        ctx.send(Message::Text(replies::AUTHENTICATED.into()))?;
        self.session_started(info);
        Ok(())
    }

    fn log_outcome(&self, outcome: &Outcome) {
        let info = &self.peer.conn;
        let endpoint = self.kind.name();
        let user_id = self.peer.session.as_ref().map(|s| s.user_id.as_str()).unwrap_or("-");
        if let Some(code) = outcome.close_code_sent() {
            self.state.metrics.close_sent(endpoint, code);
        }
        match outcome {
            Outcome::PeerClosed { code, reason } => {
                // 1005: no status code was present (RFC 6455 section 7.1.5).
                self.state.metrics.close_received(endpoint, code.unwrap_or(1005));
                tracing::debug!(conn = %info.id, peer = %info.peer, endpoint, user_id, close_code = code.unwrap_or(close_code::NORMAL), reason = %reason, "closed by client");
            }
            Outcome::ServerClosed(close) => match CloseCause::of(close).level() {
                Level::Debug => {
                    tracing::debug!(conn = %info.id, peer = %info.peer, endpoint, user_id, close_code = close.code, "closed");
                }
                Level::Info => {
                    tracing::info!(conn = %info.id, peer = %info.peer, endpoint, user_id, close_code = close.code, reason = %close.reason, "closed: going away");
                }
                Level::Warn => {
                    tracing::warn!(conn = %info.id, peer = %info.peer, endpoint, user_id, kind = "policy", close_code = close.code, reason = %close.reason, "closed by policy");
                }
                Level::Error => {
                    tracing::error!(conn = %info.id, peer = %info.peer, endpoint, user_id, kind = "server", close_code = close.code, reason = %close.reason, "closed with error");
                }
            },
            Outcome::Failed { error, close } => {
                self.state.metrics.error(endpoint, error.kind());
                let code = close.as_ref().map(|c| c.code);
                // One client can cause many of these; the line count is bounded (the metric is not).
                if !self.state.may_log_noisy() {
                    return;
                }
                let cause = CloseCause::of_error(error);
                match cause.level() {
                    Level::Debug | Level::Info => {
                        tracing::info!(conn = %info.id, peer = %info.peer, endpoint, user_id, kind = error.kind(), close_code = code, "closed: {}", cause.reason());
                    }
                    Level::Warn => {
                        tracing::warn!(conn = %info.id, peer = %info.peer, endpoint, user_id, kind = error.kind(), close_code = code, error = %error, "closed: {}", cause.reason());
                    }
                    Level::Error => {
                        tracing::error!(conn = %info.id, peer = %info.peer, endpoint, user_id, kind = error.kind(), close_code = code, error = %error, "connection error");
                    }
                }
            }
        }
    }
}

fn deadline_for(unix_secs: u64) -> Instant {
    let now = unix_now();
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now))
}

/// The guide's plain-text exchange: the first message is the token, then data messages go to
/// the application as they are.
impl<H: Handler> palisade_transport::Handler for Session<H> {
    async fn on_open(&mut self, ctx: &mut Context) -> Result<(), Close> {
        match self.opened(ctx) {
            Some(claims) => Box::pin(self.start_plain(claims, ctx)).await,
            None => Ok(()),
        }
    }

    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        if self.received(&msg).is_err() {
            return Err(CloseCause::RateLimited.close());
        }
        match &self.auth {
            Auth::Waiting => {
                let token = match &msg {
                    Message::Text(t) => t.trim(),
                    Message::Binary(_) => "",
                };
                match self.verify(token).await {
                    // Boxed so the connection's task, which holds the largest future it awaits
                    // for its whole life, stays small.
                    Ok(claims) => Box::pin(self.start_plain(claims, ctx)).await,
                    Err(e) => {
                        let cause = CloseCause::of_token_error(&e);
                        ctx.send(Message::Text(replies::for_cause(cause).into()))?;
                        Err(cause.close())
                    }
                }
            }
            Auth::Open | Auth::Session { .. } => self.deliver(msg, ctx).await,
            Auth::FromHeader(_) => Err(CloseCause::InternalError.close()),
        }
    }

    async fn on_deadline(&mut self, ctx: &mut Context) -> Result<(), Close> {
        match &self.auth {
            Auth::Session { expires_at: Some(at), .. } => {
                if unix_now() < *at {
                    // Woken early (clock adjustment): sleep again until the real expiry.
                    ctx.set_deadline(Some(deadline_for(*at)));
                    return Ok(());
                }
                ctx.send(Message::Text(replies::TOKEN_EXPIRED.into()))?;
                Err(CloseCause::TokenExpired.close())
            }
            _ => self.auth_deadline(),
        }
    }

    fn on_drain(&mut self, restart: bool, spread: Duration) -> Close {
        super::drain::drain_close(false, restart, spread).0
    }

    fn on_sent(&mut self, messages: usize, bytes: usize) {
        self.sent(messages, bytes);
    }

    fn on_close(&mut self, _info: &ConnInfo, outcome: &Outcome) {
        self.ended(outcome);
    }
}
