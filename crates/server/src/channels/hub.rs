//! The node's channels, in memory: subscribers, offsets, bounded history and presence.
//!
//! One lock guards every channel, and a publication is fanned out while it is held, so the
//! offsets each subscriber sees are strictly increasing and a subscription never misses or
//! repeats a publication between its `subscribed` reply (with recovered history) and the live
//! stream. The publication is serialised once; every subscriber gets a clone of that text (the
//! transport's `Message::Text` is a `String`, so a clone is one copy, not a re-encoding).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use palisade_transport::{ConnHandle, Message};
use rand::RngCore;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::ChannelsConfig;

/// What the hub needs from `[channels]` and `[limits]`.
#[derive(Clone, Debug)]
pub(crate) struct HubSettings {
    pub(crate) history_size: usize,
    pub(crate) history_ttl: Option<Duration>,
    pub(crate) history_max_bytes: usize,
    pub(crate) presence_events: bool,
    /// Largest `data` of a publish, in bytes (`limits.max_message_bytes`).
    pub(crate) max_data_bytes: usize,
}

impl HubSettings {
    pub(crate) fn new(c: &ChannelsConfig, max_message_bytes: usize) -> HubSettings {
        HubSettings {
            history_size: c.history_size,
            history_ttl: (c.history_ttl_secs > 0).then(|| Duration::from_secs(c.history_ttl_secs)),
            history_max_bytes: c.history_max_bytes,
            presence_events: c.presence_events,
            max_data_bytes: max_message_bytes,
        }
    }
}

/// A held publication: its `publication` envelope as JSON text.
struct Held {
    offset: u64,
    at: Instant,
    json: Arc<str>,
}

struct Subscriber {
    user_id: String,
    handle: ConnHandle,
}

struct Channel {
    epoch: String,
    offset: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Sessions per user holding a subscription.
    users: BTreeMap<String, usize>,
    /// Contiguous offsets ending at `offset` (when not empty).
    history: VecDeque<Held>,
    history_bytes: usize,
}

