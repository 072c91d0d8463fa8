//! Shared state of several Palisade nodes behind one load balancer: bans, revocations, the
//! registry of authenticated sessions (with a per-user cap counted across nodes) and
//! server-to-user push.
//!
//! [`SharedState`] is the one trait. [`memory::MemoryState`] is the embedded default: one node,
//! nothing to install. [`redis_state::RedisState`] shares the state through Redis
//! (`redis://`, or `rediss://` for TLS with rustls): TTL'd ban keys, revocation keys that live as
//! long as the revoked tokens would have, session entries kept alive by a heartbeat (a node that
//! dies leaves no phantom sessions behind once their TTL passes), and one pub/sub channel that
//! carries bans, revocations and pushes to every node.
//!
//! The connection path never waits on Redis longer than the command timeout. Ban and revocation
//! checks ([`SharedState::is_banned`], [`SharedState::is_revoked`]) read a local cache that
//! pub/sub keeps fresh and a periodic sync corrects. Writes ([`SharedState::ban`],
//! [`SharedState::revoke_user`], ...) return at once: a background task sends them, and keeps
//! what it could not send until Redis is back. The one awaited call of a new session,
//! [`SharedState::open_session`], is bounded by the command timeout and admits the session when
//! Redis does not answer. While Redis is unreachable a node serves with what it knows, logs the
//! outage once (ERROR) and its end (INFO), and catches up when Redis returns.
//!
//! What other nodes do arrives as [`Event`]s on the receiver returned with the state; the server
//! applies them (a ban in its firewall, sessions closed, a push delivered).
//!
//! Deliberately not here: enforcement (the firewall refuses banned clients, the server closes
//! connections), reading files or the environment, and Redis Cluster or Sentinel (one Redis
//! endpoint; see docs/cluster.md).
//!
//! ```
//! use std::time::Duration;
//! use palisade_cluster::memory::MemoryState;
//! use palisade_cluster::{Admission, Revocation, SessionEntry, SharedState, TokenFacts};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (state, _events) = MemoryState::new("node-a");
//! let ip = "203.0.113.9".parse().unwrap();
//! state.ban(ip, Duration::from_secs(60));
//! assert!(state.is_banned(ip));
//!
//! let entry = SessionEntry {
//!     id: "s1".into(),
//!     user_id: "42".into(),
//!     node: String::new(), // Filled in by the state.
//!     conn: "c1".into(),
//!     peer: "127.0.0.1:50000".parse().unwrap(),
//!     endpoint: "secure".into(),
//!     started: 1_700_000_000,
//!     expires: None,
//! };
//! let token = TokenFacts { jti: Some("t-1".into()), iat: Some(1_700_000_000) };
//! assert_eq!(state.open_session(entry, token.clone(), 1).await, Admission::Admitted);
//!
//! // A revoked token is refused from now on, and its open sessions are named for closing.
//! let closing = state.revoke_tokens(Revocation::Token { jti: "t-1".into(), until: u64::MAX });
//! assert_eq!(closing, vec!["s1".to_string()]);
//! assert!(state.is_revoked("42", &token));
//! # }
//! ```

pub mod channels;
pub mod memory;
pub mod redis_state;

