//! The embedded default: one node, everything in memory, nothing to install.
//!
//! There are no other nodes, so no [`Event`] ever arrives and a publish reaches nobody beyond
//! the caller; bans, revocations and the session cap behave as they do in a cluster of one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::local::Local;
use crate::metrics::ClusterMetrics;
use crate::{
    Admission, BoxFuture, ClusterError, Event, PublishReport, Revocation, SessionEntry,
    SharedState, Status, TokenFacts, unix_now,
};

/// Shared state of a single node.
pub struct MemoryState {
    node_id: String,
    local: Local,
    metrics: ClusterMetrics,
    // Kept so that the receiver stays open (and empty) for as long as the state lives.
    _events: mpsc::Sender<Event>,
}

impl MemoryState {
    /// A fresh state for node `node_id`, and the (always empty) event receiver.
    pub fn new(node_id: impl Into<String>) -> (MemoryState, mpsc::Receiver<Event>) {
        let (tx, rx) = crate::event_queue();
        let state = MemoryState {
            node_id: node_id.into(),
            local: Local::default(),
            metrics: ClusterMetrics::new(false),
            _events: tx,
        };
        (state, rx)
    }
}

impl SharedState for MemoryState {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn status(&self) -> Status {
        Status {
            backend: "memory",
            node_id: self.node_id.clone(),
            connected: true,
            outage_secs: None,
            pending_writes: 0,
        }
    }

    fn ban(&self, ip: IpAddr, duration: Duration) {
        self.local.ban(ip, duration, Instant::now());
    }

    fn unban(&self, ip: IpAddr) -> bool {
        self.local.unban(ip, Instant::now())
    }

    fn is_banned(&self, ip: IpAddr) -> bool {
        self.local.is_banned(ip, Instant::now())
    }

    fn revoke_session(&self, _session_id: &str) {}

    fn revoke_user(&self, _user_id: &str) {}

    fn revoke_tokens(&self, revocation: Revocation) -> Vec<String> {
        self.local.revoke(revocation, unix_now()).1
    }

    fn is_revoked(&self, user_id: &str, token: &TokenFacts) -> bool {
        self.local.is_revoked(user_id, token, unix_now())
    }

    fn revocations(&self) -> Vec<Revocation> {
        self.local.revocations(unix_now())
    }

    fn open_session(
        &self,
        mut entry: SessionEntry,
        token: TokenFacts,
        max_per_user: usize,
    ) -> BoxFuture<'_, Admission> {
        entry.node = self.node_id.clone();
        let admission =
            if max_per_user > 0 && self.local.sessions_of(&entry.user_id) >= max_per_user {
                Admission::TooManySessions { max: max_per_user }
            } else {
                self.local.add_session(entry, token);
                Admission::Admitted
            };
        Box::pin(async move { admission })
    }

    fn close_session(&self, session_id: &str) {
        self.local.remove_session(session_id);
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionEntry>, ClusterError>> {
        let list = self.local.sessions();
        Box::pin(async move { Ok(list) })
    }

    fn local_sessions(&self) -> Vec<SessionEntry> {
        self.local.sessions()
    }

    fn publish(
        &self,
        _user_id: String,
        _data: String,
        delivered_here: usize,
    ) -> BoxFuture<'_, Result<PublishReport, ClusterError>> {
        self.metrics.published(delivered_here, usize::from(delivered_here > 0));
        Box::pin(async { Ok(PublishReport::default()) })
    }

    fn encode_metrics(&self) -> String {
        self.metrics.encode()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
