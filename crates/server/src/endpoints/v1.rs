//! The `palisade.v1` subprotocol of the secure endpoint: JSON envelopes for authentication,
//! data, token refresh and typed errors (docs/subprotocol.md, docs/palisade.v1.schema.json).
//!
//! A connection whose client offered `palisade.v1` is served by a [`V1`], the transport handler
//! that wraps the connection's core ([`Session`]) and calls it through its API: verify a token,
//! open and start a session, refresh it, deliver a message, end. Clients that negotiate nothing
//! are served by the core itself, with the guide's plain-text exchange, untouched.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_transport::{Close, ConnInfo, Context, HandshakeRequest, Message, Outcome, PushKind};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use palisade_token::Claims;

use super::channels::ConnChannels;
use super::session::{Session, Stage};
use crate::app::Handler;
use crate::close_cause::{CloseCause, Failure};
use crate::config::Config;
use crate::sessions::unix_now;

/// The subprotocol's name in `Sec-WebSocket-Protocol`.
pub(crate) const PROTOCOL: &str = "palisade.v1";

/// Failed refreshes after which a session is closed with 1008.
pub(crate) const MAX_FAILED_REFRESHES: u32 = 3;

/// The subprotocol's settings, from `[auth]` and `[subprotocol]`.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Longest a session may last, refreshes included (0: no cap).
    pub(crate) max_session_secs: u64,
    /// Seconds before the token's `exp` that `expiring` is sent (0: never).
    pub(crate) expiry_warning_secs: u64,
    /// The bad envelope at which the connection is closed.
    pub(crate) close_after_bad_envelopes: u32,
}

impl Settings {
    /// The settings, or `None` when `subprotocol.enabled` is off.
    pub(crate) fn from_config(config: &Config) -> Option<Settings> {
        config.subprotocol.enabled.then(|| Settings {
            max_session_secs: config.auth.max_session_secs,
            expiry_warning_secs: config.auth.expiry_warning_secs,
            close_after_bad_envelopes: config.subprotocol.close_after_bad_envelopes.max(1),
        })
    }
}

/// Whether the upgrade request offers `palisade.v1`.
pub(super) fn offered(req: &HandshakeRequest) -> bool {
    req.headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL)
}

/// One connection's subprotocol state: envelope and refresh counts, the session clock and the
/// error envelope before the coming close.
pub(crate) struct V1State {
    settings: Settings,
    bad_envelopes: u32,
    failed_refreshes: u32,
    /// The current token's `exp` (Unix seconds).
    exp: Option<u64>,
    /// `auth.leeway_secs`: the session ends this long after `exp`.
    leeway: u64,
    /// The session's start plus `max_session_secs` (Unix seconds).
    limit: Option<u64>,
    /// Whether `expiring` has been sent for the current token.
    warned: bool,
    /// What the error envelope before the coming close says, when this module decided it.
    closing: Option<Failure>,
}

/// Why a session ends at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    TokenExpired,
    SessionTooLong,
}

/// The next thing due on a session's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Send `expiring`.
    Warn,
    /// Close the session.
    End(End),
}

impl V1State {
    pub(crate) fn new(settings: Settings) -> V1State {
        V1State {
            settings,
            bad_envelopes: 0,
            failed_refreshes: 0,
            exp: None,
            leeway: 0,
            limit: None,
            warned: false,
            closing: None,
        }
    }

    /// Starts the session clock: `started` and the first token's `exp`, in Unix seconds.
    pub(crate) fn start(&mut self, started: u64, exp: Option<u64>, leeway: u64) {
        let max = self.settings.max_session_secs;
        self.limit = (max > 0).then(|| started.saturating_add(max));
        self.leeway = leeway;
        self.set_token(exp);
    }

    fn set_token(&mut self, exp: Option<u64>) {
        self.exp = exp;
        self.warned = false;
    }

