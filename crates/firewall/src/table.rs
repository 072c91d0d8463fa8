//! Bounded per-IP state (handshake bucket, recent auth failures), sharded, least recently used out.
//!
//! Each shard keeps a hash map plus a queue of touches in order. A touch appends to the queue;
//! stale queue entries are skipped on eviction and dropped when the queue grows past twice the
//! map, so every operation is amortised O(1) and memory stays proportional to the cap.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::lock;

/// What the firewall remembers about one client address.
#[derive(Debug, Default)]
pub(crate) struct IpState {
    /// Handshake bucket, see [`crate::gcra::Gcra`].
    pub(crate) handshake_tat: Option<Instant>,
    /// Times of recent authentication failures, oldest first, at most `ban_after_failures`.
    pub(crate) failures: VecDeque<Instant>,
}

/// Addresses per shard below which one shard is used, so small caps evict exactly the oldest.
const MIN_PER_SHARD: usize = 4096;
const MAX_SHARDS: usize = 16;

pub(crate) struct IpTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

struct Shard {
    map: HashMap<IpAddr, Slot>,
    order: VecDeque<(IpAddr, u64)>,
    next_seq: u64,
    cap: usize,
}

struct Slot {
    seq: u64,
    state: IpState,
}

impl IpTable {
    /// `max` is the hard cap on tracked addresses over all shards; at least 1.
    pub(crate) fn new(max: usize) -> IpTable {
        let max = max.max(1);
        let count = (max / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    next_seq: 0,
                    cap: max / count,
                })
            })
            .collect();
        IpTable { shards, hasher: RandomState::new() }
    }

    /// Runs `f` on the state of `ip`, creating it (and evicting the least recently used address
    /// of its shard when full) if needed. Keep `f` short: the shard is locked meanwhile.
    pub(crate) fn with<R>(&self, ip: IpAddr, f: impl FnOnce(&mut IpState) -> R) -> R {
        let mut shard = lock(self.shard(ip));
        f(shard.touch(ip))
    }

    /// Runs `f` on the state of `ip` only if it is tracked; does not count as a use.
    #[cfg(test)]
    pub(crate) fn peek<R>(&self, ip: IpAddr, f: impl FnOnce(&IpState) -> R) -> Option<R> {
        let shard = lock(self.shard(ip));
        shard.map.get(&ip).map(|slot| f(&slot.state))
    }

    /// Forgets every address for which `keep` returns false.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut IpState) -> bool) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.map.retain(|_, slot| keep(&mut slot.state));
            shard.compact();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).map.len()).sum()
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<Shard> {
        // The modulo keeps the index in range, so the cast back cannot truncate.
        let index = (self.hasher.hash_one(ip) % self.shards.len() as u64) as usize;
        &self.shards[index]
    }
}

impl Shard {
    fn touch(&mut self, ip: IpAddr) -> &mut IpState {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(slot) = self.map.get_mut(&ip) {
            slot.seq = seq;
        } else {
            while self.map.len() >= self.cap && self.evict_oldest() {}
            self.map.insert(ip, Slot { seq, state: IpState::default() });
        }
        self.order.push_back((ip, seq));
        if self.order.len() > 2 * self.map.len() + 64 {
            self.compact();
        }
        // The entry exists (inserted or updated above), so the default is never built.
        &mut self.map.entry(ip).or_insert_with(|| Slot { seq, state: IpState::default() }).state
    }

    /// Removes the least recently touched address; false when nothing is left to remove.
    fn evict_oldest(&mut self) -> bool {
        while let Some((ip, seq)) = self.order.pop_front() {
            if self.map.get(&ip).is_some_and(|slot| slot.seq == seq) {
                self.map.remove(&ip);
                return true;
            }
        }
        false
    }

    /// Drops queue entries that no longer match the map.
    fn compact(&mut self) {
        let map = &self.map;
        self.order.retain(|(ip, seq)| map.get(ip).is_some_and(|slot| slot.seq == *seq));
    }
}

#[cfg(test)]
mod tests;
