use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::{
    ConfigError, ConnectionPermit, Decision, DenyReason, Firewall, FirewallConfig, MessageLimiter,
};

fn firewall(edit: impl FnOnce(&mut FirewallConfig)) -> Firewall {
    let mut config = FirewallConfig::secure_defaults();
    edit(&mut config);
    Firewall::new(config).expect("valid config")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid ip")
}

const fn is_send_sync<T: Send + Sync>() {}
const _: () = is_send_sync::<Firewall>();
const _: () = is_send_sync::<ConnectionPermit>();
const _: () = is_send_sync::<MessageLimiter>();

#[test]
fn secure_defaults_are_valid_and_documented_values() {
    let config = FirewallConfig::secure_defaults();
    assert_eq!(config.max_connections, 10_000);
    assert_eq!(config.max_connections_per_ip, 64);
    assert_eq!((config.handshake_rate_per_sec, config.handshake_burst), (20, 40));
    assert_eq!((config.message_rate_per_sec, config.message_burst), (100, 200));
    assert_eq!(config.ban_after_failures, 10);
    assert_eq!(config.ban_window, Duration::from_secs(60));
    assert_eq!(config.ban_duration, Duration::from_secs(900));
    assert_eq!(config.max_tracked_ips, 100_000);
    let firewall = Firewall::new(config).expect("defaults are valid");
    assert_eq!(firewall.check_origin(Some("http://127.0.0.1:8765")), Decision::Allow);
    assert_eq!(firewall.check_origin(None), Decision::Allow);
}

#[test]
fn invalid_config_is_rejected() {
    let mut config = FirewallConfig::secure_defaults();
    config.allowed_origins.push("example.com".to_owned());
    let err = Firewall::new(config).expect_err("bad origin");
    assert_eq!(err.to_string(), "invalid origin pattern \"example.com\": missing `scheme://`");

    let mut config = FirewallConfig::secure_defaults();
    config.max_tracked_ips = 0;
    assert_eq!(Firewall::new(config).expect_err("no room"), ConfigError::NoTrackedIps);
}

#[test]
fn deny_reasons_have_stable_names() {
    assert_eq!(DenyReason::TooManyConnectionsFromIp.as_str(), "too_many_connections_from_ip");
    assert_eq!(DenyReason::RateLimited.to_string(), "rate_limited");
    let throttle = Decision::Throttle { retry_after: Duration::from_secs(1) };
    assert_eq!(throttle.deny_reason(), Some(DenyReason::RateLimited));
    assert!(!throttle.is_allow());
    assert_eq!(Decision::Allow.deny_reason(), None);
}

#[test]
fn admit_applies_ip_rules_before_caps() {
    let firewall = firewall(|c| {
        c.allow = vec!["10.0.0.0/8".parse().expect("cidr")];
        c.deny = vec!["10.6.6.0/24".parse().expect("cidr")];
    });
    let now = Instant::now();
    assert_eq!(firewall.admit(ip("10.6.6.6"), now).unwrap_err(), DenyReason::IpDenied);
    assert_eq!(firewall.admit(ip("::ffff:10.6.6.6"), now).unwrap_err(), DenyReason::IpDenied);
    assert_eq!(firewall.admit(ip("11.0.0.1"), now).unwrap_err(), DenyReason::IpNotAllowed);
    let permit = firewall.admit(ip("::ffff:10.0.0.1"), now).expect("allowed");
    assert_eq!(permit.ip(), ip("10.0.0.1"));
}

#[test]
fn caps_are_enforced_and_permits_release_on_drop() {
    let firewall = firewall(|c| {
        c.max_connections = 3;
        c.max_connections_per_ip = 2;
    });
    let now = Instant::now();
    let a = ip("203.0.113.1");
    let b = ip("203.0.113.2");
    let a1 = firewall.admit(a, now).expect("a1");
    let a2 = firewall.admit(a, now).expect("a2");
    assert_eq!(firewall.admit(a, now).unwrap_err(), DenyReason::TooManyConnectionsFromIp);
    // The mapped form of `a` counts as `a`.
    assert_eq!(
        firewall.admit(ip("::ffff:203.0.113.1"), now).unwrap_err(),
        DenyReason::TooManyConnectionsFromIp
    );
    let b1 = firewall.admit(b, now).expect("b1");
    assert_eq!(firewall.admit(ip("203.0.113.3"), now).unwrap_err(), DenyReason::TooManyConnections);
    assert_eq!(firewall.open_connections(), 3);
    assert_eq!(firewall.open_connections_from(a), 2);

    drop(a1);
    assert_eq!(firewall.open_connections(), 2);
    assert_eq!(firewall.open_connections_from(a), 1);
    let a3 = firewall.admit(a, now).expect("slot freed");

    // Permits may be dropped on another thread, after the firewall handle is gone.
    let clone = firewall.clone();
    drop(clone);
    std::thread::spawn(move || drop((a2, a3, b1))).join().expect("thread");
    assert_eq!(firewall.open_connections(), 0);
    assert_eq!(firewall.open_connections_from(a), 0);
}