    /// The next event on the session's clock and when it is due (Unix seconds).
    pub(crate) fn next_event(&self) -> Option<(u64, Event)> {
        let token_end = self.exp.map(|e| (e.saturating_add(self.leeway), End::TokenExpired));
        let limit_end = self.limit.map(|l| (l, End::SessionTooLong));
        let end = match (token_end, limit_end) {
            (Some(t), Some(l)) => Some(if t.0 <= l.0 { t } else { l }),
            (t, l) => t.or(l),
        };
        let warning = self.settings.expiry_warning_secs;
        let warn = match (self.exp, end) {
            (Some(exp), Some((_, End::TokenExpired))) if !self.warned && warning > 0 => {
                Some((exp.saturating_sub(warning), Event::Warn))
            }
            _ => None,
        };
        let end = end.map(|(at, why)| (at, Event::End(why)));
        match (warn, end) {
            (Some(w), Some(e)) => Some(if w.0 <= e.0 { w } else { e }),
            (w, e) => w.or(e),
        }
    }

    /// Sets the connection's deadline to the next event.
    fn schedule(&self, ctx: &mut Context) {
        ctx.set_deadline(self.next_event().map(|(at, _)| instant_at(at)));
    }

    /// Remembers what the error envelope before the coming close says, and returns the close.
    fn fail(&mut self, cause: CloseCause, detail: impl Into<String>) -> Close {
        self.closing = Some(Failure::new(cause, detail));
        cause.close()
    }

    /// Remembers a failure decided by the endpoint (e.g. a rate limit with its delay), and
    /// returns its close.
    pub(crate) fn fail_with(&mut self, failure: Failure) -> Close {
        let close = failure.cause.close();
        self.closing = Some(failure);
        close
    }

    /// The error envelope sent right before `close`: the failure this module decided, or one
    /// derived from the close code and reason for closes decided elsewhere.
    pub(crate) fn closing(&mut self, close: &Close) -> Message {
        self.closing_with(close, None)
    }

    /// [`V1State::closing`], with the delay after which the client may reconnect when the closing
    /// path knows one (a shutdown spreading its reconnects): sent as `retry_after_ms`.
    pub(crate) fn closing_with(&mut self, close: &Close, retry_after: Option<Duration>) -> Message {
        let mut failure = self.closing.take().unwrap_or_else(|| Failure::for_close(close));
        if let Some(after) = retry_after {
            failure = failure.retry_after(after);
        }
        close_envelope(&failure)
    }
}

/// A client envelope.
#[derive(Debug)]
pub(crate) enum Envelope {
    Auth(String),
    Message(Box<RawValue>),
    Refresh(String),
    /// A channel request (crate::channels), or why it cannot be served.
    Channel(Result<crate::channels::Request, crate::channels::BadRequest>),
}

/// The fields of any client envelope; which are required depends on `type`.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

/// `data` is present even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses one client envelope; the error is the `detail` of a `bad_envelope` error.
pub(crate) fn parse(text: &str) -> Result<Envelope, String> {
    if !text.trim_start().starts_with('{') {
        return Err("an envelope is a JSON object".into());
    }
    let incoming: Incoming =
        serde_json::from_str(text).map_err(|e| format!("invalid envelope: {e}"))?;
    match incoming.kind.as_str() {
        "auth" => incoming.token.map(Envelope::Auth).ok_or_else(|| missing("auth", "token")),
        "refresh" => {
            incoming.token.map(Envelope::Refresh).ok_or_else(|| missing("refresh", "token"))
        }
        "message" => incoming.data.map(Envelope::Message).ok_or_else(|| missing("message", "data")),
        kind if crate::channels::TYPES.contains(&kind) => {
            Ok(Envelope::Channel(crate::channels::parse(kind, text)))
        }
        other => Err(format!(
            "unknown type {:?}; expected \"auth\", \"message\", \"refresh\", \"subscribe\", \
             \"unsubscribe\", \"publish\", \"presence\" or \"history\"",
            truncate(other, 32)
        )),
    }
}

