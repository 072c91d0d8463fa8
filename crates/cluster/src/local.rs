//! What one node knows: the ban and revocation cache consulted on the connection path, and
//! this node's own sessions (with the token claims that revocations match on).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{Revocation, SessionEntry, TokenFacts};

/// At most this many bans and, separately, revocations are cached; when full, expired entries
/// go first, then the one that expires soonest.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// Bans longer than this are clamped, so `now + duration` cannot overflow.
const MAX_BAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Default)]
pub(crate) struct Local {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bans: HashMap<IpAddr, Instant>,
    /// Keyed by [`revocation_key`]: one rule per `jti` and one per user.
    revocations: HashMap<String, Revocation>,
    sessions: HashMap<String, (SessionEntry, TokenFacts)>,
    /// Sessions per user id, so the per-user cap costs no scan of every session.
    per_user: HashMap<String, usize>,
}

/// The cache key (and the Redis key suffix) of a revocation: `jti:<jti>` or `user:<user_id>`.
pub(crate) fn revocation_key(r: &Revocation) -> String {
    match r {
        Revocation::Token { jti, .. } => format!("jti:{jti}"),
        Revocation::IssuedBefore { user_id, .. } => format!("user:{user_id}"),
    }
}

impl Inner {
    fn forget_user_session(&mut self, user_id: &str) {
        if let Some(n) = self.per_user.get_mut(user_id) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user_id);
            }
        }
    }
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; keep serving after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a ban until `now + duration`, replacing any ban on `ip`.
    pub(crate) fn ban(&self, ip: IpAddr, duration: Duration, now: Instant) {
        let until = now + duration.min(MAX_BAN);
        let mut inner = self.lock();
        if inner.bans.len() >= MAX_ENTRIES && !inner.bans.contains_key(&ip) {
            inner.bans.retain(|_, t| *t > now);
            if inner.bans.len() >= MAX_ENTRIES
                && let Some(first) = inner.bans.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip)
            {
                inner.bans.remove(&first);
            }
        }
        inner.bans.insert(ip, until);
    }

    /// Forgets a ban; whether there was an active one.
    pub(crate) fn unban(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().bans.remove(&ip).is_some_and(|until| until > now)
    }

    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock().bans.get(&ip).is_some_and(|until| *until > now)
    }

    /// Active bans with their remaining time.
    pub(crate) fn bans(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        let mut list: Vec<_> = self
            .lock()
            .bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, until)| (*ip, *until - now))
            .collect();
        list.sort_unstable();
        list
    }

    /// Replaces the bans with `bans` (from a sync); returns what was added or changed by more
    /// than a second, and what disappeared.
    pub(crate) fn replace_bans(
        &self,
        bans: &[(IpAddr, Duration)],
        now: Instant,
    ) -> (Vec<(IpAddr, Duration)>, Vec<IpAddr>) {
        let mut inner = self.lock();
        let mut added = Vec::new();
        let mut fresh = HashMap::with_capacity(bans.len());
        for (ip, left) in bans.iter().take(MAX_ENTRIES) {
            let until = now + (*left).min(MAX_BAN);
            let known = inner.bans.get(ip).copied();
            let changed = match known {
                Some(t) => t.max(until) - t.min(until) > Duration::from_secs(1),
                None => true,
            };
            if changed {
                added.push((*ip, *left));
            }
            fresh.insert(*ip, until);
        }
        let removed = inner
            .bans
            .iter()
            .filter(|(ip, until)| !fresh.contains_key(ip) && **until > now)
            .map(|(ip, _)| *ip)
            .collect();
        inner.bans = fresh;
        (added, removed)
    }

    /// Records a revocation (merged with an existing one for the same `jti` or user) and
    /// returns the merged rule and the ids of this node's sessions it matches.
    pub(crate) fn revoke(&self, r: Revocation, now_unix: u64) -> (Revocation, Vec<String>) {
        let mut inner = self.lock();
        let key = revocation_key(&r);
        let merged = match (inner.revocations.remove(&key), r) {
            (
                Some(Revocation::IssuedBefore { before: b0, until: u0, .. }),
                Revocation::IssuedBefore { user_id, before, until },
            ) => Revocation::IssuedBefore { user_id, before: before.max(b0), until: until.max(u0) },
            (Some(Revocation::Token { until: u0, .. }), Revocation::Token { jti, until }) => {
                Revocation::Token { jti, until: until.max(u0) }
            }
            (_, r) => r,
        };
        if inner.revocations.len() >= MAX_ENTRIES {
            inner.revocations.retain(|_, r| r.until() > now_unix);
            if inner.revocations.len() >= MAX_ENTRIES
                && let Some(first) =
                    inner.revocations.iter().min_by_key(|(_, r)| r.until()).map(|(k, _)| k.clone())
            {
                inner.revocations.remove(&first);
            }
        }
        let mut ids: Vec<String> = inner
            .sessions
            .values()
            .filter(|(entry, token)| merged.matches(&entry.user_id, token))
            .map(|(entry, _)| entry.id.clone())
            .collect();
        ids.sort_unstable();
        inner.revocations.insert(key, merged.clone());
        (merged, ids)
    }

    /// Replaces the revocations with `list` (from a sync); returns the ids of this node's
    /// sessions that the new ones match.
    pub(crate) fn replace_revocations(&self, list: Vec<Revocation>, now_unix: u64) -> Vec<String> {
        let mut inner = self.lock();
        let mut fresh: HashMap<String, Revocation> = HashMap::with_capacity(list.len());
        for r in list.into_iter().filter(|r| r.until() > now_unix).take(MAX_ENTRIES) {
            fresh.insert(revocation_key(&r), r);
        }
        let mut ids: Vec<String> = inner
            .sessions
            .values()
            .filter(|(entry, token)| {
                fresh.values().any(|r| r.matches(&entry.user_id, token))
                    && !inner
                        .revocations
                        .values()
                        .any(|r| r.until() > now_unix && r.matches(&entry.user_id, token))
            })
            .map(|(entry, _)| entry.id.clone())
            .collect();
        ids.sort_unstable();
        inner.revocations = fresh;
        ids
    }

    pub(crate) fn is_revoked(&self, user_id: &str, token: &TokenFacts, now_unix: u64) -> bool {
        let inner = self.lock();
        let active = |key: &str| {
            inner
                .revocations
                .get(key)
                .is_some_and(|r| r.until() > now_unix && r.matches(user_id, token))
        };
        token.jti.as_ref().is_some_and(|jti| active(&format!("jti:{jti}")))
            || active(&format!("user:{user_id}"))
    }

    /// Active revocations, sorted by key.
    pub(crate) fn revocations(&self, now_unix: u64) -> Vec<Revocation> {
        let inner = self.lock();
        let mut list: Vec<(&String, &Revocation)> =
            inner.revocations.iter().filter(|(_, r)| r.until() > now_unix).collect();
        list.sort_unstable_by(|a, b| a.0.cmp(b.0));
        list.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// This node's sessions of `user_id`.
    pub(crate) fn sessions_of(&self, user_id: &str) -> usize {
        self.lock().per_user.get(user_id).copied().unwrap_or(0)
    }

    pub(crate) fn add_session(&self, entry: SessionEntry, token: TokenFacts) {
        let mut inner = self.lock();
        let user_id = entry.user_id.clone();
        if let Some((old, _)) = inner.sessions.insert(entry.id.clone(), (entry, token)) {
            inner.forget_user_session(&old.user_id);
        }
        *inner.per_user.entry(user_id).or_default() += 1;
    }

    pub(crate) fn remove_session(&self, id: &str) -> Option<SessionEntry> {
        let mut inner = self.lock();
        let (entry, _) = inner.sessions.remove(id)?;
        inner.forget_user_session(&entry.user_id);
        Some(entry)
    }

    pub(crate) fn has_session(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(id)
    }

    /// This node's sessions, oldest first.
    pub(crate) fn sessions(&self) -> Vec<SessionEntry> {
        let mut list: Vec<SessionEntry> =
            self.lock().sessions.values().map(|(e, _)| e.clone()).collect();
        sort_sessions(&mut list);
        list
    }
}

/// Oldest first, then by node and id.
pub(crate) fn sort_sessions(list: &mut [SessionEntry]) {
    list.sort_by(|a, b| (a.started, &a.node, &a.id).cmp(&(b.started, &b.node, &b.id)));
}
