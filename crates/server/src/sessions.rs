//! The registry of authenticated sessions: who is connected, since when, until when, and a
//! handle to push to or close each one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use palisade_transport::{ConnHandle, ConnId, Message};
use rand::RngCore;
use serde::Serialize;

/// A random, unguessable session id (128 bits, hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    pub fn random() -> SessionId {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        SessionId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the registry knows of one session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// The authenticated user.
    pub user_id: String,
    /// The connection carrying it.
    #[serde(serialize_with = "ser_display")]
    pub conn: ConnId,
    /// The client address.
    pub peer: SocketAddr,
    /// The endpoint name.
    pub endpoint: String,
    /// When the session started (Unix seconds).
    pub started: u64,
    /// When its token expires (Unix seconds), if it does.
    pub expires: Option<u64>,
}

fn ser_display<S: serde::Serializer>(v: &ConnId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A user already holds the maximum number of sessions.
#[derive(Debug, thiserror::Error)]
#[error("user already has {max} open sessions")]
pub struct TooManySessions {
    /// The cap.
    pub max: usize,
}

struct Entry {
    info: SessionInfo,
    handle: ConnHandle,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, Entry>,
    /// Session ids per user: a set, so ending one of a user's many sessions is O(1).
    by_user: HashMap<String, HashSet<SessionId>>,
}

/// All sessions of this node. Cheap to clone.
#[derive(Clone)]
pub struct SessionRegistry {
    inner: Arc<Mutex<Inner>>,
    max_per_user: usize,
}

impl SessionRegistry {
    /// An empty registry; `max_per_user` of 0 means no cap.
    pub fn new(max_per_user: usize) -> SessionRegistry {
        SessionRegistry { inner: Arc::default(), max_per_user }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent maps; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a session, unless the user is at the cap.
    pub fn register(&self, info: SessionInfo, handle: ConnHandle) -> Result<(), TooManySessions> {
        let mut inner = self.lock();
        let ids = inner.by_user.entry(info.user_id.clone()).or_default();
        if self.max_per_user > 0 && ids.len() >= self.max_per_user {
            return Err(TooManySessions { max: self.max_per_user });
        }
        ids.insert(info.id.clone());
        inner.sessions.insert(info.id.clone(), Entry { info, handle });
        Ok(())
    }

    /// Removes a session (when its connection ends).
    pub fn unregister(&self, id: &SessionId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.sessions.remove(id)
            && let Some(ids) = inner.by_user.get_mut(&entry.info.user_id)
        {
            ids.remove(id);
            if ids.is_empty() {
                inner.by_user.remove(&entry.info.user_id);
            }
        }
    }

    /// Updates a session's expiry (after a token refresh).
    pub fn set_expiry(&self, id: &SessionId, expires: Option<u64>) {
        if let Some(e) = self.lock().sessions.get_mut(id) {
            e.info.expires = expires;
        }
    }

    /// The number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of all sessions, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> =
            self.lock().sessions.values().map(|e| e.info.clone()).collect();
        all.sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
        all
    }

    /// Closes one session with 1008 `session revoked`; false when there is no such session.
    pub fn revoke(&self, id: &SessionId) -> bool {
        match self.lock().sessions.get(id) {
            Some(e) => {
                e.handle.close(crate::close_cause::CloseCause::Revoked.close());
                true
            }
            None => false,
        }
    }

    /// Closes every session of a user; returns how many.
    pub fn revoke_user(&self, user_id: &str) -> usize {
        let inner = self.lock();
        let ids = inner.by_user.get(user_id).cloned().unwrap_or_default();
        for id in &ids {
            if let Some(e) = inner.sessions.get(id) {
                e.handle.close(crate::close_cause::CloseCause::Revoked.close());
            }
        }
        ids.len()
    }

    /// Pushes a message to every session of a user; returns how many got it queued.
    pub fn send_to_user(&self, user_id: &str, msg: &Message) -> usize {
        let handles: Vec<ConnHandle> = {
            let inner = self.lock();
            let Some(ids) = inner.by_user.get(user_id) else { return 0 };
            ids.iter().filter_map(|id| inner.sessions.get(id)).map(|e| e.handle.clone()).collect()
        };
        handles.iter().filter(|h| h.send(msg.clone()).is_ok()).count()
    }

    /// Pushes a message to every session except `except`; returns how many got it queued.
    pub fn broadcast(&self, msg: &Message, except: Option<&SessionId>) -> usize {
        let handles: Vec<ConnHandle> = {
            let inner = self.lock();
            inner
                .sessions
                .iter()
                .filter(|(id, _)| Some(*id) != except)
                .map(|(_, e)| e.handle.clone())
                .collect()
        };
        handles.iter().filter(|h| h.send(msg.clone()).is_ok()).count()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
