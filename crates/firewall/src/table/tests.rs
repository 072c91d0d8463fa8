use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use super::IpTable;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

#[test]
fn least_recently_used_address_is_evicted_first() {
    let table = IpTable::new(3);
    let now = Instant::now();
    for n in 1..=3 {
        table.with(ip(n), |state| state.handshake_tat = Some(now));
    }
    // Touch 1 again, so 2 is now the oldest.
    table.with(ip(1), |_| ());
    table.with(ip(4), |_| ());
    assert_eq!(table.len(), 3);
    assert!(table.peek(ip(1), |_| ()).is_some());
    assert!(table.peek(ip(2), |_| ()).is_none());
    assert!(table.peek(ip(3), |_| ()).is_some());
    assert!(table.peek(ip(4), |_| ()).is_some());
}

#[test]
fn repeated_touches_do_not_grow_the_queue_without_bound() {
    let table = IpTable::new(10);
    for _ in 0..10_000 {
        table.with(ip(7), |_| ());
    }
    let shard = super::lock(&table.shards[0]);
    assert!(shard.order.len() <= 2 * shard.map.len() + 65, "{}", shard.order.len());
}

#[test]
fn retain_forgets_rejected_addresses() {
    let table = IpTable::new(100);
    let now = Instant::now();
    for n in 0..10 {
        table.with(ip(n), |state| {
            if n % 2 == 0 {
                state.handshake_tat = Some(now);
            }
        });
    }
    table.retain(|state| state.handshake_tat.is_some());
    assert_eq!(table.len(), 5);
}

#[test]
fn large_caps_are_sharded_and_stay_bounded() {
    let table = IpTable::new(50_000);
    assert!(table.shards.len() > 1);
    for n in 0..120_000 {
        table.with(ip(n), |_| ());
    }
    assert!(table.len() <= 50_000, "{}", table.len());
}
