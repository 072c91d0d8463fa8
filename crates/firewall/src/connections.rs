//! Open-connection counts, global and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{DenyReason, lock};

/// Only addresses with open connections have an entry, so the map never outgrows the number of
/// open connections.
pub(crate) struct Connections {
    counts: Mutex<Counts>,
    /// 0 means unlimited.
    max_total: AtomicUsize,
    /// 0 means unlimited.
    max_per_ip: AtomicUsize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Connections {
        Connections {
            counts: Mutex::new(Counts::default()),
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
        }
    }

    /// New caps for the next admissions; open connections stay.
    pub(crate) fn set_caps(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    pub(crate) fn acquire(&self, ip: IpAddr) -> Result<(), DenyReason> {
        let (max_total, max_per_ip) =
            (self.max_total.load(Ordering::Relaxed), self.max_per_ip.load(Ordering::Relaxed));
        let mut counts = lock(&self.counts);
        if max_total != 0 && counts.total >= max_total {
            return Err(DenyReason::TooManyConnections);
        }
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if max_per_ip != 0 && from_ip >= max_per_ip {
            return Err(DenyReason::TooManyConnectionsFromIp);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Ok(())
    }

    pub(crate) fn release(&self, ip: IpAddr) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }

    pub(crate) fn total(&self) -> usize {
        lock(&self.counts).total
    }

    pub(crate) fn count_for(&self, ip: IpAddr) -> usize {
        lock(&self.counts).per_ip.get(&ip).copied().unwrap_or(0)
    }
}
