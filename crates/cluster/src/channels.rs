//! Publish/subscribe channels shared by every node: offsets and history kept in Redis, and
//! every publication delivered to every node through one pub/sub channel.
//!
//! [`ChannelStore`] is what a node's channel hub asks of the cluster; [`SharedState::channel_store`]
//! returns one in cluster mode (`None` in memory: the hub then is the whole truth).
//!
//! - A publish runs one Lua script: it takes the channel's next offset, appends the
//!   publication to the history, and publishes it, all in one step, so every node receives a
//!   channel's publications in offset order.
//! - Each channel has an epoch, made when Redis holds nothing for it (first use, history
//!   expired, Redis flushed or restarted without persistence). A client recovering from
//!   another epoch gets `recovered: false`: publications are never skipped silently.
//! - Presence lives in Redis too, one sorted set per channel and user whose members expire
//!   unless their node refreshes them ([`ChannelStore::touch`]), so the users of a node that
//!   died leave the presence lists after the TTL.
//! - Nothing is delivered while Redis is unreachable: publishes fail with
//!   [`ClusterError::Unavailable`], and no node delivers what others may not see.
//!
//! [`SharedState::channel_store`]: crate::SharedState::channel_store

use std::sync::Arc;
use std::time::Duration;

use crate::{BoxFuture, ClusterError};

/// What the channel store needs to know of `[channels]`.
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// Publications held per channel (0: none).
    pub history_size: usize,
    /// How long a publication is held; `None`: until newer ones push it out.
    pub history_ttl: Option<Duration>,
}

/// A channel's position after a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The channel's epoch.
    pub epoch: String,
    /// The publication's offset.
    pub offset: u64,
}

/// A channel's stream as a new subscriber sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The current epoch.
    pub epoch: String,
    /// The offset of the last publication (0 before the first).
    pub offset: u64,
    /// Every publication after the subscriber's position, oldest first, when all of them are
    /// still held and the epoch is the same; `None` otherwise (or without a position).
    pub recovered: Option<Vec<String>>,
}

/// What arrives from the cluster for the channels of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// A publication from any node (this one included), in offset order per channel.
    Publication {
        /// The channel.
        channel: String,
        /// The channel's epoch when it was published.
        epoch: String,
        /// Its offset.
        offset: u64,
        /// The `publication` envelope, as subscribers get it.
        json: String,
    },
    /// An admin closed the channel: end its subscriptions with `channel_closed`.
    Closed {
        /// The channel.
        channel: String,
    },
    /// An admin ended a user's subscriptions to a channel (`permission_revoked`).
    Unsubscribed {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// The node was cut off from Redis and is back: publications may have been missed. Check
    /// every channel's position with [`ChannelStore::stream`].
    Resync,
}

/// Called by the store's reader for each [`Remote`], in order; it must not block.
pub type Sink = Arc<dyn Fn(Remote) + Send + Sync>;

/// The envelope text of a publication is `prefix`, its offset, then `suffix`: the store fills
/// in the offset it assigns, so the envelope is encoded once for every node and subscriber.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Text before the offset, e.g. `{"type":"publication","channel":"news","offset":`.
    pub prefix: String,
    /// Text after it, e.g. `,"data":1}`.
    pub suffix: String,
}

/// Channels across nodes. Every call is bounded by the cluster's command timeout and fails
/// with [`ClusterError::Unavailable`] while Redis is unreachable.
pub trait ChannelStore: Send + Sync + 'static {
    /// Where this node's [`Remote`]s go. Set once, before the first subscription.
    fn set_sink(&self, sink: Sink);

    /// Publishes on every node; returns the epoch and offset it got.
    fn publish(
        &self,
        channel: &str,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Published, ClusterError>>;

    /// The channel's position, and what was published after `since` (epoch, offset) when it
    /// is all held.
    fn stream(
        &self,
        channel: &str,
        since: Option<(String, u64)>,
    ) -> BoxFuture<'_, Result<Stream, ClusterError>>;

    /// The epoch and the last `limit` held publications, oldest first.
    fn history(
        &self,
        channel: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<(String, Vec<String>), ClusterError>>;

    /// The users subscribed on any live node, with their subscription counts, by user id.
    fn presence(&self, channel: &str) -> BoxFuture<'_, Result<Vec<(String, usize)>, ClusterError>>;

    /// Adds one subscription (`member`, unique in the cluster) of `user_id`; true when it is
    /// the user's first in the channel.
    fn join(
        &self,
        channel: &str,
        user_id: &str,
        member: &str,
    ) -> BoxFuture<'_, Result<bool, ClusterError>>;

    /// Removes one subscription; true when it was the user's last in the channel.
    fn leave(
        &self,
        channel: &str,
        user_id: &str,
        member: &str,
    ) -> BoxFuture<'_, Result<bool, ClusterError>>;

    /// Keeps this node's subscriptions (channel, user id, member) in the presence lists for
    /// another TTL. Call it every heartbeat.
    fn touch(
        &self,
        entries: Vec<(String, String, String)>,
    ) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Drops the channel's history and position (a new epoch when next used) and ends its
    /// subscriptions on every node ([`Remote::Closed`]).
    fn close(&self, channel: &str) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Ends `user_id`'s subscriptions to the channel on every node ([`Remote::Unsubscribed`]).
    fn unsubscribe_user(
        &self,
        channel: &str,
        user_id: &str,
    ) -> BoxFuture<'_, Result<(), ClusterError>>;
}

/// A new random epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