mod local;
mod metrics;
mod wire;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A boxed future, so that [`SharedState`] can be used as `Arc<dyn SharedState>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Events from other nodes wait here for the server; beyond this many the oldest-first
/// delivery stops and new events are dropped (and counted). The periodic sync repairs bans and
/// revocations that were dropped; a dropped push is lost.
pub const EVENT_QUEUE: usize = 4096;

/// What every node shares. Cheap calls (`is_*`, writes) never wait on the network; the async
/// ones are bounded by the command timeout.
pub trait SharedState: Send + Sync + 'static {
    /// This node's id, as shown in the cluster-wide session list.
    fn node_id(&self) -> &str;

    /// Backend, node id and, for Redis, whether it is reachable.
    fn status(&self) -> Status;

    /// Bans `ip` on every node for `duration` (the same expiry everywhere).
    fn ban(&self, ip: IpAddr, duration: Duration);

    /// Lifts a ban on every node. Returns whether this node knew of a ban on `ip`.
    fn unban(&self, ip: IpAddr) -> bool;

    /// Whether `ip` is banned, as this node knows it (local cache, no network).
    fn is_banned(&self, ip: IpAddr) -> bool;

    /// Closes the session `session_id` wherever it is held (other nodes get
    /// [`Event::RevokeSession`]; the caller closes it when it holds it).
    fn revoke_session(&self, session_id: &str);

    /// Closes every session of `user_id` on the other nodes ([`Event::RevokeUser`]); the caller
    /// closes its own.
    fn revoke_user(&self, user_id: &str);

    /// Refuses the tokens `revocation` names on every node until it expires. Returns the ids of
    /// this node's open sessions that were authenticated with such a token (the caller closes
    /// them; other nodes get [`Event::CloseSessions`]).
    fn revoke_tokens(&self, revocation: Revocation) -> Vec<String>;

    /// Whether a token of `user_id` with these claims has been revoked (local cache).
    fn is_revoked(&self, user_id: &str, token: &TokenFacts) -> bool;

    /// Active revocations, as this node knows them.
    fn revocations(&self) -> Vec<Revocation>;

    /// Registers a new session of this node, counting the user's sessions on every node
    /// against `max_per_user` (0: no cap).
    fn open_session(
        &self,
        entry: SessionEntry,
        token: TokenFacts,
        max_per_user: usize,
    ) -> BoxFuture<'_, Admission>;

    /// Removes a session of this node (its connection ended).
    fn close_session(&self, session_id: &str);

    /// Every session of every node, oldest first. Fails while Redis is unreachable (the
    /// caller may then show [`SharedState::local_sessions`]).
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionEntry>, ClusterError>>;

    /// This node's sessions, oldest first.
    fn local_sessions(&self) -> Vec<SessionEntry>;

    /// Sends `data` to `user_id`'s sessions on the other nodes and waits (bounded) for their
    /// answers. The caller has delivered it to this node's sessions: `delivered_here` of them,
    /// which only counts toward the metrics.
    fn publish(
        &self,
        user_id: String,
        data: String,
        delivered_here: usize,
    ) -> BoxFuture<'_, Result<PublishReport, ClusterError>>;

    /// Channels shared by every node (cluster mode), or `None`: the node's own hub is the
    /// whole truth (memory).
    fn channel_store(
        &self,
        settings: channels::ChannelSettings,
    ) -> Option<std::sync::Arc<dyn channels::ChannelStore>> {
        let _ = settings;
        None
    }

    /// Metrics in OpenMetrics text (ending with `# EOF`); empty when there is nothing to show.
    fn encode_metrics(&self) -> String;

    /// Sends what is still queued (bounded by the command timeout), removes this node's
    /// sessions from the shared registry and stops background tasks.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// One authenticated session as the cluster lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// Session id.
    pub id: String,
    /// The authenticated user.
    pub user_id: String,
    /// The node holding the connection (set by [`SharedState::open_session`]).
    pub node: String,
    /// The connection id on that node.
    pub conn: String,
    /// The client address.
    pub peer: SocketAddr,
    /// The endpoint name.
    pub endpoint: String,
    /// When the session started (Unix seconds).
    pub started: u64,
    /// When its token expires (Unix seconds), if it does.
    pub expires: Option<u64>,
}

/// The claims of a session's token that revocations match on. They stay on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// The `jti` claim.
    pub jti: Option<String>,
    /// The `iat` claim (Unix seconds).
    pub iat: Option<u64>,
}