#[test]
fn zero_caps_mean_unlimited() {
    let firewall = firewall(|c| {
        c.max_connections = 0;
        c.max_connections_per_ip = 0;
    });
    let now = Instant::now();
    let permits: Vec<_> =
        (0..500).map(|_| firewall.admit(ip("203.0.113.1"), now).expect("unlimited")).collect();
    assert_eq!(firewall.open_connections(), permits.len());
}

#[test]
fn handshake_rate_is_per_ip_with_retry_after() {
    let firewall = firewall(|c| {
        c.handshake_rate_per_sec = 2;
        c.handshake_burst = 3;
    });
    let now = Instant::now();
    let a = ip("203.0.113.1");
    for _ in 0..3 {
        assert_eq!(firewall.check_handshake_rate(a, now), Decision::Allow);
    }
    assert_eq!(
        firewall.check_handshake_rate(a, now),
        Decision::Throttle { retry_after: Duration::from_millis(500) }
    );
    // The mapped form shares the bucket; another address has its own.
    assert!(!firewall.check_handshake_rate(ip("::ffff:203.0.113.1"), now).is_allow());
    assert_eq!(firewall.check_handshake_rate(ip("203.0.113.2"), now), Decision::Allow);
    assert_eq!(firewall.check_handshake_rate(a, now + Duration::from_millis(500)), Decision::Allow);
}

#[test]
fn zero_handshake_rate_is_unlimited_and_tracks_nothing() {
    let firewall = firewall(|c| c.handshake_rate_per_sec = 0);
    let now = Instant::now();
    for _ in 0..1_000 {
        assert_eq!(firewall.check_handshake_rate(ip("203.0.113.1"), now), Decision::Allow);
    }
    assert_eq!(firewall.tracked_ips(), 0);
}

#[test]
fn message_limiter_is_per_connection() {
    let firewall = firewall(|c| {
        c.message_rate_per_sec = 10;
        c.message_burst = 2;
    });
    let now = Instant::now();
    let mut one = firewall.message_limiter();
    let mut two = firewall.message_limiter();
    assert_eq!(one.check(now), Decision::Allow);
    assert_eq!(one.check(now), Decision::Allow);
    assert_eq!(one.check(now), Decision::Throttle { retry_after: Duration::from_millis(100) });
    assert_eq!(two.check(now), Decision::Allow);
    assert_eq!(one.check(now + Duration::from_millis(100)), Decision::Allow);

    let unlimited = firewall_with_unlimited_messages();
    let mut limiter = unlimited.message_limiter();
    assert!((0..10_000).all(|_| limiter.check(now).is_allow()));
}

fn firewall_with_unlimited_messages() -> Firewall {
    firewall(|c| c.message_rate_per_sec = 0)
}

#[test]
fn ban_after_n_failures_within_the_window_then_expiry() {
    let firewall = firewall(|c| {
        c.ban_after_failures = 3;
        c.ban_window = Duration::from_secs(60);
        c.ban_duration = Duration::from_secs(600);
    });
    let t0 = Instant::now();
    let a = ip("198.51.100.7");
    let secs = |s: u64| t0 + Duration::from_secs(s);

    assert_eq!(firewall.record_auth_failure(a, secs(0)), None);
    assert_eq!(firewall.record_auth_failure(a, secs(30)), None);
    assert!(firewall.admit(a, secs(31)).is_ok());
    assert_eq!(firewall.record_auth_failure(a, secs(59)), Some(Duration::from_secs(600)));
    assert_eq!(firewall.admit(a, secs(60)).unwrap_err(), DenyReason::Banned);
    assert_eq!(
        firewall.admit(ip("::ffff:198.51.100.7"), secs(60)).unwrap_err(),
        DenyReason::Banned
    );
    assert_eq!(firewall.bans(secs(60)), vec![(a, Duration::from_secs(599))]);
    // Other addresses are unaffected.
    assert!(firewall.admit(ip("198.51.100.8"), secs(60)).is_ok());
    // The ban expires.
    assert!(firewall.is_banned(a, secs(658)));
    assert!(!firewall.is_banned(a, secs(659)));
    assert!(firewall.admit(a, secs(659)).is_ok());
    assert!(firewall.bans(secs(659)).is_empty());
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let firewall = firewall(|c| {
        c.ban_after_failures = 3;
        c.ban_window = Duration::from_secs(60);
    });
    let t0 = Instant::now();
    let a = ip("198.51.100.7");
    for s in [0, 40, 80, 120, 160] {
        assert_eq!(firewall.record_auth_failure(a, t0 + Duration::from_secs(s)), None, "at {s}s");
    }
    assert!(firewall.bans(t0 + Duration::from_secs(160)).is_empty());
}

