//! Firewall refusals counted per client address per minute, so that a flood makes a bounded
//! number of records.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::event::Event;
use crate::time::{rfc3339_millis, unix_secs};

/// Addresses itemised per minute; refusals from further addresses are counted together in one
/// record with `"ip": null`.
pub(crate) const MAX_IPS_PER_MINUTE: usize = 1000;

/// Finished minutes waiting for the writer, at most; past that a minute's records are counted as
/// dropped (the writer is stuck).
const MAX_PENDING: usize = 4 * MAX_IPS_PER_MINUTE;

#[derive(Default)]
struct Counts {
    total: u64,
    reasons: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn add(&mut self, reason: &'static str) {
        self.total += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

/// The current minute's counts plus finished minutes not yet written.
#[derive(Default)]
pub(crate) struct Refusals {
    minute: u64,
    by_ip: HashMap<IpAddr, Counts>,
    others: Counts,
    pending: Vec<Event>,
}

impl Refusals {
    /// Counts one refusal at `now`. Returns how many records were lost because the writer has
    /// not collected earlier minutes (normally 0).
    pub(crate) fn add(&mut self, ip: IpAddr, reason: &'static str, now: SystemTime) -> u64 {
        let minute = unix_secs(now) / 60;
        let lost = if minute != self.minute { self.finish() } else { 0 };
        self.minute = minute;
        if let Some(counts) = self.by_ip.get_mut(&ip) {
            counts.add(reason);
        } else if self.by_ip.len() < MAX_IPS_PER_MINUTE {
            self.by_ip.entry(ip).or_default().add(reason);
        } else {
            self.others.add(reason);
        }
        lost
    }

    /// The records of every minute that ended before `now` (all minutes when `now` is `None`),
    /// and how many were lost on the way.
    pub(crate) fn take(&mut self, now: Option<SystemTime>) -> (Vec<Event>, u64) {
        let ended = match now {
            Some(now) => unix_secs(now) / 60 != self.minute,
            None => true,
        };
        let lost = if ended { self.finish() } else { 0 };
        (std::mem::take(&mut self.pending), lost)
    }

    /// Moves the current minute's counts into `pending`; returns the records that did not fit.
    fn finish(&mut self) -> u64 {
        let start = UNIX_EPOCH + Duration::from_secs(self.minute * 60);
        let label = rfc3339_millis(start);
        let mut entries: Vec<(Option<IpAddr>, Counts)> =
            self.by_ip.drain().map(|(ip, c)| (Some(ip), c)).collect();
        entries.sort_by_key(|(ip, _)| *ip);
        if self.others.total > 0 {
            entries.push((None, std::mem::take(&mut self.others)));
        }
        let mut lost = 0;
        for (ip, counts) in entries {
            if self.pending.len() >= MAX_PENDING {
                lost += 1;
                continue;
            }
            self.pending.push(Event::FirewallRefused {
                ip,
                minute: label.clone(),
                count: counts.total,
                reasons: counts.reasons.into_iter().map(|(r, n)| (r.to_owned(), n)).collect(),
            });
        }
        lost
    }
}
