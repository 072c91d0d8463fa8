//! The node's channels: subscribers, offsets, bounded history and presence; in memory on one
//! node, or shared by every node through the cluster's [`ChannelStore`] (Redis).
//!
//! One lock guards every channel of the node, and a publication is fanned out while it is
//! held, so the offsets each subscriber sees are strictly increasing and a subscription never
//! misses or repeats a publication between its `subscribed` reply (with recovered history) and
//! the live stream. A publication is encoded once; its subscribers share that text
//! ([`Utf8Bytes`]: a reference count, not a copy, per subscriber).
//!
//! In cluster mode the offsets, the history and the presence lists live in Redis, and every
//! publication (this node's too) arrives through [`Hub::deliver`] in offset order. A new
//! subscriber is *pending* while the node asks Redis for the channel's position: what arrives
//! meanwhile is kept for it and delivered after its `subscribed` reply, past the position
//! Redis gave. A gap in the offsets, a new epoch, or a reconnect to Redis after which the
//! channel moved on means this node missed publications: its subscribers of that channel are
//! closed with `insufficient_state` (1012), and resubscribe with `since`, which recovers from
//! Redis's history or says `recovered: false`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use palisade_cluster::ClusterError;
use palisade_cluster::channels::{ChannelSettings, ChannelStore, Envelope, Remote};
use palisade_transport::{ConnHandle, Message, Utf8Bytes};
use rand::RngCore;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::close_cause::CloseCause;
use crate::config::ChannelsConfig;

/// What the hub needs from `[channels]` and `[limits]`.
#[derive(Clone, Debug)]
pub(crate) struct HubSettings {
    pub(crate) history_size: usize,
    pub(crate) history_ttl: Option<Duration>,
    pub(crate) history_max_bytes: usize,
    pub(crate) presence_events: bool,
    /// Largest `data` of a publish, in bytes (`channels.max_data_bytes`, else
    /// `limits.max_message_bytes`).
    pub(crate) max_data_bytes: usize,
}

impl HubSettings {
    pub(crate) fn new(c: &ChannelsConfig, max_message_bytes: usize) -> HubSettings {
        HubSettings {
            history_size: c.history_size,
            history_ttl: (c.history_ttl_secs > 0).then(|| Duration::from_secs(c.history_ttl_secs)),
            history_max_bytes: c.history_max_bytes,
            presence_events: c.presence_events,
            max_data_bytes: match c.max_data_bytes {
                0 => max_message_bytes,
                n => n.min(max_message_bytes),
            },
        }
    }

    /// What the cluster's channel store needs.
    pub(crate) fn store_settings(&self) -> ChannelSettings {
        ChannelSettings { history_size: self.history_size, history_ttl: self.history_ttl }
    }
}

/// Publications a pending subscriber may be kept before it is closed with
/// `insufficient_state` (its Redis round trip took far too long).
const PENDING_MAX: usize = 4096;

/// A held publication: its `publication` envelope as JSON text.
struct Held {
    offset: u64,
    at: Instant,
    json: Utf8Bytes,
}

struct Subscriber {
    user_id: String,
    handle: ConnHandle,
    /// Cluster mode: deliver only offsets past this (its `subscribed` position).
    from: u64,
    /// Cluster mode: waiting for its position from Redis; what arrived meanwhile.
    pending: Option<Vec<(String, u64, Utf8Bytes)>>,
}

struct Channel {
    /// Empty in cluster mode until the first subscriber has its position.
    epoch: String,
    /// The last publication's offset (cluster mode: the last one delivered here).
    offset: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Sessions per user holding a subscription.
    users: BTreeMap<String, usize>,
    /// Contiguous offsets ending at `offset` (when not empty). Memory only.
    history: VecDeque<Held>,
    history_bytes: usize,
}

impl Channel {
    fn new(epoch: String) -> Channel {
        Channel {
            epoch,
            offset: 0,
            subscribers: HashMap::new(),
            users: BTreeMap::new(),
            history: VecDeque::new(),
            history_bytes: 0,
        }
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }

    /// Adds a subscription of `user_id`; true when it is the user's first here.
    fn add_user(&mut self, user_id: &str) -> bool {
        let n = self.users.entry(user_id.to_owned()).or_default();
        *n += 1;
        *n == 1
    }

    /// Removes one subscription of `user_id`; true when it was the user's last here.
    fn remove_user(&mut self, user_id: &str) -> bool {
        match self.users.get_mut(user_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(user_id);
                true
            }
        }
    }

    /// Closes every active subscriber (pending ones are checked against Redis's answer): this
    /// node missed publications of the channel. Returns them (subscriber id, user id).
    fn lose_state(&mut self) -> Vec<(u64, String)> {
        let lost: Vec<u64> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.pending.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(lost.len());
        for id in lost {
            if let Some(s) = self.subscribers.remove(&id) {
                s.handle.close(CloseCause::InsufficientState.close());
                self.remove_user(&s.user_id);
                out.push((id, s.user_id));
            }
        }
        out
    }
}

