use std::net::IpAddr;

use ipnet::IpNet;

use super::client_ip;
use crate::ip_rules::NetList;

const PROXIES: &[&str] = &["10.0.0.0/8", "2001:db8:ffff::/48"];

#[track_caller]
fn check(peer: &str, xff: Option<&str>, forwarded: Option<&str>, expected: &str) {
    let nets: Vec<IpNet> = PROXIES.iter().map(|s| s.parse().expect("cidr")).collect();
    let trusted = NetList::new(&nets);
    let peer: IpAddr = peer.parse().expect("peer ip");
    let expected: IpAddr = expected.parse().expect("expected ip");
    assert_eq!(
        client_ip(&trusted, peer, xff, forwarded),
        expected,
        "peer={peer} xff={xff:?} forwarded={forwarded:?}"
    );
}

#[test]
fn headers_from_an_untrusted_peer_are_ignored() {
    check("203.0.113.5", Some("198.51.100.1"), None, "203.0.113.5");
    check("203.0.113.5", None, Some("for=198.51.100.1"), "203.0.113.5");
    check("::ffff:203.0.113.5", Some("198.51.100.1"), None, "203.0.113.5");
}

#[test]
fn x_forwarded_for_takes_the_right_most_untrusted_address() {
    check("10.0.0.1", Some("198.51.100.1"), None, "198.51.100.1");
    // The client forged the first entry; the proxy appended the real one.
    check("10.0.0.1", Some("1.1.1.1, 198.51.100.1"), None, "198.51.100.1");
    // Two trusted proxies in a row.
    check("10.0.0.1", Some("1.1.1.1, 198.51.100.1, 10.0.0.2"), None, "198.51.100.1");
    // Ports and brackets are tolerated.
    check("10.0.0.1", Some("198.51.100.1:5555"), None, "198.51.100.1");
    check("10.0.0.1", Some("[2001:db8::7]:443"), None, "2001:db8::7");
    check("10.0.0.1", Some("2001:db8::7"), None, "2001:db8::7");
    check("10.0.0.1", Some("[2001:db8::7]"), None, "2001:db8::7");
    // IPv4-mapped addresses in the header count as IPv4.
    check("10.0.0.1", Some("::ffff:198.51.100.1"), None, "198.51.100.1");
    check("::ffff:10.0.0.1", Some("198.51.100.1"), None, "198.51.100.1");
    // Trusted IPv6 proxy.
    check("2001:db8:ffff::1", Some("198.51.100.1"), None, "198.51.100.1");
}

#[test]
fn garbage_left_of_the_client_address_is_never_parsed() {
    check("10.0.0.1", Some("not-an-ip, 198.51.100.1"), None, "198.51.100.1");
}

#[test]
fn malformed_or_empty_headers_fall_back_to_the_peer() {
    check("10.0.0.1", Some("not-an-ip"), None, "10.0.0.1");
    check("10.0.0.1", Some("198.51.100.1, "), None, "10.0.0.1");
    check("10.0.0.1", Some("198.51.100.1,,10.0.0.2"), None, "10.0.0.1");
    check("10.0.0.1", Some("unknown"), None, "10.0.0.1");
    check("10.0.0.1", Some("   "), None, "10.0.0.1");
    check("10.0.0.1", None, None, "10.0.0.1");
    check("10.0.0.1", None, Some("for=\"198.51.100.1"), "10.0.0.1");
    check("10.0.0.1", None, Some("for"), "10.0.0.1");
    check("10.0.0.1", None, Some("for=bogus"), "10.0.0.1");
}

#[test]
fn all_trusted_hops_give_the_left_most_one() {
    check("10.0.0.1", Some("10.0.0.3, 10.0.0.2"), None, "10.0.0.3");
}

#[test]
fn forwarded_header_is_parsed_per_rfc_7239() {
    check("10.0.0.1", None, Some("for=198.51.100.1"), "198.51.100.1");
    check("10.0.0.1", None, Some("For=198.51.100.1;proto=https;by=10.0.0.1"), "198.51.100.1");
    check("10.0.0.1", None, Some("for=1.1.1.1, for=198.51.100.1"), "198.51.100.1");
    check("10.0.0.1", None, Some("for=\"[2001:db8:cafe::17]:4711\""), "2001:db8:cafe::17");
    check("10.0.0.1", None, Some("for=\"198.51.100.1:_hidden\""), "198.51.100.1");
    check("10.0.0.1", None, Some("for=198.51.100.1, for=\"[2001:db8:ffff::2]\""), "198.51.100.1");
    // A comma inside quotes does not split elements.
    check("10.0.0.1", None, Some("for=\"bad,one\", for=198.51.100.1"), "198.51.100.1");
}

#[test]
fn unknown_or_obfuscated_client_falls_back_to_the_peer() {
    check("10.0.0.1", None, Some("for=unknown"), "10.0.0.1");
    check("10.0.0.1", None, Some("for=_gazonk"), "10.0.0.1");
    check("10.0.0.1", None, Some("proto=https"), "10.0.0.1");
}

#[test]
fn x_forwarded_for_is_preferred_when_both_headers_are_present() {
    check("10.0.0.1", Some("198.51.100.1"), Some("for=198.51.100.2"), "198.51.100.1");
}
