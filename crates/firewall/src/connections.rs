//! Open-connection counts, global and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::{DenyReason, lock};

/// Only addresses with open connections have an entry, so the map never outgrows the number of
/// open connections.
pub(crate) struct Connections {
    counts: Mutex<Counts>,
    /// 0 means unlimited.
    max_total: usize,
    /// 0 means unlimited.
    max_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Connections {
        Connections { counts: Mutex::new(Counts::default()), max_total, max_per_ip }
    }

    pub(crate) fn acquire(&self, ip: IpAddr) -> Result<(), DenyReason> {
        let mut counts = lock(&self.counts);
        if self.max_total != 0 && counts.total >= self.max_total {
            return Err(DenyReason::TooManyConnections);
        }
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip != 0 && from_ip >= self.max_per_ip {
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
