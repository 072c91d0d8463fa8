//! The echo and secure endpoints: firewall at accept and handshake, the guide's authentication
//! exchange on the secure endpoint, and one log line and metric per way a connection ends.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, StatusCode};
use palisade_digest::Fingerprint;
use palisade_firewall::{ConnectionPermit, Decision, DenyReason, Firewall, MessageLimiter};
use palisade_jwks::{Verifier, VerifyError};
use palisade_metrics::{EndpointMetrics, Metrics};
use palisade_token::{Claims, TokenError};
use palisade_transport::{
    Accept, Close, ConnInfo, Context, Endpoint, HandshakeError, HandshakeRequest, Message, Outcome,
    Refusal, Rejection, close_code,
};

use crate::app::{Handler, Peer};
use crate::audit::{self, Audit};
use crate::close_cause::{CloseCause, Failure, Level};
use crate::sessions::{SessionId, SessionInfo, SessionRegistry, unix_now};

mod channels;
mod drain;
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
        let mut conn = Conn {
            kind: self.kind,
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            limiter: fw.message_limiter(),
            peer: Peer {
                conn: info.clone(),
                client_ip,
                session: None,
                echo_prefix: self.state.echo_prefix.clone(),
            },
            auth: match self.kind {
                Kind::Echo => Auth::Open,
                Kind::Secure => Auth::Waiting,
            },
            v1: None,
            drain_notice: None,
            channels: Default::default(),
        };
        let mut accept = Accept::default();
        if self.kind == Kind::Secure
            && v1::offered(req)
            && let Some(settings) = &self.v1
        {
            accept.subprotocol = Some(v1::PROTOCOL.into());
            conn.v1 = Some(v1::V1::new(settings.clone()));
        }
        if self.kind == Kind::Secure {
            let bearer = header("authorization").and_then(crate::http_auth::bearer_token);
            if let Some(token) = bearer {
                // The handshake hook cannot wait: a token needing a key fetch is refused (the
                // fetch starts) and the client retries.
                match conn.verify_now(token) {
                    Ok(claims) => conn.auth = Auth::FromHeader(claims),
                    Err(e) => {
                        let body = CloseCause::of_token_error(&e).reason();
                        return Err(Rejection::new(StatusCode::UNAUTHORIZED, body));
                    }
                }
            }
        }
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

/// One connection's logic, on either endpoint.
pub(crate) struct Conn<H> {
    kind: Kind,
    state: Arc<State<H>>,
    metrics: EndpointMetrics,
    limiter: MessageLimiter,
    peer: Peer,
    auth: Auth,
    /// The `palisade.v1` state when the client negotiated it; `None` speaks the guide's text.
    v1: Option<v1::V1>,
    /// The `palisade.v1` envelope before a drain's close (set by `on_drain`).
    drain_notice: Option<Message>,
    /// Channel grants and subscriptions (`palisade.v1` sessions).
    channels: channels::ConnChannels,
}

impl<H: Handler> Conn<H> {
    /// Verifies a token from the first message or a `palisade.v1` auth or refresh envelope,
    /// waiting for at most one fetch of its issuer's keys.
    async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let result = match &self.state.codec {
            Some(verifier) => verifier.verify(token, unix_now()).await,
            None => Err(VerifyError::Token(TokenError::UnknownKey)),
        };
        self.verified(token, result)
    }

    /// Verifies a token of the `Authorization: Bearer` header, without waiting.
    fn verify_now(&self, token: &str) -> Result<Claims, VerifyError> {
        let result = match &self.state.codec {
            Some(verifier) => verifier.verify_now(token, unix_now()),
            None => Err(VerifyError::Token(TokenError::UnknownKey)),
        };
        self.verified(token, result)
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

    /// Starts the session: registry, deadline at token expiry, `Authenticated!`.
    async fn start_session(&mut self, claims: Claims, ctx: &mut Context) -> Result<(), Close> {
        if self.state.cluster.is_revoked(&claims) {
            self.state.metrics.auth(self.kind.name(), "revoked");
            tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), user_id = %claims.user_id, kind = "token_revoked", "authentication refused: the token has been revoked");
            if let Some(v1) = &mut self.v1 {
                return Err(v1.fail_with(Failure::new(
                    CloseCause::TokenRevoked,
                    "the token has been revoked",
                )));
            }
            ctx.send(Message::Text(replies::INVALID_TOKEN.into()))?;
            return Err(CloseCause::TokenRevoked.close());
        }
        let leeway = self.state.codec.as_ref().map(|c| c.leeway_secs()).unwrap_or(0);
        let expires_at = claims.exp.map(|e| e.saturating_add(leeway));
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
            return Err(CloseCause::TooManySessions.close());
        }
        if let Err(max) = self.state.cluster.open(&info, &claims).await {
            self.state.sessions.unregister(&info.id);
            tracing::warn!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), user_id = %info.user_id, kind = "too_many_sessions", max, "session refused: the user's sessions on all nodes reach the cap");
            return Err(CloseCause::TooManySessions.close());
        }
        self.state.metrics.set_sessions_active(self.state.sessions.len() as i64);
        self.auth = Auth::Session { id: info.id.clone(), expires_at };
        if self.v1.is_some() {
            self.channels_session_started(&claims);
            self.v1_session_started(&info, ctx)?;
        } else {
            ctx.set_deadline(expires_at.map(deadline_for));
            ctx.send(Message::Text(replies::AUTHENTICATED.into()))?;
        }
        self.state.app.on_session_start(&info, &self.state.sessions);
        self.state.audit.record(|| audit::session_start(&info, self.peer.client_ip));
        self.peer.session = Some(info);
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

