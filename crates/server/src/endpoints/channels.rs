//! The connection side of channels (crate::channels): a session's grants, its subscriptions,
//! its channel requests and their replies, the re-check of every subscription on `refresh`, the
//! subscriptions ended by the admin API, and the clean-up when the connection ends.

use std::collections::BTreeSet;

use palisade_token::Claims;
use palisade_transport::{Close, Context};
use serde_json::Value;

use super::{Auth, Conn};
use crate::app::Handler;
use crate::channels::{self, Authorization, BadRequest, Denied, Grants, Request, Right};

/// One connection's channel state.
#[derive(Default)]
pub(crate) struct ConnChannels {
    /// This connection's id in every channel it subscribes to (0 before its session).
    sub: u64,
    grants: Grants,
    subs: BTreeSet<String>,
}

impl<H: Handler> Conn<H> {
    /// The session has started with these claims: read its grants.
    pub(super) fn channels_session_started(&mut self, claims: &Claims) {
        self.channels.sub = self.state.channels.subscriber_id();
        self.channels.grants = self.grants_of(claims);
    }

    fn grants_of(&self, claims: &Claims) -> Grants {
        let name = &self.state.channel_policy.grants_claim;
        let (grants, skipped) = Grants::from_claim(claims.extra.get(name));
        if !skipped.is_empty() {
            tracing::debug!(conn = %self.peer.conn.id, user_id = %claims.user_id, claim = %name, skipped = ?skipped, "channel grants skipped");
        }
        grants
    }

    /// What the grants (and `channels.public`) say about `right` on `channel`.
    fn granted(&self, channel: &str, right: Right) -> Authorization {
        let user_id = self.peer.session.as_ref().map(|s| s.user_id.as_str()).unwrap_or("");
        let public = right == Right::Subscribe
            && self.state.channel_policy.public.iter().any(|p| p.matches(channel, user_id));
        if public || self.channels.grants.allows(channel, user_id, right) {
            Ok(())
        } else {
            Err(Denied::new(format!(
                "the token grants no {:?} right on {channel:?}",
                right.as_str()
            )))
        }
    }

    /// The grants' decision, then the application's.
    fn authorize(&self, channel: &str, right: Right) -> Authorization {
        let grant = self.granted(channel, right);
        let Some(session) = &self.peer.session else { return grant };
        match right {
            Right::Subscribe => self.state.app.authorize_subscribe(session, channel, grant),
            Right::Publish => self.state.app.authorize_publish(session, channel, grant),
            Right::Presence | Right::History => grant,
        }
    }

    fn refuse(
        &self,
        id: Option<&Value>,
        reason: &'static str,
        detail: &str,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        self.state.channels.stats.denied(reason);
        tracing::debug!(conn = %self.peer.conn.id, peer = %self.peer.conn.peer, endpoint = self.kind.name(), kind = reason, detail = %detail, "channel request refused");
        ctx.send(channels::error_reply(id, reason, detail))
    }