impl Channel {
    fn new() -> Channel {
        Channel {
            epoch: random_epoch(),
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
    pub(crate) denials: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub(crate) fn denied(&self, reason: &'static str) {
        *self.denials.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
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
    pub(crate) publications: Vec<Arc<str>>,
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
    /// Subscriptions ended with `channel_closed`.
    pub(crate) unsubscribed: usize,
    /// Publications of its history dropped.
    pub(crate) history_dropped: usize,
}

/// One user of a channel's presence.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceRow {
    pub(crate) user_id: String,
    pub(crate) sessions: usize,
}

/// The channels of this node.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
    pub(crate) settings: HubSettings,
    pub(crate) stats: Stats,
    next_subscriber: AtomicU64,
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

impl Hub {
    pub(crate) fn new(settings: HubSettings) -> Hub {
        Hub {
            inner: Mutex::default(),
            settings,
            stats: Stats::default(),
            next_subscriber: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh subscriber id for a connection.
    pub(crate) fn subscriber_id(&self) -> u64 {
        self.next_subscriber.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes (or, when already subscribed, only answers again), recovering from `since`.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
        sub: u64,
        user_id: &str,
        handle: &ConnHandle,
        since: Option<&Position>,
    ) -> Subscribed {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let ch = inner.channels.entry(channel.to_owned()).or_insert_with(Channel::new);
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
            let counter = if recovered { &self.stats.recovered } else { &self.stats.not_recovered };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let answer =
            Subscribed { epoch: ch.epoch.clone(), offset: ch.offset, recovered, publications };
        if let std::collections::hash_map::Entry::Vacant(slot) = ch.subscribers.entry(sub) {
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            slot.insert(Subscriber { user_id: user_id.to_owned(), handle: handle.clone() });
            let n = ch.users.entry(user_id.to_owned()).or_default();
            *n += 1;
            if *n == 1 && self.settings.presence_events {
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
        let last = match ch.users.get_mut(&s.user_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                ch.users.remove(&s.user_id);
                true
            }
        };
        if last && self.settings.presence_events {
            let data = presence_data("leave", &s.user_id);
            self.publish_locked(inner, channel, &data, Some(&s.user_id));
        }
        if inner.channels.get(channel).is_some_and(Channel::is_idle) {
            inner.channels.remove(channel);
        }
        true
    }

    /// Publishes `data` (raw JSON); returns the offset and how many subscribers got it queued.
    pub(crate) fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        user_id: Option<&str>,
    ) -> (u64, usize) {
        let mut inner = self.lock();
        self.publish_locked(&mut inner, channel, data, user_id)
    }

    fn publish_locked(
        &self,
        inner: &mut Inner,
        channel: &str,
        data: &RawValue,
        user_id: Option<&str>,
    ) -> (u64, usize) {
        let ch = inner.channels.entry(channel.to_owned()).or_insert_with(Channel::new);
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
        let json: Arc<str> = serde_json::to_string(&env).unwrap_or_default().into();
        self.stats.publications.fetch_add(1, Ordering::Relaxed);
        // Encoded once; each subscriber gets a copy of the same text.
        let mut delivered = 0;
        for s in ch.subscribers.values() {
            if s.handle.send_as(super::PUBLICATION, Message::Text(json.to_string().into())).is_ok()
            {
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

    /// The last `limit` held publications of a channel, oldest first, and its epoch.
    pub(crate) fn history(&self, channel: &str, limit: usize) -> (String, Vec<Arc<str>>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(ch) = inner.channels.get_mut(channel) else {
            // Nothing held; the epoch of a channel created now and gone at once.
            return (random_epoch(), Vec::new());
        };
        inner.history_bytes -= expire(ch, self.settings.history_ttl, Instant::now());
        let skip = ch.history.len().saturating_sub(limit);
        let list = ch.history.iter().skip(skip).map(|h| h.json.clone()).collect();
        let epoch = ch.epoch.clone();
        if ch.is_idle() {
            inner.channels.remove(channel);
        }
        (epoch, list)
    }

    /// Users subscribed to a channel, with their session counts, by user id.
    pub(crate) fn presence(&self, channel: &str) -> Vec<PresenceRow> {
        let inner = self.lock();
        inner
            .channels
            .get(channel)
            .map(|ch| {
                ch.users
                    .iter()
                    .map(|(u, n)| PresenceRow { user_id: u.clone(), sessions: *n })
                    .collect()
            })
            .unwrap_or_default()
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

    /// Ends every subscription of `user_id` to `channel`: each session gets `unsubscribed`
    /// with `reason` and no further publication. Returns how many ended.
    pub(crate) fn unsubscribe_user(&self, channel: &str, user_id: &str, reason: &str) -> usize {
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
        let notice = super::unsubscribed_text(channel, None, reason);
        for id in &subs {
            if let Some(s) = ch.subscribers.remove(id) {
                let _ = s.handle.send_as(super::UNSUBSCRIBED, Message::Text(notice.clone().into()));
            }
        }
        ch.users.remove(user_id);
        if self.settings.presence_events {
            let data = presence_data("leave", user_id);
            self.publish_locked(inner, channel, &data, Some(user_id));
        }
        if inner.channels.get(channel).is_some_and(Channel::is_idle) {
            inner.channels.remove(channel);
        }
        subs.len()
    }

    /// Closes a channel: every subscription ends with `channel_closed` and its history is
    /// dropped, so the channel starts a new epoch when next used. `None` when it was not active.
    pub(crate) fn close(&self, channel: &str) -> Option<Closed> {
        let mut inner = self.lock();
        let ch = inner.channels.remove(channel)?;
        inner.history_bytes -= ch.history_bytes;
        let notice = super::unsubscribed_text(channel, None, "channel_closed");
        for s in ch.subscribers.values() {
            let _ = s.handle.send_as(super::UNSUBSCRIBED, Message::Text(notice.clone().into()));
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

    #[test]
    fn the_sweep_drops_expired_history_of_idle_channels_and_forgets_them() {
        let hub = hub(10, 60);
        hub.publish("idle", &data("1"), None);
        let epoch = hub.history("idle", 10).0;
        hub.publish("idle", &data("2"), None);
        hub.publish("other", &data("\"x\""), None);
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
        let (offset, _) = hub.publish("idle", &data("3"), None);
        assert_eq!(offset, 1);
        assert_ne!(hub.history("idle", 10).0, epoch);
    }

    #[test]
    fn the_sweep_keeps_what_is_newer_than_the_ttl_and_does_nothing_without_one() {
        let hub = hub(10, 60);
        hub.publish("a", &data("1"), None);
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
        forever.publish("a", &data("1"), None);
        assert_eq!(forever.sweep(Instant::now() + Duration::from_secs(1_000_000)), 0);
        assert_eq!(forever.list()[0].history, 1);
    }

    #[test]
    fn closing_a_channel_drops_its_history_and_its_epoch() {
        let hub = hub(10, 0);
        hub.publish("c", &data("1"), None);
        hub.publish("c", &data("2"), None);
        let epoch = hub.list()[0].epoch.clone();
        assert_eq!(hub.close("c"), Some(Closed { unsubscribed: 0, history_dropped: 2 }));
        assert_eq!(hub.totals(), (0, 0, 0));
        assert_eq!(hub.close("c"), None);
        assert_eq!(hub.publish("c", &data("3"), None).0, 1);
        assert_ne!(hub.list()[0].epoch, epoch);
        assert_eq!(hub.unsubscribe_user("c", "42", "permission_revoked"), 0);
    }

    #[test]
    fn the_busiest_channels_are_ordered_and_capped() {
        let hub = hub(10, 0);
        for (name, n) in [("a", 1), ("b", 3), ("c", 2), ("d", 3)] {
            for _ in 0..n {
                hub.publish(name, &data("0"), None);
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