impl<H: Handler> palisade_transport::Handler for Conn<H> {
    async fn on_open(&mut self, ctx: &mut Context) -> Result<(), Close> {
        self.metrics.connection_opened();
        match std::mem::replace(&mut self.auth, Auth::Open) {
            Auth::FromHeader(claims) => Box::pin(self.start_session(claims, ctx)).await,
            Auth::Waiting => {
                self.auth = Auth::Waiting;
                ctx.set_deadline(Some(Instant::now() + self.state.auth_timeout));
                Ok(())
            }
            other => {
                self.auth = other;
                Ok(())
            }
        }
    }

    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        self.metrics.message_in(msg.len());
        let decision = self.limiter.check(Instant::now());
        if !decision.is_allow() {
            let mut failure = Failure::new(CloseCause::RateLimited, "too many messages; slow down");
            if let Decision::Throttle { retry_after } = decision {
                failure = failure.retry_after(retry_after);
            }
            return Err(match &mut self.v1 {
                Some(v1) => v1.fail_with(failure),
                None => CloseCause::RateLimited.close(),
            });
        }
        // In `palisade.v1` mode only the `data` of a message envelope reaches the application.
        let (msg, v1_mark) = match self.v1.is_some() {
            false => (msg, None),
            // Boxed (as is the session start below) so the connection's task, which holds
            // the largest future it awaits for its whole life, stays small.
            true => match Box::pin(self.v1_message(msg, ctx)).await? {
                Some(data) => (data, Some(ctx.queued())),
                None => return Ok(()),
            },
        };
        let result = match &self.auth {
            Auth::Waiting => {
                let token = match &msg {
                    Message::Text(t) => t.trim(),
                    Message::Binary(_) => "",
                };
                match self.verify(token).await {
                    Ok(claims) => Box::pin(self.start_session(claims, ctx)).await,
                    Err(e) => {
                        let cause = CloseCause::of_token_error(&e);
                        ctx.send(Message::Text(replies::for_cause(cause).into()))?;
                        Err(cause.close())
                    }
                }
            }
            Auth::Open | Auth::Session { .. } => {
                let started = Instant::now();
                let app = self.state.app.clone();
                let result = app.on_message(&self.peer, msg, ctx).await;
                self.metrics.message_handled(started.elapsed());
                result
            }
            Auth::FromHeader(_) => Err(CloseCause::InternalError.close()),
        };
        if let Some(mark) = v1_mark {
            ctx.map_queued(mark, v1::wrap_reply);
        }
        result
    }

    async fn on_deadline(&mut self, ctx: &mut Context) -> Result<(), Close> {
        if self.v1.is_some() && matches!(self.auth, Auth::Session { .. }) {
            return self.v1_session_deadline(ctx);
        }
        match &self.auth {
            Auth::Waiting => {
                self.state.metrics.auth(self.kind.name(), "timeout");
                self.state.audit.record(|| audit::auth_failed(&self.peer, "timeout", None));
                Err(CloseCause::AuthTimeout.close())
            }
            Auth::Session { expires_at: Some(at), .. } => {
                if unix_now() < *at {
                    // Woken early (clock adjustment): sleep again until the real expiry.
                    ctx.set_deadline(Some(deadline_for(*at)));
                    return Ok(());
                }
                ctx.send(Message::Text(replies::TOKEN_EXPIRED.into()))?;
                Err(CloseCause::TokenExpired.close())
            }
            _ => Ok(()),
        }
    }

    fn on_push(&mut self, msg: Message) -> Message {
        match &self.v1 {
            Some(_) => match crate::channels::unmark(msg) {
                Ok(channel_push) => {
                    self.channels_pushed(&channel_push);
                    channel_push
                }
                Err(app_push) => v1::wrap_reply(app_push),
            },
            None => msg,
        }
    }

    fn on_drain(&mut self, restart: bool, spread: Duration) -> Close {
        let (close, notice) = drain::drain_close(self.v1.is_some(), restart, spread);
        self.drain_notice = notice;
        close
    }

    fn on_closing(&mut self, close: &Close) -> Option<Message> {
        if let Some(notice) = self.drain_notice.take() {
            return Some(notice);
        }
        self.v1.as_mut().map(|v1| v1.closing(close))
    }

    fn on_sent(&mut self, messages: usize, bytes: usize) {
        self.metrics.messages_out(messages, bytes);
    }

    fn on_close(&mut self, _info: &ConnInfo, outcome: &Outcome) {
        self.metrics.connection_closed();
        self.log_outcome(outcome);
        self.channels_closed();
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
}