    /// A channel envelope from an authenticated session. A refusal never closes the connection.
    pub(super) fn channel_request(
        &mut self,
        req: Result<Request, BadRequest>,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        if !matches!(self.auth, Auth::Session { .. }) {
            return Ok(());
        }
        let req = match req {
            Ok(r) => r,
            Err(bad) => return self.refuse(bad.id.as_ref(), bad.reason, &bad.detail, ctx),
        };
        let hub = self.state.channels.clone();
        let user_id = self.peer.session.as_ref().map(|s| s.user_id.clone()).unwrap_or_default();
        match req {
            Request::Subscribe { channel, id, since } => {
                if let Err(d) = self.authorize(&channel, Right::Subscribe) {
                    return self.refuse(id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let max = self.state.channel_policy.max_subscriptions;
                if !self.channels.subs.contains(&channel) && self.channels.subs.len() >= max {
                    let detail = format!(
                        "at most {max} subscriptions per session (channels.max_subscriptions_per_session)"
                    );
                    return self.refuse(id.as_ref(), "too_many_subscriptions", &detail, ctx);
                }
                let answer = hub.subscribe(
                    &channel,
                    self.channels.sub,
                    &user_id,
                    &ctx.handle(),
                    since.as_ref(),
                );
                self.channels.subs.insert(channel.clone());
                ctx.send(channels::subscribed_reply(&channel, id.as_ref(), &answer))
            }
            Request::Unsubscribe { channel, id } => {
                if self.channels.subs.remove(&channel) {
                    hub.unsubscribe(&channel, self.channels.sub);
                }
                ctx.send(channels::unsubscribed_reply(&channel, id.as_ref(), "client"))
            }
            Request::Publish { channel, id, data } => {
                if let Err(d) = self.authorize(&channel, Right::Publish) {
                    return self.refuse(id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let max = hub.settings.max_data_bytes;
                if data.get().len() > max {
                    let detail = format!("data is {} bytes; at most {max}", data.get().len());
                    return self.refuse(id.as_ref(), "message_too_big", &detail, ctx);
                }
                let (offset, _) = hub.publish(&channel, &data, Some(&user_id));
                ctx.send(channels::ok_reply(id.as_ref(), Some(offset)))
            }
            Request::Presence { channel, id } => {
                if let Err(d) = self.authorize(&channel, Right::Presence) {
                    return self.refuse(id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let users = hub.presence(&channel);
                ctx.send(channels::presence_reply(&channel, id.as_ref(), &users))
            }
            Request::History { channel, id, limit } => {
                if let Err(d) = self.authorize(&channel, Right::History) {
                    return self.refuse(id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let size = hub.settings.history_size;
                if size == 0 {
                    let detail = "this server keeps no history (channels.history_size = 0)";
                    return self.refuse(id.as_ref(), "unavailable", detail, ctx);
                }
                let (epoch, items) = hub.history(&channel, limit.unwrap_or(size).min(size));
                ctx.send(channels::history_reply(&channel, id.as_ref(), &epoch, &items))
            }
        }
    }

    /// A refresh was accepted with these claims: re-read the grants and end every subscription
    /// they (or the application) no longer allow.
    pub(super) fn channels_refreshed(
        &mut self,
        claims: &Claims,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        self.channels.grants = self.grants_of(claims);
        let revoked: Vec<String> = self
            .channels
            .subs
            .iter()
            .filter(|c| self.authorize(c, Right::Subscribe).is_err())
            .cloned()
            .collect();
        for channel in revoked {
            self.channels.subs.remove(&channel);
            if !self.state.channels.unsubscribe(&channel, self.channels.sub) {
                // Already ended by an admin call, whose `unsubscribed` is on its way.
                continue;
            }
            self.state.channels.stats.denied("permission_revoked");
            tracing::info!(conn = %self.peer.conn.id, endpoint = self.kind.name(), channel = %channel, "subscription ended: permission revoked at refresh");
            ctx.send(channels::unsubscribed_reply(&channel, None, "permission_revoked"))?;
        }
        Ok(())
    }

    /// A channel push is being queued: when it is an `unsubscribed` from the hub (an admin call
    /// ended the subscription), forget the subscription, unless the client has subscribed again
    /// since (the hub decides).
    pub(super) fn channels_pushed(&mut self, msg: &palisade_transport::Message) {
        if let Some(channel) = channels::unsubscribed_channel(msg)
            && self.channels.subs.contains(&channel)
            && !self.state.channels.is_subscribed(&channel, self.channels.sub)
        {
            self.channels.subs.remove(&channel);
        }
    }

    /// The connection has ended: leave every channel.
    pub(super) fn channels_closed(&mut self) {
        for channel in std::mem::take(&mut self.channels.subs) {
            self.state.channels.unsubscribe(&channel, self.channels.sub);
        }
    }
}