#[test]
fn zero_failures_never_bans() {
    let firewall = firewall(|c| c.ban_after_failures = 0);
    let now = Instant::now();
    for _ in 0..100 {
        assert_eq!(firewall.record_auth_failure(ip("198.51.100.7"), now), None);
    }
    assert!(firewall.admit(ip("198.51.100.7"), now).is_ok());
}

#[test]
fn manual_ban_unban_and_listing() {
    let firewall = firewall(|_| ());
    let now = Instant::now();
    let a = ip("2001:db8::1");
    let b = ip("192.0.2.1");
    firewall.ban(a, Duration::from_secs(100), now);
    firewall.ban(ip("::ffff:192.0.2.1"), Duration::from_secs(50), now);
    assert_eq!(
        firewall.bans(now + Duration::from_secs(10)),
        vec![(b, Duration::from_secs(40)), (a, Duration::from_secs(90))]
    );
    assert_eq!(firewall.admit(a, now).unwrap_err(), DenyReason::Banned);
    // A manual ban replaces the previous one, even with a shorter duration.
    firewall.ban(a, Duration::from_secs(5), now);
    assert_eq!(firewall.bans(now)[1], (a, Duration::from_secs(5)));
    assert!(firewall.unban(a));
    assert!(!firewall.unban(a));
    assert!(firewall.admit(a, now).is_ok());
    // Absurd durations are clamped, not a panic.
    firewall.ban(a, Duration::MAX, now);
    assert!(firewall.is_banned(a, now + Duration::from_secs(10 * 365 * 24 * 3600)));
}

#[test]
fn client_ip_uses_trusted_proxies_from_config() {
    let firewall = firewall(|c| c.trusted_proxies = vec!["10.0.0.0/8".parse().expect("cidr")]);
    assert_eq!(
        firewall.client_ip(ip("10.0.0.1"), Some("1.2.3.4, 198.51.100.1"), None),
        ip("198.51.100.1")
    );
    assert_eq!(
        firewall.client_ip(ip("203.0.113.1"), Some("198.51.100.1"), None),
        ip("203.0.113.1")
    );
    let untrusting = self::firewall(|_| ());
    assert_eq!(untrusting.client_ip(ip("10.0.0.1"), Some("198.51.100.1"), None), ip("10.0.0.1"));
}

#[test]
fn prune_forgets_idle_state_and_expired_bans() {
    let firewall = firewall(|c| {
        c.handshake_rate_per_sec = 10;
        c.handshake_burst = 10;
        c.ban_after_failures = 5;
        c.ban_window = Duration::from_secs(60);
    });
    let t0 = Instant::now();
    firewall.check_handshake_rate(ip("203.0.113.1"), t0);
    firewall.record_auth_failure(ip("203.0.113.2"), t0);
    firewall.ban(ip("203.0.113.3"), Duration::from_secs(30), t0);
    assert_eq!(firewall.tracked_ips(), 2);

    firewall.prune(t0 + Duration::from_secs(1));
    assert_eq!(firewall.tracked_ips(), 1, "the failure is still within the window");
    assert_eq!(firewall.bans(t0).len(), 1);

    firewall.prune(t0 + Duration::from_secs(60));
    assert_eq!(firewall.tracked_ips(), 0);
    assert!(firewall.bans(t0).is_empty());
}

/// Feeds 100 000 distinct addresses through every per-IP path and checks memory stays bounded.
#[test]
fn per_ip_state_stays_bounded_for_100_000_addresses() {
    let cap = 5_000;
    let firewall = firewall(|c| {
        c.max_tracked_ips = cap;
        c.ban_after_failures = 1;
    });
    let now = Instant::now();
    for n in 0..100_000u32 {
        let v4 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        let v6 = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n)));
        let _ = firewall.check_handshake_rate(v4, now);
        assert_eq!(firewall.record_auth_failure(v6, now), Some(firewall.config().ban_duration));
        drop(firewall.admit(v4, now));
    }
    assert!(firewall.tracked_ips() <= cap, "tracked {}", firewall.tracked_ips());
    let bans = firewall.bans(now);
    assert!(bans.len() <= cap && !bans.is_empty(), "bans {}", bans.len());
    assert_eq!(firewall.open_connections(), 0);
    // The most recent address is still tracked and banned.
    let last = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | 99_999));
    assert!(firewall.is_banned(last, now));
}

#[test]
fn manual_bans_survive_a_flood_of_automatic_bans() {
    let firewall = firewall(|c| {
        c.max_tracked_ips = 10;
        c.ban_after_failures = 1;
    });
    let now = Instant::now();
    let admin_banned = ip("192.0.2.99");
    firewall.ban(admin_banned, Duration::from_secs(60), now);
    for n in 0..1_000u32 {
        firewall.record_auth_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), now);
    }
    assert!(firewall.is_banned(admin_banned, now));
    assert_eq!(firewall.bans(now).len(), 10);
}