fn random_epoch() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Inner {
    channels: HashMap<String, Channel>,
    history_bytes: usize,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) subscriptions: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) not_recovered: AtomicU64,
    /// Cluster mode: subscribers closed because this node missed publications.
    pub(crate) state_lost: AtomicU64,
    pub(crate) denials: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub(crate) fn denied(&self, reason: &'static str) {
        *self.denials.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    fn recovery(&self, recovered: bool) {
        let counter = if recovered { &self.recovered } else { &self.not_recovered };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client's position in a channel, from `since`.
#[derive(Clone, Debug)]
pub(crate) struct Position {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

/// The answer to a subscribe.
pub(crate) struct Subscribed {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
    pub(crate) recovered: bool,
    pub(crate) publications: Vec<Utf8Bytes>,
}

/// The cluster could not serve a channel request (Redis unreachable or failing): the client
/// gets an `unavailable` error.
#[derive(Debug)]
pub(crate) struct Unavailable(pub(crate) String);

impl From<ClusterError> for Unavailable {
    fn from(e: ClusterError) -> Unavailable {
        Unavailable(match e {
            ClusterError::Unavailable(why) => format!("the cluster is unavailable: {why}"),
            ClusterError::Command(_) => "the cluster refused the request".to_owned(),
        })
    }
}

/// One row of `GET /channels`.
#[derive(Serialize)]
pub(crate) struct ChannelRow {
    pub(crate) channel: String,
    pub(crate) epoch: String,
    pub(crate) offset: u64,
    pub(crate) subscribers: usize,
    pub(crate) users: usize,
    pub(crate) history: usize,
}

/// One of the busiest channels, for the dashboard feed.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct BusyChannel {
    pub(crate) channel: String,
    pub(crate) subscribers: usize,
    pub(crate) users: usize,
    /// Publications in the channel's current epoch (its offset).
    pub(crate) publications: u64,
}

/// What closing a channel ended.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Subscriptions ended with `channel_closed` (on this node).
    pub(crate) unsubscribed: usize,
    /// Publications of its history dropped (memory; in cluster mode Redis drops them all).
    pub(crate) history_dropped: usize,
}

/// One user of a channel's presence.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceRow {
    pub(crate) user_id: String,
    pub(crate) sessions: usize,
}

/// Cluster mode: the shared store and this node's id (presence members are `<node>|<sub>`).
struct Shared {
    store: Arc<dyn ChannelStore>,
    node: String,
}

/// The channels of this node.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
    pub(crate) settings: HubSettings,
    pub(crate) stats: Stats,
    next_subscriber: AtomicU64,
    cluster: Option<Shared>,
}

#[derive(Serialize)]
struct Publication<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    offset: u64,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Info<'a>>,
}

#[derive(Serialize)]
struct Info<'a> {
    user_id: &'a str,
}

/// The `publication` envelope split around its offset, for the cluster store to fill in.
fn envelope_parts(channel: &str, data: &RawValue, user_id: Option<&str>) -> Envelope {
    const MARK: u64 = u64::MAX;
    let env = Publication {
        kind: "publication",
        channel,
        offset: MARK,
        data,
        info: user_id.map(|user_id| Info { user_id }),
    };
    // Strings and raw JSON always serialise; the mark appears once, as the offset (it is
    // serialised before `data`).
    let json = serde_json::to_string(&env).unwrap_or_default();
    let mark = MARK.to_string();
    let (prefix, suffix) = json.split_once(&mark).unwrap_or((&json, ""));
    Envelope { prefix: prefix.to_owned(), suffix: suffix.to_owned() }
}

impl Hub {
    pub(crate) fn new(settings: HubSettings) -> Hub {
        Hub {
            inner: Mutex::default(),
            settings,
            stats: Stats::default(),
            next_subscriber: AtomicU64::new(1),
            cluster: None,
        }
    }

    /// A hub whose channels are shared through `store` (cluster mode). Route the store's
    /// [`Remote`]s to [`Hub::deliver`].
    pub(crate) fn clustered(
        settings: HubSettings,
        store: Arc<dyn ChannelStore>,
        node: &str,
    ) -> Hub {
        Hub { cluster: Some(Shared { store, node: node.to_owned() }), ..Hub::new(settings) }
    }

