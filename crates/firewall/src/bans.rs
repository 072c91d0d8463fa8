//! Banned addresses with their expiry, bounded in number.
//!
//! A map answers "is this address banned" and two ordered sets (automatic and manual bans, by
//! expiry) make pruning and eviction O(log n), so a flood of bans cannot make the lock slow.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// Bans longer than this are clamped, so `now + duration` cannot overflow.
const MAX_BAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) struct Bans {
    state: Mutex<State>,
    cap: usize,
}

#[derive(Default)]
struct State {
    map: HashMap<IpAddr, Ban>,
    automatic: BTreeSet<(Instant, IpAddr)>,
    manual: BTreeSet<(Instant, IpAddr)>,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    manual: bool,
}

impl Bans {
    /// At most `cap` (at least 1) bans are kept; when full, the automatic ban that ends first
    /// makes room, and a manual one only when there is no automatic ban left.
    pub(crate) fn new(cap: usize) -> Bans {
        Bans { state: Mutex::new(State::default()), cap: cap.max(1) }
    }

    /// A manual ban replaces any ban on `ip`; an automatic one only extends it.
    pub(crate) fn insert(&self, ip: IpAddr, duration: Duration, now: Instant, manual: bool) {
        let until = now + duration.min(MAX_BAN);
        let mut state = lock(&self.state);
        let ban = match state.remove(ip) {
            Some(old) if !manual => Ban { until: old.until.max(until), manual: old.manual },
            _ => Ban { until, manual },
        };
        if state.map.len() >= self.cap {
            state.prune(now);
        }
        while state.map.len() >= self.cap && state.evict_one() {}
        state.insert(ip, ban);
    }

    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let mut state = lock(&self.state);
        match state.map.get(&ip) {
            Some(ban) if ban.until > now => true,
            Some(_) => {
                state.remove(ip);
                false
            }
            None => false,
        }
    }

    pub(crate) fn remove(&self, ip: IpAddr) -> bool {
        lock(&self.state).remove(ip).is_some()
    }

    /// Active bans and their remaining time, sorted by address.
    pub(crate) fn list(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        let mut list: Vec<(IpAddr, Duration)> = lock(&self.state)
            .map
            .iter()
            .filter(|(_, ban)| ban.until > now)
            .map(|(ip, ban)| (*ip, ban.until - now))
            .collect();
        list.sort_unstable();
        list
    }

    pub(crate) fn prune(&self, now: Instant) {
        lock(&self.state).prune(now);
    }
}

impl State {
    fn insert(&mut self, ip: IpAddr, ban: Ban) {
        self.set(ban.manual).insert((ban.until, ip));
        self.map.insert(ip, ban);
    }

    fn remove(&mut self, ip: IpAddr) -> Option<Ban> {
        let ban = self.map.remove(&ip)?;
        self.set(ban.manual).remove(&(ban.until, ip));
        Some(ban)
    }

    fn set(&mut self, manual: bool) -> &mut BTreeSet<(Instant, IpAddr)> {
        if manual { &mut self.manual } else { &mut self.automatic }
    }

    /// Removes bans that ended at or before `now`.
    fn prune(&mut self, now: Instant) {
        for manual in [false, true] {
            while let Some(&(until, ip)) = self.set(manual).first() {
                if until > now {
                    break;
                }
                self.remove(ip);
            }
        }
    }

    /// Removes the automatic ban that ends first, else the manual one; false when empty.
    fn evict_one(&mut self) -> bool {
        let first = self.automatic.first().or_else(|| self.manual.first()).copied();
        match first {
            Some((_, ip)) => self.remove(ip).is_some(),
            None => false,
        }
    }
}