fn missing(kind: &str, field: &str) -> String {
    let what = if field == "token" { "a string `token`" } else { "`data`" };
    format!("a `{kind}` envelope needs {what}")
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A server envelope.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Authenticated {
        session_id: &'a str,
        user_id: &'a str,
        exp: Option<u64>,
    },
    Message {
        data: &'a RawValue,
    },
    Expiring {
        in_secs: u64,
    },
    Refreshed {
        exp: Option<u64>,
    },
    Error {
        reason: &'a str,
        detail: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

fn envelope(env: &Outgoing<'_>) -> Message {
    match serde_json::to_string(env) {
        Ok(text) => Message::Text(text.into()),
        // Never happens (strings, integers and raw JSON always serialise); stay on the protocol.
        Err(_) => Message::Text(r#"{"type":"error","reason":"internal_error","detail":""}"#.into()),
    }
}

/// An `error` envelope that closes nothing (a bad envelope, a refused refresh).
pub(crate) fn error_envelope(reason: &str, detail: &str) -> Message {
    envelope(&Outgoing::Error { reason, detail, reconnect: None, retry_after_ms: None })
}

/// The `error` envelope before a close: the cause's name and reconnect advice.
pub(crate) fn close_envelope(failure: &Failure) -> Message {
    envelope(&Outgoing::Error {
        reason: failure.cause.error_name(),
        detail: &failure.detail,
        reconnect: Some(failure.cause.advice().as_str()),
        retry_after_ms: failure.retry_after_ms,
    })
}

/// Wraps an application reply or push in a `message` envelope: text that is JSON is embedded as
/// that value, other text as a JSON string. Binary messages are sent as they are.
pub(crate) fn wrap_reply(msg: Message) -> Message {
    match msg {
        Message::Text(text) => {
            let data = match serde_json::from_str::<&RawValue>(&text) {
                Ok(raw) => return envelope(&Outgoing::Message { data: raw }),
                Err(_) => serde_json::to_string(text.as_str())
                    .ok()
                    .and_then(|s| RawValue::from_string(s).ok()),
            };
            match data {
                Some(raw) => envelope(&Outgoing::Message { data: &raw }),
                None => error_envelope(
                    CloseCause::InternalError.error_name(),
                    "reply could not be encoded",
                ),
            }
        }
        binary @ Message::Binary(_) => binary,
    }
}

/// The instant at which the wall clock reads `unix_secs` (now, if it already has).
fn instant_at(unix_secs: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(unix_secs);
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Whether the wall clock has reached `unix_secs`.
fn reached(unix_secs: u64) -> bool {
    SystemTime::now() >= UNIX_EPOCH + Duration::from_secs(unix_secs)
}

/// A `palisade.v1` connection: the transport handler that wraps the connection's core
/// ([`Session`]) in envelopes. It parses every message, answers `auth` and `refresh`, runs the
/// session clock, serves channel requests and says why before every close; it reaches the core
/// through the core's API only.
pub(crate) struct V1<H> {
    session: Session<H>,
    state: V1State,
    /// The envelope before a drain's close (set by `on_drain`).
    drain_notice: Option<Message>,
    /// Channel grants and subscriptions.
    channels: ConnChannels,
}

impl<H: Handler> V1<H> {
    pub(super) fn new(session: Session<H>, settings: Settings) -> V1<H> {
        V1 {
            session,
            state: V1State::new(settings),
            drain_notice: None,
            channels: ConnChannels::default(),
        }
    }

    /// A message from a `palisade.v1` client (after the rate limit). Returns the message for the
    /// application (the JSON text of a message envelope's `data`), if there is one.
    async fn envelope(
        &mut self,
        msg: Message,
        ctx: &mut Context,
    ) -> Result<Option<Message>, Close> {
        let parsed = match &msg {
            Message::Text(text) => parse(text),
            Message::Binary(_) => Err("binary frames are not envelopes; send JSON text".into()),
        };
        let envelope = match parsed {
            Ok(e) => e,
            Err(detail) => return self.bad_envelope(detail, ctx).map(|()| None),
        };
        let in_session = match self.session.stage() {
            Stage::Waiting => false,
            Stage::Session => true,
            Stage::Open | Stage::FromHeader => {
                return Err(CloseCause::InternalError.close());
            }
        };
        match (envelope, in_session) {
            (Envelope::Message(data), true) => Ok(Some(Message::Text(data.get().into()))),
            (Envelope::Auth(token), false) => self.auth(&token, ctx).await.map(|()| None),
            (Envelope::Auth(_), true) => self
                .bad_envelope(
                    "already authenticated; send a `refresh` envelope to replace the token".into(),
                    ctx,
                )
                .map(|()| None),
            (Envelope::Refresh(token), true) => self.refresh(&token, ctx).await.map(|()| None),
            (Envelope::Channel(req), true) => {
                self.channels.request(&self.session, req, ctx).await.map(|()| None)
            }
            (Envelope::Message(_) | Envelope::Refresh(_) | Envelope::Channel(_), false) => {
                Err(self.state.fail(CloseCause::NotAuthenticated, "send an `auth` envelope first"))
            }
        }
    }

    async fn auth(&mut self, token: &str, ctx: &mut Context) -> Result<(), Close> {
        match self.session.verify(token).await {
            Ok(claims) => self.start(claims, ctx).await,
            Err(e) => {
                let cause = CloseCause::of_token_error(&e);
                let detail = match cause {
                    CloseCause::TokenExpired => "the token has expired",
                    _ => "the token was refused (the server log names the failed check)",
                };
                Err(self.state.fail(cause, detail))
            }
        }
    }

    /// Starts the session of verified claims: the core opens it, then the grants are read, the
    /// session clock starts and the client gets `authenticated`.
    async fn start(&mut self, claims: Claims, ctx: &mut Context) -> Result<(), Close> {
        let info = match self.session.open_session(&claims, ctx).await {
            Ok(info) => info,
            Err(CloseCause::TokenRevoked) => {
                return Err(self.state.fail_with(Failure::new(
                    CloseCause::TokenRevoked,
                    "the token has been revoked",
                )));
            }
            Err(cause) => return Err(cause.close()),
        };
        self.channels.session_started(&self.session, &claims);
        self.state.start(info.started, info.expires, self.session.leeway());
        self.state.schedule(ctx);
        ctx.send(envelope(&Outgoing::Authenticated {
            session_id: info.id.as_str(),
            user_id: &info.user_id,
            exp: info.expires,
        }))?;
        self.session.session_started(info);
        Ok(())
    }

    async fn refresh(&mut self, token: &str, ctx: &mut Context) -> Result<(), Close> {
        let claims = match self.session.verify(token).await {
            Ok(claims) => claims,
            Err(e) => {
                let cause = CloseCause::of_token_error(&e);
                let detail = match cause {
                    CloseCause::TokenExpired => "the refresh token has expired",
                    _ => "the refresh token was refused (the server log names the failed check)",
                };
                return self.refresh_failed(cause.error_name(), detail, ctx);
            }
        };
        let (Some(id), Some(session)) = (self.session.session_id(), &self.session.peer().session)
        else {
            return Err(CloseCause::InternalError.close());
        };
        let (id, user_id) = (id.clone(), session.user_id.clone());
        let endpoint = self.session.endpoint();
        let (conn, peer) = (self.session.peer().conn.id, self.session.peer().conn.peer);
        if claims.user_id != user_id {
            tracing::warn!(%conn, %peer, endpoint, user_id = %user_id, kind = "user_mismatch", "refresh refused: the token names another user");
            return self.refresh_failed(
                "user_mismatch",
                "the refresh token names another user",
                ctx,
            );
        }
        let v1 = &mut self.state;
        if let Some(limit) = v1.limit
            && claims.exp.is_none_or(|exp| exp > limit)
        {
            let max = v1.settings.max_session_secs;
            tracing::warn!(%conn, %peer, endpoint, user_id = %user_id, kind = "session_too_long", "refresh refused: it would carry the session past auth.max_session_secs");
            return Err(v1.fail(
                CloseCause::SessionTooLong,
                format!("the refresh token would carry the session past its {max} s limit"),
            ));
        }
        v1.set_token(claims.exp);
        v1.schedule(ctx);
        self.session.refreshed(claims.exp);
        tracing::info!(%conn, %peer, endpoint, user_id = %user_id, session = %id, exp = ?claims.exp, "session refreshed");
        ctx.send(envelope(&Outgoing::Refreshed { exp: claims.exp }))?;
        self.channels.refreshed(&self.session, &claims, ctx)
    }

    /// A refused refresh: the session runs on until its token expires, unless it was the last
    /// one allowed.
    fn refresh_failed(
        &mut self,
        reason: &'static str,
        detail: &str,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        let v1 = &mut self.state;
        v1.failed_refreshes += 1;
        if v1.failed_refreshes >= MAX_FAILED_REFRESHES {
            let n = v1.failed_refreshes;
            return Err(v1.fail(
                CloseCause::TooManyFailedRefreshes,
                format!("{detail}; {n} refreshes failed"),
            ));
        }
        ctx.send(error_envelope(reason, detail))
    }

    fn bad_envelope(&mut self, detail: String, ctx: &mut Context) -> Result<(), Close> {
        let peer = self.session.peer();
        tracing::debug!(conn = %peer.conn.id, peer = %peer.conn.peer, endpoint = self.session.endpoint(), kind = "bad_envelope", detail = %detail, "bad envelope");
        let v1 = &mut self.state;
        v1.bad_envelopes += 1;
        let n = v1.bad_envelopes;
        if n >= v1.settings.close_after_bad_envelopes {
            return Err(v1.fail(
                CloseCause::BadEnvelopes,
                format!("{detail}; closing after {n} bad envelopes"),
            ));
        }
        ctx.send(error_envelope(CloseCause::BadEnvelopes.error_name(), &detail))
    }

    /// The session deadline passed: send `expiring`, or end the session.
    fn session_deadline(&mut self, ctx: &mut Context) -> Result<(), Close> {
        let v1 = &mut self.state;
        match v1.next_event() {
            Some((at, Event::End(End::TokenExpired))) if reached(at) => Err(v1.fail(
                CloseCause::TokenExpired,
                "the token has expired; reconnect with a fresh one",
            )),
            Some((at, Event::End(End::SessionTooLong))) if reached(at) => {
                let max = v1.settings.max_session_secs;
                Err(v1.fail(
                    CloseCause::SessionTooLong,
                    format!("the session reached its {max} s limit; reconnect"),
                ))
            }
            Some((at, Event::Warn)) if reached(at) => {
                v1.warned = true;
                let in_secs = v1.exp.unwrap_or(0).saturating_sub(unix_now());
                v1.schedule(ctx);
                ctx.send(envelope(&Outgoing::Expiring { in_secs }))
            }
            // Woken early (clock adjustment): sleep again until the event.
            _ => {
                v1.schedule(ctx);
                Ok(())
            }
        }
    }
}

impl<H: Handler> palisade_transport::Handler for V1<H> {
    async fn on_open(&mut self, ctx: &mut Context) -> Result<(), Close> {
        match self.session.opened(ctx) {
            // Boxed (as is every envelope below) so the connection's task, which holds the
            // largest future it awaits for its whole life, stays small.
            Some(claims) => Box::pin(self.start(claims, ctx)).await,
            None => Ok(()),
        }
    }

    async fn on_message(&mut self, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        if let Err(failure) = self.session.received(&msg) {
            return Err(self.state.fail_with(failure));
        }
        // Only the `data` of a message envelope reaches the application.
        let Some(data) = Box::pin(self.envelope(msg, ctx)).await? else { return Ok(()) };
        let mark = ctx.queued();
        let result = self.session.deliver(data, ctx).await;
        ctx.map_queued(mark, wrap_reply);
        result
    }

    async fn on_deadline(&mut self, ctx: &mut Context) -> Result<(), Close> {
        match self.session.stage() {
            Stage::Session => self.session_deadline(ctx),
            _ => self.session.auth_deadline(),
        }
    }

    fn on_push(&mut self, msg: Message, kind: PushKind) -> Message {
        match kind {
            crate::channels::PUBLICATION => msg,
            crate::channels::UNSUBSCRIBED => {
                self.channels.pushed(&self.session, &msg);
                msg
            }
            _ => wrap_reply(msg),
        }
    }

    fn on_drain(&mut self, restart: bool, spread: Duration) -> Close {
        let (close, notice) = super::drain::drain_close(true, restart, spread);
        self.drain_notice = notice;
        close
    }

    fn on_closing(&mut self, close: &Close) -> Option<Message> {
        if let Some(notice) = self.drain_notice.take() {
            return Some(notice);
        }
        Some(self.state.closing(close))
    }

    fn on_sent(&mut self, messages: usize, bytes: usize) {
        self.session.sent(messages, bytes);
    }

    fn on_close(&mut self, _info: &ConnInfo, outcome: &Outcome) {
        self.channels.closed(&self.session);
        self.session.ended(outcome);
    }
}

#[cfg(test)]
mod tests;