/// Tokens to refuse until `until` (Unix seconds; when they would have expired anyway).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token whose `jti` claim is `jti`.
    Token {
        /// The revoked token's `jti` claim.
        jti: String,
        /// When the revocation may be forgotten (Unix seconds).
        until: u64,
    },
    /// Every token of `user_id` issued before `before` (Unix seconds), and those without `iat`.
    IssuedBefore {
        /// The user whose tokens are revoked.
        user_id: String,
        /// Tokens issued before this instant (Unix seconds) are refused.
        before: u64,
        /// When the revocation may be forgotten (Unix seconds).
        until: u64,
    },
}

impl Revocation {
    /// When the revocation may be forgotten (Unix seconds).
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. } | Revocation::IssuedBefore { until, .. } => *until,
        }
    }

    /// Whether it refuses a token of `user_id` with these claims.
    pub fn matches(&self, user_id: &str, token: &TokenFacts) -> bool {
        match self {
            Revocation::Token { jti, .. } => token.jti.as_deref() == Some(jti.as_str()),
            Revocation::IssuedBefore { user_id: u, before, .. } => {
                u == user_id && token.iat.is_none_or(|iat| iat < *before)
            }
        }
    }
}

/// The answer of [`SharedState::open_session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Registered; the user is within the cap on every node together.
    Admitted,
    /// The user already holds `max` sessions across the cluster; nothing was registered.
    TooManySessions {
        /// The per-user cap.
        max: usize,
    },
    /// Redis did not answer in time: registered on this node only and admitted (an outage
    /// refuses nothing). The next heartbeat after the outage publishes it.
    AdmittedUnchecked,
}

/// What other nodes did that this node must apply.
#[derive(Debug)]
pub enum Event {
    /// Refuse `ip` for `remaining`.
    Ban {
        /// The banned address.
        ip: IpAddr,
        /// How long the ban still runs.
        remaining: Duration,
    },
    /// Lift the ban on `ip`.
    Unban {
        /// The address to admit again.
        ip: IpAddr,
    },
    /// Close this session with 1008 `session revoked` if this node holds it.
    RevokeSession {
        /// The revoked session.
        session_id: String,
    },
    /// Close every session of this user on this node with 1008 `session revoked`.
    RevokeUser {
        /// The revoked user.
        user_id: String,
    },
    /// These sessions of this node used a revoked token: close them with 1008.
    CloseSessions {
        /// Sessions of this node to close.
        session_ids: Vec<String>,
    },
    /// Deliver `data` as a text message to every session of `user_id`, then say how many.
    Publish {
        /// The addressee.
        user_id: String,
        /// The text message.
        data: String,
        /// Where to say how many sessions received it.
        reply: DeliveryReply,
    },
}

/// Tells the node that published a message how many sessions of this node received it.
#[derive(Debug)]
pub struct DeliveryReply {
    inner: Option<redis_state::ReplyTo>,
}

impl DeliveryReply {
    /// Reports `sessions` deliveries back to the publishing node.
    pub fn delivered(mut self, sessions: usize) {
        if let Some(to) = self.inner.take() {
            to.send(sessions);
        }
    }
}

/// The outcome of [`SharedState::publish`] on the other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Other nodes subscribed when the message was published.
    pub nodes_listening: usize,
    /// Other nodes that answered in time.
    pub nodes_answered: usize,
    /// Other nodes where at least one session received it.
    pub nodes_delivered: usize,
    /// Sessions on other nodes that received it.
    pub sessions: usize,
}

/// How a node stands with the shared state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// This node's id.
    pub node_id: String,
    /// False while Redis is unreachable (always true in memory).
    pub connected: bool,
    /// Seconds since Redis became unreachable, during an outage.
    pub outage_secs: Option<u64>,
    /// Writes waiting to be sent to Redis.
    pub pending_writes: usize,
}

/// A call that needed Redis did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis is unreachable or did not answer within the command timeout.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (a bug or a misconfigured server).
    #[error("redis command failed")]
    Command(#[source] redis::RedisError),
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A bounded queue of events for the server.
pub(crate) fn event_queue() -> (mpsc::Sender<Event>, mpsc::Receiver<Event>) {
    mpsc::channel(EVENT_QUEUE)
}

#[cfg(test)]
mod tests;
