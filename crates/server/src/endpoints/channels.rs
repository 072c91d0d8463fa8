//! The connection side of channels (crate::channels): a session's grants, its subscriptions,
//! its channel requests and their replies, the re-check of every subscription on `refresh`, the
//! subscriptions ended by the admin API, and the clean-up when the connection ends.

use std::collections::BTreeSet;

use palisade_token::Claims;
use palisade_transport::{Close, Context};
use serde_json::Value;

use super::session::{Session, Stage};
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

/// The grants the claims carry (`channels.grants_claim`).
fn grants_of<H>(core: &Session<H>, claims: &Claims) -> Grants {
    let name = &core.shared().channel_policy.grants_claim;
    let (grants, skipped) = Grants::from_claim(claims.extra.get(name));
    if !skipped.is_empty() {
        tracing::debug!(conn = %core.peer().conn.id, user_id = %claims.user_id, claim = %name, skipped = ?skipped, "channel grants skipped");
    }
    grants
}

/// Every method takes the connection's core ([`Session`]): its shared state (the hub, the
/// policy, the application) and its peer.
impl ConnChannels {
    /// The session has started with these claims: read its grants.
    pub(super) fn session_started<H>(&mut self, core: &Session<H>, claims: &Claims) {
        self.sub = core.shared().channels.subscriber_id();
        self.grants = grants_of(core, claims);
    }

    /// What the grants (and `channels.public`) say about `right` on `channel`.
    fn granted<H>(&self, core: &Session<H>, channel: &str, right: Right) -> Authorization {
        let user_id = core.peer().session.as_ref().map(|s| s.user_id.as_str()).unwrap_or("");
        let public = right == Right::Subscribe
            && core.shared().channel_policy.public.iter().any(|p| p.matches(channel, user_id));
        if public || self.grants.allows(channel, user_id, right) {
            Ok(())
        } else {
            Err(Denied::new(format!(
                "the token grants no {:?} right on {channel:?}",
                right.as_str()
            )))
        }
    }

    /// The grants' decision, then the application's.
    fn authorize<H: Handler>(
        &self,
        core: &Session<H>,
        channel: &str,
        right: Right,
    ) -> Authorization {
        let grant = self.granted(core, channel, right);
        let Some(session) = &core.peer().session else { return grant };
        match right {
            Right::Subscribe => core.shared().app.authorize_subscribe(session, channel, grant),
            Right::Publish => core.shared().app.authorize_publish(session, channel, grant),
            Right::Presence | Right::History => grant,
        }
    }

    fn refuse<H>(
        core: &Session<H>,
        id: Option<&Value>,
        reason: &'static str,
        detail: &str,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        core.shared().channels.stats.denied(reason);
        tracing::debug!(conn = %core.peer().conn.id, peer = %core.peer().conn.peer, endpoint = core.endpoint(), kind = reason, detail = %detail, "channel request refused");
        ctx.send(channels::error_reply(id, reason, detail))
    }

