//! Cluster mode: builds the shared state from `[cluster]` (memory, or Redis when
//! `cluster.redis_url` is set) and applies what other nodes do (bans to the firewall,
//! revocations and pushes to the session registry). The cluster's admin routes are in
//! `admin::cluster_api`; `[cluster]` is validated in `config`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use palisade_cluster::memory::MemoryState;
use palisade_cluster::redis_state::RedisState;
use palisade_cluster::{Admission, Event, SessionEntry, SharedState, TokenFacts};
use palisade_firewall::Firewall;
use palisade_metrics::Metrics;
use palisade_token::Claims;
use palisade_transport::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::sessions::{SessionId, SessionInfo, SessionRegistry};

/// What the connection path and the admin API hold of the cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) state: Arc<dyn SharedState>,
    max_per_user: usize,
    /// Largest `POST /publish` payload (`limits.max_message_bytes`).
    pub(crate) max_publish_bytes: usize,
    /// Added to a revoked token's `exp`, as the verifier accepts it that much longer.
    pub(crate) leeway_secs: u64,
}

impl Link {
    /// Whether the token these claims come from has been revoked (local cache, no network).
    pub(crate) fn is_revoked(&self, claims: &Claims) -> bool {
        self.state.is_revoked(&claims.user_id, &facts(claims))
    }

    /// Registers a session with the cluster; `Err(max)` when the user is at the cap counted
    /// on every node. Waits on Redis at most the command timeout.
    pub(crate) async fn open(&self, info: &SessionInfo, claims: &Claims) -> Result<(), usize> {
        let entry = SessionEntry {
            id: info.id.as_str().to_owned(),
            user_id: info.user_id.clone(),
            node: String::new(),
            conn: info.conn.to_string(),
            peer: info.peer,
            endpoint: info.endpoint.clone(),
            started: info.started,
            expires: info.expires,
        };
        match self.state.open_session(entry, facts(claims), self.max_per_user).await {
            Admission::Admitted | Admission::AdmittedUnchecked => Ok(()),
            Admission::TooManySessions { max } => Err(max),
        }
    }

    /// The session's connection ended.
    pub(crate) fn close(&self, id: &SessionId) {
        self.state.close_session(id.as_str());
    }

    /// Shares a ban made on this node (automatic or through the admin API).
    pub(crate) fn ban(&self, ip: IpAddr, duration: Duration) {
        self.state.ban(ip, duration);
    }
}

fn facts(claims: &Claims) -> TokenFacts {
    TokenFacts { jti: claims.jti.clone(), iat: claims.iat }
}

/// Builds the shared state: Redis when `cluster.redis_url` is set, else memory. A Redis that
/// is down at start is an outage, not an error: the node serves and catches up later.
pub(crate) async fn start(config: &Config) -> anyhow::Result<(Link, mpsc::Receiver<Event>)> {
    let section = &config.cluster;
    let node_id = section.node_id.clone().unwrap_or_else(default_node_id);
    let (state, events): (Arc<dyn SharedState>, _) = match &section.redis_url {
        Some(_) => {
            let rc = section.redis_config(node_id);
            let url = rc.redacted_url();
            let (state, events) =
                RedisState::start(rc).await.with_context(|| format!("[cluster] {url}"))?;
            tracing::info!(node = state.node_id(), redis = %url, "cluster mode: sharing state through redis");
            (Arc::new(state), events)
        }
        None => {
            let (state, events) = MemoryState::new(node_id);
            (Arc::new(state), events)
        }
    };
    let link = Link {
        state,
        max_per_user: config.secure.max_sessions_per_user,
        max_publish_bytes: config.limits.max_message_bytes,
        leeway_secs: config.auth.leeway_secs,
    };
    Ok((link, events))
}

/// The host name plus a random suffix, e.g. `web-3-5f1a9c`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let mut host: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .take(48)
        .collect();
    if host.is_empty() {
        host.push_str("node");
    }
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Applies other nodes' events until shutdown.
pub(crate) fn spawn_events(
    mut events: mpsc::Receiver<Event>,
    sessions: SessionRegistry,
    firewall: Firewall,
    metrics: Metrics,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            apply(event, &sessions, &firewall, &metrics);
        }
    });
}

fn apply(event: Event, sessions: &SessionRegistry, firewall: &Firewall, metrics: &Metrics) {
    match event {
        Event::Ban { ip, remaining } => {
            let now = Instant::now();
            firewall.ban(ip, remaining, now);
            metrics.set_bans_active(firewall.bans(now).len() as i64);
            tracing::info!(client_ip = %ip, ban_secs = remaining.as_secs(), "address banned by another node");
        }
        Event::Unban { ip } => {
            if firewall.unban(ip) {
                metrics.set_bans_active(firewall.bans(Instant::now()).len() as i64);
                tracing::info!(client_ip = %ip, "ban lifted by another node");
            }
        }
        Event::RevokeSession { session_id } => {
            if revoke_by_id(sessions, &session_id) {
                tracing::info!(session = %session_id, "session revoked through another node");
            }
        }
        Event::RevokeUser { user_id } => {
            let n = sessions.revoke_user(&user_id);
            tracing::info!(user_id = %user_id, sessions = n, "user sessions revoked through another node");
        }
        Event::CloseSessions { session_ids } => {
            let n = session_ids.iter().filter(|id| revoke_by_id(sessions, id)).count();
            tracing::info!(sessions = n, "sessions closed: their token was revoked");
        }
        Event::Publish { user_id, data, reply } => {
            reply.delivered(sessions.send_to_user(&user_id, &Message::Text(data.into())));
        }
    }
}

/// Closes this node's session `id` with 1008 `session revoked`; false when it holds none.
pub(crate) fn revoke_by_id(sessions: &SessionRegistry, id: &str) -> bool {
    let found = sessions.list().into_iter().find(|s| s.id.as_str() == id).map(|s| s.id);
    found.is_some_and(|id| sessions.revoke(&id))
}
