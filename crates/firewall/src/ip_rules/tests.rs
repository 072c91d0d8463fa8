use std::net::IpAddr;

use ipnet::IpNet;

use super::{IpRules, canonical};
use crate::DenyReason;

#[track_caller]
fn check(allow: &[&str], deny: &[&str], ip: &str, expected: Result<(), DenyReason>) {
    let parse = |list: &[&str]| -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("valid cidr")).collect()
    };
    let rules = IpRules::new(&parse(allow), &parse(deny));
    let ip: IpAddr = ip.parse().expect("valid ip");
    assert_eq!(rules.check(canonical(ip)), expected, "allow={allow:?} deny={deny:?} ip={ip}");
}

#[test]
fn deny_wins_table() {
    let denied = Err(DenyReason::IpDenied);
    let not_allowed = Err(DenyReason::IpNotAllowed);
    // Empty lists allow everything.
    check(&[], &[], "203.0.113.9", Ok(()));
    check(&[], &[], "2001:db8::1", Ok(()));
    // Deny only.
    check(&[], &["10.0.0.0/8"], "10.1.2.3", denied);
    check(&[], &["10.0.0.0/8"], "11.1.2.3", Ok(()));
    // Allow only.
    check(&["192.168.0.0/16"], &[], "192.168.1.1", Ok(()));
    check(&["192.168.0.0/16"], &[], "192.169.0.1", not_allowed);
    // Both match: deny wins, whichever is more specific.
    check(&["10.0.0.0/8"], &["10.0.0.0/8"], "10.0.0.1", denied);
    check(&["10.0.0.0/8"], &["10.9.0.0/16"], "10.9.1.1", denied);
    check(&["10.0.0.0/8"], &["10.9.0.0/16"], "10.8.1.1", Ok(()));
    check(&["10.9.9.9/32"], &["0.0.0.0/0"], "10.9.9.9", denied);
    // IPv6.
    check(&["2001:db8::/32"], &[], "2001:db8:1::5", Ok(()));
    check(&["2001:db8::/32"], &[], "2001:db9::5", not_allowed);
    check(&[], &["2001:db8:bad::/48"], "2001:db8:bad::1", denied);
    check(&["::/0"], &["::1/128"], "::1", denied);
    // An IPv4 allow list does not admit IPv6 clients, and the other way round.
    check(&["0.0.0.0/0"], &[], "::1", not_allowed);
    check(&["::/0"], &[], "127.0.0.1", not_allowed);
    // IPv4-mapped IPv6 peers are matched as IPv4.
    check(&[], &["10.0.0.0/8"], "::ffff:10.0.0.1", denied);
    check(&["127.0.0.0/8"], &[], "::ffff:127.0.0.1", Ok(()));
    // IPv4-mapped networks in the configuration are matched as IPv4 too.
    check(&[], &["::ffff:10.0.0.0/104"], "10.2.3.4", denied);
    check(&[], &["::ffff:10.0.0.0/104"], "::ffff:10.2.3.4", denied);
    // Host bits in the configuration are ignored.
    check(&[], &["10.1.2.3/8"], "10.200.0.1", denied);
}