    /// A channel envelope from an authenticated session. A refusal never closes the connection.
    pub(super) async fn request<H: Handler>(
        &mut self,
        core: &Session<H>,
        req: Result<Request, BadRequest>,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        if core.stage() != Stage::Session {
            return Ok(());
        }
        let req = match req {
            Ok(r) => r,
            Err(bad) => return Self::refuse(core, bad.id.as_ref(), bad.reason, &bad.detail, ctx),
        };
        let hub = core.shared().channels.clone();
        let user_id = core.peer().session.as_ref().map(|s| s.user_id.clone()).unwrap_or_default();
        match req {
            Request::Subscribe { channel, id, since } => {
                if let Err(d) = self.authorize(core, &channel, Right::Subscribe) {
                    return Self::refuse(core, id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let max = core.shared().channel_policy.max_subscriptions;
                if !self.subs.contains(&channel) && self.subs.len() >= max {
                    let detail = format!(
                        "at most {max} subscriptions per session (channels.max_subscriptions_per_session)"
                    );
                    return Self::refuse(core, id.as_ref(), "too_many_subscriptions", &detail, ctx);
                }
                let answer = match hub
                    .subscribe(&channel, self.sub, &user_id, &ctx.handle(), since.as_ref())
                    .await
                {
                    Ok(answer) => answer,
                    Err(e) => return Self::refuse(core, id.as_ref(), "unavailable", &e.0, ctx),
                };
                self.subs.insert(channel.clone());
                ctx.send(channels::subscribed_reply(&channel, id.as_ref(), &answer))
            }
            Request::Unsubscribe { channel, id } => {
                if self.subs.remove(&channel) {
                    hub.unsubscribe(&channel, self.sub);
                }
                ctx.send(channels::unsubscribed_reply(&channel, id.as_ref(), "client"))
            }
            Request::Publish { channel, id, data } => {
                if let Err(d) = self.authorize(core, &channel, Right::Publish) {
                    return Self::refuse(core, id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let max = hub.settings.max_data_bytes;
                if data.get().len() > max {
                    let detail = format!(
                        "data is {} bytes; at most {max} (channels.max_data_bytes, or limits.max_message_bytes when 0)",
                        data.get().len()
                    );
                    return Self::refuse(core, id.as_ref(), "message_too_big", &detail, ctx);
                }
                let offset = match hub.publish(&channel, &data, Some(&user_id)).await {
                    Ok((offset, _)) => offset,
                    Err(e) => return Self::refuse(core, id.as_ref(), "unavailable", &e.0, ctx),
                };
                ctx.send(channels::ok_reply(id.as_ref(), Some(offset)))
            }
            Request::Presence { channel, id } => {
                if let Err(d) = self.authorize(core, &channel, Right::Presence) {
                    return Self::refuse(core, id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let users = match hub.presence(&channel).await {
                    Ok(users) => users,
                    Err(e) => return Self::refuse(core, id.as_ref(), "unavailable", &e.0, ctx),
                };
                ctx.send(channels::presence_reply(&channel, id.as_ref(), &users))
            }
            Request::History { channel, id, limit } => {
                if let Err(d) = self.authorize(core, &channel, Right::History) {
                    return Self::refuse(core, id.as_ref(), "permission_denied", &d.detail, ctx);
                }
                let size = hub.settings.history_size;
                if size == 0 {
                    let detail = "this server keeps no history (channels.history_size = 0)";
                    return Self::refuse(core, id.as_ref(), "unavailable", detail, ctx);
                }
                let (epoch, items) =
                    match hub.history(&channel, limit.unwrap_or(size).min(size)).await {
                        Ok(held) => held,
                        Err(e) => {
                            return Self::refuse(core, id.as_ref(), "unavailable", &e.0, ctx);
                        }
                    };
                ctx.send(channels::history_reply(&channel, id.as_ref(), &epoch, &items))
            }
        }
    }

    /// A refresh was accepted with these claims: re-read the grants and end every subscription
    /// they (or the application) no longer allow.
    pub(super) fn refreshed<H: Handler>(
        &mut self,
        core: &Session<H>,
        claims: &Claims,
        ctx: &mut Context,
    ) -> Result<(), Close> {
        self.grants = grants_of(core, claims);
        let revoked: Vec<String> = self
            .subs
            .iter()
            .filter(|c| self.authorize(core, c, Right::Subscribe).is_err())
            .cloned()
            .collect();
        let hub = &core.shared().channels;
        for channel in revoked {
            self.subs.remove(&channel);
            if !hub.unsubscribe(&channel, self.sub) {
                // Already ended by an admin call, whose `unsubscribed` is on its way.
                continue;
            }
            hub.stats.denied("permission_revoked");
            tracing::info!(conn = %core.peer().conn.id, endpoint = core.endpoint(), channel = %channel, "subscription ended: permission revoked at refresh");
            ctx.send(channels::unsubscribed_reply(&channel, None, "permission_revoked"))?;
        }
        Ok(())
    }

    /// A channel push is being queued: when it is an `unsubscribed` from the hub (an admin call
    /// ended the subscription), forget the subscription, unless the client has subscribed again
    /// since (the hub decides).
    pub(super) fn pushed<H>(&mut self, core: &Session<H>, msg: &palisade_transport::Message) {
        if let Some(channel) = channels::unsubscribed_channel(msg)
            && self.subs.contains(&channel)
            && !core.shared().channels.is_subscribed(&channel, self.sub)
        {
            self.subs.remove(&channel);
        }
    }

    /// The connection has ended: leave every channel.
    pub(super) fn closed<H>(&mut self, core: &Session<H>) {
        for channel in std::mem::take(&mut self.subs) {
            core.shared().channels.unsubscribe(&channel, self.sub);
        }
    }
}