    /// Whether channels are shared through the cluster.
    pub(crate) fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh subscriber id for a connection.
    pub(crate) fn subscriber_id(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    fn member(node: &str, sub: u64) -> String {
        format!("{node}|{sub}")
    }

    /// Subscribes (or, when already subscribed, only answers again), recovering from `since`.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        sub: u64,
        user_id: &str,
        handle: &ConnHandle,
        since: Option<&Position>,
    ) -> Result<Subscribed, Unavailable> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.subscribe_here(channel, sub, user_id, handle, since));
        };
        // Pending from here: what arrives while Redis answers is kept for this subscriber.
        let new = {
            let mut inner = self.lock();
            let ch = inner
                .channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel::new(String::new()));
            match ch.subscribers.entry(sub) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Subscriber {
                        user_id: user_id.to_owned(),
                        handle: handle.clone(),
                        from: 0,
                        pending: Some(Vec::new()),
                    });
                    true
                }
            }
        };
        let since_pair = since.map(|p| (p.epoch.clone(), p.offset));
        let stream = match cluster.store.stream(channel, since_pair).await {
            Ok(stream) => stream,
            Err(e) => {
                if new {
                    self.drop_pending(channel, sub);
                }
                return Err(e.into());
            }
        };
        let recovered = stream.recovered.is_some();
        if since.is_some() {
            self.stats.recovery(recovered);
        }
        let answer = Subscribed {
            epoch: stream.epoch.clone(),
            offset: stream.offset,
            recovered,
            publications: stream
                .recovered
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
        };
        if !new {
            // Already subscribed: the live stream goes on; skip what the answer now covers.
            let mut inner = self.lock();
            if let Some(s) =
                inner.channels.get_mut(channel).and_then(|c| c.subscribers.get_mut(&sub))
            {
                s.from = s.from.max(stream.offset);
            }
            return Ok(answer);
        }
        let first = {
            let mut inner = self.lock();
            let Some(ch) = inner.channels.get_mut(channel) else {
                // Closed while Redis answered: the `unsubscribed` notice is on its way.
                return Ok(answer);
            };
            let Some(mut s) = ch.subscribers.remove(&sub) else { return Ok(answer) };
            // Whether this subscriber sets the channel's position here: it is the first, or
            // Redis moved to a new epoch this node has not seen (its subscribers missed it).
            let sets_position = ch.epoch != stream.epoch;
            if sets_position {
                if !ch.epoch.is_empty() {
                    self.lose_state(ch, channel);
                }
                ch.epoch = stream.epoch.clone();
                ch.offset = stream.offset;
            }
            // Queued after the `subscribed` reply the caller sends at once (a connection sends
            // its replies before its pushes): what arrived while Redis answered, past the
            // position it gave.
            let mut last = stream.offset;
            let mut lost = false;
            for (epoch, offset, json) in s.pending.take().unwrap_or_default() {
                if epoch != stream.epoch || offset > last + 1 {
                    lost = true;
                    break;
                }
                if offset == last + 1 {
                    let _ = s.handle.send_as(super::PUBLICATION, Message::Text(json));
                    last = offset;
                }
            }
            if lost {
                s.handle.close(CloseCause::InsufficientState.close());
                self.stats.state_lost.fetch_add(1, Ordering::Relaxed);
                if ch.is_idle() {
                    inner.channels.remove(channel);
                }
                return Ok(answer);
            }
            s.from = last;
            if sets_position {
                ch.offset = last;
            }
            // Otherwise the channel's other subscribers go on from where they are: what this one
            // already has (up to `from`) is skipped for it alone.
            ch.subscribers.insert(sub, s);
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            ch.add_user(user_id);
            true
        };
        if first {
            self.join(cluster, channel, sub, user_id).await;
        }
        Ok(answer)
    }

    /// Cluster mode: adds the subscription to the presence list, and says `join` when it is
    /// the user's first anywhere. A failure is logged; the next heartbeat adds it.
    async fn join(&self, cluster: &Shared, channel: &str, sub: u64, user_id: &str) {
        let member = Self::member(&cluster.node, sub);
        match cluster.store.join(channel, user_id, &member).await {
            Ok(true) if self.settings.presence_events => {
                let data = presence_data("join", user_id);
                let env = envelope_parts(channel, &data, Some(user_id));
                if cluster.store.publish(channel, env).await.is_ok() {
                    self.stats.publications.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(channel, error = %e, "channel presence not recorded; the heartbeat will")
            }
        }
    }

    /// This node missed publications of `channel`: its subscribers here are closed with
    /// `insufficient_state` and leave the presence list. Returns how many.
    fn lose_state(&self, ch: &mut Channel, channel: &str) -> usize {
        let lost = ch.lose_state();
        self.stats.state_lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
        if let Some(cluster) = &self.cluster {
            for (sub, user_id) in &lost {
                self.leave(cluster, channel, *sub, user_id);
            }
        }
        lost.len()
    }

    /// Forgets a pending subscriber whose position Redis did not give.
    fn drop_pending(&self, channel: &str, sub: u64) {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.get_mut(channel) {
            if ch.subscribers.get(&sub).is_some_and(|s| s.pending.is_some()) {
                ch.subscribers.remove(&sub);
            }
            if ch.is_idle() {
                inner.channels.remove(channel);
            }
        }
    }

    fn subscribe_here(
        &self,
        channel: &str,
        sub: u64,
        user_id: &str,
        handle: &ConnHandle,
        since: Option<&Position>,
    ) -> Subscribed {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let ch = inner
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel::new(random_epoch()));
        inner.history_bytes -= expire(ch, self.settings.history_ttl, Instant::now());
        let (recovered, publications) = match since {
            None => (false, Vec::new()),
            Some(p) if p.epoch != ch.epoch || p.offset > ch.offset => (false, Vec::new()),
            Some(p) if p.offset == ch.offset => (true, Vec::new()),
            Some(p) => match ch.history.front() {
                Some(first) if first.offset <= p.offset + 1 => {
                    let list =
                        ch.history.iter().filter(|h| h.offset > p.offset).map(|h| h.json.clone());
                    (true, list.collect())
                }
                _ => (false, Vec::new()),
            },
        };
        if since.is_some() {
            self.stats.recovery(recovered);
        }
        let answer =
            Subscribed { epoch: ch.epoch.clone(), offset: ch.offset, recovered, publications };
        if let std::collections::hash_map::Entry::Vacant(slot) = ch.subscribers.entry(sub) {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            slot.insert(Subscriber {
                user_id: user_id.to_owned(),
                handle: handle.clone(),
                from: 0,
                pending: None,
            });
            if ch.add_user(user_id) && self.settings.presence_events {
                let data = presence_data("join", user_id);
                self.publish_locked(inner, channel, &data, Some(user_id));
            }
        }
        answer
    }

    /// Ends one subscription; false when there was none.
    pub(crate) fn unsubscribe(&self, channel: &str, sub: u64) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(ch) = inner.channels.get_mut(channel) else { return false };
        let Some(s) = ch.subscribers.remove(&sub) else { return false };
        let counted = s.pending.is_none();
        let last = counted && ch.remove_user(&s.user_id);
        if let Some(cluster) = &self.cluster {
            if counted {
                self.leave(cluster, channel, sub, &s.user_id);
            }
        } else if last && self.settings.presence_events {
            let data = presence_data("leave", &s.user_id);
            self.publish_locked(inner, channel, &data, Some(&s.user_id));
        }
        if inner.channels.get(channel).is_some_and(Channel::is_idle) {
            inner.channels.remove(channel);
        }
        true
    }

    /// Cluster mode: removes the subscription from the presence list in the background, and
    /// says `leave` when it was the user's last anywhere.
    fn leave(&self, cluster: &Shared, channel: &str, sub: u64, user_id: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let store = cluster.store.clone();
        let member = Self::member(&cluster.node, sub);
        let (channel, user_id) = (channel.to_owned(), user_id.to_owned());
        let events = self.settings.presence_events;
        rt.spawn(async move {
            if let Ok(true) = store.leave(&channel, &user_id, &member).await
                && events
            {
                let data = presence_data("leave", &user_id);
                let _ =
                    store.publish(&channel, envelope_parts(&channel, &data, Some(&user_id))).await;
            }
        });
    }

    /// Publishes `data` (raw JSON); returns the offset and how many subscribers of this node
    /// got it queued (`None` in cluster mode: it reaches every node through Redis).
    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        user_id: Option<&str>,
    ) -> Result<(u64, Option<usize>), Unavailable> {
        match &self.cluster {
            Some(cluster) => {
                let env = envelope_parts(channel, data, user_id);
                let published = cluster.store.publish(channel, env).await?;
                self.stats.publications.fetch_add(1, Ordering::Relaxed);
                Ok((published.offset, None))
            }
            None => {
                let mut inner = self.lock();
                let (offset, n) = self.publish_locked(&mut inner, channel, data, user_id);
                Ok((offset, Some(n)))
            }
        }
    }

    fn publish_locked(
        &self,
        inner: &mut Inner,
        channel: &str,
        data: &RawValue,
        user_id: Option<&str>,
    ) -> (u64, usize) {
        let ch = inner
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel::new(random_epoch()));
        inner.history_bytes -= expire(ch, self.settings.history_ttl, Instant::now());
        ch.offset += 1;
        let offset = ch.offset;
        let env = Publication {
            kind: "publication",
            channel,
            offset,
            data,
            info: user_id.map(|user_id| Info { user_id }),
        };
        // Strings and raw JSON always serialise.
        let json: Utf8Bytes = serde_json::to_string(&env).unwrap_or_default().into();
        self.stats.publications.fetch_add(1, Ordering::Relaxed);
        // Encoded once; every subscriber shares the same bytes.
        let mut delivered = 0;
        for s in ch.subscribers.values() {
            if s.handle.send_as(super::PUBLICATION, Message::Text(json.clone())).is_ok() {
                delivered += 1;
            }
        }
        // History: keep offsets contiguous; when the node cap leaves no room, drop this channel's
        // history so a recovery from before this offset reports recovered: false.
        if self.settings.history_size > 0 {
            let size = json.len();
            ch.history.push_back(Held { offset, at: Instant::now(), json });
            ch.history_bytes += size;
            inner.history_bytes += size;
            while ch.history.len() > self.settings.history_size
                || (inner.history_bytes > self.settings.history_max_bytes && !ch.history.is_empty())
            {
                if let Some(old) = ch.history.pop_front() {
                    ch.history_bytes -= old.json.len();
                    inner.history_bytes -= old.json.len();
                }
            }
        }
        if ch.is_idle() {
            inner.channels.remove(channel);
        }
        (offset, delivered)
    }

    /// Cluster mode: what the store's reader hands over, in order. Never blocks on the network.
    pub(crate) fn deliver(self: &Arc<Self>, remote: Remote) {
        match remote {
            Remote::Publication { channel, epoch, offset, json } => {
                self.deliver_publication(&channel, epoch, offset, json.into());
            }
            Remote::Closed { channel } => {
                let n = self.close_here(&channel).map_or(0, |c| c.unsubscribed);
                if n > 0 {
                    tracing::info!(channel = %channel, unsubscribed = n, "channel closed through another node");
                }
            }
            Remote::Unsubscribed { channel, user_id } => {
                let n = self.unsubscribe_user_here(&channel, &user_id, "permission_revoked");
                for _ in 0..n {
                    self.stats.denied("permission_revoked");
                }
            }
            Remote::Resync => self.resync(),
        }
    }

    fn deliver_publication(&self, channel: &str, epoch: String, offset: u64, json: Utf8Bytes) {
        let mut inner = self.lock();
        let Some(ch) = inner.channels.get_mut(channel) else { return };
        // An empty epoch: only pending subscribers so far, and they set the position.
        let known = !ch.epoch.is_empty();
        if known && (epoch != ch.epoch || offset > ch.offset + 1) {
            // A new epoch (Redis lost the channel) or a gap (a message was lost on the way):
            // the active subscribers go; pending ones compare with Redis's answer.
            let lost = self.lose_state(ch, channel);
            tracing::warn!(channel, epoch = %epoch, offset, expected = ch.offset + 1, subscribers = lost, "channel publications missed on this node; its subscribers resubscribe");
            ch.epoch.clone_from(&epoch);
            ch.offset = offset;
        }
        let live = known && offset == ch.offset + 1;
        if live {
            ch.offset = offset;
        }
        // One pass: pending subscribers keep it, active ones get it unless they have it.
        for s in ch.subscribers.values_mut() {
            match &mut s.pending {
                Some(kept) if kept.len() < PENDING_MAX => {
                    kept.push((epoch.clone(), offset, json.clone()));
                }
                Some(_) => s.handle.close(CloseCause::InsufficientState.close()),
                None if live && offset > s.from => {
                    s.from = offset;
                    let _ = s.handle.send_as(super::PUBLICATION, Message::Text(json.clone()));
                }
                None => {}
            }
        }
        if ch.subscribers.is_empty() {
            inner.channels.remove(channel);
        }
    }

    /// After Redis was out of reach: every channel with subscribers here whose position moved
    /// on in Redis missed publications on this node.
    fn resync(self: &Arc<Self>) {
        let Some(cluster) = &self.cluster else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let known: Vec<(String, String, u64)> = self
            .lock()
            .channels
            .iter()
            .filter(|(_, ch)| !ch.epoch.is_empty())
            .map(|(name, ch)| (name.clone(), ch.epoch.clone(), ch.offset))
            .collect();
        if known.is_empty() {
            return;
        }
        let (hub, store) = (self.clone(), cluster.store.clone());
        rt.spawn(async move {
            for (channel, epoch, offset) in known {
                let Ok(stream) = store.stream(&channel, None).await else { continue };
                if stream.epoch == epoch && stream.offset <= offset {
                    continue;
                }
                // Publications made just before the answer may still be on their way here.
                let behind = |hub: &Hub| {
                    hub.lock().channels.get(&channel).is_some_and(|ch| {
                        ch.epoch == epoch && (stream.epoch != epoch || ch.offset < stream.offset)
                    })
                };
                if !behind(&hub) {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if !behind(&hub) {
                    continue;
                }
                let mut inner = hub.lock();
                if let Some(ch) = inner.channels.get_mut(&channel)
                    && ch.epoch == epoch
                {
                    let lost = hub.lose_state(ch, &channel);
                    tracing::warn!(channel = %channel, subscribers = lost, "channel moved on while redis was out of reach; its subscribers resubscribe");
                    ch.epoch.clear();
                    ch.offset = 0;
                    if ch.subscribers.is_empty() {
                        inner.channels.remove(&channel);
                    }
                }
            }
        });
    }

    /// Cluster mode: this node's subscriptions (channel, user id, presence member), for the
    /// presence heartbeat.
    pub(crate) fn presence_entries(&self) -> Vec<(String, String, String)> {
        let Some(cluster) = &self.cluster else { return Vec::new() };
        let inner = self.lock();
        let mut out = Vec::new();
        for (name, ch) in &inner.channels {
            for (sub, s) in &ch.subscribers {
                if s.pending.is_none() {
                    out.push((name.clone(), s.user_id.clone(), Self::member(&cluster.node, *sub)));
                }
            }
        }
        out
    }

    /// Keeps this node's subscriptions in the cluster's presence lists (cluster mode).
    pub(crate) async fn touch_presence(&self) -> Result<(), Unavailable> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        cluster.store.touch(self.presence_entries()).await.map_err(Into::into)
    }

    /// The last `limit` held publications of a channel, oldest first, and its epoch.
    pub(crate) async fn history(
        &self,
        channel: &str,
        limit: usize,
    ) -> Result<(String, Vec<Utf8Bytes>), Unavailable> {
        if let Some(cluster) = &self.cluster {
            let (epoch, items) = cluster.store.history(channel, limit).await?;
            return Ok((epoch, items.into_iter().map(Into::into).collect()));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(ch) = inner.channels.get_mut(channel) else {
            // Nothing held; the epoch of a channel created now and gone at once.
            return Ok((random_epoch(), Vec::new()));
        };
        inner.history_bytes -= expire(ch, self.settings.history_ttl, Instant::now());
        let skip = ch.history.len().saturating_sub(limit);
        let list = ch.history.iter().skip(skip).map(|h| h.json.clone()).collect();
        let epoch = ch.epoch.clone();
        if ch.is_idle() {
            inner.channels.remove(channel);
        }
        Ok((epoch, list))
    }

    /// Users subscribed to a channel (on every node in cluster mode), with their session
    /// counts, by user id.
    pub(crate) async fn presence(&self, channel: &str) -> Result<Vec<PresenceRow>, Unavailable> {
        if let Some(cluster) = &self.cluster {
            let rows = cluster.store.presence(channel).await?;
            return Ok(rows
                .into_iter()
                .map(|(user_id, sessions)| PresenceRow { user_id, sessions })
                .collect());
        }
        let inner = self.lock();
        Ok(inner
            .channels
            .get(channel)
            .map(|ch| {
                ch.users
                    .iter()
                    .map(|(u, n)| PresenceRow { user_id: u.clone(), sessions: *n })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Active channels, by name.
    pub(crate) fn list(&self) -> Vec<ChannelRow> {
        let inner = self.lock();
        let mut rows: Vec<ChannelRow> = inner
            .channels
            .iter()
            .map(|(name, ch)| ChannelRow {
                channel: name.clone(),
                epoch: ch.epoch.clone(),
                offset: ch.offset,
                subscribers: ch.subscribers.len(),
                users: ch.users.len(),
                history: ch.history.len(),
            })
            .collect();
        rows.sort_by(|a, b| a.channel.cmp(&b.channel));
        rows
    }

    /// The `limit` channels with the most subscribers (then the most publications, then by
    /// name), and how many channels are active.
    pub(crate) fn busiest(&self, limit: usize) -> (Vec<BusyChannel>, usize) {
        let inner = self.lock();
        let mut rows: Vec<BusyChannel> = inner
            .channels
            .iter()
            .map(|(name, ch)| BusyChannel {
                channel: name.clone(),
                subscribers: ch.subscribers.len(),
                users: ch.users.len(),
                publications: ch.offset,
            })
            .collect();
        let total = rows.len();
        let order = |a: &BusyChannel, b: &BusyChannel| {
            b.subscribers
                .cmp(&a.subscribers)
                .then(b.publications.cmp(&a.publications))
                .then_with(|| a.channel.cmp(&b.channel))
        };
        if rows.len() > limit && limit > 0 {
            rows.select_nth_unstable_by(limit - 1, order);
        }
        rows.truncate(limit);
        rows.sort_by(order);
        (rows, total)
    }

    /// Whether subscriber `sub` holds a subscription to `channel`.
    pub(crate) fn is_subscribed(&self, channel: &str, sub: u64) -> bool {
        self.lock().channels.get(channel).is_some_and(|ch| ch.subscribers.contains_key(&sub))
    }

    /// Ends every subscription of `user_id` to `channel` (on every node in cluster mode): each
    /// session gets `unsubscribed` with `permission_revoked` and no further publication.
    /// Returns how many ended on this node.
    pub(crate) async fn unsubscribe_user(
        &self,
        channel: &str,
        user_id: &str,
    ) -> Result<usize, Unavailable> {
        if let Some(cluster) = &self.cluster {
            // Every node ends its own, this one included (it finds none left then).
            cluster.store.unsubscribe_user(channel, user_id).await?;
        }
        Ok(self.unsubscribe_user_here(channel, user_id, "permission_revoked"))
    }

    /// [`Hub::unsubscribe_user`] on this node.
    fn unsubscribe_user_here(&self, channel: &str, user_id: &str, reason: &str) -> usize {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(ch) = inner.channels.get_mut(channel) else { return 0 };
        let subs: Vec<u64> = ch
            .subscribers
            .iter()
            .filter(|(_, s)| s.user_id == user_id)
            .map(|(id, _)| *id)
            .collect();
        if subs.is_empty() {
            return 0;
        }
        let notice: Utf8Bytes = super::unsubscribed_text(channel, None, reason).into();
        for id in &subs {
            if let Some(s) = ch.subscribers.remove(id) {
                let _ = s.handle.send_as(super::UNSUBSCRIBED, Message::Text(notice.clone()));
                if let Some(cluster) = &self.cluster
                    && s.pending.is_none()
                {
                    self.leave(cluster, channel, *id, user_id);
                }
            }
        }
        ch.users.remove(user_id);
        if self.cluster.is_none() && self.settings.presence_events {
            let data = presence_data("leave", user_id);
            self.publish_locked(inner, channel, &data, Some(user_id));
        }
        if inner.channels.get(channel).is_some_and(Channel::is_idle) {
            inner.channels.remove(channel);
        }
        subs.len()
    }

    /// Closes a channel (on every node in cluster mode): every subscription ends with
    /// `channel_closed` and its history is dropped, so the channel starts a new epoch when next
    /// used. `None` when it was not active (memory; in cluster mode other nodes may hold it, so
    /// the counts are this node's).
    pub(crate) async fn close(&self, channel: &str) -> Result<Option<Closed>, Unavailable> {
        match &self.cluster {
            Some(cluster) => {
                cluster.store.close(channel).await?;
                let here = self.close_here(channel);
                Ok(Some(here.unwrap_or(Closed { unsubscribed: 0, history_dropped: 0 })))
            }
            None => Ok(self.close_here(channel)),
        }
    }

    /// [`Hub::close`] on this node.
    fn close_here(&self, channel: &str) -> Option<Closed> {
        let mut inner = self.lock();
        let ch = inner.channels.remove(channel)?;
        inner.history_bytes -= ch.history_bytes;
        let notice: Utf8Bytes = super::unsubscribed_text(channel, None, "channel_closed").into();
        for (id, s) in &ch.subscribers {
            let _ = s.handle.send_as(super::UNSUBSCRIBED, Message::Text(notice.clone()));
            if let Some(cluster) = &self.cluster
                && s.pending.is_none()
            {
                self.leave(cluster, channel, *id, &s.user_id);
            }
        }
        Some(Closed { unsubscribed: ch.subscribers.len(), history_dropped: ch.history.len() })
    }

    /// Drops every publication older than `channels.history_ttl_secs` at `now`, in every
    /// channel, and forgets channels left with neither subscribers nor history. Returns the
    /// bytes freed. The work is one look at each channel plus one per publication dropped.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let Some(ttl) = self.settings.history_ttl else { return 0 };
        let mut inner = self.lock();
        let mut freed = 0;
        inner.channels.retain(|_, ch| {
            freed += expire(ch, Some(ttl), now);
            !ch.is_idle()
        });
        inner.history_bytes -= freed;
        freed
    }

    /// Channels and subscriptions, for the gauges.
    pub(crate) fn totals(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let subs = inner.channels.values().map(|c| c.subscribers.len()).sum();
        (inner.channels.len(), subs, inner.history_bytes)
    }
}

/// Drops a channel's publications older than the TTL at `now`; returns the bytes freed.
fn expire(ch: &mut Channel, ttl: Option<Duration>, now: Instant) -> usize {
    let Some(ttl) = ttl else { return 0 };
    let mut freed = 0;
    while ch.history.front().is_some_and(|h| now.saturating_duration_since(h.at) > ttl) {
        if let Some(old) = ch.history.pop_front() {
            freed += old.json.len();
        }
    }
    ch.history_bytes -= freed;
    freed
}

fn presence_data(event: &str, user_id: &str) -> Box<RawValue> {
    let text = serde_json::json!({ "presence": event, "user_id": user_id }).to_string();
    RawValue::from_string(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(history_size: usize, ttl_secs: u64) -> Hub {
        let config = ChannelsConfig {
            history_size,
            history_ttl_secs: ttl_secs,
            ..ChannelsConfig::default()
        };
        Hub::new(HubSettings::new(&config, 64 * 1024))
    }

    fn data(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("JSON")
    }

    #[tokio::test]
    async fn the_sweep_drops_expired_history_of_idle_channels_and_forgets_them() {
        let hub = hub(10, 60);
        hub.publish("idle", &data("1"), None).await.unwrap();
        let epoch = hub.history("idle", 10).await.unwrap().0;
        hub.publish("idle", &data("2"), None).await.unwrap();
        hub.publish("other", &data("\"x\""), None).await.unwrap();
        let (channels, _, bytes) = hub.totals();
        assert_eq!(channels, 2);
        assert!(bytes > 0);
        // Before the TTL nothing goes.
        assert_eq!(hub.sweep(Instant::now() + Duration::from_secs(30)), 0);
        assert_eq!(hub.list().iter().map(|r| r.history).collect::<Vec<_>>(), [2, 1]);
        // After it, everything held goes, and with it the channels, so memory is returned
        // without the channels being used again.
        let freed = hub.sweep(Instant::now() + Duration::from_secs(61));
        assert_eq!(freed, bytes);
        assert_eq!(hub.totals(), (0, 0, 0));
        assert!(hub.list().is_empty());
        // Used again: a new epoch, offsets from 1.
        let (offset, _) = hub.publish("idle", &data("3"), None).await.unwrap();
        assert_eq!(offset, 1);
        assert_ne!(hub.history("idle", 10).await.unwrap().0, epoch);
    }

    #[tokio::test]
    async fn the_sweep_keeps_what_is_newer_than_the_ttl_and_does_nothing_without_one() {
        let hub = hub(10, 60);
        hub.publish("a", &data("1"), None).await.unwrap();
        let later = Instant::now() + Duration::from_secs(61);
        // Published "later" by the clock the sweep is given: only the first is expired.
        {
            let mut inner = hub.lock();
            let ch = inner.channels.get_mut("a").expect("channel");
            ch.history.push_back(Held { offset: 2, at: later, json: "{}".into() });
            ch.history_bytes += 2;
            ch.offset = 2;
            inner.history_bytes += 2;
        }
        hub.sweep(later + Duration::from_secs(1));
        let rows = hub.list();
        assert_eq!((rows.len(), rows[0].history), (1, 1));
        assert_eq!(hub.totals().2, 2);

        let forever = self::hub(10, 0);
        forever.publish("a", &data("1"), None).await.unwrap();
        assert_eq!(forever.sweep(Instant::now() + Duration::from_secs(1_000_000)), 0);
        assert_eq!(forever.list()[0].history, 1);
    }

    #[tokio::test]
    async fn closing_a_channel_drops_its_history_and_its_epoch() {
        let hub = hub(10, 0);
        hub.publish("c", &data("1"), None).await.unwrap();
        hub.publish("c", &data("2"), None).await.unwrap();
        let epoch = hub.list()[0].epoch.clone();
        assert_eq!(
            hub.close("c").await.unwrap(),
            Some(Closed { unsubscribed: 0, history_dropped: 2 })
        );
        assert_eq!(hub.totals(), (0, 0, 0));
        assert_eq!(hub.close("c").await.unwrap(), None);
        assert_eq!(hub.publish("c", &data("3"), None).await.unwrap().0, 1);
        assert_ne!(hub.list()[0].epoch, epoch);
        assert_eq!(hub.unsubscribe_user("c", "42").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_busiest_channels_are_ordered_and_capped() {
        let hub = hub(10, 0);
        for (name, n) in [("a", 1), ("b", 3), ("c", 2), ("d", 3)] {
            for _ in 0..n {
                hub.publish(name, &data("0"), None).await.unwrap();
            }
        }
        let (rows, total) = hub.busiest(3);
        assert_eq!(total, 4);
        let names: Vec<(&str, u64)> =
            rows.iter().map(|r| (r.channel.as_str(), r.publications)).collect();
        assert_eq!(names, [("b", 3), ("d", 3), ("c", 2)]);
        assert_eq!(hub.busiest(0).0, []);
        assert_eq!(hub.busiest(10).0.len(), 4);
    }
}
